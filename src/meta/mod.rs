//! Broker metadata: definitions and small durable state, kept apart from the message log.
//!
//! The log holds messages; this store holds what describes them: topic, exchange, queue and
//! binding definitions, committed consumer-group offsets, allocated producer ids and queue ack
//! state. [`Meta`] is the typed face the core uses; underneath, any [`MetaStore`] (sled on disk,
//! a `BTreeMap` in memory for tests). Values are JSON so a human can read a dump and a later
//! release can add fields (`#[serde(default)]`) without a migration; keys carry the schema
//! generation (see [`keys`]), and opening a store written by a newer generation is refused
//! rather than misread.

pub mod acls;
pub mod es;
pub mod es_persistent;
pub mod keys;
pub mod memory_store;
pub mod migrate;
pub mod parameters;
pub mod schemas;
pub mod sled_store;
pub mod store;
pub mod txn;
pub mod users;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use acls::AclRecord;
pub use memory_store::MemoryStore;
pub use parameters::ParameterRecord;
pub use schemas::{SchemaRecord, SchemaReference, SchemaScopeConfig, SubjectVersionRecord};
pub use sled_store::SledStore;
pub use store::{MetaOp, MetaStore};
pub use txn::{TxnRecord, TxnStatus};
pub use users::{PermissionRecord, ScramRecord, UserRecord, VhostRecord};

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata store error: {0}")]
    Backend(String),
    #[error(
        "metadata directory {0} is locked by another process; is another ferry running on this data dir?"
    )]
    Locked(PathBuf),
    #[error("metadata record {key} is unreadable: {message}")]
    Corrupt { key: String, message: String },
    #[error(
        "data directory was written by a newer ferry (metadata schema v{found}, this build reads up to v{supported}); upgrade ferry"
    )]
    NewerSchema { found: u32, supported: u32 },
}

impl MetaError {
    /// What a client may be told: backend messages name directories, so they go to the log
    /// (in full, with their cause) and the client hears only what failed.
    pub fn client_message(&self) -> String {
        tracing::error!(error = %self, "metadata store error");
        match self {
            MetaError::Corrupt { .. } => "metadata store error: unreadable record".into(),
            _ => "metadata store error".into(),
        }
    }
}

/// A Kafka topic (and, by the same name, an AMQP exchange onto it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicDef {
    pub name: String,
    /// Kafka topic id (Metadata v10+), random at creation, stable for the topic's life.
    pub topic_id: [u8; 16],
    pub partitions: u32,
    /// Topic-level config overrides by Kafka name (`retention.ms` …); absent keys use defaults.
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
    #[serde(default)]
    pub created_ms: i64,
}

/// An AMQP exchange.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExchangeDef {
    pub vhost: String,
    pub name: String,
    /// `direct`, `fanout`, `topic`, `headers`, …
    pub kind: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    #[serde(default)]
    pub arguments: serde_json::Value,
}

/// An AMQP queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueDef {
    pub vhost: String,
    pub name: String,
    pub durable: bool,
    pub auto_delete: bool,
    #[serde(default)]
    pub arguments: serde_json::Value,
    /// The queue's log directory under `<queues>/~/`, for a queue whose escaped vhost or name
    /// would not fit the filesystem's 255-byte limit on a directory name; `None` (every other
    /// queue) means `<queues>/<escaped vhost>/<escaped name>/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_dir: Option<String>,
}

/// Whether a binding delivers to a queue or to another exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DestinationKind {
    Queue,
    Exchange,
}

impl DestinationKind {
    fn as_str(self) -> &'static str {
        match self {
            DestinationKind::Queue => "queue",
            DestinationKind::Exchange => "exchange",
        }
    }
}

/// An AMQP binding from an exchange to a queue or exchange.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BindingDef {
    pub vhost: String,
    pub source: String,
    pub destination_kind: DestinationKind,
    pub destination: String,
    pub routing_key: String,
    #[serde(default)]
    pub arguments: serde_json::Value,
}

impl BindingDef {
    pub(crate) fn key(&self) -> Vec<u8> {
        keys::binding(
            &self.vhost,
            &self.source,
            self.destination_kind.as_str(),
            &self.destination,
            &self.routing_key,
            &self.arguments.to_string(),
        )
    }
}

/// A consumer group's committed position in one partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    #[serde(default = "no_leader_epoch")]
    pub leader_epoch: i32,
    #[serde(default)]
    pub metadata: Option<String>,
    #[serde(default)]
    pub commit_ms: i64,
}

