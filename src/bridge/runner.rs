//! One bridge's task: connect both sides, pump batches, and when a side fails, back off and
//! try again.
//!
//! The pump moves batches of half `src-prefetch-count`, two at a time: while the
//! destination confirms one batch (`on-confirm`), the next is already taken from the source
//! and published, so neither side idles for a round trip. Batches are settled at the source
//! strictly in order, each only after all its confirms, which keeps order and the no-loss
//! promise simple. A failure anywhere drops both connections without settling, so the source
//! keeps (or gets back) everything unsettled in its order, and the next run sends it again:
//! duplicates are possible only for what was in flight at the failure (at most
//! `src-prefetch-count` messages).
//!
//! The destination is connected first: while it is down the source is not consumed at all,
//! so messages wait where they are (a Ferry queue keeps them durably; a remote queue keeps
//! them remotely). Retries back off exponentially from `reconnect-delay` with ±20% jitter,
//! up to [`MAX_BACKOFF`]; after [`BREAKER_THRESHOLD`] failures in a row the circuit breaker
//! opens (state `blocked`, shown in `GET /api/shovels`) and the bridge probes only once per
//! [`MAX_BACKOFF`] until a connection works again.
//!
//! Loops are cut with provenance: each forwarded message gets this bridge's id appended to
//! its `x-ferry-bridged` header; a message whose header already names the bridge, or names
//! `max-hops` bridges, is settled without being forwarded (counted as skipped).

use std::time::Duration;

use tokio::sync::watch;

use super::amqp::{AmqpSink, AmqpSource};
use super::definition::{AckMode, Definition, DeleteAfter, Endpoint, SourceSpec};
use super::ferry::{QueueSource, Sink, TopicSource};
use super::kafka::{KafkaSink, KafkaSource};
use super::status::{BridgeStatus, State};
use crate::broker::message::{HeaderValue, Message};
use crate::broker::BrokerCore;

/// Longest wait between attempts, and the breaker's probe interval.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Failures in a row that open the circuit breaker.
pub const BREAKER_THRESHOLD: u32 = 5;
/// The provenance header: bridge ids (`vhost/name`) the message crossed, comma-separated.
pub const BRIDGED_HEADER: &str = "x-ferry-bridged";

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("source: {0}")]
    Source(String),
    #[error("destination: {0}")]
    Destination(String),
    #[error("{0}")]
    Local(String),
}

/// Where a message came from at the source, to settle it there.
#[derive(Clone, Copy, Debug)]
pub enum Token {
    /// A Ferry queue offset.
    Offset(i64),
    /// An AMQP delivery tag.
    Tag(u64),
    /// A Kafka record.
    Kafka { partition: i32, offset: i64 },
}

pub struct Incoming {
    pub message: Message,
    /// The exchange (or topic) it was published to at the source.
    pub exchange: String,
    pub token: Token,
}

// The lapin ends are boxed: they are several times the size of the others.
enum Source {
    Ferry(QueueSource),
    Topic(TopicSource),
    Amqp(Box<AmqpSource>),
    Kafka(KafkaSource),
}

enum Destination {
    Ferry(Sink),
    Amqp(Box<AmqpSink>),
    Kafka(KafkaSink),
}

impl Source {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Incoming>, BridgeError> {
        match self {
            Source::Ferry(s) => s.next_batch(max).await,
            Source::Topic(s) => s.next_batch(max).await,
            Source::Amqp(s) => s.next_batch(max).await,
            Source::Kafka(s) => s.next_batch(max).await,
        }
    }

    async fn settle(&mut self, tokens: &[Token]) -> Result<(), BridgeError> {
        match self {
            Source::Ferry(s) => {
                s.settle(tokens);
                Ok(())
            }
            Source::Topic(s) => s.settle(tokens).await,
            Source::Amqp(s) => s.settle(tokens).await,
            Source::Kafka(s) => s.settle(tokens).await,
        }
    }

    fn pending(&self) -> Option<u64> {
        match self {
            Source::Ferry(s) => Some(s.pending()),
            Source::Topic(s) => Some(s.pending()),
            Source::Amqp(_) => None,
            Source::Kafka(s) => s.pending(),
        }
    }

    async fn close(self) {
        match self {
            Source::Ferry(s) => s.close().await,
            Source::Amqp(s) => (*s).close().await,
            Source::Kafka(_) | Source::Topic(_) => {}
        }
    }
}

/// What a published batch waits for before it may be settled at the source.
pub enum Confirms {
    /// Nothing (`on-publish`, `no-ack`).
    None,
    Ferry(Vec<crate::broker::routing::Durable>),
    Amqp(Vec<lapin::PublisherConfirm>),
    Kafka(std::sync::Arc<super::kafka::BatchReports>),
}

