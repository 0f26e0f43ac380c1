//! `ferry bench amqp`: a load generator for any AMQP 0-9-1 broker (Ferry, RabbitMQ, …).
//!
//! For every message size ("case") it declares a fresh durable queue
//! `ferry-bench-<size>-<random>` and runs one publisher and one consumer against it at the
//! same time, each on its own connection, the way RabbitMQ's PerfTest does:
//!
//! - the **publisher** puts its channel in confirm mode and keeps up to `--window` (256)
//!   persistent (delivery-mode 2) messages unconfirmed; whenever confirms free room it writes
//!   that many messages in one `write_all`. A separate task reads the confirms (`multiple` or
//!   single, acks and nacks) and reports the confirm latency (message written → confirmed).
//! - the **consumer** subscribes with `basic.qos` prefetch `--prefetch` (256) and manual acks,
//!   and acknowledges with `multiple` once per read of the socket (or every half prefetch), so
//!   the broker never waits for single acks.
//!
//! Every body starts with the time the publisher wrote it (nanoseconds since the run's start,
//! little-endian); publisher and consumer share one clock because they share this process, so
//! the consumer's receive time minus that stamp is the end-to-end latency of each message. The
//! run lasts `--messages` or `--duration`; the consumer then drains what was confirmed. The
//! client is Ferry's own pipelined client ([`crate::client::amqp`]), cheap enough per message that
//! its CPU share — reported beside the rates — stays far from limiting the run. The queue is
//! deleted afterwards (and on Ctrl-C) unless `--keep`; `--no-consumer` only publishes and
//! keeps the queue full, which is how the broker's memory per queued message is measured.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::amqp::{ReadStream, WriteStream};
use amq_protocol::protocol::{basic, channel, confirm, connection, queue, AMQPClass};
use amq_protocol::types::FieldTable;
use amq_protocol::uri::AMQPUri;
use bytes::BytesMut;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, Notify};

use super::broker_cpu::BrokerProcess;
use super::AmqpBenchSettings;
use super::{cores, group, random_suffix, size_label, BenchError, CpuMeter, Latency, Progress};
use crate::client::amqp::{
    display_url, encode_ack, next_frame, short, Frame, PublishTemplate, Session,
};
use crate::client::ClientError;

/// Bytes at the start of each body that carry the time it was written.
const STAMP_LEN: usize = 8;
/// The channel both connections use.
const CH: u16 = 1;
/// How long each size publishes when neither `--messages` nor `--duration` is given.
const DEFAULT_SECS: f64 = 10.0;

mod loops;
mod output;

use self::loops::*;
use self::output::case_line;
pub use self::output::render_table;

/// Everything one run measured; `--json` prints exactly this.
#[derive(Debug, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub version: &'static str,
    /// The broker URL without its password.
    pub url: String,
    /// `product version` the broker announced in connection.start.
    pub server: String,
    pub client_cores: usize,
    /// The broker process whose CPU is reported (`--broker-pid`, or the local owner of the
    /// URL's port); absent when none could be read.
    pub broker_process: Option<BrokerProcessReport>,
    pub settings: Settings,
    pub cases: Vec<CaseReport>,
}

#[derive(Debug, Serialize)]
pub struct BrokerProcessReport {
    pub pid: u32,
    /// Its command name, e.g. `ferry` or `beam.smp`.
    pub name: String,
}

#[derive(Debug, Serialize)]
pub struct Settings {
    pub confirm_window: u64,
    pub prefetch: u16,
    /// Publish rate limit in messages/s; `None` = as fast as confirms allow.
    pub rate: Option<u64>,
    pub durable_queue: bool,
    pub delivery_mode: u8,
    pub consumer: bool,
    pub frame_max: usize,
}

