//! Benchmarks of the segmented log (`cargo bench --bench log`), kept short (10 samples, ~3 s
//! each) so the whole run takes a few minutes.
//!
//! What is measured, and why:
//! - the raw disk: sequential `write` + `fdatasync` of the same volume with plain `std::fs` in
//!   the same directory (under `target/`, so the same filesystem), and the latency of a small
//!   write+fdatasync that grows the file vs one that overwrites already-written zeros — the
//!   baseline every log figure is compared with, and the evidence for the `preallocate` default;
//! - append throughput (MB/s and records/s) for 100 B and 1 KiB records, 100 records a batch:
//!   `fsync=never` through `PartitionLog` directly (target: >= 80% of the raw bandwidth) and
//!   through a `PartitionHandle`, and `fsync=always` through a handle, with and without
//!   preallocation;
//! - group commit scaling: 1, 8 and 64 concurrent appenders under `always` (must grow);
//! - sequential read throughput with 1 MiB reads, and one-batch reads (per-call overhead);
//! - the open-files budget: bookkeeping on an open file, and the cost of a reopen;
//! - the cost of handing blocking work to a thread: `spawn_blocking` vs `block_in_place`.
//!
//! Every timed figure is also accumulated here and printed as a summary table at the end,
//! with the ratios to the raw bandwidth.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput};
use ferry::clock::Clock;
use ferry::log::{
    encode_batch, FileCache, FsyncPolicy, LazyFile, LogConfig, LogLabels, PartitionHandle,
    PartitionLog, SimpleRecord,
};

const RECORDS_PER_BATCH: usize = 100;

#[derive(Default, Clone, Copy)]
struct Stats {
    bytes: u64,
    records: u64,
    time: Duration,
}

static STATS: Mutex<BTreeMap<String, Stats>> = Mutex::new(BTreeMap::new());

fn record(name: &str, bytes: u64, records: u64, time: Duration) {
    let mut stats = STATS.lock().unwrap();
    let s = stats.entry(name.to_string()).or_default();
    s.bytes += bytes;
    s.records += records;
    s.time += time;
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("bench-log")
}

