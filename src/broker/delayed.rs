//! Delayed publishing: a message with an `x-delay` header (milliseconds, as users of
//! RabbitMQ's delayed-message-exchange plugin know it) is routed when it is due, not when it
//! is published.
//!
//! Design: a delayed message is not routed at publish; it is appended, with its target
//! exchange, to the vhost's internal durable queue [`DELAY_QUEUE`], and
//! the publisher's confirm follows that append. One scheduler task per vhost takes every
//! message of that queue (they stay *unacked*, so a crash returns them and the scheduler
//! takes them again), keeps only `(due time, offset)` of each in memory — bodies stay in the
//! log — and when one is due, reads it back, routes it to its exchange as if it were published
//! then, waits until every copy is durable, and only then acks it. A crash between routing
//! and the ack routes it again (at least once, like every other hand-over in the broker);
//! nothing is lost.
//!
//! Unlike the plugin, any exchange type takes delayed messages (no `x-delayed-message`
//! exchange type is needed, though one is accepted: see [`super::exchange`]), and the delay
//! survives restarts because it is in the log, not in a Mnesia table. As with the plugin, a
//! delayed publish is never returned as unroutable (`mandatory` cannot apply when routing
//! happens later): a due message that matches nothing is dropped, counted in
//! `ferry_messages_unroutable_dropped_total`. A Kafka producer's record is appended to its
//! topic at once: a log cannot hold a record back, so `x-delay` applies to AMQP publishes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::queue::Queue;
use super::routing::Router;
use crate::log::SimpleRecord;

/// The internal queue holding each vhost's delayed messages. `amq.` names cannot be declared
/// by clients, so it cannot clash with a user queue; operators see its depth like any queue's.
pub const DELAY_QUEUE: &str = "amq.ferry.delayed";

/// The exchange a delayed message is routed to when due.
const TARGET_EXCHANGE_HEADER: &str = "ferry.delay.exchange";
/// When it is due, ms since the epoch (decimal ASCII).
const DUE_HEADER: &str = "ferry.delay.due";

/// How many due messages are routed per round.
const ROUND: usize = 256;

/// The delay a publish asks for: `x-delay` in ms, if positive (0 or negative means now, as in
/// the plugin).
pub fn delay_of(message: &crate::broker::message::Message) -> Option<i64> {
    let text = std::str::from_utf8(message.header("x-delay")?.as_bytes()?).ok()?;
    let text = text.trim();
    let ms = text
        .parse::<i64>()
        .ok()
        .or_else(|| text.parse::<f64>().ok().map(|f| f as i64))?;
    (ms > 0).then_some(ms)
}

/// The record stored in the delay queue for a message due at `due_ms`.
pub(crate) fn wrap(mut record: SimpleRecord, exchange: &str, due_ms: i64) -> SimpleRecord {
    record
        .headers
        .retain(|(k, _)| !k.starts_with("ferry.delay."));
    record.headers.push((
        TARGET_EXCHANGE_HEADER.into(),
        Some(Bytes::copy_from_slice(exchange.as_bytes())),
    ));
    record
        .headers
        .push((DUE_HEADER.into(), Some(Bytes::from(due_ms.to_string()))));
    record
}

fn header<'a>(record: &'a SimpleRecord, name: &str) -> Option<&'a [u8]> {
    record
        .headers
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.as_deref())
}

/// When a stored delayed message is due; a record without a readable due time is due now
/// (delivering early beats never).
fn due_of(record: &SimpleRecord) -> i64 {
    header(record, DUE_HEADER)
        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
        .unwrap_or(0)
}

/// Takes the delay headers off a stored message: (exchange, the message). The router reads
/// its headers-exchange view from the message itself (records of older versions also carry
/// a `ferry.delay.headers` copy, dropped here with the other delay headers).
fn unwrap(mut record: SimpleRecord) -> (String, SimpleRecord) {
    let exchange = header(&record, TARGET_EXCHANGE_HEADER)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default();
    record
        .headers
        .retain(|(k, _)| !k.starts_with("ferry.delay."));
    // The router stamps the exchange again when it routes the message.
    record
        .headers
        .retain(|(k, _)| k != super::routing::EXCHANGE_HEADER);
    (exchange, record)
}

