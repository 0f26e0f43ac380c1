//! Issue 12, storage: names whose escaped directory name does not fit the filesystem, storage
//! errors that must not show a client where the data lives, and file descriptors bounded by
//! what is active.

use std::path::Path;

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use reqwest::{Method, StatusCode};
use serde_json::json;

use super::SERIAL;
use ferry::testing::TestBroker;

#[path = "../common/mod.rs"]
mod common;
use common::admin::admin_call as admin;
use common::amqp::{
    amqp_code, channel, confirm_mode, connect, declare, declare_durable, get_body,
    publish_confirmed,
};
use common::kafka_raw;

/// Percent-encodes every byte, so any name fits a URL path segment.
fn path_segment(name: &str) -> String {
    name.bytes().map(|b| format!("%{b:02X}")).collect()
}

async fn start_in(dir: &Path) -> TestBroker {
    TestBroker::with(|b| b.data_dir(dir)).await.expect("broker")
}

/// A queue.declare whose refusal the test expects.
async fn try_declare(ch: &lapin::Channel, name: &str) -> Result<lapin::Queue, lapin::Error> {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
}

/// Publishes `body` persistently to `queue` through the default exchange, confirmed.
async fn publish(ch: &lapin::Channel, queue: &str, body: &[u8]) {
    let props = BasicProperties::default().with_delivery_mode(2);
    assert!(
        publish_confirmed(ch, "", queue, body, props).await,
        "{queue}: nacked"
    );
}

/// 127 x `ü` is 254 bytes, a legal AMQP name, but 762 bytes once escaped for a directory; 90 x
/// `%` is 270. Both used to fail with 541 (closing the connection) and the data path in the
/// text. They are ordinary queues now, through AMQP and the admin API, and survive a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_names_too_long_to_escape_into_a_directory_work_and_survive_a_restart() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let umlauts = "ü".repeat(127);
    let percents = "%".repeat(90);
    let via_api = format!("{}-api", "é".repeat(125));
    assert!(umlauts.len() <= 255 && percents.len() <= 255 && via_api.len() <= 255);

    let broker = start_in(dir.path()).await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    confirm_mode(&ch).await;
    for name in [&umlauts, &percents] {
        declare_durable(&ch, name, FieldTable::default()).await;
    }
    let (status, body) = admin(
        &broker,
        Method::PUT,
        &format!("/api/queues/%2F/{}", path_segment(&via_api)),
        Some(json!({"durable": true})),
    )
    .await;
    assert!(status.is_success(), "{status}: {body}");
    for name in [&umlauts, &percents, &via_api] {
        publish(&ch, name, name.as_bytes()).await;
    }
    // A second message in one queue is read before the restart: the rest must come back.
    publish(&ch, &umlauts, b"second").await;
    assert_eq!(get_body(&ch, &umlauts).await, umlauts.as_bytes());
    let (status, body) = admin(
        &broker,
        Method::GET,
        &format!("/api/queues/%2F/{}", path_segment(&percents)),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["name"], json!(percents));
    let _ = conn.close(200, "bye".into()).await;
    broker.stop().await;

    let broker = start_in(dir.path()).await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    confirm_mode(&ch).await;
    assert_eq!(get_body(&ch, &umlauts).await, b"second");
    assert_eq!(get_body(&ch, &percents).await, percents.as_bytes());
    assert_eq!(get_body(&ch, &via_api).await, via_api.as_bytes());
    // Deleting one leaves no directory behind and does not touch the others.
    ch.queue_delete(percents.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("queue.delete");
    publish(&ch, &via_api, b"after delete").await;
    assert_eq!(get_body(&ch, &via_api).await, b"after delete");
    let _ = conn.close(200, "bye".into()).await;
    broker.stop().await;
    let queue_dirs = walk_dirs(&dir.path().join("queues"));
    assert_eq!(queue_dirs, 2, "two queues left, two log directories");
}

