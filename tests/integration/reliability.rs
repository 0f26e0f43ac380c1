//! The reliability rules of issue #5 through real clients: retry with backoff, delivery limits,
//! delayed publishing (`x-delay`), deduplication and the consumer circuit breaker — each also
//! across a restart in the middle of its waiting state. Timing rules are pinned twice: end to
//! end with lapin on the real clock (lower bounds only, generous upper bounds), and exactly on
//! the core's API with a manual clock under `tokio::time::pause()`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ferry::broker::breaker::BreakerState;
use ferry::broker::message::Message;
use ferry::broker::routing::QueueSpec;
use ferry::testing::TestBroker;
use ferry::Clock;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::common;
use common::amqp::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn int(n: i64) -> AMQPValue {
    AMQPValue::LongLongInt(n)
}

async fn nack_requeue(d: &lapin::message::Delivery) {
    d.nack(BasicNackOptions {
        requeue: true,
        ..Default::default()
    })
    .await
    .expect("nack");
}

fn death_reason(d: &lapin::message::Delivery) -> Option<String> {
    let AMQPValue::FieldArray(deaths) = header(d, "x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    match first.inner().get("reason")? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        other => Some(format!("{other:?}")),
    }
}

fn with_headers(pairs: Vec<(&str, AMQPValue)>) -> BasicProperties {
    BasicProperties::default().with_headers(args(pairs))
}

#[tokio::test]
async fn nacked_messages_retry_with_exponential_backoff_then_dead_letter() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "work.dlq").await;
    declare_with(
        &ch,
        "work",
        args(vec![
            ("x-delayed-retry-min", int(150)),
            ("x-delayed-retry-multiplier", int(2)),
            ("x-delivery-limit", int(3)),
            ("x-dead-letter-exchange", long("")),
            ("x-dead-letter-routing-key", long("work.dlq")),
        ]),
    )
    .await;
    publish(&ch, "", "work", b"poison").await;
    let mut consumer = consume(&ch, "work", false).await;
    let mut arrived = Vec::new();
    for attempt in 0..4 {
        let d = next(&mut consumer).await;
        arrived.push(Instant::now());
        assert_eq!(d.data, b"poison");
        assert_eq!(d.redelivered, attempt > 0);
        nack_requeue(&d).await;
    }
    // Delays 150, 300, 600 ms: each delivery comes no sooner than its backoff after the
    // previous one was nacked (which was after it arrived).
    for (i, want) in [150u64, 300, 600].into_iter().enumerate() {
        let gap = arrived[i + 1] - arrived[i];
        assert!(
            gap >= ms(want),
            "retry {} after {gap:?}, want >= {want} ms",
            i + 1
        );
        assert!(gap < ms(want + 2000), "retry {} after {gap:?}", i + 1);
    }
    // The fourth return is past x-delivery-limit 3: dead-lettered with reason delivery_limit.
    let dead = get(&ch, "work.dlq", false).await.expect("dead letter");
    assert_eq!(dead.delivery.data, b"poison");
    assert_eq!(
        death_reason(&dead.delivery).as_deref(),
        Some("delivery_limit")
    );
    assert_eq!(count(&ch, "work").await, 0);
    conn.close(200, "bye".into()).await.ok();
    broker.stop().await;
}

#[tokio::test]
async fn a_message_waiting_to_retry_does_not_block_the_ones_behind_it() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_with(&ch, "jobs", args(vec![("x-delayed-retry-min", int(1500))])).await;
    publish(&ch, "", "jobs", b"a").await;
    publish(&ch, "", "jobs", b"b").await;
    ch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let mut consumer = consume(&ch, "jobs", false).await;
    let a = next(&mut consumer).await;
    assert_eq!(a.data, b"a");
    let nacked = Instant::now();
    nack_requeue(&a).await;
    let b = next(&mut consumer).await;
    assert_eq!(b.data, b"b", "b is delivered while a waits");
    assert!(nacked.elapsed() < ms(1500), "b waited for a's backoff");
    b.ack(BasicAckOptions::default()).await.unwrap();
    // While a waits it is counted in the queue but is not deliverable.
    assert_eq!(count(&ch, "jobs").await, 1);
    let a = next(&mut consumer).await;
    assert_eq!(a.data, b"a");
    assert!(a.redelivered);
    assert!(nacked.elapsed() >= ms(1500));
    a.ack(BasicAckOptions::default()).await.unwrap();
    broker.stop().await;
}

