//! AMQP 0-9-1 features beyond the first slice, with lapin against an in-process `TestBroker`:
//! per-message TTL, queue expiry, auto-delete and alternate and internal exchanges, length
//! limits in bytes and the reject-publish overflow modes, delivery limits and quorum queues,
//! direct reply-to, basic.recover, resource alarms (connection.blocked under the memory high
//! watermark), virtual hosts (isolation, permissions, restart) and dead-lettering through a
//! headers exchange. One test per behaviour, each checked against what RabbitMQ documents. TTL
//! tests drive a manual clock instead of sleeping. Helpers live in `tests/common/amqp.rs`.

use std::time::Duration;

use ferry::testing::TestBroker;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::common;
use common::amqp::*;

/// The newest x-death entry of a dead-lettered delivery.
fn last_death(d: &Delivery) -> FieldTable {
    let Some(AMQPValue::FieldArray(deaths)) = header(d, "x-death") else {
        panic!("no x-death in {:?}", d.properties);
    };
    match deaths.as_slice().first() {
        Some(AMQPValue::FieldTable(t)) => t.clone(),
        other => panic!("bad x-death entry {other:?}"),
    }
}

/// A fanout dead-letter exchange `dlx` feeding queue `dead`.
async fn dead_letter_setup(ch: &Channel) {
    exchange(ch, "dlx", ExchangeKind::Fanout, FieldTable::default()).await;
    declare(ch, "dead").await;
    bind(ch, "dead", "dlx", "").await;
}

fn with_expiration(ms: &str) -> BasicProperties {
    BasicProperties::default().with_expiration(ms.into())
}

#[tokio::test]
async fn per_message_ttl_expires_only_at_the_head_into_the_dead_letter_exchange() {
    let clock = ferry::Clock::manual(1_700_000_000_000);
    let c = clock.clone();
    let broker = TestBroker::with(move |b| b.clock(c)).await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    dead_letter_setup(&ch).await;
    declare_with(
        &ch,
        "pm",
        args(vec![("x-dead-letter-exchange", long("dlx"))]),
    )
    .await;
    confirm_mode(&ch).await;
    assert!(publish_confirmed(&ch, "", "pm", b"slow", with_expiration("5000")).await);
    assert!(publish_confirmed(&ch, "", "pm", b"fast", with_expiration("1000")).await);
    assert!(publish_confirmed(&ch, "", "pm", b"forever", BasicProperties::default()).await);
    clock.advance_ms(2000);
    // "fast" is past its TTL but waits behind the unexpired head (RabbitMQ semantics).
    assert_eq!(count(&ch, "pm").await, 3);
    clock.advance_ms(4000);
    assert_eq!(count(&ch, "pm").await, 1);
    assert_eq!(get_body(&ch, "pm").await, b"forever");
    let mut dead = consume(&ch, "dead", true).await;
    let d = next(&mut dead).await;
    assert_eq!(d.data, b"slow");
    let death = last_death(&d);
    assert_eq!(death.inner().get("reason"), Some(&long("expired")));
    assert_eq!(death.inner().get("queue"), Some(&long("pm")));
    assert_eq!(
        death.inner().get("original-expiration"),
        Some(&long("5000"))
    );
    // The dead letter's own TTL is removed so it cannot expire again.
    assert_eq!(d.properties.expiration(), &None);
    assert_eq!(next(&mut dead).await.data, b"fast");
    broker.stop().await;
}

#[tokio::test]
async fn per_message_ttl_without_dead_letter_exchange_drops_and_is_delivered_with_the_property() {
    let clock = ferry::Clock::manual(1_700_000_000_000);
    let c = clock.clone();
    let broker = TestBroker::with(move |b| b.clock(c)).await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "pm2").await;
    confirm_mode(&ch).await;
    assert!(publish_confirmed(&ch, "", "pm2", b"gone", with_expiration("100")).await);
    assert!(publish_confirmed(&ch, "", "pm2", b"kept", with_expiration("60000")).await);
    clock.advance_ms(200);
    let m = get(&ch, "pm2", false).await.expect("a message");
    assert_eq!(m.delivery.data, b"kept");
    assert_eq!(
        m.delivery
            .properties
            .expiration()
            .as_ref()
            .map(|s| s.as_str()),
        Some("60000")
    );
    assert!(ch
        .basic_get("pm2".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .is_none());
    broker.stop().await;
}

#[tokio::test]
async fn invalid_expiration_closes_the_channel_with_406() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    confirm_mode(&ch).await;
    let err = publish_refused(&ch, "", "q", b"x", with_expiration("-5")).await;
    assert_eq!(amqp_code(&err), Some(406), "{err:?}");
    // The connection stays usable.
    let ch2 = channel(&conn).await;
    assert_eq!(count(&ch2, "q").await, 0);
    broker.stop().await;
}

#[tokio::test]
async fn x_expires_deletes_a_queue_left_unused() {
    let clock = ferry::Clock::manual(1_700_000_000_000);
    let c = clock.clone();
    let broker = TestBroker::with(move |b| b.clock(c)).await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let expires = || args(vec![("x-expires", AMQPValue::LongInt(1000))]);
    declare_with(&ch, "idle", expires()).await;
    declare_with(&ch, "busy", expires()).await;
    let _consumer = consume(&ch, "busy", false).await;
    clock.advance_ms(1500);
    let router = broker.core().router();
    assert!(wait_until(|| router.queue("/", "idle").is_none()).await);
    // A queue with a consumer is in use and stays.
    assert!(router.queue("/", "busy").is_some());
    broker.stop().await;
}

#[tokio::test]
async fn x_expires_zero_is_refused() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let err = ch
        .queue_declare(
            "zero".into(),
            QueueDeclareOptions::default(),
            args(vec![("x-expires", AMQPValue::LongInt(0))]),
        )
        .await
        .unwrap_err();
    assert_eq!(amqp_code(&err), Some(406), "{err:?}");
    broker.stop().await;
}

