//! `ferry bench es`: event-store appends and catch-up reads over the native protocol, through
//! the SDK's [`EventStoreClient`].
//!
//! One run creates a fresh event-store topic and runs one append case per `--streams` count,
//! then one catch-up case. An append case keeps `--concurrency` one-event appends in flight
//! (each its own QUIC stream), every one with an expected revision: the first append to a
//! stream `NoStream`, every later one `Exact(last revision)`. With `Exact`, a stream can have
//! only one append in flight (the next one needs the revision this one returns), so the
//! workers are `min(concurrency, streams)`, each owning its share of the streams and going
//! round them: one stream measures one writer's round trip including the fsync, many streams
//! measure what group commit makes of concurrent writers. The catch-up case subscribes to `$all`
//! of every partition from position 0 and counts events until `CaughtUp`: the store's whole
//! content, in events/s. Every case reports the client's CPU share and, for a local broker
//! (found by its UDP socket, or `--broker-pid`), the broker's CPU per event. The topic is
//! deleted at the end unless `--keep`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::broker_cpu::BrokerProcess;
use super::{cores, group, random_suffix, BenchError, CpuMeter, Latency, Progress};
use crate::client::native::{
    connect, AppendError, CatchUpEvent, EventData, EventMetadata, EventStoreClient,
    ExpectedRevision, NativeConnection,
};
use crate::proto::v1;

const DEFAULT_SECS: f64 = 10.0;

/// Flags of `ferry bench es`.
#[derive(Debug, Clone)]
pub struct EsBenchSettings {
    /// The native listener, `IP:PORT`.
    pub addr: String,
    /// Pin this certificate fingerprint...
    pub fingerprint: Option<String>,
    /// ... or the certificate in this PEM file.
    pub cert_file: Option<PathBuf>,
    pub user: String,
    pub password: String,
    /// One append case per value: the number of streams the appends go to.
    pub streams: Vec<u64>,
    /// Appends per case [default: append for 10 s].
    pub appends: Option<u64>,
    /// Append for this many seconds per case.
    pub duration: Option<f64>,
    /// Appends in flight (at most one per stream).
    pub concurrency: usize,
    /// QUIC connections the appends are spread over.
    pub connections: usize,
    /// Payload bytes of each event.
    pub size: usize,
    /// Partitions of the bench store.
    pub partitions: u32,
    /// Skip the catch-up case.
    pub no_catch_up: bool,
    /// The broker's process id [default: the owner of the native port, when it is local].
    pub broker_pid: Option<u32>,
    pub keep: bool,
    pub json: bool,
}

/// Everything one run measured; `--json` prints exactly this.
#[derive(Debug, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub version: &'static str,
    pub addr: String,
    /// The event-store topic the run wrote.
    pub topic: String,
    pub partitions: u32,
    pub event_bytes: usize,
    pub concurrency: usize,
    pub connections: usize,
    pub client_cores: usize,
    /// The broker process whose CPU is reported; absent when none could be read.
    pub broker_process: Option<BrokerProcessReport>,
    pub appends: Vec<AppendCase>,
    pub catch_up: Option<CatchUpCase>,
    /// Events in the store after the run (every append case's appends).
    pub store_events: u64,
    pub topic_deleted: bool,
}

#[derive(Debug, Serialize)]
pub struct BrokerProcessReport {
    pub pid: u32,
    pub name: String,
}

