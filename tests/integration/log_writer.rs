//! The async `PartitionHandle`: group commit under `fsync.policy=always`, high watermark and its
//! watch channel, per-request errors inside a group, interval fsync, fail-stop on an injected
//! fsync error, and shutdown.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry::clock::Clock;
use ferry::log::writer::WRITER_IDLE_RETIRE;
use ferry::log::{
    encode_batch, FsyncPolicy, LogConfig, LogError, LogLabels, PartitionHandle, PartitionLog,
    SimpleRecord,
};

const T0: i64 = 1_700_000_000_000;

fn batch(tag: &str, n: usize) -> BytesMut {
    let recs: Vec<SimpleRecord> = (0..n)
        .map(|i| SimpleRecord {
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(format!("{tag}-{i}"))),
            headers: vec![],
            timestamp: T0 + i as i64,
        })
        .collect();
    encode_batch(&recs)
}

fn labels() -> LogLabels {
    LogLabels {
        topic: "orders".into(),
        partition: 3,
    }
}

fn open(dir: &std::path::Path, fsync: FsyncPolicy) -> PartitionHandle {
    let config = LogConfig {
        fsync,
        ..LogConfig::default()
    };
    PartitionHandle::open(dir, config, Clock::manual(T0), labels())
        .unwrap()
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_uses_fewer_fsyncs_than_appends() {
    let dir = tempfile::tempdir().unwrap();
    let handle = open(dir.path(), FsyncPolicy::Always);
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let h = handle.clone();
            tokio::spawn(async move { h.append(batch(&format!("g{i}"), 2)).await })
        })
        .collect();
    let mut offsets = Vec::new();
    for t in tasks {
        let info = t.await.unwrap().unwrap();
        // Acknowledged means durable and visible.
        assert!(handle.high_watermark() > info.last_offset);
        offsets.push(info.base_offset);
    }
    offsets.sort();
    assert_eq!(offsets, (0..64).map(|i| i * 2).collect::<Vec<_>>());
    let fsyncs = handle.fsync_count();
    assert!(fsyncs >= 1);
    assert!(fsyncs < 64, "64 appends took {fsyncs} fsyncs: no grouping");
    assert_eq!(handle.high_watermark(), 128);
    handle.shutdown().await;
}