/// Directories two levels under `root` (one per queue log).
fn walk_dirs(root: &Path) -> usize {
    std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|vhost| vhost.path().is_dir())
        .flat_map(|vhost| {
            std::fs::read_dir(vhost.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .filter(|q| q.path().is_dir())
        .count()
}

/// A storage failure answers with what failed, never with where the data lives: the path is
/// the operator's business (and in the broker's log), not a peer's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_errors_do_not_show_clients_a_filesystem_path() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = start_in(dir.path()).await;
    // A file where the default vhost's queue directory belongs makes every queue creation in
    // it fail inside the filesystem.
    let vhost_dir = dir.path().join("queues").join("%2F");
    let _ = std::fs::remove_dir_all(&vhost_dir);
    std::fs::write(&vhost_dir, b"in the way").unwrap();
    let data_path = dir.path().to_string_lossy().into_owned();

    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let err = try_declare(&ch, "blocked")
        .await
        .expect_err("the queue cannot be created");
    assert_eq!(amqp_code(&err), Some(541), "{err:?}");
    let text = format!("{err} {err:?}");
    assert!(text.contains("storage error"), "{text}");
    assert!(!text.contains(&data_path), "{text}");

    let (status, body) = admin(
        &broker,
        Method::PUT,
        "/api/queues/%2F/blocked-api",
        Some(json!({"durable": true})),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    let text = body.to_string();
    assert!(text.contains("storage error"), "{text}");
    assert!(!text.contains(&data_path), "{text}");
    broker.stop().await;
}

fn kafka_admin(
    broker: &TestBroker,
) -> rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> {
    rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", broker.kafka_bootstrap())
        .create()
        .expect("admin client")
}

/// Open file descriptors of this process (the in-process broker's included).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

fn partition_dirs(data: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data.join("logs"))
        .expect("logs dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Issue 12: one anonymous CreatePartitions to 100,000 used to push the broker to 19,860 fds
/// and leave 4,613 orphan directories. Past `kafka.max_partitions` / `amqp.max_queues`,
/// creation is refused before anything is written: POLICY_VIOLATION for Kafka, RabbitMQ's
/// 406 "queue limit" for AMQP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_and_queue_limits_refuse_before_touching_the_disk() {
    use rdkafka::admin::{AdminOptions, NewPartitions, NewTopic, TopicReplication};
    use rdkafka::error::RDKafkaErrorCode;

    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::with(|b| {
        b.data_dir(dir.path()).configure(|c| {
            c.kafka.max_partitions = 20;
            c.amqp.max_queues = 3;
        })
    })
    .await
    .expect("broker");
    let admin_client = kafka_admin(&broker);
    let opts = AdminOptions::new();
    let made = admin_client
        .create_topics(
            [&NewTopic::new("fits", 15, TopicReplication::Fixed(1))],
            &opts,
        )
        .await
        .unwrap();
    assert!(made[0].is_ok(), "{made:?}");
    let refused = admin_client
        .create_topics(
            [&NewTopic::new("too-many", 6, TopicReplication::Fixed(1))],
            &opts,
        )
        .await
        .unwrap();
    assert!(
        matches!(refused[0], Err((_, RDKafkaErrorCode::PolicyViolation))),
        "{refused:?}"
    );
    let fds_before = open_fds();
    let huge = admin_client
        .create_partitions([&NewPartitions::new("fits", 100_000)], &opts)
        .await
        .unwrap();
    assert!(
        matches!(huge[0], Err((_, RDKafkaErrorCode::PolicyViolation))),
        "{huge:?}"
    );
    // The broker runs in this process: the refusal opened nothing (3 fds a partition before).
    let fds_after = open_fds();
    assert!(
        fds_after <= fds_before + 8,
        "fds went from {fds_before} to {fds_after}"
    );
    let grown = admin_client
        .create_partitions([&NewPartitions::new("fits", 20)], &opts)
        .await
        .unwrap();
    assert!(grown[0].is_ok(), "{grown:?}");
    let expected: Vec<String> = {
        let mut v: Vec<String> = (0..20).map(|p| format!("fits-{p}")).collect();
        v.sort();
        v
    };
    assert_eq!(
        partition_dirs(dir.path()),
        expected,
        "no orphan directories"
    );

    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    for name in ["q1", "q2", "q3"] {
        declare(&ch, name).await;
    }
    let err = try_declare(&ch, "q4").await.expect_err("beyond the limit");
    assert_eq!(amqp_code(&err), Some(406), "{err:?}");
    let text = format!("{err:?}");
    assert!(text.contains("PRECONDITION_FAILED"), "{text}");
    assert!(
        text.contains("queue limit in cluster (3) is reached"),
        "{text}"
    );
    // Only the channel closed: the connection declares again once a queue is gone.
    let ch = channel(&conn).await;
    ch.queue_delete("q1".into(), QueueDeleteOptions::default())
        .await
        .expect("delete");
    declare(&ch, "q4").await;
    let _ = conn.close(200, "bye".into()).await;
    broker.stop().await;
}

/// Issue 12: any client could raise `max.message.bytes` to 100 MiB. Topic configs are capped at
/// `kafka.max_message_bytes_limit` on every path: CreateTopics, AlterConfigs and
/// IncrementalAlterConfigs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_message_bytes_is_capped_at_the_broker_limit() {
    use rdkafka::admin::TopicReplication;
    use rdkafka::admin::{AdminOptions, AlterConfig, NewTopic, ResourceSpecifier};
    use rdkafka::error::RDKafkaErrorCode;

    let _serial = SERIAL.lock().await;
    let broker = TestBroker::start().await.expect("broker");
    let admin_client = kafka_admin(&broker);
    let opts = AdminOptions::new();
    let hundred_mib = (100 * 1024 * 1024).to_string();
    let refused = admin_client
        .create_topics(
            [&NewTopic::new("big", 1, TopicReplication::Fixed(1))
                .set("max.message.bytes", &hundred_mib)],
            &opts,
        )
        .await
        .unwrap();
    assert!(
        matches!(refused[0], Err((_, RDKafkaErrorCode::PolicyViolation))),
        "{refused:?}"
    );
    assert!(broker.core().topic("big").is_none());
    let made = admin_client
        .create_topics(
            [&NewTopic::new("capped", 1, TopicReplication::Fixed(1))
                .set("max.message.bytes", "2000000")],
            &opts,
        )
        .await
        .unwrap();
    assert!(made[0].is_ok(), "{made:?}");
    let altered = admin_client
        .alter_configs(
            [&AlterConfig::new(ResourceSpecifier::Topic("capped"))
                .set("max.message.bytes", &hundred_mib)],
            &opts,
        )
        .await
        .unwrap();
    // rdkafka 0.39 reports every AlterConfigs resource as Ok whatever the broker answered
    // (it never reads the per-resource error), so the proof is what the topic reads back.
    assert_eq!(altered.len(), 1);
    let described = admin_client
        .describe_configs([&ResourceSpecifier::Topic("capped")], &opts)
        .await
        .unwrap();
    let resource = described[0].as_ref().expect("described");
    let value = resource
        .get("max.message.bytes")
        .and_then(|e| e.value.clone());
    assert_eq!(value.as_deref(), Some("2000000"));

    // IncrementalAlterConfigs (what kafka-configs.sh sends), which rdkafka does not expose.
    use kafka_protocol::messages::incremental_alter_configs_request::{
        AlterConfigsResource, AlterableConfig,
    };
    use kafka_protocol::messages::{
        ApiKey, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
    };
    use kafka_protocol::protocol::StrBytes;
    let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_static_str("capped"))
            .with_configs(vec![AlterableConfig::default()
                .with_name(StrBytes::from_static_str("max.message.bytes"))
                .with_config_operation(0)
                .with_value(Some(StrBytes::from_string(hundred_mib.clone())))]),
    ]);
    let mut raw = kafka_raw::RawKafka::connect(broker.kafka_addr()).await;
    let answer: IncrementalAlterConfigsResponse =
        raw.call(ApiKey::IncrementalAlterConfigs, 1, &request).await;
    let result = &answer.responses[0];
    assert_eq!(result.error_code, 44, "POLICY_VIOLATION: {result:?}");
    let message = result.error_message.as_ref().map(|m| m.to_string());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("kafka.max_message_bytes_limit")),
        "{message:?}"
    );
    let topic = broker.core().topic("capped").unwrap();
    assert_eq!(topic.log_config().max_message_bytes, 2_000_000);
    broker.stop().await;
}