#[tokio::test]
async fn a_retry_delay_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let nacked;
    {
        let broker = TestBroker::with(|b| b.data_dir(&path)).await.unwrap();
        let conn = connect(&broker).await;
        let ch = channel(&conn).await;
        confirm_mode(&ch).await;
        declare_durable(
            &ch,
            "durable-retry",
            args(vec![("x-delayed-retry-min", int(2000))]),
        )
        .await;
        let persistent = BasicProperties::default().with_delivery_mode(2);
        assert!(publish_confirmed(&ch, "", "durable-retry", b"m", persistent).await);
        let m = get(&ch, "durable-retry", false).await.expect("message");
        nacked = Instant::now();
        m.delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .unwrap();
        // The nack must be applied before the stop; a count round-trips through the broker.
        assert_eq!(count(&ch, "durable-retry").await, 1);
        conn.close(200, "bye".into()).await.ok();
        broker.stop().await;
    }
    let broker = TestBroker::with(|b| b.data_dir(&path)).await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let mut consumer = consume(&ch, "durable-retry", false).await;
    let d = next(&mut consumer).await;
    assert_eq!(d.data, b"m");
    assert!(d.redelivered);
    assert!(
        nacked.elapsed() >= ms(2000),
        "delivered {:?} after the nack: the restart forgot the delay",
        nacked.elapsed()
    );
    d.ack(BasicAckOptions::default()).await.unwrap();
    broker.stop().await;
}

/// Declares a transient queue with `arguments` through the core's API.
async fn core_queue(
    broker: &TestBroker,
    name: &str,
    arguments: serde_json::Value,
) -> std::sync::Arc<ferry::broker::queue::Queue> {
    broker
        .core()
        .router()
        .declare_queue(QueueSpec {
            vhost: "/".into(),
            name: name.into(),
            passive: false,
            durable: false,
            exclusive_owner: None,
            auto_delete: false,
            arguments,
            connection: 1,
            server_named: false,
        })
        .await
        .unwrap()
        .queue
}

/// Publishes `body` to queue `name` through the default exchange, durably.
async fn core_publish(broker: &TestBroker, name: &str, body: String, timestamp: i64) {
    let published = broker
        .core()
        .router()
        .publish(
            "/",
            "",
            Message {
                key: Some(name.to_string().into()),
                value: Some(body.into()),
                headers: vec![],
                timestamp,
            },
        )
        .await
        .unwrap();
    for p in published.pending {
        p.wait().await.unwrap();
    }
}

/// Backoff timings exactly, on the core's API with a manual clock (no sleeping).
#[tokio::test(start_paused = true)]
async fn backoff_timings_on_a_manual_clock() {
    let clock = Clock::manual(1_000_000);
    let broker = TestBroker::with(|b| b.clock(clock.clone())).await.unwrap();
    let q = core_queue(
        &broker,
        "timed",
        serde_json::json!({
            "x-delayed-retry-type": "all",
            "x-delayed-retry-min": 100,
            "x-delayed-retry-max": 250,
            "x-delivery-limit": 4,
        }),
    )
    .await;
    core_publish(&broker, "timed", "m".into(), clock.now_ms()).await;
    // RabbitMQ's linear formula min x n, capped by max: 100, 200, 250, 250.
    for (attempt, delay) in [(1, 100), (2, 200), (3, 250), (4, 250)] {
        let got = q.take(10, false).unwrap();
        assert_eq!(got.len(), 1, "attempt {attempt}");
        assert_eq!(got[0].delivery_count, attempt - 1);
        q.requeue_returned(&[got[0].offset]);
        assert!(q.take(10, false).unwrap().is_empty());
        assert_eq!(q.delayed_count(), 1);
        clock.advance_ms(delay - 1);
        assert!(
            q.take(10, false).unwrap().is_empty(),
            "retry {attempt} released before {delay} ms"
        );
        clock.advance_ms(1);
        assert_eq!(q.message_count(), 1, "retry {attempt} due after {delay} ms");
        assert_eq!(q.delayed_count(), 0);
    }
    // The fifth return is over the limit of 4; without a dead-letter exchange it is dropped.
    let got = q.take(10, false).unwrap();
    q.requeue(&[got[0].offset]);
    clock.advance_ms(10_000);
    assert_eq!(q.message_count(), 0);
    assert_eq!(q.unacked_count(), 0);
    broker.stop().await;
}

