//! Routing: the exchange/queue/binding registry and the match rules, free of any protocol.
//!
//! [`Router`] owns every exchange and queue by `(vhost, name)`. Declarations follow RabbitMQ's
//! semantics (passive declares, equivalence checks on re-declare, exclusive and auto-delete
//! queues, the default exchange and the `amq.*` exchanges) and report problems as
//! [`RoutingError`] variants that each protocol adapter maps to its own codes (AMQP 404, 405,
//! 406, 403 …). Durable definitions are written to [`Meta`] before the in-memory registry
//! changes and are reloaded by [`Router::open`]; transient ones vanish with the process, and the
//! log directories they leave are removed at the next start.
//!
//! Routing follows `alternate-exchange` when an exchange matches nothing, auto-delete exchanges
//! go with their last binding, and dead letters carry RabbitMQ's death history (one entry per
//! queue and reason, counted) and are dropped when they would go round an automatic cycle.
//!
//! A Kafka topic is an exchange too ([`Exchange::is_topic`]): registered by the core, never
//! stored as an exchange definition, not deletable here (403), and a publish to it goes to the
//! topic through the core's [`TopicSink`]; its bindings are served by
//! [`super::topic_router`] from the topic log, never by copying at publish time.
//!
//! Messages arrive as the core's own [`Message`](super::message::Message); a headers exchange
//! reads a message's typed headers from the stored record itself
//! ([`super::message::RoutingHeaders`]), so dead letters, delayed messages and replays route as
//! their original publish did without asking any adapter. Declaration arguments travel as
//! `serde_json` values, the same form the meta store keeps them in.
//!
//! Queue logs live in `<data_dir>/queues/<escaped vhost>/<escaped name>/` (see
//! [`escape_path_component`]): any AMQP name maps to one safe directory name and back.
//!
//! Rooms: this file holds the router's types, its opening and lookups; [`declare`] and
//! [`bind`] change the definitions, [`publish`] routes messages, [`dead_letter`] moves them to
//! dead-letter exchanges, [`storage`] places queues on disk, [`tasks`] runs the background work.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use serde_json::{Map, Value};
use tokio::sync::Mutex as AsyncMutex;

use super::exchange::{Exchange, ExchangeKind, PREDECLARED};
use super::queue::{DeathReason, Overflow, Queue, QueueLimits, QueueSetup, Submitted};
pub use super::queue::{PRIORITY_HEADER, TTL_HEADER};
use crate::clock::Clock;
use crate::log::{LogConfig, LogError, LogLabels, PartitionHandle, SimpleRecord};
use crate::meta::{BindingDef, DestinationKind, ExchangeDef, Meta, MetaError, QueueDef};

mod bind;
mod dead_letter;
mod declare;
mod durable;
mod publish;
mod storage;
mod tasks;

pub use dead_letter::death_history;
use dead_letter::*;
use declare::*;
pub use declare::{server_queue_name, DELAYED_MESSAGE_EXCHANGE};
pub use durable::Durable;
pub use storage::escape_path_component;
pub(crate) use storage::remove_dir_if_present;
use storage::*;

/// The default virtual host, where Kafka topics are exchanges too.
pub const DEFAULT_VHOST: &str = "/";

/// Largest message body a queue accepts (RabbitMQ's `max_message_size` default, 128 MiB).
pub const MAX_MESSAGE_BYTES: usize = 128 * 1024 * 1024;

/// Errors of routing operations; each variant is one class of AMQP reply code.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    /// 404: no such exchange, queue or vhost.
    #[error("no {kind} '{name}' in vhost '{vhost}'")]
    NotFound {
        kind: &'static str,
        vhost: String,
        name: String,
    },
    /// 406: a re-declare that differs, or a delete precondition that failed.
    #[error("{0}")]
    PreconditionFailed(String),
    /// 405: an exclusive queue of another connection.
    #[error("cannot obtain exclusive access to locked queue '{name}' in vhost '{vhost}'")]
    ResourceLocked { vhost: String, name: String },
    /// 403: reserved names (`amq.` prefix, the default exchange).
    #[error("{0}")]
    AccessRefused(String),
    /// 503: a request that makes no sense (unknown exchange type …).
    #[error("{0}")]
    InvalidRequest(String),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Meta(#[from] MetaError),
}