/// Directories of partitions no topic owns (a creation or deletion cut short by a crash) are
/// removed at start and logged; partitions of known topics and unrelated entries stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_partition_directories_are_removed_at_start() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = start_in(dir.path()).await;
    broker
        .core()
        .create_topic("kept", 1, Default::default())
        .await
        .expect("topic");
    broker.stop().await;
    let logs = dir.path().join("logs");
    for orphan in ["ghost-0", "kept-7"] {
        std::fs::create_dir_all(logs.join(orphan)).unwrap();
        std::fs::write(logs.join(orphan).join("00000000000000000000.log"), b"x").unwrap();
    }
    std::fs::create_dir_all(logs.join("not-a-partition")).unwrap();

    let broker = start_in(dir.path()).await;
    assert_eq!(
        partition_dirs(dir.path()),
        vec!["kept-0".to_string(), "not-a-partition".into()]
    );
    broker.stop().await;
}

/// `ferry serve` raises its soft open-files limit to the hard one at start (here from 256).
#[test]
fn serve_raises_the_soft_open_files_limit_to_the_hard_limit() {
    let hard = std::fs::read_to_string("/proc/self/limits")
        .expect("/proc/self/limits")
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .expect("Max open files line");
    let dir = tempfile::tempdir().unwrap();
    let serve = LimitedServe::start(dir.path(), "-Sn 256");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", serve.pid));
    let logged = serve
        .lines
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("open-files limit"))
        .cloned()
        .expect("ferry logged its open-files limit");
    serve.stop();
    let limits = limits.expect("the child's limits");
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
        .expect("Max open files line");
    assert_eq!(soft, hard, "{limits}");
    assert!(logged.contains("soft_before=256"), "{logged}");
}