/// The breaker's states on the core's API with a manual clock.
#[tokio::test(start_paused = true)]
async fn circuit_breaker_states_on_a_manual_clock() {
    let clock = Clock::manual(5_000_000);
    let broker = TestBroker::with(|b| b.clock(clock.clone())).await.unwrap();
    let q = core_queue(
        &broker,
        "guarded",
        serde_json::json!({
            "x-circuit-breaker-failures": 2,
            "x-circuit-breaker-cooldown": 1000,
        }),
    )
    .await;
    for i in 0..5 {
        core_publish(&broker, "guarded", format!("m{i}"), clock.now_ms()).await;
    }
    let consumer = q.add_consumer(0);
    assert_eq!(q.breaker_state(consumer), Some(BreakerState::Closed));
    let got = q.take_for(consumer, 2, false).unwrap();
    assert_eq!(got.len(), 2);
    for m in &got {
        q.requeue(&[m.offset]);
        q.record_outcome(consumer, false, 1);
    }
    assert!(matches!(
        q.breaker_state(consumer),
        Some(BreakerState::Open { .. })
    ));
    assert!(q.take_for(consumer, 10, false).unwrap().is_empty(), "open");
    clock.advance_ms(999);
    assert!(q.take_for(consumer, 10, false).unwrap().is_empty(), "open");
    clock.advance_ms(1);
    let probe = q.take_for(consumer, 10, false).unwrap();
    assert_eq!(probe.len(), 1, "half-open lets one probe through");
    assert_eq!(
        q.breaker_state(consumer),
        Some(BreakerState::HalfOpen { probe_out: true })
    );
    assert!(q.take_for(consumer, 10, false).unwrap().is_empty());
    // The probe fails: open again for a full cool-down.
    q.requeue(&[probe[0].offset]);
    q.record_outcome(consumer, false, 1);
    assert!(q.take_for(consumer, 10, false).unwrap().is_empty());
    clock.advance_ms(1000);
    let probe = q.take_for(consumer, 10, false).unwrap();
    assert_eq!(probe.len(), 1);
    q.ack(&[probe[0].offset]);
    q.record_outcome(consumer, true, 1);
    assert_eq!(q.breaker_state(consumer), Some(BreakerState::Closed));
    assert_eq!(q.take_for(consumer, 10, false).unwrap().len(), 4);
    broker.stop().await;
}

