//! Kafka clients against Ferry, through librdkafka (the `rdkafka` crate): produce and consume
//! with every compression codec, keyed ordering, offsets by timestamp, admin operations, bad
//! input answered with Kafka's error codes, and data surviving a restart.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use ferry::testing::TestBroker;

// The consumer calls below block their thread, so every test runs the broker on a
// multi-threaded runtime where it keeps serving meanwhile.
const TIMEOUT: Duration = Duration::from_secs(20);

fn producer(bootstrap: &str, extra: &[(&str, &str)]) -> FutureProducer {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap)
        .set("message.timeout.ms", "20000")
        .set("linger.ms", "5");
    for (k, v) in extra {
        cfg.set(*k, *v);
    }
    cfg.create().expect("producer")
}

fn consumer(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "ferry-test-assign-only")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer")
}

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin")
}

/// One consumed record.
struct Consumed {
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    offset: i64,
    headers: Vec<(String, Vec<u8>)>,
}

/// Reads `count` messages from `topic`/`partition` starting at `offset`.
fn consume(
    c: &BaseConsumer,
    topic: &str,
    partition: i32,
    offset: i64,
    count: usize,
) -> Vec<Consumed> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
        .unwrap();
    c.assign(&tpl).unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut out = Vec::new();
    while out.len() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {} of {count} messages",
            out.len()
        );
        match c.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(e)) => panic!("consume error: {e}"),
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Consumed {
                    key: m.key().map(|k| k.to_vec()),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    offset: m.offset(),
                    headers,
                });
            }
        }
    }
    out
}

