//! Exchanges: named routing tables with a kind (direct, fanout, topic, headers) and bindings.
//!
//! An exchange holds no messages; it only decides which queues a message goes to
//! ([`Exchange::matches`], with the match rules, [`topic_matches`] and [`headers_match`], here too). Its definition is the
//! meta store's [`ExchangeDef`], so what is persisted and what runs are the same value, and
//! "is this re-declare equivalent?" is a comparison of the fields RabbitMQ compares.

use super::message::RoutingHeaders;
use parking_lot::RwLock;
use serde_json::{Map, Value};

use crate::meta::{BindingDef, DestinationKind, ExchangeDef};

/// How an exchange matches a message against a binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Binding key equals routing key.
    Direct,
    /// Every binding matches.
    Fanout,
    /// Dot-separated words with `*` (one word) and `#` (zero or more words).
    Topic,
    /// Binding arguments against message headers, `x-match` all/any(-with-x).
    Headers,
}

impl ExchangeKind {
    pub fn parse(kind: &str) -> Option<ExchangeKind> {
        Some(match kind {
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "topic" => ExchangeKind::Topic,
            "headers" => ExchangeKind::Headers,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// The exchanges every vhost has from the start (RabbitMQ's set), all durable.
pub const PREDECLARED: &[(&str, ExchangeKind)] = &[
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
];

/// One exchange and its bindings.
#[derive(Debug)]
pub struct Exchange {
    def: ExchangeDef,
    kind: ExchangeKind,
    bindings: RwLock<Vec<BindingDef>>,
    /// The exchange face of a Kafka topic of the same name (ARCHITECTURE rule 6): publishing
    /// to it appends to the topic, and its bindings are served by the topic's router task
    /// (`super::topic_router`) from the topic log, never by copying at publish time.
    topic: bool,
}

impl Exchange {
    pub fn new(def: ExchangeDef, kind: ExchangeKind) -> Exchange {
        Exchange {
            def,
            kind,
            bindings: RwLock::new(Vec::new()),
            topic: false,
        }
    }

    /// The exchange face of topic `name`: type `topic` (bindings are topic patterns on the
    /// record key, `#` for all), durable (it lives as long as the topic), never auto-deleted
    /// or internal, no arguments. It is not stored in meta: the topic definition is its
    /// definition.
    pub fn for_topic(vhost: &str, name: &str) -> Exchange {
        Exchange {
            def: ExchangeDef {
                vhost: vhost.to_string(),
                name: name.to_string(),
                kind: ExchangeKind::Topic.as_str().to_string(),
                durable: true,
                auto_delete: false,
                internal: false,
                arguments: Value::Object(Map::new()),
            },
            kind: ExchangeKind::Topic,
            bindings: RwLock::new(Vec::new()),
            topic: true,
        }
    }

    /// Whether this exchange is a Kafka topic's exchange face.
    pub fn is_topic(&self) -> bool {
        self.topic
    }

    pub fn def(&self) -> &ExchangeDef {
        &self.def
    }

    pub fn name(&self) -> &str {
        &self.def.name
    }

    pub fn kind(&self) -> ExchangeKind {
        self.kind
    }

    pub fn bindings(&self) -> Vec<BindingDef> {
        self.bindings.read().clone()
    }

    pub fn has_bindings(&self) -> bool {
        !self.bindings.read().is_empty()
    }

    /// Adds a binding; returns false if an identical one already exists (bind is idempotent).
    pub(crate) fn add_binding(&self, binding: BindingDef) -> bool {
        let mut all = self.bindings.write();
        if all.contains(&binding) {
            return false;
        }
        all.push(binding);
        true
    }

    /// Removes a binding; returns whether it existed.
    pub(crate) fn remove_binding(&self, binding: &BindingDef) -> bool {
        let mut all = self.bindings.write();
        let before = all.len();
        all.retain(|b| b != binding);
        all.len() != before
    }

    /// Removes every binding to `destination`; returns the removed ones.
    pub(crate) fn remove_bindings_to(
        &self,
        kind: DestinationKind,
        destination: &str,
    ) -> Vec<BindingDef> {
        let mut all = self.bindings.write();
        let (gone, kept): (Vec<_>, Vec<_>) = all
            .drain(..)
            .partition(|b| b.destination_kind == kind && b.destination == destination);
        *all = kept;
        gone
    }

    /// The destinations whose bindings match a message with this routing key and headers.
    pub fn matches(
        &self,
        routing_key: &str,
        headers: &RoutingHeaders<'_>,
    ) -> Vec<(DestinationKind, String)> {
        let all = self.bindings.read();
        let mut out = Vec::new();
        for b in all.iter() {
            let hit = match self.kind {
                ExchangeKind::Direct => b.routing_key == routing_key,
                ExchangeKind::Fanout => true,
                ExchangeKind::Topic => topic_matches(&b.routing_key, routing_key),
                ExchangeKind::Headers => headers_match(&b.arguments, headers.get()),
            };
            if hit {
                out.push((b.destination_kind, b.destination.clone()));
            }
        }
        out
    }
}

/// Topic matching: words separated by `.`; `*` matches exactly one word, `#` zero or more.
/// Dynamic programming over (pattern word, key word), so many `#`s cannot blow up.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    // An empty key or pattern has no words (RabbitMQ), so `*` does not match "" but `#` does.
    let p = topic_words(pattern);
    let k = topic_words(key);
    // m[j] = pattern prefix p[..i] matches key prefix k[..j]
    let mut m = vec![false; k.len() + 1];
    m[0] = true;
    for word in &p {
        let mut next = vec![false; k.len() + 1];
        if *word == "#" {
            let mut any = false;
            for j in 0..=k.len() {
                any |= m[j];
                next[j] = any;
            }
        } else {
            for j in 1..=k.len() {
                next[j] = m[j - 1] && (*word == "*" || *word == k[j - 1]);
            }
        }
        m = next;
    }
    m[k.len()]
}

fn topic_words(s: &str) -> Vec<&str> {
    if s.is_empty() {
        Vec::new()
    } else {
        s.split('.').collect()
    }
}

/// Headers-exchange matching of binding `arguments` against message `headers`. `x-match` is
/// `all` (default), `any`, `all-with-x` or `any-with-x`; without `-with-x`, arguments starting
/// with `x-` take no part. A null argument value matches on the header's presence alone.
pub fn headers_match(arguments: &Value, headers: Option<&Map<String, Value>>) -> bool {
    let empty = Map::new();
    let args = match arguments {
        Value::Object(m) => m,
        _ => &empty,
    };
    let headers = headers.unwrap_or(&empty);
    let mode = args.get("x-match").and_then(Value::as_str).unwrap_or("all");
    let (any, with_x) = match mode {
        "any" => (true, false),
        "any-with-x" => (true, true),
        "all-with-x" => (false, true),
        _ => (false, false),
    };
    let mut hits = 0;
    for (k, v) in args {
        if k == "x-match" || (!with_x && k.starts_with("x-")) {
            continue;
        }
        let hit = match headers.get(k) {
            None => false,
            Some(h) => v.is_null() || values_equal(v, h),
        };
        if hit {
            hits += 1;
            if any {
                return true;
            }
        } else if !any {
            return false;
        }
    }
    if any {
        hits > 0
    } else {
        // `all` with nothing to compare matches everything (RabbitMQ).
        true
    }
}

/// Numbers compare by value whatever their wire width (an AMQP short int 1 equals a long 1).
fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn topic_patterns() {
        assert!(topic_matches("a.b.c", "a.b.c"));
        assert!(topic_matches("a.*.c", "a.b.c"));
        assert!(!topic_matches("a.*.c", "a.c"));
        assert!(topic_matches("a.#", "a"));
        assert!(topic_matches("a.#", "a.b.c"));
        assert!(topic_matches("#", ""));
        assert!(topic_matches("#", "x.y"));
        assert!(topic_matches("#.c", "c"));
        assert!(topic_matches("a.#.c", "a.c"));
        assert!(topic_matches("a.#.c", "a.b.b.c"));
        assert!(!topic_matches("a.#.c", "a.b.b.d"));
        assert!(topic_matches("*.#", "x"));
        assert!(!topic_matches("*", ""));
        assert!(!topic_matches("*.*", "a"));
        assert!(topic_matches(
            "#.#.#.#.#.#.#.#.#.#.#.#.z",
            "a.b.c.d.e.f.g.h.i.j.k.l.m.n.z"
        ));
    }

    #[test]
    fn headers_all_any() {
        let h = json!({"a": 1, "b": "x", "x-c": 2});
        let h = h.as_object();
        assert!(headers_match(&json!({"a": 1, "b": "x"}), h));
        assert!(!headers_match(&json!({"a": 1, "b": "y"}), h));
        assert!(headers_match(
            &json!({"x-match": "any", "a": 2, "b": "x"}),
            h
        ));
        assert!(!headers_match(&json!({"x-match": "any", "a": 2}), h));
        assert!(headers_match(&json!({"x-match": "all", "x-c": 3}), h));
        assert!(!headers_match(
            &json!({"x-match": "all-with-x", "x-c": 3}),
            h
        ));
        assert!(headers_match(
            &json!({"x-match": "any-with-x", "x-c": 2}),
            h
        ));
        assert!(headers_match(&json!({"a": null}), h));
        assert!(headers_match(&json!({"a": 1.0}), h));
    }
}