fn no_leader_epoch() -> i32 {
    -1
}

/// What survives a restart of a consumer group besides its offsets (static members, protocol).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub group_id: String,
    #[serde(default)]
    pub protocol_type: Option<String>,
    #[serde(default)]
    pub generation: i32,
    /// `group.instance.id` -> member id of static members.
    #[serde(default)]
    pub static_members: BTreeMap<String, String>,
}

/// An allocated idempotent producer id and its current epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerRecord {
    pub producer_id: i64,
    pub epoch: i16,
    #[serde(default)]
    pub transactional_id: Option<String>,
}

/// The typed metadata store the broker uses.
/// How far the topic router got in one topic partition (see `broker::topic_router`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRouteState {
    /// Every record below this offset has been routed into the bound queues.
    pub next: i64,
    /// A batch `[next, upto)` whose queue appends were under way: after a crash, the records
    /// of it a queue already holds are not routed to that queue again.
    #[serde(default)]
    pub in_flight: Option<RouteInFlight>,
}

/// A batch of routed records whose queue appends may or may not have reached the queues.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteInFlight {
    pub upto: i64,
    /// For each target queue, its log end offset before the batch was submitted: any copy
    /// of the batch sits at or above it.
    pub queues: Vec<RouteMark>,
}

/// One target queue of an in-flight batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteMark {
    pub vhost: String,
    pub queue: String,
    pub from: i64,
}

#[derive(Clone)]
pub struct Meta {
    store: Arc<dyn MetaStore>,
}

impl Meta {
    /// Wraps a store, checking (and on first use, writing) its schema generation.
    pub fn open(store: Arc<dyn MetaStore>) -> Result<Self, MetaError> {
        match store.get(keys::SCHEMA_KEY)? {
            None => {
                store.put(
                    keys::SCHEMA_KEY,
                    keys::SCHEMA_VERSION.to_string().as_bytes(),
                )?;
                store.flush()?;
            }
            Some(raw) => {
                let found = std::str::from_utf8(&raw)
                    .ok()
                    .and_then(|s| s.parse::<u32>().ok())
                    .ok_or_else(|| MetaError::Corrupt {
                        key: "schema_version".into(),
                        message: format!("not a version number: {raw:?}"),
                    })?;
                if found > keys::SCHEMA_VERSION {
                    return Err(MetaError::NewerSchema {
                        found,
                        supported: keys::SCHEMA_VERSION,
                    });
                }
                if found < keys::SCHEMA_VERSION {
                    let report = migrate::migrate_v1(store.as_ref())?;
                    tracing::info!(
                        from = found,
                        to = keys::SCHEMA_VERSION,
                        rewritten = report.rewritten,
                        not_understood = report.kept,
                        "metadata keys migrated to the current schema"
                    );
                }
            }
        }
        Ok(Self { store })
    }

    /// An empty in-memory store.
    pub fn in_memory() -> Self {
        Self {
            store: Arc::new(MemoryStore::new()),
        }
    }

    pub fn flush(&self) -> Result<(), MetaError> {
        self.store.flush()
    }

    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, MetaError> {
        self.store
            .get(key)?
            .map(|raw| decode(key, &raw))
            .transpose()
    }

    fn put<T: Serialize>(&self, key: Vec<u8>, value: &T) -> Result<(), MetaError> {
        self.store.apply(vec![MetaOp::Put(key, encode(value))])
    }

    fn scan<T: DeserializeOwned>(&self, prefix: &[u8]) -> Result<Vec<T>, MetaError> {
        self.store
            .scan_prefix(prefix)?
            .into_iter()
            .map(|(k, v)| decode(&k, &v))
            .collect()
    }

    /// The cluster id clients see (Kafka Metadata, DescribeCluster): created once, 22
    /// characters of URL-safe base64 like Kafka's, and stable for the data directory's life.
    pub fn cluster_id(&self) -> Result<String, MetaError> {
        let key = keys::cluster_id();
        if let Some(id) = self.get::<String>(&key)? {
            return Ok(id);
        }
        let id = base64_url(&crate::util::random_bytes16());
        self.put(key, &id)?;
        self.store.flush()?;
        Ok(id)
    }

    // --- topics -------------------------------------------------------------------------------

