//! Topics are exchanges too (ARCHITECTURE rule 6), with real clients on both sides: rdkafka
//! produces and consumes, lapin publishes, binds, consumes, acks and nacks, in the same test.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry::broker::topic_router::partition_for_key;
use ferry::testing::TestBroker;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::common;
use common::amqp::*;
use common::kafka::Consumed;

// --- AMQP helpers --------------------------------------------------------------------------

/// No further delivery within a short while.
async fn nothing_more(consumer: &mut lapin::Consumer) {
    if let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(300), consumer.next()).await
    {
        panic!(
            "unexpected delivery {:?} key {}",
            String::from_utf8_lossy(&d.data),
            d.routing_key
        );
    }
}

/// Takes and acks `n` deliveries, checks that nothing more comes, and returns their bodies in
/// delivery order.
async fn ack_exactly(consumer: &mut lapin::Consumer, n: usize) -> Vec<String> {
    let mut bodies = Vec::with_capacity(n);
    for _ in 0..n {
        let d = next(consumer).await;
        bodies.push(String::from_utf8(d.data.clone()).unwrap());
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    nothing_more(consumer).await;
    bodies
}

fn header_text(d: &Delivery, key: &str) -> Option<String> {
    match header(d, key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        AMQPValue::ByteArray(b) => Some(String::from_utf8_lossy(b.as_slice()).into_owned()),
        other => Some(format!("{other:?}")),
    }
}

// --- Kafka helpers -------------------------------------------------------------------------

/// A producer partitioning like the Java client (librdkafka's default is a CRC-32).
fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.timeout.ms", "20000")
        .set("linger.ms", "0")
        .set("partitioner", "murmur2_random")
        .create()
        .expect("producer")
}

/// Produces and returns (partition, offset).
async fn produce(
    p: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &str,
    headers: &[(&str, &str)],
) -> (i32, i64) {
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    let d = p
        .send(
            FutureRecord::to(topic).key(key).payload(payload).headers(h),
            WAIT,
        )
        .await
        .expect("produce");
    (d.partition, d.offset)
}

async fn create_topic(broker: &TestBroker, name: &str, partitions: u32) {
    broker
        .core()
        .create_topic(name, partitions, BTreeMap::new())
        .await
        .expect("create topic");
}

/// Joins group `group` on `topic` and reads `count` records (blocking: run it on a blocking
/// thread).
fn group_consume(bootstrap: &str, group: &str, topic: &str, count: usize) -> Vec<Consumed> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    c.subscribe(&[topic]).expect("subscribe");
    common::kafka::poll_records(&c, count)
}

fn kafka_header<'a>(c: &'a Consumed, key: &str) -> Option<&'a [u8]> {
    c.headers
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_slice())
}

// --- tests ---------------------------------------------------------------------------------

/// A Kafka-produced record reaches an AMQP worker bound to the topic: acked, or nacked
/// without requeue into a dead-letter queue with `x-death`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_records_reach_a_bound_queue_with_acks_and_dead_letters() {
    let broker = TestBroker::start().await.unwrap();
    create_topic(&broker, "orders", 3).await;
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
    declare_with(&ch, "dead", FieldTable::default()).await;
    bind(&ch, "dead", "dlx", "").await;
    declare_with(
        &ch,
        "work",
        args(vec![(
            "x-dead-letter-exchange",
            AMQPValue::LongString("dlx".into()),
        )]),
    )
    .await;
    bind(&ch, "work", "orders", "order.#").await;

    let p = producer(&broker.kafka_bootstrap());
    produce(&p, "orders", "order.1", "first", &[("trace", "t-1")]).await;
    produce(&p, "orders", "invoice.1", "not for work", &[]).await;
    produce(&p, "orders", "order.2", "second", &[]).await;

    let mut work = consume(&ch, "work", false).await;
    // The two order records may sit on different partitions: no order between them.
    let mut got = [next(&mut work).await, next(&mut work).await];
    got.sort_by(|a, b| a.data.cmp(&b.data));
    let (first, second) = (&got[0], &got[1]);
    assert_eq!(first.data, b"first");
    assert_eq!(first.routing_key.as_str(), "order.1");
    assert_eq!(first.exchange.as_str(), "orders");
    assert_eq!(header_text(first, "trace").as_deref(), Some("t-1"));
    assert_eq!(second.data, b"second");
    first.ack(BasicAckOptions::default()).await.unwrap();
    second
        .nack(BasicNackOptions {
            requeue: false,
            ..Default::default()
        })
        .await
        .unwrap();
    nothing_more(&mut work).await;

    let ch2 = channel(&conn).await;
    let mut dead = consume(&ch2, "dead", false).await;
    let d = next(&mut dead).await;
    assert_eq!(d.data, b"second");
    assert_eq!(d.routing_key.as_str(), "order.2");
    let Some(AMQPValue::FieldArray(deaths)) = header(&d, "x-death") else {
        panic!("no x-death in {:?}", d.properties);
    };
    let Some(AMQPValue::FieldTable(death)) = deaths.as_slice().first() else {
        panic!("bad x-death {deaths:?}");
    };
    let field = |k: &str| match death.inner().get(k) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => format!("{other:?}"),
    };
    assert_eq!(field("queue"), "work");
    assert_eq!(field("reason"), "rejected");
    assert_eq!(field("exchange"), "orders");
    d.ack(BasicAckOptions::default()).await.unwrap();
    drop(p);
    broker.stop().await;
}