/// Open descriptors of process `pid`, from `/proc/<pid>/fd`: all of them, and those on
/// segment and index files.
fn fds_of(pid: u32) -> (usize, usize) {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return (0, 0);
    };
    let (mut all, mut log_files) = (0, 0);
    for entry in dir.flatten() {
        all += 1;
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        let ext = target.extension().and_then(|e| e.to_str()).unwrap_or("");
        if matches!(ext, "log" | "index" | "timeindex") {
            log_files += 1;
        }
    }
    (all, log_files)
}

/// Descriptors of `pid` numbered below `limit`: the ones that count against `ulimit -n`. A
/// descriptor the child inherited above the limit (a test harness's pipe, say) is open but
/// leaves a number below the limit free, so counting every entry would call the table full
/// one slot early.
fn fds_numbered_below(pid: u32, limit: usize) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<usize>().ok())
        .filter(|&fd| fd < limit)
        .count()
}

/// A `ferry serve` child started under `ulimit <limits>`, with what it logged: every line, its
/// log file budget and its Kafka address.
struct LimitedServe {
    child: std::process::Child,
    pid: u32,
    /// `log.max_open_files` as logged at start, if it was.
    budget: Option<usize>,
    kafka: std::net::SocketAddr,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    sampler: Option<FdSampler>,
}

/// Samples a process's descriptors every millisecond until told to stop, and answers the peak
/// (all, log files).
type FdSampler = (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<(usize, usize)>,
);