#[derive(Debug, Serialize)]
pub struct CaseReport {
    /// e.g. `16B`.
    pub case: String,
    pub message_bytes: usize,
    pub queue: String,
    pub queue_deleted: bool,
    /// Published and confirmed (basic.ack) by the broker.
    pub publish: Phase,
    /// Consumed and acknowledged; absent with `--no-consumer`.
    pub consume: Option<Phase>,
    /// Messages the broker refused with basic.nack.
    pub nacked: u64,
    /// Wall time from the first publish to the last message consumed (or confirmed).
    pub seconds: f64,
    /// This process's user + system CPU time over wall time × cores, in percent.
    pub client_cpu_percent: Option<f64>,
    /// This process's CPU time per confirmed message, publishing and consuming it together.
    pub client_cpu_us_per_message: Option<f64>,
    /// The whole machine's busy CPU over the run, in percent of all cores.
    pub machine_cpu_percent: Option<f64>,
    /// The broker process's user + system CPU time over wall time, in percent of one core.
    pub broker_cpu_percent: Option<f64>,
    /// The broker process's CPU time per confirmed message (storing, confirming, delivering
    /// and settling it).
    pub broker_cpu_us_per_message: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Phase {
    pub messages: u64,
    pub seconds: f64,
    pub messages_per_sec: f64,
    /// Body bytes per second, 1 MB = 10^6 bytes.
    pub mb_per_sec: f64,
    /// publish: confirm latency (written → confirmed); consume: end-to-end latency (written →
    /// delivered to the consumer).
    pub latency: Option<Latency>,
}

impl Phase {
    fn new(messages: u64, size: usize, seconds: f64, latency: Option<Latency>) -> Phase {
        let per_sec = |n: f64| if seconds > 0.0 { n / seconds } else { 0.0 };
        Phase {
            messages,
            seconds,
            messages_per_sec: per_sec(messages as f64),
            mb_per_sec: per_sec((messages * size as u64) as f64) / 1e6,
            latency,
        }
    }
}

/// What every case shares.
struct Ctx {
    args: AmqpBenchSettings,
    uri: AMQPUri,
    /// For `amqps://`: the CAs the broker's certificate must chain to.
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    /// The queue of the running case, deleted on Ctrl-C.
    active: Arc<Mutex<Option<String>>>,
    /// The broker process whose CPU each case reports.
    broker: Option<BrokerProcess>,
}

/// The delivery mode of the bench messages: 1 (transient) with `--transient`, else 2.
fn delivery_mode(args: &AmqpBenchSettings) -> u8 {
    if args.transient {
        1
    } else {
        2
    }
}

/// Runs every case and prints the results.
pub async fn run(args: AmqpBenchSettings) -> Result<(), BenchError> {
    let uri = validate(&args)?;
    let tls = match uri.scheme {
        amq_protocol::uri::AMQPScheme::AMQPS => Some(
            crate::tls::client_config(args.cacert.as_deref())
                .map_err(|e| BenchError::Invalid(e.to_string()))?,
        ),
        amq_protocol::uri::AMQPScheme::AMQP => None,
    };
    let timeout = Duration::from_secs(args.timeout.max(1));
    let active = Arc::new(Mutex::new(None::<String>));
    let keep = args.keep || args.no_consumer;
    let broker = BrokerProcess::from_flag(args.broker_pid, || {
        BrokerProcess::listening_on(&uri.authority.host, uri.authority.port)
    })?;
    let ctx = Ctx {
        args,
        uri: uri.clone(),
        tls: tls.clone(),
        timeout,
        active: active.clone(),
        broker,
    };
    tokio::select! {
        result = run_cases(ctx) => result,
        _ = tokio::signal::ctrl_c() => {
            let queue = active.lock().take();
            let note = match queue {
                Some(q) if !keep => match delete_queue_fresh(&uri, tls.as_ref(), timeout, &q).await {
                    Ok(()) => format!(" (deleted queue {q})"),
                    Err(e) => format!(" (could not delete queue {q}: {e})"),
                },
                Some(q) => format!(" (kept queue {q})"),
                None => String::new(),
            };
            Err(BenchError::Interrupted(note))
        }
    }
}

fn validate(args: &AmqpBenchSettings) -> Result<AMQPUri, BenchError> {
    let bad = |m: String| Err(BenchError::Invalid(m));
    let uri = AMQPUri::from_str(&args.url).map_err(|e| {
        BenchError::Invalid(format!(
            "--url {}: {e} (expected amqp://USER:PASS@HOST:PORT/VHOST, e.g. \
             amqp://guest:guest@127.0.0.1:5672/%2f)",
            args.url
        ))
    })?;
    if args.cacert.is_some() && !matches!(uri.scheme, amq_protocol::uri::AMQPScheme::AMQPS) {
        return bad(
            "--cacert is for amqps:// URLs (e.g. amqps://guest:guest@localhost:5671/%2f)".into(),
        );
    }
    if args.size.is_empty() {
        return bad("--size needs at least one value".into());
    }
    if let Some(s) = args.size.iter().find(|s| **s < STAMP_LEN) {
        return bad(format!(
            "--size {s}: messages must be at least {STAMP_LEN} bytes (each body carries its send \
             time)"
        ));
    }
    if let Some(s) = args.size.iter().find(|s| **s > 64 * 1024 * 1024) {
        return bad(format!("--size {s}: at most 64MiB"));
    }
    if args.window == 0 || args.window > 1 << 20 {
        return bad("--window must be between 1 and 1048576".into());
    }
    if args.prefetch == 0 {
        return bad("--prefetch must be at least 1".into());
    }
    if args.messages == Some(0) {
        return bad("--messages must be at least 1".into());
    }
    if args.rate == Some(0) {
        return bad("--rate must be at least 1 message/s".into());
    }
    if let Some(d) = args.duration {
        if !(d.is_finite() && d > 0.0) {
            return bad("--duration must be a positive number of seconds".into());
        }
    }
    Ok(uri)
}

async fn run_cases(ctx: Ctx) -> Result<(), BenchError> {
    let json = ctx.args.json;
    let mut cases = Vec::new();
    let mut server = String::new();
    let mut frame_max = 0;
    for &size in &ctx.args.size {
        let (case, srv, fm) = run_case(&ctx, size).await?;
        server = srv;
        frame_max = fm;
        if !json {
            eprintln!("{}", case_line(&case));
        }
        cases.push(case);
    }
    let report = Report {
        tool: "ferry bench amqp",
        version: env!("CARGO_PKG_VERSION"),
        url: display_url(&ctx.uri),
        server,
        client_cores: cores(),
        broker_process: ctx.broker.as_ref().map(|b| BrokerProcessReport {
            pid: b.pid,
            name: b.name.clone(),
        }),
        settings: Settings {
            confirm_window: ctx.args.window,
            prefetch: ctx.args.prefetch,
            rate: ctx.args.rate,
            durable_queue: !ctx.args.transient_queue,
            delivery_mode: delivery_mode(&ctx.args),
            consumer: !ctx.args.no_consumer,
            frame_max,
        },
        cases,
    };
    if json {
        let json = serde_json::to_string_pretty(&report)
            .map_err(|e| BenchError::Failed(format!("cannot write JSON: {e}")))?;
        println!("{json}");
    } else {
        print!("{}", render_table(&report));
    }
    Ok(())
}

/// Deterministic, non-constant filler for bodies.
fn filler(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i.wrapping_mul(31) + 7) as u8).collect()
}