/// What one case cost in CPU.
#[derive(Debug, Default, Serialize)]
pub struct Cpu {
    /// This process's user + system time over wall time x cores, in percent.
    pub client_cpu_percent: Option<f64>,
    /// The whole machine's busy CPU, in percent of all cores.
    pub machine_cpu_percent: Option<f64>,
    /// The broker's user + system time over wall time, in percent of one core.
    pub broker_cpu_percent: Option<f64>,
    /// The broker's CPU time per event (appended or delivered).
    pub broker_cpu_us_per_event: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct AppendCase {
    /// e.g. `1 stream`, `10000 streams`.
    pub case: String,
    pub streams: u64,
    /// Appends in flight at once: `min(concurrency, streams)`.
    pub in_flight: usize,
    /// Successful appends (one event each).
    pub appends: u64,
    /// Of those, first appends to a stream (`NoStream`); the rest were `Exact`.
    pub no_stream_appends: u64,
    pub exact_appends: u64,
    pub seconds: f64,
    pub appends_per_sec: f64,
    /// Append sent → answered (the event durable).
    pub latency: Option<Latency>,
    #[serde(flatten)]
    pub cpu: Cpu,
}

#[derive(Debug, Serialize)]
pub struct CatchUpCase {
    /// Events delivered before `CaughtUp`, over every partition.
    pub events: u64,
    pub seconds: f64,
    pub events_per_sec: f64,
    #[serde(flatten)]
    pub cpu: Cpu,
}

pub async fn run(s: EsBenchSettings) -> Result<(), BenchError> {
    validate(&s)?;
    let target = super::native::NativeTarget::resolve(
        &s.addr,
        false,
        &s.fingerprint,
        &s.cert_file,
        s.broker_pid,
    )?;
    let broker = target.broker.clone();
    let mut raw = Vec::new();
    for _ in 0..s.connections {
        raw.push(
            connect(target.options(&s.user, &s.password))
                .await
                .map_err(|e| BenchError::Failed(format!("connecting to {}: {e}", s.addr)))?,
        );
    }
    let conns: Vec<EventStoreClient> = raw.iter().cloned().map(EventStoreClient::new).collect();
    let admin = conns[0].clone();
    let topic = format!("ferry-bench-es-{}", random_suffix());
    admin
        .create_store(&topic, s.partitions)
        .await
        .map_err(|e| BenchError::Failed(format!("creating store {topic}: {e}")))?;
    if !s.json {
        println!(
            "ferry bench es: store {topic} ({} partition{}), {} B events, {} in flight, broker CPU {}",
            s.partitions,
            if s.partitions == 1 { "" } else { "s" },
            s.size,
            s.concurrency,
            broker
                .as_ref()
                .map_or("not visible".to_string(), |b| format!(
                    "of {} (pid {})",
                    b.name, b.pid
                )),
        );
    }
    let result = run_cases(&s, &conns, &topic, broker.as_ref()).await;
    let deleted = if s.keep {
        false
    } else {
        delete_topic(&raw[0], &topic).await.is_ok()
    };
    let (appends, catch_up) = result?;
    let store_events = appends.iter().map(|c| c.appends).sum();
    if s.json {
        let report = Report {
            tool: "ferry bench es",
            version: env!("CARGO_PKG_VERSION"),
            addr: s.addr.clone(),
            topic,
            partitions: s.partitions,
            event_bytes: s.size,
            concurrency: s.concurrency,
            connections: s.connections,
            client_cores: cores(),
            broker_process: broker.as_ref().map(|b| BrokerProcessReport {
                pid: b.pid,
                name: b.name.clone(),
            }),
            appends,
            catch_up,
            store_events,
            topic_deleted: deleted,
        };
        let text =
            serde_json::to_string_pretty(&report).map_err(|e| BenchError::Failed(e.to_string()))?;
        println!("{text}");
    } else if s.keep {
        println!("  kept store {topic} ({store_events} events)");
    }
    Ok(())
}

fn validate(s: &EsBenchSettings) -> Result<(), BenchError> {
    let bad = |m: &str| Err(BenchError::Invalid(m.to_string()));
    if s.streams.is_empty() || s.streams.contains(&0) {
        return bad("--streams needs counts of at least 1 (e.g. 1,10000)");
    }
    if s.concurrency == 0 {
        return bad("--concurrency must be at least 1");
    }
    if s.connections == 0 || s.connections > 64 {
        return bad("--connections must be between 1 and 64");
    }
    if s.partitions == 0 {
        return bad("--partitions must be at least 1");
    }
    if s.appends == Some(0) {
        return bad("--appends must be at least 1");
    }
    if let Some(d) = s.duration {
        if !(d.is_finite() && d > 0.0) {
            return bad("--duration must be a positive number of seconds");
        }
    }
    Ok(())
}

async fn run_cases(
    s: &EsBenchSettings,
    conns: &[EventStoreClient],
    topic: &str,
    broker: Option<&BrokerProcess>,
) -> Result<(Vec<AppendCase>, Option<CatchUpCase>), BenchError> {
    let mut cases = Vec::new();
    for (i, &streams) in s.streams.iter().enumerate() {
        let case = append_case(s, conns, topic, i, streams, broker).await?;
        if !s.json {
            println!(
                "  appends, {}: {} appends/s ({} appends, {} in flight; latency p50 {:.2} ms p99 {:.2} ms){}",
                case.case,
                group(case.appends_per_sec as u64),
                group(case.appends),
                case.in_flight,
                case.latency.as_ref().map_or(0.0, |l| l.p50_ms),
                case.latency.as_ref().map_or(0.0, |l| l.p99_ms),
                cpu_note(&case.cpu),
            );
        }
        cases.push(case);
    }
    let catch_up = if s.no_catch_up {
        None
    } else {
        let total = cases.iter().map(|c| c.appends).sum();
        let case = catch_up_case(s, &conns[0], topic, total, broker).await?;
        if !s.json {
            println!(
                "  catch-up of $all: {} events/s ({} events){}",
                group(case.events_per_sec as u64),
                group(case.events),
                cpu_note(&case.cpu),
            );
        }
        Some(case)
    };
    Ok((cases, catch_up))
}

fn cpu_note(cpu: &Cpu) -> String {
    let mut note = String::new();
    if let Some(p) = cpu.client_cpu_percent {
        note.push_str(&format!("; client CPU {p:.0}% of {} cores", cores()));
    }
    if let (Some(p), Some(us)) = (cpu.broker_cpu_percent, cpu.broker_cpu_us_per_event) {
        note.push_str(&format!("; broker CPU {p:.0}% of a core, {us:.1} µs/event"));
    }
    note
}

/// Measures CPU over one case: this process, the machine and the broker.
struct CaseMeter<'a> {
    meter: CpuMeter,
    broker: Option<&'a BrokerProcess>,
    broker_before: Option<Duration>,
}