#[tokio::test]
async fn auto_delete_exchange_goes_with_its_last_binding() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    ch.exchange_declare(
        "ad".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare(&ch, "a").await;
    declare(&ch, "b").await;
    bind(&ch, "a", "ad", "k").await;
    bind(&ch, "b", "ad", "k").await;
    let router = broker.core().router();
    ch.queue_unbind("a".into(), "ad".into(), "k".into(), FieldTable::default())
        .await
        .unwrap();
    assert!(router.exchange("/", "ad").is_some(), "one binding is left");
    // Deleting the last bound queue removes the last binding, and with it the exchange.
    ch.queue_delete("b".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    assert!(router.exchange("/", "ad").is_none());
    broker.stop().await;
}

#[tokio::test]
async fn alternate_exchange_receives_unroutable_messages() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    exchange(&ch, "ae", ExchangeKind::Fanout, FieldTable::default()).await;
    declare(&ch, "unrouted").await;
    bind(&ch, "unrouted", "ae", "").await;
    exchange(
        &ch,
        "main",
        ExchangeKind::Direct,
        args(vec![("alternate-exchange", long("ae"))]),
    )
    .await;
    declare(&ch, "routed").await;
    bind(&ch, "routed", "main", "known").await;
    confirm_mode(&ch).await;
    let confirm = ch
        .basic_publish(
            "main".into(),
            "unknown".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"stray",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
    // Routed by the alternate exchange, so not returned even though mandatory.
    assert!(confirm.take_message().is_none());
    assert!(publish_confirmed(&ch, "main", "known", b"normal", BasicProperties::default()).await);
    let m = get(&ch, "unrouted", false).await.expect("routed to the AE");
    assert_eq!(m.delivery.data, b"stray");
    // The message keeps the exchange it was published to.
    assert_eq!(m.delivery.exchange.as_str(), "main");
    assert_eq!(m.delivery.routing_key.as_str(), "unknown");
    assert_eq!(get_body(&ch, "routed").await, b"normal");
    assert_eq!(count(&ch, "unrouted").await, 0);
    broker.stop().await;
}

#[tokio::test]
async fn publishing_to_an_internal_exchange_is_403_but_bindings_reach_it() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    ch.exchange_declare(
        "inner".into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            internal: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare(&ch, "iq").await;
    bind(&ch, "iq", "inner", "").await;
    exchange(&ch, "front", ExchangeKind::Fanout, FieldTable::default()).await;
    ch.exchange_bind(
        "inner".into(),
        "front".into(),
        "".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    confirm_mode(&ch).await;
    // Through an exchange-to-exchange binding the internal exchange routes as usual.
    assert!(publish_confirmed(&ch, "front", "", b"via", BasicProperties::default()).await);
    assert_eq!(get_body(&ch, "iq").await, b"via");
    let err = publish_refused(&ch, "inner", "", b"direct", BasicProperties::default()).await;
    assert_eq!(amqp_code(&err), Some(403), "{err:?}");
    assert!(!ch.status().connected());
    broker.stop().await;
}

#[tokio::test]
async fn max_length_bytes_drops_from_the_head() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_with(
        &ch,
        "mlb",
        args(vec![("x-max-length-bytes", AMQPValue::LongInt(10))]),
    )
    .await;
    confirm_mode(&ch).await;
    for body in [b"aaaa", b"bbbb", b"cccc"] {
        assert!(publish_confirmed(&ch, "", "mlb", body, BasicProperties::default()).await);
    }
    // 12 bytes of bodies do not fit in 10: the oldest goes.
    assert_eq!(count(&ch, "mlb").await, 2);
    assert_eq!(get_body(&ch, "mlb").await, b"bbbb");
    assert_eq!(get_body(&ch, "mlb").await, b"cccc");
    broker.stop().await;
}

#[tokio::test]
async fn reject_publish_nacks_when_full_under_confirms() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_with(
        &ch,
        "rp",
        args(vec![
            ("x-max-length", AMQPValue::LongInt(2)),
            ("x-overflow", long("reject-publish")),
        ]),
    )
    .await;
    confirm_mode(&ch).await;
    // Published back to back: the third must be refused even before the first two are durable.
    let mut confirms = Vec::new();
    for body in [&b"one"[..], b"two", b"three"] {
        confirms.push(publish_pending(&ch, "", "rp", body, BasicProperties::default()).await);
    }
    let mut acks = Vec::new();
    for c in confirms {
        acks.push(c.await.unwrap().is_ack());
    }
    assert_eq!(acks, [true, true, false]);
    assert_eq!(count(&ch, "rp").await, 2);
    // Room again once one is consumed.
    assert_eq!(get_body(&ch, "rp").await, b"one");
    assert!(publish_confirmed(&ch, "", "rp", b"four", BasicProperties::default()).await);
    assert_eq!(get_body(&ch, "rp").await, b"two");
    assert_eq!(get_body(&ch, "rp").await, b"four");
    broker.stop().await;
}

