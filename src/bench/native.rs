//! `ferry bench native`: confirmed publishing and consuming over the native protocol, the same
//! shape as `ferry bench amqp` so the two can be compared on one machine and run.
//!
//! For every message size it declares a fresh durable queue and runs, at the same time, a
//! publisher keeping `--window` publish requests in flight on one publish stream (the requests
//! the SDK's `EventPublisher` sends, written back to back by the bench itself, each answered
//! after its durability confirm), and a consumer on one subscription stream with `--prefetch`
//! unsettled deliveries that acks each one. Every payload
//! starts with the time it was sent (ns since the run started, little-endian), so the consumer
//! measures end-to-end latency on the same clock. The publisher and the consumer have a
//! connection each. The queue is deleted afterwards unless
//! `--keep`. `--transport tcp` runs the same over the TCP listener. The broker's CPU per
//! message is read from `/proc` as `ferry bench amqp` does (the local process bound to the
//! port, UDP for QUIC, or `--broker-pid`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use serde::Serialize;

use super::broker_cpu::BrokerProcess;
use super::{cores, group, random_suffix, size_label, BenchError, CpuMeter, Latency};
use crate::client::native::{
    connect, publish_batch_request, publish_request, ConnectOptions, EventMetadata,
    NativeConnection, PublishConfig, Transport, Trust,
};
use crate::proto::v1;
use tokio::io::AsyncWriteExt;

/// Bytes at the start of each payload that carry the time it was sent.
const STAMP_LEN: usize = 8;
const DEFAULT_SECS: f64 = 10.0;
const CONTENT_TYPE: &str = "application/octet-stream";

/// Flags of `ferry bench native`.
#[derive(Debug, Clone)]
pub struct NativeBenchSettings {
    /// The native listener, `HOST:PORT` (`tcp://` or `quic://` may prefix it).
    pub addr: String,
    /// Over the TCP listener rather than QUIC.
    pub tcp: bool,
    /// The broker process whose CPU is reported (else the local owner of the port).
    pub broker_pid: Option<u32>,
    /// Pin this certificate fingerprint...
    pub fingerprint: Option<String>,
    /// ... or the certificate in this PEM file.
    pub cert_file: Option<PathBuf>,
    pub user: String,
    pub password: String,
    /// Messages per size [default: publish for 10 s].
    pub messages: Option<u64>,
    /// Publish for this many seconds per size.
    pub duration: Option<f64>,
    pub size: Vec<usize>,
    /// Publish requests in flight (awaiting their confirm).
    pub window: usize,
    /// Messages per publish request (1: `publish`; more: `publish_batch`).
    pub batch: usize,
    /// The subscription's prefetch.
    pub prefetch: u32,
    /// Publish at most this many messages per second.
    pub rate: Option<u64>,
    pub keep: bool,
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub version: &'static str,
    pub addr: String,
    pub transport: &'static str,
    pub broker_process: Option<super::amqp::BrokerProcessReport>,
    pub client_cores: usize,
    pub window: usize,
    pub batch: usize,
    pub prefetch: u32,
    pub rate: Option<u64>,
    pub cases: Vec<CaseReport>,
}

#[derive(Debug, Serialize)]
pub struct CaseReport {
    pub case: String,
    pub message_bytes: usize,
    pub queue: String,
    pub published: u64,
    pub publish_messages_per_sec: f64,
    pub confirm_latency: Option<Latency>,
    pub consumed: u64,
    pub consume_messages_per_sec: f64,
    pub end_to_end_latency: Option<Latency>,
    pub client_cpu_percent: Option<f64>,
    /// The broker process's user + system CPU over wall time, in percent of one core.
    pub broker_cpu_percent: Option<f64>,
    /// The broker process's CPU time per published (and consumed) message.
    pub broker_cpu_us_per_message: Option<f64>,
}

/// Where a native bench connects and whose CPU it reports, from the flags `ferry bench native`
/// and `ferry bench es` share.
pub(super) struct NativeTarget {
    pub addr: std::net::SocketAddr,
    pub transport: Transport,
    pub trust: Trust,
    pub broker: Option<BrokerProcess>,
}