async fn create_topic(bootstrap: &str, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let res = admin(bootstrap)
        .create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
        )
        .await
        .unwrap();
    assert!(res[0].is_ok(), "create {name}: {res:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_consume_with_every_compression_codec() {
    let broker = TestBroker::start().await.unwrap();
    let bootstrap = broker.kafka_bootstrap();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("codec-{codec}");
        create_topic(&bootstrap, &topic, 1, &[]).await;
        let p = producer(&bootstrap, &[("compression.codec", codec)]);
        for i in 0..50 {
            let payload = format!("{codec} message {i} {}", "x".repeat(i * 10));
            let headers = OwnedHeaders::new().insert(Header {
                key: "n",
                value: Some(&i.to_string()),
            });
            let rdkafka::producer::future_producer::Delivery {
                partition, offset, ..
            } = p
                .send(
                    FutureRecord::to(&topic)
                        .key("k")
                        .payload(&payload)
                        .headers(headers),
                    TIMEOUT,
                )
                .await
                .unwrap_or_else(|(e, _)| panic!("{codec}: {e}"));
            assert_eq!(partition, 0);
            assert_eq!(offset, i as i64, "{codec}: offsets are dense");
        }
        let got = consume(&consumer(&bootstrap), &topic, 0, 0, 50);
        for (i, m) in got.iter().enumerate() {
            assert_eq!(m.offset, i as i64);
            assert_eq!(m.key.as_deref(), Some(&b"k"[..]));
            let expected = format!("{codec} message {i} {}", "x".repeat(i * 10));
            assert_eq!(m.payload, expected.as_bytes());
            assert_eq!(
                m.headers,
                vec![("n".to_string(), i.to_string().into_bytes())]
            );
        }
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_records_keep_their_partition_and_order() {
    let broker = TestBroker::start().await.unwrap();
    let bootstrap = broker.kafka_bootstrap();
    create_topic(&bootstrap, "keyed", 4, &[]).await;
    let p = producer(&bootstrap, &[("linger.ms", "0")]);
    let mut partition_of: HashMap<String, i32> = HashMap::new();
    for i in 0..200 {
        let key = format!("key-{}", i % 10);
        let rdkafka::producer::future_producer::Delivery { partition, .. } = p
            .send(
                FutureRecord::to("keyed").key(&key).payload(&format!("{i}")),
                TIMEOUT,
            )
            .await
            .unwrap();
        let first = *partition_of.entry(key.clone()).or_insert(partition);
        assert_eq!(first, partition, "{key} moved partition");
    }
    // Within each partition, each key's values arrive in the order produced.
    let c = consumer(&bootstrap);
    for partition in 0..4 {
        let keys: Vec<_> = partition_of
            .iter()
            .filter(|(_, p)| **p == partition)
            .map(|(k, _)| k.clone())
            .collect();
        let count = keys.len() * 20;
        let got = consume(&c, "keyed", partition, 0, count);
        let mut last: HashMap<Vec<u8>, i64> = HashMap::new();
        for m in got {
            let n: i64 = String::from_utf8(m.payload).unwrap().parse().unwrap();
            let prev = last.insert(m.key.unwrap(), n);
            assert!(prev.is_none_or(|p| p < n), "out of order");
        }
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_by_timestamp_and_out_of_range() {
    let broker = TestBroker::start().await.unwrap();
    let bootstrap = broker.kafka_bootstrap();
    create_topic(&bootstrap, "times", 1, &[]).await;
    let p = producer(&bootstrap, &[("linger.ms", "0")]);
    let base = 1_700_000_000_000i64;
    for i in 0..10 {
        p.send(
            FutureRecord::to("times")
                .key("k")
                .payload("v")
                .timestamp(base + i * 1000),
            TIMEOUT,
        )
        .await
        .unwrap();
    }
    let c = consumer(&bootstrap);
    let mut query = TopicPartitionList::new();
    query
        .add_partition_offset("times", 0, Offset::Offset(base + 4500))
        .unwrap();
    let found = c.offsets_for_times(query, TIMEOUT).unwrap();
    assert_eq!(found.elements()[0].offset(), Offset::Offset(5));
    let mut query = TopicPartitionList::new();
    query
        .add_partition_offset("times", 0, Offset::Offset(base + 60_000))
        .unwrap();
    let found = c.offsets_for_times(query, TIMEOUT).unwrap();
    assert_eq!(found.elements()[0].offset(), Offset::End);

    let (low, high) = c.fetch_watermarks("times", 0, TIMEOUT).unwrap();
    assert_eq!((low, high), (0, 10));

    // A fetch past the end with auto.offset.reset=error surfaces OFFSET_OUT_OF_RANGE.
    let strict: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "strict")
        .set("auto.offset.reset", "error")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("times", 0, Offset::Offset(50))
        .unwrap();
    strict.assign(&tpl).unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no out-of-range error"
        );
        if let Some(Err(e)) = strict.poll(Duration::from_millis(200)) {
            let text = e.to_string();
            assert!(
                text.contains("out of range")
                    || text.contains("OUT_OF_RANGE")
                    || text.contains("Offset"),
                "{text}"
            );
            break;
        }
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_create_describe_alter_delete() {
    let broker = TestBroker::start().await.unwrap();
    let bootstrap = broker.kafka_bootstrap();
    let a = admin(&bootstrap);
    let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    create_topic(&bootstrap, "admin-t", 2, &[("retention.ms", "3600000")]).await;

    let dup = a
        .create_topics(
            [&NewTopic::new("admin-t", 1, TopicReplication::Fixed(1))],
            &opts,
        )
        .await
        .unwrap();
    assert!(
        matches!(dup[0], Err((_, RDKafkaErrorCode::TopicAlreadyExists))),
        "{dup:?}"
    );
    let bad_rf = a
        .create_topics(
            [&NewTopic::new("rf3", 1, TopicReplication::Fixed(3))],
            &opts,
        )
        .await
        .unwrap();
    assert!(
        matches!(
            bad_rf[0],
            Err((_, RDKafkaErrorCode::InvalidReplicationFactor))
        ),
        "{bad_rf:?}"
    );
    let bad_cfg = a
        .create_topics(
            [&NewTopic::new("badcfg", 1, TopicReplication::Fixed(1)).set("retention.ms", "soon")],
            &opts,
        )
        .await
        .unwrap();
    assert!(
        matches!(bad_cfg[0], Err((_, RDKafkaErrorCode::InvalidConfig))),
        "{bad_cfg:?}"
    );

    let described = a
        .describe_configs([&ResourceSpecifier::Topic("admin-t")], &opts)
        .await
        .unwrap();
    let resource = described[0].as_ref().unwrap();
    let retention = resource.get("retention.ms").unwrap();
    assert_eq!(retention.value.as_deref(), Some("3600000"));
    assert!(!retention.is_default);

    let alter =
        AlterConfig::new(ResourceSpecifier::Topic("admin-t")).set("max.message.bytes", "2000");
    let altered = a.alter_configs([&alter], &opts).await.unwrap();
    assert!(altered[0].is_ok(), "{altered:?}");
    // max.message.bytes is enforced: a 5000-byte record is refused with MESSAGE_TOO_LARGE.
    let p = producer(
        &bootstrap,
        &[("linger.ms", "0"), ("message.max.bytes", "100000")],
    );
    let err = p
        .send(
            FutureRecord::to("admin-t")
                .key("k")
                .payload(&"x".repeat(5000))
                .partition(0),
            TIMEOUT,
        )
        .await
        .unwrap_err()
        .0;
    assert!(
        matches!(
            err,
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)
        ),
        "{err:?}"
    );

    let grown = a
        .create_partitions([&NewPartitions::new("admin-t", 3)], &opts)
        .await
        .unwrap();
    assert!(grown[0].is_ok(), "{grown:?}");
    let md = p.client().fetch_metadata(Some("admin-t"), TIMEOUT).unwrap();
    assert_eq!(md.topics()[0].partitions().len(), 3);
    let shrink = a
        .create_partitions([&NewPartitions::new("admin-t", 2)], &opts)
        .await
        .unwrap();
    assert!(
        matches!(shrink[0], Err((_, RDKafkaErrorCode::InvalidPartitions))),
        "{shrink:?}"
    );

    let deleted = a
        .delete_topics(&["admin-t", "never-existed"], &opts)
        .await
        .unwrap();
    assert!(deleted[0].is_ok(), "{deleted:?}");
    assert!(
        matches!(
            deleted[1],
            Err((_, RDKafkaErrorCode::UnknownTopicOrPartition))
        ),
        "{deleted:?}"
    );
    assert!(broker.core().topic("admin-t").is_none());
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_create_is_a_setting_and_missing_topics_are_reported() {
    let broker = TestBroker::with(|b| b.configure(|c| c.kafka.auto_create_topics = false))
        .await
        .unwrap();
    let bootstrap = broker.kafka_bootstrap();
    let p = producer(
        &bootstrap,
        &[("linger.ms", "0"), ("message.timeout.ms", "3000")],
    );
    let err = p
        .send(
            FutureRecord::to("missing").key("k").payload("v"),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err()
        .0;
    assert!(
        matches!(
            err,
            KafkaError::MessageProduction(
                RDKafkaErrorCode::UnknownTopicOrPartition
                    | RDKafkaErrorCode::UnknownTopic
                    | RDKafkaErrorCode::MessageTimedOut
            )
        ),
        "{err:?}"
    );
    assert!(broker.core().topic("missing").is_none());
    broker.stop().await;

    let broker = TestBroker::with(|b| b.configure(|c| c.kafka.default_partitions = 3))
        .await
        .unwrap();
    let p = producer(&broker.kafka_bootstrap(), &[("linger.ms", "0")]);
    p.send(FutureRecord::to("auto").key("k").payload("v"), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(broker.core().topic("auto").unwrap().partition_count(), 3);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::with(|b| b.data_dir(dir.path())).await.unwrap();
    let p = producer(&broker.kafka_bootstrap(), &[("linger.ms", "0")]);
    for i in 0..20 {
        p.send(
            FutureRecord::to("durable")
                .key("k")
                .payload(&format!("m{i}")),
            TIMEOUT,
        )
        .await
        .unwrap();
    }
    drop(p);
    broker.stop().await;

    let broker = TestBroker::with(|b| b.data_dir(dir.path())).await.unwrap();
    let got = consume(&consumer(&broker.kafka_bootstrap()), "durable", 0, 0, 20);
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.offset, i as i64);
        assert_eq!(m.payload, format!("m{i}").as_bytes());
    }
    let p = producer(&broker.kafka_bootstrap(), &[("linger.ms", "0")]);
    let offset = p
        .send(
            FutureRecord::to("durable").key("k").payload("after"),
            TIMEOUT,
        )
        .await
        .unwrap()
        .offset;
    assert_eq!(offset, 20);
    broker.stop().await;
}
