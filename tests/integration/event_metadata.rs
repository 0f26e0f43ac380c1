//! Event metadata across the protocols, with real clients on both sides (rdkafka and lapin in
//! the same test): CloudEvents between the Kafka binding (`ce_*` headers) and the AMQP binding
//! (`cloudEvents:*` application properties), AMQP properties through a Kafka hop and back, W3C
//! trace context, and the id and timestamp the broker assigns when a producer set none.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry::testing::TestBroker;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

const WAIT: Duration = Duration::from_secs(10);
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACESTATE: &str = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";

// --- AMQP helpers --------------------------------------------------------------------------

async fn amqp(broker: &TestBroker) -> (Connection, Channel) {
    let conn = Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    (conn, ch)
}

/// A queue bound to topic exchange `topic` with `#`, and a consumer on it.
async fn bound_consumer(ch: &Channel, queue: &str, topic: &str) -> lapin::Consumer {
    ch.queue_declare(queue.into(), Default::default(), FieldTable::default())
        .await
        .expect("queue.declare");
    ch.queue_bind(
        queue.into(),
        topic.into(),
        "#".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.bind");
    ch.basic_consume(
        queue.into(),
        "".into(),
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("basic.consume")
}

async fn next(consumer: &mut lapin::Consumer) -> Delivery {
    tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("delivery in time")
        .expect("stream open")
        .expect("delivery ok")
}

async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8], props: BasicProperties) {
    let confirm = ch
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack());
}

fn table(pairs: Vec<(&str, AMQPValue)>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert(k.into(), v);
    }
    t
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn headers(d: &Delivery) -> BTreeMap<String, AMQPValue> {
    d.properties
        .headers()
        .as_ref()
        .map(|t| {
            t.inner()
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn text(v: &Option<lapin::types::ShortString>) -> Option<&str> {
    v.as_ref().map(|s| s.as_str())
}

// --- Kafka helpers -------------------------------------------------------------------------

async fn create_topic(broker: &TestBroker, name: &str) {
    broker
        .core()
        .create_topic(name, 1, BTreeMap::new())
        .await
        .expect("create topic");
}

fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.timeout.ms", "20000")
        .set("linger.ms", "0")
        .create()
        .expect("producer")
}

struct Consumed {
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    timestamp: Option<i64>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Consumed {
    fn header(&self, key: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
    }
}

/// Reads `count` records of `topic` from the start with a consumer group.
async fn kafka_consume(broker: &TestBroker, topic: &str, count: usize) -> Vec<Consumed> {
    let bootstrap = broker.kafka_bootstrap();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", format!("readers-{topic}"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("consumer");
        c.subscribe(&[&topic]).expect("subscribe");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut out = Vec::new();
        while out.len() < count {
            assert!(std::time::Instant::now() < deadline, "timed out consuming");
            match c.poll(Duration::from_millis(200)) {
                None => {}
                Some(Err(e)) => panic!("consume error: {e}"),
                Some(Ok(m)) => out.push(Consumed {
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    timestamp: m.timestamp().to_millis(),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                                .collect()
                        })
                        .unwrap_or_default(),
                }),
            }
        }
        out
    })
    .await
    .expect("consumer thread")
}

/// Produces one record and returns its offset.
async fn kafka_produce(
    p: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    payload: &[u8],
    headers: &[(String, Option<Vec<u8>>)],
    timestamp: Option<i64>,
) -> i64 {
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: v.as_deref(),
        });
    }
    let mut record = FutureRecord::<[u8], [u8]>::to(topic)
        .payload(payload)
        .headers(h);
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Some(ts) = timestamp {
        record = record.timestamp(ts);
    }
    p.send(record, WAIT).await.expect("produce").offset
}

fn pairs(h: &[(&str, &str)]) -> Vec<(String, Option<Vec<u8>>)> {
    h.iter()
        .map(|(k, v)| (k.to_string(), Some(v.as_bytes().to_vec())))
        .collect()
}

// --- tests ---------------------------------------------------------------------------------

