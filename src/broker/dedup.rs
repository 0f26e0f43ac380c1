//! Deduplication: a queue drops a message whose id it has already taken within a window, so
//! a publisher that retries after a lost confirm does not create a duplicate.
//!
//! The arguments are those of the community `rabbitmq-message-deduplication` plugin, so code
//! written against it works unchanged: the queue argument `x-message-deduplication: true`
//! enables it, `x-cache-ttl` (ms) is the window and `x-cache-size` bounds the number of ids
//! remembered (default [`DEFAULT_CACHE_SIZE`]; the oldest is forgotten first). The id is the
//! message's `x-deduplication-header` header, else its message id (AMQP `message-id`, a Kafka
//! record's `message-id` header or CloudEvents `ce_id`), so records produced by Kafka clients
//! reach a bound queue deduplicated too. A message without an id is never dropped.
//!
//! A dropped duplicate is confirmed to its publisher like any routed message (the plugin does
//! the same): the publisher asked for the message to be in the queue, and it is. The confirm
//! waits until the copy it repeats is durable, and fails if that copy's append failed (see
//! [`crate::broker::routing::Durable`]), so a resend racing its original is never confirmed
//! for a message a crash then loses.
//!
//! A topic can have a window of its own (topic config `ferry.dedup.window.ms`), applied to
//! publishes through its exchange face by the core's topic sink (`topic_router.rs`) with the
//! same cache and keys; Kafka producers get the equivalent guarantee from idempotence.
//!
//! The cache is memory only; it is rebuilt after a restart from the tail of the queue's own
//! log (the ids are in the stored records: the `x-deduplication-header` an AMQP publisher gave
//! is a plain record header of the message, see [`crate::broker::message`]), so a restart
//! inside the window does not let a repeat through.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use serde_json::Value;

use crate::log::SimpleRecord;

/// Ids remembered when `x-cache-size` is not given: ~100 bytes each, so about 10 MB.
pub const DEFAULT_CACHE_SIZE: usize = 100_000;

/// Record header where records of earlier versions kept the deduplication key an AMQP
/// publisher put in its headers table (`x-deduplication-header` is now a header of its own);
/// still read, so a restart after an upgrade deduplicates against them.
pub const DEDUP_KEY_HEADER: &str = "ferry.dedup-key";

/// Record headers that carry a message id, in the order they are tried.
const ID_HEADERS: &[&str] = &[
    DEDUP_KEY_HEADER,
    "x-deduplication-header",
    "amqp.message-id",
    "message-id",
    "ce_id",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupPolicy {
    /// `x-cache-ttl`: how long an id is remembered, ms; `None` keeps it until evicted by size.
    pub window_ms: Option<i64>,
    /// `x-cache-size`.
    pub max_entries: usize,
}

impl DedupPolicy {
    pub fn from_arguments(
        map: &serde_json::Map<String, Value>,
    ) -> Result<Option<DedupPolicy>, String> {
        let enabled = match map.get("x-message-deduplication") {
            None => false,
            Some(v) => v.as_bool().ok_or_else(|| {
                format!("invalid arg 'x-message-deduplication': {v} (must be a boolean)")
            })?,
        };
        let positive = |key: &str| -> Result<Option<u64>, String> {
            match map.get(key) {
                None => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(n) if n >= 1 => Ok(Some(n)),
                    _ => Err(format!(
                        "invalid arg '{key}': {v} (must be a positive integer)"
                    )),
                },
            }
        };
        let ttl = positive("x-cache-ttl")?;
        let size = positive("x-cache-size")?;
        if !enabled {
            return Ok(None);
        }
        Ok(Some(DedupPolicy {
            window_ms: ttl.map(|t| i64::try_from(t).unwrap_or(i64::MAX)),
            max_entries: size.map_or(DEFAULT_CACHE_SIZE, |s| {
                usize::try_from(s).unwrap_or(usize::MAX)
            }),
        }))
    }
}

/// The id a record is deduplicated by, if it has one.
pub fn record_key(record: &SimpleRecord) -> Option<Bytes> {
    key_of(record.headers.iter().map(|(k, v)| (k.as_str(), v.as_ref())))
}