    pub fn put_topic(&self, def: &TopicDef) -> Result<(), MetaError> {
        self.put(keys::topic(&def.name), def)
    }
    pub fn topic(&self, name: &str) -> Result<Option<TopicDef>, MetaError> {
        self.get(&keys::topic(name))
    }
    pub fn topics(&self) -> Result<Vec<TopicDef>, MetaError> {
        self.scan(&keys::topics())
    }
    /// Removes a topic and every committed offset that pointed into it.
    pub fn delete_topic(&self, name: &str) -> Result<(), MetaError> {
        let mut ops = vec![MetaOp::Delete(keys::topic(name))];
        for (k, _) in self.store.scan_prefix(&keys::topic_routes(name))? {
            ops.push(MetaOp::Delete(k));
        }
        for prefix in keys::es_topic_prefixes(name) {
            for (k, _) in self.store.scan_prefix(&prefix)? {
                ops.push(MetaOp::Delete(k));
            }
        }
        for (k, v) in self.store.scan_prefix(&keys::all_group_offsets())? {
            let committed: CommittedOffset = decode(&k, &v)?;
            if committed.topic == name {
                ops.push(MetaOp::Delete(k));
            }
        }
        self.store.apply(ops)
    }

    /// How far the topic router got in `topic`/`partition`; `None` if it never ran there.
    pub fn topic_route(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<TopicRouteState>, MetaError> {
        self.get(&keys::topic_route(topic, partition))
    }
    pub fn put_topic_route(
        &self,
        topic: &str,
        partition: i32,
        state: &TopicRouteState,
    ) -> Result<(), MetaError> {
        self.put(keys::topic_route(topic, partition), state)
    }
    /// Records that every record of `topic`/`partition` below `offset` has been routed.
    pub fn put_topic_route_offset(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<(), MetaError> {
        self.put_topic_route(
            topic,
            partition,
            &TopicRouteState {
                next: offset,
                in_flight: None,
            },
        )
    }

    // --- AMQP definitions ---------------------------------------------------------------------

    pub fn put_exchange(&self, def: &ExchangeDef) -> Result<(), MetaError> {
        self.put(keys::exchange(&def.vhost, &def.name), def)
    }
    pub fn delete_exchange(&self, vhost: &str, name: &str) -> Result<(), MetaError> {
        self.store.delete(&keys::exchange(vhost, name))
    }
    pub fn exchanges(&self) -> Result<Vec<ExchangeDef>, MetaError> {
        self.scan(&keys::exchanges())
    }

    pub fn put_queue(&self, def: &QueueDef) -> Result<(), MetaError> {
        self.put(keys::queue(&def.vhost, &def.name), def)
    }
    /// Removes a queue with its ack state.
    pub fn delete_queue(&self, vhost: &str, name: &str) -> Result<(), MetaError> {
        self.store.apply(vec![
            MetaOp::Delete(keys::queue(vhost, name)),
            MetaOp::Delete(keys::queue_state(vhost, name)),
        ])
    }
    pub fn queues(&self) -> Result<Vec<QueueDef>, MetaError> {
        self.scan(&keys::queues())
    }

    pub fn put_binding(&self, def: &BindingDef) -> Result<(), MetaError> {
        self.put(def.key(), def)
    }
    pub fn delete_binding(&self, def: &BindingDef) -> Result<(), MetaError> {
        self.store.delete(&def.key())
    }
    pub fn bindings(&self) -> Result<Vec<BindingDef>, MetaError> {
        self.scan(&keys::bindings())
    }

    /// Opaque, compact ack state of a log-backed queue (its owner defines the encoding).
    pub fn put_queue_state(&self, vhost: &str, name: &str, state: &[u8]) -> Result<(), MetaError> {
        self.store.put(&keys::queue_state(vhost, name), state)
    }
    pub fn queue_state(&self, vhost: &str, name: &str) -> Result<Option<Vec<u8>>, MetaError> {
        self.store.get(&keys::queue_state(vhost, name))
    }

    // --- processed event ids of idempotent handlers ---------------------------------------

    /// Records that `handler` completed `event_id` at `at_ms`.
    pub fn put_processed(
        &self,
        handler: &str,
        event_id: &str,
        at_ms: i64,
    ) -> Result<(), MetaError> {
        self.store
            .put(&keys::processed(handler, event_id), &at_ms.to_be_bytes())
    }
    /// Every id `handler` completed, with the time it was recorded.
    pub fn processed_ids(&self, handler: &str) -> Result<Vec<(String, i64)>, MetaError> {
        let mut ids = Vec::new();
        for (k, v) in self.store.scan_prefix(&keys::processed_by(handler))? {
            let corrupt = || MetaError::Corrupt {
                key: String::from_utf8_lossy(&k).into_owned(),
                message: "not a processed-id record".into(),
            };
            let parts = keys::parts(&k).ok_or_else(corrupt)?;
            let [_, id] = parts.as_slice() else {
                return Err(corrupt());
            };
            let at: [u8; 8] = v.as_slice().try_into().map_err(|_| corrupt())?;
            ids.push((
                String::from_utf8_lossy(id).into_owned(),
                i64::from_be_bytes(at),
            ));
        }
        Ok(ids)
    }
    /// Forgets ids of `handler` (evicted by age or count).
    pub fn delete_processed(&self, handler: &str, event_ids: &[String]) -> Result<(), MetaError> {
        let ops = event_ids
            .iter()
            .map(|id| MetaOp::Delete(keys::processed(handler, id)))
            .collect();
        self.store.apply(ops)
    }

    // --- consumer groups ----------------------------------------------------------------------

    /// Commits offsets for a group atomically (all partitions of one OffsetCommit or none).
    pub fn commit_offsets(
        &self,
        group: &str,
        offsets: &[CommittedOffset],
    ) -> Result<(), MetaError> {
        let ops = offsets
            .iter()
            .map(|o| MetaOp::Put(keys::group_offset(group, &o.topic, o.partition), encode(o)))
            .collect();
        self.store.apply(ops)
    }
    pub fn committed_offsets(&self, group: &str) -> Result<Vec<CommittedOffset>, MetaError> {
        self.scan(&keys::group_offsets(group))
    }
    pub fn delete_committed_offset(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
    ) -> Result<(), MetaError> {
        self.store
            .delete(&keys::group_offset(group, topic, partition))
    }
    /// Every group that has a record or committed offsets.
    pub fn group_ids(&self) -> Result<Vec<String>, MetaError> {
        let mut ids: Vec<String> = self
            .scan::<GroupRecord>(&keys::groups())?
            .into_iter()
            .map(|g| g.group_id)
            .collect();
        for (k, _) in self.store.scan_prefix(&keys::all_group_offsets())? {
            match keys::parts(&k).as_deref() {
                Some([group, _topic, _partition]) => {
                    ids.push(String::from_utf8_lossy(group).into_owned())
                }
                _ => {
                    return Err(MetaError::Corrupt {
                        key: String::from_utf8_lossy(&k).into_owned(),
                        message: "not a committed-offset key".into(),
                    })
                }
            }
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }
    pub fn put_group(&self, record: &GroupRecord) -> Result<(), MetaError> {
        self.put(keys::group(&record.group_id), record)
    }
    pub fn group(&self, group: &str) -> Result<Option<GroupRecord>, MetaError> {
        self.get(&keys::group(group))
    }
    /// Removes a group's record and all its committed offsets.
    pub fn delete_group(&self, group: &str) -> Result<(), MetaError> {
        let mut ops = vec![MetaOp::Delete(keys::group(group))];
        for (k, _) in self.store.scan_prefix(&keys::group_offsets(group))? {
            ops.push(MetaOp::Delete(k));
        }
        self.store.apply(ops)
    }

    // --- producers ----------------------------------------------------------------------------

    /// Hands out a never-before-used producer id and records it (durably, before returning, so
    /// a restart cannot hand the same id to a second producer).
    pub fn allocate_producer_id(&self) -> Result<i64, MetaError> {
        let key = keys::producer_id_counter();
        let next = match self.store.get(&key)? {
            None => 0,
            Some(raw) => decode::<i64>(&key, &raw)?,
        };
        self.store.put(&key, &encode(&(next + 1)))?;
        self.store.flush()?;
        Ok(next)
    }
    pub fn put_producer(&self, record: &ProducerRecord) -> Result<(), MetaError> {
        self.put(keys::producer(record.producer_id), record)
    }
    pub fn producer(&self, producer_id: i64) -> Result<Option<ProducerRecord>, MetaError> {
        self.get(&keys::producer(producer_id))
    }
    pub fn producers(&self) -> Result<Vec<ProducerRecord>, MetaError> {
        self.scan(&keys::producers())
    }
}

/// Unpadded URL-safe base64, as Kafka prints cluster ids.
fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs to JSON cannot fail (no maps with non-string keys).
    serde_json::to_vec(value).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(key: &[u8], raw: &[u8]) -> Result<T, MetaError> {
    serde_json::from_slice(raw).map_err(|e| MetaError::Corrupt {
        key: String::from_utf8_lossy(key).replace('\0', "/"),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str) -> TopicDef {
        TopicDef {
            name: name.into(),
            topic_id: [7; 16],
            partitions: 3,
            configs: [("retention.ms".to_string(), "1000".to_string())].into(),
            created_ms: 5,
        }
    }

    fn exercise(meta: &Meta) {
        meta.put_topic(&topic("orders")).unwrap();
        meta.put_topic(&topic("orders-dlq")).unwrap();
        assert_eq!(meta.topic("orders").unwrap(), Some(topic("orders")));
        assert_eq!(meta.topics().unwrap().len(), 2);

        let committed = |t: &str, p, o| CommittedOffset {
            topic: t.into(),
            partition: p,
            offset: o,
            leader_epoch: -1,
            metadata: None,
            commit_ms: 1,
        };
        meta.commit_offsets(
            "g",
            &[committed("orders", 0, 10), committed("orders", 1, 20)],
        )
        .unwrap();
        meta.commit_offsets("g2", &[committed("orders-dlq", 0, 3)])
            .unwrap();
        assert_eq!(meta.committed_offsets("g").unwrap().len(), 2);
        assert_eq!(meta.group_ids().unwrap(), vec!["g", "g2"]);

        meta.delete_topic("orders-dlq").unwrap();
        assert!(meta.committed_offsets("g2").unwrap().is_empty());
        assert_eq!(meta.committed_offsets("g").unwrap().len(), 2);

        assert_eq!(meta.allocate_producer_id().unwrap(), 0);
        assert_eq!(meta.allocate_producer_id().unwrap(), 1);

        let binding = BindingDef {
            vhost: "/".into(),
            source: "ex".into(),
            destination_kind: DestinationKind::Queue,
            destination: "q".into(),
            routing_key: "a.#".into(),
            arguments: serde_json::json!({}),
        };
        meta.put_binding(&binding).unwrap();
        assert_eq!(meta.bindings().unwrap(), vec![binding.clone()]);
        meta.delete_binding(&binding).unwrap();
        assert!(meta.bindings().unwrap().is_empty());
    }

    #[test]
    fn cluster_id_is_stable_and_kafka_shaped() {
        let meta = Meta::in_memory();
        let id = meta.cluster_id().unwrap();
        assert_eq!(id.len(), 22);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(meta.cluster_id().unwrap(), id);
        assert_eq!(base64_url(b"\xfb\xff"), "-_8");
    }

    #[test]
    fn memory_store_round_trip() {
        exercise(&Meta::open(Arc::new(MemoryStore::new())).unwrap());
    }

    #[test]
    fn sled_store_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let meta = Meta::open(Arc::new(SledStore::open(dir.path()).unwrap())).unwrap();
            exercise(&meta);
            meta.put_queue_state("/", "q", b"\x01\x02").unwrap();
            meta.flush().unwrap();
        }
        let meta = Meta::open(Arc::new(SledStore::open(dir.path()).unwrap())).unwrap();
        assert_eq!(meta.topic("orders").unwrap(), Some(topic("orders")));
        assert_eq!(meta.committed_offsets("g").unwrap()[1].offset, 20);
        assert_eq!(meta.allocate_producer_id().unwrap(), 2);
        assert_eq!(meta.queue_state("/", "q").unwrap().unwrap(), b"\x01\x02");
    }

    #[test]
    fn refuses_newer_schema_and_reports_corrupt_values() {
        let store = Arc::new(MemoryStore::new());
        store.put(keys::SCHEMA_KEY, b"99").unwrap();
        assert!(matches!(
            Meta::open(store).err(),
            Some(MetaError::NewerSchema { found: 99, .. })
        ));

        let store = Arc::new(MemoryStore::new());
        store.put(&keys::topic("bad"), b"{not json").unwrap();
        let meta = Meta::open(store).unwrap();
        let err = meta.topics().unwrap_err().to_string();
        assert!(err.contains("topic/bad"), "{err}");
    }

    #[test]
    fn second_open_of_a_sled_dir_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SledStore::open(dir.path()).unwrap();
        let second = SledStore::open(dir.path());
        assert!(matches!(second.err(), Some(MetaError::Locked(_))));
    }
}