impl Confirms {
    /// Resolves once every message of the batch is confirmed; a nack or a failed delivery
    /// fails the batch.
    pub async fn wait(self) -> Result<(), BridgeError> {
        let dst = |e: String| BridgeError::Destination(e);
        match self {
            Confirms::None => Ok(()),
            Confirms::Ferry(pending) => {
                for p in pending {
                    p.wait().await.map_err(|e| dst(e.to_string()))?;
                }
                Ok(())
            }
            Confirms::Amqp(confirms) => {
                for c in confirms {
                    if c.await.map_err(|e| dst(e.to_string()))?.is_nack() {
                        return Err(dst("the destination nacked a message".into()));
                    }
                }
                Ok(())
            }
            Confirms::Kafka(reports) => reports.wait().await,
        }
    }
}

impl Destination {
    async fn publish(
        &mut self,
        batch: Vec<Message>,
        confirm: bool,
    ) -> Result<Confirms, BridgeError> {
        match self {
            Destination::Ferry(d) => d.publish(batch, confirm).await,
            Destination::Amqp(d) => d.publish(batch, confirm).await,
            Destination::Kafka(d) => d.publish(batch, confirm),
        }
    }

    async fn close(self) {
        match self {
            Destination::Ferry(_) | Destination::Kafka(_) => {}
            Destination::Amqp(d) => (*d).close().await,
        }
    }
}

/// Why a run of the pump ended without an error.
enum Ended {
    Stopped,
    Finished,
}

/// Runs the bridge until `stop` turns true or `src-delete-after` is reached.
pub async fn run(
    core: BrokerCore,
    def: Definition,
    status: BridgeStatus,
    mut stop: watch::Receiver<bool>,
) {
    let mut failures: u32 = 0;
    let mut forwarded_at_start = None;
    loop {
        if *stop.borrow() {
            break;
        }
        status.set_state(State::Starting, None);
        let attempt = run_once(&core, &def, &status, &mut stop, &mut forwarded_at_start);
        let result = attempt.await;
        match result {
            Ok(Ended::Stopped) => break,
            Ok(Ended::Finished) => {
                status.set_state(State::Terminated, Some("src-delete-after reached".into()));
                return;
            }
            Err((e, made_progress)) => {
                // Only forwarding resets the breaker: a destination that accepts connections
                // but refuses every message must not be hammered.
                if made_progress {
                    failures = 0;
                }
                failures = failures.saturating_add(1);
                status.reconnected();
                let open = failures >= BREAKER_THRESHOLD;
                status.set_breaker(open);
                let wait = backoff(def.reconnect_delay, failures);
                tracing::warn!(
                    bridge = %def.name, vhost = %def.vhost, error = %e, failures,
                    retry_in_ms = wait.as_millis() as u64, "bridge failed; retrying"
                );
                let reason = if open {
                    format!("circuit breaker open after {failures} failures: {e}")
                } else {
                    e.to_string()
                };
                status.set_state(State::Blocked, Some(reason));
                // While blocked, a Ferry source queue is where messages wait: keep its depth
                // current, since that is when an operator looks at it.
                let until = tokio::time::Instant::now() + wait;
                loop {
                    if let Some(p) = waiting_at_source(&core, &def) {
                        status.set_pending(Some(p));
                    }
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => break,
                        _ = tokio::time::sleep(PENDING_REFRESH) => {}
                        _ = stop.changed() => break,
                    }
                }
            }
        }
    }
    status.set_state(State::Terminated, Some("stopped".into()));
}

/// How often a blocked bridge refreshes `pending`.
const PENDING_REFRESH: Duration = Duration::from_millis(500);

/// Messages waiting in a Ferry source queue (`None` for other sources, or before the queue
/// exists).
fn waiting_at_source(core: &BrokerCore, def: &Definition) -> Option<u64> {
    let Endpoint::Ferry { vhost } = &def.src else {
        return None;
    };
    let queue = match &def.source {
        SourceSpec::Queue(q) => q.clone(),
        SourceSpec::Exchange { .. } => super::ferry::exchange_queue_name(&def.name),
        SourceSpec::Topic { .. } => return None,
    };
    core.router()
        .queue(vhost, &queue)
        .map(|q| q.message_count())
}

/// The wait after `failures` failures in a row: `base * 2^(failures-1)`, capped, ±20%.
pub fn backoff(base: Duration, failures: u32) -> Duration {
    let base = base.max(Duration::from_millis(50));
    let exp = base.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let capped = exp.min(MAX_BACKOFF.max(base));
    let jitter = f64::from(crate::util::random_bytes16()[0]) / 255.0 * 0.4 + 0.8;
    capped.mul_f64(jitter)
}

