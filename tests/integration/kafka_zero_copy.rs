//! Zero-copy Kafka fetch (`kafka.zero_copy_fetch`): record bytes sent with `sendfile(2)` from
//! the segment files on plaintext listeners, copied on TLS ones. librdkafka reads every record
//! of many partitions whose fetches cross segment boundaries, byte for byte the same with zero
//! copy on and off; raw fetches over TLS and plaintext (both length-prefix encodings) carry the
//! same bytes as the log; `read_committed` still drops an aborted transaction; and retention
//! deleting the segments of a fetch still being sent neither breaks the response nor the
//! broker.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, BrokerId, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use ferry::log::batch::{decode_next_batch, encode_batch, SimpleRecord};
use ferry::testing::TestBroker;

use crate::common;
use common::kafka_raw::RawKafka;

const TIMEOUT: Duration = Duration::from_secs(30);

async fn broker(zero_copy: bool) -> TestBroker {
    TestBroker::with(move |b| b.configure(move |c| c.kafka.zero_copy_fetch = zero_copy))
        .await
        .unwrap()
}

fn small_segments(bytes: usize) -> BTreeMap<String, String> {
    BTreeMap::from([("segment.bytes".to_string(), bytes.to_string())])
}

/// A record value that differs by partition, index and length (up to ~2 KiB).
fn value(partition: i32, i: usize) -> Vec<u8> {
    let mut v = format!("p{partition}-r{i}-").into_bytes();
    let len = 200 + (i * 397 + partition as usize * 131) % 1800;
    v.extend((0..len).map(|k| (k as u8).wrapping_mul(31).wrapping_add(i as u8)));
    v
}

/// `ferry_kafka_fetch_bytes_total{path}` as `/metrics` shows it (process-wide: other tests
/// running beside this one only ever add to it).
async fn fetch_bytes(broker: &TestBroker, path: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", broker.http_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let label = format!("path=\"{path}\"");
    text.lines()
        .find(|l| l.starts_with("ferry_kafka_fetch_bytes_total") && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Produces `per_partition` records to each partition, consumes them all back from offset 0
/// with one consumer assigned every partition, and checks each value and offset.
fn round_trip(bootstrap: &str, topic: &str, partitions: i32, per_partition: usize) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        // Batches well under a segment, so every partition has many segments.
        .set("batch.size", "8000")
        .set("message.timeout.ms", "20000")
        .create()
        .unwrap();
    for i in 0..per_partition {
        for p in 0..partitions {
            let v = value(p, i);
            loop {
                match producer.send(BaseRecord::<(), [u8]>::to(topic).partition(p).payload(&v)) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        producer.poll(Duration::from_millis(10));
                    }
                    Err((e, _)) => panic!("produce: {e}"),
                }
            }
        }
    }
    producer.flush(TIMEOUT).unwrap();

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "zero-copy-reader")
        .set("enable.auto.commit", "false")
        // Small enough that fetches stop inside segments, large enough to cross them.
        .set("max.partition.fetch.bytes", "100000")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut next = vec![0usize; partitions as usize];
    let deadline = Instant::now() + TIMEOUT;
    while next.iter().any(|n| *n < per_partition) {
        assert!(Instant::now() < deadline, "consumed so far: {next:?}");
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let p = m.partition();
                let i = next[p as usize];
                assert_eq!(m.offset(), i as i64, "partition {p}");
                assert_eq!(
                    m.payload().unwrap_or_default(),
                    value(p, i).as_slice(),
                    "partition {p} offset {i}"
                );
                next[p as usize] += 1;
            }
            Some(Err(e)) => panic!("consume: {e}"),
            None => {}
        }
    }
}

async fn rdkafka_round_trip(zero_copy: bool) {
    let broker = broker(zero_copy).await;
    let topic = if zero_copy { "zc-on" } else { "zc-off" };
    let partitions = 6;
    let per_partition = 300;
    broker
        .core()
        .create_topic(topic, partitions as u32, small_segments(32 * 1024))
        .await
        .unwrap();
    let path = if zero_copy { "sendfile" } else { "copy" };
    let before = fetch_bytes(&broker, path).await;
    let bootstrap = broker.kafka_bootstrap();
    let t = topic.to_string();
    tokio::task::spawn_blocking(move || round_trip(&bootstrap, &t, partitions, per_partition))
        .await
        .unwrap();
    let mut payload = 0;
    for p in 0..partitions {
        let handle = broker.core().partition(topic, p).unwrap();
        assert!(
            handle.segment_count() > 5,
            "partition {p} should span segments"
        );
        payload += (0..per_partition).map(|i| value(p, i).len()).sum::<usize>();
    }
    let served = fetch_bytes(&broker, path).await - before;
    assert!(
        served >= payload as f64,
        "{path} served {served} bytes for {payload} bytes of values"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdkafka_reads_every_record_across_segments_with_zero_copy() {
    rdkafka_round_trip(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdkafka_reads_every_record_across_segments_with_zero_copy_off() {
    rdkafka_round_trip(false).await;
}

/// Appends `batches` batches of `per_batch` records of `len` bytes to `topic`/0.
async fn append(broker: &TestBroker, topic: &str, batches: usize, per_batch: usize, len: usize) {
    let handle = broker.core().partition(topic, 0).unwrap();
    for b in 0..batches {
        let records: Vec<_> = (0..per_batch)
            .map(|r| SimpleRecord {
                value: Some(Bytes::from(vec![(b * per_batch + r) as u8; len])),
                timestamp: 1_000,
                ..Default::default()
            })
            .collect();
        handle.append(encode_batch(&records)).await.unwrap();
    }
}

fn fetch_request(topic: &str, offset: i64, max_bytes: i32, partition_max: i32) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(max_bytes)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(partition_max)])])
}