#[tokio::test]
async fn a_consumer_circuit_breaker_pauses_then_probes_over_amqp() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "flaky").await;
    for i in 0..5 {
        publish(&ch, "", "flaky", format!("m{i}").as_bytes()).await;
    }
    ch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    // The breaker comes from the consumer's own arguments.
    let mut consumer = ch
        .basic_consume(
            "flaky".into(),
            "worker".into(),
            BasicConsumeOptions::default(),
            args(vec![
                ("x-circuit-breaker-failures", int(3)),
                ("x-circuit-breaker-cooldown", int(700)),
            ]),
        )
        .await
        .unwrap();
    for _ in 0..3 {
        let d = next(&mut consumer).await;
        nack_requeue(&d).await;
    }
    let tripped = Instant::now();
    let metrics = reqwest::get(format!("{}/metrics", broker.http_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ferry_circuit_breaker_state{")
                && l.contains("queue=\"flaky\"")
                && l.ends_with(" 1")),
        "breaker not open in /metrics:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("circuit"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Open: nothing for the cool-down, then one probe.
    let probe = next(&mut consumer).await;
    assert!(
        tripped.elapsed() >= ms(650),
        "probe after {:?}",
        tripped.elapsed()
    );
    probe.ack(BasicAckOptions::default()).await.unwrap();
    // Closed again: the rest flows at once.
    for _ in 0..4 {
        let d = next(&mut consumer).await;
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    let flowed = Instant::now();
    assert!(flowed - tripped < ms(700 + 3000));
    assert_eq!(count(&ch, "flaky").await, 0);
    broker.stop().await;
}

#[tokio::test]
async fn x_delay_routes_a_message_when_due() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    confirm_mode(&ch).await;
    declare(&ch, "later").await;
    bind(&ch, "later", "amq.direct", "later").await;
    let published = Instant::now();
    assert!(
        publish_confirmed(
            &ch,
            "amq.direct",
            "later",
            b"delayed",
            with_headers(vec![("x-delay", int(600))]),
        )
        .await
    );
    assert!(
        publish_confirmed(
            &ch,
            "amq.direct",
            "later",
            b"now",
            BasicProperties::default()
        )
        .await
    );
    let mut consumer = consume(&ch, "later", false).await;
    let first = next(&mut consumer).await;
    assert_eq!(first.data, b"now");
    first.ack(BasicAckOptions::default()).await.unwrap();
    let second = next(&mut consumer).await;
    assert_eq!(second.data, b"delayed");
    assert!(published.elapsed() >= ms(600));
    assert_eq!(second.exchange.as_str(), "amq.direct");
    second.ack(BasicAckOptions::default()).await.unwrap();

    // Declarations written for the delayed-message plugin work too.
    ch.exchange_declare(
        "plugin-style".into(),
        ExchangeKind::Custom("x-delayed-message".into()),
        ExchangeDeclareOptions::default(),
        args(vec![("x-delayed-type", long("fanout"))]),
    )
    .await
    .expect("x-delayed-message exchange");
    bind(&ch, "later", "plugin-style", "").await;
    assert!(
        publish_confirmed(
            &ch,
            "plugin-style",
            "any",
            b"fanned",
            with_headers(vec![("x-delay", int(200))]),
        )
        .await
    );
    let third = next(&mut consumer).await;
    assert_eq!(third.data, b"fanned");
    broker.stop().await;
}

#[tokio::test]
async fn a_delayed_publish_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let published;
    {
        let broker = TestBroker::with(|b| b.data_dir(&path)).await.unwrap();
        let conn = connect(&broker).await;
        let ch = channel(&conn).await;
        confirm_mode(&ch).await;
        declare_durable(&ch, "delayed-durable", FieldTable::default()).await;
        published = Instant::now();
        assert!(
            publish_confirmed(
                &ch,
                "",
                "delayed-durable",
                b"after-restart",
                with_headers(vec![("x-delay", int(1500))]).with_delivery_mode(2),
            )
            .await
        );
        assert_eq!(count(&ch, "delayed-durable").await, 0);
        conn.close(200, "bye".into()).await.ok();
        broker.stop().await;
    }
    let broker = TestBroker::with(|b| b.data_dir(&path)).await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let mut consumer = consume(&ch, "delayed-durable", false).await;
    let d = next(&mut consumer).await;
    assert_eq!(d.data, b"after-restart");
    assert!(published.elapsed() >= ms(1500));
    d.ack(BasicAckOptions::default()).await.unwrap();
    // Routed exactly once: nothing else arrives, and the delay queue is empty.
    assert!(
        tokio::time::timeout(ms(500), futures::StreamExt::next(&mut consumer))
            .await
            .is_err(),
        "a second copy arrived"
    );
    assert_eq!(count(&ch, "amq.ferry.delayed").await, 0);
    broker.stop().await;
}

