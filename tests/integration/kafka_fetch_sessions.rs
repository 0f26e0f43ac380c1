//! KIP-227 fetch sessions at the wire level, with the kafka-protocol codec over a TCP socket
//! (librdkafka sends only session-less fetches, so it cannot drive them): a full fetch creates
//! a session, an incremental fetch with no changes carries no partitions, an append shows up
//! as exactly that partition, forgotten partitions leave the session, wrong epochs and unknown
//! ids get their errors, epoch -1 closes the session, and a full cache evicts the least
//! recently used session. Also: a librdkafka consumer of 16 partitions (session-less fetches)
//! still gets every record.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::{ApiKey, BrokerId, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use ferry::log::batch::{encode_batch, SimpleRecord};
use ferry::testing::TestBroker;

use crate::common;
use common::kafka_raw::RawKafka;

const V: i16 = 12;
const PARTITIONS: i32 = 16;

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

fn fetch(
    session_id: i32,
    epoch: i32,
    topic: &str,
    offsets: &[(i32, i64)],
    forgotten: &[i32],
    max_wait_ms: i32,
) -> FetchRequest {
    let mut req = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_session_id(session_id)
        .with_session_epoch(epoch);
    if !offsets.is_empty() {
        req = req.with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(
                offsets
                    .iter()
                    .map(|(p, o)| {
                        FetchPartition::default()
                            .with_partition(*p)
                            .with_fetch_offset(*o)
                            .with_partition_max_bytes(1 << 16)
                    })
                    .collect(),
            )]);
    }
    if !forgotten.is_empty() {
        req = req.with_forgotten_topics_data(vec![ForgottenTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(forgotten.to_vec())]);
    }
    req
}

/// (partition, record bytes) of every partition in an answer, sorted.
fn carried(resp: &FetchResponse) -> Vec<(i32, usize)> {
    let mut out: Vec<(i32, usize)> = resp
        .responses
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (p.partition_index, p.records.as_ref().map_or(0, Bytes::len)))
        })
        .collect();
    out.sort();
    out
}

async fn append(broker: &TestBroker, topic: &str, partition: i32, value: &str) {
    let batch = encode_batch(&[SimpleRecord {
        key: None,
        value: Some(Bytes::from(value.to_string())),
        headers: vec![],
        timestamp: 1,
    }]);
    broker
        .core()
        .partition(topic, partition)
        .unwrap()
        .append(batch)
        .await
        .unwrap();
}