impl LimitedServe {
    fn start(data: &Path, limits: &str) -> LimitedServe {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        use std::time::Duration;

        let script = format!(
            "ulimit {limits} && exec '{}' serve --data-dir '{}' --kafka-listen 127.0.0.1:0 \
             --amqp-listen 127.0.0.1:0 --native-listen 127.0.0.1:0 --http-listen 127.0.0.1:0",
            env!("CARGO_BIN_EXE_ferry"),
            data.display()
        );
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ferry serve");
        // `exec` keeps the pid: this is the broker's.
        let pid = child.id();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let logged = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                logged.lock().unwrap().push(line.clone());
                if line.contains("max_open_files=")
                    || (line.contains("listening") && line.contains("kafka"))
                {
                    let _ = tx.send(line);
                }
            }
        });
        // The budget is logged before the listeners are.
        let (mut budget, mut kafka) = (None, None);
        while kafka.is_none() {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("ferry logged its Kafka address");
            let field = |name: &str| -> Option<String> {
                let rest = line.split(&format!("{name}=")).nth(1)?;
                Some(rest.chars().take_while(|c| !c.is_whitespace()).collect())
            };
            if let Some(b) = field("max_open_files") {
                budget = b.parse::<usize>().ok();
            }
            if line.contains("listening") {
                kafka = field("addr").and_then(|a| a.parse().ok());
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut peak = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    let (all, log_files) = fds_of(pid);
                    peak = (peak.0.max(all), peak.1.max(log_files));
                    std::thread::sleep(Duration::from_millis(1));
                }
                peak
            })
        };
        LimitedServe {
            child,
            pid,
            budget,
            kafka: kafka.unwrap(),
            lines,
            sampler: Some((stop, sampler)),
        }
    }

    /// Stops the broker (SIGTERM, a clean shutdown); the peak descriptors seen (all, log
    /// files) and the ERROR lines it logged.
    fn stop(mut self) -> ((usize, usize), Vec<String>) {
        let peak = match self.sampler.take() {
            Some((stop, sampler)) => {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                sampler.join().expect("fd sampler")
            }
            None => (0, 0),
        };
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let errors = self
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("ERROR"))
            .cloned()
            .collect();
        (peak, errors)
    }
}

impl Drop for LimitedServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fd_topic(t: usize) -> String {
    format!("fd-{t:04}")
}

/// Creates the one-partition topics [`fd_topic`] names for `topics`, in one CreateTopics.
async fn create_fd_topics(client: &mut kafka_raw::RawKafka, topics: &[usize]) {
    use kafka_protocol::messages::create_topics_request::CreatableTopic;
    use kafka_protocol::messages::{ApiKey, CreateTopicsRequest, CreateTopicsResponse, TopicName};
    use kafka_protocol::protocol::StrBytes;

    let req = CreateTopicsRequest::default()
        .with_timeout_ms(30_000)
        .with_topics(
            topics
                .iter()
                .map(|&t| {
                    CreatableTopic::default()
                        .with_name(TopicName(StrBytes::from_string(fd_topic(t))))
                        .with_num_partitions(1)
                        .with_replication_factor(1)
                })
                .collect(),
        );
    let resp: CreateTopicsResponse = client.call(ApiKey::CreateTopics, 5, &req).await;
    for topic in &resp.topics {
        assert_eq!(
            topic.error_code, 0,
            "creating {:?}: {:?}",
            topic.name, topic.error_message
        );
    }
}

fn fd_value(t: usize, round: usize) -> String {
    format!("round {round} of {}", fd_topic(t))
}

