//! The event catalog (issue 18): which event types flow through the broker, on which topics
//! and exchanges, from which producers, since when and how often, with one example each.
//!
//! It is recorded in the core because every publish passes through it, whatever the protocol,
//! and it must cost nothing measurable on the hot path. So a publish does not look at its
//! messages: it adds its record count to an atomic counter of its topic or exchange (a
//! "flow") under a read lock, and at most once per flow per [`SAMPLE_INTERVAL_MS`] one publish
//! wins a compare-and-swap on the flow's next sample time and reads its messages' event
//! metadata (the only step that decodes or allocates). The records counted since the flow's
//! last sample are credited to the types of the sampled messages in proportion, so counts and
//! rates are estimates that converge on steady traffic, and a type that never appears in a
//! sampled batch (a rare type among frequent ones on the same flow) may be missed. Both maps
//! are bounded ([`MAX_FLOWS`], [`MAX_TYPES`]); past the bound new flows and types are not
//! recorded. Types are keyed by their CloudEvents `ce_type` / AMQP `type` / native type, as
//! [`super::event::EventMetadata`] reads it; messages without a type are not catalogued.
//!
//! Consumers are not recorded here: the admin API derives them when asked from the groups and
//! queue bindings the core already knows, and schemas from the registry above the core.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

/// How often one topic or exchange has its messages read, at most.
pub const SAMPLE_INTERVAL_MS: i64 = 1000;
/// Most topics/exchanges tracked; more are counted nowhere.
pub const MAX_FLOWS: usize = 4096;
/// Most event types tracked.
pub const MAX_TYPES: usize = 1024;
/// Most distinct versions, flows and producers kept per type.
const MAX_PER_TYPE: usize = 32;
/// Most bytes of an example payload kept.
pub const MAX_EXAMPLE_BYTES: usize = 4096;

/// Where messages were published: a Kafka topic or an AMQP exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FlowKind {
    Topic,
    Exchange,
}

impl FlowKind {
    fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FlowKind::Topic => "topic",
            FlowKind::Exchange => "exchange",
        }
    }
}

/// One sampled message's catalog facts.
#[derive(Clone, Debug, Default)]
pub struct SeenEvent {
    pub event_type: String,
    pub schema_version: Option<String>,
    pub content_type: Option<String>,
    /// `kafka:<client id>`, `amqp:<app id>`, `amqp-user:<user>`, `native:<client name>` or
    /// `native-user:<user>`.
    pub producer: Option<String>,
    pub example: Option<Bytes>,
}

/// A flow's publish counter and sampling gate.
struct Flow {
    next_sample_ms: AtomicI64,
    unsampled: AtomicU64,
}

#[derive(Clone, Debug)]
struct TypeEntry {
    versions: BTreeSet<String>,
    content_types: BTreeSet<String>,
    flows: BTreeSet<(FlowKind, String)>,
    producers: BTreeSet<String>,
    first_seen_ms: i64,
    last_seen_ms: i64,
    messages: f64,
    example: Option<Bytes>,
}

/// A point-in-time copy of one catalogued type.
#[derive(Clone, Debug)]
pub struct CatalogEntry {
    pub event_type: String,
    pub versions: Vec<String>,
    pub content_types: Vec<String>,
    pub flows: Vec<(FlowKind, String)>,
    pub producers: Vec<String>,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// Estimated from the sampled share of each flow's counted records.
    pub messages: u64,
    /// Estimated messages per second between first and last seen (0 until a second passed).
    pub rate_per_sec: f64,
    /// `None` when examples are redacted (`observe.catalog_examples = false`) or none was kept.
    pub example: Option<Bytes>,
}

/// The catalog of event types; see the module documentation.
pub struct EventCatalog {
    examples: AtomicBool,
    /// Per [`FlowKind`] (indexed by [`FlowKind::index`]), so a lookup borrows the name.
    flows: [RwLock<HashMap<String, Flow>>; 2],
    types: Mutex<HashMap<String, TypeEntry>>,
}

impl Default for EventCatalog {
    fn default() -> Self {
        Self {
            examples: AtomicBool::new(true),
            flows: [RwLock::new(HashMap::new()), RwLock::new(HashMap::new())],
            types: Mutex::new(HashMap::new()),
        }
    }
}

