//! Event-store appends across `kill -9` (issue 15 test 3): `ferry serve` (fsync=always) is
//! SIGKILLed while SDK writers append to several streams with `Exact` expectations, then
//! restarted on the same data directory. After every restart:
//!
//! - every append whose answer the kill swallowed is resent with the same event ids: if its
//!   records reached the log, the answer is the original result (`duplicate`, the revision the
//!   log holds) and the log does not grow; if not, it is written now;
//! - the stream index the broker answers with (`stream_info`) equals the one rebuilt from the
//!   log as a Kafka consumer reads it, every stream's revisions run 0..=last without a gap or
//!   a repeat, and every event id is in the log exactly once;
//! - every acknowledged append is in the log.
//!
//! Cycles: `FERRY_ES_CRASH_CYCLES` (default 4); seed `FERRY_ES_CRASH_SEED` (printed).

use crate::common;
use common::serve::wait_ready;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry::client::native::*;
use parking_lot::Mutex;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

const TOPIC: &str = "es.crash";
const STREAMS: usize = 6;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn free_tcp() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

fn free_udp() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("port")
}

struct Ports {
    kafka: u16,
    amqp: u16,
    http: u16,
    native: u16,
}

fn spawn_server(data: &Path, ports: &Ports) -> common::serve::KillOnDrop {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.with_extension("log"))
        .expect("server log");
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", "--data-dir"])
        .arg(data)
        .args(["--kafka-listen", &format!("127.0.0.1:{}", ports.kafka)])
        .args(["--amqp-listen", &format!("127.0.0.1:{}", ports.amqp)])
        .args(["--native-listen", &format!("127.0.0.1:{}", ports.native)])
        .args(["--http-listen", &format!("127.0.0.1:{}", ports.http)])
        .args(["--fsync", "always"])
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map(common::serve::KillOnDrop)
        .expect("spawn ferry")
}

async fn sdk(data: &Path, ports: &Ports) -> EventStoreClient {
    let addr = format!("127.0.0.1:{}", ports.native).parse().expect("addr");
    let trust = Trust::CertFile(data.join("native").join("cert.pem"));
    let conn = connect(ConnectOptions::new(addr, trust, "guest", "guest"))
        .await
        .expect("connect");
    EventStoreClient::new(conn)
}

/// One append as a writer sent it.
#[derive(Clone, Debug)]
struct Sent {
    stream: String,
    expected: ExpectedRevision,
    ids: Vec<String>,
}

#[derive(Default)]
struct Observed {
    /// Acknowledged appends: ids and the revision answered.
    acked: Vec<(Vec<String>, u64)>,
    /// Per stream: the append in flight when the broker died.
    in_flight: HashMap<String, Sent>,
    /// Per stream: the last revision known (acknowledged or recovered).
    last: HashMap<String, Option<u64>>,
}

/// One record of the topic as a Kafka consumer reads it.
struct Logged {
    offset: i64,
    stream: String,
    revision: Option<u64>,
    id: String,
}

/// The whole topic through rdkafka.
async fn read_log(kafka: u16) -> Vec<Logged> {
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", format!("127.0.0.1:{kafka}"))
            .set("group.id", "es-crash-check")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let (_, high) = consumer
            .fetch_watermarks(TOPIC, 0, Duration::from_secs(10))
            .expect("watermarks");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(TOPIC, 0, Offset::Beginning)
            .expect("tpl");
        consumer.assign(&tpl).expect("assign");
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while (out.len() as i64) < high {
            assert!(Instant::now() < deadline, "log read timed out");
            let Some(m) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let m = m.expect("consume");
            let header = |name: &str| {
                m.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == name)
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                })
            };
            out.push(Logged {
                offset: m.offset(),
                stream: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                revision: header("ce_streamrevision").and_then(|r| r.parse().ok()),
                id: header("ce_id").unwrap_or_default(),
            });
        }
        out
    })
    .await
    .expect("read")
}

/// Checks the log against itself and the broker's index; returns each stream's last revision.
async fn check_index(es: &EventStoreClient, log: &[Logged]) -> HashMap<String, Option<u64>> {
    let mut by_stream: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let mut ids: HashMap<&str, i64> = HashMap::new();
    for r in log {
        if let Some(rev) = r.revision {
            by_stream.entry(&r.stream).or_default().push(rev);
        }
        if let Some(first) = ids.insert(&r.id, r.offset) {
            panic!(
                "event id {} is in the log twice (offsets {first}, {})",
                r.id, r.offset
            );
        }
    }
    let mut last = HashMap::new();
    for s in 0..STREAMS {
        let stream = format!("s-{s}");
        let revisions = by_stream.get(stream.as_str()).cloned().unwrap_or_default();
        let want: Vec<u64> = (0..revisions.len() as u64).collect();
        assert_eq!(revisions, want, "{stream}: revisions must run 0..=last");
        let from_log = revisions.last().copied();
        let info = es.stream_info(TOPIC, &stream).await.expect("info");
        assert_eq!(
            info.last_revision, from_log,
            "{stream}: the broker's index disagrees with the log"
        );
        last.insert(stream, from_log);
    }
    last
}