/// Fetches partition 0 of every topic in `topics` from offset 0 and checks it holds exactly
/// `rounds` records, with the values [`fd_value`] gives.
async fn fetch_and_check(client: &mut kafka_raw::RawKafka, topics: &[usize], rounds: usize) {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{ApiKey, BrokerId, FetchRequest, FetchResponse, TopicName};
    use kafka_protocol::protocol::StrBytes;

    let req = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_max_bytes(64 << 20)
        .with_topics(
            topics
                .iter()
                .map(|&t| {
                    FetchTopic::default()
                        .with_topic(TopicName(StrBytes::from_string(fd_topic(t))))
                        .with_partitions(vec![FetchPartition::default()
                            .with_partition(0)
                            .with_fetch_offset(0)
                            .with_partition_max_bytes(1 << 20)])
                })
                .collect(),
        );
    let resp: FetchResponse = client.call(ApiKey::Fetch, 11, &req).await;
    assert_eq!(resp.responses.len(), topics.len());
    for (topic, &t) in resp.responses.iter().zip(topics) {
        let name = fd_topic(t);
        assert_eq!(topic.topic.0.as_str(), name);
        let p = &topic.partitions[0];
        assert_eq!(p.error_code, 0, "fetching {name}");
        assert_eq!(p.high_watermark, rounds as i64, "fetching {name}");
        let records = p.records.as_deref().unwrap_or_default();
        for round in 0..rounds {
            let want = fd_value(t, round);
            assert!(
                records.windows(want.len()).any(|w| w == want.as_bytes()),
                "{name} lacks {want:?}"
            );
        }
    }
}

/// Issue 12: every partition log held three descriptors for its whole life, so under
/// `ulimit -n 1024` topic creation failed at 335 topics. Segment and index files now share one
/// budget (`log.max_open_files`, by default half the open-files limit), idle ones closed and
/// reopened on use. A `ferry serve` whose soft *and* hard limit are 256 creates 2,000
/// one-partition topics, takes a record on each (twice, so evicted active segments are
/// written again), serves all of them back, and does so again after a restart, its segment and
/// index descriptors never past the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_partitions_fit_in_256_file_descriptors() {
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use ferry::log::{encode_batch, SimpleRecord};
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
    use kafka_protocol::protocol::StrBytes;

    const TOPICS: usize = 2_000;
    const PER_REQUEST: usize = 50;
    const LIMIT: usize = 256;
    const ROUNDS: usize = 2;

    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let all_topics: Vec<usize> = (0..TOPICS).collect();
    let deadline = Instant::now() + Duration::from_secs(600);

    let serve = LimitedServe::start(dir.path(), &format!("-n {LIMIT}"));
    let logged_budget = serve.budget;
    let mut client = kafka_raw::RawKafka::connect(serve.kafka).await;
    for chunk in all_topics.chunks(PER_REQUEST) {
        create_fd_topics(&mut client, chunk).await;
        assert!(Instant::now() < deadline, "creating topics took too long");
    }
    for round in 0..ROUNDS {
        for chunk in all_topics.chunks(PER_REQUEST) {
            let topic_data = chunk
                .iter()
                .map(|&t| {
                    let batch = encode_batch(&[SimpleRecord {
                        key: None,
                        value: Some(Bytes::from(fd_value(t, round))),
                        headers: vec![],
                        timestamp: 1_700_000_000_000,
                    }]);
                    TopicProduceData::default()
                        .with_name(TopicName(StrBytes::from_string(fd_topic(t))))
                        .with_partition_data(vec![PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(batch.freeze()))])
                })
                .collect();
            let req = ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(30_000)
                .with_topic_data(topic_data);
            let resp: ProduceResponse = client.call(ApiKey::Produce, 8, &req).await;
            assert_eq!(resp.responses.len(), chunk.len());
            for topic in &resp.responses {
                let p = &topic.partition_responses[0];
                assert_eq!(p.error_code, 0, "producing to {:?}", topic.name);
                assert_eq!(p.base_offset, round as i64, "producing to {:?}", topic.name);
            }
            assert!(Instant::now() < deadline, "producing took too long");
        }
    }
    for chunk in all_topics.chunks(PER_REQUEST) {
        fetch_and_check(&mut client, chunk, ROUNDS).await;
        assert!(Instant::now() < deadline, "fetching took too long");
    }
    drop(client);
    let (peak, errors) = serve.stop();

    // Recovery opens every partition again, under the same limit.
    let serve = LimitedServe::start(dir.path(), &format!("-n {LIMIT}"));
    let mut client = kafka_raw::RawKafka::connect(serve.kafka).await;
    for chunk in all_topics.chunks(PER_REQUEST) {
        fetch_and_check(&mut client, chunk, ROUNDS).await;
        assert!(
            Instant::now() < deadline,
            "fetching after restart took too long"
        );
    }
    drop(client);
    let (peak_after_restart, errors_after_restart) = serve.stop();

    assert!(errors.is_empty(), "the broker logged errors: {errors:?}");
    assert!(
        errors_after_restart.is_empty(),
        "the broker logged errors after restart: {errors_after_restart:?}"
    );
    // 2,000 partitions held 6,000 descriptors before. Now idle segment and index files stay
    // within the budget; files with I/O in flight are never closed, so the budget may be
    // passed by at most the partitions one request touches at once (each pins its segment
    // while its group commit writes and fsyncs). And the process stays within its limit.
    let budget = LIMIT / 2;
    for (all, log_files) in [peak, peak_after_restart] {
        assert!(
            log_files <= budget + PER_REQUEST,
            "segment and index files open at the peak: {peak:?} then {peak_after_restart:?} \
             (all descriptors, log files), for a budget of {budget}"
        );
        assert!(log_files >= budget / 2, "the budget was used: {log_files}");
        assert!(all < LIMIT, "{all} descriptors at the peak");
    }
    assert_eq!(
        logged_budget,
        Some(budget),
        "the default budget is half the limit"
    );
    eprintln!("peak descriptors (all, log files): {peak:?}, after restart {peak_after_restart:?}");
}

