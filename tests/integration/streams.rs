//! Topics read as RabbitMQ streams, with real clients on both sides: rdkafka produces and
//! fetches, lapin declares `x-queue-type=stream` queues and consumes with every
//! `x-stream-offset` form, in the same tests.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry::testing::TestBroker;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use crate::common;
use common::kafka::Consumed;

const WAIT: Duration = Duration::from_secs(10);

// --- helpers -------------------------------------------------------------------------------

async fn connect(broker: &TestBroker) -> Connection {
    Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
        .await
        .expect("connect")
}

/// A channel with a per-consumer prefetch, which stream consumers need.
async fn channel(conn: &Connection, prefetch: u16) -> Channel {
    let ch = conn.create_channel().await.expect("channel");
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .expect("basic.qos");
    ch
}

fn table(pairs: Vec<(&str, AMQPValue)>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert(k.into(), v);
    }
    t
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

fn amqp_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => Some(p.get_id()),
        _ => None,
    }
}

async fn declare_stream(
    ch: &Channel,
    name: &str,
    extra: Vec<(&str, AMQPValue)>,
) -> Result<lapin::Queue, lapin::Error> {
    let mut args = table(extra);
    args.insert("x-queue-type".into(), long("stream"));
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
}

async fn stream_consume(
    ch: &Channel,
    name: &str,
    offset: Option<AMQPValue>,
) -> Result<lapin::Consumer, lapin::Error> {
    let args = match offset {
        Some(o) => table(vec![("x-stream-offset", o)]),
        None => FieldTable::default(),
    };
    ch.basic_consume(name.into(), "".into(), BasicConsumeOptions::default(), args)
        .await
}

async fn next(consumer: &mut lapin::Consumer) -> Delivery {
    tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("delivery in time")
        .expect("consumer open")
        .expect("delivery")
}

/// Reads `n` deliveries, acking each (acks return credit).
async fn take(consumer: &mut lapin::Consumer, n: usize) -> Vec<Delivery> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let d = next(consumer).await;
        d.ack(BasicAckOptions::default()).await.expect("ack");
        out.push(d);
    }
    out
}

/// Asserts nothing else arrives within a short window.
async fn nothing_more(consumer: &mut lapin::Consumer) {
    if let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(400), consumer.next()).await
    {
        panic!(
            "unexpected delivery {:?} at {:?}",
            String::from_utf8_lossy(&d.data),
            header(&d, "x-stream-offset")
        );
    }
}

fn header<'a>(d: &'a Delivery, key: &str) -> Option<&'a AMQPValue> {
    d.properties.headers().as_ref()?.inner().get(key)
}

fn stream_offset(d: &Delivery) -> i64 {
    match header(d, "x-stream-offset") {
        Some(AMQPValue::LongLongInt(o)) => *o,
        other => panic!("x-stream-offset header: {other:?}"),
    }
}

fn bodies(ds: &[Delivery]) -> Vec<String> {
    ds.iter()
        .map(|d| String::from_utf8_lossy(&d.data).into_owned())
        .collect()
}

fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.timeout.ms", "20000")
        .set("linger.ms", "0")
        .set("partitioner", "murmur2_random")
        .create()
        .expect("producer")
}

/// Produces one record (its own batch) and returns (partition, offset).
async fn produce(
    p: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &str,
    timestamp_ms: Option<i64>,
    headers: &[(&str, &str)],
) -> (i32, i64) {
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    let mut r = FutureRecord::to(topic).key(key).payload(payload).headers(h);
    if let Some(ts) = timestamp_ms {
        r = r.timestamp(ts);
    }
    let d = p.send(r, WAIT).await.expect("produce");
    (d.partition, d.offset)
}

/// Reads `count` records of partition 0 of `topic` from the start with an rdkafka consumer
/// (blocking: run it on a blocking thread).
fn fetch(bootstrap: &str, topic: &str, count: usize) -> Vec<Consumed> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "stream-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("partition");
    c.assign(&tpl).expect("assign");
    common::kafka::poll_records(&c, count)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

