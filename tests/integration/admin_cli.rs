//! The `ferry` admin CLI (the built binary) against a running `TestBroker`: topic, queue and
//! group commands through the admin API, DLQ replay moving dead letters back with nothing lost
//! or duplicated (set up and checked with lapin), and produce/consume over the Kafka protocol.

use std::collections::BTreeSet;
use std::time::Duration;

use ferry::testing::TestBroker;
use futures::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

use crate::common;

/// The binary's exit status, stdout and stderr.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }
}

/// Commits `offset` for partition 0 of `topic` as consumer group `group` (rdkafka, no
/// subscription), leaving an empty group with that offset.
async fn commit_offset(broker: &TestBroker, group: &str, topic: &str, offset: i64) {
    let (bootstrap, group, topic) = (
        broker.kafka_bootstrap(),
        group.to_string(),
        topic.to_string(),
    );
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(offset))
            .unwrap();
        c.commit(&tpl, CommitMode::Sync).unwrap();
    })
    .await
    .unwrap();
}

/// Runs `ferry ARGS` against `broker`'s admin API (via FERRY_ADMIN_URL).
async fn ferry(broker: &TestBroker, args: &[&str]) -> Run {
    ferry_with_input(broker, args, None).await
}

async fn ferry_with_input(broker: &TestBroker, args: &[&str], stdin: Option<&str>) -> Run {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(args)
        .env("FERRY_ADMIN_URL", broker.http_url())
        .env_remove("FERRY_ADMIN_USER")
        .env_remove("FERRY_ADMIN_PASSWORD")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("the ferry binary starts");
    let mut input = child.stdin.take().expect("stdin is piped");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await.unwrap();
    }
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("ferry finished within 60 s")
        .unwrap();
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs and insists on success.
async fn ok(broker: &TestBroker, args: &[&str]) -> Run {
    let r = ferry(broker, args).await;
    assert!(
        r.ok,
        "ferry {args:?} failed:\nstdout: {}\nstderr: {}",
        r.stdout, r.stderr
    );
    r
}