fn fresh_dir(name: &str) -> PathBuf {
    let dir = root().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn make_batch(record_size: usize) -> BytesMut {
    let records: Vec<SimpleRecord> = (0..RECORDS_PER_BATCH)
        .map(|i| SimpleRecord {
            key: None,
            value: Some(Bytes::from(vec![b'a' + (i % 26) as u8; record_size])),
            headers: vec![],
            timestamp: 1_700_000_000_000 + i as i64,
        })
        .collect();
    encode_batch(&records)
}

fn config(fsync: FsyncPolicy, preallocate: bool) -> LogConfig {
    LogConfig {
        fsync,
        preallocate,
        ..LogConfig::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn labels() -> LogLabels {
    LogLabels {
        topic: "bench".into(),
        partition: 0,
    }
}

/// Sequential write of `total` bytes in `chunk`-sized writes, then one fdatasync; MB/s.
fn raw_write(dir: &Path, total: usize, chunk: usize) -> f64 {
    let path = dir.join("raw.bin");
    let buf = vec![0x5au8; chunk];
    let start = Instant::now();
    let mut f = File::create(&path).unwrap();
    let mut written = 0;
    while written < total {
        f.write_all(&buf).unwrap();
        written += chunk;
    }
    f.sync_data().unwrap();
    let secs = start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path).unwrap();
    written as f64 / secs / 1e6
}

/// Mean µs of a 4 KiB pwrite + fdatasync, appending (file grows) or overwriting written zeros.
fn raw_small_sync(dir: &Path, prezeroed: bool) -> f64 {
    const N: usize = 500;
    const SZ: usize = 4096;
    let path = dir.join("sync.bin");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    if prezeroed {
        f.write_all_at(&vec![0u8; N * SZ + (1 << 20)], 0).unwrap();
        f.sync_all().unwrap();
    }
    let buf = vec![7u8; SZ];
    let start = Instant::now();
    for i in 0..N {
        f.write_all_at(&buf, (i * SZ) as u64).unwrap();
        f.sync_data().unwrap();
    }
    let us = start.elapsed().as_secs_f64() * 1e6 / N as f64;
    drop(f);
    std::fs::remove_file(&path).unwrap();
    us
}

struct Raw {
    seq_mb_s: f64,
}

/// Appends `total` bytes of copies of `batch` straight to a `PartitionLog`, then fdatasyncs; MB/s.
fn log_never_volume(dir: &Path, batch: &BytesMut, total: usize, preallocate: bool) -> f64 {
    let log_dir = dir.join("log");
    let _ = std::fs::remove_dir_all(&log_dir);
    let (mut log, _) = PartitionLog::open(
        &log_dir,
        config(FsyncPolicy::Never, preallocate),
        Clock::system(),
    )
    .unwrap();
    let start = Instant::now();
    let mut written = 0;
    while written < total {
        let mut b = batch.clone();
        written += log.append(&mut b).unwrap().bytes;
    }
    log.sync().unwrap();
    let secs = start.elapsed().as_secs_f64();
    drop(log);
    std::fs::remove_dir_all(&log_dir).unwrap();
    written as f64 / secs / 1e6
}

/// The same through a `PartitionHandle` with `appenders` concurrent tasks (group commit
/// coalesces their writes), including the closing fdatasync; MB/s.
fn handle_never_volume(
    rt: &tokio::runtime::Runtime,
    batch: &BytesMut,
    total: usize,
    appenders: usize,
) -> f64 {
    let per_task = (total / batch.len()).div_ceil(appenders) as u64;
    let (elapsed, _) = run_handle(rt, FsyncPolicy::Never, false, batch, appenders, per_task);
    (per_task * appenders as u64 * batch.len() as u64) as f64 / elapsed.as_secs_f64() / 1e6
}

fn measure_raw() -> Raw {
    let dir = fresh_dir("raw");
    let rt = runtime();
    let total = 512 << 20;
    let small = make_batch(100);
    let large = make_batch(1024);
    let best = |f: &mut dyn FnMut() -> f64| (0..2).map(|_| f()).fold(0.0, f64::max);
    let seq = best(&mut || raw_write(&dir, total, 1 << 20));
    let seq_small = best(&mut || raw_write(&dir, total, small.len()));
    let log_small = best(&mut || log_never_volume(&dir, &small, total, false));
    let log_large = best(&mut || log_never_volume(&dir, &large, total, false));
    let log_large_pre = best(&mut || log_never_volume(&dir, &large, total, true));
    let handle_small = best(&mut || handle_never_volume(&rt, &small, total, 8));
    let handle_large = best(&mut || handle_never_volume(&rt, &large, total, 8));
    let grow = raw_small_sync(&dir, false);
    let zeroed = raw_small_sync(&dir, true);
    let pct = |x: f64| 100.0 * x / seq;
    println!(
        "raw disk vs log, 512 MiB each, write + one fdatasync, best of 2 ({}):",
        dir.display()
    );
    println!("  raw std::fs, 1 MiB writes                       {seq:8.1} MB/s");
    println!(
        "  raw std::fs, {} B writes                    {seq_small:8.1} MB/s ({:.0}%)",
        small.len(),
        pct(seq_small)
    );
    println!(
        "  PartitionLog never, 100 x 100 B batches         {log_small:8.1} MB/s ({:.0}% of raw 1 MiB, {:.0}% of raw same-size writes)",
        pct(log_small),
        100.0 * log_small / seq_small
    );
    println!(
        "  PartitionLog never, 100 x 1 KiB batches         {log_large:8.1} MB/s ({:.0}%)",
        pct(log_large)
    );
    println!(
        "  PartitionLog never, 100 x 1 KiB, preallocate    {log_large_pre:8.1} MB/s ({:.0}%)",
        pct(log_large_pre)
    );
    println!(
        "  handle never, 8 appenders, 100 B records        {handle_small:8.1} MB/s ({:.0}%)",
        pct(handle_small)
    );
    println!(
        "  handle never, 8 appenders, 1 KiB records        {handle_large:8.1} MB/s ({:.0}%)",
        pct(handle_large)
    );
    println!("  4 KiB write+fdatasync growing the file:         {grow:8.1} us");
    println!("  4 KiB write+fdatasync over written zeros:       {zeroed:8.1} us");
    Raw { seq_mb_s: seq }
}

fn sizes() -> [(usize, &'static str); 2] {
    [(100, "100B"), (1024, "1KiB")]
}

fn bench_append_log_never(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_log_never");
    for (size, label) in sizes() {
        for preallocate in [false, true] {
            let batch = make_batch(size);
            let len = batch.len() as u64;
            let name = format!("append_log_never/{label}/prealloc={preallocate}");
            group.throughput(Throughput::ElementsAndBytes {
                elements: RECORDS_PER_BATCH as u64,
                bytes: len,
            });
            group.bench_function(
                BenchmarkId::new(label, format!("prealloc={preallocate}")),
                |b| {
                    b.iter_custom(|iters| {
                        let dir = fresh_dir("log_never");
                        let (mut log, _) = PartitionLog::open(
                            &dir,
                            config(FsyncPolicy::Never, preallocate),
                            Clock::system(),
                        )
                        .unwrap();
                        let start = Instant::now();
                        for _ in 0..iters {
                            let mut b = batch.clone();
                            log.append(&mut b).unwrap();
                        }
                        log.sync().unwrap();
                        let elapsed = start.elapsed();
                        record(
                            &name,
                            len * iters,
                            RECORDS_PER_BATCH as u64 * iters,
                            elapsed,
                        );
                        drop(log);
                        let _ = std::fs::remove_dir_all(&dir);
                        elapsed
                    })
                },
            );
        }
    }
    group.finish();
}

/// `appenders` tasks each append `iters` batches through one handle; returns the elapsed time
/// including the final shutdown (which fsyncs).
fn run_handle(
    rt: &tokio::runtime::Runtime,
    fsync: FsyncPolicy,
    preallocate: bool,
    batch: &BytesMut,
    appenders: usize,
    iters: u64,
) -> (Duration, u64) {
    let dir = fresh_dir("handle");
    let elapsed = rt.block_on(async {
        let (handle, _) =
            PartitionHandle::open(&dir, config(fsync, preallocate), Clock::system(), labels())
                .unwrap();
        let before = handle.fsync_count();
        let start = Instant::now();
        let tasks: Vec<_> = (0..appenders)
            .map(|_| {
                let h = handle.clone();
                let batch = batch.clone();
                tokio::spawn(async move {
                    for _ in 0..iters {
                        h.append(batch.clone()).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        handle.shutdown().await;
        (start.elapsed(), handle.fsync_count() - before)
    });
    let _ = std::fs::remove_dir_all(&dir);
    elapsed
}

fn bench_append_handle(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("append_handle");
    for (size, label) in sizes() {
        let batch = make_batch(size);
        let len = batch.len() as u64;
        group.throughput(Throughput::ElementsAndBytes {
            elements: RECORDS_PER_BATCH as u64,
            bytes: len,
        });
        let cases = [
            ("never", FsyncPolicy::Never, false),
            ("always", FsyncPolicy::Always, false),
            ("always", FsyncPolicy::Always, true),
        ];
        for (policy_name, policy, preallocate) in cases {
            let name = format!("append_handle/{policy_name}/{label}/prealloc={preallocate}");
            group.bench_function(
                BenchmarkId::new(
                    format!("{policy_name}/{label}"),
                    format!("prealloc={preallocate}"),
                ),
                |b| {
                    b.iter_custom(|iters| {
                        let (elapsed, _) = run_handle(&rt, policy, preallocate, &batch, 1, iters);
                        record(
                            &name,
                            len * iters,
                            RECORDS_PER_BATCH as u64 * iters,
                            elapsed,
                        );
                        elapsed
                    })
                },
            );
        }
    }
    group.finish();
}

fn bench_group_commit(c: &mut Criterion) {
    let rt = runtime();
    let batch = make_batch(100);
    let len = batch.len() as u64;
    let mut group = c.benchmark_group("group_commit_always");
    for preallocate in [false, true] {
        for appenders in [1usize, 8, 64] {
            let name = format!("group_commit_always/{appenders}/prealloc={preallocate}");
            // One iteration = one append by each of the concurrent appenders.
            group.throughput(Throughput::ElementsAndBytes {
                elements: (RECORDS_PER_BATCH * appenders) as u64,
                bytes: len * appenders as u64,
            });
            group.bench_function(
                BenchmarkId::new(
                    format!("appenders={appenders}"),
                    format!("prealloc={preallocate}"),
                ),
                |b| {
                    b.iter_custom(|iters| {
                        let (elapsed, fsyncs) = run_handle(
                            &rt,
                            FsyncPolicy::Always,
                            preallocate,
                            &batch,
                            appenders,
                            iters,
                        );
                        let appends = iters * appenders as u64;
                        record(
                            &name,
                            len * appends,
                            RECORDS_PER_BATCH as u64 * appends,
                            elapsed,
                        );
                        record(&format!("{name}#fsyncs"), fsyncs, appends, elapsed);
                        elapsed
                    })
                },
            );
        }
    }
    group.finish();
}

fn bench_read(c: &mut Criterion) {
    let dir = fresh_dir("read");
    let (mut log, _) =
        PartitionLog::open(&dir, config(FsyncPolicy::Never, false), Clock::system()).unwrap();
    let batch = make_batch(100);
    let total_target = 64 << 20;
    let mut appended = 0;
    while appended < total_target {
        let mut b = batch.clone();
        appended += log.append(&mut b).unwrap().bytes;
    }
    log.sync().unwrap();
    let end = log.log_end_offset();
    let total = log.size_bytes();
    let mut group = c.benchmark_group("read");
    group.throughput(Throughput::ElementsAndBytes {
        elements: end as u64,
        bytes: total,
    });
    group.bench_function("sequential_1MiB_reads", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let mut offset = 0;
                while offset < end {
                    let slice = log.read(offset, 1 << 20, end).unwrap();
                    std::hint::black_box(&slice.bytes);
                    offset = slice.next_offset;
                }
            }
            let elapsed = start.elapsed();
            record(
                "read/sequential_1MiB_reads",
                total * iters,
                end as u64 * iters,
                elapsed,
            );
            elapsed
        })
    });
    // One batch per read, as a consumer tailing a partition fetches: the per-call overhead
    // (segment lookup, opening the file if needed) is what shows here, not the copy.
    let batches = (end / RECORDS_PER_BATCH as i64).min(10_000);
    group.throughput(Throughput::Elements(batches as u64));
    group.bench_function("one_batch_reads", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                for i in 0..batches {
                    let slice = log.read(i * RECORDS_PER_BATCH as i64, 1, end).unwrap();
                    std::hint::black_box(&slice.bytes);
                }
            }
            let elapsed = start.elapsed();
            record(
                "read/one_batch_reads",
                0,
                batches as u64 * RECORDS_PER_BATCH as u64 * iters,
                elapsed,
            );
            elapsed
        })
    });
    group.finish();
    drop(log);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The open-files budget (`open_files.rs`): what a read or write of an open file pays for the
/// bookkeeping (the hot path), and what one of a closed file pays to reopen it (evicting
/// another). 64 files round-robin through a budget of 16 reopen on every access.
fn bench_open_files(c: &mut Criterion) {
    let dir = fresh_dir("open-files");
    let cache = FileCache::new(16);
    let files: Vec<LazyFile> = (0..64)
        .map(|i| {
            let path = dir.join(format!("{i}.log"));
            std::fs::write(&path, vec![b'x'; 4096]).unwrap();
            LazyFile::closed(&cache, &path)
        })
        .collect();
    let mut group = c.benchmark_group("open_files");
    group.throughput(Throughput::Elements(1));
    group.bench_function("pin_open_file", |b| {
        b.iter(|| std::hint::black_box(files[0].pin().unwrap()))
    });
    let mut buf = [0u8; 4096];
    group.bench_function("read_4KiB_open_file", |b| {
        b.iter(|| files[0].read_exact_at(&mut buf, 0).unwrap())
    });
    let mut next = 0;
    group.bench_function("read_4KiB_reopening", |b| {
        b.iter(|| {
            next = (next + 1) % files.len();
            files[next].read_exact_at(&mut buf, 0).unwrap()
        })
    });
    group.finish();
    drop(files);
    let _ = std::fs::remove_dir_all(&dir);
}

fn bench_dispatch(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("writer_dispatch");
    group.bench_function("spawn_blocking", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    tokio::task::spawn_blocking(|| std::hint::black_box(1))
                        .await
                        .unwrap();
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("block_in_place", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                tokio::spawn(async move {
                    let start = Instant::now();
                    for _ in 0..iters {
                        tokio::task::block_in_place(|| std::hint::black_box(1));
                        tokio::task::yield_now().await;
                    }
                    start.elapsed()
                })
                .await
                .unwrap()
            })
        })
    });
    group.finish();
}

