//! Dead-lettering: moving messages to a queue's dead-letter exchange with RabbitMQ's `x-death` history, settling them only once the copies are durable.

use super::*;

impl Router {
    /// Moves messages out of `q` into its dead-letter exchange (or drops them if it has none),
    /// adding the death record, and settles them in `q` once the copies are durable. The
    /// offsets must be unacked in `q`.
    pub async fn dead_letter(&self, q: &Arc<Queue>, dead: Vec<(i64, DeathReason)>) {
        self.dead_letter_noted(q, dead, None).await
    }

    async fn dead_letter_noted(
        &self,
        q: &Arc<Queue>,
        dead: Vec<(i64, DeathReason)>,
        error: Option<&str>,
    ) {
        let offsets: Vec<i64> = dead.iter().map(|(o, _)| *o).collect();
        let Some(dlx) = q.limits().dead_letter_exchange.clone() else {
            q.ack(&offsets);
            return;
        };
        let records = match q.read(&offsets) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(queue = q.name(), error = %e, "reading dead letters failed; requeueing");
                q.restore(&offsets);
                return;
            }
        };
        let now = self.clock.now_ms();
        let mut pending = Vec::new();
        for (offset, reason) in &dead {
            let Some(record) = records.get(offset) else {
                continue;
            };
            metrics::counter!("ferry_messages_dead_lettered_total", "reason" => reason.as_str())
                .increment(1);
            self.dead_lettered
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut record = with_death(record.clone(), q, *reason, now);
            if let Some(error) = error {
                note_error(&mut record, error);
            }
            let record = match &q.limits().dead_letter_routing_key {
                Some(k) => SimpleRecord {
                    key: Some(bytes::Bytes::copy_from_slice(k.as_bytes())),
                    ..record
                },
                None => record,
            };
            // A dead-letter exchange that does not exist drops the message (RabbitMQ).
            match Box::pin(self.publish_now(q.vhost(), &dlx, record)).await {
                Ok(p) => pending.extend(p.pending),
                Err(e) => {
                    tracing::debug!(queue = q.name(), error = %e, "dead-lettering dropped a message")
                }
            }
        }
        for p in pending {
            if let Err(e) = p.wait().await {
                tracing::warn!(queue = q.name(), error = %e, "dead-letter append failed; requeueing");
                q.restore(&offsets);
                return;
            }
        }
        q.ack(&offsets);
    }
}

/// Puts `error` into the newest death entry of `record` (see [`Router::dead_letter_rejected`]).
pub(super) fn note_error(record: &mut SimpleRecord, error: &str) {
    let mut deaths = death_history(record);
    if let Some(newest) = deaths.first_mut() {
        newest["error"] = Value::from(error);
        record.headers.retain(|(k, _)| k != DEATH_HEADER);
        record.headers.push((
            DEATH_HEADER.to_string(),
            Some(bytes::Bytes::from(Value::Array(deaths).to_string())),
        ));
    }
}

/// A record's death history (newest first); empty if it never died.
pub fn death_history(record: &SimpleRecord) -> Vec<Value> {
    record
        .headers
        .iter()
        .find(|(k, _)| k == DEATH_HEADER)
        .and_then(|(_, v)| v.as_ref())
        .and_then(|v| serde_json::from_slice(v).ok())
        .unwrap_or_default()
}

/// RabbitMQ's dead-letter cycle rule: a message that already died in `target` is dropped
/// rather than enqueued there again, unless a client rejected it somewhere since (a fully
/// automatic cycle of expiries or overflows would otherwise spin forever).
pub(super) fn is_death_cycle(deaths: &[Value], target: &str) -> bool {
    for d in deaths {
        if d.get("reason").and_then(Value::as_str) == Some(DeathReason::Rejected.as_str()) {
            return false;
        }
        if d.get("queue").and_then(Value::as_str) == Some(target) {
            return true;
        }
    }
    false
}

/// Adds (or counts up) the death entry for `q`/`reason`, newest first, as RabbitMQ does.
pub(super) fn with_death(
    mut record: SimpleRecord,
    q: &Queue,
    reason: DeathReason,
    now_ms: i64,
) -> SimpleRecord {
    let text = |k: &str| {
        record
            .headers
            .iter()
            .find(|(n, _)| n == k)
            .and_then(|(_, v)| v.as_ref())
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    let mut deaths: Vec<Value> = text(DEATH_HEADER)
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let exchange = text(EXCHANGE_HEADER).unwrap_or_default();
    let routing_key = record
        .key
        .as_ref()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .unwrap_or_default();
    let same = |d: &Value| {
        d.get("queue").and_then(Value::as_str) == Some(q.name())
            && d.get("reason").and_then(Value::as_str) == Some(reason.as_str())
    };
    let mut entry = match deaths.iter().position(same) {
        Some(i) => {
            let mut e = deaths.remove(i);
            let count = e.get("count").and_then(Value::as_u64).unwrap_or(0) + 1;
            e["count"] = Value::from(count);
            e
        }
        None => serde_json::json!({
            "queue": q.name(),
            "reason": reason.as_str(),
            "count": 1,
            "exchange": exchange,
            "routing-keys": [routing_key],
        }),
    };
    // x-first-death-* name the first death ever, even after its entry moved to the front
    // again: the flag travels with the entry.
    if deaths.is_empty() && entry.get("first").is_none() {
        entry["first"] = Value::Bool(true);
    }
    // RabbitMQ removes a dead-lettered message's own TTL, so it cannot expire again in the
    // queues it goes to, and keeps it in the death entry as `original-expiration`.
    if let Some(ttl) = text(TTL_HEADER) {
        entry["original-expiration"] = Value::from(ttl);
    }
    // `time` is when this (queue, reason) entry first happened; repeats only count up
    // (RabbitMQ 3.13+ keeps the first death's time, exchange and routing keys).
    if entry.get("time").is_none() {
        entry["time"] = Value::from(now_ms.max(0) / 1000);
    }
    deaths.insert(0, entry);
    record
        .headers
        .retain(|(k, _)| k != DEATH_HEADER && k != TTL_HEADER);
    record.headers.push((
        DEATH_HEADER.to_string(),
        Some(bytes::Bytes::from(Value::Array(deaths).to_string())),
    ));
    record.timestamp = now_ms;
    record
}

impl Router {
    /// Dead-letters one unacked message a consumer rejected, keeping its `error` (why the
    /// consumer gave up, e.g. a handler's error text) in the new death entry.
    pub async fn dead_letter_rejected(&self, q: &Arc<Queue>, offset: i64, error: Option<String>) {
        match error {
            None => {
                self.dead_letter(q, vec![(offset, DeathReason::Rejected)])
                    .await
            }
            Some(error) => {
                self.dead_letter_noted(q, vec![(offset, DeathReason::Rejected)], Some(&error))
                    .await
            }
        }
    }
}