/// An AMQP publish to exchange T lands in topic T on the partition Kafka's murmur2 picks, is
/// confirmed, and a Kafka consumer group sees the AMQP properties as headers. A Kafka
/// producer with the same key lands on the same partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_publish_to_a_topic_exchange_lands_on_the_murmur2_partition() {
    let broker = TestBroker::start().await.unwrap();
    create_topic(&broker, "events", 6).await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_message_id("m-1".into())
        .with_headers(args(vec![("tenant", AMQPValue::LongString("acme".into()))]));
    let keys = ["user-42", "user-7", "a", "kafka"];
    for key in keys {
        let confirm = ch
            .basic_publish(
                "events".into(),
                key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                format!("from amqp {key}").as_bytes(),
                props.clone(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "publish to topic exchange must be acked");
    }
    let bootstrap = broker.kafka_bootstrap();
    let got = tokio::task::spawn_blocking(move || {
        group_consume(&bootstrap, "amqp-readers", "events", keys.len())
    })
    .await
    .unwrap();
    for c in &got {
        let key = String::from_utf8(c.key.clone().unwrap()).unwrap();
        assert_eq!(c.partition, partition_for_key(key.as_bytes(), 6), "{key}");
        assert_eq!(c.payload, format!("from amqp {key}").as_bytes());
        assert_eq!(
            kafka_header(c, "amqp.content-type"),
            Some(&b"application/json"[..])
        );
        assert_eq!(kafka_header(c, "amqp.message-id"), Some(&b"m-1"[..]));
        // Application headers are plain record headers a Kafka consumer reads by name.
        assert_eq!(
            kafka_header(c, "tenant"),
            Some(&b"acme"[..]),
            "{:?}",
            c.headers
        );
    }
    let p = producer(&broker.kafka_bootstrap());
    for key in keys {
        let (partition, _) = produce(&p, "events", key, "from kafka", &[]).await;
        assert_eq!(partition, partition_for_key(key.as_bytes(), 6), "{key}");
    }
    drop(p);
    broker.stop().await;
}

/// An AMQP message that goes through a topic into a bound queue keeps its properties.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_properties_survive_the_topic_on_the_way_to_a_queue() {
    let broker = TestBroker::start().await.unwrap();
    create_topic(&broker, "audit", 2).await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_with(&ch, "auditors", FieldTable::default()).await;
    bind(&ch, "auditors", "audit", "#").await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let props = BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_correlation_id("c-9".into())
        .with_headers(args(vec![("n", AMQPValue::LongInt(7))]));
    assert!(ch
        .basic_publish(
            "audit".into(),
            "login.ok".into(),
            BasicPublishOptions::default(),
            b"hello",
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap()
        .is_ack());
    let mut c = consume(&ch, "auditors", false).await;
    let d = next(&mut c).await;
    assert_eq!(d.data, b"hello");
    assert_eq!(d.exchange.as_str(), "audit");
    assert_eq!(d.routing_key.as_str(), "login.ok");
    assert_eq!(
        d.properties.content_type().as_ref().map(|s| s.as_str()),
        Some("text/plain")
    );
    assert_eq!(
        d.properties.correlation_id().as_ref().map(|s| s.as_str()),
        Some("c-9")
    );
    assert_eq!(header(&d, "n"), Some(&AMQPValue::LongInt(7)));
    d.ack(BasicAckOptions::default()).await.unwrap();
    nothing_more(&mut c).await;
    broker.stop().await;
}