async fn scrape(broker: &TestBroker) -> String {
    reqwest::get(format!("{}/metrics", broker.http_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn incremental_fetches_carry_only_what_changed() {
    let broker = TestBroker::start().await.unwrap();
    broker
        .core()
        .create_topic("sessions", PARTITIONS as u32, Default::default())
        .await
        .unwrap();
    for p in 0..PARTITIONS {
        append(&broker, "sessions", p, &format!("first-{p}")).await;
    }
    let mut client = RawKafka::connect(broker.kafka_addr()).await;
    let all_from =
        |offset: i64| -> Vec<(i32, i64)> { (0..PARTITIONS).map(|p| (p, offset)).collect() };

    // A full fetch (epoch 0) answers every partition and creates a session.
    let full: FetchResponse = client
        .call(
            ApiKey::Fetch,
            V,
            &fetch(0, 0, "sessions", &all_from(0), &[], 0),
        )
        .await;
    assert_eq!(full.error_code, 0);
    let id = full.session_id;
    assert_ne!(id, 0, "a full fetch with epoch 0 creates a session");
    let got = carried(&full);
    assert_eq!(got.len(), PARTITIONS as usize);
    assert!(got.iter().all(|(_, bytes)| *bytes > 0), "{got:?}");
    let text = scrape(&broker).await;
    assert!(
        gauge(&text, "ferry_kafka_fetch_sessions").is_some_and(|v| v >= 1.0),
        "the session gauge counts the session"
    );

    // Epoch 1: the client moved every position past the record it got; nothing is new, so
    // the answer (after the long poll) carries no partition at all.
    let quiet: FetchResponse = client
        .call(
            ApiKey::Fetch,
            V,
            &fetch(id, 1, "sessions", &all_from(1), &[], 200),
        )
        .await;
    assert_eq!((quiet.error_code, quiet.session_id), (0, id));
    assert_eq!(carried(&quiet), vec![]);

    // Epoch 2 names no partition; an append to partition 5 wakes the long poll and the
    // answer carries exactly that partition.
    let poll = tokio::spawn(async move {
        let mut c = client;
        let r: FetchResponse = c
            .call(ApiKey::Fetch, V, &fetch(id, 2, "sessions", &[], &[], 5000))
            .await;
        (c, r)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    append(&broker, "sessions", 5, "second-5").await;
    let (mut client, woke) = tokio::time::timeout(Duration::from_secs(4), poll)
        .await
        .expect("the append ended the long poll")
        .unwrap();
    assert_eq!(woke.error_code, 0);
    let got = carried(&woke);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, 5);
    assert!(got[0].1 > 0);
    let p5 = &woke.responses[0].partitions[0];
    assert_eq!(p5.high_watermark, 2);

    // Epoch 3 forgets partition 5: appends to 5 and 6 show only 6.
    append(&broker, "sessions", 5, "third-5").await;
    append(&broker, "sessions", 6, "second-6").await;
    let forgot: FetchResponse = client
        .call(ApiKey::Fetch, V, &fetch(id, 3, "sessions", &[], &[5], 1000))
        .await;
    assert_eq!(forgot.error_code, 0);
    assert_eq!(
        carried(&forgot).iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        vec![6]
    );

    // Adding partition 5 back (epoch 4) answers it at once, whatever changed.
    let added: FetchResponse = client
        .call(
            ApiKey::Fetch,
            V,
            &fetch(id, 4, "sessions", &[(5, 3), (6, 2)], &[], 200),
        )
        .await;
    assert_eq!(
        carried(&added).iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        vec![5]
    );

    // A replayed epoch and an unknown id are refused, with no partitions.
    let replayed: FetchResponse = client
        .call(ApiKey::Fetch, V, &fetch(id, 4, "sessions", &[], &[], 0))
        .await;
    assert_eq!(
        replayed.error_code,
        ResponseError::InvalidFetchSessionEpoch.code()
    );
    assert!(replayed.responses.is_empty());
    let unknown: FetchResponse = client
        .call(
            ApiKey::Fetch,
            V,
            &fetch(id.wrapping_add(1).max(1), 1, "sessions", &[], &[], 0),
        )
        .await;
    assert_eq!(
        unknown.error_code,
        ResponseError::FetchSessionIdNotFound.code()
    );

    // The session survives the refusals and works from another connection.
    let mut other = RawKafka::connect(broker.kafka_addr()).await;
    let still: FetchResponse = other
        .call(ApiKey::Fetch, V, &fetch(id, 5, "sessions", &[], &[], 0))
        .await;
    assert_eq!((still.error_code, still.session_id), (0, id));

    // Epoch -1 closes it: a session-less full answer, and the id is gone.
    let closing: FetchResponse = other
        .call(
            ApiKey::Fetch,
            V,
            &fetch(id, -1, "sessions", &[(0, 0)], &[], 0),
        )
        .await;
    assert_eq!((closing.error_code, closing.session_id), (0, 0));
    assert_eq!(carried(&closing).len(), 1);
    let gone: FetchResponse = other
        .call(ApiKey::Fetch, V, &fetch(id, 6, "sessions", &[], &[], 0))
        .await;
    assert_eq!(
        gone.error_code,
        ResponseError::FetchSessionIdNotFound.code()
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_full_session_cache_evicts_the_least_recently_used() {
    let broker = TestBroker::with(|b| {
        b.configure(|c| c.kafka.max_incremental_fetch_session_cache_slots = 2)
    })
    .await
    .unwrap();
    broker
        .core()
        .create_topic("evict", 1, Default::default())
        .await
        .unwrap();
    let mut client = RawKafka::connect(broker.kafka_addr()).await;
    let open = || fetch(0, 0, "evict", &[(0, 0)], &[], 0);
    let first: FetchResponse = client.call(ApiKey::Fetch, V, &open()).await;
    let second: FetchResponse = client.call(ApiKey::Fetch, V, &open()).await;
    // Using the first makes the second the least recently used one.
    let used: FetchResponse = client
        .call(
            ApiKey::Fetch,
            V,
            &fetch(first.session_id, 1, "evict", &[], &[], 0),
        )
        .await;
    assert_eq!(used.error_code, 0);
    let third: FetchResponse = client.call(ApiKey::Fetch, V, &open()).await;
    assert!([first.session_id, second.session_id, third.session_id]
        .iter()
        .all(|id| *id != 0));
    let evicted: FetchResponse = client
        .call(
            ApiKey::Fetch,
            V,
            &fetch(second.session_id, 1, "evict", &[], &[], 0),
        )
        .await;
    assert_eq!(
        evicted.error_code,
        ResponseError::FetchSessionIdNotFound.code()
    );
    for (id, epoch) in [(first.session_id, 2), (third.session_id, 1)] {
        let kept: FetchResponse = client
            .call(ApiKey::Fetch, V, &fetch(id, epoch, "evict", &[], &[], 0))
            .await;
        assert_eq!(kept.error_code, 0, "session {id} was kept");
    }
    broker.stop().await;
}

/// librdkafka fetches without sessions (session id 0, epoch -1): a consumer of 16 partitions
/// still gets every record, and no session is created for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdkafka_consumer_of_sixteen_partitions_gets_every_record() {
    let broker = TestBroker::start().await.unwrap();
    broker
        .core()
        .create_topic("wide16", PARTITIONS as u32, Default::default())
        .await
        .unwrap();
    for p in 0..PARTITIONS {
        for i in 0..5 {
            append(&broker, "wide16", p, &format!("{p}-{i}")).await;
        }
    }
    let bootstrap = broker.kafka_bootstrap();
    let records = tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "wide16-reader")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        c.subscribe(&["wide16"]).unwrap();
        common::kafka::poll_records(&c, (PARTITIONS * 5) as usize)
    })
    .await
    .unwrap();
    let mut seen: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), (PARTITIONS * 5) as usize);
    for r in &records {
        let text = String::from_utf8_lossy(&r.payload);
        assert_eq!(text, format!("{}-{}", r.partition, r.offset));
    }
    broker.stop().await;
}
