//! AMQP 0-9-1 with a real client: lapin against an in-process `TestBroker`.
//!
//! One test per behaviour of the first AMQP slice (handshake and auth, routing for every
//! exchange type, publish/consume with properties, confirms, prefetch, acks and requeues,
//! basic.get, channel errors, durability across a restart), plus raw-socket tests for what a
//! well-behaved client never sends (a wrong protocol header, an oversized frame).

use std::time::Duration;

use ferry::testing::TestBroker;
use futures::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common;
use common::amqp::*;

#[tokio::test]
async fn publish_consume_round_trip_preserves_properties_and_headers() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    let mut headers = FieldTable::default();
    headers.insert("n".into(), AMQPValue::LongInt(42));
    headers.insert("s".into(), AMQPValue::LongString(LongString::from("x")));
    headers.insert("b".into(), AMQPValue::Boolean(true));
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_correlation_id("corr-1".into())
        .with_reply_to("replies".into())
        .with_message_id("m-1".into())
        .with_delivery_mode(2)
        .with_priority(4)
        .with_timestamp(1_700_000_000)
        .with_type("order.created".into())
        .with_app_id("tests".into())
        .with_headers(headers);
    ch.basic_publish(
        "".into(),
        "q".into(),
        BasicPublishOptions::default(),
        b"{\"a\":1}",
        props.clone(),
    )
    .await
    .unwrap();
    let mut consumer = ch
        .basic_consume(
            "q".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert!(consumer.tag().as_str().starts_with("amq.ctag-"));
    let d = next(&mut consumer).await;
    assert_eq!(d.data, b"{\"a\":1}");
    assert_eq!(d.routing_key.as_str(), "q");
    assert_eq!(d.exchange.as_str(), "");
    assert!(!d.redelivered);
    assert_eq!(d.properties, props);
    d.ack(BasicAckOptions::default()).await.unwrap();
    conn.close(200, "bye".into()).await.unwrap();
    broker.stop().await;
}