impl RoutingError {
    /// A missing queue or exchange (`kind`) of `vhost`.
    pub fn not_found(kind: &'static str, vhost: &str, name: &str) -> Self {
        RoutingError::NotFound {
            kind,
            vhost: vhost.into(),
            name: name.into(),
        }
    }

    /// The text a client may see: storage failures lose their paths and host details (see
    /// [`LogError::client_message`]) and are logged here in full, since this is where every
    /// one of them turns into an answer.
    pub fn client_message(&self) -> String {
        match self {
            RoutingError::Log(e) => e.client_message(),
            RoutingError::Meta(e) => e.client_message(),
            other => other.to_string(),
        }
    }
}

type Key = (String, String);

fn key(vhost: &str, name: &str) -> Key {
    (vhost.to_string(), name.to_string())
}

/// What a queue declare returns.
#[derive(Debug, Clone)]
pub struct QueueDeclared {
    pub queue: Arc<Queue>,
    pub message_count: u64,
    pub consumer_count: u32,
    /// Whether this declare created the queue.
    pub fresh: bool,
}

/// A queue declare request.
#[derive(Debug, Clone)]
pub struct QueueSpec {
    pub vhost: String,
    /// Empty asks for a server-generated `amq.gen-…` name.
    pub name: String,
    pub passive: bool,
    pub durable: bool,
    /// The declaring connection, for exclusive queues.
    pub exclusive_owner: Option<u64>,
    pub auto_delete: bool,
    pub arguments: Value,
    /// The connection asking (for exclusive-access checks on existing queues).
    pub connection: u64,
    /// `name` came from [`server_queue_name`] on the client's behalf (an AMQP declare with an
    /// empty name, whose permission check needs the name first), so its reserved `amq.gen-`
    /// prefix is allowed.
    pub server_named: bool,
}

/// The connection id of declarations the broker makes itself (the delay queue): they may use
/// the reserved `amq.` prefix. Real connections count up from 1 and never reach it.
pub(crate) const INTERNAL_CONNECTION: u64 = u64::MAX;

/// Record header (protocol-neutral) naming the exchange a message was published to; set by
/// [`RouterInner::publish`], read by adapters for basic.deliver's `exchange`.
pub const EXCHANGE_HEADER: &str = "ferry.exchange";

/// What [`RouterInner::publish`] did with a message.
#[derive(Debug, Default)]
pub struct Published {
    /// One per queue (or topic) that holds the message, its own append or a repeat that
    /// deduplication dropped; each resolves once the copy is durable.
    pub pending: Vec<Durable>,
    /// Whether any queue matched (a mandatory publish that matched none is returned).
    pub routed: bool,
    /// Whether a matching queue refused it because it is full (`x-overflow` reject-publish
    /// or reject-publish-dlx) or its schema validation refused the message: a publisher in
    /// confirm mode gets a nack.
    pub rejected: bool,
    /// Why a queue declared with `x-schema-validation` refused it (the first such queue).
    pub schema_refused: Option<super::schema_check::MessageRejection>,
}

/// Record header with a message's dead-letter history, newest first, as JSON: a list of
/// `{"queue", "reason", "count", "time" (seconds), "exchange", "routing-keys"}` objects
/// (plus `"original-expiration"` when the message had its own TTL, and `"first": true` on the
/// entry of the first death).
/// The AMQP adapter turns it into RabbitMQ's `x-death` header.
pub const DEATH_HEADER: &str = "ferry.death";

/// What [`TopicSink::submit`] returns: the copy in the topic, appended or a repeat.
pub type TopicSubmit<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Durable, RoutingError>> + Send + 'a>>;

/// Where a publish to a topic's exchange face goes: the core appends it to the topic (the
/// router does not own topics). Implemented by the broker core.
pub trait TopicSink: Send + Sync {
    /// Queues an append of `record` to topic `topic`, on the partition its key chooses; the
    /// handle resolves once the append is durable. A [`Durable::Repeat`]: the topic's
    /// deduplication window already holds the record's message id, so nothing was appended
    /// (and the publish is confirmed once the original is durable: the message is in the topic).
    fn submit<'a>(&'a self, topic: &'a str, record: SimpleRecord) -> TopicSubmit<'a>;
}

