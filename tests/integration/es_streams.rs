//! Event-store streams through the Rust SDK against an embedded broker over real QUIC, and
//! read back with a real Kafka consumer (rdkafka): expected-revision appends under
//! concurrency (issue 15 test 1), the expected-revision table over live, soft-deleted and
//! tombstoned streams (test 2), idempotent resends by event id, the CloudEvents headers Kafka
//! consumers see, and plain Kafka produce refused unless the topic allows it.

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use ferry::client::native::*;
use ferry::testing::TestBroker;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use common::kafka::{poll_records, Consumed};

async fn store(broker: &TestBroker, topic: &str) -> EventStoreClient {
    let conn = common::native::connect_as(broker, "guest", "guest").await;
    let client = EventStoreClient::new(conn);
    client.create_store(topic, 1).await.expect("create store");
    client
}

fn event(kind: &str, n: u64) -> EventData {
    EventData::json(kind, &serde_json::json!({ "n": n })).expect("json")
}

/// Every record of partition 0 of `topic`, read with rdkafka from the start.
async fn read_all(broker: &TestBroker, topic: &str, count: usize) -> Vec<Consumed> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.kafka_bootstrap())
        .set("group.id", "es-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("tpl");
    consumer.assign(&tpl).expect("assign");
    tokio::task::spawn_blocking(move || poll_records(&consumer, count))
        .await
        .expect("poll")
}

fn header<'a>(record: &'a Consumed, name: &str) -> Option<&'a str> {
    record
        .headers
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