/// A CloudEvent produced in the Kafka binding's binary mode (`ce_*` headers, `content-type`)
/// reaches an AMQP consumer in the AMQP binding's form: `cloudEvents:*` application properties
/// and the content-type property; its id and time are the message's id and timestamp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_cloudevents_arrive_as_cloudevents_properties_over_amqp() {
    let broker = TestBroker::start().await.unwrap();
    create_topic(&broker, "ce-orders").await;
    let (_conn, ch) = amqp(&broker).await;
    let mut c = bound_consumer(&ch, "ce-workers", "ce-orders").await;
    let attrs = [
        ("ce_specversion", "1.0"),
        ("ce_id", "evt-1"),
        ("ce_source", "/shop/orders"),
        ("ce_type", "com.example.order.created"),
        ("ce_time", "2024-01-02T03:04:05Z"),
        ("ce_subject", "order-7"),
        ("ce_dataschema", "https://example.com/schemas/order/v2"),
        ("ce_tenant", "acme"),
        ("content-type", "application/json"),
        ("traceparent", TRACEPARENT),
        ("causation-id", "cmd-3"),
    ];
    let p = producer(&broker.kafka_bootstrap());
    kafka_produce(
        &p,
        "ce-orders",
        Some(b"order-7"),
        br#"{"total":3}"#,
        &pairs(&attrs),
        None,
    )
    .await;

    let d = next(&mut c).await;
    assert_eq!(d.data, br#"{"total":3}"#);
    let h = headers(&d);
    for (name, value) in &attrs[..8] {
        let amqp_name = format!("cloudEvents:{}", &name[3..]);
        assert_eq!(
            h.get(&amqp_name),
            Some(&long(value)),
            "{amqp_name} in {h:?}"
        );
    }
    assert!(
        !h.keys().any(|k| k.starts_with("ce_")),
        "no Kafka-form names: {h:?}"
    );
    assert!(!h.contains_key("content-type"), "{h:?}");
    assert_eq!(text(d.properties.content_type()), Some("application/json"));
    assert_eq!(text(d.properties.message_id()), Some("evt-1"));
    assert_eq!(d.properties.timestamp(), &Some(1_704_164_645));
    assert_eq!(h.get("traceparent"), Some(&long(TRACEPARENT)));
    assert_eq!(h.get("causation-id"), Some(&long("cmd-3")));
    broker.stop().await;
}

/// The other way: an AMQP CloudEvent (`cloudEvents:*`, or `cloudEvents_*`) is stored in the
/// Kafka binding's form, so a Kafka consumer reads `ce_*` headers and `content-type`; an AMQP
/// consumer of the same topic gets the attributes back with the separator the publisher used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_cloudevents_arrive_as_ce_headers_over_kafka() {
    let broker = TestBroker::start().await.unwrap();
    create_topic(&broker, "ce-events").await;
    let (_conn, ch) = amqp(&broker).await;
    let mut c = bound_consumer(&ch, "ce-mirror", "ce-events").await;
    for sep in [":", "_"] {
        let attrs = table(vec![
            (&format!("cloudEvents{sep}specversion"), long("1.0")),
            (
                &format!("cloudEvents{sep}id"),
                long(&format!("amqp-evt{sep}")),
            ),
            (&format!("cloudEvents{sep}source"), long("/billing")),
            (
                &format!("cloudEvents{sep}type"),
                long("com.example.invoice.paid"),
            ),
            (
                &format!("cloudEvents{sep}time"),
                long("2024-05-06T07:08:09Z"),
            ),
            (&format!("cloudEvents{sep}subject"), long("inv-1")),
            ("billing-region", long("eu")),
        ]);
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id(format!("m{sep}").into())
            .with_timestamp(1_700_000_000)
            .with_headers(attrs);
        publish(&ch, "ce-events", "inv-1", b"{}", props.clone()).await;
        let d = next(&mut c).await;
        assert_eq!(d.properties, props, "AMQP -> topic -> AMQP with '{sep}'");
    }

    let got = kafka_consume(&broker, "ce-events", 2).await;
    for (c, sep) in got.iter().zip([":", "_"]) {
        let id = format!("amqp-evt{sep}");
        let want: [(&str, &str); 7] = [
            ("ce_specversion", "1.0"),
            ("ce_id", &id),
            ("ce_source", "/billing"),
            ("ce_type", "com.example.invoice.paid"),
            ("ce_time", "2024-05-06T07:08:09Z"),
            ("ce_subject", "inv-1"),
            ("content-type", "application/json"),
        ];
        for (name, value) in want {
            assert_eq!(
                c.header(name),
                Some(value.as_bytes()),
                "{name} in {:?}",
                c.headers
            );
        }
        assert_eq!(c.header("amqp.content-type"), None);
        assert!(
            !c.headers.iter().any(|(k, _)| k.starts_with("cloudEvents")),
            "{:?}",
            c.headers
        );
    }
    broker.stop().await;
}