#[tokio::test]
async fn repeats_of_a_message_id_are_dropped_within_the_window_and_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let dedup_args = || {
        args(vec![
            ("x-message-deduplication", AMQPValue::Boolean(true)),
            ("x-cache-ttl", int(60_000)),
        ])
    };
    let id = |s: &str| BasicProperties::default().with_message_id(s.into());
    {
        let broker = TestBroker::with(|b| b.data_dir(&path)).await.unwrap();
        let conn = connect(&broker).await;
        let ch = channel(&conn).await;
        confirm_mode(&ch).await;
        declare_durable(&ch, "once", dedup_args()).await;
        // Every publish is confirmed, duplicates too: the message is in the queue.
        assert!(publish_confirmed(&ch, "", "once", b"a1", id("a")).await);
        assert!(publish_confirmed(&ch, "", "once", b"a2", id("a")).await);
        assert!(publish_confirmed(&ch, "", "once", b"b", id("b")).await);
        let keyed = || with_headers(vec![("x-deduplication-header", long("k"))]);
        assert!(publish_confirmed(&ch, "", "once", b"k1", keyed()).await);
        assert!(publish_confirmed(&ch, "", "once", b"k2", keyed()).await);
        // No id: never dropped.
        assert!(publish_confirmed(&ch, "", "once", b"x", BasicProperties::default()).await);
        assert!(publish_confirmed(&ch, "", "once", b"x", BasicProperties::default()).await);
        assert_eq!(count(&ch, "once").await, 5);
        conn.close(200, "bye".into()).await.ok();
        broker.stop().await;
    }
    let broker = TestBroker::with(|b| b.data_dir(&path)).await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    confirm_mode(&ch).await;
    assert!(publish_confirmed(&ch, "", "once", b"a3", id("a")).await);
    assert!(publish_confirmed(&ch, "", "once", b"c", id("c")).await);
    assert_eq!(count(&ch, "once").await, 6);
    let mut bodies = Vec::new();
    while let Some(m) = ch
        .basic_get("once".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        bodies.push(String::from_utf8(m.delivery.data.clone()).unwrap());
    }
    assert_eq!(bodies, ["a1", "b", "k1", "x", "x", "c"]);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_produced_repeats_reach_a_deduplicating_queue_once() {
    let broker = TestBroker::start().await.unwrap();
    broker
        .core()
        .create_topic("payments", 2, BTreeMap::new())
        .await
        .unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_with(
        &ch,
        "payments.once",
        args(vec![("x-message-deduplication", AMQPValue::Boolean(true))]),
    )
    .await;
    bind(&ch, "payments.once", "payments", "#").await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.kafka_bootstrap())
        .set("message.timeout.ms", "20000")
        .set("linger.ms", "0")
        .create()
        .unwrap();
    // A retrying producer sends p1 twice (same message-id header); p2 once.
    for (key, id) in [("k1", "p1"), ("k1", "p1"), ("k2", "p2")] {
        producer
            .send(
                FutureRecord::to("payments").key(key).payload(id).headers(
                    OwnedHeaders::new().insert(Header {
                        key: "message-id",
                        value: Some(id.as_bytes()),
                    }),
                ),
                WAIT,
            )
            .await
            .expect("produce");
    }
    let mut consumer = consume(&ch, "payments.once", false).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let d = next(&mut consumer).await;
        got.push(String::from_utf8(d.data.clone()).unwrap());
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    got.sort();
    assert_eq!(got, ["p1", "p2"]);
    assert!(
        tokio::time::timeout(ms(500), futures::StreamExt::next(&mut consumer))
            .await
            .is_err(),
        "the repeat got through"
    );
    broker.stop().await;
}

