//! `GET /api/catalog`: the event catalog (issue 18), every event type seen at publish with its
//! versions, schema, topics/exchanges, producers, consumers, first/last seen, rate and one
//! example payload.
//!
//! The core records what publishes show (`broker::catalog`, sampled so the hot path pays
//! nothing); this handler adds what is known elsewhere when asked: consumers are the consumer
//! groups with committed offsets on a type's topics and the queues bound to its exchanges (a
//! topic's exchange face included), and the schema is the latest version of the first
//! registry subject that matches, tried in the order the serializers' strategies name them:
//! `<topic>-value` (TopicNameStrategy), `<topic>-<type>` (TopicRecordNameStrategy), `<type>`
//! (RecordNameStrategy).

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::Admin;
use crate::broker::catalog::{CatalogEntry, FlowKind};
use crate::broker::BrokerCore;
use crate::meta::DestinationKind;
use crate::observe::http::AppState;
use crate::schema::{SchemaRegistry, VersionRef};

pub(super) async fn catalog(Admin(core): Admin, State(state): State<AppState>) -> Json<Value> {
    let registry = state.health.schemas().cloned();
    let consumers = Consumers::of(&core);
    let events: Vec<Value> = core
        .catalog()
        .snapshot()
        .into_iter()
        .map(|entry| describe(&entry, &consumers, registry.as_deref()))
        .collect();
    Json(json!({
        "examples_redacted": !core.catalog().examples_kept(),
        "events": events,
    }))
}

/// Who reads each topic (groups) and each exchange (bound queues), gathered once per request.
struct Consumers {
    groups_by_topic: BTreeMap<String, BTreeSet<String>>,
    queues_by_exchange: BTreeMap<String, BTreeSet<String>>,
}

impl Consumers {
    fn of(core: &BrokerCore) -> Self {
        let mut groups_by_topic: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for group in core.groups().list_groups(&[]) {
            let Ok(offsets) = core.groups().fetch_offsets(&group.group_id, None) else {
                continue;
            };
            for committed in offsets {
                groups_by_topic
                    .entry(committed.topic)
                    .or_default()
                    .insert(group.group_id.clone());
            }
        }
        let mut queues_by_exchange: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for exchange in core.router().exchanges() {
            for binding in exchange.bindings() {
                if binding.destination_kind == DestinationKind::Queue {
                    queues_by_exchange
                        .entry(binding.source)
                        .or_default()
                        .insert(binding.destination);
                }
            }
        }
        Self {
            groups_by_topic,
            queues_by_exchange,
        }
    }
}

fn describe(
    entry: &CatalogEntry,
    consumers: &Consumers,
    registry: Option<&SchemaRegistry>,
) -> Value {
    let mut groups = BTreeSet::new();
    let mut queues = BTreeSet::new();
    for (_, name) in &entry.flows {
        // A topic is also an exchange (its face) and an exchange name may be a topic's.
        groups.extend(
            consumers
                .groups_by_topic
                .get(name)
                .into_iter()
                .flatten()
                .cloned(),
        );
        queues.extend(
            consumers
                .queues_by_exchange
                .get(name)
                .into_iter()
                .flatten()
                .cloned(),
        );
    }
    let flow_names = |kind: FlowKind| -> Vec<&str> {
        entry
            .flows
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, n)| n.as_str())
            .collect()
    };
    json!({
        "type": entry.event_type,
        "versions": entry.versions,
        "content_types": entry.content_types,
        "schema": registry.and_then(|r| schema_of(r, entry)),
        "topics": flow_names(FlowKind::Topic),
        "exchanges": flow_names(FlowKind::Exchange),
        "producers": entry.producers,
        "consumers": {"groups": groups, "queues": queues},
        "first_seen_ms": entry.first_seen_ms,
        "last_seen_ms": entry.last_seen_ms,
        "messages_estimated": entry.messages,
        "rate_per_sec": (entry.rate_per_sec * 100.0).round() / 100.0,
        "example": entry.example.as_ref().map(|b| example(b)),
    })
}

/// The example as text when it is UTF-8, else base64.
fn example(body: &[u8]) -> Value {
    match std::str::from_utf8(body) {
        Ok(text) => json!({"encoding": "utf8", "data": text}),
        Err(_) => json!({
            "encoding": "base64",
            "data": crate::util::base64_encode(body),
        }),
    }
}

fn schema_of(registry: &SchemaRegistry, entry: &CatalogEntry) -> Option<Value> {
    let mut candidates = Vec::new();
    for (_, flow) in &entry.flows {
        candidates.push(format!("{flow}-value"));
        candidates.push(format!("{flow}-{}", entry.event_type));
    }
    candidates.push(entry.event_type.clone());
    candidates.iter().find_map(|subject| {
        let latest = registry.version(subject, VersionRef::Latest, false).ok()?;
        let versions = registry.versions(subject, false).unwrap_or_default();
        Some(json!({
            "subject": latest.subject,
            "latest_version": latest.version,
            "id": latest.schema.record.id,
            "schema_type": latest.schema.schema_type.as_str(),
            "versions": versions,
        }))
    })
}