#[tokio::test]
async fn high_watermark_bounds_reads_and_notifies() {
    let dir = tempfile::tempdir().unwrap();
    let handle = open(dir.path(), FsyncPolicy::Always);
    let mut rx = handle.subscribe_high_watermark();
    assert_eq!(*rx.borrow(), 0);
    let waiter = tokio::spawn(async move {
        rx.changed().await.unwrap();
        *rx.borrow()
    });
    let info = handle.append(batch("a", 3)).await.unwrap();
    assert_eq!((info.base_offset, info.last_offset), (0, 2));
    assert_eq!(waiter.await.unwrap(), 3);
    let slice = handle.read(0, 1 << 20).unwrap();
    assert_eq!(slice.next_offset, 3);
    assert!(handle.read(3, 100).unwrap().bytes.is_empty());
    assert!(matches!(
        handle.read(4, 100),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert_eq!(handle.log_start_offset(), 0);
    assert_eq!(handle.log_end_offset(), 3);
    assert_eq!(
        handle.offset_for_timestamp(T0 + 1).unwrap(),
        Some((1, T0 + 1))
    );
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_batch_fails_only_its_own_request() {
    let dir = tempfile::tempdir().unwrap();
    let handle = open(dir.path(), FsyncPolicy::Always);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let h = handle.clone();
        let mut b = batch(&format!("x{i}"), 1);
        if i % 5 == 0 {
            let n = b.len();
            b[n - 1] ^= 0xff;
        }
        tasks.push(tokio::spawn(async move { (i, h.append(b).await) }));
    }
    let mut ok = 0;
    for t in tasks {
        let (i, r) = t.await.unwrap();
        if i % 5 == 0 {
            assert!(matches!(r, Err(LogError::CorruptBatch(_))), "{r:?}");
        } else {
            r.unwrap();
            ok += 1;
        }
    }
    assert_eq!(ok, 16);
    assert_eq!(handle.high_watermark(), 16);
    assert!(!handle.is_failed());
    handle.shutdown().await;
}

#[tokio::test]
async fn interval_policy_syncs_on_a_timer() {
    let dir = tempfile::tempdir().unwrap();
    let handle = open(dir.path(), FsyncPolicy::Interval(Duration::from_millis(30)));
    handle.append(batch("i", 1)).await.unwrap();
    // Acknowledged and visible before any fsync.
    assert_eq!(handle.high_watermark(), 1);
    assert_eq!(handle.fsync_count(), 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while handle.fsync_count() == 0 {
        assert!(std::time::Instant::now() < deadline, "no interval fsync");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle.shutdown().await;
}

#[tokio::test]
async fn never_policy_does_not_fsync_appends() {
    let dir = tempfile::tempdir().unwrap();
    let handle = open(dir.path(), FsyncPolicy::Never);
    for i in 0..10 {
        handle.append(batch(&format!("n{i}"), 1)).await.unwrap();
    }
    assert_eq!(handle.high_watermark(), 10);
    assert_eq!(handle.fsync_count(), 0);
    handle.shutdown().await;
}

#[tokio::test]
async fn injected_fsync_error_fail_stops_the_partition() {
    let dir = tempfile::tempdir().unwrap();
    let handle = open(dir.path(), FsyncPolicy::Always);
    handle.append(batch("before", 1)).await.unwrap();
    handle.inject_fsync_failure();
    let err = handle.append(batch("during", 1)).await.unwrap_err();
    assert!(matches!(err, LogError::FailStopped(_)), "{err:?}");
    assert!(handle.is_failed());
    // Not acknowledged, so not visible.
    assert_eq!(handle.high_watermark(), 1);
    // A fail-stopped partition refuses reads too: its file contents are in doubt.
    assert!(matches!(handle.read(0, 100), Err(LogError::FailStopped(_))));
    let err = handle.append(batch("after", 1)).await.unwrap_err();
    assert!(matches!(err, LogError::FailStopped(_)), "{err:?}");
    handle.shutdown().await;
    // Reopening recovers; the unacknowledged batch may or may not have reached the disk, the
    // acknowledged one is there.
    let (log, report) =
        PartitionLog::open(dir.path(), LogConfig::default(), Clock::manual(T0)).unwrap();
    assert!(
        !report.clean_shutdown,
        "a failed log must not claim a clean shutdown"
    );
    assert!(log.log_end_offset() >= 1);
}

#[tokio::test]
async fn shutdown_drains_then_refuses_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let handle = open(dir.path(), FsyncPolicy::Never);
    let pending: Vec<_> = (0..10)
        .map(|i| {
            let h = handle.clone();
            tokio::spawn(async move { h.append(batch(&format!("s{i}"), 1)).await })
        })
        .collect();
    tokio::task::yield_now().await;
    handle.shutdown().await;
    handle.shutdown().await;
    let mut acked = 0;
    for p in pending {
        match p.await.unwrap() {
            Ok(_) => acked += 1,
            Err(LogError::Closed) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(matches!(
        handle.append(batch("late", 1)).await,
        Err(LogError::Closed)
    ));
    let (log, report) =
        PartitionLog::open(dir.path(), LogConfig::default(), Clock::manual(T0)).unwrap();
    assert!(report.clean_shutdown);
    assert_eq!(log.log_end_offset(), acked);
}

#[tokio::test]
async fn retention_and_config_through_the_handle() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let config = LogConfig {
        segment_bytes: 200,
        retention_ms: 1_000,
        ..LogConfig::default()
    };
    let (handle, report) =
        PartitionHandle::open(dir.path(), config.clone(), clock.clone(), labels()).unwrap();
    assert!(report.is_clean());
    for i in 0..6 {
        handle.append(batch(&format!("r{i}"), 1)).await.unwrap();
    }
    assert!(handle.segment_count() > 2);
    clock.advance_ms(10_000_000);
    let r = handle.enforce_retention().unwrap();
    assert!(r.deleted_segments > 0);
    assert_eq!(handle.log_start_offset(), 6);
    assert!(handle.read(6, 100).unwrap().bytes.is_empty());
    let mut c = handle.config();
    c.fsync = FsyncPolicy::Never;
    handle.update_config(c).unwrap();
    let before = handle.fsync_count();
    handle.append(batch("z", 1)).await.unwrap();
    assert_eq!(handle.fsync_count(), before);
    handle.shutdown().await;
}

#[test]
fn open_without_runtime_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let r = PartitionHandle::open(
        dir.path(),
        LogConfig::default(),
        Clock::manual(T0),
        labels(),
    );
    assert!(r.is_err());
}

/// Issue 12: an idle partition holds no writer task. One starts with the first append and
/// retires after `WRITER_IDLE_RETIRE` without work; appends queued across a retirement keep
/// their order, barriers wait for a retiring writer's last group, and the last handle dropped
/// with no writer running still closes the log cleanly.
#[tokio::test(start_paused = true)]
async fn the_writer_starts_on_demand_and_retires_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let handle = open(dir.path(), FsyncPolicy::Always);
    assert!(
        !handle.writer_running(),
        "an empty partition runs no writer"
    );
    handle.append(batch("first", 1)).await.unwrap();
    assert!(handle.writer_running());
    tokio::time::sleep(WRITER_IDLE_RETIRE + Duration::from_secs(1)).await;
    assert!(!handle.writer_running(), "the idle writer retired");

    // Many rounds of: queue appends, let the writer go idle while more are queued.
    let mut pending = Vec::new();
    for round in 0..20 {
        for i in 0..3 {
            pending.push(
                handle
                    .submit_append(batch(&format!("r{round}-{i}"), 1))
                    .await
                    .unwrap(),
            );
        }
        tokio::time::sleep(WRITER_IDLE_RETIRE * (round % 2)).await;
    }
    let mut offsets = Vec::new();
    for p in pending {
        offsets.push(p.wait().await.unwrap().base_offset);
    }
    assert_eq!(
        offsets,
        (1..=60).collect::<Vec<i64>>(),
        "in submission order"
    );
    handle.barrier().await;
    assert_eq!(handle.high_watermark(), 61);

    // Retired, then every handle dropped: the log is still closed cleanly.
    tokio::time::sleep(WRITER_IDLE_RETIRE + Duration::from_secs(1)).await;
    assert!(!handle.writer_running());
    drop(handle);
    let marker = dir.path().join(".clean_shutdown");
    for _ in 0..1000 {
        if marker.exists() {
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (log, report) =
        PartitionLog::open(dir.path(), LogConfig::default(), Clock::manual(T0)).unwrap();
    assert!(report.clean_shutdown);
    assert_eq!(log.log_end_offset(), 61);
}