#[tokio::test]
async fn bad_reliability_arguments_are_refused_with_406() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    for (name, bad) in [
        ("r1", args(vec![("x-delayed-retry-min", int(0))])),
        (
            "r2",
            args(vec![("x-delayed-retry-type", long("sometimes"))]),
        ),
        ("r3", args(vec![("x-circuit-breaker-failures", int(0))])),
        ("r4", args(vec![("x-message-deduplication", long("yes"))])),
    ] {
        let ch = channel(&conn).await;
        let err = ch
            .queue_declare(name.into(), QueueDeclareOptions::default(), bad)
            .await
            .expect_err(name);
        assert_eq!(amqp_code(&err), Some(406), "{name}: {err}");
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_holds_from_a_topic_to_a_single_active_consumer() {
    let broker = TestBroker::start().await.unwrap();
    broker
        .core()
        .create_topic("ledger", 4, BTreeMap::new())
        .await
        .unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_with(
        &ch,
        "ledger.worker",
        args(vec![("x-single-active-consumer", AMQPValue::Boolean(true))]),
    )
    .await;
    bind(&ch, "ledger.worker", "ledger", "#").await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.kafka_bootstrap())
        .set("message.timeout.ms", "20000")
        .set("linger.ms", "5")
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    let keys = ["acct-1", "acct-2", "acct-3", "acct-4", "acct-5"];
    let per_key = 40;
    for seq in 0..per_key {
        for k in keys {
            let payload = format!("{k}:{seq}");
            producer
                .send(FutureRecord::to("ledger").key(k).payload(&payload), WAIT)
                .await
                .expect("produce");
        }
    }
    // Two consumers; only the active one receives, in order per key.
    let ch2 = channel(&conn).await;
    let mut standby = consume(&ch2, "ledger.worker", false).await;
    let mut active = consume(&ch, "ledger.worker", false).await;
    let (mut first, mut second) = (None, None);
    let total = keys.len() * per_key;
    let mut seen: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for _ in 0..total {
        let (d, from_standby) = tokio::select! {
            d = futures::StreamExt::next(&mut standby) => (d, true),
            d = futures::StreamExt::next(&mut active) => (d, false),
        };
        let d = d.expect("stream open").expect("delivery");
        if from_standby {
            first.get_or_insert(true);
        } else {
            second.get_or_insert(true);
        }
        let text = String::from_utf8(d.data.clone()).unwrap();
        let (k, seq) = text.split_once(':').unwrap();
        seen.entry(k.to_string())
            .or_default()
            .push(seq.parse().unwrap());
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert!(
        first.is_none() || second.is_none(),
        "both consumers received: not a single active consumer"
    );
    for (k, seqs) in &seen {
        assert_eq!(
            seqs,
            &(0..per_key as u32).collect::<Vec<_>>(),
            "order of {k}"
        );
    }
    broker.stop().await;
}

/// ARCHITECTURE rule 4: a queue's disk use follows its backlog. Segments whose messages are
/// all settled are deleted; unsettled ones survive, also across a restart.
#[tokio::test]
async fn settled_queue_segments_are_deleted_and_the_rest_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let small_segments = |b: ferry::BrokerBuilder| {
        b.data_dir(&path)
            .configure(|c| c.log.segment_bytes = 16 * 1024)
    };
    let body = |i: usize| format!("{i:04}").repeat(256);
    {
        let broker = TestBroker::with(small_segments).await.unwrap();
        let conn = connect(&broker).await;
        let ch = channel(&conn).await;
        confirm_mode(&ch).await;
        declare_durable(&ch, "backlog", FieldTable::default()).await;
        for i in 0..200 {
            let props = BasicProperties::default().with_delivery_mode(2);
            assert!(publish_confirmed(&ch, "", "backlog", body(i).as_bytes(), props).await);
        }
        let q = broker.core().router().queue("/", "backlog").unwrap();
        let segments_before = q.log().segment_count();
        assert!(segments_before >= 10, "{segments_before} segments");
        ch.basic_qos(50, BasicQosOptions::default()).await.unwrap();
        let mut consumer = consume(&ch, "backlog", false).await;
        for i in 0..150 {
            let d = next(&mut consumer).await;
            assert_eq!(d.data, body(i).as_bytes());
            d.ack(BasicAckOptions::default()).await.unwrap();
        }
        assert!(
            wait_until(|| q.log().log_start_offset() > 100).await,
            "log start stayed at {} ({} segments)",
            q.log().log_start_offset(),
            q.log().segment_count()
        );
        assert!(
            q.log().log_start_offset() <= 150,
            "an unsettled message's segment went"
        );
        assert!(q.log().segment_count() < segments_before / 2);
        // The files themselves go after the log's lock is released, on the blocking pool.
        let on_disk = || {
            let mut logs = 0;
            let mut retired = 0;
            let mut dirs = vec![path.clone()];
            while let Some(dir) = dirs.pop() {
                for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if entry.path().is_dir() {
                        dirs.push(entry.path());
                    } else if name.ends_with(".deleted") {
                        retired += 1;
                    } else if name.ends_with(".log")
                        && entry.path().to_string_lossy().contains("backlog")
                    {
                        logs += 1;
                    }
                }
            }
            (logs, retired)
        };
        assert!(
            wait_until(|| on_disk() == (q.log().segment_count(), 0)).await,
            "segment files on disk (logs, *.deleted): {:?}, segments {}",
            on_disk(),
            q.log().segment_count()
        );
        conn.close(200, "bye".into()).await.ok();
        broker.stop().await;
    }
    let broker = TestBroker::with(small_segments).await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    // 150 acked stay gone; the 50 that were delivered-but-unacked or never delivered remain.
    let mut rest = Vec::new();
    while let Some(m) = ch
        .basic_get("backlog".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        rest.push(m.delivery.data.clone());
    }
    assert_eq!(
        rest,
        (150..200).map(|i| body(i).into_bytes()).collect::<Vec<_>>()
    );
    broker.stop().await;
}

