//! Dead-letter replay: moving the messages of a queue (used as a dead-letter queue) back to
//! where their first death says they came from, or to an exchange the operator names.
//!
//! Each message is republished, and settled in the dead-letter queue only once every copy is
//! durable, so a failure leaves it where it was (at-least-once: a crash between the two may
//! leave a copy in both places, never in none). The death history is dropped from the
//! republished copy, so it starts a fresh life: with the history it would be dropped by the
//! dead-letter cycle rule in the very queue it died in (an expired or overflowed message). Its
//! timestamp is reset for the same reason, or `x-message-ttl` would expire it again at once.
//!
//! The admin API (`POST /api/queues/{vhost}/{name}/replay`) is one caller; the decision of what
//! goes where lives here, beside dead-lettering itself.

use serde::Serialize;

use super::routing::{death_history, RoutingError, DEATH_HEADER};
use super::BrokerCore;

/// Messages a replay claims at a time.
const REPLAY_CHUNK: usize = 100;
/// Failure reasons kept in a report.
const MAX_REPORTED_ERRORS: usize = 10;

/// What to replay and where to.
#[derive(Clone, Debug, Default)]
pub struct ReplayRequest {
    /// Most messages to move (default: every message ready when the replay starts).
    pub count: Option<u64>,
    /// Publish to this exchange instead of the one in each message's first death entry
    /// (`""` is the default exchange).
    pub exchange: Option<String>,
    /// With `exchange`: the routing key to use (default: the one in the death entry, else the
    /// message's own key).
    pub routing_key: Option<String>,
}

/// How a replay went.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplayReport {
    pub replayed: u64,
    /// Messages left in the dead-letter queue because they could not be moved.
    pub failed: u64,
    /// Why, for the first few failures.
    pub errors: Vec<String>,
    /// Ready messages still in the queue afterwards.
    pub remaining: u64,
}

impl ReplayReport {
    fn fail(&mut self, why: impl FnOnce() -> String) {
        self.failed += 1;
        if self.errors.len() < MAX_REPORTED_ERRORS {
            self.errors.push(why());
        }
    }
}

/// Where a dead letter came from: the exchange and first routing key of its first death
/// (the entry marked `first`, else the oldest).
pub fn origin_of(deaths: &[serde_json::Value]) -> Option<(String, String)> {
    let first = deaths
        .iter()
        .find(|d| d.get("first").and_then(serde_json::Value::as_bool) == Some(true))
        .or_else(|| deaths.last())?;
    let exchange = first.get("exchange")?.as_str()?.to_string();
    let key = first
        .get("routing-keys")
        .and_then(|k| k.get(0))
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_string();
    Some((exchange, key))
}

impl BrokerCore {
    /// Moves the dead letters of queue `name` back (see the module doc).
    pub async fn replay_dead_letters(
        &self,
        vhost: &str,
        name: &str,
        req: &ReplayRequest,
    ) -> Result<ReplayReport, RoutingError> {
        let router = self.router().clone();
        let q = router.existing_queue(vhost, name)?;
        if req.routing_key.is_some() && req.exchange.is_none() {
            return Err(RoutingError::InvalidRequest(
                "routing_key needs exchange (use \"\" for the default exchange)".into(),
            ));
        }
        if let Some(ex) = req.exchange.as_deref() {
            if !ex.is_empty() && router.exchange(vhost, ex).is_none() {
                return Err(RoutingError::not_found("exchange", vhost, ex));
            }
        }
        // Bounded by what is ready now: a target that routes back into this queue must not
        // make the replay chase its own tail.
        let limit = req.count.unwrap_or(u64::MAX).min(q.message_count());
        let mut report = ReplayReport::default();
        while report.replayed < limit {
            let want = (limit - report.replayed).min(REPLAY_CHUNK as u64) as usize;
            let claimed = q.take(want, false)?;
            if claimed.is_empty() {
                break;
            }
            let mut waiting = Vec::with_capacity(claimed.len());
            let mut give_back = Vec::new();
            for m in claimed {
                let target = match req.exchange.clone() {
                    Some(ex) => {
                        let key = req
                            .routing_key
                            .clone()
                            .or_else(|| origin_of(&death_history(&m.record)).map(|(_, k)| k))
                            .or_else(|| {
                                m.record
                                    .key
                                    .as_ref()
                                    .map(|k| String::from_utf8_lossy(k).into_owned())
                            });
                        Some((ex, key.unwrap_or_default()))
                    }
                    None => origin_of(&death_history(&m.record)),
                };
                let Some((exchange, key)) = target else {
                    give_back.push(m.offset);
                    report.fail(|| {
                        format!(
                            "message at offset {} has no x-death entry; give an exchange to replay it to",
                            m.offset
                        )
                    });
                    continue;
                };
                let mut record = m.record;
                record.headers.retain(|(k, _)| k != DEATH_HEADER);
                record.key = Some(bytes::Bytes::from(key.clone().into_bytes()));
                record.timestamp = self.clock().now_ms();
                let outcome = router
                    .publish(
                        vhost,
                        &exchange,
                        crate::broker::message::Message::from_record(record),
                    )
                    .await;
                let why = match outcome {
                    Ok(p) if p.rejected => {
                        Some("a target queue is full (x-overflow reject-publish)".to_string())
                    }
                    Ok(p) if !p.routed => Some(format!(
                        "exchange '{exchange}' routes key '{key}' to no queue"
                    )),
                    Ok(p) => {
                        waiting.push((m.offset, p.pending));
                        None
                    }
                    Err(e) => Some(e.to_string()),
                };
                if let Some(why) = why {
                    give_back.push(m.offset);
                    report.fail(|| format!("offset {}: {why}", m.offset));
                }
            }
            let mut settled = Vec::with_capacity(waiting.len());
            for (offset, pending) in waiting {
                let mut durable = true;
                for p in pending {
                    if let Err(e) = p.wait().await {
                        durable = false;
                        if report.errors.len() < MAX_REPORTED_ERRORS {
                            report
                                .errors
                                .push(format!("offset {offset}: append failed: {e}"));
                        }
                    }
                }
                if durable {
                    settled.push(offset);
                    report.replayed += 1;
                } else {
                    report.failed += 1;
                    give_back.push(offset);
                }
            }
            // One settle (and one persisted state) per chunk rather than per message.
            q.ack(&settled);
            if !give_back.is_empty() {
                // Back to ready without counting a delivery; and stop, or the next claim would
                // pick the same messages again.
                q.restore(&give_back);
                break;
            }
        }
        report.remaining = q.message_count();
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn origin_is_the_first_death() {
        let deaths = vec![
            json!({"queue": "b", "reason": "expired", "exchange": "dlx", "routing-keys": ["k2"]}),
            json!({"queue": "a", "reason": "rejected", "exchange": "orders", "routing-keys": ["new"], "first": true}),
        ];
        assert_eq!(origin_of(&deaths), Some(("orders".into(), "new".into())));
        assert_eq!(origin_of(&deaths[..1]), Some(("dlx".into(), "k2".into())));
        assert_eq!(origin_of(&[]), None);
    }
}