fn summary(raw: &Raw) {
    let stats = STATS.lock().unwrap();
    println!();
    println!("summary (all timed iterations, warm-up included):");
    println!(
        "  {:<52} {:>10} {:>14} {:>8}",
        "benchmark", "MB/s", "records/s", "vs raw"
    );
    for (name, s) in stats.iter() {
        let secs = s.time.as_secs_f64();
        if let Some(base) = name.strip_suffix("#fsyncs") {
            println!(
                "  {:<52} {} fsyncs for {} appends ({:.1} appends per fsync)",
                base,
                s.bytes,
                s.records,
                s.records as f64 / s.bytes.max(1) as f64
            );
            continue;
        }
        let mb_s = s.bytes as f64 / secs / 1e6;
        println!(
            "  {:<52} {:>10.1} {:>14.0} {:>7.0}%",
            name,
            mb_s,
            s.records as f64 / secs,
            100.0 * mb_s / raw.seq_mb_s
        );
    }
    println!(
        "  (vs raw: against {:.1} MB/s, raw 1 MiB writes)",
        raw.seq_mb_s
    );
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let raw = measure_raw();
    bench_append_log_never(&mut c);
    bench_append_handle(&mut c);
    bench_group_commit(&mut c);
    bench_read(&mut c);
    bench_open_files(&mut c);
    bench_dispatch(&mut c);
    c.final_summary();
    summary(&raw);
    let _ = std::fs::remove_dir_all(root());
    let _ = std::io::stdout().flush();
}