/// The one partition's (error code, records) of a fetch answer.
fn records_of(response: &FetchResponse) -> (i16, Bytes) {
    let p = &response.responses[0].partitions[0];
    (p.error_code, p.records.clone().unwrap_or_default())
}

fn certs(dir: &std::path::Path) -> ferry::tls::generate::Generated {
    ferry::tls::generate::generate(&ferry::tls::generate::CertRequest {
        dns: vec!["localhost".into()],
        ips: vec!["127.0.0.1".parse().unwrap()],
        clients: vec![],
        out: dir.to_path_buf(),
        days: 2,
        force: false,
    })
    .unwrap()
}

async fn tls_client(
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    #[allow(deprecated)]
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap()
}

/// The same fetches over plaintext (sendfile; v4, v11 with an `i32` records length, v12 with a
/// varint one) and over TLS (copied) carry exactly the bytes the log holds, the per-partition
/// and whole-response limits cut them at the same batch, and the TLS answer went the copy way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_sendfile_and_tls_copy_serve_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let g = certs(dir.path());
    let ca = g.ca_cert.clone();
    let broker = TestBroker::with(move |b| {
        b.configure(move |c| {
            c.kafka_tls_listen = "127.0.0.1:0".into();
            c.tls.cert_file = g.server_cert.display().to_string();
            c.tls.key_file = g.server_key.display().to_string();
        })
    })
    .await
    .unwrap();
    let topic = "zc-tls";
    broker
        .core()
        .create_topic(topic, 1, small_segments(20 * 1024))
        .await
        .unwrap();
    append(&broker, topic, 60, 4, 900).await;
    let handle = broker.core().partition(topic, 0).unwrap();
    assert!(handle.segment_count() > 5);

    let mut plain = RawKafka::connect(broker.kafka_addr()).await;
    let tls_addr = broker.kafka_tls_addr().unwrap();
    let mut tls = RawKafka::over(tls_client(tls_addr, &ca).await);
    for (offset, max_bytes, partition_max) in [
        (0, 1 << 24, 1 << 24),
        (37, 1 << 24, 50_000),
        (100, 30_000, 1 << 20),
        (5, 1, 1),
    ] {
        let expected = handle
            .read(offset, (max_bytes.min(partition_max) as usize).max(1))
            .unwrap()
            .bytes;
        assert!(!expected.is_empty());
        let req = fetch_request(topic, offset, max_bytes, partition_max);
        for v in [4, 11, 12] {
            let r: FetchResponse = plain.call(ApiKey::Fetch, v, &req).await;
            assert_eq!(
                records_of(&r),
                (0, expected.clone()),
                "plaintext v{v} offset {offset}"
            );
        }
        let copied_before = fetch_bytes(&broker, "copy").await;
        let r: FetchResponse = tls.call(ApiKey::Fetch, 12, &req).await;
        assert_eq!(records_of(&r), (0, expected.clone()), "TLS offset {offset}");
        let copied = fetch_bytes(&broker, "copy").await - copied_before;
        assert!(
            copied >= expected.len() as f64,
            "copy path counted {copied}"
        );
    }
    broker.stop().await;
}

