//! Bad and unusual input on the Kafka port, sent as raw bytes: each gets Kafka's error code or a
//! closed connection, never a crash or a hang, and the broker keeps serving other clients.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, MetadataRequest, MetadataResponse, ProduceRequest,
    ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use ferry::log::batch::{encode_batch, SimpleRecord};
use ferry::testing::TestBroker;

use crate::common;

fn request<R: Encodable>(api: ApiKey, version: i16, correlation_id: i32, body: &R) -> Bytes {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("wire-test")));
    let hv = api.request_header_version(version);
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    header.encode(&mut buf, hv).unwrap();
    body.encode(&mut buf, version).unwrap();
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf.freeze()
}

async fn read_response(stream: &mut TcpStream) -> Option<Bytes> {
    let size = tokio::time::timeout(Duration::from_secs(10), stream.read_i32())
        .await
        .ok()?
        .ok()?;
    let mut buf = vec![0u8; size as usize];
    stream.read_exact(&mut buf).await.ok()?;
    Some(Bytes::from(buf))
}

async fn assert_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("connection neither answered nor closed");
    assert!(matches!(n, Ok(0) | Err(_)), "expected a close, got {n:?}");
}

async fn still_serves(addr: std::net::SocketAddr) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = request(
        ApiKey::Metadata,
        9,
        1,
        &MetadataRequest::default().with_topics(Some(vec![])),
    );
    s.write_all(&req).await.unwrap();
    let mut resp = read_response(&mut s).await.expect("metadata answer");
    let _ = ResponseHeader::decode(&mut resp, 1).unwrap();
    let md = MetadataResponse::decode(&mut resp, 9).unwrap();
    assert_eq!(md.brokers.len(), 1);
}

#[tokio::test]
async fn hostile_frames_close_the_connection_and_nothing_else() {
    let broker = TestBroker::start().await.unwrap();
    let addr = broker.kafka_addr();

    // A 2 GiB length prefix is refused before any body is read or allocated.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&i32::MAX.to_be_bytes()).await.unwrap();
    assert_closed(&mut s).await;

    // A negative length.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&(-5i32).to_be_bytes()).await.unwrap();
    assert_closed(&mut s).await;

    // An unknown api key.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0, 0, 0, 10, 0x7f, 0x00, 0, 0, 0, 0, 0, 1, 0xff, 0xff])
        .await
        .unwrap();
    assert_closed(&mut s).await;

    // A Metadata v1 request whose topic array claims 2^31-1 entries (an allocation bomb in the
    // unpatched codec).
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut frame = BytesMut::new();
    frame.put_i16(ApiKey::Metadata as i16);
    frame.put_i16(1);
    frame.put_i32(7);
    frame.put_i16(-1);
    frame.put_i32(i32::MAX);
    let mut framed = BytesMut::new();
    framed.put_i32(frame.len() as i32);
    framed.put_slice(&frame);
    s.write_all(&framed).await.unwrap();
    assert_closed(&mut s).await;

    // A truncated frame followed by EOF.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0, 0, 0, 100, 0, 3]).await.unwrap();
    s.shutdown().await.unwrap();
    assert_closed(&mut s).await;

    still_serves(addr).await;
    broker.stop().await;
}

#[tokio::test]
async fn api_versions_with_a_future_version_gets_kip_511_answer() {
    let broker = TestBroker::start().await.unwrap();
    let mut s = TcpStream::connect(broker.kafka_addr()).await.unwrap();
    // ApiVersions v99 with a header v2 and an empty body we would not understand anyway.
    let mut frame = BytesMut::new();
    frame.put_i16(ApiKey::ApiVersions as i16);
    frame.put_i16(99);
    frame.put_i32(42);
    frame.put_i16(-1);
    frame.put_u8(0);
    let mut framed = BytesMut::new();
    framed.put_i32(frame.len() as i32);
    framed.put_slice(&frame);
    s.write_all(&framed).await.unwrap();
    let mut resp = read_response(&mut s).await.expect("an answer");
    let header = ResponseHeader::decode(&mut resp, 0).unwrap();
    assert_eq!(header.correlation_id, 42);
    let body = ApiVersionsResponse::decode(&mut resp, 0).unwrap();
    assert_eq!(body.error_code, 35);
    let entry = body
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::ApiVersions as i16)
        .unwrap();
    assert_eq!(entry.min_version, 0);
    assert!(entry.max_version >= 3);
    broker.stop().await;
}

fn produce(topic: &str, records: Bytes, acks: i16) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])])
}

async fn produce_error(s: &mut TcpStream, topic: &str, records: Bytes, correlation_id: i32) -> i16 {
    s.write_all(&request(
        ApiKey::Produce,
        8,
        correlation_id,
        &produce(topic, records, -1),
    ))
    .await
    .unwrap();
    let mut resp = read_response(s).await.expect("produce answer");
    let header = ResponseHeader::decode(&mut resp, 0).unwrap();
    assert_eq!(header.correlation_id, correlation_id);
    let body = ProduceResponse::decode(&mut resp, 8).unwrap();
    body.responses[0].partition_responses[0].error_code
}