/// The scheduler of one vhost's delay queue; runs until the router stops or the queue goes.
pub(crate) async fn run_scheduler(router: Router, q: Arc<Queue>) {
    let mut stop = router.subscribe_stop();
    let mut appends = q.subscribe_appends();
    let mut ready = q.subscribe_ready();
    // (due, offset) of every message taken and not yet routed.
    let mut schedule: BTreeSet<(i64, i64)> = BTreeSet::new();
    loop {
        if q.is_deleted() || *stop.borrow_and_update() {
            return;
        }
        appends.borrow_and_update();
        ready.borrow_and_update();
        // Take everything new (bodies are read once here for the due time, then dropped).
        loop {
            match q.take(1024, false) {
                Ok(msgs) if !msgs.is_empty() => {
                    for m in msgs {
                        schedule.insert((due_of(&m.record), m.offset));
                    }
                }
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the delay queue failed; retrying");
                    break;
                }
            }
        }
        let now = router.now_ms();
        let due: Vec<i64> = schedule
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(ROUND)
            .map(|(_, o)| *o)
            .collect();
        if !due.is_empty() {
            if route_due(&router, &q, &due).await {
                schedule.retain(|(_, o)| !due.contains(o));
                continue;
            }
            // A log error: keep them scheduled and try again shortly.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let wait = schedule
            .first()
            .map(|(at, _)| at.saturating_sub(now).clamp(1, 1000) as u64)
            .unwrap_or(1000);
        tokio::select! {
            r = appends.changed() => if r.is_err() { return },
            r = ready.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Routes the due messages at `offsets` and acks them once every copy is durable. False if
/// they could not be read or a copy could not be written (they stay unacked for a retry).
async fn route_due(router: &Router, q: &Arc<Queue>, offsets: &[i64]) -> bool {
    let records = match q.read(offsets) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "reading due delayed messages failed");
            return false;
        }
    };
    let mut pending = Vec::new();
    for o in offsets {
        let Some(record) = records.get(o) else {
            continue;
        };
        let (exchange, record) = unwrap(record.clone());
        match router.publish_now(q.vhost(), &exchange, record).await {
            Ok(p) => {
                if !p.routed {
                    metrics::counter!("ferry_messages_unroutable_dropped_total").increment(1);
                }
                pending.extend(p.pending)
            }
            // The exchange went away meanwhile: the message is dropped, as an unroutable one.
            Err(e) => {
                tracing::debug!(exchange = %exchange, error = %e, "a due delayed message could not be routed; dropped");
                metrics::counter!("ferry_messages_unroutable_dropped_total").increment(1);
            }
        }
    }
    for p in pending {
        if let Err(e) = p.wait().await {
            tracing::warn!(error = %e, "appending a due delayed message failed; will retry");
            return false;
        }
    }
    q.ack(offsets);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::message::{HeaderValue, Message};

    #[test]
    fn x_delay_values() {
        let with = |v: HeaderValue| Message {
            headers: vec![("x-delay".into(), v)],
            ..Message::default()
        };
        assert_eq!(delay_of(&with(HeaderValue::int(1500))), Some(1500));
        assert_eq!(delay_of(&with(HeaderValue::text("250"))), Some(250));
        assert_eq!(delay_of(&with(HeaderValue::float(99.9))), Some(99));
        assert_eq!(delay_of(&with(HeaderValue::int(0))), None);
        assert_eq!(delay_of(&with(HeaderValue::int(-5))), None);
        assert_eq!(delay_of(&with(HeaderValue::text("soon"))), None);
        assert_eq!(delay_of(&Message::default()), None);
    }

    #[test]
    fn wrap_and_unwrap_keep_the_message() {
        let r = SimpleRecord {
            key: Some(Bytes::from_static(b"rk")),
            value: Some(Bytes::from_static(b"body")),
            headers: vec![("amqp.message-id".into(), Some(Bytes::from_static(b"m1")))],
            timestamp: 7,
        };
        let stored = wrap(r.clone(), "ex", 1234);
        assert_eq!(due_of(&stored), 1234);
        let (ex, back) = unwrap(stored);
        assert_eq!(ex, "ex");
        assert_eq!(back.headers, r.headers);
        assert_eq!((back.key, back.value), (r.key, r.value));
    }
}
