//! Disk faults through real clients: a full disk during an append refuses that append only —
//! AMQP publisher confirm turns into a nack, a Kafka produce gets `KAFKA_STORAGE_ERROR` — the
//! broker stays ready, and appends resume when space returns, at the offsets the refused ones
//! would have taken and with nothing of the refused writes left in the log (also after a
//! restart). An idempotent producer whose batches were refused retries into exactly one copy.
//!
//! No file system can be filled here (no root for a small tmpfs), so the full disk is
//! `PartitionHandle::inject_disk_full`: the segment's writes put a few bytes on disk and then
//! fail with a real `ENOSPC`, driving the same undo path as an actual full disk.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use ferry::server::Broker;

const TIMEOUT: Duration = Duration::from_secs(10);

async fn start(dir: &std::path::Path) -> Broker {
    Broker::builder()
        .data_dir(dir)
        .configure(|c| c.kafka.group_initial_rebalance_delay_ms = 0)
        .start()
        .await
        .expect("broker starts")
}

async fn amqp_channel(broker: &Broker) -> (Connection, Channel) {
    let url = format!("amqp://guest:guest@{}/%2f", broker.amqp_addr());
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    (conn, ch)
}

/// Publishes one message and returns whether the broker confirmed (ack) rather than nacked it.
async fn publish(ch: &Channel, queue: &str, body: &[u8]) -> bool {
    let confirm = ch
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    confirm.is_ack()
}