/// A message that crosses from AMQP to Kafka and back keeps every property: a Kafka
/// application reads it from one topic and re-produces it, headers and all, to another, and
/// an AMQP consumer of the second topic gets exactly what the AMQP publisher sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_properties_survive_a_kafka_hop_and_back() {
    let broker = TestBroker::start().await.unwrap();
    create_topic(&broker, "hop-in").await;
    create_topic(&broker, "hop-out").await;
    let (_conn, ch) = amqp(&broker).await;
    let mut out = bound_consumer(&ch, "hop-sink", "hop-out").await;
    let mut nested = FieldTable::default();
    nested.insert("depth".into(), AMQPValue::ShortInt(2));
    let user_headers = table(vec![
        ("s", long("text")),
        ("i32", AMQPValue::LongInt(-7)),
        ("i64", AMQPValue::LongLongInt(1 << 40)),
        ("flag", AMQPValue::Boolean(true)),
        ("ratio", AMQPValue::Double(0.25)),
        ("when", AMQPValue::Timestamp(1_600_000_000)),
        ("nested", AMQPValue::FieldTable(nested)),
        (
            "list",
            AMQPValue::FieldArray(FieldArray::from(vec![long("a"), AMQPValue::LongInt(1)])),
        ),
        ("traceparent", long(TRACEPARENT)),
        ("tracestate", long(TRACESTATE)),
        ("causation-id", long("cmd-1")),
        ("schema-version", long("3")),
        ("cloudEvents:id", long("ce-1")),
        // A CloudEvents time as a native AMQP timestamp keeps its type.
        ("cloudEvents:time", AMQPValue::Timestamp(1_700_000_001)),
    ]);
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("gzip".into())
        .with_message_id("msg-1".into())
        .with_correlation_id("corr-1".into())
        .with_reply_to("replies".into())
        .with_type("order.created".into())
        .with_app_id("shop".into())
        .with_user_id("guest".into())
        .with_timestamp(1_700_000_000)
        .with_priority(7)
        .with_expiration("600000".into())
        .with_delivery_mode(2)
        .with_headers(user_headers);
    publish(&ch, "hop-in", "order.7", b"payload", props.clone()).await;

    // The Kafka application: forward every record unchanged.
    let got = kafka_consume(&broker, "hop-in", 1).await;
    let r = &got[0];
    assert_eq!(r.header("traceparent"), Some(TRACEPARENT.as_bytes()));
    let p = producer(&broker.kafka_bootstrap());
    kafka_produce(
        &p,
        "hop-out",
        r.key.as_deref(),
        &r.payload,
        &r.headers,
        r.timestamp,
    )
    .await;

    let d = next(&mut out).await;
    assert_eq!(d.data, b"payload");
    assert_eq!(d.routing_key.as_str(), "order.7");
    assert_eq!(d.exchange.as_str(), "hop-out");
    assert_eq!(d.properties, props);
    broker.stop().await;
}

/// An AMQP publisher's W3C trace context reaches a Kafka consumer's headers unchanged, under
/// the same names, and comes back to an AMQP consumer as the same long strings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_traceparent_reaches_kafka_consumers_unchanged() {
    let broker = TestBroker::start().await.unwrap();
    create_topic(&broker, "traced").await;
    let (_conn, ch) = amqp(&broker).await;
    let mut c = bound_consumer(&ch, "traced-q", "traced").await;
    let props = BasicProperties::default().with_headers(table(vec![
        ("traceparent", long(TRACEPARENT)),
        ("tracestate", long(TRACESTATE)),
        ("other", AMQPValue::LongInt(1)),
    ]));
    publish(&ch, "traced", "k", b"x", props).await;
    let got = kafka_consume(&broker, "traced", 1).await;
    assert_eq!(got[0].header("traceparent"), Some(TRACEPARENT.as_bytes()));
    assert_eq!(got[0].header("tracestate"), Some(TRACESTATE.as_bytes()));
    let d = next(&mut c).await;
    let h = headers(&d);
    assert_eq!(h.get("traceparent"), Some(&long(TRACEPARENT)));
    assert_eq!(h.get("tracestate"), Some(&long(TRACESTATE)));
    assert_eq!(h.get("other"), Some(&AMQPValue::LongInt(1)));
    broker.stop().await;
}