/// The id headers `headers` (name, value) are deduplicated by, if they have one.
pub fn key_of<'a>(
    headers: impl Iterator<Item = (&'a str, Option<&'a Bytes>)> + Clone,
) -> Option<Bytes> {
    ID_HEADERS.iter().find_map(|name| {
        headers
            .clone()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.cloned())
            .filter(|v| !v.is_empty())
    })
}

/// Remembered ids with the time each was first seen.
#[derive(Debug)]
pub struct DedupCache {
    policy: DedupPolicy,
    seen: HashMap<Bytes, i64>,
    /// Insertion order, for eviction by age and by size.
    order: VecDeque<(i64, Bytes)>,
    /// Whether the cache was rebuilt from the log since the queue opened.
    pub loaded: bool,
}

impl DedupCache {
    pub fn new(policy: DedupPolicy) -> DedupCache {
        DedupCache {
            policy,
            seen: HashMap::new(),
            order: VecDeque::new(),
            loaded: false,
        }
    }

    pub fn policy(&self) -> DedupPolicy {
        self.policy
    }

    fn evict(&mut self, now_ms: i64) {
        while let Some((at, key)) = self.order.front() {
            let expired = self
                .policy
                .window_ms
                .is_some_and(|w| now_ms.saturating_sub(*at) >= w);
            if !expired && self.order.len() <= self.policy.max_entries {
                break;
            }
            // Only forget the entry if it still belongs to this insertion (a key forgotten
            // and seen again has a newer one further back).
            if self.seen.get(key) == Some(at) {
                self.seen.remove(key);
            }
            self.order.pop_front();
        }
    }

    /// Records `key` as seen at `at_ms`; false if it was already seen within the window.
    pub fn admit(&mut self, key: Bytes, at_ms: i64) -> bool {
        self.evict(at_ms);
        if self.seen.contains_key(&key) {
            return false;
        }
        self.seen.insert(key.clone(), at_ms);
        self.order.push_back((at_ms, key));
        self.evict(at_ms);
        true
    }

    /// Forgets `key` (its append failed, so a retry must get through).
    pub fn forget(&mut self, key: &Bytes) {
        self.seen.remove(key);
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn repeats_inside_the_window_are_dropped() {
        let mut c = DedupCache::new(DedupPolicy {
            window_ms: Some(1000),
            max_entries: 10,
        });
        let k = Bytes::from_static(b"order-1");
        assert!(c.admit(k.clone(), 0));
        assert!(!c.admit(k.clone(), 999));
        assert!(c.admit(k.clone(), 1000), "the window is over");
        c.forget(&k);
        assert!(c.admit(k, 1001), "a failed append does not block a retry");
    }

    #[test]
    fn the_cache_is_bounded_by_size() {
        let mut c = DedupCache::new(DedupPolicy {
            window_ms: None,
            max_entries: 2,
        });
        for k in [&b"a"[..], b"b", b"c"] {
            assert!(c.admit(Bytes::copy_from_slice(k), 0));
        }
        assert_eq!(c.len(), 2);
        assert!(
            c.admit(Bytes::from_static(b"a"), 0),
            "the oldest was evicted"
        );
        assert!(!c.admit(Bytes::from_static(b"c"), 0));
    }

    #[test]
    fn key_and_arguments() {
        let r = SimpleRecord {
            key: None,
            value: None,
            headers: vec![
                ("ce_id".into(), Some(Bytes::from_static(b"ce"))),
                ("amqp.message-id".into(), Some(Bytes::from_static(b"m"))),
            ],
            timestamp: 0,
        };
        assert_eq!(record_key(&r).as_deref(), Some(&b"m"[..]));
        let parse = |v: Value| DedupPolicy::from_arguments(v.as_object().unwrap());
        assert_eq!(parse(json!({"x-cache-ttl": 5})).unwrap(), None);
        assert_eq!(
            parse(json!({"x-message-deduplication": true, "x-cache-ttl": 5})).unwrap(),
            Some(DedupPolicy {
                window_ms: Some(5),
                max_entries: DEFAULT_CACHE_SIZE
            })
        );
        assert!(parse(json!({"x-message-deduplication": "yes"})).is_err());
        assert!(parse(json!({"x-message-deduplication": true, "x-cache-size": 0})).is_err());
    }
}
