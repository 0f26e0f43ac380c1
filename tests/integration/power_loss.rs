//! Power loss, as opposed to a process crash: what the OS had not written to disk is gone.
//!
//! `ferry serve` runs with the hidden `log.sync_journal` option, so each partition keeps the log
//! end offset of its last successful fsync in `sync.journal` (see `src/log/writer.rs`). The test
//! produces through rdkafka (`acks=all`), SIGKILLs the broker at a random point, then cuts every
//! partition back to what a power failure would have left: segments before the active one were
//! fsynced when they rolled and stay; the active segment keeps only the batches below the
//! journal's offset; its two index files, never fsynced while active, lose everything. Then the
//! broker restarts on that directory and the acknowledged records are compared with the log:
//!
//! - `fsync=always`: every acknowledged record is there, at its offset.
//! - `fsync=interval:<ms>`: only records acknowledged in the last interval (plus the fsync's own
//!   duration) before the loss may be missing.
//! - `fsync=never`: acknowledged records are lost — which also shows this layer really drops
//!   unsynced data, so the two tests above could fail.
//!
//! The metadata store (sled, topic definitions and offsets) is not cut back: its own flushes
//! are outside this layer. Seed: `FERRY_POWER_SEED` (printed).

use crate::common;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use ferry::log::writer::SYNC_JOURNAL_FILE;

const TOPIC: &str = "power";
/// Segments that roll every few hundred records, so rolls (which fsync by themselves) happen
/// during the run and the cut has to respect them.
const SMALL_SEGMENTS: u64 = 64 * 1024;
/// Segments that do not roll during a run, so everything unsynced is in the active one.
const BIG_SEGMENTS: u64 = 64 * 1024 * 1024;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Server {
    child: common::serve::KillOnDrop,
    kafka: String,
}

async fn start(data: &Path, fsync: &str, segment_bytes: u64) -> Server {
    let (kafka, http) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", "--data-dir"])
        .arg(data)
        .args(["--kafka-listen", &format!("127.0.0.1:{kafka}")])
        .args(["--amqp-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--native-listen", "127.0.0.1:0"])
        .args(["--http-listen", &format!("127.0.0.1:{http}")])
        .args(["--fsync", fsync])
        .env("FERRY_LOG__SYNC_JOURNAL", "true")
        .env("FERRY_LOG__SEGMENT_BYTES", segment_bytes.to_string())
        .env_remove("FERRY_POWER_SEED")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(common::serve::KillOnDrop)
        .expect("spawn ferry");
    common::serve::wait_ready(http, &mut child).await;
    Server {
        child,
        kafka: format!("127.0.0.1:{kafka}"),
    }
}

fn seed() -> u64 {
    let seed = std::env::var("FERRY_POWER_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos() as u64)
                .unwrap_or(1)
        });
    println!("power_loss: FERRY_POWER_SEED={seed}");
    seed
}

/// One acknowledged record: its offset, and when the acknowledgement arrived.
struct Acked {
    offset: i64,
    payload: String,
    at: Instant,
}

/// Produces for `run`, SIGKILLs the broker while appends are in flight, and returns what the
/// broker acknowledged and the instant of the kill.
async fn produce_then_kill(
    bootstrap: &str,
    run: Duration,
    child: &mut Child,
) -> (Vec<Acked>, Instant) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin");
    let created = admin
        .create_topics(
            [&NewTopic::new(TOPIC, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topic");
    assert!(created[0].is_ok(), "{created:?}");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("linger.ms", "1")
        .set("message.timeout.ms", "10000")
        .create()
        .expect("producer");
    let mut acked = Vec::new();
    let mut pending = FuturesUnordered::new();
    let end = Instant::now() + run;
    let mut n = 0u64;
    while Instant::now() < end {
        while pending.len() >= 32 {
            if let Some(Some(a)) = pending.next().await {
                acked.push(a);
            }
        }
        let payload = format!("p{n}-{}", "x".repeat(200));
        n += 1;
        let p = producer.clone();
        pending.push(async move {
            let d = p
                .send(
                    FutureRecord::<(), _>::to(TOPIC).payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .ok()?;
            Some(Acked {
                offset: d.offset,
                payload,
                at: Instant::now(),
            })
        });
    }
    let lost_at = Instant::now();
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    // Acks that had arrived before the kill still count; what was in flight did not happen.
    while let Some(Some(done)) = futures::FutureExt::now_or_never(pending.next()) {
        acked.extend(done.filter(|a| a.at <= lost_at));
    }
    drop(pending);
    drop(producer);
    (acked, lost_at)
}

/// Base offset and total length of each batch in a `.log` file (zero tail excluded).
fn batches(bytes: &[u8]) -> Vec<(i64, usize, usize)> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos + 12 <= bytes.len() {
        let base = i64::from_be_bytes(bytes[pos..pos + 8].try_into().unwrap());
        let len = i32::from_be_bytes(bytes[pos + 8..pos + 12].try_into().unwrap());
        if len <= 0 || pos + 12 + len as usize > bytes.len() {
            break;
        }
        out.push((base, pos, 12 + len as usize));
        pos += 12 + len as usize;
    }
    out
}

/// Cuts the partition in `dir` back to what survives a power loss; returns the journal's
/// durable offset.
fn lose_power(dir: &Path) -> i64 {
    let journal = std::fs::read(dir.join(SYNC_JOURNAL_FILE)).expect("sync journal");
    let durable = i64::from_le_bytes(journal[..8].try_into().expect("8-byte journal"));
    let mut logs: Vec<(i64, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .filter_map(|p| {
            let base = p.file_stem()?.to_str()?.parse().ok()?;
            Some((base, p))
        })
        .collect();
    logs.sort();
    let (base, active) = logs.last().cloned().expect("an active segment");
    let bytes = std::fs::read(&active).unwrap();
    let keep = if durable <= base {
        0
    } else {
        batches(&bytes)
            .into_iter()
            .find(|(b, _, _)| *b >= durable)
            .map(|(_, pos, _)| pos)
            .unwrap_or(bytes.len())
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&active)
        .unwrap();
    file.set_len(keep as u64).unwrap();
    for ext in ["index", "timeindex"] {
        let index = active.with_extension(ext);
        if index.exists() {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&index)
                .unwrap()
                .set_len(0)
                .unwrap();
        }
    }
    durable
}

fn partition_dir(data: &Path) -> PathBuf {
    fn find(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                find(&p, out);
            } else if p.file_name().is_some_and(|n| n == SYNC_JOURNAL_FILE)
                && p.parent().is_some_and(|d| {
                    d.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(TOPIC))
                })
            {
                out.push(p.parent().unwrap().to_path_buf());
            }
        }
    }
    let mut found = Vec::new();
    find(data, &mut found);
    assert_eq!(found.len(), 1, "one partition journal expected: {found:?}");
    found.remove(0)
}

