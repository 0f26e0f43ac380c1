//! Event-store reads through the Rust SDK against an embedded broker: a stream forwards and
//! backwards from a revision with a count, `$all` from a position, stream metadata
//! (`$maxCount`, `$maxAge` on a manual clock), soft delete (reads say STREAM_NOT_FOUND, a later
//! append continues at the next revision and reads start there) and hard delete; and issue 15
//! test 8: an event appended with the SDK is read by kcat with its `ce_*` headers and by an
//! AMQP stream consumer (lapin).

use crate::common;

use std::time::Duration;

use ferry::client::native::*;
use ferry::clock::Clock;
use ferry::testing::TestBroker;
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};

async fn store(broker: &TestBroker, topic: &str) -> EventStoreClient {
    let conn = common::native::connect_as(broker, "guest", "guest").await;
    let client = EventStoreClient::new(conn);
    client.create_store(topic, 1).await.expect("create store");
    client
}

fn event(n: u64) -> EventData {
    EventData::json("tick", &serde_json::json!({ "n": n })).expect("json")
}

fn revisions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.revision).collect()
}

fn code(r: Result<Vec<RecordedEvent>, NativeClientError>) -> Option<ErrorCode> {
    match r {
        Err(e) => e.code(),
        Ok(events) => panic!("read {} events, expected an error", events.len()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_read_forwards_and_backwards_and_all_reads_in_log_order() {
    let broker = TestBroker::start().await.expect("broker");
    let es = store(&broker, "es.read").await;
    let t = "es.read";
    // 150 events in a, interleaved with b so the reads must skip other streams' records; more
    // than two sparse index intervals (64) so reads start from a stored entry.
    let mut expected_a = ExpectedRevision::NoStream;
    for n in 0..150u64 {
        let r = es
            .append(t, "a", expected_a, vec![event(n)])
            .await
            .expect("a");
        expected_a = ExpectedRevision::Exact(r.next_expected_revision);
        if n % 10 == 0 {
            es.append(t, "b", ExpectedRevision::Any, vec![event(n)])
                .await
                .expect("b");
        }
    }
    let fwd = es
        .read_stream(t, "a", ReadFrom::Start, false, 10)
        .await
        .expect("read");
    assert_eq!(revisions(&fwd), (0..10).collect::<Vec<_>>());
    assert!(fwd.iter().all(|e| e.stream == "a"));
    let payload: serde_json::Value = fwd[3].event.json().expect("json");
    assert_eq!(payload["n"], 3);
    assert_eq!(fwd[3].event.metadata.event_type, "tick");
    assert_eq!(fwd[3].event.metadata.subject, "a");

    let mid = es
        .read_stream(t, "a", ReadFrom::Revision(130), false, 100)
        .await
        .expect("read");
    assert_eq!(revisions(&mid), (130..150).collect::<Vec<_>>());
    let back = es
        .read_stream(t, "a", ReadFrom::End, true, 5)
        .await
        .expect("read");
    assert_eq!(revisions(&back), vec![149, 148, 147, 146, 145]);
    let back_mid = es
        .read_stream(t, "a", ReadFrom::Revision(70), true, 3)
        .await
        .expect("read");
    assert_eq!(revisions(&back_mid), vec![70, 69, 68]);
    let past_end = es
        .read_stream(t, "a", ReadFrom::Revision(150), false, 10)
        .await
        .expect("read");
    assert!(past_end.is_empty());
    // Positions increase with revisions and name the records.
    assert!(mid.windows(2).all(|w| w[0].position < w[1].position));

    // $all: every event of the partition in log order, page by page.
    let mut position = 0;
    let mut all = Vec::new();
    loop {
        let (page, next) = es.read_all(t, 0, position, 40).await.expect("all");
        if page.is_empty() {
            break;
        }
        assert!(next > position);
        position = next;
        all.extend(page);
    }
    assert_eq!(all.len(), 150 + 15);
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    let a_revisions: Vec<u64> = all
        .iter()
        .filter(|e| e.stream == "a")
        .map(|e| e.revision)
        .collect();
    assert_eq!(a_revisions, (0..150).collect::<Vec<_>>());

    assert_eq!(
        code(es.read_stream(t, "never", ReadFrom::Start, false, 1).await),
        Some(ErrorCode::StreamNotFound)
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_and_stream_metadata_shape_what_reads_return() {
    let clock = Clock::manual(1_700_000_000_000);
    let broker = TestBroker::with(|b| b.clock(clock.clone()))
        .await
        .expect("broker");
    let es = store(&broker, "es.meta").await;
    let t = "es.meta";
    use ExpectedRevision::*;

    // Soft delete: not found, then an append continues at last + 1 and reads start there.
    es.append(t, "soft", NoStream, vec![event(0), event(1)])
        .await
        .expect("append");
    es.delete_stream(t, "soft", Exact(1), false)
        .await
        .expect("soft delete");
    assert_eq!(
        code(es.read_stream(t, "soft", ReadFrom::Start, false, 10).await),
        Some(ErrorCode::StreamNotFound)
    );
    let again = es
        .append(t, "soft", NoStream, vec![event(2)])
        .await
        .expect("append");
    assert_eq!(again.next_expected_revision, 2);
    let read = es
        .read_stream(t, "soft", ReadFrom::Start, false, 10)
        .await
        .expect("read");
    assert_eq!(revisions(&read), vec![2]);
    let info = es.stream_info(t, "soft").await.expect("info");
    assert_eq!((info.truncate_before, info.soft_deleted), (2, false));

    // Hard delete: reads and appends refused for good.
    es.append(t, "hard", NoStream, vec![event(0)])
        .await
        .expect("append");
    es.delete_stream(t, "hard", Any, true)
        .await
        .expect("hard delete");
    assert_eq!(
        code(es.read_stream(t, "hard", ReadFrom::Start, false, 10).await),
        Some(ErrorCode::StreamDeleted)
    );

    // $maxCount keeps the last n.
    es.append(t, "counted", NoStream, (0..10).map(event).collect())
        .await
        .expect("append");
    es.set_stream_metadata(t, "counted", Some(3), None)
        .await
        .expect("metadata");
    let read = es
        .read_stream(t, "counted", ReadFrom::Start, false, 100)
        .await
        .expect("read");
    assert_eq!(revisions(&read), vec![7, 8, 9]);
    let info = es.stream_info(t, "counted").await.expect("info");
    assert_eq!(info.max_count, Some(3));

    // $maxAge leaves out events older than the age, by the broker's clock.
    es.append(t, "aged", NoStream, vec![event(0), event(1)])
        .await
        .expect("append");
    clock.advance_ms(10_000);
    es.append(t, "aged", Exact(1), vec![event(2)])
        .await
        .expect("append");
    es.set_stream_metadata(t, "aged", None, Some(5_000))
        .await
        .expect("metadata");
    let read = es
        .read_stream(t, "aged", ReadFrom::Start, false, 100)
        .await
        .expect("read");
    assert_eq!(revisions(&read), vec![2]);
    clock.advance_ms(10_000);
    let read = es
        .read_stream(t, "aged", ReadFrom::Start, false, 100)
        .await
        .expect("read");
    assert!(read.is_empty());
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_event_is_read_by_kcat_with_ce_headers_and_by_an_amqp_stream_consumer() {
    let broker = TestBroker::start().await.expect("broker");
    let es = store(&broker, "es.interop").await;
    let mut placed = EventData::json("order.placed", &serde_json::json!({"order": 42}))
        .expect("json")
        .with_id("evt-8");
    placed.metadata.source = "/shop".into();
    es.append(
        "es.interop",
        "order-42",
        ExpectedRevision::NoStream,
        vec![placed],
    )
    .await
    .expect("append");

    let bootstrap = broker.kafka_bootstrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("kcat")
            .args([
                "-b",
                &bootstrap,
                "-C",
                "-t",
                "es.interop",
                "-o",
                "beginning",
                "-e",
                "-q",
            ])
            .args(["-f", "%k|%s|%h\n"])
            .output()
    })
    .await
    .expect("join")
    .expect("kcat runs (apt-get install kcat)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut parts = line.splitn(3, '|');
    assert_eq!(parts.next(), Some("order-42"));
    assert_eq!(parts.next(), Some(r#"{"order":42}"#));
    let headers = parts.next().unwrap_or_default();
    for want in [
        "ce_id=evt-8",
        "ce_type=order.placed",
        "ce_source=/shop",
        "ce_subject=order-42",
        "ce_specversion=1.0",
        "ce_streamrevision=0",
    ] {
        assert!(
            headers.split(',').any(|h| h == want),
            "{want} not in {headers}"
        );
    }

    let conn = lapin::Connection::connect(&broker.amqp_url(), Default::default())
        .await
        .expect("amqp");
    let ch = conn.create_channel().await.expect("channel");
    ch.basic_qos(10, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    ch.queue_declare(
        "es.interop".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .expect("declare the store as a stream");
    let mut offset = FieldTable::default();
    offset.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let mut consumer = ch
        .basic_consume(
            "es.interop".into(),
            "".into(),
            BasicConsumeOptions::default(),
            offset,
        )
        .await
        .expect("consume");
    let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("delivery in time")
        .expect("open")
        .expect("delivery");
    assert_eq!(d.data, br#"{"order":42}"#);
    assert_eq!(d.routing_key.as_str(), "order-42");
    assert_eq!(
        d.properties.message_id().as_ref().map(|s| s.as_str()),
        Some("evt-8")
    );
    let headers = d.properties.headers().clone().unwrap_or_default();
    let text = |k: &str| match headers.inner().get(k) {
        Some(AMQPValue::LongString(s)) => Some(s.to_string()),
        other => panic!("{k}: {other:?} in {headers:?}"),
    };
    // The CloudEvents AMQP binding's names, the revision as an extension attribute.
    assert_eq!(text("cloudEvents:type").as_deref(), Some("order.placed"));
    assert_eq!(text("cloudEvents:subject").as_deref(), Some("order-42"));
    assert_eq!(text("cloudEvents:streamrevision").as_deref(), Some("0"));
    broker.stop().await;
}
