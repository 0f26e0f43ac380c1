//! `ferry bench native` against an embedded broker: every message is confirmed and consumed
//! exactly once, the report is JSON, and the bench queue is gone afterwards.

use std::process::Stdio;
use std::time::Duration;

use ferry::testing::TestBroker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_native_counts_every_message_once_and_cleans_up() {
    let broker = TestBroker::start().await.expect("broker");
    let addr = broker.native_addr().to_string();
    for batch in ["1", "4"] {
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["bench", "native", "--native-addr", &addr])
            .args(["--fingerprint", broker.native_fingerprint()])
            .args([
                "--messages",
                "400",
                "--size",
                "16",
                "--window",
                "8",
                "--batch",
                batch,
            ])
            .arg("--json")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn ferry bench native");
        let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .expect("finished in time")
            .expect("output");
        assert!(
            out.status.success(),
            "bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(report["tool"], "ferry bench native");
        assert_eq!(
            report["batch"].as_u64(),
            Some(batch.parse().expect("number"))
        );
        let case = &report["cases"][0];
        assert_eq!(case["published"], 400, "{case:#}");
        assert_eq!(case["consumed"], 400, "{case:#}");
        assert_eq!(case["end_to_end_latency"]["samples"], 400, "{case:#}");
        assert!(case["publish_messages_per_sec"].as_f64().expect("rate") > 0.0);
        let queue = case["queue"].as_str().expect("queue");
        assert!(
            broker.core().router().queue("/", queue).is_none(),
            "{queue} kept"
        );
    }
}