fn insert_bounded(set: &mut BTreeSet<String>, value: &str) {
    if set.len() < MAX_PER_TYPE && !set.contains(value) {
        set.insert(value.to_string());
    }
}

impl EventCatalog {
    /// Whether example payloads are kept and shown (`observe.catalog_examples`).
    pub fn set_examples(&self, keep: bool) {
        self.examples.store(keep, Ordering::Relaxed);
        if !keep {
            for entry in self.types.lock().values_mut() {
                entry.example = None;
            }
        }
    }

    pub fn examples_kept(&self) -> bool {
        self.examples.load(Ordering::Relaxed)
    }

    /// Counts `count` messages published to `name` at `now_ms`; when the flow is due a sample,
    /// calls `sample` for the facts of the published messages. Everything else is one read
    /// lock, one atomic add and one atomic load.
    pub fn observe(
        &self,
        kind: FlowKind,
        name: &str,
        now_ms: i64,
        count: u64,
        sample: impl FnOnce() -> Vec<SeenEvent>,
    ) {
        let due = {
            let flows = self.flows[kind.index()].read();
            match flows.get(name).map(|f| {
                f.unsampled.fetch_add(count, Ordering::Relaxed);
                let next = f.next_sample_ms.load(Ordering::Relaxed);
                next <= now_ms
                    && f.next_sample_ms
                        .compare_exchange(
                            next,
                            now_ms + SAMPLE_INTERVAL_MS,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        )
                        .is_ok()
            }) {
                Some(due) => due,
                None => {
                    drop(flows);
                    let mut flows = self.flows[kind.index()].write();
                    if flows.len() >= MAX_FLOWS {
                        return;
                    }
                    let flow = flows.entry(name.to_string()).or_insert(Flow {
                        next_sample_ms: AtomicI64::new(now_ms + SAMPLE_INTERVAL_MS),
                        unsampled: AtomicU64::new(0),
                    });
                    flow.unsampled.fetch_add(count, Ordering::Relaxed);
                    true
                }
            }
        };
        if due {
            self.record_sample(kind, name, now_ms, sample());
        }
    }

    fn record_sample(&self, kind: FlowKind, name: &str, now_ms: i64, seen: Vec<SeenEvent>) {
        let counted = self.flows[kind.index()]
            .read()
            .get(name)
            .map_or(0, |f| f.unsampled.swap(0, Ordering::Relaxed));
        if seen.is_empty() {
            return;
        }
        // The flow's records since its last sample, credited per sampled message.
        let share = counted.max(seen.len() as u64) as f64 / seen.len() as f64;
        let keep_examples = self.examples_kept();
        let mut types = self.types.lock();
        for event in seen {
            if !types.contains_key(&event.event_type) && types.len() >= MAX_TYPES {
                continue;
            }
            let entry = types
                .entry(event.event_type.clone())
                .or_insert_with(|| TypeEntry {
                    versions: BTreeSet::new(),
                    content_types: BTreeSet::new(),
                    flows: BTreeSet::new(),
                    producers: BTreeSet::new(),
                    first_seen_ms: now_ms,
                    last_seen_ms: now_ms,
                    messages: 0.0,
                    example: None,
                });
            entry.last_seen_ms = entry.last_seen_ms.max(now_ms);
            entry.messages += share;
            if let Some(v) = &event.schema_version {
                insert_bounded(&mut entry.versions, v);
            }
            if let Some(c) = &event.content_type {
                insert_bounded(&mut entry.content_types, c);
            }
            if let Some(p) = &event.producer {
                insert_bounded(&mut entry.producers, p);
            }
            if entry.flows.len() < MAX_PER_TYPE {
                entry.flows.insert((kind, name.to_string()));
            }
            if keep_examples && entry.example.is_none() {
                entry.example = event.example.map(|mut b| {
                    b.truncate(MAX_EXAMPLE_BYTES);
                    b
                });
            }
        }
    }