async fn declare_queue(s: &mut Session, queue: &str, durable: bool) -> Result<(), BenchError> {
    let declare = AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: short(queue, "queue name")?,
        passive: false,
        durable,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments: FieldTable::default(),
    }));
    match s.call(CH, declare, "queue.declare").await? {
        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_)) => Ok(()),
        other => Err(protocol(s.addr(), "queue.declare-ok", &other)),
    }
}

async fn delete_queue(s: &mut Session, queue: &str) -> Result<(), BenchError> {
    let delete = AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
        queue: short(queue, "queue name")?,
        if_unused: false,
        if_empty: false,
        nowait: false,
    }));
    match s.call(CH, delete, "queue.delete").await? {
        AMQPClass::Queue(queue::AMQPMethod::DeleteOk(_)) => Ok(()),
        other => Err(protocol(s.addr(), "queue.delete-ok", &other)),
    }
}

/// Deletes `queue` over a connection of its own (after Ctrl-C, when the others are gone).
async fn delete_queue_fresh(
    uri: &AMQPUri,
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeout: Duration,
    queue: &str,
) -> Result<(), BenchError> {
    let mut s = Session::connect(uri, tls, timeout).await?;
    s.open_channel(CH).await?;
    delete_queue(&mut s, queue).await?;
    s.close().await;
    Ok(())
}