/// Issue 12: 20,000 one-partition topics took ~241 MB, about 10 KB a partition, so 100,000
/// partitions would need over a gigabyte before holding a record. Most of it was a writer
/// task and its queue, a topic router task and eight labelled metric series per partition,
/// idle or not. Now writers and routers start on the first record and retire when idle, and an
/// empty partition registers no metrics: 10,000 partitions stay under 5 KB each (measured ~3
/// KB), and every one of them still takes, routes and serves records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_partitions_cost_a_few_kilobytes_each() {
    const TOPICS: usize = 100;
    const PARTITIONS: u32 = 100;
    const BOUND_PER_PARTITION: u64 = 5_000;

    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::with(|b| {
        b.data_dir(dir.path())
            .configure(|c| c.kafka.max_partitions = 0)
    })
    .await
    .expect("broker");
    let name = |t: usize| format!("idle-{t:03}");
    let before = super::rss();
    for t in 0..TOPICS {
        broker
            .core()
            .create_topic(&name(t), PARTITIONS, Default::default())
            .await
            .expect("topic");
    }
    let after = super::rss();
    let partitions = TOPICS as u64 * PARTITIONS as u64;
    let per_partition = after.saturating_sub(before) / partitions;
    eprintln!(
        "{partitions} partitions: RSS {} -> {} MB, {per_partition} bytes a partition",
        before / super::MB,
        after / super::MB
    );
    assert!(
        per_partition < BOUND_PER_PARTITION,
        "{per_partition} bytes a partition"
    );

    // Idle partitions still work: a queue bound to one topic gets what a Kafka producer
    // writes to any partition of it, and a fetch serves it back.
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "watcher").await;
    ch.queue_bind(
        "watcher".into(),
        name(7).as_str().into(),
        "#".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    let producer: rdkafka::producer::FutureProducer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", broker.kafka_bootstrap())
        .create()
        .expect("producer");
    for (t, p) in [(7, 0), (7, 99), (42, 13)] {
        let value = format!("{}/{p}", name(t));
        let topic = name(t);
        let record = rdkafka::producer::FutureRecord::to(&topic)
            .partition(p)
            .key("k")
            .payload(&value);
        producer
            .send(record, std::time::Duration::from_secs(10))
            .await
            .expect("delivered");
        let log = broker.core().partition(&topic, p).unwrap();
        let slice = log.read(0, 1 << 20).unwrap();
        assert!(
            slice
                .bytes
                .windows(value.len())
                .any(|w| w == value.as_bytes()),
            "{value} not in the log"
        );
    }
    let mut routed = Vec::new();
    for _ in 0..2 {
        routed.push(get_body(&ch, "watcher").await);
    }
    routed.sort();
    assert_eq!(
        routed,
        vec![b"idle-007/0".to_vec(), b"idle-007/99".to_vec()]
    );
    let _ = conn.close(200, "bye".into()).await;
    broker.stop().await;
}