#[tokio::test]
async fn bad_batches_get_kafka_error_codes() {
    let broker = TestBroker::with(|b| b.configure(|c| c.kafka.auto_create_topics = false))
        .await
        .unwrap();
    broker
        .core()
        .create_topic("t", 1, Default::default())
        .await
        .unwrap();
    let good = encode_batch(&[SimpleRecord {
        key: Some(Bytes::from_static(b"k")),
        value: Some(Bytes::from_static(b"value")),
        headers: vec![],
        timestamp: 1_700_000_000_000,
    }])
    .freeze();
    let mut s = TcpStream::connect(broker.kafka_addr()).await.unwrap();

    assert_eq!(produce_error(&mut s, "t", good.clone(), 1).await, 0);

    // A flipped byte inside the CRC-covered region: CORRUPT_MESSAGE, nothing appended.
    let mut corrupt = BytesMut::from(&good[..]);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    assert_eq!(produce_error(&mut s, "t", corrupt.freeze(), 2).await, 2);

    // Truncated batch.
    assert_eq!(
        produce_error(&mut s, "t", good.slice(..good.len() - 3), 3).await,
        2
    );

    // Unknown topic with auto-create off: UNKNOWN_TOPIC_OR_PARTITION.
    assert_eq!(produce_error(&mut s, "nope", good.clone(), 4).await, 3);

    // Only the one good batch made it into the log.
    assert_eq!(broker.core().partition("t", 0).unwrap().log_end_offset(), 1);
    broker.stop().await;
}

#[tokio::test]
async fn list_offsets_max_timestamp_and_legacy_produce() {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

    let broker = TestBroker::start().await.unwrap();
    broker
        .core()
        .create_topic("ts", 1, Default::default())
        .await
        .unwrap();
    let partition = broker.core().partition("ts", 0).unwrap();
    for ts in [1_000i64, 5_000, 3_000] {
        partition
            .append(encode_batch(&[SimpleRecord {
                key: None,
                value: Some(Bytes::from_static(b"v")),
                headers: vec![],
                timestamp: ts,
            }]))
            .await
            .unwrap();
    }
    let mut s = TcpStream::connect(broker.kafka_addr()).await.unwrap();
    let query = |timestamp: i64| {
        ListOffsetsRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("ts")))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_timestamp(timestamp)])])
    };
    for (ts, expected) in [
        (-3i64, (1i64, 5_000i64)),
        (-2, (0, -1)),
        (-1, (3, -1)),
        (2_000, (1, 5_000)),
    ] {
        s.write_all(&request(ApiKey::ListOffsets, 7, 9, &query(ts)))
            .await
            .unwrap();
        let mut resp = read_response(&mut s).await.unwrap();
        ResponseHeader::decode(&mut resp, ApiKey::ListOffsets.response_header_version(7)).unwrap();
        let body = ListOffsetsResponse::decode(&mut resp, 7).unwrap();
        let p = &body.topics[0].partitions[0];
        assert_eq!(
            (p.error_code, p.offset, p.timestamp),
            (0, expected.0, expected.1),
            "timestamp {ts}"
        );
    }

    // Produce v2 can only carry the old message formats: UNSUPPORTED_VERSION per partition.
    let v3 = produce("ts", Bytes::from_static(b"old message set"), 1);
    let mut body = BytesMut::new();
    v3.encode(&mut body, 3).unwrap();
    let body = body.split_off(2); // drop the null transactional id: v2's layout
    let mut frame = BytesMut::new();
    frame.put_i16(ApiKey::Produce as i16);
    frame.put_i16(2);
    frame.put_i32(77);
    frame.put_i16(-1);
    frame.put_slice(&body);
    let mut framed = BytesMut::new();
    framed.put_i32(frame.len() as i32);
    framed.put_slice(&frame);
    s.write_all(&framed).await.unwrap();
    let mut resp = read_response(&mut s).await.expect("an answer");
    use bytes::Buf;
    assert_eq!(resp.get_i32(), 77);
    assert_eq!(resp.get_i32(), 1, "one topic");
    let name_len = resp.get_i16() as usize;
    assert_eq!(&resp[..name_len], b"ts");
    resp.advance(name_len);
    assert_eq!(resp.get_i32(), 1, "one partition");
    assert_eq!(resp.get_i32(), 0, "partition index");
    assert_eq!(resp.get_i16(), 35, "UNSUPPORTED_VERSION");
    assert_eq!(partition.log_end_offset(), 3, "nothing appended");
    broker.stop().await;
}

async fn advertised_broker(connect: std::net::SocketAddr) -> (String, i32) {
    let mut s = TcpStream::connect(connect).await.unwrap();
    let req = request(
        ApiKey::Metadata,
        12,
        3,
        &MetadataRequest::default().with_topics(Some(vec![])),
    );
    s.write_all(&req).await.unwrap();
    let mut resp = read_response(&mut s).await.expect("metadata answer");
    ResponseHeader::decode(&mut resp, ApiKey::Metadata.response_header_version(12)).unwrap();
    let md = MetadataResponse::decode(&mut resp, 12).unwrap();
    (md.brokers[0].host.to_string(), md.brokers[0].port)
}