fn protocol(addr: &str, wanted: &str, got: &AMQPClass) -> BenchError {
    BenchError::from(ClientError::Protocol {
        addr: addr.to_string(),
        api: wanted.to_string(),
        detail: format!("expected {wanted}, got {got:?}"),
    })
}

/// State the publisher's writer, its confirm reader and the consumer share.
struct Shared {
    /// Zero of the body time stamps.
    epoch: Instant,
    window: u64,
    /// Highest tag such that it and every tag below it are confirmed (acked or nacked).
    confirmed: AtomicU64,
    /// When each unconfirmed tag was written, by `tag % window`: a tag is only written once
    /// every tag `window` below it is confirmed, so its slot is free.
    sent_at: Box<[AtomicU64]>,
    /// Confirms arrived (reader → writer).
    room: Notify,
    /// How many messages the consumer must see; `u64::MAX` while publishing.
    target: AtomicU64,
    /// `target` was set, or the run failed (→ consumer).
    target_set: Notify,
    /// A task failed; the others stop waiting.
    aborted: AtomicBool,
    /// For the progress line.
    progress: Arc<AtomicU64>,
}

impl Shared {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn abort(&self) {
        self.aborted.store(true, Ordering::Release);
        self.room.notify_one();
        self.target_set.notify_one();
    }
}

/// What the confirm reader saw.
struct Confirms {
    nacked: u64,
    latencies: Vec<u64>,
}

/// What the consumer saw.
struct Consumed {
    messages: u64,
    latencies: Vec<u64>,
    /// When the last message arrived, in `Shared::epoch` nanoseconds.
    last_at: u64,
}

/// Connects and opens channel [`CH`].
async fn session(ctx: &Ctx) -> Result<Session, BenchError> {
    let mut s = Session::connect(&ctx.uri, ctx.tls.as_ref(), ctx.timeout).await?;
    s.open_channel(CH).await?;
    Ok(s)
}