fn revision(record: &Consumed) -> u64 {
    header(record, "ce_streamrevision")
        .and_then(|r| r.parse().ok())
        .expect("revision header")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_exact_writers_one_wins_each_round() {
    const ROUNDS: u64 = 1000;
    let broker = TestBroker::start().await.expect("broker");
    let a = store(&broker, "es.race").await;
    // The second writer has its own QUIC connection, so the two appends really race.
    let b = EventStoreClient::new(common::native::connect_as(&broker, "guest", "guest").await);
    a.append(
        "es.race",
        "order-1",
        ExpectedRevision::NoStream,
        vec![event("created", 0)],
    )
    .await
    .expect("first event");
    let mut wins = [0u64; 2];
    for n in 0..ROUNDS {
        let (ra, rb) = tokio::join!(
            a.append(
                "es.race",
                "order-1",
                ExpectedRevision::Exact(n),
                vec![event("a", n)]
            ),
            b.append(
                "es.race",
                "order-1",
                ExpectedRevision::Exact(n),
                vec![event("b", n)]
            ),
        );
        let (won, lost, winner) = match (ra, rb) {
            (Ok(w), Err(l)) => (w, l, 0),
            (Err(l), Ok(w)) => (w, l, 1),
            other => panic!("round {n}: exactly one writer must win, got {other:?}"),
        };
        wins[winner] += 1;
        assert_eq!(won.next_expected_revision, n + 1, "round {n}");
        match lost {
            AppendError::WrongExpectedVersion { current, expected } => {
                assert_eq!(current, Some(n + 1), "round {n}: the loser sees the winner");
                assert_eq!(expected, ExpectedRevision::Exact(n));
            }
            other => panic!("round {n}: loser got {other:?}"),
        }
    }
    let info = a.stream_info("es.race", "order-1").await.expect("info");
    assert_eq!(info.last_revision, Some(ROUNDS));
    // The log holds revisions 0..=ROUNDS once each, in order: no gap, no duplicate.
    let records = read_all(&broker, "es.race", ROUNDS as usize + 1).await;
    let revisions: Vec<u64> = records.iter().map(revision).collect();
    assert_eq!(revisions, (0..=ROUNDS).collect::<Vec<_>>());
    assert!(records
        .iter()
        .all(|r| r.key.as_deref() == Some(&b"order-1"[..])));
    println!("wins: a {} b {}", wins[0], wins[1]);
    broker.stop().await;
}

/// Ok(the new revision), or Err(the current revision a WrongExpectedVersion names).
type Want = Result<u64, Option<u64>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expected_revision_table_over_live_soft_deleted_and_tombstoned_streams() {
    let broker = TestBroker::start().await.expect("broker");
    let es = store(&broker, "es.table").await;
    let t = "es.table";
    use ExpectedRevision::*;
    // live: revisions 0 and 1; soft: revision 0 then soft-deleted; hard: tombstoned.
    es.append(t, "live", NoStream, vec![event("e", 0), event("e", 1)])
        .await
        .expect("live");
    es.append(t, "soft", Any, vec![event("e", 0)])
        .await
        .expect("soft");
    es.delete_stream(t, "soft", Exact(0), false)
        .await
        .expect("soft delete");
    es.append(t, "hard", Any, vec![event("e", 0)])
        .await
        .expect("hard");
    es.delete_stream(t, "hard", Any, true)
        .await
        .expect("hard delete");

    // (stream, expected, Ok(new revision) | Err(current) for WrongExpectedVersion); every
    // case runs on a fresh copy of the state, so each is tried against the state above.
    let cases: Vec<(&str, ExpectedRevision, Want)> = vec![
        ("never", Any, Ok(0)),
        ("never", NoStream, Ok(0)),
        ("never", StreamExists, Err(None)),
        ("never", Exact(0), Err(None)),
        ("live", Any, Ok(2)),
        ("live", NoStream, Err(Some(1))),
        ("live", StreamExists, Ok(2)),
        ("live", Exact(1), Ok(2)),
        ("live", Exact(0), Err(Some(1))),
        ("live", Exact(5), Err(Some(1))),
        // A soft-deleted stream continues at its last revision + 1.
        ("soft", Any, Ok(1)),
        ("soft", NoStream, Ok(1)),
        ("soft", StreamExists, Err(None)),
        ("soft", Exact(0), Ok(1)),
        ("soft", Exact(3), Err(None)),
    ];
    let mut copy = 0;
    for (stream, expected, want) in cases {
        // Re-create the state under another topic for each case that writes.
        copy += 1;
        let topic = format!("es.table-{copy}");
        es.create_store(&topic, 1).await.expect("store");
        es.append(&topic, "live", NoStream, vec![event("e", 0), event("e", 1)])
            .await
            .expect("live");
        es.append(&topic, "soft", Any, vec![event("e", 0)])
            .await
            .expect("soft");
        es.delete_stream(&topic, "soft", Exact(0), false)
            .await
            .expect("soft delete");
        let got = es
            .append(&topic, stream, expected, vec![event("x", 9)])
            .await;
        match (got, want) {
            (Ok(r), Ok(revision)) => {
                assert_eq!(r.next_expected_revision, revision, "{stream} {expected:?}");
                assert!(!r.duplicate);
            }
            (
                Err(AppendError::WrongExpectedVersion {
                    current,
                    expected: e,
                }),
                Err(want),
            ) => {
                assert_eq!(current, want, "{stream} {expected:?}");
                assert_eq!(e, expected);
            }
            (got, want) => panic!("{stream} {expected:?}: got {got:?}, want {want:?}"),
        }
    }
    // Tombstoned: every expectation is refused with STREAM_DELETED, and so is a deletion.
    for expected in [Any, NoStream, StreamExists, Exact(0)] {
        match es.append(t, "hard", expected, vec![event("x", 0)]).await {
            Err(AppendError::Client(e)) => {
                assert_eq!(e.code(), Some(ErrorCode::StreamDeleted), "{expected:?}")
            }
            other => panic!("tombstoned {expected:?}: {other:?}"),
        }
    }
    let hard = es.stream_info(t, "hard").await.expect("info");
    assert!(hard.tombstoned);
    let soft = es.stream_info(t, "soft").await.expect("info");
    assert!(soft.soft_deleted);
    assert_eq!(soft.last_revision, Some(0));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resending_the_same_event_ids_returns_the_original_result_and_writes_nothing() {
    let broker = TestBroker::start().await.expect("broker");
    let es = store(&broker, "es.idem").await;
    let events = vec![event("a", 0).with_id("id-1"), event("b", 1).with_id("id-2")];
    let first = es
        .append("es.idem", "s", ExpectedRevision::NoStream, events.clone())
        .await
        .expect("append");
    assert_eq!(first.next_expected_revision, 1);
    // The same append again, even with an expectation that no longer holds.
    let again = es
        .append("es.idem", "s", ExpectedRevision::NoStream, events.clone())
        .await
        .expect("resend");
    assert!(again.duplicate);
    assert_eq!(
        (
            again.next_expected_revision,
            again.position,
            again.partition
        ),
        (
            first.next_expected_revision,
            first.position,
            first.partition
        )
    );
    // Reusing an id for other events is refused, not silently merged.
    let reused = es
        .append(
            "es.idem",
            "s",
            ExpectedRevision::Any,
            vec![event("a", 0).with_id("id-1")],
        )
        .await;
    match reused {
        Err(AppendError::Client(e)) => assert_eq!(e.code(), Some(ErrorCode::InvalidArgument)),
        other => panic!("{other:?}"),
    }
    // Nothing more was written: the next append lands right after the first two records.
    let next = es
        .append(
            "es.idem",
            "s",
            ExpectedRevision::Exact(1),
            vec![event("c", 2)],
        )
        .await
        .expect("next");
    assert_eq!(next.position, first.position + 1);
    let records = read_all(&broker, "es.idem", 3).await;
    let ids: Vec<_> = records
        .iter()
        .map(|r| header(r, "ce_id").unwrap_or(""))
        .collect();
    assert_eq!(&ids[..2], ["id-1", "id-2"]);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_consumers_see_cloudevents_headers_and_plain_produce_is_refused() {
    let broker = TestBroker::start().await.expect("broker");
    let es = store(&broker, "es.orders").await;
    let mut placed = event("order.placed", 1).with_id("evt-42");
    placed.metadata.source = "/shop".into();
    placed.metadata.correlation_id = "corr-7".into();
    es.append(
        "es.orders",
        "order-42",
        ExpectedRevision::NoStream,
        vec![placed],
    )
    .await
    .expect("append");
    let records = read_all(&broker, "es.orders", 1).await;
    let r = &records[0];
    assert_eq!(r.key.as_deref(), Some(&b"order-42"[..]));
    assert_eq!(header(r, "ce_id"), Some("evt-42"));
    assert_eq!(header(r, "ce_type"), Some("order.placed"));
    assert_eq!(header(r, "ce_source"), Some("/shop"));
    assert_eq!(header(r, "ce_subject"), Some("order-42"));
    assert_eq!(header(r, "ce_specversion"), Some("1.0"));
    assert_eq!(header(r, "correlation-id"), Some("corr-7"));
    assert_eq!(header(r, "ce_streamrevision"), Some("0"));
    assert_eq!(r.payload, br#"{"n":1}"#);

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.kafka_bootstrap())
        .set("message.timeout.ms", "5000")
        .set("retries", "0")
        .create()
        .expect("producer");
    let refused = producer
        .send(
            FutureRecord::to("es.orders")
                .key("order-42")
                .payload("sneaky"),
            Duration::from_secs(5),
        )
        .await;
    match refused {
        Err((e, _)) => assert_eq!(
            e.rdkafka_error_code(),
            Some(rdkafka::types::RDKafkaErrorCode::InvalidRecord),
            "{e}"
        ),
        Ok(at) => panic!("plain produce into an event store was accepted at {at:?}"),
    }
    // A topic that allows plain produce takes it, and its records belong to no stream.
    let conn = common::native::connect_as(&broker, "guest", "guest").await;
    let configs = BTreeMap::from([
        ("ferry.event.store".to_string(), "true".to_string()),
        (
            "ferry.event.store.allow.produce".to_string(),
            "true".to_string(),
        ),
    ]);
    conn.call(&ferry::proto::v1::Request {
        op: Some(ferry::proto::v1::request::Op::DeclareTopic(
            ferry::proto::v1::DeclareTopic {
                name: "es.open".into(),
                partitions: 1,
                configs: configs.into_iter().collect(),
            },
        )),
    })
    .await
    .expect("declare");
    producer
        .send(
            FutureRecord::to("es.open").key("order-1").payload("plain"),
            Duration::from_secs(5),
        )
        .await
        .expect("allowed produce");
    let info = es.stream_info("es.open", "order-1").await.expect("info");
    assert_eq!(info.last_revision, None);
    let appended = es
        .append(
            "es.open",
            "order-1",
            ExpectedRevision::NoStream,
            vec![event("e", 0)],
        )
        .await
        .expect("append after plain produce");
    assert_eq!((appended.next_expected_revision, appended.position), (0, 1));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_to_a_plain_topic_or_with_bad_input_are_refused_with_typed_errors() {
    let broker = TestBroker::start().await.expect("broker");
    let es = store(&broker, "es.ok").await;
    let conn = common::native::connect_as(&broker, "guest", "guest").await;
    conn.call(&ferry::proto::v1::Request {
        op: Some(ferry::proto::v1::request::Op::DeclareTopic(
            ferry::proto::v1::DeclareTopic {
                name: "plain".into(),
                partitions: 1,
                configs: Default::default(),
            },
        )),
    })
    .await
    .expect("declare");
    let code = |r: Result<AppendResult, AppendError>| match r {
        Err(AppendError::Client(e)) => e.code(),
        other => panic!("{other:?}"),
    };
    let any = ExpectedRevision::Any;
    assert_eq!(
        code(es.append("plain", "s", any, vec![event("e", 0)]).await),
        Some(ErrorCode::InvalidArgument)
    );
    assert_eq!(
        code(es.append("missing", "s", any, vec![event("e", 0)]).await),
        Some(ErrorCode::NotFound)
    );
    assert_eq!(
        code(es.append("es.ok", "", any, vec![event("e", 0)]).await),
        Some(ErrorCode::InvalidArgument)
    );
    assert_eq!(
        code(es.append("es.ok", "s", any, Vec::new()).await),
        Some(ErrorCode::InvalidArgument)
    );
    let twice = vec![event("e", 0).with_id("x"), event("e", 1).with_id("x")];
    assert_eq!(
        code(es.append("es.ok", "s", any, twice).await),
        Some(ErrorCode::InvalidArgument)
    );
    broker.stop().await;
}