/// When the producer set no id and no timestamp the broker supplies them, and both sides see
/// the same ones: an AMQP publish gets a UUIDv7 `ferry.message-id` header and its publish time
/// as record timestamp; a Kafka-produced record's id is `topic/partition/offset` and its
/// timestamp the record's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_assigns_id_and_timestamp_when_the_producer_set_none() {
    let broker = TestBroker::start().await.unwrap();
    create_topic(&broker, "bare").await;
    let (_conn, ch) = amqp(&broker).await;
    let mut c = bound_consumer(&ch, "bare-q", "bare").await;

    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    publish(&ch, "bare", "k", b"from amqp", BasicProperties::default()).await;
    let after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let got = kafka_consume(&broker, "bare", 1).await;
    let id = std::str::from_utf8(got[0].header("ferry.message-id").expect("assigned id"))
        .unwrap()
        .to_string();
    let uuid = uuid::Uuid::parse_str(&id).expect("a uuid");
    assert_eq!(uuid.get_version_num(), 7);
    let ts = got[0].timestamp.expect("record timestamp");
    assert!(
        (before..=after).contains(&ts),
        "{before} <= {ts} <= {after}"
    );
    let d = next(&mut c).await;
    assert_eq!(d.data, b"from amqp");
    assert_eq!(text(d.properties.message_id()), Some(id.as_str()));
    assert_eq!(d.properties.timestamp(), &Some((ts / 1000) as u64));

    let p = producer(&broker.kafka_bootstrap());
    let ts = 1_650_000_123_456;
    let offset = kafka_produce(&p, "bare", Some(b"k"), b"from kafka", &[], Some(ts)).await;
    let d = next(&mut c).await;
    assert_eq!(d.data, b"from kafka");
    assert_eq!(
        text(d.properties.message_id()),
        Some(format!("bare/0/{offset}").as_str())
    );
    assert_eq!(d.properties.timestamp(), &Some(1_650_000_123));
    // A second AMQP publish gets a different id.
    publish(&ch, "bare", "k", b"again", BasicProperties::default()).await;
    let d = next(&mut c).await;
    assert_ne!(text(d.properties.message_id()), Some(id.as_str()));
    assert!(d.properties.message_id().is_some());
    broker.stop().await;
}

/// With the `otlp` feature (`cargo test --features otlp --test event_metadata`): the broker's
/// `publish` and `deliver` spans reach an OTLP/HTTP collector inside the AMQP publisher's
/// trace, named by its `traceparent`.
#[cfg(feature = "otlp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_export_puts_broker_spans_in_the_publishers_trace() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // A collector that answers 200 to every request and hands over the bodies.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        let mut chunk = [0u8; 4096];
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let _ = tx.send(buf[head_end..head_end + len].to_vec());
                    buf.drain(..head_end + len);
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    if sock.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    // The exporter's blocking HTTP client must not be built on a runtime thread.
    std::thread::spawn(move || {
        ferry::observe::tracing::init_with_otlp("info", "text", None, false, &endpoint)
    })
    .join()
    .unwrap();

    let broker = TestBroker::start().await.unwrap();
    let (_conn, ch) = amqp(&broker).await;
    ch.queue_declare("otlp-q".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    let props =
        BasicProperties::default().with_headers(table(vec![("traceparent", long(TRACEPARENT))]));
    publish(&ch, "", "otlp-q", b"traced", props).await;
    let mut c = ch
        .basic_consume(
            "otlp-q".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(next(&mut c).await.data, b"traced");
    broker.stop().await;
    // Flush the batch.
    std::thread::spawn(ferry::observe::otlp::shutdown)
        .join()
        .unwrap();

    let trace_id: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&TRACEPARENT[3 + 2 * i..5 + 2 * i], 16).unwrap())
        .collect();
    let mut exported = Vec::new();
    while let Ok(body) = rx.try_recv() {
        exported.extend_from_slice(&body);
    }
    let has = |needle: &[u8]| exported.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"publish") && has(b"deliver"), "spans exported");
    assert!(
        has(&trace_id),
        "the publisher's trace id is on the exported spans"
    );
}