    /// Every catalogued type, by name.
    pub fn snapshot(&self) -> Vec<CatalogEntry> {
        let keep_examples = self.examples_kept();
        let types = self.types.lock();
        let sorted: BTreeMap<&String, &TypeEntry> = types.iter().collect();
        sorted
            .into_iter()
            .map(|(name, e)| {
                let span_secs = (e.last_seen_ms - e.first_seen_ms) as f64 / 1000.0;
                CatalogEntry {
                    event_type: name.clone(),
                    versions: e.versions.iter().cloned().collect(),
                    content_types: e.content_types.iter().cloned().collect(),
                    flows: e.flows.iter().cloned().collect(),
                    producers: e.producers.iter().cloned().collect(),
                    first_seen_ms: e.first_seen_ms,
                    last_seen_ms: e.last_seen_ms,
                    messages: e.messages.round() as u64,
                    rate_per_sec: if span_secs >= 1.0 {
                        e.messages / span_secs
                    } else {
                        0.0
                    },
                    example: if keep_examples {
                        e.example.clone()
                    } else {
                        None
                    },
                }
            })
            .collect()
    }
}

/// The catalog facts of the records of one produced Kafka record batch (the sampled path
/// only: this decodes the batch).
pub fn kafka_batch_events(batch: &Bytes, producer: Option<&str>) -> Vec<SeenEvent> {
    let mut buf = batch.clone();
    let mut seen = Vec::new();
    let producer = producer.map(|p| format!("kafka:{p}"));
    while bytes::Buf::has_remaining(&buf) {
        let Ok(records) = crate::log::batch::decode_next_batch(&mut buf) else {
            break;
        };
        seen.extend(
            records
                .iter()
                .filter(|r| !r.is_control)
                .filter_map(|r| record_event(&r.record, producer.as_deref())),
        );
    }
    seen
}

/// The catalog facts of one stored record (`None` when it names no event type); `producer`
/// is already prefixed with its protocol (`kafka:`, `native:`...).
pub fn record_event(
    record: &crate::log::SimpleRecord,
    producer: Option<&str>,
) -> Option<SeenEvent> {
    let meta = super::event::EventMetadata::from_record(record);
    let event_type = meta.kind?;
    let content_type = record
        .headers
        .iter()
        .find(|(k, _)| k == "content-type" || k == "ce_datacontenttype")
        .and_then(|(_, v)| v.as_deref())
        .map(|v| String::from_utf8_lossy(v).into_owned());
    Some(SeenEvent {
        event_type,
        schema_version: meta.schema_version,
        content_type,
        producer: producer.map(str::to_string),
        example: record.value.clone(),
    })
}

/// The record count of a Kafka record batch v2 (bytes 57..61), 1 when it cannot be read.
pub fn kafka_record_count(batch: &[u8]) -> u64 {
    batch
        .get(57..61)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(1, |b| {
            u64::from(i32::from_be_bytes(b).max(1).unsigned_abs())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(t: &str, producer: &str) -> SeenEvent {
        SeenEvent {
            event_type: t.into(),
            producer: Some(producer.into()),
            example: Some(Bytes::from_static(b"{}")),
            ..SeenEvent::default()
        }
    }

    #[test]
    fn one_sample_per_flow_per_interval_and_counts_are_credited() {
        let catalog = EventCatalog::default();
        let mut sampled = 0;
        for i in 0..100 {
            catalog.observe(FlowKind::Topic, "orders", 1_000 + i, 1, || {
                sampled += 1;
                vec![seen("order.placed", "kafka:shop")]
            });
        }
        assert_eq!(sampled, 1, "the first publish samples, the rest only count");
        // The next interval's sample credits the 99 counted since.
        catalog.observe(FlowKind::Topic, "orders", 2_000, 1, || {
            sampled += 1;
            vec![seen("order.placed", "kafka:shop")]
        });
        assert_eq!(sampled, 2);
        let snapshot = catalog.snapshot();
        assert_eq!(snapshot.len(), 1);
        assert_eq!(snapshot[0].messages, 101);
        assert_eq!(snapshot[0].flows, vec![(FlowKind::Topic, "orders".into())]);
        assert_eq!(snapshot[0].rate_per_sec, 101.0);
        catalog.set_examples(false);
        assert_eq!(catalog.snapshot()[0].example, None);
    }
}