impl<'a> CaseMeter<'a> {
    fn start(broker: Option<&'a BrokerProcess>) -> Self {
        Self {
            meter: CpuMeter::start(),
            broker,
            broker_before: broker.and_then(|b| b.cpu_time()),
        }
    }

    fn stop(&self, events: u64) -> (f64, Cpu) {
        let share = self.meter.stop();
        let broker_used = match (self.broker_before, self.broker.and_then(|b| b.cpu_time())) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a).as_secs_f64()),
            _ => None,
        };
        let cpu = Cpu {
            client_cpu_percent: share.client,
            machine_cpu_percent: share.machine,
            broker_cpu_percent: broker_used
                .filter(|_| share.wall > 0.0)
                .map(|b| 100.0 * b / share.wall),
            broker_cpu_us_per_event: broker_used
                .filter(|_| events > 0)
                .map(|b| b * 1e6 / events as f64),
        };
        (share.wall, cpu)
    }
}

/// What one worker did.
#[derive(Default)]
struct WorkerResult {
    appends: u64,
    no_stream: u64,
    latencies: Vec<u64>,
}

async fn append_case(
    s: &EsBenchSettings,
    conns: &[EventStoreClient],
    topic: &str,
    index: usize,
    streams: u64,
    broker: Option<&BrokerProcess>,
) -> Result<AppendCase, BenchError> {
    let label = if streams == 1 {
        "1 stream".to_string()
    } else {
        format!("{streams} streams")
    };
    // Fewer streams than workers would leave workers waiting on each other's revisions.
    let workers = (s.concurrency as u64).min(streams) as usize;
    let deadline = match (s.appends, s.duration) {
        (Some(_), None) => None,
        (_, d) => Some(Instant::now() + Duration::from_secs_f64(d.unwrap_or(DEFAULT_SECS))),
    };
    let progress =
        Progress::start_with_unit(format!("appends, {label}"), s.appends, !s.json, "appends");
    let done = progress.counter();
    let meter = CaseMeter::start(broker);
    let mut tasks = Vec::with_capacity(workers);
    for w in 0..workers {
        // Worker w owns streams w, w + workers, w + 2 * workers, ...
        let owned: Vec<String> = (w as u64..streams)
            .step_by(workers)
            .map(|n| format!("c{index}-{n}"))
            .collect();
        let quota = s
            .appends
            .map(|n| n / workers as u64 + u64::from((w as u64) < n % workers as u64));
        let es = conns[w % conns.len()].clone();
        let (topic, size, done) = (topic.to_string(), s.size, done.clone());
        tasks.push(tokio::spawn(async move {
            worker(es, topic, owned, size, quota, deadline, done).await
        }));
    }
    let mut total = WorkerResult::default();
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok(r)) => {
                total.appends += r.appends;
                total.no_stream += r.no_stream;
                total.latencies.extend(r.latencies);
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(BenchError::Failed(format!("append worker: {e}")));
            }
        }
    }
    let (seconds, cpu) = meter.stop(total.appends);
    progress.finish().await;
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(AppendCase {
        case: label,
        streams,
        in_flight: workers,
        appends: total.appends,
        no_stream_appends: total.no_stream,
        exact_appends: total.appends - total.no_stream,
        seconds,
        appends_per_sec: total.appends as f64 / seconds.max(1e-9),
        latency: Latency::from("append", total.latencies),
        cpu,
    })
}

