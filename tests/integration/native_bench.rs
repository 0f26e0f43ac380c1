//! `ferry bench native` against an embedded broker: every message is confirmed and consumed
//! exactly once, the report is JSON, and the bench queue is gone afterwards.

use std::process::Stdio;
use std::time::Duration;

use ferry::testing::TestBroker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_native_counts_every_message_once_and_cleans_up() {
    let broker = TestBroker::start().await.expect("broker");
    let addr = broker.native_addr().to_string();
    // Back to back with one and four messages per request, and paced by --rate.
    for (batch, paced) in [("1", false), ("4", false), ("1", true)] {
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
            .args(if paced {
                &["--rate", "2000"][..]
            } else {
                &[][..]
            })
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
        // One confirm per request: the answers were matched to their requests.
        let per_request: u64 = batch.parse().expect("number");
        assert_eq!(
            case["confirm_latency"]["samples"].as_u64(),
            Some(400 / per_request),
            "{case:#}"
        );
        if paced {
            // 400 messages at 2,000/s take about 0.2 s, not the microseconds of a burst.
            assert!(
                case["publish_messages_per_sec"].as_f64().expect("rate") < 4000.0,
                "{case:#}"
            );
        }
        assert!(case["publish_messages_per_sec"].as_f64().expect("rate") > 0.0);
        let queue = case["queue"].as_str().expect("queue");
        assert!(
            broker.core().router().queue("/", queue).is_none(),
            "{queue} kept"
        );
    }
}

/// A publish the broker refuses ends the run with the broker's reason, instead of leaving the
/// publisher waiting for confirms that will never come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_native_reports_a_refused_publish_and_stops() {
    use ferry::broker::users::Password;
    use ferry::meta::PermissionRecord;

    let broker = TestBroker::start().await.expect("broker");
    let users = broker.core().users();
    users
        .put_user("no-writes", Password::Clear("secret".into()), Vec::new())
        .expect("user");
    users
        .set_permission(PermissionRecord {
            vhost: "/".into(),
            user: "no-writes".into(),
            configure: ".*".into(),
            write: "^nothing$".into(),
            read: ".*".into(),
        })
        .expect("permission");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "bench",
            "native",
            "--native-addr",
            &broker.native_addr().to_string(),
        ])
        .args(["--fingerprint", broker.native_fingerprint()])
        .args(["--user", "no-writes", "--password", "secret"])
        .args(["--messages", "400", "--size", "16", "--window", "8"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ferry bench native");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the bench ends instead of waiting for confirms")
        .expect("output");
    assert!(!out.status.success(), "the bench succeeded without writes");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("publish refused"), "{stderr}");
}
