//! Exchanges: named routing tables with a kind (direct, fanout, topic, headers) and bindings.
//!
//! An exchange holds no messages; it only decides which queues a message goes to
//! ([`Exchange::matches`], with the match rules in [`super::routing`]). Its definition is the
//! meta store's [`ExchangeDef`], so what is persisted and what runs are the same value, and
//! "is this re-declare equivalent?" is a comparison of the fields RabbitMQ compares.

use parking_lot::RwLock;
use serde_json::{Map, Value};

use super::routing::{headers_match, topic_matches};
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
        headers: Option<&Map<String, Value>>,
    ) -> Vec<(DestinationKind, String)> {
        let all = self.bindings.read();
        let mut out = Vec::new();
        for b in all.iter() {
            let hit = match self.kind {
                ExchangeKind::Direct => b.routing_key == routing_key,
                ExchangeKind::Fanout => true,
                ExchangeKind::Topic => topic_matches(&b.routing_key, routing_key),
                ExchangeKind::Headers => headers_match(&b.arguments, headers),
            };
            if hit {
                out.push((b.destination_kind, b.destination.clone()));
            }
        }
        out
    }
}
