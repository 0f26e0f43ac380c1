//! Idempotent handlers through the Rust SDK over real QUIC: the broker's processed-id store
//! makes a duplicate of an event the handler completed be skipped and acked, also after the
//! broker restarts, while a failed run records nothing (its retry runs the handler again).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ferry::broker::processed::scoped_handler;
use ferry::client::native::*;
use ferry::testing::TestBroker;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::common;

const WAIT: Duration = Duration::from_secs(10);

async fn sdk(broker: &TestBroker) -> NativeConnection {
    common::native::connect_as(broker, "guest", "guest").await
}

/// Runs of the idempotent handler per event id.
type Runs = Arc<Mutex<HashMap<String, u32>>>;

/// An idempotent `payment.requested` handler named `billing.charge` that counts its runs (and
/// fails the first run of an event whose id starts with `flaky`), and a plain `marker` handler
/// that reports each marker id: markers are published last, so with one handler at a time a
/// marker's arrival means every event before it was settled.
fn handlers(runs: &Runs) -> (Handlers, mpsc::UnboundedReceiver<String>) {
    let (markers_tx, markers) = mpsc::unbounded_channel();
    let runs = runs.clone();
    let charge = move |event: ReceivedEvent, _ctx: EventContext| {
        let runs = runs.clone();
        async move {
            let id = event.metadata.id;
            let run = {
                let mut runs = runs.lock();
                let n = runs.entry(id.clone()).or_default();
                *n += 1;
                *n
            };
            if id.starts_with("flaky") && run == 1 {
                return Err(HandlerError("card service timed out".into()));
            }
            Ok(())
        }
    };
    let marker = move |event: ReceivedEvent, _ctx: EventContext| {
        let tx = markers_tx.clone();
        async move {
            let _ = tx.send(event.metadata.id);
            Ok(())
        }
    };
    let handlers = Handlers::new()
        .on(
            HandlerConfig::new("payment.requested", "").idempotent_as("billing.charge"),
            charge,
        )
        .on(HandlerConfig::new("marker", ""), marker);
    (handlers, markers)
}

fn config() -> ConsumerConfig {
    let mut config = ConsumerConfig::new("payments");
    config.concurrency = 1;
    config.retry.delay = Duration::from_millis(10);
    config.retry.max_delay = Duration::from_millis(10);
    config
}

async fn publish(conn: &NativeConnection, event_type: &str, id: &str) {
    EventPublisher::new(conn.clone())
        .publish(
            &serde_json::json!({"amount": 12}),
            EventMetadata::new(event_type, "/shop").with_id(id),
            &PublishConfig::queue("payments"),
        )
        .await
        .expect("publish");
}

async fn wait_for_marker(markers: &mut mpsc::UnboundedReceiver<String>, id: &str) {
    let got = tokio::time::timeout(WAIT, markers.recv())
        .await
        .expect("marker in time")
        .expect("marker");
    assert_eq!(got, id);
}

async fn queue_empty(broker: &TestBroker) {
    let q = broker
        .core()
        .router()
        .queue("/", "payments")
        .expect("queue exists");
    let deadline = tokio::time::Instant::now() + WAIT;
    while q.message_count() + q.unacked_count() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "queue not settled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_idempotent_handler_runs_once_per_event_id_across_a_broker_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    let runs: Runs = Arc::default();
    {
        let broker = TestBroker::with(|b| b.data_dir(&path))
            .await
            .expect("broker");
        let conn = sdk(&broker).await;
        let consumer = EventConsumer::new(conn.clone());
        consumer.declare_queue(&config()).await.expect("declare");
        publish(&conn, "payment.requested", "pay-1").await;
        publish(&conn, "payment.requested", "pay-1").await;
        publish(&conn, "payment.requested", "flaky-1").await;
        publish(&conn, "marker", "m-1").await;
        let (handlers, mut markers) = handlers(&runs);
        let sub = consumer
            .subscribe(handlers, config())
            .await
            .expect("subscribe");
        wait_for_marker(&mut markers, "m-1").await;
        // The failed first run of flaky-1 was retried after the marker; wait for its success.
        let deadline = tokio::time::Instant::now() + WAIT;
        while runs.lock().get("flaky-1").copied() != Some(2) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "flaky-1 not retried"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        queue_empty(&broker).await;
        sub.close().await;
        assert_eq!(
            runs.lock().get("pay-1"),
            Some(&1),
            "the duplicate was skipped"
        );
        assert!(broker
            .core()
            .processed()
            .is_processed(&scoped_handler("guest", "billing.charge"), "flaky-1")
            .unwrap());
        broker.stop().await;
    }
    let broker = TestBroker::with(|b| b.data_dir(&path))
        .await
        .expect("broker");
    let conn = sdk(&broker).await;
    publish(&conn, "payment.requested", "pay-1").await;
    publish(&conn, "payment.requested", "flaky-1").await;
    publish(&conn, "payment.requested", "pay-2").await;
    publish(&conn, "marker", "m-2").await;
    let (handlers, mut markers) = handlers(&runs);
    let sub = EventConsumer::new(conn.clone())
        .subscribe(handlers, config())
        .await
        .expect("subscribe");
    wait_for_marker(&mut markers, "m-2").await;
    queue_empty(&broker).await;
    sub.close().await;
    let runs = runs.lock().clone();
    assert_eq!(runs.get("pay-1"), Some(&1), "remembered across the restart");
    assert_eq!(
        runs.get("flaky-1"),
        Some(&2),
        "remembered across the restart"
    );
    assert_eq!(runs.get("pay-2"), Some(&1), "a new id runs");
}

#[tokio::test]
async fn processed_ids_are_per_handler_name() {
    let broker = TestBroker::start().await.expect("broker");
    let conn = sdk(&broker).await;
    let check = |handler: &str, id: &str| ferry::proto::v1::Request {
        op: Some(ferry::proto::v1::request::Op::CheckProcessed(
            ferry::proto::v1::CheckProcessed {
                handler: handler.into(),
                event_id: id.into(),
            },
        )),
    };
    let record = ferry::proto::v1::Request {
        op: Some(ferry::proto::v1::request::Op::RecordProcessed(
            ferry::proto::v1::RecordProcessed {
                handler: "billing".into(),
                event_id: "e-1".into(),
            },
        )),
    };
    use ferry::proto::v1::response::Result as R;
    assert_eq!(
        conn.call(&record).await.expect("record"),
        R::Done(Default::default())
    );
    let processed = |r| matches!(r, R::ProcessedStatus(s) if s.processed);
    assert!(processed(
        conn.call(&check("billing", "e-1")).await.expect("check")
    ));
    assert!(!processed(
        conn.call(&check("shipping", "e-1")).await.expect("check")
    ));
    assert!(!processed(
        conn.call(&check("billing", "e-2")).await.expect("check")
    ));
    // An empty name is a typed error, not a silent miss.
    match conn.call(&check("", "e-1")).await {
        Err(NativeClientError::Server { code, .. }) => {
            assert_eq!(code, ferry::proto::v1::ErrorCode::InvalidArgument)
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}
