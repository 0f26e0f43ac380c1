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
//! client is this module's own pipelined client (`amqp_client`), cheap enough per message that
//! its CPU share — reported beside the rates — stays far from limiting the run. The queue is
//! deleted afterwards (and on Ctrl-C) unless `--keep`; `--no-consumer` only publishes and
//! keeps the queue full, which is how the broker's memory per queued message is measured.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use amq_protocol::protocol::{basic, channel, confirm, connection, queue, AMQPClass};
use amq_protocol::types::FieldTable;
use amq_protocol::uri::AMQPUri;
use bytes::BytesMut;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{oneshot, Notify};

use super::amqp_client::{
    display_url, encode_ack, next_frame, short, Frame, PublishTemplate, Session,
};
use super::{cores, group, quantiles, random_suffix, size_label, BenchError, CpuMeter, Progress};
use crate::cli::AmqpBenchArgs;

/// Bytes at the start of each body that carry the time it was written.
const STAMP_LEN: usize = 8;
/// The channel both connections use.
const CH: u16 = 1;
/// How long each size publishes when neither `--messages` nor `--duration` is given.
const DEFAULT_SECS: f64 = 10.0;

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
    pub settings: Settings,
    pub cases: Vec<CaseReport>,
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

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// `confirm` or `end_to_end`.
    pub kind: &'static str,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub samples: usize,
}