#[tokio::test]
async fn reject_publish_without_confirms_drops_the_new_message() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_with(
        &ch,
        "rp2",
        args(vec![
            ("x-max-length-bytes", AMQPValue::LongInt(6)),
            ("x-overflow", long("reject-publish")),
        ]),
    )
    .await;
    for body in [&b"abc"[..], b"def", b"ghi"] {
        ch.basic_publish(
            "".into(),
            "rp2".into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    let q = broker.core().router().queue("/", "rp2").unwrap();
    assert!(wait_until(|| q.log().high_watermark() >= 2).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(count(&ch, "rp2").await, 2);
    assert_eq!(get_body(&ch, "rp2").await, b"abc");
    assert_eq!(get_body(&ch, "rp2").await, b"def");
    assert!(ch.status().connected());
    broker.stop().await;
}

#[tokio::test]
async fn reject_publish_dlx_nacks_and_dead_letters_with_reason_maxlen() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    dead_letter_setup(&ch).await;
    declare_with(
        &ch,
        "rpd",
        args(vec![
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", long("reject-publish-dlx")),
            ("x-dead-letter-exchange", long("dlx")),
        ]),
    )
    .await;
    confirm_mode(&ch).await;
    assert!(publish_confirmed(&ch, "", "rpd", b"first", BasicProperties::default()).await);
    assert!(!publish_confirmed(&ch, "", "rpd", b"second", BasicProperties::default()).await);
    let mut dead = consume(&ch, "dead", true).await;
    let d = next(&mut dead).await;
    assert_eq!(d.data, b"second");
    let death = last_death(&d);
    assert_eq!(death.inner().get("reason"), Some(&long("maxlen")));
    assert_eq!(death.inner().get("queue"), Some(&long("rpd")));
    assert_eq!(get_body(&ch, "rpd").await, b"first");
    broker.stop().await;
}

#[tokio::test]
async fn basic_recover_requeues_unacked_deliveries_as_redelivered() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "rec").await;
    confirm_mode(&ch).await;
    assert!(publish_confirmed(&ch, "", "rec", b"m", BasicProperties::default()).await);
    let first = get(&ch, "rec", false).await.expect("message");
    assert!(!first.delivery.redelivered);
    assert_eq!(count(&ch, "rec").await, 0);
    ch.basic_recover(BasicRecoverOptions { requeue: true })
        .await
        .unwrap();
    let again = get(&ch, "rec", false).await.expect("requeued by recover");
    assert_eq!(again.delivery.data, b"m");
    assert!(again.delivery.redelivered);
    again
        .delivery
        .ack(BasicAckOptions::default())
        .await
        .unwrap();
    assert_eq!(count(&ch, "rec").await, 0);
    broker.stop().await;
}

/// basic.get without no-ack that must find a message; nacks it back with requeue.
async fn get_and_requeue(ch: &Channel, queue: &str) -> lapin::message::BasicGetMessage {
    let m = get(ch, queue, false).await.expect("a message");
    m.delivery
        .nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await
        .expect("nack");
    m
}

#[tokio::test]
async fn delivery_limit_dead_letters_a_classic_queue_message_after_n_returns() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    dead_letter_setup(&ch).await;
    declare_with(
        &ch,
        "dl",
        args(vec![
            ("x-delivery-limit", AMQPValue::LongInt(2)),
            ("x-dead-letter-exchange", long("dlx")),
        ]),
    )
    .await;
    confirm_mode(&ch).await;
    assert!(publish_confirmed(&ch, "", "dl", b"poison", BasicProperties::default()).await);
    // Limit 2: the first delivery and two redeliveries; the third return dead-letters it.
    for attempt in 0..3 {
        let m = get_and_requeue(&ch, "dl").await;
        assert_eq!(m.delivery.redelivered, attempt > 0);
    }
    let mut dead = consume(&ch, "dead", true).await;
    let d = next(&mut dead).await;
    assert_eq!(d.data, b"poison");
    let death = last_death(&d);
    assert_eq!(death.inner().get("reason"), Some(&long("delivery_limit")));
    assert_eq!(death.inner().get("queue"), Some(&long("dl")));
    assert_eq!(count(&ch, "dl").await, 0);
    broker.stop().await;
}

#[tokio::test]
async fn quorum_queue_delivery_count_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let quorum = || {
        args(vec![
            ("x-queue-type", long("quorum")),
            ("x-delivery-limit", AMQPValue::LongInt(1)),
            ("x-dead-letter-exchange", long("amq.fanout")),
        ])
    };
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    {
        let broker = TestBroker::with(|b| b.data_dir(&path)).await.unwrap();
        let conn = connect(&broker).await;
        let ch = channel(&conn).await;
        ch.queue_declare("qq".into(), durable, quorum())
            .await
            .unwrap();
        ch.queue_declare("parked".into(), durable, FieldTable::default())
            .await
            .unwrap();
        bind(&ch, "parked", "amq.fanout", "").await;
        confirm_mode(&ch).await;
        let persistent = BasicProperties::default().with_delivery_mode(2);
        assert!(publish_confirmed(&ch, "", "qq", b"flaky", persistent).await);
        let m = get_and_requeue(&ch, "qq").await;
        assert!(header(&m.delivery, "x-delivery-count").is_none());
        conn.close(200, "bye".into()).await.unwrap();
        broker.stop().await;
    }
    let broker = TestBroker::with(|b| b.data_dir(&path)).await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    ch.queue_declare("qq".into(), durable, quorum())
        .await
        .unwrap();
    // One return before the restart is remembered: this is the last allowed delivery.
    let m = get_and_requeue(&ch, "qq").await;
    assert_eq!(
        header(&m.delivery, "x-delivery-count"),
        Some(&AMQPValue::LongLongInt(1))
    );
    let parked = get(&ch, "parked", false).await.expect("dead-lettered");
    assert_eq!(parked.delivery.data, b"flaky");
    let Some(AMQPValue::FieldArray(deaths)) = parked
        .delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-death").cloned())
    else {
        panic!("no x-death");
    };
    let Some(AMQPValue::FieldTable(death)) = deaths.as_slice().first() else {
        panic!("empty x-death");
    };
    assert_eq!(death.inner().get("reason"), Some(&long("delivery_limit")));
    assert_eq!(count(&ch, "qq").await, 0);
    broker.stop().await;
}