impl NativeTarget {
    /// `addr` is `IP:PORT`, optionally `tcp://` or `quic://`; `tcp` forces the TCP listener.
    pub(super) fn resolve(
        addr: &str,
        tcp: bool,
        fingerprint: &Option<String>,
        cert_file: &Option<PathBuf>,
        broker_pid: Option<u32>,
    ) -> Result<NativeTarget, BenchError> {
        let (scheme, hostport) = Transport::split_url(addr)
            .map_err(|e| BenchError::Invalid(format!("--native-addr {addr}: {e}")))?;
        let transport = if tcp { Transport::Tcp } else { scheme };
        let socket: std::net::SocketAddr = hostport
            .parse()
            .map_err(|_| BenchError::Invalid(format!("--native-addr {addr}: expected IP:PORT")))?;
        let trust =
            match (fingerprint, cert_file) {
                (Some(fp), None) => Trust::Fingerprint(fp.clone()),
                (None, Some(file)) => Trust::CertFile(file.clone()),
                _ => return Err(BenchError::Invalid(
                    "give one of --fingerprint and --cert-file (the broker logs its fingerprint; \
                     a local broker's certificate is <data_dir>/native/cert.pem)"
                        .into(),
                )),
            };
        let (ip, port) = (socket.ip().to_string(), socket.port());
        let broker = BrokerProcess::from_flag(broker_pid, || match transport {
            Transport::Tcp => BrokerProcess::listening_on(&ip, port),
            Transport::Quic => BrokerProcess::bound_udp(&ip, port),
        })?;
        Ok(NativeTarget {
            addr: socket,
            transport,
            trust,
            broker,
        })
    }

    /// Connection options for `user`, over the chosen transport.
    pub(super) fn options(&self, user: &str, password: &str) -> ConnectOptions {
        ConnectOptions::new(self.addr, self.trust.clone(), user, password)
            .with_transport(self.transport, self.addr)
    }
}

pub async fn run(s: NativeBenchSettings) -> Result<(), BenchError> {
    let target = NativeTarget::resolve(&s.addr, s.tcp, &s.fingerprint, &s.cert_file, s.broker_pid)?;
    let broker = target.broker.clone();
    // The publisher and the consumer have a connection each, as in `ferry bench amqp`: one
    // QUIC connection's packets are handled by one task at each end.
    let connect_one = || async {
        connect(target.options(&s.user, &s.password))
            .await
            .map_err(|e| BenchError::Failed(format!("connecting to {}: {e}", s.addr)))
    };
    let conn = connect_one().await?;
    let consumer_conn = connect_one().await?;
    let mut cases = Vec::new();
    for &size in &s.size {
        let case = run_case(&conn, &consumer_conn, &s, size, broker.as_ref()).await?;
        if !s.json {
            println!(
                "  {}: published+confirmed {} msg/s (confirm p50 {:.2} ms p99 {:.2} ms), consumed {} msg/s, e2e p50 {:.2} ms p99 {:.2} ms (client CPU {}, broker CPU {})",
                case.case,
                group(case.publish_messages_per_sec as u64),
                case.confirm_latency.as_ref().map_or(0.0, |l| l.p50_ms),
                case.confirm_latency.as_ref().map_or(0.0, |l| l.p99_ms),
                group(case.consume_messages_per_sec as u64),
                case.end_to_end_latency.as_ref().map_or(0.0, |l| l.p50_ms),
                case.end_to_end_latency.as_ref().map_or(0.0, |l| l.p99_ms),
                case.client_cpu_percent.map_or("n/a".to_string(), |p| format!("{p:.0}%")),
                match (case.broker_cpu_percent, case.broker_cpu_us_per_message) {
                    (Some(p), Some(us)) => format!("{p:.0}%, {us:.1} µs/msg"),
                    _ => "n/a".to_string(),
                },
            );
        }
        cases.push(case);
    }
    if s.json {
        let report = Report {
            tool: "ferry bench native",
            version: env!("CARGO_PKG_VERSION"),
            addr: s.addr.clone(),
            transport: match target.transport {
                Transport::Quic => "quic",
                Transport::Tcp => "tcp",
            },
            broker_process: broker.as_ref().map(|b| super::amqp::BrokerProcessReport {
                pid: b.pid,
                name: b.name.clone(),
            }),
            client_cores: cores(),
            window: s.window,
            batch: s.batch,
            prefetch: s.prefetch,
            rate: s.rate,
            cases,
        };
        let text =
            serde_json::to_string_pretty(&report).map_err(|e| BenchError::Failed(e.to_string()))?;
        println!("{text}");
    }
    Ok(())
}

