//! `ferry bench`: load generators that measure a running broker from the outside.
//!
//! [`kafka`] drives any Kafka-compatible broker (Ferry, Apache Kafka, Redpanda, …) over the
//! Kafka wire protocol with a small pipelined client ([`crate::client::kafka`], on tokio and the
//! `kafka-protocol` crate; no librdkafka), so the same figures can be taken from Ferry and from a
//! real Kafka side by side. It reports produce (acks=all) and consume throughput, end-to-end
//! latency, and the client's own CPU share, so a reader can tell whether the client limited the
//! run. [`amqp`] does the same for any AMQP 0-9-1 broker (Ferry, RabbitMQ, …): confirmed
//! publishing and consuming of persistent messages on a durable queue, with a pipelined client
//! ([`crate::client::amqp`], on tokio and `amq-protocol`'s frame codec; no lapin). [`native`]
//! and [`es`] measure Ferry's own QUIC protocol through the SDK: queue publishing and
//! consuming, and event-store appends with expected revisions and catch-up reads.
//!
//! This module holds what every generator shares: the error type, the CPU meter, latency
//! percentiles and the terminal progress line.

pub mod amqp;
mod broker_cpu;
pub mod es;
pub mod kafka;
pub mod native;
mod settings;

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use self::es::EsBenchSettings;
pub use self::native::NativeBenchSettings;
pub use self::settings::{AmqpBenchSettings, BenchTarget, KafkaBenchSettings};
use crate::client::ClientError;

/// `16B`, `1KiB`, `1MiB`: a message size as the tables print it.
pub(crate) fn size_label(size: usize) -> String {
    if size >= 1024 && size % (1024 * 1024) == 0 {
        format!("{}MiB", size / (1024 * 1024))
    } else if size >= 1024 && size % 1024 == 0 {
        format!("{}KiB", size / 1024)
    } else {
        format!("{size}B")
    }
}

/// Eight hex digits, so two bench runs (or two sizes of one) never share a queue or topic.
pub(crate) fn random_suffix() -> String {
    let b = crate::util::random_bytes16();
    format!("{:02x}{:02x}{:02x}{:02x}", b[0], b[1], b[2], b[3])
}

/// Why a benchmark could not run. Every message says what to try next.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The wire client failed: no broker, a refusal, a timeout, a malformed answer. Boxed: the
    /// client's error is large and rare, and every bench `Result` carries this type.
    #[error(transparent)]
    Client(Box<ClientError>),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Failed(String),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("interrupted{0}")]
    Interrupted(String),
}

impl From<ClientError> for BenchError {
    fn from(e: ClientError) -> Self {
        BenchError::Client(Box::new(e))
    }
}

/// Runs one benchmark. Builds its own tokio runtime.
pub fn run(target: BenchTarget) -> Result<(), BenchError> {
    match target {
        BenchTarget::Kafka(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("ferry-bench")
                .build()
                .map_err(BenchError::Runtime)?;
            runtime.block_on(kafka::run(args))
        }
        BenchTarget::Amqp(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("ferry-bench")
                .build()
                .map_err(BenchError::Runtime)?;
            runtime.block_on(amqp::run(args))
        }
        BenchTarget::Native(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("ferry-bench")
                .build()
                .map_err(BenchError::Runtime)?;
            runtime.block_on(native::run(args))
        }
        BenchTarget::Es(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("ferry-bench")
                .build()
                .map_err(BenchError::Runtime)?;
            runtime.block_on(es::run(args))
        }
    }
}

/// This process's CPU time (user + system) so far, from `/proc/self/stat`; `None` where that
/// file does not exist (not Linux) or cannot be parsed.
pub(crate) fn process_cpu_time() -> Option<Duration> {
    broker_cpu::stat_cpu_time(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// Number of CPUs this process may run on.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// `(total, idle)` jiffies of all CPUs since boot, from the first line of `/proc/stat`.
fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ...; idle + iowait is "not busy".
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((v.iter().sum(), idle))
}

/// CPU use over one phase.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuShare {
    /// Wall time in seconds.
    pub(crate) wall: f64,
    /// This process's user + system time over wall time x cores, in percent.
    pub(crate) client: Option<f64>,
    /// The whole machine's busy time (everything but idle and iowait) in percent: well above
    /// `client` + the broker's share means something else competed for the CPUs.
    pub(crate) machine: Option<f64>,
    /// CPU time (user + system) the broker process used, when measured
    /// ([`CpuMeter::with_broker`]).
    pub(crate) broker: Option<Duration>,
}

/// Measures wall time, this process's CPU share and the machine's over one phase.
pub(crate) struct CpuMeter {
    wall: Instant,
    cpu: Option<Duration>,
    machine: Option<(u64, u64)>,
    /// A local broker and its CPU time at the start.
    broker: Option<(broker_cpu::BrokerProcess, Duration)>,
}

impl CpuMeter {
    pub(crate) fn start() -> CpuMeter {
        CpuMeter {
            cpu: process_cpu_time(),
            machine: machine_jiffies(),
            broker: None,
            wall: Instant::now(),
        }
    }

