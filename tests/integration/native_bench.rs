//! `ferry bench native` against an embedded broker: every message is confirmed and consumed
//! exactly once, the report is JSON, and the bench queue is gone afterwards.

use std::process::{Output, Stdio};
use std::time::Duration;

use ferry::testing::TestBroker;

/// 400 messages of 16 B with 8 requests in flight: seconds in a debug build.
const SMALL_RUN: [&str; 6] = ["--messages", "400", "--size", "16", "--window", "8"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_native_counts_every_message_once_and_cleans_up() {
    let broker = TestBroker::start().await.expect("broker");
    // Back to back with one and four messages per request, and paced by --rate.
    for (batch, paced) in [("1", false), ("4", false), ("1", true)] {
        let mut args = SMALL_RUN.to_vec();
        args.extend(["--batch", batch, "--json"]);
        if paced {
            args.extend(["--rate", "2000"]);
        }
        let out = bench_native(&broker, &args, Duration::from_secs(120)).await;
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
    let mut args = vec!["--user", "no-writes", "--password", "secret"];
    args.extend(SMALL_RUN);
    // Well past the sub-second run; a publisher waiting for confirms would never finish.
    let out = bench_native(&broker, &args, Duration::from_secs(60)).await;
    assert!(!out.status.success(), "the bench succeeded without writes");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("publish refused"), "{stderr}");
}

/// Runs `ferry bench native` against `broker` with `args`, failing the test if it has not
/// finished within `limit`.
async fn bench_native(broker: &TestBroker, args: &[&str], limit: Duration) -> Output {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["bench", "native", "--native-addr"])
        .arg(broker.native_addr().to_string())
        .args(["--fingerprint", broker.native_fingerprint()])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ferry bench native");
    tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("ferry bench native {args:?} still running after {limit:?}"))
        .expect("output")
}