/// The registry of exchanges and queues. Cheap to clone: maintenance tasks hold a clone.
#[derive(Clone)]
pub struct Router {
    inner: Arc<RouterInner>,
}

impl std::ops::Deref for Router {
    type Target = RouterInner;
    fn deref(&self) -> &RouterInner {
        &self.inner
    }
}

/// The registry's state, behind [`Router`].
pub struct RouterInner {
    meta: Meta,
    clock: Clock,
    queues_dir: PathBuf,
    queue_log_config: LogConfig,
    exchanges: RwLock<HashMap<Key, Arc<Exchange>>>,
    queues: RwLock<HashMap<Key, Arc<Queue>>>,
    /// Serializes declarations and deletions: they do I/O and must not interleave.
    admin: AsyncMutex<()>,
    /// Turns true at shutdown; maintenance tasks end on it.
    stop: tokio::sync::watch::Sender<bool>,
    /// Maintenance tasks, awaited at shutdown so nothing touches the meta store after it.
    tasks: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// A resource alarm in effect (low disk, low memory), with its reason: protocol adapters
    /// hold back publishers while it is set (AMQP's connection.blocked).
    alarm: tokio::sync::watch::Sender<Option<String>>,
    /// Appends publishes to topic exchanges to their topic; set once by the core.
    topic_sink: std::sync::OnceLock<Arc<dyn TopicSink>>,
    /// The schema registry queues declared with `x-schema-validation` check against; set
    /// once by the core with its own.
    schema_validator: std::sync::OnceLock<Arc<dyn super::schema_check::SchemaValidator>>,
    /// The vhosts clients may open (`set_vhosts`); `/` until configured.
    vhosts: RwLock<HashSet<String>>,
    /// The router itself, for tasks started from `&RouterInner` (the delay scheduler).
    self_ref: std::sync::OnceLock<std::sync::Weak<RouterInner>>,
    /// Vhosts whose delay scheduler runs.
    delay_schedulers: parking_lot::Mutex<HashSet<String>>,
    /// Writes durable queues' delivery states behind their changes.
    state_flusher: super::queue::StateFlusher,
    /// Messages dead-lettered since start (the alerts' dead-letter rate).
    dead_lettered: std::sync::atomic::AtomicU64,
    /// Most queues over all vhosts; 0 = no limit (see `broker::limits`).
    max_queues: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for RouterInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("queues_dir", &self.queues_dir)
            .finish()
    }
}