async fn open_destination(core: &BrokerCore, def: &Definition) -> Result<Destination, BridgeError> {
    let confirm = def.ack_mode == AckMode::OnConfirm;
    Ok(match &def.dest {
        Endpoint::Ferry { vhost } => {
            Destination::Ferry(Sink::open(core, vhost, &def.destination).await?)
        }
        Endpoint::Amqp { uris } => Destination::Amqp(Box::new(
            AmqpSink::open(uris, &def.destination, confirm).await?,
        )),
        Endpoint::Kafka { bootstrap, options } => {
            Destination::Kafka(KafkaSink::open(bootstrap, options, &def.destination).await?)
        }
    })
}

async fn open_source(core: &BrokerCore, def: &Definition) -> Result<Source, BridgeError> {
    let no_ack = def.ack_mode == AckMode::NoAck;
    Ok(match (&def.src, &def.source) {
        (Endpoint::Ferry { vhost }, SourceSpec::Queue(q)) => Source::Ferry(
            QueueSource::open(core, vhost, q, usize::from(def.prefetch), no_ack).await?,
        ),
        (Endpoint::Ferry { vhost }, SourceSpec::Exchange { exchange, key }) => {
            let queue =
                super::ferry::bind_exchange_queue(core, vhost, &def.name, exchange, key).await?;
            Source::Ferry(
                QueueSource::open(core, vhost, &queue, usize::from(def.prefetch), no_ack).await?,
            )
        }
        (Endpoint::Ferry { .. }, SourceSpec::Topic { topic, group }) => {
            Source::Topic(TopicSource::open(core, topic, group).await?)
        }
        (Endpoint::Amqp { uris }, source) => Source::Amqp(Box::new(
            AmqpSource::open(uris, source, def.prefetch, no_ack).await?,
        )),
        (Endpoint::Kafka { bootstrap, options }, SourceSpec::Topic { topic, group }) => {
            Source::Kafka(KafkaSource::open(bootstrap, options, topic, group).await?)
        }
        (Endpoint::Kafka { .. }, _) => {
            return Err(BridgeError::Source("a Kafka source reads a topic".into()))
        }
    })
}

/// One connected run; the error says whether it forwarded anything before failing.
async fn run_once(
    core: &BrokerCore,
    def: &Definition,
    status: &BridgeStatus,
    stop: &mut watch::Receiver<bool>,
    target: &mut Option<u64>,
) -> Result<Ended, (BridgeError, bool)> {
    let mut dest = open_destination(core, def).await.map_err(|e| (e, false))?;
    let mut source = match open_source(core, def).await {
        Ok(s) => s,
        Err(e) => {
            dest.close().await;
            return Err((e, false));
        }
    };
    if target.is_none() {
        *target = match def.delete_after {
            DeleteAfter::Never => Some(u64::MAX),
            DeleteAfter::Count(n) => Some(n),
            DeleteAfter::QueueLength => Some(match &source {
                Source::Ferry(s) => s.pending(),
                Source::Amqp(s) => s.queue_length(),
                Source::Kafka(_) | Source::Topic(_) => u64::MAX,
            }),
        };
    }
    let limit = target.unwrap_or(u64::MAX);
    status.set_state(State::Running, None);
    let before = status.forwarded_total();
    let result = pump(def, status, stop, &mut source, &mut dest, limit).await;
    source.close().await;
    dest.close().await;
    result.map_err(|e| (e, status.forwarded_total() > before))
}

/// A published batch waiting for its confirms.
struct Flight {
    tokens: Vec<Token>,
    forwarded: u64,
    skipped: u64,
    landed: std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BridgeError>> + Send>>,
}

enum Next {
    Landed(Result<(), BridgeError>),
    Batch(Result<Vec<Incoming>, BridgeError>),
    Stop,
}

async fn land(
    source: &mut Source,
    status: &BridgeStatus,
    flight: Flight,
) -> Result<(), BridgeError> {
    source.settle(&flight.tokens).await?;
    if flight.skipped > 0 {
        status.skipped(flight.skipped);
    }
    status.forwarded(flight.forwarded);
    status.set_breaker(false);
    Ok(())
}

