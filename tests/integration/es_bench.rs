//! `ferry bench es` as a process against an embedded broker: every append it asked for is
//! answered with the revision it expected (`NoStream` once per stream, then `Exact`), the
//! catch-up read delivers the whole store, the JSON report says so, and the store holds exactly
//! those events; without `--keep` the store is gone afterwards.

use std::process::Stdio;
use std::time::Duration;

use crate::common;

use ferry::client::native::EventStoreClient;
use ferry::testing::TestBroker;

async fn bench(broker: &TestBroker, args: &[&str]) -> serde_json::Value {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["bench", "es", "--native-addr"])
        .arg(broker.native_addr().to_string())
        .args(["--fingerprint", broker.native_fingerprint()])
        .args(args)
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ferry bench es");
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("finished in time")
        .expect("output");
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_es_appends_and_catches_up_exactly_what_it_reports() {
    let broker = TestBroker::start().await.expect("broker");
    let report = bench(
        &broker,
        &[
            "--streams",
            "1,50",
            "--appends",
            "300",
            "--concurrency",
            "16",
            "--keep",
        ],
    )
    .await;
    assert_eq!(report["tool"], "ferry bench es");
    // The embedded broker is this process: found by its UDP socket.
    assert_eq!(
        report["broker_process"]["pid"].as_u64(),
        Some(u64::from(std::process::id())),
        "{report:#}"
    );
    let cases = report["appends"].as_array().expect("cases");
    assert_eq!(cases.len(), 2, "{report:#}");
    for (case, streams, in_flight) in [(&cases[0], 1, 1), (&cases[1], 50, 16)] {
        assert_eq!(case["streams"], streams, "{case:#}");
        assert_eq!(case["in_flight"], in_flight, "{case:#}");
        assert_eq!(case["appends"], 300, "{case:#}");
        assert_eq!(case["no_stream_appends"], streams, "{case:#}");
        assert_eq!(case["exact_appends"], 300 - streams, "{case:#}");
        assert_eq!(case["latency"]["samples"], 300, "{case:#}");
        assert!(case["appends_per_sec"].as_f64().expect("rate") > 0.0);
    }
    assert_eq!(report["catch_up"]["events"], 600, "{report:#}");
    assert!(report["catch_up"]["events_per_sec"].as_f64().expect("rate") > 0.0);
    assert_eq!(report["store_events"], 600);
    assert_eq!(report["topic_deleted"], false);

    // The store holds exactly those events: 600 records, the one stream at revision 299, and
    // the 50 streams' revisions adding up to the other 300 appends (a worker owning more
    // streams than another spreads its share thinner, so they need not be equal).
    let topic = report["topic"].as_str().expect("topic");
    let t = broker.core().topic(topic).expect("store kept");
    assert_eq!(t.partition(0).expect("partition").high_watermark(), 600);
    let es = EventStoreClient::new(common::native::connect_as(&broker, "guest", "guest").await);
    let info = es.stream_info(topic, "c0-0").await.expect("info");
    assert_eq!(info.last_revision, Some(299));
    let mut events = 0;
    for n in 0..50 {
        let info = es
            .stream_info(topic, &format!("c1-{n}"))
            .await
            .expect("info");
        events += info.last_revision.expect("every stream written") + 1;
    }
    assert_eq!(events, 300);

    // Without --keep the store is deleted.
    let report = bench(
        &broker,
        &["--streams", "3", "--appends", "30", "--no-catch-up"],
    )
    .await;
    assert_eq!(report["appends"][0]["appends"], 30, "{report:#}");
    assert!(report["catch_up"].is_null());
    assert_eq!(report["topic_deleted"], true);
    let topic = report["topic"].as_str().expect("topic");
    assert!(broker.core().topic(topic).is_none(), "{topic} kept");
    broker.stop().await;
}