// --- tests ---------------------------------------------------------------------------------

/// Kafka produces r0..r4 (one batch each, timestamps one second apart, well in the past);
/// each `x-stream-offset` form starts exactly where RabbitMQ's would, and every consumer
/// keeps reading new appends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_stream_offset_form_starts_at_the_right_record() {
    let broker = TestBroker::start().await.unwrap();
    broker
        .core()
        .create_topic("events", 1, BTreeMap::new())
        .await
        .unwrap();
    let p = producer(&broker.kafka_bootstrap());
    // Whole seconds, since the AMQP timestamp type counts seconds.
    let base_s = now_ms() / 1000 - 600;
    for i in 0..5 {
        let (partition, offset) = produce(
            &p,
            "events",
            &format!("k{i}"),
            &format!("r{i}"),
            Some((base_s + i) * 1000),
            &[("trace", "t-1")],
        )
        .await;
        assert_eq!((partition, offset), (0, i));
    }
    let conn = connect(&broker).await;
    let ch = channel(&conn, 10).await;

    let cases: Vec<(&str, AMQPValue, Vec<&str>)> = vec![
        ("first", long("first"), vec!["r0", "r1", "r2", "r3", "r4"]),
        ("last", long("last"), vec!["r4"]),
        ("next", long("next"), vec![]),
        ("offset 3", AMQPValue::LongLongInt(3), vec!["r3", "r4"]),
        ("offset past the end", AMQPValue::LongLongInt(99), vec![]),
        (
            "timestamp",
            AMQPValue::Timestamp((base_s + 2) as u64),
            vec!["r2", "r3", "r4"],
        ),
        (
            "interval 1h",
            long("1h"),
            vec!["r0", "r1", "r2", "r3", "r4"],
        ),
        ("interval 30s", long("30s"), vec![]),
    ];
    let mut consumers = Vec::new();
    for (name, offset, want) in cases {
        let mut c = stream_consume(&ch, "events", Some(offset))
            .await
            .unwrap_or_else(|e| panic!("{name}: consume: {e}"));
        let got = take(&mut c, want.len()).await;
        assert_eq!(bodies(&got), want, "{name}");
        for d in &got {
            let i: i64 = String::from_utf8_lossy(&d.data[1..]).parse().unwrap();
            assert_eq!(stream_offset(d), i, "{name}: offset header");
            // Read like a copy routed into a bound queue: exchange = topic, key, headers.
            assert_eq!(d.exchange.as_str(), "events");
            assert_eq!(d.routing_key.as_str(), format!("k{i}"));
            assert_eq!(
                header(d, "trace"),
                Some(&AMQPValue::LongString("t-1".into()))
            );
            assert!(header(d, "x-stream-partition").is_none(), "one partition");
            assert!(!d.redelivered);
        }
        nothing_more(&mut c).await;
        consumers.push((name, c));
    }
    // Long poll: a new record reaches every consumer.
    produce(&p, "events", "k5", "r5", None, &[]).await;
    for (name, c) in &mut consumers {
        let d = next(c).await;
        assert_eq!(d.data, b"r5", "{name}");
        assert_eq!(stream_offset(&d), 5, "{name}");
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    // A passive declare of the topic answers like a stream queue.
    let q = ch
        .queue_declare(
            "events".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare");
    assert_eq!(q.message_count(), 6);
    assert_eq!(q.consumer_count(), 8);
    conn.close(200, "bye".into()).await.ok();
    broker.stop().await;
}

/// A topic of three partitions reads as one stream: every record once, in offset order per
/// partition, with `x-stream-partition` naming its partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_topic_is_read_across_all_partitions() {
    let broker = TestBroker::start().await.unwrap();
    broker
        .core()
        .create_topic("clicks", 3, BTreeMap::new())
        .await
        .unwrap();
    let p = producer(&broker.kafka_bootstrap());
    let mut produced = BTreeMap::new();
    for i in 0..30 {
        let (partition, offset) = produce(
            &p,
            "clicks",
            &format!("user-{}", i % 7),
            &format!("c{i}"),
            None,
            &[],
        )
        .await;
        produced.insert(format!("c{i}"), (partition, offset));
    }
    let partitions: std::collections::BTreeSet<i32> = produced.values().map(|(p, _)| *p).collect();
    assert!(partitions.len() > 1, "keys spread over partitions");

    let conn = connect(&broker).await;
    let ch = channel(&conn, 7).await;
    let mut c = stream_consume(&ch, "clicks", Some(long("first")))
        .await
        .unwrap();
    let got = take(&mut c, 30).await;
    nothing_more(&mut c).await;
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    for d in &got {
        let body = String::from_utf8_lossy(&d.data).into_owned();
        let partition = match header(d, "x-stream-partition") {
            Some(AMQPValue::LongInt(p)) => *p,
            other => panic!("x-stream-partition: {other:?}"),
        };
        let offset = stream_offset(d);
        assert_eq!(produced.remove(&body), Some((partition, offset)), "{body}");
        if let Some(prev) = last.insert(partition, offset) {
            assert!(offset > prev, "partition {partition} out of order");
        }
    }
    assert!(produced.is_empty(), "not delivered: {produced:?}");

    // Numeric offsets are per partition: offset 2 starts at offset 2 of every partition.
    let mut c2 = stream_consume(&ch, "clicks", Some(AMQPValue::LongLongInt(2)))
        .await
        .unwrap();
    let sizes: BTreeMap<i32, i64> = last.iter().map(|(p, o)| (*p, o + 1)).collect();
    let expected: i64 = sizes.values().map(|n| (n - 2).max(0)).sum();
    let got2 = take(&mut c2, expected as usize).await;
    nothing_more(&mut c2).await;
    assert!(got2.iter().all(|d| stream_offset(d) >= 2));
    conn.close(200, "bye".into()).await.ok();
    broker.stop().await;
}