#[tokio::test]
async fn quorum_queues_must_be_durable_and_unknown_types_are_refused() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    // (Streams are declared through their own path now, so they are not in this list.)
    for (kind, durable) in [("quorum", false), ("bogus", true)] {
        let ch = channel(&conn).await;
        let err = ch
            .queue_declare(
                "typed".into(),
                QueueDeclareOptions {
                    durable,
                    ..Default::default()
                },
                args(vec![("x-queue-type", long(kind))]),
            )
            .await
            .unwrap_err();
        assert_eq!(amqp_code(&err), Some(406), "{kind}: {err:?}");
    }
    broker.stop().await;
}

#[tokio::test]
async fn x_death_counts_repeated_deaths_per_queue_and_reason_and_keeps_the_first_death() {
    let clock = ferry::Clock::manual(1_700_000_000_000);
    let c = clock.clone();
    let broker = TestBroker::with(move |b| b.clock(c)).await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    // Two queues dead-lettering into each other through the default exchange.
    for (name, other) in [("ping", "pong"), ("pong", "ping")] {
        declare_with(
            &ch,
            name,
            args(vec![
                ("x-dead-letter-exchange", long("")),
                ("x-dead-letter-routing-key", long(other)),
            ]),
        )
        .await;
    }
    exchange(&ch, "src", ExchangeKind::Direct, FieldTable::default()).await;
    bind(&ch, "ping", "src", "start").await;
    confirm_mode(&ch).await;
    assert!(publish_confirmed(&ch, "src", "start", b"ball", BasicProperties::default()).await);
    let reject = |m: lapin::message::BasicGetMessage| async move {
        m.delivery
            .reject(BasicRejectOptions { requeue: false })
            .await
            .unwrap();
    };
    let router = broker.core().router();
    // Each dead letter must land before the clock moves on, so its time is known.
    let landed = |name: &str| {
        let q = router.queue("/", name).unwrap();
        wait_until(move || q.message_count() == 1)
    };
    reject(get(&ch, "ping", false).await.unwrap()).await; // ping -> pong
    assert!(landed("pong").await);
    clock.advance_ms(5000);
    reject(get(&ch, "pong", false).await.unwrap()).await; // pong -> ping
    assert!(landed("ping").await);
    clock.advance_ms(5000);
    reject(get(&ch, "ping", false).await.unwrap()).await; // ping -> pong again
    let m = get(&ch, "pong", false).await.expect("third dead letter");
    let d = &m.delivery;
    let Some(AMQPValue::FieldArray(deaths)) = header(d, "x-death") else {
        panic!("no x-death");
    };
    let entries: Vec<FieldTable> = deaths
        .as_slice()
        .iter()
        .map(|v| match v {
            AMQPValue::FieldTable(t) => t.clone(),
            other => panic!("bad entry {other:?}"),
        })
        .collect();
    assert_eq!(entries.len(), 2, "one entry per (queue, reason)");
    let newest = entries[0].inner();
    assert_eq!(newest.get("queue"), Some(&long("ping")));
    assert_eq!(newest.get("reason"), Some(&long("rejected")));
    assert_eq!(newest.get("count"), Some(&AMQPValue::LongLongInt(2)));
    // The first death's exchange and routing keys are kept.
    assert_eq!(newest.get("exchange"), Some(&long("src")));
    assert_eq!(
        newest.get("routing-keys"),
        Some(&AMQPValue::FieldArray(vec![long("start")].into()))
    );
    // `time` is the entry's first death; repeats only count up.
    assert_eq!(
        newest.get("time"),
        Some(&AMQPValue::Timestamp(1_700_000_000))
    );
    let older = entries[1].inner();
    assert_eq!(older.get("queue"), Some(&long("pong")));
    assert_eq!(older.get("count"), Some(&AMQPValue::LongLongInt(1)));
    assert_eq!(
        older.get("time"),
        Some(&AMQPValue::Timestamp(1_700_000_005))
    );
    assert_eq!(older.get("exchange"), Some(&long("")));
    assert_eq!(
        older.get("routing-keys"),
        Some(&AMQPValue::FieldArray(vec![long("pong")].into()))
    );
    assert_eq!(header(d, "x-first-death-queue"), Some(&long("ping")));
    assert_eq!(header(d, "x-first-death-reason"), Some(&long("rejected")));
    assert_eq!(header(d, "x-first-death-exchange"), Some(&long("src")));
    assert_eq!(header(d, "x-last-death-queue"), Some(&long("ping")));
    assert_eq!(header(d, "x-last-death-reason"), Some(&long("rejected")));
    assert_eq!(header(d, "x-last-death-exchange"), Some(&long("src")));
    broker.stop().await;
}

