//! The embedding API: `TestBroker` and `Broker::builder()` used as a library user would.

use std::collections::BTreeMap;

use bytes::Bytes;
use ferry::log::batch::{encode_batch, SimpleRecord};
use ferry::testing::TestBroker;
use ferry::Broker;

fn record(value: &str) -> SimpleRecord {
    SimpleRecord {
        key: Some(Bytes::from_static(b"k")),
        value: Some(Bytes::copy_from_slice(value.as_bytes())),
        headers: vec![],
        timestamp: 1_700_000_000_000,
    }
}

#[tokio::test]
async fn test_broker_is_ready_and_serves_http() {
    let broker = TestBroker::start().await.unwrap();
    assert!(broker.readiness().is_ok());
    assert!(broker.kafka_addr().ip().is_loopback());
    assert_ne!(broker.kafka_addr().port(), 0);
    let ready = reqwest::get(format!("{}/readyz", broker.http_url()))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    broker.stop().await;
}

#[tokio::test]
async fn topics_and_records_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::builder()
        .data_dir(dir.path())
        .start()
        .await
        .unwrap();
    let mut configs = BTreeMap::new();
    configs.insert("retention.ms".to_string(), "-1".to_string());
    broker
        .core()
        .create_topic("orders", 2, configs)
        .await
        .unwrap();
    let p1 = broker.core().partition("orders", 1).unwrap();
    let first = p1
        .append(encode_batch(&[record("a"), record("b")]))
        .await
        .unwrap();
    let second = p1.append(encode_batch(&[record("c")])).await.unwrap();
    assert_eq!((first.base_offset, first.last_offset), (0, 1));
    assert_eq!(second.base_offset, 2);
    broker.shutdown().await;
    drop(broker);

    let broker = Broker::builder()
        .data_dir(dir.path())
        .start()
        .await
        .unwrap();
    let topic = broker
        .core()
        .topic("orders")
        .expect("topic survives restart");
    assert_eq!(topic.partition_count(), 2);
    assert_eq!(topic.config_overrides()["retention.ms"], "-1");
    let p1 = broker.core().partition("orders", 1).unwrap();
    assert_eq!(p1.log_end_offset(), 3);
    let slice = p1.read(0, 1 << 20).unwrap();
    assert!(!slice.bytes.is_empty());
    assert_eq!(slice.next_offset, 3);
    let next = p1.append(encode_batch(&[record("d")])).await.unwrap();
    assert_eq!(next.base_offset, 3);

    assert!(matches!(
        broker
            .core()
            .create_topic("orders", 1, BTreeMap::new())
            .await,
        Err(ferry::BrokerError::TopicExists(_))
    ));
    assert!(matches!(
        broker
            .core()
            .create_topic("bad/name", 1, BTreeMap::new())
            .await,
        Err(ferry::BrokerError::InvalidTopicName { .. })
    ));
    let mut bad = BTreeMap::new();
    bad.insert("retention.ms".to_string(), "soon".to_string());
    assert!(matches!(
        broker.core().create_topic("other", 1, bad).await,
        Err(ferry::BrokerError::InvalidConfig { .. })
    ));

    broker.core().delete_topic("orders").await.unwrap();
    assert!(broker.core().topic("orders").is_none());
    assert!(!dir.path().join("logs/orders-0").exists());
    broker.shutdown().await;
}

#[tokio::test]
async fn fsync_failure_fail_stops_the_partition_and_readyz_reports_it() {
    let broker = TestBroker::start().await.unwrap();
    broker
        .core()
        .create_topic("fragile", 1, BTreeMap::new())
        .await
        .unwrap();
    let partition = broker.core().partition("fragile", 0).unwrap();
    partition
        .append(encode_batch(&[record("ok")]))
        .await
        .unwrap();
    partition.inject_fsync_failure();
    let failed = partition.append(encode_batch(&[record("lost")])).await;
    assert!(
        matches!(failed, Err(ferry::log::LogError::FailStopped(_))),
        "{failed:?}"
    );
    // Every later write is refused too, not silently accepted.
    let again = partition.append(encode_batch(&[record("later")])).await;
    assert!(matches!(again, Err(ferry::log::LogError::FailStopped(_))));

    let reasons = broker.readiness().unwrap_err();
    assert!(
        reasons.iter().any(|r| r.contains("fragile-0")),
        "{reasons:?}"
    );
    let ready = reqwest::get(format!("{}/readyz", broker.http_url()))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert!(body["reasons"].to_string().contains("fail-stop"), "{body}");
    // The process itself is still alive.
    let health = reqwest::get(format!("{}/healthz", broker.http_url()))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn metrics_expose_log_activity() {
    let broker = TestBroker::start().await.unwrap();
    broker
        .core()
        .create_topic("metered", 1, BTreeMap::new())
        .await
        .unwrap();
    let partition = broker.core().partition("metered", 0).unwrap();
    let batch = encode_batch(&[record("a"), record("b"), record("c")]);
    let bytes = batch.len();
    partition.append(batch).await.unwrap();
    let text = reqwest::get(format!("{}/metrics", broker.http_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains("topic=\"metered\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} for topic metered missing:\n{text}"))
    };
    assert_eq!(value("ferry_log_appended_records_total"), 3.0);
    assert_eq!(value("ferry_log_appended_bytes_total"), bytes as f64);
    assert_eq!(value("ferry_log_segments"), 1.0);
    assert!(value("ferry_log_fsync_seconds_count") >= 1.0);
    assert!(text.contains("ferry_log_recovery_repairs_total"));
    broker.stop().await;
}