async fn drain(ch: &Channel, queue: &str) -> Vec<Vec<u8>> {
    let mut bodies = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
    {
        bodies.push(m.delivery.data.clone());
    }
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_publish_on_a_full_disk_is_nacked_and_publishing_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let (conn, ch) = amqp_channel(&broker).await;
    ch.queue_declare(
        "full".into(),
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
    assert!(publish(&ch, "full", b"before").await);

    let queue = broker.core().router().queue("/", "full").unwrap();
    let end = queue.log().log_end_offset();
    queue.log().inject_disk_full(Some(20));
    assert!(!publish(&ch, "full", b"refused-1").await, "must be nacked");
    assert!(!publish(&ch, "full", b"refused-2").await, "must be nacked");
    assert_eq!(queue.log().log_end_offset(), end, "nothing appended");
    assert!(queue.log().refused_append_count() >= 2);
    assert!(!queue.log().is_failed(), "a full disk is not a fail-stop");
    assert_eq!(broker.readiness(), Ok(()));

    queue.log().inject_disk_full(None);
    assert!(publish(&ch, "full", b"after").await);
    assert_eq!(queue.log().log_end_offset(), end + 1);
    conn.close(200, "bye".into()).await.unwrap();
    broker.shutdown().await;
    // The queue handle holds the metadata store open; the restart needs it released.
    drop(queue);
    drop(broker);

    // What is on disk is exactly the confirmed messages: recovery finds no trace of the
    // refused writes.
    let broker = start(dir.path()).await;
    let (conn, ch) = amqp_channel(&broker).await;
    assert_eq!(
        drain(&ch, "full").await,
        vec![b"before".to_vec(), b"after".to_vec()]
    );
    conn.close(200, "bye".into()).await.unwrap();
    broker.shutdown().await;
}

fn producer(bootstrap: &str, extra: &[(&str, &str)]) -> FutureProducer {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("linger.ms", "0")
        .set("retry.backoff.ms", "50")
        .set("retry.backoff.max.ms", "100");
    for (k, v) in extra {
        cfg.set(*k, *v);
    }
    cfg.create().expect("producer")
}

/// Every record of partition 0 of `topic`, as (offset, payload).
fn read_all(bootstrap: &str, topic: &str, expected: usize) -> Vec<(i64, Vec<u8>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "disk-faults-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    while out.len() < expected && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            out.push((m.offset(), m.payload().unwrap_or_default().to_vec()));
        }
    }
    // Anything beyond `expected` would be a refused record that came back.
    if let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) {
        out.push((m.offset(), m.payload().unwrap_or_default().to_vec()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_produce_on_a_full_disk_gets_storage_error_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    broker
        .core()
        .create_topic("full-topic", 1, BTreeMap::new())
        .await
        .unwrap();
    let bootstrap = broker.kafka_addr().to_string();
    // No retries: the storage error itself must reach the application.
    let p = producer(&bootstrap, &[("message.send.max.retries", "0")]);
    let send = |payload: &'static str| {
        let p = p.clone();
        async move {
            p.send(
                FutureRecord::<(), _>::to("full-topic").payload(payload),
                TIMEOUT,
            )
            .await
            .map(|d| d.offset)
            .map_err(|(e, _)| e)
        }
    };
    assert_eq!(send("before").await.unwrap(), 0);

    let partition = broker.core().partition("full-topic", 0).unwrap();
    partition.inject_disk_full(Some(10));
    match send("refused").await {
        Err(KafkaError::MessageProduction(RDKafkaErrorCode::KafkaStorageError)) => {}
        other => panic!("expected KAFKA_STORAGE_ERROR, got {other:?}"),
    }
    assert!(!partition.is_failed());
    assert_eq!(broker.readiness(), Ok(()));

    partition.inject_disk_full(None);
    assert_eq!(
        send("after").await.unwrap(),
        1,
        "the refused record took no offset"
    );
    broker.shutdown().await;
    drop(broker);

    let broker = start(dir.path()).await;
    let bootstrap = broker.kafka_addr().to_string();
    let records = tokio::task::spawn_blocking(move || read_all(&bootstrap, "full-topic", 2))
        .await
        .unwrap();
    assert_eq!(
        records,
        vec![(0, b"before".to_vec()), (1, b"after".to_vec())]
    );
    broker.shutdown().await;
}

/// An idempotent producer keeps retrying batches the full disk refused; once space returns
/// each lands exactly once, in order. This fails if the refused batches' sequence numbers
/// stayed recorded: the retry would be answered as a duplicate of a write that never happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producer_retries_through_a_full_disk_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    broker
        .core()
        .create_topic("full-idem", 1, BTreeMap::new())
        .await
        .unwrap();
    let bootstrap = broker.kafka_addr().to_string();
    let p = producer(
        &bootstrap,
        &[
            ("enable.idempotence", "true"),
            ("message.timeout.ms", "30000"),
        ],
    );
    let first = p
        .send(
            FutureRecord::<(), _>::to("full-idem").payload("m0"),
            TIMEOUT,
        )
        .await
        .expect("m0");
    assert_eq!(first.offset, 0);

    let partition = broker.core().partition("full-idem", 0).unwrap();
    partition.inject_disk_full(Some(30));
    let sends: Vec<_> = (1..=5)
        .map(|i| {
            let p = p.clone();
            tokio::spawn(async move {
                let payload = format!("m{i}");
                p.send(
                    FutureRecord::<(), _>::to("full-idem").payload(&payload),
                    TIMEOUT,
                )
                .await
                .map(|d| d.offset)
                .map_err(|(e, _)| e)
            })
        })
        .collect();
    // Space returns only after the broker has refused the batches a few times.
    let deadline = Instant::now() + TIMEOUT;
    while partition.refused_append_count() < 3 {
        assert!(Instant::now() < deadline, "no refused append seen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!partition.is_failed());
    partition.inject_disk_full(None);
    let mut offsets = Vec::new();
    for s in sends {
        offsets.push(s.await.unwrap().expect("delivered once space returned"));
    }
    offsets.sort_unstable();
    assert_eq!(offsets, vec![1, 2, 3, 4, 5]);

    let records = tokio::task::spawn_blocking(move || read_all(&bootstrap, "full-idem", 6))
        .await
        .unwrap();
    let offsets: Vec<i64> = records.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, vec![0, 1, 2, 3, 4, 5], "no duplicate, no gap");
    let mut payloads: Vec<Vec<u8>> = records.into_iter().map(|(_, p)| p).collect();
    payloads.sort();
    let expected: Vec<Vec<u8>> = (0..=5).map(|i| format!("m{i}").into_bytes()).collect();
    assert_eq!(payloads, expected);
    broker.shutdown().await;
}