async fn run_case(ctx: &Ctx, size: usize) -> Result<(CaseReport, String, usize), BenchError> {
    let args = &ctx.args;
    let label = size_label(size);
    let queue_name = format!("ferry-bench-{size}-{}", random_suffix());

    let mut publisher = session(ctx).await?;
    let server = publisher.server.clone();
    let frame_max = publisher.frame_max();
    match publisher
        .call(
            CH,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: false,
            })),
            "confirm.select",
        )
        .await?
    {
        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_)) => {}
        other => return Err(protocol(publisher.addr(), "confirm.select-ok", &other)),
    }
    declare_queue(&mut publisher, &queue_name, !args.transient_queue).await?;
    *ctx.active.lock() = Some(queue_name.clone());

    let consumer = if args.no_consumer {
        None
    } else {
        let mut c = session(ctx).await?;
        let qos = AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: args.prefetch,
            global: false,
        }));
        match c.call(CH, qos, "basic.qos").await? {
            AMQPClass::Basic(basic::AMQPMethod::QosOk(_)) => {}
            other => return Err(protocol(c.addr(), "basic.qos-ok", &other)),
        }
        let consume = AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: short(&queue_name, "queue name")?,
            consumer_tag: "ferry-bench".into(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        }));
        match c.call(CH, consume, "basic.consume").await? {
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)) => {}
            other => return Err(protocol(c.addr(), "basic.consume-ok", &other)),
        }
        Some(c)
    };

    let window = args.window;
    let progress = Progress::start_with_unit(
        format!(
            "{label} {}",
            if consumer.is_some() {
                "consumed"
            } else {
                "confirmed"
            }
        ),
        args.messages,
        !args.json,
        "messages",
    );
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        window,
        confirmed: AtomicU64::new(0),
        sent_at: (0..window).map(|_| AtomicU64::new(0)).collect(),
        room: Notify::new(),
        target: AtomicU64::new(u64::MAX),
        target_set: Notify::new(),
        aborted: AtomicBool::new(false),
        progress: progress.counter(),
    });
    let meter = CpuMeter::start();
    let cpu_before = super::process_cpu_time();
    let broker_before = ctx.broker.as_ref().and_then(|b| b.cpu_time());

    let consumer_task = consumer.map(|c| {
        let (halves, read, write, rbuf) = c.into_split();
        let shared = shared.clone();
        let (frame_max, timeout, prefetch) = (halves.frame_max(), ctx.timeout, args.prefetch);
        let task = tokio::spawn(async move {
            let mut io = (read, write, rbuf);
            let r = consume_loop(&mut io, frame_max, &shared, prefetch, timeout).await;
            if r.is_err() {
                shared.abort();
            }
            (io, r)
        });
        (halves, task)
    });

    let (halves, read, mut write, rbuf) = publisher.into_split();
    let (stop_tx, stop_rx) = oneshot::channel();
    let confirm_task = {
        let shared = shared.clone();
        let frame_max = halves.frame_max();
        tokio::spawn(async move {
            let mut io = (read, rbuf);
            let r = confirm_loop(&mut io, frame_max, &shared, stop_rx).await;
            if r.is_err() {
                shared.abort();
            }
            (io, r)
        })
    };

    let published = publish_loop(ctx, &shared, &mut write, &queue_name, size, frame_max).await;
    if published.is_err() {
        shared.abort();
    }
    let publish_secs = shared.epoch.elapsed().as_secs_f64();
    let _ = stop_tx.send(());
    let ((read, rbuf), confirms) = confirm_task
        .await
        .map_err(|e| BenchError::Failed(format!("confirm reader failed: {e}")))?;
    let published = published?;
    let confirms = confirms?;
    let acked = published.saturating_sub(confirms.nacked);
    if !args.no_consumer {
        shared.target.store(acked, Ordering::Release);
        shared.target_set.notify_one();
    }
    let mut consumed = None;
    let mut consumer_session = None;
    if let Some((halves, task)) = consumer_task {
        let ((read, write, rbuf), result) = task
            .await
            .map_err(|e| BenchError::Failed(format!("consumer failed: {e}")))?;
        consumed = Some(result?);
        consumer_session = Some(Session::rejoin(halves, read, write, rbuf));
    }
    let cpu = meter.stop();
    let cpu_used = match (cpu_before, super::process_cpu_time()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let broker_used = match (
        broker_before,
        ctx.broker.as_ref().and_then(|b| b.cpu_time()),
    ) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    progress.finish().await;
    if let Some(c) = consumer_session {
        c.close().await;
    }
    let mut publisher = Session::rejoin(halves, read, write, rbuf);
    let keep = args.keep || args.no_consumer;
    let queue_deleted = if keep {
        false
    } else {
        delete_queue(&mut publisher, &queue_name).await?;
        true
    };
    *ctx.active.lock() = None;
    publisher.close().await;

    let publish = Phase::new(
        acked,
        size,
        publish_secs,
        Latency::from("confirm", confirms.latencies),
    );
    let consume = consumed.map(|c| {
        Phase::new(
            c.messages,
            size,
            c.last_at as f64 / 1e9,
            Latency::from("end_to_end", c.latencies),
        )
    });
    let case = CaseReport {
        case: label,
        message_bytes: size,
        queue: queue_name,
        queue_deleted,
        publish,
        consume,
        nacked: confirms.nacked,
        seconds: cpu.wall,
        client_cpu_percent: cpu.client,
        client_cpu_us_per_message: cpu_used
            .filter(|_| acked > 0)
            .map(|d| d.as_secs_f64() * 1e6 / acked as f64),
        machine_cpu_percent: cpu.machine,
        broker_cpu_percent: broker_used
            .filter(|_| cpu.wall > 0.0)
            .map(|d| 100.0 * d.as_secs_f64() / cpu.wall),
        broker_cpu_us_per_message: broker_used
            .filter(|_| acked > 0)
            .map(|d| d.as_secs_f64() * 1e6 / acked as f64),
    };
    Ok((case, server, frame_max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_suffixes() {
        assert_eq!(size_label(16), "16B");
        assert_eq!(size_label(1024), "1KiB");
        assert_ne!(random_suffix(), random_suffix());
        assert_eq!(filler(3), vec![7, 38, 69]);
    }

    #[test]
    fn latency_quantiles() {
        let samples: Vec<u64> = (1..=1000).map(|i| i * 1_000_000).collect();
        let l = Latency::from("confirm", samples).unwrap();
        assert_eq!(
            (l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms),
            (500.0, 990.0, 999.0, 1000.0)
        );
        assert!(Latency::from("confirm", vec![]).is_none());
    }
}