impl Router {
    /// Reloads durable exchanges, queues (with their delivery state) and bindings, declares the
    /// `amq.*` exchanges, and removes log directories of queues that did not survive.
    ///
    /// `topics` are the names of the existing Kafka topics: each is also a `topic` exchange
    /// of the default vhost (registered before bindings load, so bindings to them survive).
    pub fn open(
        meta: Meta,
        clock: Clock,
        queues_dir: &Path,
        default_log_config: &LogConfig,
        topics: &[String],
    ) -> Result<Router, RoutingError> {
        std::fs::create_dir_all(queues_dir).map_err(|source| LogError::Io {
            context: format!("creating {}", queues_dir.display()),
            source,
        })?;
        // Queue logs never lose messages to time or size retention: a message leaves a queue
        // when it is settled, not when it is old.
        let queue_log_config = LogConfig {
            retention_ms: -1,
            retention_bytes: -1,
            max_message_bytes: MAX_MESSAGE_BYTES + 64 * 1024,
            segment_bytes: default_log_config.segment_bytes.min(64 * 1024 * 1024),
            ..default_log_config.clone()
        };
        let router = RouterInner {
            meta,
            clock,
            queues_dir: queues_dir.to_path_buf(),
            queue_log_config,
            exchanges: RwLock::new(HashMap::new()),
            queues: RwLock::new(HashMap::new()),
            admin: AsyncMutex::new(()),
            stop: tokio::sync::watch::channel(false).0,
            tasks: parking_lot::Mutex::new(Vec::new()),
            alarm: tokio::sync::watch::channel(None).0,
            topic_sink: std::sync::OnceLock::new(),
            schema_validator: std::sync::OnceLock::new(),
            vhosts: RwLock::new(HashSet::from([DEFAULT_VHOST.to_string()])),
            self_ref: std::sync::OnceLock::new(),
            delay_schedulers: parking_lot::Mutex::new(HashSet::new()),
            dead_lettered: std::sync::atomic::AtomicU64::new(0),
            max_queues: std::sync::atomic::AtomicUsize::new(0),
            state_flusher: super::queue::StateFlusher::default(),
        };
        router.predeclare(DEFAULT_VHOST);
        for def in router.meta.exchanges()? {
            let Some(kind) = exchange_kind(&def) else {
                tracing::warn!(exchange = %def.name, kind = %def.kind, "unknown exchange type in meta; skipped");
                continue;
            };
            let k = key(&def.vhost, &def.name);
            router
                .exchanges
                .write()
                .insert(k, Arc::new(Exchange::new(def, kind)));
        }
        for name in topics {
            router.insert_topic_exchange(name);
        }
        let mut kept_dirs = HashSet::new();
        for def in router.meta.queues()? {
            let state = router.meta.queue_state(&def.vhost, &def.name)?;
            let queue = router.open_queue(def, None, state.as_deref())?;
            kept_dirs.insert(queue.dir().clone());
            let k = key(queue.vhost(), queue.name());
            router.queues.write().insert(k, Arc::new(queue));
        }
        for b in router.meta.bindings()? {
            // Bindings in another vhost may hang off its `amq.*` exchanges, which must exist
            // before the vhost list is configured.
            router.predeclare(&b.vhost);
            let Some(ex) = router.exchange(&b.vhost, &b.source) else {
                continue;
            };
            let dest_exists = match b.destination_kind {
                DestinationKind::Queue => router.queue(&b.vhost, &b.destination).is_some(),
                DestinationKind::Exchange => router.exchange(&b.vhost, &b.destination).is_some(),
            };
            if dest_exists {
                ex.add_binding(b);
            }
        }
        router.remove_stale_dirs(&kept_dirs);
        let router = Router {
            inner: Arc::new(router),
        };
        let _ = router.self_ref.set(Arc::downgrade(&router.inner));
        router.start_state_flusher();
        for q in router.queues() {
            router.start_maintenance(&q);
            if q.name() == super::delayed::DELAY_QUEUE {
                router.start_delay_scheduler(&q);
            }
        }
        Ok(router)
    }

    /// Declares (or with `passive`, checks) a queue, starting its maintenance task if its
    /// arguments need one.
    pub async fn declare_queue(&self, spec: QueueSpec) -> Result<QueueDeclared, RoutingError> {
        let declared = self.inner.declare_queue_inner(spec).await?;
        if declared.fresh {
            self.start_maintenance(&declared.queue);
        }
        Ok(declared)
    }
}