#[tokio::test]
async fn an_automatic_dead_letter_cycle_drops_the_message() {
    let clock = ferry::Clock::manual(1_700_000_000_000);
    let c = clock.clone();
    let broker = TestBroker::with(move |b| b.clock(c)).await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    // "loop" expires its messages back into itself: RabbitMQ drops them on the second lap.
    declare_with(
        &ch,
        "loop",
        args(vec![
            ("x-message-ttl", AMQPValue::LongInt(100)),
            ("x-dead-letter-exchange", long("")),
        ]),
    )
    .await;
    confirm_mode(&ch).await;
    assert!(publish_confirmed(&ch, "", "loop", b"spin", BasicProperties::default()).await);
    clock.advance_ms(200);
    let q = broker.core().router().queue("/", "loop").unwrap();
    assert!(wait_until(|| q.message_count() == 0 && q.unacked_count() == 0).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(q.message_count(), 0);
    assert_eq!(q.log().high_watermark(), 1, "never re-enqueued");
    broker.stop().await;
}

#[tokio::test]
async fn direct_reply_to_round_trip_between_two_channels() {
    let broker = TestBroker::start().await.unwrap();
    let client_conn = connect(&broker).await;
    let server_conn = connect(&broker).await;
    let client = channel(&client_conn).await;
    let server = channel(&server_conn).await;
    declare(&server, "rpc").await;
    let mut requests = consume(&server, "rpc", false).await;
    let mut replies = consume(&client, "amq.rabbitmq.reply-to", true).await;
    client
        .basic_publish(
            "".into(),
            "rpc".into(),
            BasicPublishOptions::default(),
            b"2+2",
            BasicProperties::default()
                .with_reply_to("amq.rabbitmq.reply-to".into())
                .with_correlation_id("req-1".into()),
        )
        .await
        .unwrap();
    let req = next(&mut requests).await;
    let address = req
        .properties
        .reply_to()
        .as_ref()
        .expect("reply_to")
        .as_str()
        .to_string();
    assert!(
        address.starts_with("amq.rabbitmq.reply-to.") && address.len() > 22,
        "{address}"
    );
    server.confirm_select(Default::default()).await.unwrap();
    let confirm = server
        .basic_publish(
            "".into(),
            address.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"4",
            BasicProperties::default().with_correlation_id("req-1".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
    assert!(confirm.take_message().is_none(), "the reply was routed");
    req.ack(BasicAckOptions::default()).await.unwrap();
    let reply = next(&mut replies).await;
    assert_eq!(reply.data, b"4");
    assert_eq!(reply.routing_key.as_str(), address);
    assert_eq!(
        reply
            .properties
            .correlation_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("req-1")
    );
    // Once the requester's channel is gone the address is unroutable: a mandatory reply
    // comes back.
    client.close(200, "done".into()).await.unwrap();
    let confirm = server
        .basic_publish(
            "".into(),
            address.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"late",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let returned = confirm.take_message().expect("returned");
    assert_eq!(returned.reply_code, 312);
    broker.stop().await;
}

#[tokio::test]
async fn direct_reply_to_needs_a_no_ack_consumer_first() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    declare(&channel(&conn).await, "rpc").await;
    let ch = channel(&conn).await;
    let err = ch
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(amqp_code(&err), Some(406), "{err:?}");
    let ch = channel(&conn).await;
    confirm_mode(&ch).await;
    let err = publish_refused(
        &ch,
        "",
        "rpc",
        b"q",
        BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into()),
    )
    .await;
    assert_eq!(amqp_code(&err), Some(406), "{err:?}");
    broker.stop().await;
}

async fn consume_with(ch: &Channel, queue: &str, arguments: FieldTable) -> lapin::Consumer {
    ch.basic_consume(
        queue.into(),
        "".into(),
        BasicConsumeOptions::default(),
        arguments,
    )
    .await
    .expect("basic.consume")
}

/// Nothing is delivered to `consumer` within a short while.
async fn stays_idle(consumer: &mut lapin::Consumer) -> bool {
    tokio::time::timeout(Duration::from_millis(300), consumer.next())
        .await
        .is_err()
}

#[tokio::test]
async fn consumer_priorities_feed_the_highest_consumer_while_it_has_credit() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let low_ch = channel(&conn).await;
    let high_ch = channel(&conn).await;
    declare(&low_ch, "cp").await;
    high_ch
        .basic_qos(2, BasicQosOptions::default())
        .await
        .unwrap();
    // The low-priority consumer registers first, so arrival order cannot explain the result.
    let mut low = consume_with(
        &low_ch,
        "cp",
        args(vec![("x-priority", AMQPValue::LongInt(1))]),
    )
    .await;
    let mut high = consume_with(
        &high_ch,
        "cp",
        args(vec![("x-priority", AMQPValue::LongInt(10))]),
    )
    .await;
    let pub_ch = channel(&conn).await;
    confirm_mode(&pub_ch).await;
    for i in 0..5 {
        let body = format!("m{i}");
        assert!(
            publish_confirmed(
                &pub_ch,
                "",
                "cp",
                body.as_bytes(),
                BasicProperties::default()
            )
            .await
        );
    }
    // The high consumer takes what its prefetch of 2 allows; the rest overflow to the low one.
    let h1 = next(&mut high).await;
    let h2 = next(&mut high).await;
    assert_eq!(
        (h1.data.as_slice(), h2.data.as_slice()),
        (&b"m0"[..], &b"m1"[..])
    );
    for want in ["m2", "m3", "m4"] {
        assert_eq!(next(&mut low).await.data, want.as_bytes());
    }
    // Once the high consumer has credit again, new messages go to it first.
    h1.ack(BasicAckOptions::default()).await.unwrap();
    h2.ack(BasicAckOptions::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(publish_confirmed(&pub_ch, "", "cp", b"m5", BasicProperties::default()).await);
    assert_eq!(next(&mut high).await.data, b"m5");
    assert!(stays_idle(&mut low).await);
    broker.stop().await;
}

#[tokio::test]
async fn single_active_consumer_gets_everything_until_it_cancels() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch_a = channel(&conn).await;
    let ch_b = channel(&conn).await;
    declare_with(
        &ch_a,
        "sac",
        args(vec![("x-single-active-consumer", AMQPValue::Boolean(true))]),
    )
    .await;
    let mut a = consume(&ch_a, "sac", false).await;
    let mut b = consume(&ch_b, "sac", false).await;
    let pub_ch = channel(&conn).await;
    confirm_mode(&pub_ch).await;
    for body in [&b"1"[..], b"2", b"3"] {
        assert!(publish_confirmed(&pub_ch, "", "sac", body, BasicProperties::default()).await);
    }
    for want in [&b"1"[..], b"2", b"3"] {
        let d = next(&mut a).await;
        assert_eq!(d.data, want);
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert!(
        stays_idle(&mut b).await,
        "only the active consumer receives"
    );
    ch_a.basic_cancel(a.tag(), BasicCancelOptions::default())
        .await
        .unwrap();
    assert!(publish_confirmed(&pub_ch, "", "sac", b"4", BasicProperties::default()).await);
    assert_eq!(next(&mut b).await.data, b"4");
    broker.stop().await;
}

fn with_priority(p: u8) -> BasicProperties {
    BasicProperties::default().with_priority(p)
}

#[tokio::test]
async fn priority_queue_delivers_higher_priorities_first() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_with(
        &ch,
        "pq",
        args(vec![("x-max-priority", AMQPValue::ShortShortUInt(10))]),
    )
    .await;
    confirm_mode(&ch).await;
    for (body, props) in [
        ("low", with_priority(1)),
        ("none", BasicProperties::default()),
        ("high", with_priority(5)),
        // Above the queue's maximum: treated as the maximum (RabbitMQ).
        ("top", with_priority(200)),
        ("high2", with_priority(5)),
        ("max", with_priority(10)),
    ] {
        assert!(publish_confirmed(&ch, "", "pq", body.as_bytes(), props).await);
    }
    assert_eq!(count(&ch, "pq").await, 6);
    let first = get(&ch, "pq", false).await.expect("a message");
    assert_eq!(first.delivery.data, b"top");
    assert!(!first.delivery.redelivered);
    // The priority property is delivered as published.
    assert_eq!(first.delivery.properties.priority(), &Some(200));
    // A returned message goes back to its level, ahead of lower ones.
    first
        .delivery
        .nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await
        .unwrap();
    let again = get(&ch, "pq", false).await.expect("requeued");
    assert_eq!(again.delivery.data, b"top");
    assert!(again.delivery.redelivered);
    again
        .delivery
        .ack(BasicAckOptions::default())
        .await
        .unwrap();
    let mut order = Vec::new();
    for _ in 0..5 {
        order.push(String::from_utf8(get_body(&ch, "pq").await).unwrap());
    }
    assert_eq!(order, ["max", "high", "high2", "low", "none"]);
    broker.stop().await;
}

#[tokio::test]
async fn priority_order_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let pq_args = || args(vec![("x-max-priority", AMQPValue::LongInt(5))]);
    {
        let broker = TestBroker::with(|b| b.data_dir(&path)).await.unwrap();
        let conn = connect(&broker).await;
        let ch = channel(&conn).await;
        ch.queue_declare("dpq".into(), durable, pq_args())
            .await
            .unwrap();
        confirm_mode(&ch).await;
        for (body, p) in [("a", 1), ("b", 3), ("c", 2)] {
            let props = with_priority(p).with_delivery_mode(2);
            assert!(publish_confirmed(&ch, "", "dpq", body.as_bytes(), props).await);
        }
        // Index them before the restart, then deliver one.
        assert_eq!(get_body(&ch, "dpq").await, b"b");
        conn.close(200, "bye".into()).await.unwrap();
        broker.stop().await;
    }
    let broker = TestBroker::with(|b| b.data_dir(&path)).await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    ch.queue_declare("dpq".into(), durable, pq_args())
        .await
        .unwrap();
    assert_eq!(get_body(&ch, "dpq").await, b"c");
    assert_eq!(get_body(&ch, "dpq").await, b"a");
    assert_eq!(count(&ch, "dpq").await, 0);
    broker.stop().await;
}