async fn call(conn: &NativeConnection, op: v1::request::Op) -> Result<(), BenchError> {
    conn.call(&v1::Request { op: Some(op) })
        .await
        .map(|_| ())
        .map_err(|e| BenchError::Failed(e.to_string()))
}

async fn run_case(
    conn: &NativeConnection,
    consumer_conn: &NativeConnection,
    s: &NativeBenchSettings,
    size: usize,
    broker: Option<&BrokerProcess>,
) -> Result<CaseReport, BenchError> {
    let queue = format!(
        "ferry-bench-native-{}-{}",
        size_label(size),
        random_suffix()
    );
    call(
        conn,
        v1::request::Op::DeclareQueue(v1::DeclareQueue {
            name: queue.clone(),
            durable: true,
            ..Default::default()
        }),
    )
    .await?;
    let start = Instant::now();
    let published = Arc::new(AtomicU64::new(0));
    let (publishing_done, publishing_done_rx) = tokio::sync::watch::channel(false);
    let consumer = tokio::spawn(consume(
        consumer_conn.clone(),
        queue.clone(),
        s.prefetch,
        start,
        published.clone(),
        publishing_done_rx,
    ));
    let cpu = CpuMeter::start();
    let broker_before = broker.and_then(|b| b.cpu_time());
    let (confirms, publish_secs) = publish(conn, s, size, &queue, start, &published).await?;
    // The consumer stops as soon as it has seen everything, not at its next poll.
    let _ = publishing_done.send(true);
    let consumed = tokio::time::timeout(Duration::from_secs(60), consumer)
        .await
        .map_err(|_| BenchError::Failed("the consumer did not drain the queue in 60 s".into()))?
        .map_err(|e| BenchError::Failed(e.to_string()))??;
    let share = cpu.stop();
    let broker_used = match (broker_before, broker.and_then(|b| b.cpu_time())) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before)),
        _ => None,
    };
    if !s.keep {
        call(
            conn,
            v1::request::Op::DeleteQueue(v1::DeleteQueue {
                vhost: String::new(),
                name: queue.clone(),
            }),
        )
        .await?;
    }
    let n = published.load(Ordering::SeqCst);
    Ok(CaseReport {
        case: size_label(size),
        message_bytes: size,
        queue,
        published: n,
        publish_messages_per_sec: n as f64 / publish_secs.max(1e-9),
        confirm_latency: Latency::from("confirm", confirms),
        consumed: consumed.count,
        consume_messages_per_sec: consumed.count as f64 / consumed.secs.max(1e-9),
        end_to_end_latency: Latency::from("end_to_end", consumed.latencies),
        client_cpu_percent: share.client,
        broker_cpu_percent: broker_used
            .filter(|_| share.wall > 0.0)
            .map(|d| 100.0 * d.as_secs_f64() / share.wall),
        broker_cpu_us_per_message: broker_used
            .filter(|_| n > 0)
            .map(|d| d.as_secs_f64() * 1e6 / n as f64),
    })
}