async fn pump(
    def: &Definition,
    status: &BridgeStatus,
    stop: &mut watch::Receiver<bool>,
    source: &mut Source,
    dest: &mut Destination,
    limit: u64,
) -> Result<Ended, BridgeError> {
    let id = format!("{}/{}", def.vhost, def.name);
    let batch_size = usize::from(def.prefetch).div_ceil(2);
    let confirm = def.ack_mode == AckMode::OnConfirm;
    let mut flight: Option<Flight> = None;
    loop {
        let in_flight = flight.as_ref().map_or(0, |f| f.tokens.len() as u64);
        let done = status.forwarded_total() + in_flight;
        if done >= limit {
            match flight.take() {
                Some(mut f) => {
                    (&mut f.landed).await?;
                    land(source, status, f).await?;
                    continue;
                }
                None => return Ok(Ended::Finished),
            }
        }
        status.set_pending(source.pending());
        let room = usize::try_from(limit - done).unwrap_or(usize::MAX);
        let max = batch_size.min(room);
        let next = match flight.as_mut() {
            None => tokio::select! {
                b = source.next_batch(max) => Next::Batch(b),
                _ = stop.changed() => Next::Stop,
            },
            Some(f) => tokio::select! {
                r = &mut f.landed => Next::Landed(r),
                b = source.next_batch(max) => Next::Batch(b),
                _ = stop.changed() => Next::Stop,
            },
        };
        let batch = match next {
            Next::Stop => return Ok(Ended::Stopped),
            Next::Landed(r) => {
                r?;
                if let Some(f) = flight.take() {
                    land(source, status, f).await?;
                }
                continue;
            }
            Next::Batch(b) => b?,
        };
        let tokens: Vec<Token> = batch.iter().map(|m| m.token).collect();
        let mut out = Vec::with_capacity(batch.len());
        let mut skipped = 0u64;
        for incoming in batch {
            match stamp(def, &id, incoming) {
                Some(m) => out.push(m),
                None => skipped += 1,
            }
        }
        let forwarded = out.len() as u64;
        let confirms = if out.is_empty() {
            Confirms::None
        } else {
            dest.publish(out, confirm).await?
        };
        // Batches settle in order: the earlier one lands before this one is recorded.
        if let Some(mut f) = flight.take() {
            (&mut f.landed).await?;
            land(source, status, f).await?;
        }
        flight = Some(Flight {
            tokens,
            forwarded,
            skipped,
            landed: Box::pin(confirms.wait()),
        });
    }
}

/// Adds provenance to a message, or `None` when the loop guard says it must not cross.
fn stamp(def: &Definition, id: &str, incoming: Incoming) -> Option<Message> {
    let mut message = incoming.message;
    let path: Vec<String> = message
        .header(BRIDGED_HEADER)
        .and_then(HeaderValue::as_bytes)
        .map(|b| {
            String::from_utf8_lossy(b)
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if path.iter().any(|p| p == id) || path.len() >= def.max_hops as usize {
        return None;
    }
    let mut next = path;
    next.push(id.to_string());
    message.set_header(BRIDGED_HEADER, HeaderValue::text(next.join(",")));
    if def.add_forward_headers {
        let shovelled = serde_json::json!([{
            "shovel-type": "dynamic",
            "shovel-name": def.name,
            "shovel-vhost": def.vhost,
            "src-uri": def.src.display(),
            "dest-uri": def.dest.display(),
            "src-exchange": incoming.exchange,
            "src-exchange-key": message.routing_key(),
        }]);
        message.set_header("x-shovelled", HeaderValue::json(&shovelled));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        message.set_header("x-shovelled-timestamp", HeaderValue::timestamp(now));
    }
    Some(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let base = Duration::from_secs(1);
        let first = backoff(base, 1);
        assert!(first >= Duration::from_millis(800) && first <= Duration::from_millis(1200));
        let fourth = backoff(base, 4);
        assert!(fourth >= Duration::from_millis(6400) && fourth <= Duration::from_millis(9600));
        let late = backoff(base, 30);
        assert!(late <= MAX_BACKOFF.mul_f64(1.2) && late >= MAX_BACKOFF.mul_f64(0.8));
    }

    #[test]
    fn the_loop_guard_stops_a_message_that_crossed_this_bridge_or_max_hops() {
        let def = Definition::parse(
            "/",
            "a",
            &serde_json::json!({"src-queue": "q", "dest-queue": "r", "max-hops": 2}),
        )
        .unwrap();
        let incoming = |path: Option<&str>| {
            let mut message = Message::default();
            if let Some(p) = path {
                message.set_header(BRIDGED_HEADER, HeaderValue::text(p.to_string()));
            }
            Incoming {
                message,
                exchange: String::new(),
                token: Token::Offset(0),
            }
        };
        let fresh = stamp(&def, "//a", incoming(None)).unwrap();
        assert_eq!(
            fresh
                .header(BRIDGED_HEADER)
                .and_then(HeaderValue::as_bytes)
                .unwrap(),
            &bytes::Bytes::from_static(b"//a")
        );
        assert!(stamp(&def, "//a", incoming(Some("//b,//a"))).is_none());
        assert!(stamp(&def, "//a", incoming(Some("//b"))).is_some());
        assert!(stamp(&def, "//a", incoming(Some("//b,//c"))).is_none());
    }
}