/// Appends one event at a time to its streams in turn, each with the revision the last append
/// to it returned, until its quota or the deadline.
async fn worker(
    es: EventStoreClient,
    topic: String,
    streams: Vec<String>,
    size: usize,
    quota: Option<u64>,
    deadline: Option<Instant>,
    done: Arc<AtomicU64>,
) -> Result<WorkerResult, BenchError> {
    let mut revisions: HashMap<usize, u64> = HashMap::with_capacity(streams.len());
    let mut result = WorkerResult::default();
    let payload = vec![0x5a_u8; size];
    let mut next = 0;
    loop {
        if quota.is_some_and(|q| result.appends >= q)
            || deadline.is_some_and(|d| Instant::now() >= d)
        {
            return Ok(result);
        }
        let expected = match revisions.get(&next) {
            Some(&r) => ExpectedRevision::Exact(r),
            None => ExpectedRevision::NoStream,
        };
        let event = EventData {
            metadata: EventMetadata::new("bench.appended", "ferry-bench"),
            content_type: "application/octet-stream".into(),
            payload: payload.clone(),
        };
        let sent = Instant::now();
        match es
            .append(&topic, &streams[next], expected, vec![event])
            .await
        {
            Ok(r) => {
                result.latencies.push(sent.elapsed().as_nanos() as u64);
                if expected == ExpectedRevision::NoStream {
                    result.no_stream += 1;
                }
                revisions.insert(next, r.next_expected_revision);
                result.appends += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Err(AppendError::WrongExpectedVersion { current, expected }) => {
                return Err(BenchError::Failed(format!(
                    "append to {} refused: expected {expected:?}, stream at {current:?} (another \
                     writer on the bench store?)",
                    streams[next]
                )))
            }
            Err(AppendError::Client(e)) => {
                return Err(BenchError::Failed(format!(
                    "append to {}: {e}",
                    streams[next]
                )))
            }
        }
        next = (next + 1) % streams.len();
    }
}

/// Reads every partition's `$all` from position 0 until `CaughtUp`, all partitions at once.
async fn catch_up_case(
    s: &EsBenchSettings,
    es: &EventStoreClient,
    topic: &str,
    expected: u64,
    broker: Option<&BrokerProcess>,
) -> Result<CatchUpCase, BenchError> {
    let progress = Progress::start_with_unit(
        "catch-up of $all".to_string(),
        Some(expected),
        !s.json,
        "events",
    );
    let done = progress.counter();
    let meter = CaseMeter::start(broker);
    let mut tasks = Vec::new();
    for partition in 0..s.partitions as i32 {
        let (es, topic, done) = (es.clone(), topic.to_string(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut sub = es
                .subscribe_to_all(&topic, partition, 0, None, 0)
                .await
                .map_err(|e| BenchError::Failed(format!("subscribe to $all: {e}")))?;
            let mut events = 0_u64;
            loop {
                let next = tokio::time::timeout(Duration::from_secs(60), sub.next())
                    .await
                    .map_err(|_| BenchError::Failed("no catch-up message for 60 s".to_string()))?;
                match next {
                    Ok(Some(CatchUpEvent::Event(_))) => {
                        events += 1;
                        // Batched: one shared counter bump per event would cost more than
                        // the decoding being measured.
                        if events % 1024 == 0 {
                            done.fetch_add(1024, Ordering::Relaxed);
                        }
                    }
                    Ok(Some(CatchUpEvent::CaughtUp(_))) => break,
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        return Err(BenchError::Failed(
                            "the broker ended the subscription".into(),
                        ))
                    }
                    Err(e) => return Err(BenchError::Failed(format!("catch-up: {e}"))),
                }
            }
            sub.close();
            Ok::<u64, BenchError>(events)
        }));
    }
    let mut events = 0;
    for task in tasks {
        events += task
            .await
            .map_err(|e| BenchError::Failed(format!("catch-up reader: {e}")))??;
    }
    let (seconds, cpu) = meter.stop(events);
    progress.finish().await;
    Ok(CatchUpCase {
        events,
        seconds,
        events_per_sec: events as f64 / seconds.max(1e-9),
        cpu,
    })
}

async fn delete_topic(conn: &NativeConnection, topic: &str) -> Result<(), BenchError> {
    conn.call(&v1::Request {
        op: Some(v1::request::Op::DeleteTopic(v1::DeleteTopic {
            name: topic.to_string(),
        })),
    })
    .await
    .map(|_| ())
    .map_err(|e| BenchError::Failed(format!("deleting {topic}: {e}")))
}
