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

/// `--schema avro`: the bench's topic validates, its schema is registered under the topic's
/// subject, and every produced (and e2e-stamped) framed Avro record passes validation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_kafka_with_schema_avro_sends_records_the_topic_validates() {
    let broker = TestBroker::start().await.unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["bench", "kafka", "--bootstrap"])
        .arg(broker.kafka_bootstrap())
        .args(["--schema", "avro", "--registry"])
        .arg(broker.http_url())
        .args([
            "--records",
            "2000",
            "--sizes",
            "1024",
            "--partitions",
            "1",
            "--latency-secs",
            "1",
            "--keep",
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
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["settings"]["schema"], "avro", "{report:#}");
    let case = &report["cases"][0];
    assert_eq!(case["produce"]["records"], 2000, "{case:#}");
    assert_eq!(case["consume"]["records"], 2000, "{case:#}");
    assert!(case["e2e"]["latency"]["samples"].as_u64().unwrap() > 0);

    let topic = case["topic"].as_str().unwrap();
    let kept = broker.core().topic(topic).expect("--keep kept the topic");
    assert!(kept.log_config().schema_validation);
    let versions: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "{}/subjects/{topic}-value/versions",
            broker.http_url()
        ))
        .basic_auth("admin", Some("admin"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(versions, serde_json::json!([1]));
    // A record that is not framed Avro is refused on that topic: validation was on.
    let refused = broker.core().check_kafka_records(&kept, &plain_batch());
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].reason, "wire_format");
    broker.stop().await;
}