impl RouterInner {
    /// Turns true when the router shuts down.
    pub fn subscribe_stop(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Messages dead-lettered since the broker started.
    pub fn dead_lettered_total(&self) -> u64 {
        self.dead_lettered
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The broker's clock, in ms since the epoch.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Sets the most queues the broker holds (0: no limit); existing queues stay.
    pub fn set_max_queues(&self, max: usize) {
        self.max_queues
            .store(max, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sets where publishes to topic exchanges go (once; later calls are ignored).
    pub fn set_topic_sink(&self, sink: Arc<dyn TopicSink>) {
        let _ = self.topic_sink.set(sink);
    }

    /// Sets the schema registry validating queues check against (once).
    pub fn set_schema_validator(&self, validator: Arc<dyn super::schema_check::SchemaValidator>) {
        let _ = self.schema_validator.set(validator);
    }

    /// Makes topic `name` an exchange too (in the default vhost). An AMQP exchange declared
    /// earlier under the same name gives way to the topic, keeping its bindings.
    fn insert_topic_exchange(&self, name: &str) {
        let ex = Arc::new(Exchange::for_topic(DEFAULT_VHOST, name));
        let mut all = self.exchanges.write();
        if let Some(old) = all.get(&key(DEFAULT_VHOST, name)) {
            if old.is_topic() {
                return;
            }
            tracing::warn!(
                exchange = name,
                "an AMQP exchange has the name of a topic; the topic's exchange replaces it"
            );
            for b in old.bindings() {
                ex.add_binding(b);
            }
        }
        all.insert(key(DEFAULT_VHOST, name), ex);
    }

    /// Registers the exchange face of a topic that was just created.
    pub async fn register_topic_exchange(&self, name: &str) {
        let _admin = self.admin.lock().await;
        if let Some(old) = self.exchange(DEFAULT_VHOST, name) {
            if !old.is_topic() && old.def().durable {
                // The topic's definition is the exchange's now.
                if let Err(e) = self.meta.delete_exchange(DEFAULT_VHOST, name) {
                    tracing::warn!(exchange = name, error = %e, "removing a replaced exchange definition failed");
                }
            }
        }
        self.insert_topic_exchange(name);
    }

    /// Removes the exchange face of a deleted topic, with its bindings.
    pub async fn unregister_topic_exchange(&self, name: &str) -> Result<(), RoutingError> {
        let _admin = self.admin.lock().await;
        match self.exchange(DEFAULT_VHOST, name) {
            Some(ex) if ex.is_topic() => self.remove_exchange(&ex),
            _ => Ok(()),
        }
    }

    /// Raises (`Some(reason)`) or clears (`None`) the resource alarm.
    pub fn set_resource_alarm(&self, reason: Option<String>) {
        self.alarm.send_if_modified(|now| {
            let changed = *now != reason;
            *now = reason;
            changed
        });
    }

    /// Follows the resource alarm.
    pub fn subscribe_alarm(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.alarm.subscribe()
    }

    pub fn vhost_exists(&self, vhost: &str) -> bool {
        self.vhosts.read().contains(vhost)
    }

    /// Sets the vhosts clients may open, each with its `amq.*` exchanges. Objects of a vhost
    /// left out stay stored but unreachable until it is listed again.
    pub fn set_vhosts(&self, vhosts: &[String]) {
        for v in vhosts {
            self.predeclare(v);
        }
        *self.vhosts.write() = vhosts.iter().cloned().collect();
    }

    /// Adds the `amq.*` exchanges of `vhost` that are missing (every vhost has its own).
    fn predeclare(&self, vhost: &str) {
        let mut exchanges = self.exchanges.write();
        for (name, kind) in PREDECLARED {
            exchanges.entry(key(vhost, name)).or_insert_with(|| {
                let def = ExchangeDef {
                    vhost: vhost.into(),
                    name: (*name).into(),
                    kind: kind.as_str().into(),
                    durable: true,
                    auto_delete: false,
                    internal: false,
                    arguments: Value::Object(Map::new()),
                };
                Arc::new(Exchange::new(def, *kind))
            });
        }
    }

    pub fn exchange(&self, vhost: &str, name: &str) -> Option<Arc<Exchange>> {
        self.exchanges.read().get(&key(vhost, name)).cloned()
    }

    pub fn queue(&self, vhost: &str, name: &str) -> Option<Arc<Queue>> {
        self.queues.read().get(&key(vhost, name)).cloned()
    }

    /// [`queue`](Self::queue), or the core's NotFound error naming it (AMQP 404, HTTP 404).
    pub fn existing_queue(&self, vhost: &str, name: &str) -> Result<Arc<Queue>, RoutingError> {
        self.queue(vhost, name)
            .ok_or_else(|| RoutingError::not_found("queue", vhost, name))
    }

    /// [`exchange`](Self::exchange), or the core's NotFound error naming it.
    pub fn existing_exchange(
        &self,
        vhost: &str,
        name: &str,
    ) -> Result<Arc<Exchange>, RoutingError> {
        self.exchange(vhost, name)
            .ok_or_else(|| RoutingError::not_found("exchange", vhost, name))
    }

    /// All exchanges, for the admin API.
    pub fn exchanges(&self) -> Vec<Arc<Exchange>> {
        self.exchanges.read().values().cloned().collect()
    }

    /// All queues, for shutdown and observability.
    pub fn queues(&self) -> Vec<Arc<Queue>> {
        self.queues.read().values().cloned().collect()
    }

    /// Stops every queue's writer (fsyncing what it wrote).
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for t in tasks {
            let _ = t.await;
        }
        // Every change waiting for the flusher is written before the logs close.
        for q in self.queues() {
            q.persist_now();
        }
        for q in self.queues() {
            q.log().shutdown().await;
        }
    }
}