    /// Also measures `broker`'s CPU time (when there is one and it is readable).
    pub(crate) fn with_broker(mut self, broker: Option<&broker_cpu::BrokerProcess>) -> CpuMeter {
        self.broker = broker.and_then(|b| Some((b.clone(), b.cpu_time()?)));
        self
    }

    /// The shares since [`CpuMeter::start`]; `None` where `/proc` cannot be read.
    pub(crate) fn stop(&self) -> CpuShare {
        let wall = self.wall.elapsed().as_secs_f64();
        let client = match (self.cpu, process_cpu_time()) {
            (Some(before), Some(after)) if wall > 0.0 => {
                let used = after.saturating_sub(before).as_secs_f64();
                Some(100.0 * used / (wall * cores() as f64))
            }
            _ => None,
        };
        let machine = match (self.machine, machine_jiffies()) {
            (Some((t0, i0)), Some((t1, i1))) if t1 > t0 => {
                let busy = (t1 - t0).saturating_sub(i1.saturating_sub(i0));
                Some(100.0 * busy as f64 / (t1 - t0) as f64)
            }
            _ => None,
        };
        let broker = self
            .broker
            .as_ref()
            .and_then(|(b, before)| Some(b.cpu_time()?.saturating_sub(*before)));
        CpuShare {
            wall,
            client,
            machine,
            broker,
        }
    }
}

/// Latency of one phase of either bench, in milliseconds (nearest rank).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Latency {
    /// What was timed: `ack` (Kafka produce request sent → response), `confirm` (AMQP publish
    /// written → confirmed) or `end_to_end` (sent → read by a consumer).
    pub kind: &'static str,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub samples: usize,
}

impl Latency {
    /// From samples in nanoseconds; `None` when there are none.
    pub(crate) fn from(kind: &'static str, mut samples: Vec<u64>) -> Option<Latency> {
        let n = samples.len();
        let q = quantiles(&mut samples, &[0.50, 0.99, 0.999, 1.0])?;
        Some(Latency {
            kind,
            p50_ms: q[0],
            p99_ms: q[1],
            p999_ms: q[2],
            max_ms: q[3],
            samples: n,
        })
    }
}

/// The given quantiles (0.0–1.0, nearest rank) of latency samples in nanoseconds, in
/// milliseconds. Sorts `samples`.
pub(crate) fn quantiles(samples: &mut [u64], qs: &[f64]) -> Option<Vec<f64>> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
        samples[rank - 1] as f64 / 1e6
    };
    Some(qs.iter().map(|&q| at(q)).collect())
}

/// A single self-updating progress line on stderr, shown only when stderr is a terminal.
pub(crate) struct Progress {
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// Starts reporting `done` (records so far) out of `total` (if known) under `label`.
    pub(crate) fn start(label: String, total: Option<u64>, enabled: bool) -> Progress {
        Progress::start_with_unit(label, total, enabled, "records")
    }

    /// [`Progress::start`] counting `unit` (`messages`, …) instead of records.
    pub(crate) fn start_with_unit(
        label: String,
        total: Option<u64>,
        enabled: bool,
        unit: &'static str,
    ) -> Progress {
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = (enabled && std::io::stderr().is_terminal()).then(|| {
            let done = done.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let mut last = (Instant::now(), 0u64);
                let period = Duration::from_millis(250);
                let mut tick =
                    tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let now = Instant::now();
                    let n = done.load(Ordering::Relaxed);
                    let dt = now.duration_since(last.0).as_secs_f64();
                    let rate = if dt > 0.0 {
                        (n.saturating_sub(last.1)) as f64 / dt
                    } else {
                        0.0
                    };
                    last = (now, n);
                    let of = total.map(|t| format!("/{}", group(t))).unwrap_or_default();
                    let mut err = std::io::stderr().lock();
                    let _ = write!(
                        err,
                        "\r\x1b[2K  {label}: {}{of} {unit}, {} {unit}/s, {:.1} s",
                        group(n),
                        group(rate as u64),
                        started.elapsed().as_secs_f64()
                    );
                    let _ = err.flush();
                }
            })
        });
        Progress { done, stop, task }
    }

    /// The counter the workers add to.
    pub(crate) fn counter(&self) -> Arc<AtomicU64> {
        self.done.clone()
    }

    /// Stops the line and clears it.
    pub(crate) async fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// `1234567` as `1,234,567`.
pub(crate) fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping_and_quantiles() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1234567), "1,234,567");
        let mut samples: Vec<u64> = (1..=100).map(|i| i * 1_000_000).collect();
        assert_eq!(
            quantiles(&mut samples, &[0.5, 0.99]),
            Some(vec![50.0, 99.0])
        );
        assert_eq!(quantiles(&mut [], &[0.5]), None);
    }

    #[test]
    fn cpu_time_is_readable_here() {
        if cfg!(target_os = "linux") {
            assert!(process_cpu_time().is_some());
            assert!(machine_jiffies().is_some());
        }
    }
}