#[tokio::test]
async fn x_max_priority_above_255_is_refused() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let err = ch
        .queue_declare(
            "toomany".into(),
            QueueDeclareOptions::default(),
            args(vec![("x-max-priority", AMQPValue::LongInt(256))]),
        )
        .await
        .unwrap_err();
    assert_eq!(amqp_code(&err), Some(406), "{err:?}");
    broker.stop().await;
}

#[tokio::test]
async fn a_resource_alarm_blocks_publishers_until_it_clears() {
    let broker = TestBroker::start().await.unwrap();
    let publisher = connect(&broker).await;
    let consumer_conn = connect(&broker).await;
    let ch = channel(&publisher).await;
    declare(&ch, "alarmed").await;
    confirm_mode(&ch).await;
    assert!(publish_confirmed(&ch, "", "alarmed", b"before", BasicProperties::default()).await);
    let router = broker.core().router();
    router.set_resource_alarm(Some("low on disk".into()));
    let confirm = publish_pending(&ch, "", "alarmed", b"during", BasicProperties::default()).await;
    assert!(
        wait_until(|| publisher.status().blocked()).await,
        "connection.blocked"
    );
    // Held back: the message is not enqueued while the alarm lasts...
    tokio::time::sleep(Duration::from_millis(200)).await;
    let q = router.queue("/", "alarmed").unwrap();
    assert_eq!(q.message_count(), 1);
    // ...while a connection that does not publish is not blocked and still consumes.
    let cch = channel(&consumer_conn).await;
    assert_eq!(get_body(&cch, "alarmed").await, b"before");
    assert!(!consumer_conn.status().blocked());
    router.set_resource_alarm(None);
    assert!(confirm.await.unwrap().is_ack());
    assert!(
        wait_until(|| !publisher.status().blocked()).await,
        "connection.unblocked"
    );
    assert_eq!(get_body(&cch, "alarmed").await, b"during");
    broker.stop().await;
}

#[tokio::test]
async fn a_full_priority_queue_drops_from_its_head_the_highest_priority() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_with(
        &ch,
        "pqf",
        args(vec![
            ("x-max-priority", AMQPValue::LongInt(9)),
            ("x-max-length", AMQPValue::LongInt(2)),
        ]),
    )
    .await;
    confirm_mode(&ch).await;
    for (body, p) in [("mid", 5), ("urgent", 9), ("low", 1)] {
        assert!(publish_confirmed(&ch, "", "pqf", body.as_bytes(), with_priority(p)).await);
    }
    // RabbitMQ documents it: the head of a priority queue is its highest priority, so that is
    // what max-length drops.
    assert_eq!(count(&ch, "pqf").await, 2);
    // "urgent" went (a FIFO queue would have dropped "mid"); the rest come by priority.
    assert_eq!(get_body(&ch, "pqf").await, b"mid");
    assert_eq!(get_body(&ch, "pqf").await, b"low");
    broker.stop().await;
}