/// Publishes until the count or the time is reached; returns confirm latencies (ns) and the
/// publishing time in seconds.
///
/// Like `ferry bench amqp`'s publisher, this one writes its own frames: the requests the SDK's
/// `EventPublisher` sends (same message, a UUIDv7 id each), pipelined on one publish stream,
/// as many as the window has room for in one write. The broker answers a publish stream in
/// request order, so answers are matched to send times by position. The SDK's per-call
/// futures and channels cost the client several microseconds per message, which on a machine
/// the client shares with the broker measured the client rather than the broker.
async fn publish(
    conn: &NativeConnection,
    s: &NativeBenchSettings,
    size: usize,
    queue: &str,
    start: Instant,
    published: &Arc<AtomicU64>,
) -> Result<(Vec<u64>, f64), BenchError> {
    let (mut send, mut reader) = conn
        .open_stream()
        .await
        .map_err(|e| BenchError::Failed(format!("opening the publish stream: {e}")))?;
    let config = PublishConfig::queue(queue);
    let window = s.window.max(1);
    let per_request = s.batch.max(1);
    let limit = s.messages.unwrap_or(u64::MAX);
    let until = s
        .duration
        .or(if s.messages.is_none() {
            Some(DEFAULT_SECS)
        } else {
            None
        })
        .map(|secs| start + Duration::from_secs_f64(secs));
    // Requests written and not yet answered, with the time each was sent, oldest first.
    let sent_at = RefCell::new(VecDeque::<u64>::with_capacity(window));
    let room = tokio::sync::Notify::new();
    let writing_done = Cell::new(false);
    let began = Instant::now();
    let writer = async {
        // Large windows of large messages are written in slices of about 1 MiB.
        let per_write = ((1 << 20) / (size.max(STAMP_LEN) * per_request).max(1)).clamp(1, window);
        let mut buf = bytes::BytesMut::new();
        let mut sent: u64 = 0;
        let result = loop {
            if sent >= limit || until.is_some_and(|u| Instant::now() >= u) {
                break Ok(());
            }
            let free = window.saturating_sub(sent_at.borrow().len());
            if free == 0 {
                room.notified().await;
                continue;
            }
            let mut requests = free.min(per_write) as u64;
            requests = requests.min((limit - sent).div_ceil(per_request as u64));
            if let Some(rate) = s.rate.filter(|r| *r > 0) {
                // Messages due by now at `rate`, counting the first as due at once.
                let due = (began.elapsed().as_secs_f64() * rate as f64) as u64 + 1;
                if due <= sent {
                    let next = began + Duration::from_secs_f64(sent as f64 / rate as f64);
                    tokio::time::sleep_until(next.into()).await;
                    continue;
                }
                requests = requests.min((due - sent).div_ceil(per_request as u64));
            }
            // One stamp per write: the messages leave together.
            let now = start.elapsed().as_nanos() as u64;
            buf.clear();
            for _ in 0..requests {
                let payload = || {
                    let mut payload = vec![0_u8; size.max(STAMP_LEN)];
                    payload[..STAMP_LEN].copy_from_slice(&now.to_le_bytes());
                    payload
                };
                let request = if per_request == 1 {
                    publish_request(
                        payload(),
                        CONTENT_TYPE,
                        EventMetadata::default(),
                        &config,
                        "",
                    )
                } else {
                    let events = (0..per_request)
                        .map(|_| (payload(), EventMetadata::default()))
                        .collect();
                    publish_batch_request(events, CONTENT_TYPE, &config)
                };
                crate::proto::codec::encode_into(&request, &mut buf);
                sent_at.borrow_mut().push_back(now);
            }
            sent += requests * per_request as u64;
            if let Err(e) = send.write_all(&buf).await {
                break Err(BenchError::Failed(format!("publish: {e}")));
            }
        };
        writing_done.set(true);
        // The broker ends the stream once it answered everything before the finish.
        let _ = send.finish();
        room.notify_one();
        result
    };
    let answers = async {
        let mut confirms = Vec::new();
        loop {
            if writing_done.get() && sent_at.borrow().is_empty() {
                return Ok(confirms);
            }
            let next = reader
                .next::<v1::Response>()
                .await
                .map_err(|e| BenchError::Failed(format!("publish stream: {e}")))?;
            let Some(response) = next else {
                if writing_done.get() && sent_at.borrow().is_empty() {
                    return Ok(confirms);
                }
                return Err(BenchError::Failed(
                    "the broker ended the publish stream before answering every publish".into(),
                ));
            };
            let count = match response.result {
                Some(v1::response::Result::Published(_)) => 1,
                Some(v1::response::Result::PublishedBatch(b)) => b.results.len() as u64,
                Some(v1::response::Result::Error(e)) => {
                    return Err(BenchError::Failed(format!(
                        "publish refused: {} ({})",
                        e.message, e.code
                    )))
                }
                other => {
                    return Err(BenchError::Failed(format!(
                        "unexpected answer to a publish: {other:?}"
                    )))
                }
            };
            let sent = sent_at.borrow_mut().pop_front().ok_or_else(|| {
                BenchError::Failed("the broker answered more publishes than were sent".into())
            })?;
            published.fetch_add(count, Ordering::SeqCst);
            confirms.push((start.elapsed().as_nanos() as u64).saturating_sub(sent));
            room.notify_one();
        }
    };
    // One task: the writer and the answer reader take turns, as the broker's side does. The
    // first error ends both: a refused publish must not leave the writer waiting for room.
    let ((), confirms) = tokio::try_join!(writer, answers)?;
    Ok((confirms, began.elapsed().as_secs_f64()))
}