impl Latency {
    fn from(kind: &'static str, mut samples: Vec<u64>) -> Option<Latency> {
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
    args: AmqpBenchArgs,
    uri: AMQPUri,
    timeout: Duration,
    /// The queue of the running case, deleted on Ctrl-C.
    active: Arc<Mutex<Option<String>>>,
}

/// Runs every case and prints the results.
pub async fn run(args: AmqpBenchArgs) -> Result<(), BenchError> {
    let uri = validate(&args)?;
    let timeout = Duration::from_secs(args.timeout.max(1));
    let active = Arc::new(Mutex::new(None::<String>));
    let keep = args.keep || args.no_consumer;
    let ctx = Ctx {
        args,
        uri: uri.clone(),
        timeout,
        active: active.clone(),
    };
    tokio::select! {
        result = run_cases(ctx) => result,
        _ = tokio::signal::ctrl_c() => {
            let queue = active.lock().take();
            let note = match queue {
                Some(q) if !keep => match delete_queue_fresh(&uri, timeout, &q).await {
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

fn validate(args: &AmqpBenchArgs) -> Result<AMQPUri, BenchError> {
    let bad = |m: String| Err(BenchError::Invalid(m));
    let uri = AMQPUri::from_str(&args.url).map_err(|e| {
        BenchError::Invalid(format!(
            "--url {}: {e} (expected amqp://USER:PASS@HOST:PORT/VHOST, e.g. \
             amqp://guest:guest@127.0.0.1:5672/%2f)",
            args.url
        ))
    })?;
    if !matches!(uri.scheme, amq_protocol::uri::AMQPScheme::AMQP) {
        return bad("--url: only amqp:// is supported (no TLS in the bench client)".into());
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
        settings: Settings {
            confirm_window: ctx.args.window,
            prefetch: ctx.args.prefetch,
            rate: ctx.args.rate,
            durable_queue: !ctx.args.transient_queue,
            delivery_mode: 2,
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
    timeout: Duration,
    queue: &str,
) -> Result<(), BenchError> {
    let mut s = Session::connect(uri, timeout).await?;
    s.open_channel(CH).await?;
    delete_queue(&mut s, queue).await?;
    s.close().await;
    Ok(())
}

fn protocol(addr: &str, wanted: &str, got: &AMQPClass) -> BenchError {
    BenchError::Protocol {
        addr: addr.to_string(),
        api: wanted.to_string(),
        detail: format!("expected {wanted}, got {got:?}"),
    }
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
    let mut s = Session::connect(&ctx.uri, ctx.timeout).await?;
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
    };
    Ok((case, server, frame_max))
}

/// Writes messages while the confirm window has room, until `--messages` or `--duration`, then
/// waits for the last confirms. Returns how many messages were written.
async fn publish_loop(
    ctx: &Ctx,
    shared: &Shared,
    write: &mut OwnedWriteHalf,
    queue: &str,
    size: usize,
    frame_max: usize,
) -> Result<u64, BenchError> {
    let props = basic::AMQPProperties::default().with_delivery_mode(2);
    let template = PublishTemplate::new(CH, queue, props, size, frame_max)?;
    let mut body = filler(size);
    let window = shared.window;
    let limit = ctx.args.messages.unwrap_or(u64::MAX);
    let duration = match (ctx.args.duration, ctx.args.messages) {
        (Some(d), _) => Some(d),
        (None, None) => Some(DEFAULT_SECS),
        (None, Some(_)) => None,
    };
    let deadline = duration.map(|d| Instant::now() + Duration::from_secs_f64(d));
    // Large windows of large messages are written in slices of about 1 MiB.
    let per_write = ((1 << 20) / template.wire_len()).clamp(1, window as usize) as u64;
    let mut buf = BytesMut::with_capacity(per_write as usize * template.wire_len());
    let mut tag = 0u64;
    let no_consumer = ctx.args.no_consumer;
    let started = Instant::now();
    let stalled = |what: &str| {
        BenchError::Failed(format!(
            "no publisher confirm for {} s {what} — the broker is stuck or overloaded (or \
             blocked publishers on a memory/disk alarm); check its log or retry with a larger \
             --timeout",
            ctx.timeout.as_secs()
        ))
    };
    loop {
        if shared.aborted.load(Ordering::Acquire) {
            return Ok(tag);
        }
        if tag >= limit || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let base = shared.confirmed.load(Ordering::Acquire);
        let room = window - (tag - base);
        if room == 0 {
            tokio::time::timeout(ctx.timeout, shared.room.notified())
                .await
                .map_err(|_| stalled("while publishing"))?;
            continue;
        }
        let mut n = room.min(limit - tag).min(per_write);
        if let Some(rate) = ctx.args.rate {
            // Messages due by now at `rate`, counting the first as due at once.
            let due = (started.elapsed().as_secs_f64() * rate as f64) as u64 + 1;
            if due <= tag {
                let next = started + Duration::from_secs_f64(tag as f64 / rate as f64);
                tokio::time::sleep_until(next.into()).await;
                continue;
            }
            n = n.min(due - tag);
        }
        buf.clear();
        // One stamp per write: the messages leave together, in one write.
        let now = shared.now();
        body[..STAMP_LEN].copy_from_slice(&now.to_le_bytes());
        for _ in 0..n {
            tag += 1;
            shared.sent_at[(tag % window) as usize].store(now, Ordering::Relaxed);
            template.append(&body, &mut buf);
        }
        write
            .write_all(&buf)
            .await
            .map_err(|e| BenchError::Closed {
                addr: ctx.uri.authority.host.clone(),
                api: "basic.publish".into(),
                reason: e.to_string(),
            })?;
        if no_consumer {
            shared.progress.store(base, Ordering::Relaxed);
        }
    }
    while shared.confirmed.load(Ordering::Acquire) < tag {
        if shared.aborted.load(Ordering::Acquire) {
            return Ok(tag);
        }
        tokio::time::timeout(ctx.timeout, shared.room.notified())
            .await
            .map_err(|_| stalled("for the last messages"))?;
    }
    Ok(tag)
}

/// A broker-initiated close or cancel seen in the measured phase, as an error.
fn broker_event(method: &AMQPClass) -> Option<BenchError> {
    let (what, code, text) = match method {
        AMQPClass::Connection(connection::AMQPMethod::Close(c)) => {
            ("connection", c.reply_code, c.reply_text.as_str())
        }
        AMQPClass::Channel(channel::AMQPMethod::Close(c)) => {
            ("channel", c.reply_code, c.reply_text.as_str())
        }
        AMQPClass::Basic(basic::AMQPMethod::Cancel(_)) => {
            return Some(BenchError::Failed(
                "the broker cancelled the bench consumer (was the queue deleted?)".into(),
            ))
        }
        _ => return None,
    };
    Some(BenchError::Failed(format!(
        "the broker closed the {what} during the run: {code} {text}"
    )))
}

fn read_error(e: std::io::Error, during: &str) -> BenchError {
    BenchError::Closed {
        addr: "the broker".into(),
        api: during.into(),
        reason: e.to_string(),
    }
}

/// Reads publisher confirms until told to stop, advancing `Shared::confirmed`.
async fn confirm_loop(
    io: &mut (OwnedReadHalf, BytesMut),
    frame_max: usize,
    shared: &Shared,
    mut stop: oneshot::Receiver<()>,
) -> Result<Confirms, BenchError> {
    let (read, rbuf) = io;
    let window = shared.window;
    let mut base = shared.confirmed.load(Ordering::Acquire);
    // Tags confirmed singly ahead of `base` (brokers may confirm out of order).
    let mut ahead = BTreeSet::new();
    let mut out = Confirms {
        nacked: 0,
        latencies: Vec::with_capacity(1 << 16),
    };
    loop {
        let now = shared.now();
        let before = base;
        while let Some(frame) =
            next_frame(rbuf, frame_max).map_err(|detail| BenchError::Protocol {
                addr: "the broker".into(),
                api: "publisher confirms".into(),
                detail,
            })?
        {
            let Frame::Method(_, method) = frame else {
                continue;
            };
            let (tag, multiple, nack) = match *method {
                AMQPClass::Basic(basic::AMQPMethod::Ack(a)) => (a.delivery_tag, a.multiple, false),
                AMQPClass::Basic(basic::AMQPMethod::Nack(n)) => (n.delivery_tag, n.multiple, true),
                ref other => match broker_event(other) {
                    Some(e) => return Err(e),
                    None => continue,
                },
            };
            let confirm = |t: u64, out: &mut Confirms| {
                if nack {
                    out.nacked += 1;
                } else {
                    let sent = shared.sent_at[(t % window) as usize].load(Ordering::Relaxed);
                    out.latencies.push(now.saturating_sub(sent));
                }
            };
            if multiple {
                for t in base + 1..=tag {
                    if !ahead.remove(&t) {
                        confirm(t, &mut out);
                    }
                }
                base = base.max(tag);
            } else if tag > base && ahead.insert(tag) {
                confirm(tag, &mut out);
                while ahead.remove(&(base + 1)) {
                    base += 1;
                }
            }
        }
        if base != before {
            shared.confirmed.store(base, Ordering::Release);
            shared.room.notify_one();
        }
        tokio::select! {
            biased;
            _ = &mut stop => return Ok(out),
            r = read.read_buf(rbuf) => match r {
                Ok(0) => return Err(read_error(std::io::ErrorKind::UnexpectedEof.into(), "publishing")),
                Ok(_) => {}
                Err(e) => return Err(read_error(e, "publishing")),
            },
        }
    }
}

/// Receives deliveries, measures their latency and acknowledges them in batches, until it has
/// seen `Shared::target` messages.
async fn consume_loop(
    io: &mut (OwnedReadHalf, OwnedWriteHalf, BytesMut),
    frame_max: usize,
    shared: &Shared,
    prefetch: u16,
    timeout: Duration,
) -> Result<Consumed, BenchError> {
    let (read, write, rbuf) = io;
    let ack_every = u64::from(prefetch / 2).max(1);
    let mut acks = BytesMut::with_capacity(256);
    let mut out = Consumed {
        messages: 0,
        latencies: Vec::with_capacity(1 << 16),
        last_at: 0,
    };
    // The delivery whose content is arriving: its tag, body bytes still expected, and whether
    // its stamp was read.
    let mut tag = 0u64;
    let mut left = 0u64;
    let mut stamped = true;
    let mut unacked = 0u64;
    let mut last_tag = 0u64;
    loop {
        let now = shared.now();
        let before = out.messages;
        while let Some(frame) =
            next_frame(rbuf, frame_max).map_err(|detail| BenchError::Protocol {
                addr: "the broker".into(),
                api: "deliveries".into(),
                detail,
            })?
        {
            let complete = match frame {
                Frame::Method(_, method) => match *method {
                    AMQPClass::Basic(basic::AMQPMethod::Deliver(d)) => {
                        tag = d.delivery_tag;
                        stamped = false;
                        false
                    }
                    ref other => match broker_event(other) {
                        Some(e) => return Err(e),
                        None => false,
                    },
                },
                Frame::Header(size) => {
                    left = size;
                    size == 0
                }
                Frame::Body(body) => {
                    if !stamped && body.len() >= STAMP_LEN {
                        let mut stamp = [0u8; STAMP_LEN];
                        stamp.copy_from_slice(&body[..STAMP_LEN]);
                        out.latencies
                            .push(now.saturating_sub(u64::from_le_bytes(stamp)));
                        stamped = true;
                    }
                    left = left.saturating_sub(body.len() as u64);
                    left == 0
                }
                Frame::Heartbeat => false,
            };
            if complete {
                out.messages += 1;
                last_tag = tag;
                unacked += 1;
                if unacked >= ack_every {
                    encode_ack(CH, last_tag, &mut acks)?;
                    unacked = 0;
                }
            }
        }
        if out.messages != before {
            out.last_at = now;
            shared.progress.store(out.messages, Ordering::Relaxed);
        }
        // Whatever this read completed is acknowledged now, so the broker's prefetch window
        // never waits on an ack the next read would have sent.
        if unacked > 0 {
            encode_ack(CH, last_tag, &mut acks)?;
            unacked = 0;
        }
        if !acks.is_empty() {
            write
                .write_all(&acks)
                .await
                .map_err(|e| read_error(e, "acknowledging"))?;
            acks.clear();
        }
        if out.messages >= shared.target.load(Ordering::Acquire) {
            return Ok(out);
        }
        if shared.aborted.load(Ordering::Acquire) {
            return Err(BenchError::Failed("the publisher failed".into()));
        }
        tokio::select! {
            biased;
            r = read.read_buf(rbuf) => match r {
                Ok(0) => return Err(read_error(std::io::ErrorKind::UnexpectedEof.into(), "consuming")),
                Ok(_) => {}
                Err(e) => return Err(read_error(e, "consuming")),
            },
            _ = shared.target_set.notified() => {}
            _ = tokio::time::sleep(timeout) => {
                let target = shared.target.load(Ordering::Acquire);
                return Err(BenchError::Failed(format!(
                    "no delivery for {} s with {} of {} messages consumed — the broker stopped \
                     delivering; check its log or retry with a larger --timeout",
                    timeout.as_secs(),
                    out.messages,
                    if target == u64::MAX { "?".to_string() } else { target.to_string() },
                )));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Output

fn ms(l: &Option<Latency>, f: fn(&Latency) -> f64) -> String {
    match l {
        Some(l) => format!("{:.2}", f(l)),
        None => "-".into(),
    }
}

fn pct(c: Option<f64>) -> String {
    c.map(|c| format!("{c:.0}%"))
        .unwrap_or_else(|| "n/a".into())
}

/// One line per finished case on stderr, so a long run shows its results as it goes.
fn case_line(case: &CaseReport) -> String {
    let mut line = format!(
        "  {}: published+confirmed {} msg/s",
        case.case,
        group(case.publish.messages_per_sec as u64),
    );
    if let Some(c) = &case.consume {
        let _ = write!(
            line,
            ", consumed {} msg/s, e2e p50 {} ms p99 {} ms p999 {} ms",
            group(c.messages_per_sec as u64),
            ms(&c.latency, |l| l.p50_ms),
            ms(&c.latency, |l| l.p99_ms),
            ms(&c.latency, |l| l.p999_ms),
        );
    }
    let _ = write!(line, " (client CPU {})", pct(case.client_cpu_percent));
    line
}

/// The summary table printed on stdout.
pub fn render_table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nferry bench amqp: {} ({}) — one {} queue, persistent messages, publisher confirms \
         (window {}), {}",
        report.url,
        report.server,
        if report.settings.durable_queue {
            "durable"
        } else {
            "non-durable"
        },
        report.settings.confirm_window,
        if report.settings.consumer {
            format!(
                "one consumer (prefetch {}, manual acks with `multiple`)",
                report.settings.prefetch
            )
        } else {
            "no consumer".to_string()
        }
    );
    if let Some(rate) = report.settings.rate {
        let _ = writeln!(out, "publish rate limited to {} messages/s", group(rate));
    }
    let _ = writeln!(
        out,
        "\n{:<6} {:<8} {:>10} {:>11} {:>8} {:>8} {:>8} {:>9} {:>8} {:>11} {:>8} {:>11}",
        "size",
        "phase",
        "messages",
        "msg/s",
        "MB/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "client CPU",
        "µs/msg",
        "machine CPU"
    );
    for case in &report.cases {
        let phases = [
            ("publish", Some(&case.publish)),
            ("consume", case.consume.as_ref()),
        ];
        for (name, phase) in phases {
            let Some(p) = phase else { continue };
            let _ = writeln!(
                out,
                "{:<6} {:<8} {:>10} {:>11} {:>8.1} {:>8} {:>8} {:>9} {:>8} {:>11} {:>8} {:>11}",
                case.case,
                name,
                group(p.messages),
                group(p.messages_per_sec as u64),
                p.mb_per_sec,
                ms(&p.latency, |l| l.p50_ms),
                ms(&p.latency, |l| l.p99_ms),
                ms(&p.latency, |l| l.p999_ms),
                ms(&p.latency, |l| l.max_ms),
                pct(case.client_cpu_percent),
                case.client_cpu_us_per_message
                    .map(|u| format!("{u:.2}"))
                    .unwrap_or_else(|| "n/a".into()),
                pct(case.machine_cpu_percent),
            );
        }
        if case.nacked > 0 {
            let _ = writeln!(
                out,
                "{:<6} {} messages nacked by the broker",
                case.case, case.nacked
            );
        }
        if !case.queue_deleted {
            let _ = writeln!(out, "{:<6} kept queue {}", case.case, case.queue);
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "publish: messages published and confirmed per second; latency = written → confirmed."
    );
    if report.settings.consumer {
        let _ = writeln!(
            out,
            "consume: messages delivered and acked per second, publisher and consumer running \
             together; latency = written by the publisher → delivered to the consumer (one clock, \
             one process)."
        );
    }
    let _ = writeln!(
        out,
        "client CPU: this process's user+system CPU / (wall time × {} cores) over the whole run; \
         µs/msg: that CPU time per confirmed message (publishing and consuming it). machine CPU: \
         all cores' busy time (client + a local broker + anything else).",
        report.client_cores
    );
    out
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