/// A `read_committed` consumer never sees an aborted transaction's records, which the broker
/// sends as stored (by sendfile) alongside the aborted list; `read_uncommitted` sees them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_committed_drops_an_aborted_transaction_sent_by_sendfile() {
    let broker = broker(true).await;
    let topic = "zc-txn";
    broker
        .core()
        .create_topic(topic, 1, small_segments(8 * 1024))
        .await
        .unwrap();
    let bootstrap = broker.kafka_bootstrap();
    let t = topic.to_string();
    let (committed, uncommitted) = tokio::task::spawn_blocking(move || {
        let p: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("transactional.id", "zc-txn-1")
            .set("linger.ms", "0")
            .create()
            .unwrap();
        p.init_transactions(TIMEOUT).unwrap();
        let send = |prefix: &str| {
            for i in 0..40 {
                let v = format!("{prefix}{i:03}-{}", "x".repeat(400));
                p.send(BaseRecord::<(), str>::to(&t).partition(0).payload(&v))
                    .map_err(|(e, _)| e)
                    .unwrap();
            }
            p.flush(TIMEOUT).unwrap();
        };
        p.begin_transaction().unwrap();
        send("aborted-");
        p.abort_transaction(TIMEOUT).unwrap();
        p.begin_transaction().unwrap();
        send("committed-");
        p.commit_transaction(TIMEOUT).unwrap();
        let read = |isolation: &str, want: usize| {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", "zc-txn-reader")
                .set("enable.auto.commit", "false")
                .set("isolation.level", isolation)
                .create()
                .unwrap();
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&t, 0, Offset::Beginning).unwrap();
            c.assign(&tpl).unwrap();
            let mut out = Vec::new();
            let deadline = Instant::now() + TIMEOUT;
            while out.len() < want {
                assert!(Instant::now() < deadline, "{isolation} read {}", out.len());
                if let Some(m) = c.poll(Duration::from_millis(100)) {
                    let m = m.unwrap();
                    out.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
                }
            }
            // Anything more (an aborted record served late) would show up now.
            if let Some(Ok(m)) = c.poll(Duration::from_millis(500)) {
                out.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
            }
            out
        };
        (read("read_committed", 40), read("read_uncommitted", 80))
    })
    .await
    .unwrap();
    assert_eq!(committed.len(), 40, "{committed:?}");
    assert!(committed.iter().all(|v| v.starts_with("committed-")));
    assert_eq!(uncommitted.len(), 80);
    assert!(uncommitted[..40].iter().all(|v| v.starts_with("aborted-")));
    assert!(broker.core().partition(topic, 0).unwrap().segment_count() > 2);
    broker.stop().await;
}

/// Retention deletes the closed segments while a 25 MiB fetch over them is still being sent
/// (the client is not reading, so the broker's sendfile waits on a full socket): the answer
/// arrives whole and correct from the files it holds open, the broker keeps serving, and the
/// client, told its offset is gone, resumes from the new log start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_during_a_sendfile_fetch_breaks_nothing() {
    let broker = broker(true).await;
    let topic = "zc-retention";
    let mut config = small_segments(256 * 1024);
    config.insert("retention.bytes".into(), "1".into());
    broker.core().create_topic(topic, 1, config).await.unwrap();
    // 400 batches of 16 x 4000 bytes: ~25 MiB (more than loopback socket buffers hold) in
    // ~100 segments.
    append(&broker, topic, 400, 16, 4000).await;
    let handle = broker.core().partition(topic, 0).unwrap();
    let segments = handle.segment_count();
    assert!(segments > 80, "{segments} segments");
    let end = handle.log_end_offset();

    let mut kafka = RawKafka::connect(broker.kafka_addr()).await;
    let req = fetch_request(topic, 0, 1 << 26, 1 << 26);
    kafka.send(ApiKey::Fetch, 12, &req).await.unwrap();
    // Let the broker fill the socket buffers and block in sendfile, then delete under it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deleted = broker.core().enforce_retention();
    assert!(deleted > segments / 2, "{deleted} of {segments} deleted");
    assert!(handle.log_start_offset() > 0);

    let r: FetchResponse = kafka.try_recv(ApiKey::Fetch, 12).await.unwrap();
    let (code, mut records) = records_of(&r);
    assert_eq!(code, 0);
    let mut next = 0i64;
    while !records.is_empty() {
        // Decoding checks each batch's framing; the values say which records they are.
        for rec in decode_next_batch(&mut records).unwrap() {
            assert_eq!(rec.offset, next);
            let value = rec.record.value.unwrap();
            assert_eq!(value.len(), 4000);
            assert!(value.iter().all(|b| *b == next as u8), "offset {next}");
            next += 1;
        }
    }
    assert_eq!(next, end, "the answer holds every record");

    // The same connection goes on: offset 0 is gone now, the new start serves what comes next.
    let r: FetchResponse = kafka.call(ApiKey::Fetch, 12, &req).await;
    assert_eq!(records_of(&r).0, 1, "OFFSET_OUT_OF_RANGE expected");
    let start = handle.log_start_offset();
    append(&broker, topic, 2, 16, 4000).await;
    let r: FetchResponse = kafka
        .call(
            ApiKey::Fetch,
            12,
            &fetch_request(topic, start, 1 << 20, 1 << 20),
        )
        .await;
    let (code, records) = records_of(&r);
    assert_eq!(code, 0);
    assert!(!records.is_empty());
    broker.stop().await;
}
