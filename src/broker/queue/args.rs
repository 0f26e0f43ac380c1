//! Queue arguments the core acts on (`x-message-ttl`, `x-max-length(-bytes)`, `x-overflow`,
//! `x-delivery-limit`, `x-max-priority`, retry and breaker settings...), parsed once from the
//! declaration into [`QueueLimits`].

use super::*;

/// A quorum queue's `x-delivery-limit` when none is given (RabbitMQ 4.0's default).
pub(super) const QUORUM_DEFAULT_DELIVERY_LIMIT: u32 = 20;

/// What a queue does with a publish that finds it full (`x-overflow`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest ready messages: RabbitMQ's default.
    #[default]
    DropHead,
    /// Refuse the new message (a publisher in confirm mode gets basic.nack).
    RejectPublish,
    /// Refuse it and dead-letter it with reason `maxlen`.
    RejectPublishDlx,
}

/// The queue arguments the core acts on, parsed from the declaration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueLimits {
    /// `x-message-ttl`: milliseconds a message may wait in the queue.
    pub message_ttl_ms: Option<i64>,
    /// `x-max-length`: ready messages kept.
    pub max_length: Option<u64>,
    /// `x-max-length-bytes`: total body bytes of the ready messages kept.
    pub max_length_bytes: Option<u64>,
    /// `x-overflow`.
    pub overflow: Overflow,
    /// `x-dead-letter-exchange`.
    pub dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`; `None` keeps the message's routing key.
    pub dead_letter_routing_key: Option<String>,
    /// `x-expires`: the queue is deleted after this many milliseconds unused.
    pub expires_ms: Option<i64>,
    /// `x-delivery-limit`: a message returned to the queue more often than this is
    /// dead-lettered with reason `delivery_limit`.
    pub delivery_limit: Option<u32>,
    /// `x-queue-type=quorum`: a durable queue that also counts deliveries.
    pub quorum: bool,
    /// `x-single-active-consumer`: one consumer receives; the next takes over when it goes.
    pub single_active_consumer: bool,
    /// `x-max-priority`: a priority queue with levels 0..=max.
    pub max_priority: Option<u8>,
    /// `x-delayed-retry-*`: returned messages wait before they are ready again.
    pub retry: Option<RetryPolicy>,
    /// `x-message-deduplication`: repeats of a message id within a window are dropped.
    pub dedup: Option<DedupPolicy>,
    /// `x-circuit-breaker-*`: every consumer's breaker (consumer arguments override it).
    pub breaker: Option<BreakerPolicy>,
    /// `x-schema-validation` (and `x-schema-subject`): messages routed here must match a
    /// registered schema.
    pub schema_validation: Option<crate::broker::schema_check::QueueValidation>,
}

impl QueueLimits {
    /// Parses and validates the arguments RabbitMQ would; an error names the argument.
    pub fn from_arguments(args: &serde_json::Value) -> Result<QueueLimits, String> {
        let mut limits = QueueLimits::default();
        let Some(map) = args.as_object() else {
            return Ok(limits);
        };
        let mut delivery_limit: Option<Option<u32>> = None;
        let non_negative = |key: &str, v: &serde_json::Value| -> Result<u64, String> {
            v.as_u64()
                .ok_or_else(|| format!("invalid arg '{key}': {v} (must be a non-negative integer)"))
        };
        let string = |key: &str, v: &serde_json::Value| -> Result<String, String> {
            Ok(v.as_str()
                .ok_or_else(|| format!("invalid arg '{key}': must be a string"))?
                .to_string())
        };
        let millis = |key: &str, v: &serde_json::Value| -> Result<i64, String> {
            i64::try_from(non_negative(key, v)?)
                .map_err(|_| format!("invalid arg '{key}': too large"))
        };
        for (key, v) in map {
            match key.as_str() {
                "x-message-ttl" => limits.message_ttl_ms = Some(millis(key, v)?),
                "x-max-length" => limits.max_length = Some(non_negative(key, v)?),
                "x-max-length-bytes" => limits.max_length_bytes = Some(non_negative(key, v)?),
                "x-dead-letter-exchange" => limits.dead_letter_exchange = Some(string(key, v)?),
                "x-dead-letter-routing-key" => {
                    limits.dead_letter_routing_key = Some(string(key, v)?)
                }
                "x-overflow" => {
                    limits.overflow = match v.as_str() {
                        Some("drop-head") => Overflow::DropHead,
                        Some("reject-publish") => Overflow::RejectPublish,
                        Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
                        _ => return Err(format!("invalid arg 'x-overflow': {v}")),
                    }
                }
                "x-expires" => {
                    // RabbitMQ refuses 0: a queue that expires at once is a mistake.
                    let ms = millis(key, v)?;
                    if ms == 0 {
                        return Err("invalid arg 'x-expires': 0 (must be positive)".into());
                    }
                    limits.expires_ms = Some(ms);
                }
                "x-delivery-limit" => {
                    // RabbitMQ 4: a negative limit means unlimited.
                    delivery_limit = Some(match v.as_i64() {
                        Some(n) if n < 0 => None,
                        _ => Some(u32::try_from(non_negative(key, v)?).unwrap_or(u32::MAX)),
                    });
                }
                "x-queue-type" => match v.as_str() {
                    Some("classic") => {}
                    Some("quorum") => limits.quorum = true,
                    Some("stream") => {
                        return Err("arg 'x-queue-type' \"stream\" is not supported yet".into())
                    }
                    _ => return Err(format!("invalid arg 'x-queue-type': {v}")),
                },
                "x-max-priority" => {
                    // RabbitMQ refuses more than 255 levels (a priority is one byte).
                    let max = non_negative(key, v)?;
                    limits.max_priority = Some(u8::try_from(max).map_err(|_| {
                        format!("invalid arg '{key}': {max} (must be at most 255)")
                    })?);
                }
                "x-single-active-consumer" => {
                    limits.single_active_consumer = v
                        .as_bool()
                        .ok_or_else(|| format!("invalid arg '{key}': {v} (must be a boolean)"))?
                }
                _ => {}
            }
        }
        limits.retry = RetryPolicy::from_arguments(map)?;
        limits.dedup = DedupPolicy::from_arguments(map)?;
        limits.breaker = BreakerPolicy::from_arguments(map)?;
        limits.schema_validation =
            crate::broker::schema_check::QueueValidation::from_arguments(map)?;
        // Quorum queues default to a delivery limit of 20 (RabbitMQ 4.0), so a poison message
        // cannot loop forever, and so do queues with delayed retry (LavinMQ): retrying with
        // backoff forever would hide a poison message instead of dead-lettering it. Classic
        // queues have none unless asked.
        limits.delivery_limit = match delivery_limit {
            Some(explicit) => explicit,
            None if limits.quorum || limits.retry.is_some() => Some(QUORUM_DEFAULT_DELIVERY_LIMIT),
            None => None,
        };
        if limits.dead_letter_routing_key.is_some() && limits.dead_letter_exchange.is_none() {
            return Err(
                "invalid arg 'x-dead-letter-routing-key': needs x-dead-letter-exchange".into(),
            );
        }
        Ok(limits)
    }

    /// Whether the router must run a maintenance task for this queue.
    pub fn needs_maintenance(&self) -> bool {
        self.message_ttl_ms.is_some()
            || self.max_length.is_some()
            || self.max_length_bytes.is_some()
            || self.expires_ms.is_some()
            || self.retry.is_some()
            || self.breaker.is_some()
    }

    /// Whether returns are counted per message (for the delivery limit or the backoff).
    pub(super) fn counts_returns(&self) -> bool {
        self.delivery_limit.is_some() || self.retry.is_some()
    }

    /// Whether the queue keeps the body size of every unsettled message (byte limits) and
    /// counts messages still being appended (reject-publish must see them).
    pub(super) fn tracks_sizes(&self) -> bool {
        self.max_length_bytes.is_some()
            || (self.overflow != Overflow::DropHead && self.max_length.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_queues_default_to_a_delivery_limit_of_20() {
        let parse = |v: serde_json::Value| QueueLimits::from_arguments(&v);
        let q = parse(serde_json::json!({"x-queue-type": "quorum"})).unwrap();
        assert_eq!(q.delivery_limit, Some(20));
        let q =
            parse(serde_json::json!({"x-queue-type": "quorum", "x-delivery-limit": -1})).unwrap();
        assert_eq!(q.delivery_limit, None);
        let c = parse(serde_json::json!({"x-delivery-limit": 3})).unwrap();
        assert_eq!((c.delivery_limit, c.quorum), (Some(3), false));
        assert_eq!(parse(serde_json::json!({})).unwrap().delivery_limit, None);
        assert!(parse(serde_json::json!({"x-max-priority": 256})).is_err());
        assert_eq!(
            parse(serde_json::json!({"x-max-priority": 255}))
                .unwrap()
                .max_priority,
            Some(255)
        );
    }
}
