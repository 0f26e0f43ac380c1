//! Crash test: acknowledged appends survive SIGKILL.
//!
//! The parent test re-executes this test binary as a child running only `crash_child` (selected
//! by an environment variable; without it that test returns at once). The child opens a
//! `PartitionHandle` with `fsync.policy=always`, preallocation and small segments, and appends
//! distinct payloads from several concurrent tasks, printing `ACK <offset> <payload>` only after
//! `append` returned Ok. The parent SIGKILLs it after a random number of acks or milliseconds,
//! reopens the directory (running recovery), and checks that every acknowledged offset holds
//! exactly its payload and that offsets are dense. Several cycles run on the same directory, so
//! each child also appends after a recovery, alternately after a clean close and a crash.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry::clock::Clock;
use ferry::log::{
    encode_batch, FsyncPolicy, LogConfig, LogLabels, PartitionHandle, PartitionLog, SimpleRecord,
};
use kafka_protocol::records::RecordBatchDecoder;

use crate::common;

const DIR_VAR: &str = "FERRY_LOG_CRASH_DIR";
const CYCLE_VAR: &str = "FERRY_LOG_CRASH_CYCLE";
const CYCLES: u64 = 6;
const WRITERS: usize = 4;

fn config() -> LogConfig {
    LogConfig {
        fsync: FsyncPolicy::Always,
        segment_bytes: 32 * 1024,
        index_interval_bytes: 512,
        preallocate: true,
        ..LogConfig::default()
    }
}

/// The child: append until killed. Does nothing unless started by the parent.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(DIR_VAR) else {
        return;
    };
    let cycle: u64 = std::env::var(CYCLE_VAR).unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let labels = LogLabels {
            topic: "crash".into(),
            partition: 0,
        };
        let (handle, _) =
            PartitionHandle::open(Path::new(&dir), config(), Clock::system(), labels).unwrap();
        let tasks: Vec<_> = (0..WRITERS)
            .map(|t| {
                let handle = handle.clone();
                tokio::spawn(async move {
                    for seq in 0u64.. {
                        let n = 1 + (seq % 3) as usize;
                        let payloads: Vec<String> = (0..n)
                            .map(|r| format!("c{cycle}-t{t}-s{seq}-r{r}"))
                            .collect();
                        let recs: Vec<SimpleRecord> = payloads
                            .iter()
                            .map(|p| SimpleRecord {
                                value: Some(Bytes::from(p.clone())),
                                timestamp: 1_700_000_000_000,
                                ..Default::default()
                            })
                            .collect();
                        let batch = encode_batch(&recs);
                        let info = handle.append(batch).await.unwrap();
                        let mut out = std::io::stdout().lock();
                        for (r, p) in payloads.iter().enumerate() {
                            writeln!(out, "ACK {} {p}", info.base_offset + r as i64).unwrap();
                        }
                    }
                })
            })
            .collect();
        // The parent kills us long before this.
        tokio::time::sleep(Duration::from_secs(30)).await;
        for t in tasks {
            t.abort();
        }
    });
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn parse_ack(line: &str) -> Option<(i64, String)> {
    let mut parts = line.split(' ');
    if parts.next()? != "ACK" {
        return None;
    }
    let offset = parts.next()?.parse().ok()?;
    let payload = parts.next()?;
    // A line cut by the kill has no trailing "-r<digit>": skip anything not fully formed.
    let (_, r) = payload.rsplit_once("-r")?;
    r.parse::<u32>().ok()?;
    Some((offset, payload.to_string()))
}

fn contents(log: &PartitionLog) -> Vec<(i64, String)> {
    let slice = log
        .read(log.log_start_offset(), usize::MAX, i64::MAX)
        .unwrap();
    let mut b = slice.bytes.clone();
    RecordBatchDecoder::decode_all(&mut b)
        .unwrap()
        .into_iter()
        .flat_map(|s| s.records)
        .map(|r| {
            (
                r.offset,
                String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn acked_appends_survive_sigkill() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed:#x}");
    let mut rng = Rng(seed);
    let mut acked: BTreeMap<i64, String> = BTreeMap::new();

    for cycle in 0..CYCLES {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "log_crash::crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIR_VAR, dir.path())
            .env(CYCLE_VAR, cycle.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map(common::serve::KillOnDrop)
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });

        let kill_after_acks = 1 + rng.next() % 400;
        let kill_after = Duration::from_millis(1 + rng.next() % 150);
        let give_up = Instant::now() + Duration::from_secs(10);
        let mut lines = Vec::new();
        let mut first_ack: Option<Instant> = None;
        loop {
            match rx.recv_timeout(Duration::from_millis(1)) {
                Ok(line) => {
                    if line.starts_with("ACK ") {
                        first_ack.get_or_insert_with(Instant::now);
                    }
                    lines.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("child exited early: {:?}", child.wait());
                }
            }
            let acks = lines.iter().filter(|l| l.starts_with("ACK ")).count() as u64;
            if acks >= kill_after_acks || first_ack.is_some_and(|t| t.elapsed() >= kill_after) {
                break;
            }
            assert!(Instant::now() < give_up, "child produced no acks in time");
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Everything printed before the kill was acknowledged too.
        reader.join().unwrap();
        lines.extend(rx.try_iter());

        let mut cycle_acks = 0;
        for (offset, payload) in lines.iter().filter_map(|l| parse_ack(l)) {
            if let Some(previous) = acked.insert(offset, payload.clone()) {
                panic!("offset {offset} acknowledged twice: {previous} and {payload}");
            }
            cycle_acks += 1;
        }

        let (log, report) = PartitionLog::open(dir.path(), config(), Clock::system()).unwrap();
        let stored = contents(&log);
        let offsets: Vec<i64> = stored.iter().map(|(o, _)| *o).collect();
        assert_eq!(
            offsets,
            (0..stored.len() as i64).collect::<Vec<_>>(),
            "offsets not dense after cycle {cycle} ({report})"
        );
        let stored: BTreeMap<i64, String> = stored.into_iter().collect();
        for (offset, payload) in &acked {
            assert_eq!(
                stored.get(offset),
                Some(payload),
                "acked offset {offset} lost or changed after cycle {cycle} ({report})"
            );
        }
        eprintln!(
            "cycle {cycle}: {cycle_acks} acks, {} records stored, {} segments, recovery: {report}",
            stored.len(),
            log.segment_count()
        );
        // Alternate: let the next child start after a clean close or straight after the crash.
        if cycle % 2 == 0 {
            log.close().unwrap();
        }
    }
    assert!(!acked.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "crash test too slow: {:?}",
        started.elapsed()
    );
}