/// Waits (bounded) until queue `name` has `ready` ready messages, per the admin API.
async fn wait_ready(broker: &TestBroker, name: &str, ready: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let q = ok(broker, &["queue", "describe", name, "--json"])
            .await
            .json();
        if q["ready"].as_u64() == Some(ready) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue {name} never reached {ready} ready: {q}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_commands_create_list_describe_delete() {
    let broker = TestBroker::start().await.unwrap();
    let r = ok(
        &broker,
        &[
            "topic",
            "create",
            "orders",
            "-p",
            "3",
            "-c",
            "retention.ms=60000",
        ],
    )
    .await;
    assert!(r.stdout.contains("created topic orders"), "{}", r.stdout);

    let list = ok(&broker, &["topic", "list", "--json"]).await.json();
    let t = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "orders")
        .unwrap_or_else(|| panic!("orders not listed: {list}"));
    assert_eq!(t["partition_count"], 3);

    // The table is aligned: the header and the row start their columns at the same place.
    let table = ok(&broker, &["topic", "list"]).await.stdout;
    let header = table.lines().next().unwrap();
    let row = table.lines().find(|l| l.starts_with("orders")).unwrap();
    assert_eq!(header.find("PARTITIONS"), row.find('3'), "{table}");

    let d = ok(&broker, &["topic", "describe", "orders", "--json"])
        .await
        .json();
    assert_eq!(d["configs"]["retention.ms"], "60000");
    assert_eq!(d["partitions"].as_array().unwrap().len(), 3);
    assert!(broker.core().topic("orders").is_some());

    let again = ferry(&broker, &["topic", "create", "orders"]).await;
    assert!(!again.ok);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);

    ok(&broker, &["topic", "delete", "orders"]).await;
    assert!(broker.core().topic("orders").is_none());
    let gone = ferry(&broker, &["topic", "describe", "orders"]).await;
    assert!(!gone.ok);
    assert!(
        gone.stderr.contains("404") && gone.stderr.contains("list"),
        "{}",
        gone.stderr
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_say_what_to_do_next() {
    let broker = TestBroker::start().await.unwrap();
    let wrong = ferry(&broker, &["queue", "list", "--password", "nope"]).await;
    assert!(!wrong.ok);
    assert!(
        wrong.stderr.contains("--user/--password"),
        "{}",
        wrong.stderr
    );

    // A port nothing listens on: bind one, note it, free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let down = ferry(&broker, &["topic", "list", "--admin-url", &url]).await;
    assert!(!down.ok);
    assert!(
        down.stderr.contains("cannot reach the admin API")
            && down.stderr.contains("ferry serve")
            && down.stderr.contains("--admin-url"),
        "{}",
        down.stderr
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_commands_declare_describe_purge_delete() {
    let broker = TestBroker::start().await.unwrap();
    ok(
        &broker,
        &[
            "queue",
            "create",
            "jobs",
            "--arg",
            "x-max-length=100",
            "--arg",
            "x-dead-letter-exchange=dlx",
        ],
    )
    .await;
    let q = ok(&broker, &["queue", "describe", "jobs", "--json"])
        .await
        .json();
    assert_eq!(q["durable"], true);
    // Numbers stay numbers, so the broker applies them.
    assert_eq!(q["arguments"]["x-max-length"], 100);
    assert_eq!(q["arguments"]["x-dead-letter-exchange"], "dlx");

    let conn = Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for i in 0..3 {
        ch.basic_publish(
            "".into(),
            "jobs".into(),
            BasicPublishOptions::default(),
            format!("j{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    wait_ready(&broker, "jobs", 3).await;
    let listed = ok(&broker, &["queue", "list"]).await.stdout;
    assert!(
        listed
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["/", "jobs", "3", "0", "0", "durable"]),
        "{listed}"
    );
    let exchanges = ok(&broker, &["exchange", "list", "--json"]).await.json();
    assert!(
        exchanges
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "amq.topic" && e["type"] == "topic"),
        "{exchanges}"
    );
    let table = ok(&broker, &["exchange", "list"]).await.stdout;
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["/", "amq.fanout", "fanout", "durable"]),
        "{table}"
    );
    let purged = ok(&broker, &["queue", "purge", "jobs", "--json"])
        .await
        .json();
    assert_eq!(purged["purged"], 3);
    // Purged messages are gone for AMQP clients too.
    let got = ch
        .basic_get("jobs".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert!(got.is_none());

    let in_use = ferry(&broker, &["queue", "delete", "jobs", "--if-empty"]).await;
    assert!(in_use.ok, "{}", in_use.stderr);
    assert!(broker.core().router().queue("/", "jobs").is_none());
    let missing = ferry(&broker, &["queue", "delete", "jobs"]).await;
    assert!(!missing.ok);
    assert!(missing.stderr.contains("404"), "{}", missing.stderr);
    conn.close(200, "bye".into()).await.unwrap();
    broker.stop().await;
}

/// Publishes `n` messages to `orders` (routed to `work`), nacks each once from `work` so it
/// dead-letters into `dead`, and returns the bodies.
async fn dead_letter_setup(broker: &TestBroker, ch: &lapin::Channel, n: usize) -> BTreeSet<String> {
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        "orders".into(),
        ExchangeKind::Direct,
        durable,
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_declare(
        "dlx".into(),
        ExchangeKind::Fanout,
        durable,
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("dlx".into()),
    );
    let qopts = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("work".into(), qopts, args).await.unwrap();
    ch.queue_declare("dead".into(), qopts, FieldTable::default())
        .await
        .unwrap();
    ch.queue_bind(
        "work".into(),
        "orders".into(),
        "new".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "dead".into(),
        "dlx".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut bodies = BTreeSet::new();
    for i in 0..n {
        let body = format!("order-{i}");
        ch.basic_publish(
            "orders".into(),
            "new".into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
        bodies.insert(body);
    }
    let mut consumer = ch
        .basic_consume(
            "work".into(),
            "nacker".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for _ in 0..n {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a delivery from work")
            .unwrap()
            .unwrap();
        d.nack(BasicNackOptions {
            requeue: false,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    ch.basic_cancel("nacker".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    wait_ready(broker, "dead", n as u64).await;
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_moves_every_dead_letter_back_exactly_once() {
    let broker = TestBroker::start().await.unwrap();
    let conn = Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let n = 25;
    let sent = dead_letter_setup(&broker, &ch, n).await;
    wait_ready(&broker, "work", 0).await;

    // `dlq list` finds the queue through work's x-dead-letter-exchange.
    let dlqs = ok(&broker, &["dlq", "list", "--json"]).await.json();
    let dead = dlqs
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "dead")
        .unwrap_or_else(|| panic!("dead not listed: {dlqs}"));
    assert_eq!(dead["dead_letters_from"], serde_json::json!(["work"]));
    assert!(!dlqs.as_array().unwrap().iter().any(|q| q["name"] == "work"));

    // Browsing shows the death and consumes nothing.
    let browsed = ok(&broker, &["dlq", "browse", "dead", "-n", "5", "--json"])
        .await
        .json();
    let browsed = browsed.as_array().unwrap();
    assert_eq!(browsed.len(), 5);
    assert_eq!(browsed[0]["death"][0]["queue"], "work");
    assert_eq!(browsed[0]["death"][0]["reason"], "rejected");
    assert_eq!(browsed[0]["death"][0]["exchange"], "orders");
    assert!(sent.contains(browsed[0]["payload"].as_str().unwrap()));
    wait_ready(&broker, "dead", n as u64).await;

    // Replay a few, then the rest: every message goes back to `work` through `orders`/`new`.
    let first = ok(&broker, &["dlq", "replay", "dead", "-n", "10", "--json"])
        .await
        .json();
    assert_eq!(first["replayed"], 10, "{first}");
    assert_eq!(first["remaining"], (n - 10) as u64);
    let rest = ok(&broker, &["dlq", "replay", "dead"]).await;
    assert!(
        rest.stdout
            .contains(&format!("replayed {} message(s)", n - 10)),
        "{}",
        rest.stdout
    );
    wait_ready(&broker, "dead", 0).await;
    wait_ready(&broker, "work", n as u64).await;

    // Consume them again: exactly the set sent, each once.
    let mut consumer = ch
        .basic_consume(
            "work".into(),
            "again".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..n {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a replayed delivery")
            .unwrap()
            .unwrap();
        seen.push(String::from_utf8(d.data.clone()).unwrap());
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), n, "duplicates among {seen:?}");
    assert_eq!(unique, sent);
    ch.basic_cancel("again".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    wait_ready(&broker, "work", 0).await;
    let q = ok(&broker, &["queue", "describe", "work", "--json"])
        .await
        .json();
    assert_eq!(q["unacked"], 0, "{q}");

    // Purge through the dlq command.
    let _ = dead_letter_again(&ch, 3).await;
    wait_ready(&broker, "dead", 3).await;
    let purged = ok(&broker, &["dlq", "purge", "dead", "--json"])
        .await
        .json();
    assert_eq!(purged["purged"], 3);
    conn.close(200, "bye".into()).await.unwrap();
    broker.stop().await;
}

/// Publishes and nacks `n` more messages through the existing setup.
async fn dead_letter_again(ch: &lapin::Channel, n: usize) -> usize {
    for i in 0..n {
        ch.basic_publish(
            "orders".into(),
            "new".into(),
            BasicPublishOptions::default(),
            format!("more-{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let mut consumer = ch
        .basic_consume(
            "work".into(),
            "nack-more".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for _ in 0..n {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a delivery")
            .unwrap()
            .unwrap();
        d.nack(BasicNackOptions {
            requeue: false,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    ch.basic_cancel("nack-more".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_reset_offsets_moves_an_empty_groups_offsets() {
    let broker = TestBroker::start().await.unwrap();
    ok(&broker, &["topic", "create", "payments"]).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.kafka_bootstrap())
        .set("message.timeout.ms", "20000")
        .create()
        .unwrap();
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for i in 0..10i64 {
        let payload = format!("p{i}");
        producer
            .send(
                FutureRecord::<(), _>::to("payments")
                    .partition(0)
                    .payload(&payload)
                    // Records 0..5 an hour ago, 5..10 now.
                    .timestamp(if i < 5 { t0 - 3_600_000 } else { t0 }),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    commit_offset(&broker, "billing", "payments", 10).await;

    let r = ok(
        &broker,
        &[
            "group",
            "reset-offsets",
            "billing",
            "--topic",
            "payments",
            "--to-earliest",
            "--json",
        ],
    )
    .await
    .json();
    assert_eq!(r["offsets"][0]["previous_offset"], 10);
    assert_eq!(r["offsets"][0]["new_offset"], 0);
    let g = ok(&broker, &["group", "describe", "billing", "--json"])
        .await
        .json();
    assert_eq!(g["offsets"][0]["committed_offset"], 0);
    assert_eq!(g["total_lag"], 10);

    let cutoff = (t0 - 60_000).to_string();
    let r = ok(
        &broker,
        &[
            "group",
            "reset-offsets",
            "billing",
            "--to-timestamp",
            &cutoff,
            "--json",
        ],
    )
    .await
    .json();
    assert_eq!(r["offsets"][0]["new_offset"], 5);
    let dry = ok(
        &broker,
        &[
            "group",
            "reset-offsets",
            "billing",
            "--to-latest",
            "--dry-run",
            "--json",
        ],
    )
    .await
    .json();
    assert_eq!(dry["offsets"][0]["new_offset"], 10);
    let g = ok(&broker, &["group", "describe", "billing", "--json"])
        .await
        .json();
    assert_eq!(g["offsets"][0]["committed_offset"], 5, "dry run committed");
    // An out-of-range offset is clamped to the log, as Kafka's tool does.
    let r = ok(
        &broker,
        &[
            "group",
            "reset-offsets",
            "billing",
            "--to-offset",
            "99",
            "--json",
        ],
    )
    .await
    .json();
    assert_eq!(r["offsets"][0]["new_offset"], 10);

    // A group with a live member refuses.
    let bootstrap = broker.kafka_bootstrap();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let (joined_tx, joined_rx) = tokio::sync::oneshot::channel::<()>();
    let member = tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "billing")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        c.subscribe(&["payments"]).unwrap();
        let mut joined = Some(joined_tx);
        while stop_rx.try_recv().is_err() {
            let _ = c.poll(Duration::from_millis(100));
            if joined.is_some() && c.assignment().map(|a| a.count() > 0).unwrap_or(false) {
                let _ = joined.take().map(|j| j.send(()));
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(20), joined_rx)
        .await
        .expect("the consumer joined")
        .unwrap();
    let busy = ferry(
        &broker,
        &[
            "group",
            "reset-offsets",
            "billing",
            "--topic",
            "payments",
            "--to-earliest",
        ],
    )
    .await;
    assert!(!busy.ok);
    assert!(
        busy.stderr.contains("active member") && busy.stderr.contains("409"),
        "{}",
        busy.stderr
    );
    stop_tx.send(()).unwrap();
    member.await.unwrap();
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_consume_over_kafka() {
    let broker = TestBroker::start().await.unwrap();
    ok(&broker, &["topic", "create", "lines", "-p", "2"]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.txt");
    let lines: Vec<String> = (0..50).map(|i| format!("k{}:v{i}", i % 7)).collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let bootstrap = broker.kafka_bootstrap();
    let produced = ok(
        &broker,
        &[
            "produce",
            "-b",
            &bootstrap,
            "-t",
            "lines",
            "-f",
            file.to_str().unwrap(),
            "-K",
            ":",
            "--json",
        ],
    )
    .await
    .json();
    assert_eq!(produced["messages"], 50);
    // And from stdin, keyless.
    let r = ferry_with_input(
        &broker,
        &["produce", "-b", &bootstrap, "-t", "lines", "-p", "1"],
        Some("x1\nx2\n"),
    )
    .await;
    assert!(r.ok, "{}", r.stderr);

    let out = ok(
        &broker,
        &["consume", "-b", &bootstrap, "-t", "lines", "-e", "--json"],
    )
    .await;
    let got: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), 52, "{}", out.stdout);
    let keyed: BTreeSet<String> = got
        .iter()
        .filter(|m| m["key"].is_string())
        .map(|m| {
            format!(
                "{}:{}",
                m["key"].as_str().unwrap(),
                m["value"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(keyed, lines.iter().cloned().collect::<BTreeSet<_>>());
    // One key, one partition (the default partitioner).
    for k in 0..7 {
        let parts: BTreeSet<i64> = got
            .iter()
            .filter(|m| m["key"] == format!("k{k}"))
            .map(|m| m["partition"].as_i64().unwrap())
            .collect();
        assert_eq!(parts.len(), 1, "key k{k} in {parts:?}");
    }
    // -o -2 on one partition: its last two records, which are the stdin ones.
    let tail = ok(
        &broker,
        &[
            "consume", "-b", &bootstrap, "-t", "lines", "-p", "1", "-o", "-2", "-e",
        ],
    )
    .await;
    assert_eq!(tail.stdout, "x1\nx2\n");
    // -c stops after COUNT without -e.
    let two = ok(
        &broker,
        &["consume", "-b", &bootstrap, "-t", "lines", "-c", "2"],
    )
    .await;
    assert_eq!(two.stdout.lines().count(), 2);

    let missing = ferry(&broker, &["consume", "-b", &bootstrap, "-t", "nope", "-e"]).await;
    assert!(!missing.ok);
    assert!(
        missing.stderr.contains("ferry topic create nope"),
        "{}",
        missing.stderr
    );
    broker.stop().await;
}

/// `group describe` of a group whose member owns partitions it never committed: every assigned
/// partition is listed, `-` as COMMITTED, its lag counted from the log start (12 unread records
/// here), and the total includes them, as kafka-consumer-groups reports it; `--json` (the admin
/// API's `/api/groups/{id}`) lists and counts them the same way, with `committed_offset: null`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_describe_counts_lag_on_uncommitted_assigned_partitions() {
    let broker = TestBroker::start().await.unwrap();
    ok(&broker, &["topic", "create", "ledger", "-p", "3"]).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.kafka_bootstrap())
        .set("message.timeout.ms", "20000")
        .create()
        .unwrap();
    // Partition 0: 4 records (2 committed); partition 1: 5; partition 2: 7 (never committed).
    for (partition, count) in [(0, 4), (1, 5), (2, 7)] {
        for i in 0..count {
            let payload = format!("r{i}");
            producer
                .send(
                    FutureRecord::<(), _>::to("ledger")
                        .partition(partition)
                        .payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
        }
    }
    let bootstrap = broker.kafka_bootstrap();
    let (assigned_tx, assigned_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let member = std::thread::spawn(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "ledger-readers")
            .set("client.id", "ledger-reader-1")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("ledger", 0, Offset::Offset(2))
            .unwrap();
        c.commit(&tpl, CommitMode::Sync).unwrap();
        c.subscribe(&["ledger"]).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while c.assignment().map_or(0, |a| a.count()) < 3 {
            if std::time::Instant::now() > deadline {
                let _ = assigned_tx.send(Err("no assignment of 3 partitions in 30 s".into()));
                return;
            }
            let _ = c.poll(Duration::from_millis(100));
        }
        let _ = assigned_tx.send(Ok(()));
        // Stay in the group (polling serves its heartbeats and rebalances) until told to go.
        while stop_rx.try_recv().is_err() {
            let _ = c.poll(Duration::from_millis(100));
        }
    });
    tokio::task::spawn_blocking(move || assigned_rx.recv().unwrap())
        .await
        .unwrap()
        .unwrap();

    let out = ok(&broker, &["group", "describe", "ledger-readers"])
        .await
        .stdout;
    let json = ok(&broker, &["group", "describe", "ledger-readers", "--json"])
        .await
        .stdout;
    stop_tx.send(()).unwrap();
    tokio::task::spawn_blocking(move || member.join().unwrap())
        .await
        .unwrap();
    assert!(
        out.starts_with("group ledger-readers is Stable with 1 member(s), total lag 14\n"),
        "{out}"
    );
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip_while(|l| !l.starts_with("TOPIC"))
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "{out}");
    assert_eq!(&rows[0][..5], ["ledger", "0", "2", "4", "2"], "{out}");
    assert_eq!(&rows[1][..5], ["ledger", "1", "-", "5", "5"], "{out}");
    assert_eq!(&rows[2][..5], ["ledger", "2", "-", "7", "7"], "{out}");
    for row in &rows {
        assert_eq!(row[5], "ledger-reader-1", "{out}");
    }
    // `--json` is the admin API's own document, and it counts the same way.
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["total_lag"], 14, "{json}");
    assert_eq!(
        doc["offsets"],
        serde_json::json!([
            {"topic": "ledger", "partition": 0, "committed_offset": 2, "high_watermark": 4, "lag": 2},
            {"topic": "ledger", "partition": 1, "committed_offset": null, "high_watermark": 5, "lag": 5},
            {"topic": "ledger", "partition": 2, "committed_offset": null, "high_watermark": 7, "lag": 7},
        ]),
        "{json}"
    );
}

/// `topic create` of a topic a Kafka client auto-created says what exists and why, and
/// `--if-not-exists` accepts it; `consume -o -N -c N` ends at the end of a partition that holds
/// fewer than N records instead of waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_create_of_an_existing_topic_and_consume_the_last_n() {
    let broker = TestBroker::start().await.unwrap();
    let bootstrap = broker.kafka_bootstrap();
    let produced = ferry_with_input(
        &broker,
        &["produce", "-t", "orders", "-b", &bootstrap],
        Some("a\nb\nc\n"),
    )
    .await;
    // `ferry produce` does not auto-create; a Kafka client's metadata request does.
    assert!(!produced.ok && produced.stderr.contains("ferry topic create orders"));
    ok(&broker, &["topic", "create", "orders"]).await;
    ferry_with_input(
        &broker,
        &["produce", "-t", "orders", "-b", &bootstrap],
        Some("a\nb\nc\n"),
    )
    .await;

    let again = ferry(&broker, &["topic", "create", "orders", "-p", "3"]).await;
    assert!(!again.ok);
    assert!(
        again
            .stderr
            .contains("topic `orders` already exists with 1 partition(s)")
            && again.stderr.contains("--if-not-exists")
            && !again.stderr.contains("other settings, or is in use"),
        "{}",
        again.stderr
    );
    let accepted = ok(
        &broker,
        &["topic", "create", "orders", "-p", "3", "--if-not-exists"],
    )
    .await;
    assert!(
        accepted
            .stdout
            .contains("already exists with 1 partition(s)"),
        "{}",
        accepted.stdout
    );

    let last = ok(
        &broker,
        &[
            "consume", "-t", "orders", "-b", &bootstrap, "-o", "-10", "-c", "10", "--json",
        ],
    )
    .await;
    let values: Vec<String> = last
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["value"].to_string())
        .collect();
    assert_eq!(values, ["\"a\"", "\"b\"", "\"c\""]);
    let last_two = ok(
        &broker,
        &["consume", "-t", "orders", "-b", &bootstrap, "-o", "-2"],
    )
    .await;
    assert_eq!(last_two.stdout, "b\nc\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_connection_channel_and_consumer_commands() {
    let broker = TestBroker::start().await.unwrap();
    let conn = Connection::connect(
        &broker.amqp_url(),
        ConnectionProperties::default().with_connection_name("cli-watched".into()),
    )
    .await
    .unwrap();
    let events = conn.events_listener();
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(3, BasicQosOptions::default()).await.unwrap();
    ch.queue_declare(
        "tasks".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let _consumer = ch
        .basic_consume(
            "tasks".into(),
            "cli-consumer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let status = ok(&broker, &["status"]).await.stdout;
    assert!(
        status.contains("Connections: 1 (channels 1, consumers 1)"),
        "{status}"
    );
    assert!(status.contains("Alarms:      none"), "{status}");
    let overview = ok(&broker, &["status", "--json"]).await.json();
    assert_eq!(overview["overview"]["object_totals"]["queues"], 1);
    assert!(overview["node"]["mem_used"].as_u64().unwrap() > 0);

    let listed = ok(&broker, &["connection", "list"]).await.stdout;
    let row = listed
        .lines()
        .find(|l| l.contains("cli-watched"))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(row.contains("amqp") && row.contains("guest"), "{row}");
    let connections = ok(&broker, &["connection", "list", "--json"]).await.json();
    let name = connections[0]["name"].as_str().unwrap().to_string();

    let channels = ok(&broker, &["channel", "list"]).await.stdout;
    assert!(channels.contains(&format!("{name} (1)")), "{channels}");
    let consumers = ok(&broker, &["consumer", "list", "--json"]).await.json();
    assert_eq!(consumers[0]["consumer_tag"], "cli-consumer");
    assert_eq!(consumers[0]["queue"]["name"], "tasks");
    assert_eq!(consumers[0]["prefetch_count"], 3);
    let consumers = ok(&broker, &["consumer", "list"]).await.stdout;
    assert!(
        consumers.contains("cli-consumer") && consumers.contains("tasks"),
        "{consumers}"
    );

    ok(
        &broker,
        &["connection", "close", &name, "--reason", "rolling restart"],
    )
    .await;
    let error = common::amqp::connection_error(events).await;
    let text = error.to_string();
    assert!(text.contains("rolling restart"), "{text}");
    assert!(text.contains("CONNECTION_FORCED"), "{text}");

    // It leaves the list once the server has finished closing it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ok(&broker, &["connection", "list", "--json"]).await.json() != Value::Array(vec![]) {
        assert!(tokio::time::Instant::now() < deadline, "still listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gone = ferry(&broker, &["connection", "close", &name]).await;
    assert!(!gone.ok);
    assert!(gone.stderr.contains("no connection"), "{}", gone.stderr);
    let bad = ferry(
        &broker,
        &["connection", "close", &name, "--reason", "two\nlines"],
    )
    .await;
    assert!(!bad.ok);
    assert!(bad.stderr.contains("--reason"), "{}", bad.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_partitions_unbind_and_group_delete_commands() {
    let broker = TestBroker::start().await.unwrap();

    // topic add-partitions grows a topic and refuses to shrink it.
    ok(&broker, &["topic", "create", "ledger"]).await;
    let grown = ok(&broker, &["topic", "add-partitions", "ledger", "3"]).await;
    assert!(
        grown.stdout.contains("now has 3 partition(s)"),
        "{}",
        grown.stdout
    );
    let topic = ok(&broker, &["topic", "describe", "ledger", "--json"])
        .await
        .json();
    assert_eq!(topic["partitions"].as_array().unwrap().len(), 3);
    let shrink = ferry(&broker, &["topic", "add-partitions", "ledger", "2"]).await;
    assert!(!shrink.ok, "{}", shrink.stdout);

    // exchange unbind removes the binding: a confirmed publish no longer reaches the queue.
    ok(
        &broker,
        &["exchange", "create", "billing", "--type", "direct"],
    )
    .await;
    ok(&broker, &["queue", "create", "invoices"]).await;
    ok(
        &broker,
        &["exchange", "bind", "billing", "invoices", "-k", "eu"],
    )
    .await;
    let conn = common::amqp::connect(&broker).await;
    let ch = common::amqp::channel(&conn).await;
    common::amqp::confirm_mode(&ch).await;
    let publish = || {
        common::amqp::publish_confirmed(
            &ch,
            "billing",
            "eu",
            b"invoice",
            BasicProperties::default(),
        )
    };
    assert!(publish().await, "acked");
    wait_ready(&broker, "invoices", 1).await;
    let unbound = ok(
        &broker,
        &["exchange", "unbind", "billing", "invoices", "-k", "eu"],
    )
    .await;
    assert!(
        unbound.stdout.contains("unbound queue invoices"),
        "{}",
        unbound.stdout
    );
    assert!(publish().await, "acked");
    let q = ok(&broker, &["queue", "describe", "invoices", "--json"])
        .await
        .json();
    assert_eq!(q["ready"], 1, "the second publish was not routed: {q}");
    let again = ferry(
        &broker,
        &["exchange", "unbind", "billing", "invoices", "-k", "eu"],
    )
    .await;
    assert!(!again.ok);
    assert!(again.stderr.contains("no binding"), "{}", again.stderr);

    // group delete removes an empty group with its offsets.
    commit_offset(&broker, "old-billing", "ledger", 0).await;
    let groups = ok(&broker, &["group", "list"]).await.stdout;
    assert!(groups.contains("old-billing"), "{groups}");
    let deleted = ok(&broker, &["group", "delete", "old-billing"]).await;
    assert!(deleted
        .stdout
        .contains("deleted consumer group old-billing"));
    let groups = ok(&broker, &["group", "list"]).await.stdout;
    assert!(!groups.contains("old-billing"), "{groups}");
    let missing = ferry(&broker, &["group", "delete", "old-billing"]).await;
    assert!(!missing.ok);
    assert!(
        missing.stderr.contains("unknown consumer group"),
        "{}",
        missing.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_alter_changes_only_the_named_configs_as_kafka_describe_configs_reports() {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let broker = TestBroker::start().await.unwrap();
    ok(
        &broker,
        &[
            "topic",
            "create",
            "ledger",
            "-c",
            "retention.ms=3600000",
            "-c",
            "max.message.bytes=50000",
        ],
    )
    .await;
    let altered = ok(
        &broker,
        &[
            "topic",
            "alter",
            "ledger",
            "-c",
            "retention.ms=7200000",
            "--delete-config",
            "max.message.bytes",
        ],
    )
    .await;
    assert!(
        altered.stdout.contains("retention.ms=7200000"),
        "{}",
        altered.stdout
    );

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.kafka_bootstrap())
        .create()
        .expect("admin client");
    let described = admin
        .describe_configs(
            [&ResourceSpecifier::Topic("ledger")],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("describe configs");
    let resource = described[0].as_ref().expect("topic configs");
    let retention = resource.get("retention.ms").expect("retention.ms");
    assert_eq!(retention.value.as_deref(), Some("7200000"));
    assert!(!retention.is_default);
    let max_bytes = resource
        .get("max.message.bytes")
        .expect("max.message.bytes");
    assert!(
        max_bytes.is_default,
        "deleted back to the default: {max_bytes:?}"
    );

    // Nothing to change, an unknown topic and a bad value are refused with a reason.
    let nothing = ferry(&broker, &["topic", "alter", "ledger"]).await;
    assert!(
        !nothing.ok && nothing.stderr.contains("-c KEY=VALUE"),
        "{}",
        nothing.stderr
    );
    let unknown = ferry(&broker, &["topic", "alter", "nope", "-c", "retention.ms=1"]).await;
    assert!(!unknown.ok, "{}", unknown.stdout);
    let bad = ferry(
        &broker,
        &["topic", "alter", "ledger", "-c", "retention.ms=soon"],
    )
    .await;
    assert!(
        !bad.ok && bad.stderr.contains("retention.ms"),
        "{}",
        bad.stderr
    );
}