/// Binding keys are topic patterns on the record key: `*` one word, `#` any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_patterns_filter_records_by_key() {
    let broker = TestBroker::start().await.unwrap();
    create_topic(&broker, "logs", 1).await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    for (q, pattern) in [("all", "#"), ("one", "app.*"), ("deep", "app.#.error")] {
        declare_with(&ch, q, FieldTable::default()).await;
        bind(&ch, q, "logs", pattern).await;
    }
    let p = producer(&broker.kafka_bootstrap());
    for key in ["app.info", "app.web.error", "app.error", "db.error"] {
        produce(&p, "logs", key, key, &[]).await;
    }
    let mut want: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    want.insert(
        "all",
        vec!["app.info", "app.web.error", "app.error", "db.error"],
    );
    want.insert("one", vec!["app.info", "app.error"]);
    want.insert("deep", vec!["app.web.error", "app.error"]);
    for (q, keys) in want {
        let mut c = consume(&ch, q, false).await;
        for k in keys {
            let d = next(&mut c).await;
            assert_eq!(d.routing_key.as_str(), k, "queue {q}");
            d.ack(BasicAckOptions::default()).await.unwrap();
        }
        nothing_more(&mut c).await;
    }
    drop(p);
    broker.stop().await;
}

/// A topic's exchange exists passively, re-declares only as a durable `topic` exchange,
/// cannot be deleted over AMQP, and declaring an exchange creates no topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_declare_and_delete_rules_for_topics() {
    let broker = TestBroker::start().await.unwrap();
    create_topic(&broker, "metrics", 1).await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    ch.exchange_declare(
        "metrics".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("passive declare of a topic");
    ch.exchange_declare(
        "metrics".into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("equivalent declare");
    let err = ch
        .exchange_declare(
            "metrics".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("another type");
    assert_eq!(amqp_code(&err), Some(406));

    let ch = channel(&conn).await;
    let err = ch
        .exchange_delete("metrics".into(), Default::default())
        .await
        .expect_err("deleting a topic's exchange");
    assert_eq!(amqp_code(&err), Some(403));
    assert!(broker.core().topic("metrics").is_some());

    let ch = channel(&conn).await;
    ch.exchange_declare(
        "plain".into(),
        ExchangeKind::Topic,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    assert!(broker.core().topic("plain").is_none());

    // Deleting the topic takes its exchange (and bindings) with it.
    broker.core().delete_topic("metrics").await.unwrap();
    let err = ch
        .exchange_declare(
            "metrics".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("gone with the topic");
    assert_eq!(amqp_code(&err), Some(404));
    broker.stop().await;
}

/// Records appended just before a restart are routed after it, exactly once, and the
/// binding (to a durable queue) survives the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_resumes_exactly_once_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::with(|b| b.data_dir(dir.path())).await.unwrap();
    create_topic(&broker, "jobs", 2).await;
    {
        let conn = connect(&broker).await;
        let ch = channel(&conn).await;
        declare_durable(&ch, "workers", FieldTable::default()).await;
        bind(&ch, "workers", "jobs", "#").await;
        conn.close(200, "bye".into()).await.unwrap();
    }
    let p = producer(&broker.kafka_bootstrap());
    for i in 0..10 {
        produce(&p, "jobs", &format!("job.{i}"), &format!("before-{i}"), &[]).await;
    }
    drop(p);
    // Append directly too, right before stopping: the router may or may not have reached
    // these when shutdown begins.
    let log = broker.core().partition("jobs", 0).unwrap();
    for i in 0..5 {
        let batch = ferry::log::encode_batch(&[ferry::log::SimpleRecord {
            key: Some(format!("raw.{i}").into_bytes().into()),
            value: Some(format!("raw-{i}").into_bytes().into()),
            headers: vec![],
            timestamp: 0,
        }]);
        log.append(batch).await.unwrap();
    }
    broker.stop().await;

    let broker = TestBroker::with(|b| b.data_dir(dir.path())).await.unwrap();
    let p = producer(&broker.kafka_bootstrap());
    for i in 0..5 {
        produce(
            &p,
            "jobs",
            &format!("job.after.{i}"),
            &format!("after-{i}"),
            &[],
        )
        .await;
    }
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let mut c = consume(&ch, "workers", false).await;
    let mut bodies = ack_exactly(&mut c, 20).await;
    bodies.sort();
    let mut want: Vec<String> = (0..10)
        .map(|i| format!("before-{i}"))
        .chain((0..5).map(|i| format!("raw-{i}")))
        .chain((0..5).map(|i| format!("after-{i}")))
        .collect();
    want.sort();
    assert_eq!(bodies, want);
    drop(p);
    broker.stop().await;
}

/// The router stores its cursor past records that route nowhere only once a second, so a
/// clean stop must store it: records produced while nothing was bound must not reach a queue
/// bound just before a restart (as in RabbitMQ, a binding sees only later records).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_from_before_a_binding_stay_unrouted_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::with(|b| b.data_dir(dir.path())).await.unwrap();
    create_topic(&broker, "unbound", 1).await;
    let p = producer(&broker.kafka_bootstrap());
    // Let the router start and store its first cursor, then produce within the interval.
    produce(&p, "unbound", "k", "early", &[]).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    for i in 0..10 {
        produce(
            &p,
            "unbound",
            &format!("k.{i}"),
            &format!("before-{i}"),
            &[],
        )
        .await;
    }
    drop(p);
    {
        let conn = connect(&broker).await;
        let ch = channel(&conn).await;
        declare_durable(&ch, "late", FieldTable::default()).await;
        bind(&ch, "late", "unbound", "#").await;
        conn.close(200, "bye".into()).await.unwrap();
    }
    broker.stop().await;

    let broker = TestBroker::with(|b| b.data_dir(dir.path())).await.unwrap();
    let p = producer(&broker.kafka_bootstrap());
    for i in 0..3 {
        produce(
            &p,
            "unbound",
            &format!("k.after.{i}"),
            &format!("after-{i}"),
            &[],
        )
        .await;
    }
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let mut c = consume(&ch, "late", false).await;
    let mut bodies = ack_exactly(&mut c, 3).await;
    bodies.sort();
    assert_eq!(bodies, vec!["after-0", "after-1", "after-2"]);
    drop(p);
    broker.stop().await;
}

/// A crash after a batch's queue appends were durable but before the routing cursor moved:
/// the restart finds the copies through the `in_flight` note and routes nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_routing_batch_is_not_routed_twice() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::with(|b| b.data_dir(dir.path())).await.unwrap();
    create_topic(&broker, "crashy", 1).await;
    {
        let conn = connect(&broker).await;
        let ch = channel(&conn).await;
        declare_durable(&ch, "crash-q", FieldTable::default()).await;
        bind(&ch, "crash-q", "crashy", "#").await;
        conn.close(200, "bye".into()).await.unwrap();
    }
    let p = producer(&broker.kafka_bootstrap());
    for i in 0..3 {
        produce(&p, "crashy", &format!("k{i}"), &format!("m{i}"), &[]).await;
    }
    drop(p);
    let q = broker.core().router().queue("/", "crash-q").unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while q.message_count() < 3 {
        assert!(std::time::Instant::now() < deadline, "not routed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(q);
    broker.stop().await;

    // Put the cursor back as a crash right after the queue appends would have left it.
    {
        let store = ferry::meta::SledStore::open(&dir.path().join("meta")).unwrap();
        let meta = ferry::meta::Meta::open(std::sync::Arc::new(store)).unwrap();
        meta.put_topic_route(
            "crashy",
            0,
            &ferry::meta::TopicRouteState {
                next: 0,
                in_flight: Some(ferry::meta::RouteInFlight {
                    upto: 3,
                    queues: vec![ferry::meta::RouteMark {
                        vhost: "/".into(),
                        queue: "crash-q".into(),
                        from: 0,
                    }],
                }),
            },
        )
        .unwrap();
        meta.flush().unwrap();
    }

    let broker = TestBroker::with(|b| b.data_dir(dir.path())).await.unwrap();
    let p = producer(&broker.kafka_bootstrap());
    produce(&p, "crashy", "k3", "m3", &[]).await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let mut c = consume(&ch, "crash-q", false).await;
    let bodies = ack_exactly(&mut c, 4).await;
    assert_eq!(bodies, ["m0", "m1", "m2", "m3"]);
    drop(p);
    broker.stop().await;
}

/// Issue 12 bug 1: a Kafka record whose key, a header name and an `amqp.*` property are longer
/// than AMQP's 255-byte short strings used to panic the delivery (basic.get dropped the
/// connection; an auto-ack consumer lost the message and stopped). It is delivered by every
/// path, with what does not fit in `x-ferry-*` long-string headers, and the connection and
/// consumers carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_records_with_overlong_fields_reach_every_amqp_delivery_path() {
    let broker = TestBroker::start().await.unwrap();
    create_topic(&broker, "hostile", 1).await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    for q in ["by-get", "by-manual-ack", "by-auto-ack"] {
        declare(&ch, q).await;
        bind(&ch, q, "hostile", "#").await;
    }
    let long_key = "k".repeat(300);
    let long_name = "h".repeat(300);
    let long_type = "t".repeat(300);
    let p = producer(&broker.kafka_bootstrap());
    produce(
        &p,
        "hostile",
        &long_key,
        "payload",
        &[
            (long_name.as_str(), "named too long"),
            ("amqp.content-type", long_type.as_str()),
            ("trace", "t-1"),
        ],
    )
    .await;
    let check = |d: &Delivery| {
        assert_eq!(d.data, b"payload");
        assert_eq!(d.routing_key.as_str(), "");
        assert_eq!(d.exchange.as_str(), "hostile");
        assert_eq!(
            header_text(d, "x-ferry-routing-key"),
            Some(long_key.clone())
        );
        assert_eq!(d.properties.content_type(), &None);
        assert_eq!(
            header_text(d, "x-ferry-content-type"),
            Some(long_type.clone())
        );
        assert_eq!(header_text(d, "trace").as_deref(), Some("t-1"));
        let Some(AMQPValue::FieldArray(entries)) = header(d, "x-ferry-long-headers") else {
            panic!("no x-ferry-long-headers in {:?}", d.properties.headers());
        };
        let mut entry = FieldTable::default();
        entry.insert("name".into(), long(&long_name));
        entry.insert("value".into(), long("named too long"));
        assert_eq!(entries.as_slice(), [AMQPValue::FieldTable(entry)]);
    };

    let got = get(&ch, "by-get", false).await.expect("basic.get finds it");
    check(&got.delivery);
    got.delivery.ack(BasicAckOptions::default()).await.unwrap();

    let mut manual = consume(&ch, "by-manual-ack", false).await;
    let d = next(&mut manual).await;
    check(&d);
    d.ack(BasicAckOptions::default()).await.unwrap();

    let ch2 = channel(&conn).await;
    let mut auto = consume(&ch2, "by-auto-ack", true).await;
    check(&next(&mut auto).await);

    // Nothing broke: the consumers keep delivering, and the queues are settled.
    produce(&p, "hostile", "plain", "after", &[]).await;
    assert_eq!(next(&mut auto).await.data, b"after");
    let d = next(&mut manual).await;
    assert_eq!(d.data, b"after");
    d.ack(BasicAckOptions::default()).await.unwrap();
    assert_eq!(get_body(&ch, "by-get").await, b"after");
    assert!(conn.status().connected());
    assert_eq!(count(&ch, "by-get").await, 0);
    drop(p);
    broker.stop().await;
}