/// Produces `fd_value(t, round)` to partition 0 of `fd_topic(t)`; answers the partition's
/// error code and base offset.
async fn produce_value(client: &mut kafka_raw::RawKafka, t: usize, round: usize) -> (i16, i64) {
    use bytes::Bytes;
    use ferry::log::{encode_batch, SimpleRecord};
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
    use kafka_protocol::protocol::StrBytes;

    let batch = encode_batch(&[SimpleRecord {
        key: None,
        value: Some(Bytes::from(fd_value(t, round))),
        headers: vec![],
        timestamp: 1_700_000_000_000,
    }]);
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(fd_topic(t))))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(batch.freeze()))])]);
    let resp: ProduceResponse = client.call(ApiKey::Produce, 8, &req).await;
    let p = &resp.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// Issue 12: a segment whose file could not be reopened (its descriptor closed to stay within
/// the budget, then none to be had) fail-stopped its partition for good, though nothing had
/// been written and the shortage passed. Now the append fails alone with
/// KAFKA_STORAGE_ERROR and the next one, once descriptors are back, is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_that_cannot_be_reopened_fails_the_append_not_the_partition() {
    use std::time::{Duration, Instant};

    const LIMIT: usize = 64;
    // More than the budget (32 files) of other topics' segments get written after topic 0's.
    const TOPICS: usize = 40;

    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let serve = LimitedServe::start(dir.path(), &format!("-n {LIMIT}"));
    let mut client = kafka_raw::RawKafka::connect(serve.kafka).await;
    create_fd_topics(&mut client, &(0..TOPICS).collect::<Vec<_>>()).await;
    assert_eq!(produce_value(&mut client, 0, 0).await, (0, 0));
    // Writing every other topic makes topic 0's files the least recently used: closed.
    for t in 1..TOPICS {
        assert_eq!(produce_value(&mut client, t, 0).await, (0, 0), "topic {t}");
    }
    let segment_of_topic_0 = || -> Vec<String> {
        std::fs::read_dir(format!("/proc/{}/fd", serve.pid))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .map(|target| target.to_string_lossy().into_owned())
            .filter(|t| t.contains(&format!("{}-0/", fd_topic(0))) && t.ends_with(".log"))
            .collect()
    };
    assert_eq!(
        segment_of_topic_0(),
        Vec::<String>::new(),
        "topic 0's segment was closed"
    );

    // Connections take the broker's last descriptors: accept fails with EMFILE.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut hogs = Vec::new();
    while fds_numbered_below(serve.pid, LIMIT) < LIMIT {
        assert!(
            Instant::now() < deadline,
            "the broker never ran out of descriptors"
        );
        for _ in 0..4 {
            hogs.push(
                tokio::net::TcpStream::connect(serve.kafka)
                    .await
                    .expect("connect"),
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, _) = produce_value(&mut client, 0, 1).await;
    assert_eq!(
        code, 56,
        "KAFKA_STORAGE_ERROR while no descriptor can be had"
    );

    drop(hogs);
    while fds_numbered_below(serve.pid, LIMIT) > LIMIT - 8 {
        assert!(
            Instant::now() < deadline,
            "the broker kept the closed connections"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The same partition takes records again, from the offset the refused one would have had.
    assert_eq!(produce_value(&mut client, 0, 1).await, (0, 1));
    assert_eq!(produce_value(&mut client, 0, 2).await, (0, 2));
    fetch_and_check(&mut client, &[0], 3).await;
    drop(client);
    let (_, errors) = serve.stop();
    assert!(
        !errors.iter().any(|l| l.contains("fail-stopped")),
        "a partition fail-stopped: {errors:?}"
    );
}