/// An `x-queue-type=stream` queue is a one-partition topic: AMQP publishes land where an
/// rdkafka consumer reads them with their properties, Kafka records reach the AMQP stream
/// consumer, retention arguments become topic configs, and queue.delete deletes the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_queue_is_a_topic_for_kafka_clients_both_ways() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn, 50).await;
    let q = declare_stream(
        &ch,
        "audit",
        vec![
            ("x-max-age", long("7D")),
            ("x-max-length-bytes", AMQPValue::LongLongInt(50_000_000)),
        ],
    )
    .await
    .expect("declare stream");
    assert_eq!(q.message_count(), 0);
    let topic = broker.core().topic("audit").expect("a topic");
    assert_eq!(topic.partition_count(), 1);
    assert_eq!(
        topic
            .config_overrides()
            .get("retention.ms")
            .map(String::as_str),
        Some("604800000")
    );
    assert_eq!(
        topic
            .config_overrides()
            .get("retention.bytes")
            .map(String::as_str),
        Some("50000000")
    );
    // The same declaration again is fine; a different retention is not.
    declare_stream(
        &ch,
        "audit",
        vec![
            ("x-max-age", long("7D")),
            ("x-max-length-bytes", AMQPValue::LongLongInt(50_000_000)),
        ],
    )
    .await
    .expect("equivalent redeclare");
    let err = declare_stream(&ch, "audit", vec![("x-max-age", long("1D"))])
        .await
        .expect_err("inequivalent redeclare");
    assert_eq!(amqp_code(&err), Some(406), "{err:?}");

    // AMQP -> stream -> Kafka.
    let ch = channel(&conn, 50).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut amqp_headers = FieldTable::default();
    amqp_headers.insert("tenant".into(), long("acme"));
    for i in 0..3 {
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id(format!("m-{i}").into())
            .with_headers(amqp_headers.clone());
        ch.basic_publish(
            "".into(),
            "audit".into(),
            BasicPublishOptions::default(),
            format!("{{\"n\":{i}}}").as_bytes(),
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let bootstrap = broker.kafka_bootstrap();
    let fetched = tokio::task::spawn_blocking({
        let bootstrap = bootstrap.clone();
        move || fetch(&bootstrap, "audit", 3)
    })
    .await
    .unwrap();
    for (i, f) in fetched.iter().enumerate() {
        assert_eq!(f.offset, i as i64);
        assert_eq!(f.payload, format!("{{\"n\":{i}}}").as_bytes());
        assert_eq!(f.key.as_deref(), Some(&b"audit"[..]));
        let h = |k: &str| {
            f.headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(h("amqp.content-type").as_deref(), Some("application/json"));
        assert_eq!(h("amqp.message-id"), Some(format!("m-{i}")));
    }

    // Kafka -> stream -> AMQP, after the AMQP publishes.
    let p = producer(&bootstrap);
    assert_eq!(
        produce(
            &p,
            "audit",
            "from-kafka",
            "k0",
            None,
            &[("origin", "kafka")]
        )
        .await,
        (0, 3)
    );
    let mut c = stream_consume(&ch, "audit", Some(long("first")))
        .await
        .unwrap();
    let got = take(&mut c, 4).await;
    for (i, d) in got.iter().take(3).enumerate() {
        assert_eq!(stream_offset(d), i as i64);
        // Published to the default exchange: delivered as RabbitMQ does.
        assert_eq!(d.exchange.as_str(), "");
        assert_eq!(d.routing_key.as_str(), "audit");
        assert_eq!(
            d.properties.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        assert_eq!(
            d.properties.message_id().as_ref().map(|s| s.as_str()),
            Some(format!("m-{i}").as_str())
        );
        assert_eq!(header(d, "tenant"), Some(&long("acme")));
    }
    let k = &got[3];
    assert_eq!(k.data, b"k0");
    assert_eq!(k.routing_key.as_str(), "from-kafka");
    assert_eq!(k.exchange.as_str(), "audit");
    assert_eq!(header(k, "origin"), Some(&long("kafka")));
    assert_eq!(stream_offset(k), 3);

    // Reading does not consume: the counts are the log's.
    let passive = ch
        .queue_declare(
            "audit".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(passive.message_count(), 4);
    assert_eq!(passive.consumer_count(), 1);

    // queue.delete deletes the topic and cancels its consumers.
    let ch2 = channel(&conn, 1).await;
    let n = ch2
        .queue_delete("audit".into(), QueueDeleteOptions::default())
        .await
        .expect("delete");
    assert_eq!(n, 4);
    assert!(broker.core().topic("audit").is_none());
    let end = tokio::time::timeout(WAIT, c.next())
        .await
        .expect("consumer cancelled in time");
    assert!(end.is_none(), "consumer still open: {end:?}");
    conn.close(200, "bye".into()).await.ok();
    broker.stop().await;
}

/// Deliveries stop at the prefetch count until acks return credit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_bounds_unacked_stream_deliveries() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn, 3).await;
    declare_stream(&ch, "ticks", vec![]).await.unwrap();
    for i in 0..10 {
        ch.basic_publish(
            "".into(),
            "ticks".into(),
            BasicPublishOptions::default(),
            format!("t{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    let mut c = stream_consume(&ch, "ticks", Some(long("first")))
        .await
        .unwrap();
    let first: Vec<Delivery> = vec![next(&mut c).await, next(&mut c).await, next(&mut c).await];
    assert_eq!(bodies(&first), ["t0", "t1", "t2"]);
    nothing_more(&mut c).await;
    first[0].ack(BasicAckOptions::default()).await.unwrap();
    let d = next(&mut c).await;
    assert_eq!(d.data, b"t3");
    nothing_more(&mut c).await;
    // One multiple ack returns the credit of all three still outstanding.
    d.ack(BasicAckOptions { multiple: true }).await.unwrap();
    let more = vec![next(&mut c).await, next(&mut c).await, next(&mut c).await];
    assert_eq!(bodies(&more), ["t4", "t5", "t6"]);
    nothing_more(&mut c).await;
    conn.close(200, "bye".into()).await.ok();
    broker.stop().await;
}

/// The refusals RabbitMQ gives stream queues: bad `x-stream-offset`, no prefetch and
/// non-durable/exclusive/auto-delete declarations are 406 on the channel; no-ack consumers,
/// basic.get and nack are 540 on the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_refusals_match_rabbitmq() {
    let broker = TestBroker::start().await.unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn, 5).await;
    declare_stream(&ch, "s", vec![]).await.unwrap();
    ch.basic_publish(
        "".into(),
        "s".into(),
        BasicPublishOptions::default(),
        b"x",
        BasicProperties::default(),
    )
    .await
    .unwrap();

    for bad in [long("tomorrow"), long("0h"), AMQPValue::Boolean(true)] {
        let ch = channel(&conn, 5).await;
        let err = stream_consume(&ch, "s", Some(bad.clone()))
            .await
            .expect_err("bad offset");
        assert_eq!(amqp_code(&err), Some(406), "{bad:?}: {err:?}");
    }
    let unlimited = conn.create_channel().await.unwrap();
    let err = stream_consume(&unlimited, "s", Some(long("first")))
        .await
        .expect_err("no prefetch");
    assert_eq!(amqp_code(&err), Some(406), "{err:?}");

    for (what, opts) in [
        (
            "non-durable",
            QueueDeclareOptions {
                durable: false,
                ..Default::default()
            },
        ),
        (
            "exclusive",
            QueueDeclareOptions {
                durable: true,
                exclusive: true,
                ..Default::default()
            },
        ),
        (
            "auto-delete",
            QueueDeclareOptions {
                durable: true,
                auto_delete: true,
                ..Default::default()
            },
        ),
    ] {
        let ch = conn.create_channel().await.unwrap();
        let err = ch
            .queue_declare(
                "s2".into(),
                opts,
                table(vec![("x-queue-type", long("stream"))]),
            )
            .await
            .expect_err(what);
        assert_eq!(amqp_code(&err), Some(406), "{what}: {err:?}");
    }
    assert!(broker.core().topic("s2").is_none());

    // The connection survived every channel error; the 540s close it, so one each.
    let ch = channel(&conn, 5).await;
    let err = ch
        .basic_get("s".into(), BasicGetOptions::default())
        .await
        .expect_err("basic.get");
    assert_eq!(amqp_code(&err), Some(540), "{err:?}");

    let conn = connect(&broker).await;
    let ch = channel(&conn, 5).await;
    let err = ch
        .basic_consume(
            "s".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            table(vec![("x-stream-offset", long("first"))]),
        )
        .await
        .expect_err("no-ack");
    assert_eq!(amqp_code(&err), Some(540), "{err:?}");

    let conn = connect(&broker).await;
    let mut events = conn.events_listener();
    let ch = channel(&conn, 5).await;
    let mut c = stream_consume(&ch, "s", Some(long("first"))).await.unwrap();
    let d = next(&mut c).await;
    d.nack(BasicNackOptions::default()).await.unwrap();
    let err = tokio::time::timeout(WAIT, async {
        while let Some(event) = events.next().await {
            if let lapin::Event::Error(e) = event {
                return Some(e);
            }
        }
        None
    })
    .await
    .expect("connection closed in time")
    .expect("a connection error");
    assert_eq!(amqp_code(&err), Some(540), "{err:?}");
    broker.stop().await;
}