struct Consumed {
    count: u64,
    secs: f64,
    latencies: Vec<u64>,
}

async fn consume(
    conn: NativeConnection,
    queue: String,
    prefetch: u32,
    start: Instant,
    published: Arc<AtomicU64>,
    mut publishing_done: tokio::sync::watch::Receiver<bool>,
) -> Result<Consumed, BenchError> {
    let req = v1::Request {
        op: Some(v1::request::Op::SubscribeQueue(v1::SubscribeQueue {
            vhost: String::new(),
            queue,
            prefetch,
        })),
    };
    let (mut send, mut reader) = conn
        .open_subscription(&req)
        .await
        .map_err(|e| BenchError::Failed(format!("subscribe: {e}")))?;
    let began = Instant::now();
    let mut latencies = Vec::new();
    let mut count = 0;
    // Settles gathered while more deliveries are already buffered, written together (as the
    // AMQP bench acks with `multiple`), so the client's writes do not set the pace.
    let mut settles = bytes::BytesMut::new();
    loop {
        if *publishing_done.borrow() && count >= published.load(Ordering::SeqCst) {
            break;
        }
        let buffered = reader
            .buffered::<v1::Response>()
            .map_err(|e| BenchError::Failed(format!("subscription: {e}")))?;
        let response = match buffered {
            Some(r) => r,
            None => {
                if !settles.is_empty() {
                    send.write_all(&settles.split())
                        .await
                        .map_err(|e| BenchError::Failed(format!("ack: {e}")))?;
                }
                let next = tokio::select! {
                    next = reader.next::<v1::Response>() => Ok(next),
                    // Publishing ended: check whether every message has been seen.
                    _ = publishing_done.changed(), if !*publishing_done.borrow() => Err(()),
                };
                match next {
                    Err(()) => continue,
                    Ok(Ok(Some(r))) => r,
                    Ok(Ok(None)) => {
                        return Err(BenchError::Failed("the subscription ended".into()))
                    }
                    Ok(Err(e)) => return Err(BenchError::Failed(format!("subscription: {e}"))),
                }
            }
        };
        let Some(v1::response::Result::Delivery(d)) = response.result else {
            return Err(BenchError::Failed(format!("unexpected frame {response:?}")));
        };
        let payload = d.message.map(|m| m.payload).unwrap_or_default();
        if let Some(stamp) = payload.get(..STAMP_LEN) {
            let mut b = [0_u8; STAMP_LEN];
            b.copy_from_slice(stamp);
            let now = start.elapsed().as_nanos() as u64;
            latencies.push(now.saturating_sub(u64::from_le_bytes(b)));
        }
        count += 1;
        let settle = v1::Request {
            op: Some(v1::request::Op::Settle(v1::Settle {
                delivery_tag: d.delivery_tag,
                outcome: v1::settle::Outcome::Ack as i32,
                reason: String::new(),
            })),
        };
        crate::proto::codec::encode_into(&settle, &mut settles);
    }
    if !settles.is_empty() {
        let _ = send.write_all(&settles).await;
    }
    let _ = send.finish();
    Ok(Consumed {
        count,
        secs: began.elapsed().as_secs_f64(),
        latencies,
    })
}