#[tokio::test]
async fn metadata_advertises_a_reachable_address() {
    // Explicit --kafka-advertised wins.
    let broker = TestBroker::with(|b| {
        b.configure(|c| c.kafka_advertised = Some("kafka.example:19092".into()))
    })
    .await
    .unwrap();
    assert_eq!(
        advertised_broker(broker.kafka_addr()).await,
        ("kafka.example".to_string(), 19092)
    );
    broker.stop().await;

    // A wildcard listener advertises the address the client actually reached.
    let broker = TestBroker::with(|b| b.kafka_listen("0.0.0.0:0"))
        .await
        .unwrap();
    let port = broker.kafka_addr().port();
    let via_loopback = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(
        advertised_broker(via_loopback).await,
        ("127.0.0.1".to_string(), i32::from(port))
    );
    broker.stop().await;

    // A specific listener advertises itself.
    let broker = TestBroker::start().await.unwrap();
    let addr = broker.kafka_addr();
    assert_eq!(
        advertised_broker(addr).await,
        (addr.ip().to_string(), i32::from(addr.port()))
    );
    broker.stop().await;
}

#[tokio::test]
async fn held_fetches_do_not_hold_up_shutdown_or_outlive_their_client() {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::FetchRequest;

    let broker = TestBroker::start().await.unwrap();
    broker
        .core()
        .create_topic("idle", 1, Default::default())
        .await
        .unwrap();
    let long_poll = FetchRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_max_wait_ms(20_000)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str("idle")))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);

    // A client that sends a long poll and goes away.
    let mut gone = TcpStream::connect(broker.kafka_addr()).await.unwrap();
    gone.write_all(&request(ApiKey::Fetch, 11, 1, &long_poll))
        .await
        .unwrap();
    drop(gone);

    // A client still waiting on its long poll when the broker shuts down gets its (empty)
    // answer and the shutdown is not held for the 20 s wait.
    let mut waiting = TcpStream::connect(broker.kafka_addr()).await.unwrap();
    waiting
        .write_all(&request(ApiKey::Fetch, 11, 2, &long_poll))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Under the 5 s grace after which connections are aborted rather than answered.
    let stopped = tokio::time::timeout(Duration::from_secs(4), broker.stop()).await;
    assert!(stopped.is_ok(), "shutdown waited for a 20 s long poll");
    let mut resp = read_response(&mut waiting)
        .await
        .expect("the held fetch is answered");
    ResponseHeader::decode(&mut resp, ApiKey::Fetch.response_header_version(11)).unwrap();
    let body = kafka_protocol::messages::FetchResponse::decode(&mut resp, 11).unwrap();
    assert_eq!(body.responses[0].partitions[0].error_code, 0);
}

/// `kafka.fetch_max_bytes` (Kafka's `fetch.max.bytes`) bounds a response whatever the client
/// asks, so a client asking for huge fetches cannot make the broker buffer them; the first
/// batch still comes whole, so the consumer progresses.
#[tokio::test]
async fn fetch_responses_are_capped_by_fetch_max_bytes() {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{FetchRequest, FetchResponse};

    const CAP: usize = 100 * 1024;
    let broker = TestBroker::with(|b| b.configure(|c| c.kafka.fetch_max_bytes = CAP))
        .await
        .unwrap();
    broker
        .core()
        .create_topic("wide", 4, Default::default())
        .await
        .unwrap();
    let batch_value = Bytes::from(vec![7u8; 40 * 1024]);
    for p in 0..4 {
        let handle = broker.core().partition("wide", p).unwrap();
        for _ in 0..3 {
            let batch = encode_batch(&[SimpleRecord {
                key: None,
                value: Some(batch_value.clone()),
                headers: vec![],
                timestamp: 1,
            }]);
            handle.append(batch).await.unwrap();
        }
    }
    let fetch = |max_bytes: i32| {
        FetchRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_max_wait_ms(0)
            .with_max_bytes(max_bytes)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("wide")))
                .with_partitions(
                    (0..4)
                        .map(|p| {
                            FetchPartition::default()
                                .with_partition(p)
                                .with_fetch_offset(0)
                                .with_partition_max_bytes(64 << 20)
                        })
                        .collect(),
                )])
    };
    let mut client = common::kafka_raw::RawKafka::connect(broker.kafka_addr()).await;
    let record_bytes = |r: &FetchResponse| -> usize {
        r.responses[0]
            .partitions
            .iter()
            .map(|p| p.records.as_ref().map_or(0, |b| b.len()))
            .sum()
    };
    // The client asks for 1 GiB: it gets at most the cap plus one batch.
    let big: FetchResponse = client.call(ApiKey::Fetch, 11, &fetch(1 << 30)).await;
    let got = record_bytes(&big);
    assert!(got > 0, "nothing fetched");
    assert!(got <= CAP + 41 * 1024, "{got} bytes for a cap of {CAP}");
    // A client asking for less than the cap is not given more.
    let small: FetchResponse = client.call(ApiKey::Fetch, 11, &fetch(1)).await;
    assert!(record_bytes(&small) <= 41 * 1024, "the first batch only");
    broker.stop().await;
}