/// A topic's own deduplication window (`ferry.dedup.window.ms`) drops an AMQP publisher's
/// repeat of a message id, also right after a restart (the ids are re-read from the log).
#[tokio::test]
async fn a_topic_drops_repeated_message_ids_within_its_window_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let records = |broker: &TestBroker| -> i64 {
        let t = broker.core().topic("orders.once").unwrap();
        t.partitions().iter().map(|p| p.high_watermark()).sum()
    };
    let id = |s: &str| BasicProperties::default().with_message_id(s.into());
    {
        let broker = TestBroker::with(|b| b.data_dir(&path)).await.unwrap();
        broker
            .core()
            .create_topic(
                "orders.once",
                2,
                BTreeMap::from([("ferry.dedup.window.ms".to_string(), "60000".to_string())]),
            )
            .await
            .unwrap();
        let conn = connect(&broker).await;
        let ch = channel(&conn).await;
        confirm_mode(&ch).await;
        // A retrying publisher sends o-1 twice, even with another routing key; all confirmed.
        assert!(publish_confirmed(&ch, "orders.once", "k1", b"first", id("o-1")).await);
        assert!(publish_confirmed(&ch, "orders.once", "k2", b"again", id("o-1")).await);
        assert!(publish_confirmed(&ch, "orders.once", "k2", b"other", id("o-2")).await);
        assert_eq!(records(&broker), 2);
        conn.close(200, "bye".into()).await.ok();
        broker.stop().await;
    }
    let broker = TestBroker::with(|b| b.data_dir(&path)).await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    confirm_mode(&ch).await;
    assert!(publish_confirmed(&ch, "orders.once", "k3", b"late", id("o-1")).await);
    assert_eq!(records(&broker), 2, "a repeat got in after the restart");
    assert!(publish_confirmed(&ch, "orders.once", "k3", b"new", id("o-3")).await);
    assert_eq!(records(&broker), 3);
    // A topic without the setting keeps every publish.
    broker
        .core()
        .create_topic("orders.all", 1, BTreeMap::new())
        .await
        .unwrap();
    for _ in 0..2 {
        assert!(publish_confirmed(&ch, "orders.all", "k", b"x", id("same")).await);
    }
    let all = broker.core().topic("orders.all").unwrap();
    assert_eq!(all.partitions()[0].high_watermark(), 2);
    broker.stop().await;
}