#[tokio::test]
async fn routing_direct_fanout_topic_headers_and_default() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    for q in ["d1", "f1", "f2", "t1", "t2", "h_all", "h_any", "ad"] {
        declare(&ch, q).await;
    }
    ch.exchange_declare(
        "ex.direct".into(),
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_declare(
        "ex.fanout".into(),
        ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_declare(
        "ex.topic".into(),
        ExchangeKind::Topic,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_declare(
        "ex.headers".into(),
        ExchangeKind::Headers,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let bind = |q: &'static str, ex: &'static str, key: &'static str, args: FieldTable| {
        let ch = ch.clone();
        async move {
            ch.queue_bind(
                q.into(),
                ex.into(),
                key.into(),
                QueueBindOptions::default(),
                args,
            )
            .await
            .unwrap()
        }
    };
    bind("d1", "ex.direct", "red", FieldTable::default()).await;
    bind("f1", "ex.fanout", "", FieldTable::default()).await;
    bind("f2", "ex.fanout", "ignored", FieldTable::default()).await;
    bind("t1", "ex.topic", "*.orange.*", FieldTable::default()).await;
    bind("t2", "ex.topic", "lazy.#", FieldTable::default()).await;
    bind("ad", "amq.direct", "k", FieldTable::default()).await;
    let mut all = FieldTable::default();
    all.insert("x-match".into(), AMQPValue::LongString("all".into()));
    all.insert("format".into(), AMQPValue::LongString("pdf".into()));
    all.insert("type".into(), AMQPValue::LongString("report".into()));
    bind("h_all", "ex.headers", "", all).await;
    let mut any = FieldTable::default();
    any.insert("x-match".into(), AMQPValue::LongString("any".into()));
    any.insert("format".into(), AMQPValue::LongString("zip".into()));
    any.insert("type".into(), AMQPValue::LongString("report".into()));
    bind("h_any", "ex.headers", "", any).await;

    publish(&ch, "ex.direct", "red", b"direct-red").await;
    publish(&ch, "ex.direct", "blue", b"direct-blue").await;
    publish(&ch, "ex.fanout", "whatever", b"fan").await;
    publish(&ch, "ex.topic", "quick.orange.rabbit", b"t-orange").await;
    publish(&ch, "ex.topic", "lazy.brown.fox.jumps", b"t-lazy").await;
    publish(&ch, "ex.topic", "lazy", b"t-lazy0").await;
    publish(&ch, "ex.topic", "quick.brown.fox", b"t-none").await;
    publish(&ch, "amq.direct", "k", b"amq").await;
    publish(&ch, "", "d1", b"default").await;
    let with = |pairs: &[(&str, &str)]| {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), AMQPValue::LongString((*v).into()));
        }
        BasicProperties::default().with_headers(t)
    };
    ch.basic_publish(
        "ex.headers".into(),
        "".into(),
        Default::default(),
        b"h-both",
        with(&[("format", "pdf"), ("type", "report")]),
    )
    .await
    .unwrap();
    ch.basic_publish(
        "ex.headers".into(),
        "".into(),
        Default::default(),
        b"h-zip",
        with(&[("format", "zip")]),
    )
    .await
    .unwrap();

    let drain = |q: &'static str| {
        let ch = ch.clone();
        async move {
            let mut got = Vec::new();
            // Wait until publishes are durable, then drain.
            tokio::time::sleep(Duration::from_millis(200)).await;
            while let Some(m) = ch
                .basic_get(q.into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                got.push(String::from_utf8(m.delivery.data.clone()).unwrap());
            }
            got
        }
    };
    assert_eq!(drain("d1").await, vec!["direct-red", "default"]);
    assert_eq!(drain("f1").await, vec!["fan"]);
    assert_eq!(drain("f2").await, vec!["fan"]);
    assert_eq!(drain("t1").await, vec!["t-orange"]);
    assert_eq!(drain("t2").await, vec!["t-lazy", "t-lazy0"]);
    assert_eq!(drain("ad").await, vec!["amq"]);
    assert_eq!(drain("h_all").await, vec!["h-both"]);
    assert_eq!(drain("h_any").await, vec!["h-both", "h-zip"]);
    broker.stop().await;
}

#[tokio::test]
async fn mandatory_unroutable_is_returned_and_confirmed() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = ch
        .basic_publish(
            "".into(),
            "nowhere".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"lost",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
    let returned = confirm.take_message().expect("basic.return");
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.delivery.data, b"lost");
    broker.stop().await;
}

#[tokio::test]
async fn confirms_ack_after_the_message_is_durable() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "c").await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut confirms = Vec::new();
    for i in 0..50 {
        confirms.push(
            ch.basic_publish(
                "".into(),
                "c".into(),
                Default::default(),
                format!("m{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap(),
        );
    }
    for c in confirms {
        assert!(c.await.unwrap().is_ack());
    }
    // Every confirmed message is durable, hence visible: the count is exact right away.
    let q = broker.core().router().queue("/", "c").unwrap();
    assert_eq!(q.log().high_watermark(), 50);
    assert_eq!(q.message_count(), 50);
    broker.stop().await;
}

#[tokio::test]
async fn prefetch_holds_deliveries_until_acked() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "p").await;
    for i in 0..5 {
        publish(&ch, "", "p", format!("{i}").as_bytes()).await;
    }
    ch.basic_qos(2, BasicQosOptions::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume(
            "p".into(),
            "c1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let a = next(&mut consumer).await;
    let b = next(&mut consumer).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), consumer.next())
            .await
            .is_err(),
        "a third delivery while two are unacked"
    );
    a.ack(BasicAckOptions::default()).await.unwrap();
    let c = next(&mut consumer).await;
    assert_eq!(c.data, b"2");
    b.ack(BasicAckOptions::default()).await.unwrap();
    c.ack(BasicAckOptions::default()).await.unwrap();
    let d = next(&mut consumer).await;
    let e = next(&mut consumer).await;
    assert_eq!(
        (d.data.as_slice(), e.data.as_slice()),
        (&b"3"[..], &b"4"[..])
    );
    broker.stop().await;
}