/// The partition's records after the restart, offset -> payload.
fn read_log(bootstrap: &str) -> BTreeMap<i64, String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "power-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let (_, high) = consumer
        .fetch_watermarks(TOPIC, 0, Duration::from_secs(10))
        .expect("watermarks");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut out = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while (out.len() as i64) < high {
        assert!(
            Instant::now() < deadline,
            "read stuck at {} of {high}",
            out.len()
        );
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.expect("fetch");
            let payload = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            out.insert(m.offset(), payload);
        }
    }
    out
}

/// Runs one produce / power loss / restart round; returns the acked records (with the instant
/// of the loss), the records missing afterwards, and the journal's durable offset.
async fn round(
    fsync: &str,
    segment_bytes: u64,
    run: Duration,
) -> (Vec<Acked>, Instant, Vec<usize>, i64) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = start(&data, fsync, segment_bytes).await;
    let (acked, lost_at) = produce_then_kill(&server.kafka, run, &mut server.child).await;
    let durable = lose_power(&partition_dir(&data));

    let mut server = start(&data, fsync, segment_bytes).await;
    let bootstrap = server.kafka.clone();
    let log = tokio::task::spawn_blocking(move || read_log(&bootstrap))
        .await
        .unwrap();
    server.child.kill().ok();
    server.child.wait().ok();
    // Whatever survived is exactly what was written: nothing is corrupt or moved.
    let missing: Vec<usize> = acked
        .iter()
        .enumerate()
        .filter_map(|(i, a)| match log.get(&a.offset) {
            Some(p) if *p == a.payload => None,
            Some(p) => panic!("offset {} holds {p:.20}, not {:.20}", a.offset, a.payload),
            None => Some(i),
        })
        .collect();
    println!(
        "power_loss fsync={fsync}: {} acked, journal durable to {durable}, {} in the log after \
         the loss, {} acked records lost",
        acked.len(),
        log.len(),
        missing.len()
    );
    (acked, lost_at, missing, durable)
}

fn run_time(seed: u64) -> Duration {
    Duration::from_millis(400 + seed % 800)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_always_loses_nothing_acknowledged() {
    let (acked, _, missing, _) = round("always", SMALL_SEGMENTS, run_time(seed())).await;
    assert!(acked.len() > 100, "too little load: {}", acked.len());
    assert!(missing.is_empty(), "{} acked records lost", missing.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_interval_loses_at_most_the_last_interval() {
    const INTERVAL: Duration = Duration::from_millis(300);
    // The timer fires an interval after the first unsynced append; the fsync then takes its
    // own time (tens of ms on this VM, more under load), hence the slack.
    const SLACK: Duration = Duration::from_millis(300);
    let (acked, lost_at, missing, _) = round(
        "interval:300",
        BIG_SEGMENTS,
        // Long enough that several intervals pass, so the bound below has something to bite.
        INTERVAL * 3 + run_time(seed()),
    )
    .await;
    let first = acked.first().map(|a| a.at).expect("some acks");
    assert!(
        lost_at.duration_since(first) > INTERVAL + SLACK,
        "run too short to tell"
    );
    for i in &missing {
        let age = lost_at.duration_since(acked[*i].at);
        assert!(
            age <= INTERVAL + SLACK,
            "record acked {age:?} before the power loss was lost (interval {INTERVAL:?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_never_loses_acknowledged_records() {
    let (acked, _, missing, _) = round("never", BIG_SEGMENTS, run_time(seed())).await;
    assert!(
        !missing.is_empty(),
        "with fsync=never a power loss must lose the unsynced tail ({} acked)",
        acked.len()
    );
}