/// The value of an unlabelled or exactly-labelled series in a Prometheus scrape.
async fn scraped(broker: &TestBroker, series: &str) -> Option<f64> {
    let text = reqwest::get(format!("{}/metrics", broker.http_url()))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("scrape body");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn the_memory_high_watermark_blocks_publishers_until_it_is_raised() {
    use ferry::observe::alarms::Watermark;
    // Any process is above one byte: the alarm goes up as soon as the monitor samples.
    let broker =
        TestBroker::with(|b| b.configure(|c| c.amqp.vm_memory_high_watermark_absolute = 1))
            .await
            .unwrap();
    let mut alarm = broker.core().router().subscribe_alarm();
    tokio::time::timeout(WAIT, alarm.wait_for(|a| a.is_some()))
        .await
        .expect("memory alarm in time")
        .unwrap();
    assert_eq!(alarm.borrow().as_deref(), Some("low on memory"));
    let rss = scraped(&broker, "ferry_process_resident_memory_bytes")
        .await
        .expect("resident memory gauge");
    assert!(rss > 1e6, "{rss}");
    assert_eq!(
        scraped(&broker, "ferry_resource_alarm{resource=\"memory\"}").await,
        Some(1.0)
    );
    assert_eq!(
        scraped(&broker, "ferry_resource_alarm{resource=\"disk\"}").await,
        Some(0.0)
    );

    let publisher = connect(&broker).await;
    let ch = channel(&publisher).await;
    // Declaring is not publishing: the connection is only blocked once it publishes.
    declare(&ch, "mem").await;
    confirm_mode(&ch).await;
    let confirm = publish_pending(&ch, "", "mem", b"held", BasicProperties::default()).await;
    assert!(
        wait_until(|| publisher.status().blocked()).await,
        "connection.blocked"
    );
    let q = broker.core().router().queue("/", "mem").unwrap();
    assert_eq!(q.message_count(), 0, "a blocked connection is not read");

    // RabbitMQ's `set_vm_memory_high_watermark`, at run time: the alarm clears at once.
    broker.set_memory_high_watermark(Watermark::Relative(1.0));
    assert!(confirm.await.unwrap().is_ack());
    assert!(
        wait_until(|| !publisher.status().blocked()).await,
        "connection.unblocked"
    );
    assert_eq!(get_body(&ch, "mem").await, b"held");
    assert!(alarm.borrow().is_none());
    assert_eq!(
        scraped(&broker, "ferry_resource_alarm{resource=\"memory\"}").await,
        Some(0.0)
    );
    broker.stop().await;
}

#[tokio::test]
async fn dead_letters_to_a_headers_exchange_are_routed_by_their_headers() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    exchange(&ch, "dlx.h", ExchangeKind::Headers, FieldTable::default()).await;
    declare(&ch, "invoices").await;
    declare(&ch, "receipts").await;
    let matching = |kind: &str| {
        args(vec![
            ("x-match", long("all")),
            ("kind", long(kind)),
            ("region", long("eu")),
        ])
    };
    bind_with(&ch, "invoices", "dlx.h", "", matching("invoice")).await;
    bind_with(&ch, "receipts", "dlx.h", "", matching("receipt")).await;
    declare_with(
        &ch,
        "billing",
        args(vec![("x-dead-letter-exchange", long("dlx.h"))]),
    )
    .await;
    confirm_mode(&ch).await;
    let headers = args(vec![("kind", long("invoice")), ("region", long("eu"))]);
    let props = BasicProperties::default().with_headers(headers);
    assert!(publish_confirmed(&ch, "", "billing", b"inv-1", props).await);
    let m = get(&ch, "billing", false).await.expect("a message");
    m.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();

    let mut dead = consume(&ch, "invoices", true).await;
    let d = next(&mut dead).await;
    assert_eq!(d.data, b"inv-1");
    // Routed by the message's own headers, which it keeps, with x-death added.
    assert_eq!(header(&d, "kind"), Some(&long("invoice")));
    let death = last_death(&d);
    assert_eq!(death.inner().get("reason"), Some(&long("rejected")));
    assert_eq!(death.inner().get("queue"), Some(&long("billing")));
    assert_eq!(count(&ch, "receipts").await, 0);
    assert_eq!(count(&ch, "billing").await, 0);
    broker.stop().await;
}

/// The core routes a dead letter by its typed headers from the stored record alone (no adapter
/// decodes them for it): an integer and a boolean match bindings by value, whatever the wire
/// width, and the consumer of the dead letter gets the exact AMQP types back.
#[tokio::test]
async fn dead_letters_are_routed_by_typed_header_values() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    exchange(
        &ch,
        "dlx.typed",
        ExchangeKind::Headers,
        FieldTable::default(),
    )
    .await;
    declare(&ch, "second-attempts").await;
    declare(&ch, "other-attempts").await;
    let attempt = |n: i64| {
        args(vec![
            ("x-match", long("all")),
            ("attempt", AMQPValue::LongLongInt(n)),
            ("urgent", AMQPValue::Boolean(true)),
        ])
    };
    bind_with(&ch, "second-attempts", "dlx.typed", "", attempt(2)).await;
    bind_with(&ch, "other-attempts", "dlx.typed", "", attempt(3)).await;
    declare_with(
        &ch,
        "work",
        args(vec![("x-dead-letter-exchange", long("dlx.typed"))]),
    )
    .await;
    confirm_mode(&ch).await;
    let headers = args(vec![
        ("attempt", AMQPValue::ShortInt(2)),
        ("urgent", AMQPValue::Boolean(true)),
        ("note", long("retry")),
    ]);
    let props = BasicProperties::default().with_headers(headers);
    assert!(publish_confirmed(&ch, "", "work", b"job-1", props).await);
    let m = get(&ch, "work", false).await.expect("a message");
    m.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();

    let mut dead = consume(&ch, "second-attempts", true).await;
    let d = next(&mut dead).await;
    assert_eq!(d.data, b"job-1");
    assert_eq!(header(&d, "attempt"), Some(&AMQPValue::ShortInt(2)));
    assert_eq!(header(&d, "urgent"), Some(&AMQPValue::Boolean(true)));
    assert_eq!(header(&d, "note"), Some(&long("retry")));
    assert_eq!(count(&ch, "other-attempts").await, 0);
    broker.stop().await;
}