#[tokio::test]
async fn nack_and_reject_requeue_with_redelivered_flag() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "r").await;
    publish(&ch, "", "r", b"one").await;
    publish(&ch, "", "r", b"two").await;
    let m1 = get(&ch, "r", false).await.unwrap();
    assert!(!m1.delivery.redelivered);
    m1.delivery
        .nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await
        .unwrap();
    let again = get(&ch, "r", false).await.unwrap();
    assert_eq!(again.delivery.data, b"one");
    assert!(again.delivery.redelivered);
    again
        .delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let two = get(&ch, "r", false).await.unwrap();
    assert_eq!(two.delivery.data, b"two");
    two.delivery
        .reject(BasicRejectOptions { requeue: true })
        .await
        .unwrap();
    let two_again = get(&ch, "r", false).await.unwrap();
    assert!(two_again.delivery.redelivered);
    two_again
        .delivery
        .ack(BasicAckOptions::default())
        .await
        .unwrap();
    // "one" was rejected without requeue and is gone; "two" is acked.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(ch
        .basic_get("r".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .is_none());
    broker.stop().await;
}

#[tokio::test]
async fn basic_get_and_get_empty() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "g").await;
    assert!(ch
        .basic_get("g".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .is_none());
    publish(&ch, "", "g", b"a").await;
    publish(&ch, "", "g", b"b").await;
    let first = get(&ch, "g", true).await.unwrap();
    assert_eq!(first.delivery.data, b"a");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = get(&ch, "g", true).await.unwrap();
    assert_eq!(second.delivery.data, b"b");
    assert_eq!(second.message_count, 0);
    assert!(ch
        .basic_get("g".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .is_none());
    broker.stop().await;
}

#[tokio::test]
async fn unacked_messages_return_when_the_channel_closes() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "u").await;
    publish(&ch, "", "u", b"x").await;
    let m = get(&ch, "u", false).await.unwrap();
    assert!(!m.delivery.redelivered);
    ch.close(200, "done".into()).await.unwrap();
    let ch2 = channel(&conn).await;
    let back = get(&ch2, "u", false).await.expect("requeued on close");
    assert_eq!(back.delivery.data, b"x");
    assert!(back.delivery.redelivered);
    broker.stop().await;
}

#[tokio::test]
async fn passive_declare_of_missing_queue_closes_the_channel_only() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let err = ch
        .queue_declare(
            "missing".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(amqp_code(&err), Some(404), "{err:?}");
    assert!(conn.status().connected());
    let ch2 = channel(&conn).await;
    declare(&ch2, "present").await;
    let ok = ch2
        .queue_declare(
            "present".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(ok.message_count(), 0);
    broker.stop().await;
}

#[tokio::test]
async fn inequivalent_redeclare_is_406() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "eq").await;
    let err = ch
        .queue_declare(
            "eq".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(amqp_code(&err), Some(406), "{err:?}");
    let ch = channel(&conn).await;
    ch.exchange_declare(
        "ex".into(),
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let err = ch
        .exchange_declare(
            "ex".into(),
            ExchangeKind::Fanout,
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(amqp_code(&err), Some(406), "{err:?}");
    broker.stop().await;
}

#[tokio::test]
async fn purge_and_delete_report_counts() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "pd").await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for _ in 0..3 {
        publish(&ch, "", "pd", b"m").await;
    }
    ch.wait_for_confirms().await.unwrap();
    let q = ch
        .queue_declare(
            "pd".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 3);
    assert_eq!(
        ch.queue_purge("pd".into(), QueuePurgeOptions::default())
            .await
            .unwrap(),
        3
    );
    for _ in 0..2 {
        publish(&ch, "", "pd", b"m").await;
    }
    ch.wait_for_confirms().await.unwrap();
    assert_eq!(
        ch.queue_delete("pd".into(), QueueDeleteOptions::default())
            .await
            .unwrap(),
        2
    );
    let ch = channel(&conn).await;
    let err = ch
        .queue_declare(
            "pd".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(amqp_code(&err), Some(404));
    broker.stop().await;
}

#[tokio::test]
async fn server_named_queue() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert!(q.name().as_str().starts_with("amq.gen-"), "{}", q.name());
    conn.close(200, "bye".into()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        broker
            .core()
            .router()
            .queue("/", q.name().as_str())
            .is_none(),
        "exclusive queue outlived its connection"
    );
    broker.stop().await;
}

