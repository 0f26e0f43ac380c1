//! `ferry bench kafka` as a process against an in-test broker: it produces, consumes and
//! measures the requested case, reports it as JSON, and deletes its topic afterwards.

use std::process::Stdio;
use std::time::Duration;

use ferry::testing::TestBroker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_kafka_reports_json_and_deletes_its_topic() {
    let broker = TestBroker::start().await.unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["bench", "kafka", "--bootstrap"])
        .arg(broker.kafka_bootstrap())
        .args([
            "--records",
            "2000",
            "--sizes",
            "100",
            "--partitions",
            "1",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ferry bench");
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("ferry bench did not finish within 120 s")
        .expect("ferry bench output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ferry bench failed: {stderr}");

    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let cases = report["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 1, "{report:#}");
    let case = &cases[0];
    assert_eq!(case["case"], "100B/1p");
    assert_eq!(case["record_bytes"], 100);
    assert_eq!(case["partitions"], 1);
    for phase in ["produce", "consume"] {
        assert_eq!(case[phase]["records"], 2000, "{phase}: {case:#}");
        assert_eq!(case[phase]["value_bytes"], 200_000, "{phase}: {case:#}");
        let rate = case[phase]["records_per_sec"].as_f64().unwrap();
        assert!(rate > 0.0, "{phase} rate {rate}");
        assert!(case[phase]["mb_per_sec"].as_f64().unwrap() > 0.0);
    }
    let ack = &case["produce"]["latency"];
    assert_eq!(ack["kind"], "ack");
    assert!(ack["p99_ms"].as_f64().unwrap() >= ack["p50_ms"].as_f64().unwrap());
    let e2e = &case["e2e"];
    assert_eq!(e2e["latency"]["kind"], "end_to_end");
    assert!(e2e["records"].as_u64().unwrap() > 0);
    assert!(e2e["latency"]["samples"].as_u64().unwrap() > 0);

    let topic = case["topic"].as_str().expect("topic name");
    assert!(topic.starts_with("ferry-bench-100-1-"), "{topic}");
    assert_eq!(case["topic_deleted"], true);
    assert!(
        broker.core().topic(topic).is_none(),
        "topic {topic} still exists after the bench"
    );
    assert!(broker
        .core()
        .topics()
        .iter()
        .all(|t| !t.name().starts_with("ferry-bench-")));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_kafka_without_a_broker_says_how_to_start_one() {
    // A port that was free a moment ago: bind, note, release.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["bench", "kafka", "--bootstrap", &addr.to_string()])
        .output()
        .await
        .expect("run ferry bench");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("connection refused")
            && stderr.contains("ferry")
            && stderr.contains("serve"),
        "{stderr}"
    );
}