/// A broker serving vhosts `/` and `staging`, with user `app` limited to `staging`.
async fn two_vhosts(dir: Option<&std::path::Path>) -> TestBroker {
    let dir = dir.map(|d| d.to_path_buf());
    TestBroker::with(move |b| {
        let b = b.configure(|c| {
            c.amqp.vhosts = vec!["/".into(), "staging".into()];
            c.amqp.users.push(ferry::config::AmqpUser {
                name: "app".into(),
                password: "app".into(),
            });
            c.amqp.permissions = vec![ferry::config::AmqpPermission {
                user: "app".into(),
                vhosts: vec!["staging".into()],
            }];
        });
        match dir {
            Some(d) => b.data_dir(d),
            None => b,
        }
    })
    .await
    .unwrap()
}

fn staging_url(broker: &TestBroker, user: &str) -> String {
    format!("amqp://{user}:{user}@{}/staging", broker.amqp_addr())
}

#[tokio::test]
async fn vhosts_keep_same_named_queues_and_exchanges_apart() {
    let broker = two_vhosts(None).await;
    let root = connect(&broker).await;
    let staging = connect_url(&staging_url(&broker, "guest")).await;
    let (rch, sch) = (channel(&root).await, channel(&staging).await);
    declare(&rch, "jobs").await;
    declare(&sch, "jobs").await;
    confirm_mode(&rch).await;
    confirm_mode(&sch).await;
    assert!(publish_confirmed(&rch, "", "jobs", b"root-1", BasicProperties::default()).await);
    assert!(publish_confirmed(&rch, "", "jobs", b"root-2", BasicProperties::default()).await);
    assert!(publish_confirmed(&sch, "", "jobs", b"staging", BasicProperties::default()).await);
    assert_eq!(count(&rch, "jobs").await, 2);
    assert_eq!(count(&sch, "jobs").await, 1);
    assert_eq!(get_body(&sch, "jobs").await, b"staging");
    assert_eq!(
        count(&rch, "jobs").await,
        2,
        "a get in staging leaves / alone"
    );

    // Each vhost has its own amq.* exchanges: a binding in one does not route the other's.
    bind(&sch, "jobs", "amq.direct", "k").await;
    assert!(publish_confirmed(&rch, "amq.direct", "k", b"x", BasicProperties::default()).await);
    assert!(publish_confirmed(&sch, "amq.direct", "k", b"y", BasicProperties::default()).await);
    assert_eq!(get_body(&sch, "jobs").await, b"y");
    assert_eq!(count(&sch, "jobs").await, 0);
    assert_eq!(count(&rch, "jobs").await, 2);

    // An exchange declared in / does not exist in staging.
    exchange(
        &rch,
        "only-root",
        ExchangeKind::Fanout,
        FieldTable::default(),
    )
    .await;
    let err = sch
        .exchange_declare(
            "only-root".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(amqp_code(&err), Some(404), "{err:?}");
    broker.stop().await;
}

#[tokio::test]
async fn a_user_may_open_only_the_vhosts_it_is_permitted() {
    let broker = two_vhosts(None).await;
    let app = connect_url(&staging_url(&broker, "app")).await;
    assert!(app.status().connected());
    let url = format!("amqp://app:app@{}/%2f", broker.amqp_addr());
    let err = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap_err();
    assert_eq!(amqp_code(&err), Some(530), "{err:?}");
    // A vhost that is not configured is refused to everyone.
    let url = format!("amqp://guest:guest@{}/prod", broker.amqp_addr());
    let err = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap_err();
    assert_eq!(amqp_code(&err), Some(530), "{err:?}");
    broker.stop().await;
}

#[tokio::test]
async fn a_durable_queue_bound_to_amq_direct_in_a_vhost_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let broker = two_vhosts(Some(dir.path())).await;
        let conn = connect_url(&staging_url(&broker, "app")).await;
        let ch = channel(&conn).await;
        declare_durable(&ch, "orders", FieldTable::default()).await;
        bind(&ch, "orders", "amq.direct", "new").await;
        confirm_mode(&ch).await;
        let persistent = BasicProperties::default().with_delivery_mode(2);
        assert!(publish_confirmed(&ch, "amq.direct", "new", b"kept", persistent).await);
        conn.close(200, "bye".into()).await.unwrap();
        broker.stop().await;
    }
    let broker = two_vhosts(Some(dir.path())).await;
    let conn = connect_url(&staging_url(&broker, "app")).await;
    let ch = channel(&conn).await;
    assert_eq!(get_body(&ch, "orders").await, b"kept");
    confirm_mode(&ch).await;
    assert!(
        publish_confirmed(
            &ch,
            "amq.direct",
            "new",
            b"after",
            BasicProperties::default()
        )
        .await
    );
    assert_eq!(get_body(&ch, "orders").await, b"after");
    assert!(broker.core().router().queue("/", "orders").is_none());
    broker.stop().await;
}