#[tokio::test]
async fn durable_queue_survives_restart_and_acked_messages_stay_gone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    {
        let broker = TestBroker::with(|b| b.data_dir(&path)).await.unwrap();
        let conn = connect(&broker).await;
        let ch = channel(&conn).await;
        ch.queue_declare(
            "dq".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_declare(
            "tq".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.exchange_declare(
            "dx".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_bind(
            "dq".into(),
            "dx".into(),
            "a.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        for i in 0..4 {
            ch.basic_publish(
                "dx".into(),
                "a.b".into(),
                Default::default(),
                format!("m{i}").as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap();
        }
        ch.wait_for_confirms().await.unwrap();
        // m0 acked, m1 unacked at shutdown, m2 and m3 never delivered.
        let m0 = get(&ch, "dq", false).await.unwrap();
        m0.delivery.ack(BasicAckOptions::default()).await.unwrap();
        let m1 = get(&ch, "dq", false).await.unwrap();
        assert_eq!(m1.delivery.data, b"m1");
        tokio::time::sleep(Duration::from_millis(100)).await;
        broker.stop().await;
    }
    let broker = TestBroker::with(|b| b.data_dir(&path)).await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let q = ch
        .queue_declare(
            "dq".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 3);
    let mut got = Vec::new();
    while let Some(m) = ch
        .basic_get("dq".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        got.push((
            String::from_utf8(m.delivery.data.clone()).unwrap(),
            m.delivery.redelivered,
        ));
    }
    assert_eq!(
        got,
        vec![
            ("m1".to_string(), true),
            ("m2".to_string(), false),
            ("m3".to_string(), false)
        ]
    );
    // The binding survived too; the transient queue did not.
    publish(&ch, "dx", "a.c", b"after").await;
    assert_eq!(get(&ch, "dq", true).await.unwrap().delivery.data, b"after");
    let ch2 = channel(&conn).await;
    let err = ch2
        .queue_declare(
            "tq".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(amqp_code(&err), Some(404));
    broker.stop().await;
}

#[tokio::test]
async fn wrong_password_is_refused_with_403() {
    let broker = TestBroker::start().await.unwrap();
    let url = broker.amqp_url().replace("guest:guest", "guest:wrong");
    let err = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap_err();
    assert_eq!(amqp_code(&err), Some(403), "{err:?}");
    broker.stop().await;
}

#[tokio::test]
async fn unknown_vhost_is_refused_with_530() {
    let broker = TestBroker::start().await.unwrap();
    let url = broker.amqp_url().replace("%2f", "nope");
    let err = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap_err();
    assert_eq!(amqp_code(&err), Some(530), "{err:?}");
    broker.stop().await;
}

#[tokio::test]
async fn large_message_spans_several_frames() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "big").await;
    let body: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    publish(&ch, "", "big", &body).await;
    let mut consumer = ch
        .basic_consume(
            "big".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let d = next(&mut consumer).await;
    assert_eq!(d.data.len(), body.len());
    assert!(d.data == body);
    broker.stop().await;
}

#[tokio::test]
async fn consumers_share_a_queue_and_cancel_stops_delivery() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "cc").await;
    let mut consumer = ch
        .basic_consume(
            "cc".into(),
            "tag-1".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    publish(&ch, "", "cc", b"1").await;
    assert_eq!(next(&mut consumer).await.data, b"1");
    ch.basic_cancel("tag-1".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    publish(&ch, "", "cc", b"2").await;
    let got = get(&ch, "cc", true).await.unwrap();
    assert_eq!(got.delivery.data, b"2");
    let _: ShortString = "unused".into();
    broker.stop().await;
}

/// Reads until the peer closes, up to a limit.
async fn read_all(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn wrong_protocol_header_gets_the_right_one_back() {
    let broker = TestBroker::start().await.unwrap();
    let mut s = tokio::net::TcpStream::connect(broker.amqp_addr())
        .await
        .unwrap();
    s.write_all(b"AMQP\x01\x01\x00\x0a").await.unwrap();
    let got = read_all(&mut s).await;
    assert_eq!(got, b"AMQP\x00\x00\x09\x01");
    let mut s = tokio::net::TcpStream::connect(broker.amqp_addr())
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(read_all(&mut s).await, b"AMQP\x00\x00\x09\x01");
    broker.stop().await;
}

#[tokio::test]
async fn oversized_frame_closes_with_501() {
    let broker = TestBroker::start().await.unwrap();
    let mut s = tokio::net::TcpStream::connect(broker.amqp_addr())
        .await
        .unwrap();
    s.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
    // A method frame announcing 1 GiB: refused from its header, without waiting for it.
    s.write_all(&[1, 0, 0, 0x40, 0, 0, 0]).await.unwrap();
    let got = read_all(&mut s).await;
    // connection.start, then connection.close (class 10, method 50) with 501.
    let close = got
        .windows(6)
        .position(|w| w == [0, 10, 0, 50, 0x01, 0xF5])
        .is_some();
    assert!(close, "no connection.close 501 in {got:?}");
    broker.stop().await;
}

#[tokio::test]
async fn message_ttl_expires_into_the_dead_letter_exchange_with_x_death() {
    let clock = ferry::Clock::manual(1_700_000_000_000);
    let c = clock.clone();
    let broker = TestBroker::with(move |b| b.clock(c)).await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    ch.exchange_declare(
        "dlx".into(),
        ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare(&ch, "dead").await;
    ch.queue_bind(
        "dead".into(),
        "dlx".into(),
        "".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        "ttl".into(),
        QueueDeclareOptions::default(),
        args(vec![
            ("x-message-ttl", AMQPValue::LongInt(1000)),
            (
                "x-dead-letter-exchange",
                AMQPValue::LongString("dlx".into()),
            ),
        ]),
    )
    .await
    .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish(&ch, "", "ttl", b"old").await;
    ch.wait_for_confirms().await.unwrap();
    clock.advance_ms(600);
    publish(&ch, "", "ttl", b"young").await;
    ch.wait_for_confirms().await.unwrap();
    clock.advance_ms(600);
    // "old" is 1200 ms old, "young" 600 ms: only "young" is left.
    let got = get(&ch, "ttl", true).await.unwrap();
    assert_eq!(got.delivery.data, b"young");
    let mut consumer = ch
        .basic_consume(
            "dead".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let d = next(&mut consumer).await;
    assert_eq!(d.data, b"old");
    assert_eq!(d.exchange.as_str(), "dlx");
    assert_eq!(d.routing_key.as_str(), "ttl");
    let Some(AMQPValue::FieldArray(deaths)) = header(&d, "x-death") else {
        panic!("no x-death in {:?}", d.properties);
    };
    let Some(AMQPValue::FieldTable(death)) = deaths.as_slice().first() else {
        panic!("empty x-death");
    };
    let field = |k: &str| death.inner().get(k).cloned();
    assert_eq!(field("queue"), Some(AMQPValue::LongString("ttl".into())));
    assert_eq!(
        field("reason"),
        Some(AMQPValue::LongString("expired".into()))
    );
    assert_eq!(field("count"), Some(AMQPValue::LongLongInt(1)));
    assert_eq!(field("exchange"), Some(AMQPValue::LongString("".into())));
    assert_eq!(
        header(&d, "x-first-death-reason"),
        Some(&AMQPValue::LongString("expired".into()))
    );
    broker.stop().await;
}

#[tokio::test]
async fn max_length_drops_from_the_head() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    ch.queue_declare(
        "ml".into(),
        QueueDeclareOptions::default(),
        args(vec![("x-max-length", AMQPValue::LongInt(2))]),
    )
    .await
    .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for i in 0..5 {
        publish(&ch, "", "ml", format!("m{i}").as_bytes()).await;
    }
    ch.wait_for_confirms().await.unwrap();
    let q = ch
        .queue_declare(
            "ml".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 2);
    assert_eq!(get(&ch, "ml", true).await.unwrap().delivery.data, b"m3");
    assert_eq!(get(&ch, "ml", true).await.unwrap().delivery.data, b"m4");
    broker.stop().await;
}

#[tokio::test]
async fn rejected_messages_are_dead_lettered_with_the_configured_routing_key() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "parking").await;
    ch.queue_bind(
        "parking".into(),
        "amq.direct".into(),
        "parked".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        "work".into(),
        QueueDeclareOptions::default(),
        args(vec![
            (
                "x-dead-letter-exchange",
                AMQPValue::LongString("amq.direct".into()),
            ),
            (
                "x-dead-letter-routing-key",
                AMQPValue::LongString("parked".into()),
            ),
        ]),
    )
    .await
    .unwrap();
    publish(&ch, "", "work", b"bad").await;
    publish(&ch, "", "work", b"worse").await;
    let m = get(&ch, "work", false).await.unwrap();
    m.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let m = get(&ch, "work", false).await.unwrap();
    m.delivery
        .nack(BasicNackOptions {
            requeue: false,
            multiple: false,
        })
        .await
        .unwrap();
    let first = get(&ch, "parking", true).await.unwrap();
    assert_eq!(first.delivery.data, b"bad");
    assert_eq!(first.delivery.routing_key.as_str(), "parked");
    let Some(AMQPValue::FieldArray(deaths)) = header(&first.delivery, "x-death") else {
        panic!("no x-death");
    };
    let Some(AMQPValue::FieldTable(death)) = deaths.as_slice().first() else {
        panic!("empty x-death");
    };
    assert_eq!(
        death.inner().get("reason"),
        Some(&AMQPValue::LongString("rejected".into()))
    );
    assert_eq!(
        death.inner().get("routing-keys"),
        Some(&AMQPValue::FieldArray(
            vec![AMQPValue::LongString("work".into())].into()
        ))
    );
    assert_eq!(
        get(&ch, "parking", true).await.unwrap().delivery.data,
        b"worse"
    );
    // Nothing is left in the work queue.
    assert!(ch
        .basic_get("work".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .is_none());
    broker.stop().await;
}

#[tokio::test]
async fn invalid_queue_arguments_are_406() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let err = ch
        .queue_declare(
            "bad".into(),
            QueueDeclareOptions::default(),
            args(vec![("x-message-ttl", AMQPValue::LongInt(-1))]),
        )
        .await
        .unwrap_err();
    assert_eq!(amqp_code(&err), Some(406), "{err:?}");
    broker.stop().await;
}

#[tokio::test]
async fn exchange_to_exchange_bindings_route_through() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    ch.exchange_declare(
        "front".into(),
        ExchangeKind::Topic,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_declare(
        "back".into(),
        ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_bind(
        "back".into(),
        "front".into(),
        "orders.*".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare(&ch, "e2e").await;
    ch.queue_bind(
        "e2e".into(),
        "back".into(),
        "".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish(&ch, "front", "orders.new", b"yes").await;
    publish(&ch, "front", "users.new", b"no").await;
    assert_eq!(get(&ch, "e2e", true).await.unwrap().delivery.data, b"yes");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(ch
        .basic_get("e2e".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .is_none());
    broker.stop().await;
}

#[tokio::test]
async fn unacked_messages_return_when_the_connection_closes() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "uc").await;
    ch.basic_qos(10, BasicQosOptions::default()).await.unwrap();
    for i in 0..3 {
        publish(&ch, "", "uc", format!("{i}").as_bytes()).await;
    }
    let mut consumer = ch
        .basic_consume(
            "uc".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for _ in 0..3 {
        next(&mut consumer).await;
    }
    conn.close(200, "bye".into()).await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = get(&ch, "uc", true).await.unwrap();
        assert!(m.delivery.redelivered);
        got.push(m.delivery.data.clone());
    }
    assert_eq!(got, vec![b"0".to_vec(), b"1".to_vec(), b"2".to_vec()]);
    broker.stop().await;
}

#[tokio::test]
async fn ack_multiple_and_global_prefetch() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "am1").await;
    declare(&ch, "am2").await;
    for i in 0..4 {
        publish(&ch, "", "am1", format!("a{i}").as_bytes()).await;
        publish(&ch, "", "am2", format!("b{i}").as_bytes()).await;
    }
    ch.basic_qos(3, BasicQosOptions { global: true })
        .await
        .unwrap();
    let mut c1 = ch
        .basic_consume(
            "am1".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut c2 = ch
        .basic_consume(
            "am2".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    // Three unacked across both consumers, no more.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut held = Vec::new();
    while let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(100), c1.next()).await {
        held.push(d);
    }
    while let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(100), c2.next()).await {
        held.push(d);
    }
    assert_eq!(held.len(), 3, "global prefetch of 3");
    let max_tag = held.iter().map(|d| d.delivery_tag).max().unwrap();
    ch.basic_ack(max_tag, BasicAckOptions { multiple: true })
        .await
        .unwrap();
    let mut more = 0;
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_millis(300), c1.next()).await {
        more += 1;
    }
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_millis(300), c2.next()).await {
        more += 1;
    }
    assert_eq!(more, 3, "multiple ack freed all three slots");
    broker.stop().await;
}

#[tokio::test]
async fn deleting_a_queue_cancels_its_consumers() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "gone").await;
    let mut consumer = ch
        .basic_consume(
            "gone".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let ch2 = channel(&conn).await;
    ch2.queue_delete("gone".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    // basic.cancel from the server ends the consumer's stream.
    let end = tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("stream ends");
    assert!(end.is_none(), "{end:?}");
    broker.stop().await;
}

#[tokio::test]
async fn transactions_stage_publishes_and_acks_until_commit() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "txq").await;
    publish(&ch, "", "txq", b"before").await;
    let m = get(&ch, "txq", false).await.unwrap();
    ch.tx_select().await.unwrap();
    publish(&ch, "", "txq", b"rolled-back").await;
    ch.basic_ack(m.delivery.delivery_tag, BasicAckOptions::default())
        .await
        .unwrap();
    ch.tx_rollback().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let q = broker.core().router().queue("/", "txq").unwrap();
    assert_eq!(
        (q.message_count(), q.unacked_count()),
        (0, 1),
        "rollback dropped both"
    );
    publish(&ch, "", "txq", b"committed").await;
    ch.basic_ack(m.delivery.delivery_tag, BasicAckOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (q.message_count(), q.unacked_count()),
        (0, 1),
        "nothing before commit"
    );
    ch.tx_commit().await.unwrap();
    // After commit-ok the publish is durable and the ack applied.
    assert_eq!((q.message_count(), q.unacked_count()), (1, 0));
    let ch2 = channel(&conn).await;
    assert_eq!(
        get(&ch2, "txq", true).await.unwrap().delivery.data,
        b"committed"
    );
    broker.stop().await;
}