/// One record batch holding one plain (unframed) value.
fn plain_batch() -> bytes::Bytes {
    let record = ferry::log::SimpleRecord {
        key: None,
        value: Some(bytes::Bytes::from_static(b"not avro")),
        headers: Vec::new(),
        timestamp: 0,
    };
    ferry::log::try_encode_batch(&[record], &ferry::log::EncodeOptions::default())
        .unwrap()
        .freeze()
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

/// Runs `ferry bench amqp` with `args` and returns its JSON report.
async fn bench_amqp_json(args: &[&str]) -> serde_json::Value {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["bench", "amqp"])
        .args(args)
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ferry bench amqp");
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("ferry bench amqp did not finish within 120 s")
        .expect("ferry bench amqp output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ferry bench amqp failed: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_amqp_reports_json_and_deletes_its_queue() {
    let broker = TestBroker::start().await.unwrap();
    let url = broker.amqp_url();
    let report = bench_amqp_json(&["--url", &url, "--messages", "3000", "--size", "16,1KiB"]).await;
    assert_eq!(report["tool"], "ferry bench amqp");
    assert!(
        report["server"].as_str().unwrap().contains("Ferry"),
        "{report:#}"
    );
    assert_eq!(report["settings"]["confirm_window"], 256);
    assert_eq!(report["settings"]["prefetch"], 256);
    assert_eq!(report["settings"]["delivery_mode"], 2);
    if cfg!(target_os = "linux") {
        assert_eq!(
            report["broker_process"]["pid"],
            std::process::id(),
            "{report:#}"
        );
    }
    assert!(
        !report["url"].as_str().unwrap().contains("guest:guest"),
        "password shown: {}",
        report["url"]
    );
    let cases = report["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 2, "{report:#}");
    for (case, (label, size)) in cases.iter().zip([("16B", 16), ("1KiB", 1024)]) {
        assert_eq!(case["case"], label);
        assert_eq!(case["message_bytes"], size);
        assert_eq!(case["nacked"], 0, "{case:#}");
        for (phase, kind) in [("publish", "confirm"), ("consume", "end_to_end")] {
            let p = &case[phase];
            assert_eq!(p["messages"], 3000, "{phase}: {case:#}");
            assert!(p["messages_per_sec"].as_f64().unwrap() > 0.0, "{case:#}");
            assert!(p["mb_per_sec"].as_f64().unwrap() > 0.0, "{case:#}");
            let l = &p["latency"];
            assert_eq!(l["kind"], kind);
            // One sample per message: each was confirmed and delivered exactly once.
            assert_eq!(l["samples"], 3000, "{phase}: {case:#}");
            let (p50, p99, p999, max) = (
                l["p50_ms"].as_f64().unwrap(),
                l["p99_ms"].as_f64().unwrap(),
                l["p999_ms"].as_f64().unwrap(),
                l["max_ms"].as_f64().unwrap(),
            );
            assert!(0.0 < p50 && p50 <= p99 && p99 <= p999 && p999 <= max, "{l}");
        }
        if cfg!(target_os = "linux") {
            assert!(case["client_cpu_percent"].as_f64().unwrap() > 0.0);
            assert!(case["client_cpu_us_per_message"].as_f64().unwrap() > 0.0);
            // The broker runs in this test process: found as the owner of the AMQP port.
            assert!(case["broker_cpu_us_per_message"].as_f64().unwrap() > 0.0);
            assert!(case["broker_cpu_percent"].as_f64().unwrap() > 0.0);
        }
        let queue = case["queue"].as_str().expect("queue name");
        assert!(
            queue.starts_with(&format!("ferry-bench-{size}-")),
            "{queue}"
        );
        assert_eq!(case["queue_deleted"], true);
        assert!(
            broker.core().router().queue("/", queue).is_none(),
            "queue {queue} still exists after the bench"
        );
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_amqp_without_consumer_leaves_the_messages_queued_at_the_given_rate() {
    let broker = TestBroker::start().await.unwrap();
    let url = broker.amqp_url();
    let report = bench_amqp_json(&[
        "--url",
        &url,
        "--messages",
        "2000",
        "--size",
        "16",
        "--no-consumer",
        "--rate",
        "4000",
        "--transient",
    ])
    .await;
    assert_eq!(report["settings"]["rate"], 4000);
    assert_eq!(report["settings"]["delivery_mode"], 1);
    let case = &report["cases"][0];
    assert_eq!(case["publish"]["messages"], 2000, "{case:#}");
    // 2000 messages at 4000/s cannot be done in much under half a second.
    let secs = case["publish"]["seconds"].as_f64().unwrap();
    assert!(secs >= 0.45, "rate limit ignored: {secs} s");
    assert!(case["consume"].is_null(), "{case:#}");
    assert_eq!(case["queue_deleted"], false);
    let name = case["queue"].as_str().expect("queue name");
    let queue = broker
        .core()
        .router()
        .queue("/", name)
        .expect("the bench queue is kept");
    assert_eq!(queue.message_count(), 2000);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_amqp_with_a_wrong_password_says_so() {
    let broker = TestBroker::start().await.unwrap();
    let url = broker.amqp_url().replace("guest:guest", "guest:wrong");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["bench", "amqp", "--url", &url, "--messages", "10"])
        .output()
        .await
        .expect("run ferry bench amqp");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("403") && stderr.contains("password"),
        "{stderr}"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_amqp_with_an_unreadable_broker_pid_says_so() {
    let broker = TestBroker::start().await.unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "bench",
            "amqp",
            "--url",
            &broker.amqp_url(),
            "--messages",
            "10",
        ])
        // Above Linux's pid_max (at most 2^22), so no process has it.
        .args(["--broker-pid", "4294967295"])
        .output()
        .await
        .expect("run ferry bench amqp");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--broker-pid 4294967295"), "{stderr}");
    broker.stop().await;
}

/// A broker with Kafka SSL and AMQPS listeners (certificate for `localhost` from
/// `ferry::tls::generate`), SASL required from everyone, and the user `bench`.
async fn secured_broker(dir: &std::path::Path) -> (TestBroker, std::path::PathBuf) {
    let generated = ferry::tls::generate::generate(&ferry::tls::generate::CertRequest {
        dns: vec!["localhost".into()],
        // Metadata sends clients to the listener's own address, 127.0.0.1.
        ips: vec!["127.0.0.1".parse().unwrap()],
        clients: vec![],
        out: dir.to_path_buf(),
        days: 2,
        force: false,
    })
    .unwrap();
    let g = generated.clone();
    let broker = TestBroker::with(move |b| {
        b.configure(move |c| {
            c.kafka_tls_listen = "127.0.0.1:0".into();
            c.amqp_tls_listen = "127.0.0.1:0".into();
            c.tls.cert_file = g.server_cert.display().to_string();
            c.tls.key_file = g.server_key.display().to_string();
            c.kafka.allow_anonymous = ferry::config::AnonymousAccess::Never;
            c.users = vec![ferry::config::UserSettings {
                name: "bench".into(),
                password: "bench-secret".into(),
                password_hash: String::new(),
                tags: vec![],
            }];
        })
    })
    .await
    .unwrap();
    (broker, generated.ca_cert)
}

async fn run_bench(args: &[&str]) -> std::process::Output {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("bench")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ferry bench");
    tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("ferry bench did not finish within 120 s")
        .expect("ferry bench output")
}

/// `--tls --cacert` and `--sasl-*` put every bench connection on SASL_SSL: the broker refuses
/// anonymous clients, so records only get through when the bench signs in, with either
/// mechanism family; a wrong password is reported as an authentication failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_kafka_runs_over_sasl_ssl() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, ca) = secured_broker(dir.path()).await;
    let bootstrap = format!("localhost:{}", broker.kafka_tls_addr().unwrap().port());
    let ca = ca.display().to_string();
    for mechanism in ["SCRAM-SHA-512", "PLAIN"] {
        let out = run_bench(&[
            "kafka",
            "-b",
            &bootstrap,
            "--tls",
            "--cacert",
            &ca,
            "--sasl-mechanism",
            mechanism,
            "--sasl-user",
            "bench",
            "--sasl-password",
            "bench-secret",
            "--records",
            "2000",
            "--sizes",
            "1KiB",
            "--partitions",
            "2",
            "--latency-secs",
            "0.5",
            "--json",
        ])
        .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{mechanism}: {stderr}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["settings"]["security_protocol"], "SASL_SSL");
        assert_eq!(report["settings"]["sasl_mechanism"], mechanism);
        let case = &report["cases"][0];
        assert_eq!(case["produce"]["records"], 2000, "{case:#}");
        assert_eq!(case["consume"]["records"], 2000, "{case:#}");
        assert!(case["e2e"]["records"].as_u64().unwrap() > 0, "{case:#}");
    }

    let wrong = run_bench(&[
        "kafka",
        "-b",
        &bootstrap,
        "--tls",
        "--cacert",
        &ca,
        "--sasl-mechanism",
        "SCRAM-SHA-256",
        "--sasl-user",
        "bench",
        "--sasl-password",
        "nope",
        "--records",
        "10",
    ])
    .await;
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success());
    assert!(stderr.contains("SaslAuthenticate failed"), "{stderr}");
    // Without SASL the broker lets nothing through (anonymous is off).
    let anonymous = run_bench(&[
        "kafka",
        "-b",
        &bootstrap,
        "--tls",
        "--cacert",
        &ca,
        "--records",
        "10",
    ])
    .await;
    assert!(!anonymous.status.success());
    broker.stop().await;
}

/// `amqps://` URLs connect with TLS, trusting `--cacert`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_amqp_runs_over_amqps() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, ca) = secured_broker(dir.path()).await;
    let url = format!(
        "amqps://bench:bench-secret@localhost:{}/%2f",
        broker.amqp_tls_addr().unwrap().port()
    );
    let ca = ca.display().to_string();
    let report = bench_amqp_json(&[
        "--url",
        &url,
        "--cacert",
        &ca,
        "--messages",
        "2000",
        "--size",
        "1KiB",
    ])
    .await;
    assert!(report["url"]
        .as_str()
        .unwrap()
        .starts_with("amqps://bench@localhost:"));
    let case = &report["cases"][0];
    assert_eq!(case["publish"]["messages"], 2000, "{case:#}");
    assert_eq!(case["consume"]["messages"], 2000, "{case:#}");

    // The plaintext bench client cannot talk to the TLS port.
    let plain = run_bench(&[
        "amqp",
        "--url",
        &url.replace("amqps://", "amqp://"),
        "--messages",
        "10",
        "--timeout",
        "5",
    ])
    .await;
    assert!(!plain.status.success());
    broker.stop().await;
}
