//! The idempotent producer: InitProducerId, duplicates answered with the original offsets,
//! sequence gaps and stale epochs refused, state kept across a restart — through raw Kafka
//! requests (to control sequence numbers exactly) and through librdkafka with
//! `enable.idempotence=true`.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse,
    ProducerId, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

use ferry::log::batch::{try_encode_batch, EncodeOptions, SimpleRecord};
use ferry::testing::TestBroker;

use crate::common;
use common::kafka_raw::RawKafka;

struct Client {
    raw: RawKafka,
}

impl Client {
    async fn connect(addr: std::net::SocketAddr) -> Self {
        Client {
            raw: RawKafka::connect(addr).await,
        }
    }

    async fn init_producer_id(&mut self, current: Option<(i64, i16)>) -> InitProducerIdResponse {
        let mut req = InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000);
        if let Some((id, epoch)) = current {
            req = req
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(epoch);
        }
        self.raw.call(ApiKey::InitProducerId, 4, &req).await
    }

    /// Produces one batch of `count` records with the given producer fields; returns
    /// (error code, base offset).
    async fn produce(
        &mut self,
        topic: &str,
        pid: i64,
        epoch: i16,
        seq: i32,
        count: usize,
    ) -> (i16, i64) {
        let records: Vec<SimpleRecord> = (0..count)
            .map(|i| SimpleRecord {
                key: Some(Bytes::from(format!("k{seq}-{i}"))),
                value: Some(Bytes::from(format!("v{seq}-{i}"))),
                headers: vec![],
                timestamp: 1_700_000_000_000,
            })
            .collect();
        let opts = EncodeOptions {
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            ..EncodeOptions::default()
        };
        let batch = try_encode_batch(&records, &opts).unwrap().freeze();
        let req = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(5000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(batch))])]);
        let resp: ProduceResponse = self.raw.call(ApiKey::Produce, 8, &req).await;
        let p = &resp.responses[0].partition_responses[0];
        (p.error_code, p.base_offset)
    }
}

#[tokio::test]
async fn duplicates_gaps_epochs_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::with(|b| b.data_dir(dir.path())).await.unwrap();
    broker
        .core()
        .create_topic("idem", 1, Default::default())
        .await
        .unwrap();
    let mut c = Client::connect(broker.kafka_addr()).await;

    let init = c.init_producer_id(None).await;
    assert_eq!(init.error_code, 0);
    let (pid, epoch) = (init.producer_id.0, init.producer_epoch);
    // A fresh data directory hands out ids from 0, one at a time.
    assert_eq!((pid, epoch), (0, 0));
    let other = c.init_producer_id(None).await;
    assert_eq!(
        (other.error_code, other.producer_id.0, other.producer_epoch),
        (0, 1, 0),
        "the next producer gets the next id, never a reused one"
    );

    assert_eq!(c.produce("idem", pid, epoch, 0, 3).await, (0, 0));
    assert_eq!(c.produce("idem", pid, epoch, 3, 2).await, (0, 3));
    // A retry of the first batch: the original offsets, nothing appended.
    assert_eq!(c.produce("idem", pid, epoch, 0, 3).await, (0, 0));
    assert_eq!(c.produce("idem", pid, epoch, 3, 2).await, (0, 3));
    let partition = broker.core().partition("idem", 0).unwrap();
    assert_eq!(partition.log_end_offset(), 5);
    // A gap: OUT_OF_ORDER_SEQUENCE_NUMBER (45).
    assert_eq!(c.produce("idem", pid, epoch, 9, 1).await.0, 45);
    // Unknown producer id not starting at 0: UNKNOWN_PRODUCER_ID (59).
    assert_eq!(c.produce("idem", other.producer_id.0, 0, 4, 1).await.0, 59);

    // KIP-360 epoch bump fences the old epoch: INVALID_PRODUCER_EPOCH (47).
    let bumped = c.init_producer_id(Some((pid, epoch))).await;
    assert_eq!(
        (
            bumped.error_code,
            bumped.producer_id.0,
            bumped.producer_epoch
        ),
        (0, pid, 1)
    );
    assert_eq!(c.produce("idem", pid, 1, 0, 1).await, (0, 5));
    assert_eq!(c.produce("idem", pid, 0, 5, 1).await.0, 47);
    // Asking to bump a stale epoch is refused.
    assert_eq!(c.init_producer_id(Some((pid, 0))).await.error_code, 47);
    drop(c);
    broker.stop().await;

    // After a restart the producer state is still there: retries are still duplicates.
    let broker = TestBroker::with(|b| b.data_dir(dir.path())).await.unwrap();
    let mut c = Client::connect(broker.kafka_addr()).await;
    assert_eq!(c.produce("idem", pid, 1, 0, 1).await, (0, 5));
    assert_eq!(c.produce("idem", pid, 1, 1, 2).await, (0, 6));
    assert_eq!(
        broker.core().partition("idem", 0).unwrap().log_end_offset(),
        8
    );
    let fresh = c.init_producer_id(None).await;
    assert_eq!(
        (fresh.error_code, fresh.producer_id.0, fresh.producer_epoch),
        (0, 2, 0),
        "the id counter survives a restart"
    );
    broker.stop().await;
}

#[tokio::test]
async fn producer_state_is_rebuilt_after_a_crash_without_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::with(|b| b.data_dir(dir.path())).await.unwrap();
    broker
        .core()
        .create_topic("crashy", 1, Default::default())
        .await
        .unwrap();
    let mut c = Client::connect(broker.kafka_addr()).await;
    let pid = c.init_producer_id(None).await.producer_id.0;
    assert_eq!(c.produce("crashy", pid, 0, 0, 2).await, (0, 0));
    drop(c);
    broker.stop().await;
    // Simulate a crash after the writes: no snapshot survives.
    let snapshot = dir.path().join("logs/crashy-0/producer_state.snapshot");
    std::fs::remove_file(&snapshot).unwrap();
    let broker = TestBroker::with(|b| b.data_dir(dir.path())).await.unwrap();
    let mut c = Client::connect(broker.kafka_addr()).await;
    assert_eq!(
        c.produce("crashy", pid, 0, 0, 2).await,
        (0, 0),
        "rebuilt from the log"
    );
    assert_eq!(c.produce("crashy", pid, 0, 2, 1).await, (0, 2));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_idempotent_producer_writes_each_record_once() {
    let broker = TestBroker::start().await.unwrap();
    broker
        .core()
        .create_topic("rd-idem", 2, Default::default())
        .await
        .unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.kafka_bootstrap())
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .create()
        .unwrap();
    let sends = (0..500).map(|i| {
        let producer = producer.clone();
        async move {
            producer
                .send(
                    FutureRecord::to("rd-idem")
                        .key(&format!("key-{}", i % 7))
                        .payload(&format!("{i}")),
                    Duration::from_secs(20),
                )
                .await
                .map_err(|(e, _)| e)
        }
    });
    let results = futures::future::join_all(sends).await;
    let mut offsets: Vec<(i32, i64)> = results
        .into_iter()
        .map(|r| {
            let d = r.unwrap();
            (d.partition, d.offset)
        })
        .collect();
    offsets.sort();
    offsets.dedup();
    assert_eq!(offsets.len(), 500, "every record got its own offset");
    let total: i64 = (0..2)
        .map(|p| {
            broker
                .core()
                .partition("rd-idem", p)
                .unwrap()
                .log_end_offset()
        })
        .sum();
    assert_eq!(total, 500, "no record was appended twice");
    broker.stop().await;
}