#[tokio::test]
async fn exclusive_queues_are_locked_to_their_connection() {
    let broker = TestBroker::start().await.unwrap();
    let owner = connect(&broker).await;
    let ch = channel(&owner).await;
    ch.queue_declare(
        "mine".into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let other = connect(&broker).await;
    let ch2 = channel(&other).await;
    let err = ch2
        .basic_consume(
            "mine".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(amqp_code(&err), Some(405), "{err:?}");
    let ch3 = channel(&other).await;
    let err = ch3
        .queue_declare(
            "mine".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(amqp_code(&err), Some(405), "{err:?}");
    broker.stop().await;
}

#[tokio::test]
async fn auto_delete_queue_goes_with_its_last_consumer() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    ch.queue_declare(
        "ad1".into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.basic_consume(
        "ad1".into(),
        "t1".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    assert!(broker.core().router().queue("/", "ad1").is_some());
    ch.basic_cancel("t1".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    assert!(broker.core().router().queue("/", "ad1").is_none());
    broker.stop().await;
}

#[tokio::test]
async fn publishing_to_a_missing_exchange_is_404() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    confirm_mode(&ch).await;
    let err = publish_refused(&ch, "nope", "k", b"x", BasicProperties::default()).await;
    assert_eq!(amqp_code(&err), Some(404), "{err:?}");
    assert!(conn.status().connected());
    broker.stop().await;
}

#[tokio::test]
async fn thousands_of_messages_arrive_once_and_in_order() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let pub_ch = channel(&conn).await;
    let sub_ch = channel(&conn).await;
    pub_ch
        .queue_declare(
            "bulk".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    pub_ch
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    sub_ch
        .basic_qos(100, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = sub_ch
        .basic_consume(
            "bulk".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    const N: u32 = 3000;
    let started = std::time::Instant::now();
    let publisher = {
        let ch = pub_ch.clone();
        tokio::spawn(async move {
            for i in 0..N {
                ch.basic_publish(
                    "".into(),
                    "bulk".into(),
                    Default::default(),
                    &i.to_be_bytes(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .unwrap();
            }
            ch.wait_for_confirms().await.unwrap();
        })
    };
    for i in 0..N {
        let d = next(&mut consumer).await;
        assert_eq!(d.data, i.to_be_bytes(), "message {i}");
        assert!(!d.redelivered);
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    publisher.await.unwrap();
    eprintln!(
        "{N} messages with confirms and acks in {:?}",
        started.elapsed()
    );
    let q = broker.core().router().queue("/", "bulk").unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!((q.message_count(), q.unacked_count()), (0, 0));
    assert_eq!(q.low_water_mark(), i64::from(N));
    broker.stop().await;
}

#[tokio::test]
async fn queue_arguments_and_dead_lettering_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let queue_args = || {
        args(vec![
            ("x-max-length", AMQPValue::LongInt(1)),
            (
                "x-dead-letter-exchange",
                AMQPValue::LongString("amq.fanout".into()),
            ),
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
        ch.queue_declare("capped".into(), durable, queue_args())
            .await
            .unwrap();
        ch.queue_declare("overflow".into(), durable, FieldTable::default())
            .await
            .unwrap();
        ch.queue_bind(
            "overflow".into(),
            "amq.fanout".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        broker.stop().await;
    }
    let broker = TestBroker::with(|b| b.data_dir(&path)).await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    // Same arguments: equivalent. The limits are live again after the restart.
    ch.queue_declare("capped".into(), durable, queue_args())
        .await
        .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish(&ch, "", "capped", b"first").await;
    publish(&ch, "", "capped", b"second").await;
    ch.wait_for_confirms().await.unwrap();
    assert_eq!(
        get(&ch, "capped", true).await.unwrap().delivery.data,
        b"second"
    );
    let dead = get(&ch, "overflow", true)
        .await
        .expect("dead-lettered by max-length");
    assert_eq!(dead.delivery.data, b"first");
    let Some(AMQPValue::FieldArray(deaths)) = header(&dead.delivery, "x-death") else {
        panic!("no x-death");
    };
    let Some(AMQPValue::FieldTable(death)) = deaths.as_slice().first() else {
        panic!("empty x-death");
    };
    assert_eq!(
        death.inner().get("reason"),
        Some(&AMQPValue::LongString("maxlen".into()))
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_failed_queue_fsync_nacks_the_publish_and_fails_readiness() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    ch.queue_declare(
        "fragile".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let q = broker.core().router().queue("/", "fragile").unwrap();
    q.log().inject_fsync_failure();
    let confirm = ch
        .basic_publish(
            "".into(),
            "fragile".into(),
            Default::default(),
            b"x",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_nack(), "{confirm:?}");
    let reasons = broker.readiness().unwrap_err();
    assert!(
        reasons.iter().any(|r| r.contains("queue:/:fragile")),
        "{reasons:?}"
    );
    broker.stop().await;
}