async fn writer(es: EventStoreClient, stream: String, observed: Arc<Mutex<Observed>>, seed: u64) {
    let mut rng = Rng(seed);
    let mut n = 0u64;
    loop {
        let expected = match observed.lock().last.get(&stream).copied().flatten() {
            Some(rev) => ExpectedRevision::Exact(rev),
            None => ExpectedRevision::NoStream,
        };
        let count = 1 + rng.next() % 3;
        let ids: Vec<String> = (0..count)
            .map(|i| format!("{stream}-{seed}-{n}-{i}"))
            .collect();
        n += 1;
        let sent = Sent {
            stream: stream.clone(),
            expected,
            ids: ids.clone(),
        };
        observed.lock().in_flight.insert(stream.clone(), sent);
        let events = ids
            .iter()
            .map(|id| {
                EventData::json("tick", &serde_json::json!({ "id": id }))
                    .expect("json")
                    .with_id(id)
            })
            .collect();
        match es.append(TOPIC, &stream, expected, events).await {
            Ok(r) => {
                let mut o = observed.lock();
                o.in_flight.remove(&stream);
                o.acked.push((ids, r.next_expected_revision));
                o.last
                    .insert(stream.clone(), Some(r.next_expected_revision));
            }
            // The broker is gone: leave the append in flight for the check.
            Err(_) => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_nine_loop_keeps_the_stream_index_equal_to_the_log() {
    let cycles: usize = std::env::var("FERRY_ES_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let seed: u64 = std::env::var("FERRY_ES_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("FERRY_ES_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let ports = Ports {
        kafka: free_tcp(),
        amqp: free_tcp(),
        http: free_tcp(),
        native: free_udp(),
    };
    let mut child = spawn_server(&data, &ports);
    wait_ready(ports.http, &mut child).await;
    sdk(&data, &ports)
        .await
        .create_store(TOPIC, 1)
        .await
        .expect("create store");
    let observed = Arc::new(Mutex::new(Observed::default()));
    let (mut resent_duplicates, mut resent_written) = (0, 0);
    for cycle in 0..cycles {
        let writers: Vec<_> = {
            let mut tasks = Vec::new();
            for s in 0..STREAMS {
                let es = sdk(&data, &ports).await;
                tasks.push(tokio::spawn(writer(
                    es,
                    format!("s-{s}"),
                    observed.clone(),
                    rng.next(),
                )));
            }
            tasks
        };
        tokio::time::sleep(Duration::from_millis(150 + rng.next() % 450)).await;
        child.kill().expect("kill -9");
        child.wait().expect("reap");
        // Writers blocked in a resend would reach the restarted broker: stop them here, so
        // every unanswered append is left to the check below.
        for w in writers {
            w.abort();
            let _ = w.await;
        }
        child = spawn_server(&data, &ports);
        wait_ready(ports.http, &mut child).await;
        let es = sdk(&data, &ports).await;

        let before = read_log(ports.kafka).await;
        let in_flight: Vec<Sent> = observed.lock().in_flight.drain().map(|(_, s)| s).collect();
        for sent in &in_flight {
            let logged: Vec<&Logged> = before.iter().filter(|r| sent.ids.contains(&r.id)).collect();
            let events = sent
                .ids
                .iter()
                .map(|id| {
                    EventData::json("tick", &serde_json::json!({ "id": id }))
                        .expect("json")
                        .with_id(id)
                })
                .collect();
            let result = es
                .append(TOPIC, &sent.stream, sent.expected, events)
                .await
                .unwrap_or_else(|e| panic!("cycle {cycle}: resend of {sent:?}: {e}"));
            if logged.is_empty() {
                assert!(
                    !result.duplicate,
                    "cycle {cycle}: {sent:?} was not in the log"
                );
                resent_written += 1;
            } else {
                assert_eq!(logged.len(), sent.ids.len(), "an append is all or nothing");
                assert!(result.duplicate, "cycle {cycle}: {sent:?} was in the log");
                assert_eq!(
                    Some(result.next_expected_revision),
                    logged.last().and_then(|r| r.revision),
                    "cycle {cycle}: the resend must answer the original revision"
                );
                assert_eq!(result.position, logged.last().map_or(-1, |r| r.offset));
                resent_duplicates += 1;
            }
            observed
                .lock()
                .last
                .insert(sent.stream.clone(), Some(result.next_expected_revision));
        }
        let after = read_log(ports.kafka).await;
        let written_now: usize = in_flight
            .iter()
            .filter(|s| !before.iter().any(|r| s.ids.contains(&r.id)))
            .map(|s| s.ids.len())
            .sum();
        assert_eq!(
            after.len(),
            before.len() + written_now,
            "cycle {cycle}: resends of durable appends wrote records"
        );
        let last = check_index(&es, &after).await;
        let o = observed.lock();
        for (ids, revision) in &o.acked {
            for id in ids {
                assert!(
                    after.iter().any(|r| &r.id == id),
                    "cycle {cycle}: acknowledged event {id} (revision {revision}) is lost"
                );
            }
        }
        for (stream, rev) in &last {
            assert_eq!(o.last.get(stream).copied().flatten(), *rev, "{stream}");
        }
        println!(
            "cycle {cycle}: {} records, {} acknowledged appends",
            after.len(),
            o.acked.len()
        );
    }
    println!("resent: {resent_duplicates} already durable, {resent_written} written anew");
    child.kill().expect("kill");
    child.wait().expect("reap");
}
