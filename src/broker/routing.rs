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
//! Message headers and declaration arguments travel as `serde_json` values, the same form the
//! meta store keeps them in, so the core compares and persists them without knowing a wire
//! format.
//!
//! Queue logs live in `<data_dir>/queues/<escaped vhost>/<escaped name>/` (see
//! [`escape_path_component`]): any AMQP name maps to one safe directory name and back.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use serde_json::{Map, Value};
use tokio::sync::Mutex as AsyncMutex;

use super::dedup::DEDUP_KEY_HEADER;
use super::exchange::{Exchange, ExchangeKind, PREDECLARED};
use super::queue::{DeathReason, Overflow, Queue, QueueLimits, QueueSetup, Submitted};
pub use super::queue::{PRIORITY_HEADER, TTL_HEADER};
use crate::clock::Clock;
use crate::log::{LogConfig, LogError, LogLabels, PartitionHandle, PendingAppend, SimpleRecord};
use crate::meta::{BindingDef, DestinationKind, ExchangeDef, Meta, MetaError, QueueDef};

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
    /// One per queue that took the message; each resolves once its append is durable.
    pub pending: Vec<PendingAppend>,
    /// Whether any queue matched (a mandatory publish that matched none is returned).
    pub routed: bool,
    /// Whether a matching queue refused it because it is full (`x-overflow` reject-publish
    /// or reject-publish-dlx): a publisher in confirm mode gets a nack.
    pub rejected: bool,
}

/// Record header with a message's dead-letter history, newest first, as JSON: a list of
/// `{"queue", "reason", "count", "time" (seconds), "exchange", "routing-keys"}` objects
/// (plus `"original-expiration"` when the message had its own TTL, and `"first": true` on the
/// entry of the first death).
/// The AMQP adapter turns it into RabbitMQ's `x-death` header.
pub const DEATH_HEADER: &str = "ferry.death";

/// Where a publish to a topic's exchange face goes: the core appends it to the topic (the
/// router does not own topics). Implemented by the broker core.
pub trait TopicSink: Send + Sync {
    /// Queues an append of `record` to topic `topic`, on the partition its key chooses; the
    /// handle resolves once the append is durable. `None`: the topic's deduplication window
    /// already holds the record's message id, so nothing was appended (and the publish is
    /// confirmed: the message is in the topic).
    #[allow(clippy::type_complexity)]
    fn submit<'a>(
        &'a self,
        topic: &'a str,
        record: SimpleRecord,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<Option<PendingAppend>, RoutingError>>
                + Send
                + 'a,
        >,
    >;
}

/// Reads the message headers of a stored record, as a headers exchange matches them.
pub type HeadersReader = fn(&SimpleRecord) -> Option<Map<String, Value>>;

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
    /// The vhosts clients may open (`set_vhosts`); `/` until configured.
    vhosts: RwLock<HashSet<String>>,
    /// Reads a stored message's headers (in the protocol's encoding) as JSON, so dead letters
    /// can be routed by a headers exchange; set once by the AMQP adapter.
    headers_reader: std::sync::OnceLock<HeadersReader>,
    /// The router itself, for tasks started from `&RouterInner` (the delay scheduler).
    self_ref: std::sync::OnceLock<std::sync::Weak<RouterInner>>,
    /// Vhosts whose delay scheduler runs.
    delay_schedulers: parking_lot::Mutex<HashSet<String>>,
    /// Writes durable queues' delivery states behind their changes.
    state_flusher: super::queue::StateFlusher,
    /// Messages dead-lettered since start (the alerts' dead-letter rate).
    dead_lettered: std::sync::atomic::AtomicU64,
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
            vhosts: RwLock::new(HashSet::from([DEFAULT_VHOST.to_string()])),
            headers_reader: std::sync::OnceLock::new(),
            self_ref: std::sync::OnceLock::new(),
            delay_schedulers: parking_lot::Mutex::new(HashSet::new()),
            dead_lettered: std::sync::atomic::AtomicU64::new(0),
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

    /// The task writing durable queues' delivery states behind their changes (see
    /// [`super::queue::StateFlusher`]).
    fn start_state_flusher(&self) {
        let router = self.clone();
        let mut stop = self.stop.subscribe();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = router.state_flusher.changed() => {}
                    _ = stop.changed() => return,
                }
                tokio::time::sleep(super::queue::STATE_WRITE_DELAY).await;
                let dirty = router.state_flusher.take_dirty();
                let r = router.clone();
                // sled writes block; keep them off the async workers.
                let _ = tokio::task::spawn_blocking(move || {
                    for (vhost, name) in dirty {
                        if let Some(q) = r.queue(&vhost, &name) {
                            q.persist_now();
                        }
                    }
                })
                .await;
            }
        });
        self.tasks.lock().push(task);
    }

    /// Starts the scheduler of a vhost's delay queue (once per vhost).
    fn start_delay_scheduler(&self, q: &Arc<Queue>) {
        if !self.delay_schedulers.lock().insert(q.vhost().to_string()) {
            return;
        }
        let task = tokio::spawn(super::delayed::run_scheduler(self.clone(), q.clone()));
        let mut tasks = self.tasks.lock();
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// Runs TTL/max-length on a timer and forwards dead letters, for queues whose arguments
    /// need it. Ends when the queue is deleted.
    fn start_maintenance(&self, q: &Arc<Queue>) {
        if !q.limits().needs_maintenance() && q.limits().dead_letter_exchange.is_none() {
            return;
        }
        let router = self.clone();
        let q = q.clone();
        let mut stop = self.stop.subscribe();
        let task = tokio::spawn(async move {
            let mut appends = q.subscribe_appends();
            let mut ready = q.subscribe_ready();
            while !q.is_deleted() && !*stop.borrow_and_update() {
                if q.expired_unused() {
                    router.expire_queue(&q).await;
                    break;
                }
                q.enforce_now();
                let dead = q.take_dead();
                if !dead.is_empty() {
                    router.dead_letter(&q, dead).await;
                }
                // Wake at the next expiry; with a manual clock, re-check every second too.
                let wait = q
                    .next_expiry_ms()
                    .map(|at| at.saturating_sub(router.clock.now_ms()).clamp(1, 1000) as u64)
                    .unwrap_or(1000);
                tokio::select! {
                    r = appends.changed() => if r.is_err() { break },
                    r = ready.changed() => if r.is_err() { break },
                    _ = q.dead_letters_waiting() => {}
                    _ = tokio::time::sleep(std::time::Duration::from_millis(wait)) => {}
                    _ = stop.changed() => break,
                }
            }
        });
        let mut tasks = self.tasks.lock();
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// Moves messages out of `q` into its dead-letter exchange (or drops them if it has none),
    /// adding the death record, and settles them in `q` once the copies are durable. The
    /// offsets must be unacked in `q`.
    pub async fn dead_letter(&self, q: &Arc<Queue>, dead: Vec<(i64, DeathReason)>) {
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
            let record = with_death(record.clone(), q, *reason, now);
            let record = match &q.limits().dead_letter_routing_key {
                Some(k) => SimpleRecord {
                    key: Some(bytes::Bytes::copy_from_slice(k.as_bytes())),
                    ..record
                },
                None => record,
            };
            // A dead-letter exchange that does not exist drops the message (RabbitMQ).
            let headers = self.headers_of(&record);
            match Box::pin(self.publish_now(q.vhost(), &dlx, headers.as_ref(), record)).await {
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

impl Router {
    /// Deletes a queue whose `x-expires` ran out (re-checked under the admin lock: a declare
    /// or consumer may have used it meanwhile).
    async fn expire_queue(&self, q: &Arc<Queue>) {
        let _admin = self.admin.lock().await;
        if q.is_deleted() || !q.expired_unused() {
            return;
        }
        tracing::debug!(queue = q.name(), "queue expired (x-expires)");
        if let Err(e) = self.remove_queue(q).await {
            tracing::warn!(queue = q.name(), error = %e, "deleting an expired queue failed");
        }
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

    /// Deletes `<queues>/<vhost>/<name>` directories of queues that are not durable.
    fn remove_stale_dirs(&self, kept: &HashSet<PathBuf>) {
        let Ok(vhosts) = std::fs::read_dir(&self.queues_dir) else {
            return;
        };
        for vhost in vhosts.flatten() {
            let Ok(names) = std::fs::read_dir(vhost.path()) else {
                continue;
            };
            for entry in names.flatten() {
                let path = entry.path();
                if !kept.contains(&path) {
                    if let Err(e) = std::fs::remove_dir_all(&path) {
                        tracing::warn!(path = %path.display(), error = %e, "cannot remove a transient queue's log");
                    }
                }
            }
        }
    }

    fn queue_dir(&self, vhost: &str, name: &str) -> PathBuf {
        self.queues_dir
            .join(escape_path_component(vhost))
            .join(escape_path_component(name))
    }

    fn open_queue(
        &self,
        def: QueueDef,
        exclusive_owner: Option<u64>,
        state: Option<&[u8]>,
    ) -> Result<Queue, RoutingError> {
        let dir = self.queue_dir(&def.vhost, &def.name);
        let labels = LogLabels {
            topic: format!("queue:{}:{}", def.vhost, def.name),
            partition: 0,
        };
        let mut config = self.queue_log_config.clone();
        if !def.durable || exclusive_owner.is_some() {
            // A transient (or exclusive) queue does not survive a restart, so nothing is gained by syncing
            // it: its publishes are confirmed once written (as RabbitMQ confirms them on
            // enqueue), and only durable queues pay for fsync.
            config.fsync = crate::log::FsyncPolicy::Never;
        }
        let (log, _report) = PartitionHandle::open(&dir, config, self.clock.clone(), labels)?;
        let meta = (def.durable && exclusive_owner.is_none()).then(|| self.meta.clone());
        // Arguments were validated at declare; a stored definition that no longer parses
        // runs without limits rather than failing the whole start-up.
        let limits = QueueLimits::from_arguments(&def.arguments).unwrap_or_else(|e| {
            tracing::warn!(queue = %def.name, error = %e, "ignoring invalid queue arguments");
            QueueLimits::default()
        });
        Ok(Queue::new(
            QueueSetup {
                def,
                exclusive_owner,
                log,
                dir,
                meta,
                limits,
                clock: self.clock.clone(),
                flusher: Some(self.state_flusher.clone()),
            },
            state,
        ))
    }

    /// Sets where publishes to topic exchanges go (once; later calls are ignored).
    pub fn set_topic_sink(&self, sink: Arc<dyn TopicSink>) {
        let _ = self.topic_sink.set(sink);
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

    /// Sets how dead letters' headers are read for headers-exchange routing (first call wins).
    pub fn set_headers_reader(&self, reader: HeadersReader) {
        let _ = self.headers_reader.set(reader);
    }

    /// A stored message's headers, as its dead-letter exchange routes them (with its death
    /// history, as RabbitMQ routes the dead-lettered copy).
    pub fn headers_of(&self, record: &SimpleRecord) -> Option<Map<String, Value>> {
        self.headers_reader.get().and_then(|read| read(record))
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

    /// All exchanges, for the admin API.
    pub fn exchanges(&self) -> Vec<Arc<Exchange>> {
        self.exchanges.read().values().cloned().collect()
    }

    /// All queues, for shutdown and observability.
    pub fn queues(&self) -> Vec<Arc<Queue>> {
        self.queues.read().values().cloned().collect()
    }

    /// Declares (or with `passive`, checks) an exchange.
    pub async fn declare_exchange(
        &self,
        def: ExchangeDef,
        passive: bool,
    ) -> Result<Arc<Exchange>, RoutingError> {
        let _admin = self.admin.lock().await;
        if def.name.is_empty() {
            // The default exchange always exists and cannot be redeclared.
            return if passive {
                Ok(Arc::new(Exchange::new(
                    ExchangeDef {
                        kind: "direct".into(),
                        durable: true,
                        ..def
                    },
                    ExchangeKind::Direct,
                )))
            } else {
                Err(RoutingError::AccessRefused(
                    "operation not permitted on the default exchange".into(),
                ))
            };
        }
        if let Some(existing) = self.exchange(&def.vhost, &def.name) {
            if passive {
                return Ok(existing);
            }
            let e = existing.def();
            for (field, now, asked) in [
                ("type", e.kind.clone(), def.kind.clone()),
                ("durable", e.durable.to_string(), def.durable.to_string()),
                (
                    "auto_delete",
                    e.auto_delete.to_string(),
                    def.auto_delete.to_string(),
                ),
                ("internal", e.internal.to_string(), def.internal.to_string()),
            ] {
                if now != asked {
                    return Err(RoutingError::PreconditionFailed(format!(
                        "inequivalent arg '{field}' for exchange '{}' in vhost '{}': received '{asked}' but current is '{now}'",
                        def.name, def.vhost
                    )));
                }
            }
            if !args_equivalent(&e.arguments, &def.arguments) {
                return Err(RoutingError::PreconditionFailed(format!(
                    "inequivalent arguments for exchange '{}' in vhost '{}'",
                    def.name, def.vhost
                )));
            }
            return Ok(existing);
        }
        if passive {
            return Err(RoutingError::NotFound {
                kind: "exchange",
                vhost: def.vhost,
                name: def.name,
            });
        }
        if def.name.starts_with("amq.") {
            return Err(RoutingError::AccessRefused(format!(
                "exchange name '{}' contains reserved prefix 'amq.*'",
                def.name
            )));
        }
        let kind = exchange_kind(&def).ok_or_else(|| {
            if def.kind == DELAYED_MESSAGE_EXCHANGE {
                RoutingError::PreconditionFailed(
                    "Invalid argument, 'x-delayed-type' must be an existing exchange type".into(),
                )
            } else {
                RoutingError::InvalidRequest(format!("invalid exchange type '{}'", def.kind))
            }
        })?;
        if def.durable {
            self.meta.put_exchange(&def)?;
            // Declarations are rare and a client may rely on them at once: make them durable
            // before declare-ok rather than at sled's next periodic flush.
            self.meta.flush()?;
        }
        let ex = Arc::new(Exchange::new(def, kind));
        self.exchanges
            .write()
            .insert(key(&ex.def().vhost, ex.name()), ex.clone());
        Ok(ex)
    }

    /// Deletes an exchange and every binding from or to it.
    pub async fn delete_exchange(
        &self,
        vhost: &str,
        name: &str,
        if_unused: bool,
    ) -> Result<(), RoutingError> {
        let _admin = self.admin.lock().await;
        if name.is_empty() || name.starts_with("amq.") {
            return Err(RoutingError::AccessRefused(format!(
                "operation not permitted on exchange '{name}'"
            )));
        }
        let Some(ex) = self.exchange(vhost, name) else {
            // RabbitMQ answers delete-ok for a missing exchange.
            return Ok(());
        };
        if ex.is_topic() {
            // The exchange is the topic's other face: deleting it would delete the topic's
            // data, which only the topic admin APIs (Kafka DeleteTopics) may do.
            return Err(RoutingError::AccessRefused(format!(
                "exchange '{name}' in vhost '{vhost}' is a topic; delete the topic instead"
            )));
        }
        if if_unused && ex.has_bindings() {
            return Err(RoutingError::PreconditionFailed(format!(
                "exchange '{name}' in vhost '{vhost}' in use"
            )));
        }
        self.remove_exchange(&ex)
    }

    /// Removes an exchange, its bindings and the bindings to it; then auto-deletes what that
    /// left without bindings. Called with the admin lock held.
    fn remove_exchange(&self, ex: &Arc<Exchange>) -> Result<(), RoutingError> {
        let (vhost, name) = (ex.def().vhost.clone(), ex.name().to_string());
        if ex.def().durable {
            for b in ex.bindings() {
                self.meta.delete_binding(&b)?;
            }
            if !ex.is_topic() {
                self.meta.delete_exchange(&vhost, &name)?;
            }
            self.meta.flush()?;
        }
        let mut emptied = Vec::new();
        let others: Vec<_> = self.exchanges.read().values().cloned().collect();
        for other in others {
            let gone = other.remove_bindings_to(DestinationKind::Exchange, &name);
            for b in &gone {
                let _ = self.meta.delete_binding(b);
            }
            if !gone.is_empty() {
                emptied.push(other);
            }
        }
        self.exchanges.write().remove(&key(&vhost, &name));
        self.auto_delete_exchanges(emptied);
        Ok(())
    }

    /// Deletes the auto-delete exchanges among `sources` that lost their last binding
    /// (RabbitMQ: an auto-delete exchange goes when its last binding goes, not before it had
    /// one). Cascades through exchange-to-exchange bindings.
    fn auto_delete_exchanges(&self, sources: Vec<Arc<Exchange>>) {
        for ex in sources {
            let still_there = self.exchange(&ex.def().vhost, ex.name()).is_some();
            if ex.def().auto_delete && !ex.has_bindings() && still_there {
                if let Err(e) = self.remove_exchange(&ex) {
                    tracing::warn!(exchange = ex.name(), error = %e, "auto-deleting an exchange failed");
                }
            }
        }
    }

    async fn declare_queue_inner(&self, spec: QueueSpec) -> Result<QueueDeclared, RoutingError> {
        let _admin = self.admin.lock().await;
        let name = if spec.name.is_empty() && !spec.passive {
            format!("amq.gen-{}", random_suffix())
        } else {
            spec.name.clone()
        };
        if let Some(q) = self.queue(&spec.vhost, &name) {
            if let Some(owner) = q.exclusive_owner() {
                if owner != spec.connection {
                    return Err(RoutingError::ResourceLocked {
                        vhost: spec.vhost,
                        name,
                    });
                }
            }
            if !spec.passive {
                let d = q.def();
                let exclusive_now = q.exclusive_owner().is_some();
                for (field, now, asked) in [
                    ("durable", d.durable, spec.durable),
                    ("exclusive", exclusive_now, spec.exclusive_owner.is_some()),
                    ("auto_delete", d.auto_delete, spec.auto_delete),
                ] {
                    if now != asked {
                        return Err(RoutingError::PreconditionFailed(format!(
                            "inequivalent arg '{field}' for queue '{name}' in vhost '{}': received '{asked}' but current is '{now}'",
                            spec.vhost
                        )));
                    }
                }
                if !args_equivalent(&d.arguments, &spec.arguments) {
                    return Err(RoutingError::PreconditionFailed(format!(
                        "inequivalent arguments for queue '{name}' in vhost '{}'",
                        spec.vhost
                    )));
                }
            }
            // A re-declare (passive or not) counts as use for x-expires (RabbitMQ).
            q.touch();
            return Ok(QueueDeclared {
                message_count: q.message_count(),
                consumer_count: q.consumer_count(),
                queue: q,
                fresh: false,
            });
        }
        if spec.passive {
            return Err(RoutingError::NotFound {
                kind: "queue",
                vhost: spec.vhost,
                name,
            });
        }
        if name.starts_with("amq.")
            && !spec.name.is_empty()
            && spec.connection != INTERNAL_CONNECTION
        {
            return Err(RoutingError::AccessRefused(format!(
                "queue name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        let limits = QueueLimits::from_arguments(&spec.arguments).map_err(|e| {
            RoutingError::PreconditionFailed(format!(
                "{e} for queue '{name}' in vhost '{}'",
                spec.vhost
            ))
        })?;
        if limits.quorum {
            // RabbitMQ's quorum queues are always durable, never exclusive or auto-delete.
            let refused = if !spec.durable {
                Some("must be durable")
            } else if spec.exclusive_owner.is_some() {
                Some("cannot be exclusive")
            } else if spec.auto_delete {
                Some("cannot be auto-delete")
            } else {
                None
            };
            if let Some(why) = refused {
                return Err(RoutingError::PreconditionFailed(format!(
                    "quorum queue '{name}' in vhost '{}' {why}",
                    spec.vhost
                )));
            }
        }
        let def = QueueDef {
            vhost: spec.vhost.clone(),
            name: name.clone(),
            durable: spec.durable,
            auto_delete: spec.auto_delete,
            arguments: spec.arguments,
        };
        // A directory left by a transient queue of the same name (or a crash mid-delete) must
        // not leak its messages into the new queue.
        remove_dir_if_present(&self.queue_dir(&spec.vhost, &name))?;
        // An exclusive queue dies with its connection, so it never outlives a restart
        // (RabbitMQ treats durable exclusive queues the same way).
        if def.durable && spec.exclusive_owner.is_none() {
            self.meta.put_queue(&def)?;
            self.meta.flush()?;
        }
        let queue = Arc::new(self.open_queue(def, spec.exclusive_owner, None)?);
        self.queues
            .write()
            .insert(key(&spec.vhost, &name), queue.clone());
        // Every queue is bound to the default exchange by its name; that binding is implicit.
        Ok(QueueDeclared {
            queue,
            message_count: 0,
            consumer_count: 0,
            fresh: true,
        })
    }

    /// Deletes a queue; returns how many ready messages it held.
    pub async fn delete_queue(
        &self,
        vhost: &str,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        connection: Option<u64>,
    ) -> Result<u64, RoutingError> {
        let _admin = self.admin.lock().await;
        let Some(q) = self.queue(vhost, name) else {
            return Err(RoutingError::NotFound {
                kind: "queue",
                vhost: vhost.into(),
                name: name.into(),
            });
        };
        if let (Some(owner), Some(conn)) = (q.exclusive_owner(), connection) {
            if owner != conn {
                return Err(RoutingError::ResourceLocked {
                    vhost: vhost.into(),
                    name: name.into(),
                });
            }
        }
        if if_unused && q.consumer_count() > 0 {
            return Err(RoutingError::PreconditionFailed(format!(
                "queue '{name}' in vhost '{vhost}' in use"
            )));
        }
        let count = q.message_count();
        if if_empty && count > 0 {
            return Err(RoutingError::PreconditionFailed(format!(
                "queue '{name}' in vhost '{vhost}' is not empty"
            )));
        }
        self.remove_queue(&q).await?;
        Ok(count)
    }

    async fn remove_queue(&self, q: &Arc<Queue>) -> Result<(), RoutingError> {
        let (vhost, name) = (q.vhost().to_string(), q.name().to_string());
        if q.persistent() {
            self.meta.delete_queue(&vhost, &name)?;
        }
        let exchanges: Vec<_> = self.exchanges.read().values().cloned().collect();
        let mut emptied = Vec::new();
        for ex in exchanges {
            let gone = ex.remove_bindings_to(DestinationKind::Queue, &name);
            for b in &gone {
                if b.vhost == vhost && q.persistent() {
                    self.meta.delete_binding(b)?;
                }
            }
            if !gone.is_empty() {
                emptied.push(ex);
            }
        }
        self.queues.write().remove(&key(&vhost, &name));
        self.auto_delete_exchanges(emptied);
        q.mark_deleted();
        q.log().shutdown().await;
        remove_dir_if_present(q.dir())?;
        Ok(())
    }

    /// Deletes the exclusive queues of a connection that closed.
    pub async fn connection_closed(&self, connection: u64) {
        let owned: Vec<_> = self
            .queues
            .read()
            .values()
            .filter(|q| q.exclusive_owner() == Some(connection))
            .cloned()
            .collect();
        for q in owned {
            let _admin = self.admin.lock().await;
            if let Err(e) = self.remove_queue(&q).await {
                tracing::warn!(queue = q.name(), error = %e, "deleting an exclusive queue failed");
            }
        }
    }

    /// Called after a consumer of `q` went away: an auto-delete queue with no consumers left
    /// is deleted (RabbitMQ deletes it once it had at least one consumer).
    pub async fn consumer_removed(&self, q: &Arc<Queue>, consumer: u64) {
        if q.remove_consumer(consumer) == 0 && q.auto_delete() && !q.is_deleted() {
            let _admin = self.admin.lock().await;
            if q.consumer_count() == 0 && !q.is_deleted() {
                if let Err(e) = self.remove_queue(q).await {
                    tracing::warn!(queue = q.name(), error = %e, "auto-deleting a queue failed");
                }
            }
        }
    }

    /// Settles every ready message of a queue; returns how many.
    pub fn purge_queue(&self, vhost: &str, name: &str) -> Result<u64, RoutingError> {
        let q = self
            .queue(vhost, name)
            .ok_or_else(|| RoutingError::NotFound {
                kind: "queue",
                vhost: vhost.into(),
                name: name.into(),
            })?;
        Ok(q.purge())
    }

    fn binding_target_check(&self, b: &BindingDef) -> Result<Arc<Exchange>, RoutingError> {
        if b.source.is_empty() {
            return Err(RoutingError::AccessRefused(
                "operation not permitted on the default exchange".into(),
            ));
        }
        let ex = self
            .exchange(&b.vhost, &b.source)
            .ok_or_else(|| RoutingError::NotFound {
                kind: "exchange",
                vhost: b.vhost.clone(),
                name: b.source.clone(),
            })?;
        match b.destination_kind {
            DestinationKind::Queue => {
                self.queue(&b.vhost, &b.destination)
                    .ok_or_else(|| RoutingError::NotFound {
                        kind: "queue",
                        vhost: b.vhost.clone(),
                        name: b.destination.clone(),
                    })?;
            }
            DestinationKind::Exchange => {
                self.exchange(&b.vhost, &b.destination)
                    .ok_or_else(|| RoutingError::NotFound {
                        kind: "exchange",
                        vhost: b.vhost.clone(),
                        name: b.destination.clone(),
                    })?;
            }
        }
        Ok(ex)
    }

    fn binding_is_durable(&self, b: &BindingDef, ex: &Exchange) -> bool {
        let dest_durable = match b.destination_kind {
            DestinationKind::Queue => self
                .queue(&b.vhost, &b.destination)
                .is_some_and(|q| q.persistent()),
            DestinationKind::Exchange => self
                .exchange(&b.vhost, &b.destination)
                .is_some_and(|e| e.def().durable),
        };
        ex.def().durable && dest_durable
    }

    /// Binds a queue or exchange to an exchange. Idempotent.
    pub async fn bind(&self, b: BindingDef) -> Result<(), RoutingError> {
        let _admin = self.admin.lock().await;
        let ex = self.binding_target_check(&b)?;
        if self.binding_is_durable(&b, &ex) {
            self.meta.put_binding(&b)?;
            self.meta.flush()?;
        }
        ex.add_binding(b);
        Ok(())
    }

    /// Removes a binding. Unbinding one that does not exist is not an error (RabbitMQ).
    pub async fn unbind(&self, b: BindingDef) -> Result<(), RoutingError> {
        let _admin = self.admin.lock().await;
        let ex = self.binding_target_check(&b)?;
        if ex.remove_binding(&b) {
            if self.binding_is_durable(&b, &ex) {
                self.meta.delete_binding(&b)?;
            }
            self.auto_delete_exchanges(vec![ex]);
        }
        Ok(())
    }

    /// The queues a message reaches from `exchange`, following exchange-to-exchange bindings
    /// (each exchange visited once, so binding cycles end). When the exchange routes the
    /// message nowhere and has an `alternate-exchange` argument, the message goes there
    /// instead (and on to that one's alternate, cycles again ending).
    pub fn route(
        &self,
        vhost: &str,
        exchange: &str,
        routing_key: &str,
        headers: Option<&Map<String, Value>>,
    ) -> Result<Vec<Arc<Queue>>, RoutingError> {
        if exchange.is_empty() {
            return Ok(self.queue(vhost, routing_key).into_iter().collect());
        }
        let mut start = self
            .exchange(vhost, exchange)
            .ok_or_else(|| RoutingError::NotFound {
                kind: "exchange",
                vhost: vhost.into(),
                name: exchange.into(),
            })?;
        let mut tried = HashSet::new();
        loop {
            let out = self.route_from(vhost, &start, routing_key, headers);
            if !out.is_empty() || !tried.insert(start.name().to_string()) {
                return Ok(out);
            }
            // A missing alternate exchange leaves the message unroutable (RabbitMQ warns).
            let alternate = start
                .def()
                .arguments
                .get("alternate-exchange")
                .and_then(Value::as_str)
                .and_then(|ae| self.exchange(vhost, ae));
            match alternate {
                Some(ae) => start = ae,
                None => return Ok(out),
            }
        }
    }

    /// The queues a record appended to topic exchange `ex` reaches through the exchange's
    /// bindings (topic patterns on the record key), each queue once. Used by the topic
    /// router; publishes never copy through a topic exchange.
    pub fn route_topic_record(&self, ex: &Exchange, routing_key: &str) -> Vec<Arc<Queue>> {
        let vhost = ex.def().vhost.as_str();
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (kind, dest) in ex.matches(routing_key, None) {
            let found: Vec<Arc<Queue>> = match kind {
                DestinationKind::Queue => self.queue(vhost, &dest).into_iter().collect(),
                DestinationKind::Exchange => self
                    .route(vhost, &dest, routing_key, None)
                    .unwrap_or_default(),
            };
            for q in found {
                if seen.insert(q.name().to_string()) {
                    out.push(q);
                }
            }
        }
        out
    }

    fn route_from(
        &self,
        vhost: &str,
        start: &Arc<Exchange>,
        routing_key: &str,
        headers: Option<&Map<String, Value>>,
    ) -> Vec<Arc<Queue>> {
        let mut seen_ex = HashSet::new();
        let mut seen_q = HashSet::new();
        let mut out = Vec::new();
        let mut stack = vec![start.clone()];
        while let Some(ex) = stack.pop() {
            if !seen_ex.insert(ex.name().to_string()) {
                continue;
            }
            if ex.is_topic() {
                // A topic's bindings are served from the topic log by its router task;
                // copying here would deliver twice. (Exchange-to-topic bindings do not
                // append to the topic yet.)
                continue;
            }
            for (kind, dest) in ex.matches(routing_key, headers) {
                match kind {
                    DestinationKind::Queue => {
                        if seen_q.insert(dest.clone()) {
                            if let Some(q) = self.queue(vhost, &dest) {
                                out.push(q);
                            }
                        }
                    }
                    DestinationKind::Exchange => {
                        if let Some(next) = self.exchange(vhost, &dest) {
                            stack.push(next);
                        }
                    }
                }
            }
        }
        out
    }

    /// Publishes a client's message: one with an `x-delay` header goes to the vhost's delay
    /// queue and is routed when due ([`super::delayed`]); any other is routed now
    /// ([`publish_now`](Self::publish_now)).
    pub async fn publish(
        &self,
        vhost: &str,
        exchange: &str,
        headers: Option<&Map<String, Value>>,
        mut record: SimpleRecord,
    ) -> Result<Published, RoutingError> {
        // The deduplication key an AMQP publisher puts in its headers table must be readable
        // by queues (and after a restart) without the protocol's table encoding.
        if let Some(key) = headers.and_then(|h| h.get("x-deduplication-header")) {
            let key = match key {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            record.headers.retain(|(k, _)| k != DEDUP_KEY_HEADER);
            record
                .headers
                .push((DEDUP_KEY_HEADER.to_string(), Some(key.into())));
        }
        match super::delayed::delay_of(headers) {
            Some(delay) => {
                self.publish_delayed(vhost, exchange, headers, record, delay)
                    .await
            }
            None => self.publish_now(vhost, exchange, headers, record).await,
        }
    }

    /// Appends a delayed message to the vhost's delay queue (declared, with its scheduler, on
    /// first use); its confirm follows that append.
    async fn publish_delayed(
        &self,
        vhost: &str,
        exchange: &str,
        headers: Option<&Map<String, Value>>,
        record: SimpleRecord,
        delay_ms: i64,
    ) -> Result<Published, RoutingError> {
        if !exchange.is_empty() && self.exchange(vhost, exchange).is_none() {
            return Err(RoutingError::NotFound {
                kind: "exchange",
                vhost: vhost.into(),
                name: exchange.into(),
            });
        }
        let q = self.delay_queue(vhost).await?;
        let due = self.clock.now_ms().saturating_add(delay_ms);
        let stored = super::delayed::wrap(record, exchange, headers, due);
        let pending = match q.submit(stored).await? {
            Submitted::Appended(p) => vec![p],
            Submitted::Full | Submitted::Duplicate => Vec::new(),
        };
        Ok(Published {
            pending,
            routed: true,
            rejected: false,
        })
    }

    /// The vhost's delay queue, declared and its scheduler started on first use.
    async fn delay_queue(&self, vhost: &str) -> Result<Arc<Queue>, RoutingError> {
        if let Some(q) = self.queue(vhost, super::delayed::DELAY_QUEUE) {
            if self.delay_schedulers.lock().contains(vhost) {
                return Ok(q);
            }
        }
        let router = self
            .self_ref
            .get()
            .and_then(std::sync::Weak::upgrade)
            .map(|inner| Router { inner })
            .ok_or_else(|| RoutingError::InvalidRequest("the broker is shutting down".into()))?;
        let declared = router
            .declare_queue(QueueSpec {
                vhost: vhost.to_string(),
                name: super::delayed::DELAY_QUEUE.to_string(),
                passive: false,
                durable: true,
                exclusive_owner: None,
                auto_delete: false,
                arguments: Value::Object(Map::new()),
                connection: INTERNAL_CONNECTION,
            })
            .await?;
        router.start_delay_scheduler(&declared.queue);
        Ok(declared.queue)
    }

    /// Routes a message now and queues an append to every matching queue that accepts it. A
    /// queue that is full with `x-overflow` reject-publish refuses it; with
    /// reject-publish-dlx the refused message is also dead-lettered (reason `maxlen`).
    pub async fn publish_now(
        &self,
        vhost: &str,
        exchange: &str,
        headers: Option<&Map<String, Value>>,
        record: SimpleRecord,
    ) -> Result<Published, RoutingError> {
        if vhost == DEFAULT_VHOST && !exchange.is_empty() {
            if let Some(ex) = self.exchange(vhost, exchange).filter(|e| e.is_topic()) {
                let sink = self
                    .topic_sink
                    .get()
                    .ok_or_else(|| RoutingError::NotFound {
                        kind: "exchange",
                        vhost: vhost.into(),
                        name: exchange.into(),
                    })?;
                let pending = sink.submit(ex.name(), record).await?;
                return Ok(Published {
                    pending: pending.into_iter().collect(),
                    routed: true,
                    rejected: false,
                });
            }
        }
        let routing_key = record
            .key
            .as_ref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        let queues = self.route(vhost, exchange, &routing_key, headers)?;
        let mut record = record;
        record.headers.retain(|(k, _)| k != EXCHANGE_HEADER);
        record.headers.insert(
            0,
            (
                EXCHANGE_HEADER.to_string(),
                Some(bytes::Bytes::copy_from_slice(exchange.as_bytes())),
            ),
        );
        let mut out = Published {
            pending: Vec::with_capacity(queues.len()),
            routed: !queues.is_empty(),
            rejected: false,
        };
        let deaths = death_history(&record);
        for q in queues {
            if is_death_cycle(&deaths, q.name()) {
                tracing::debug!(
                    queue = q.name(),
                    "dropping a dead letter that went round a cycle"
                );
                continue;
            }
            match q.submit(record.clone()).await? {
                Submitted::Appended(p) => out.pending.push(p),
                // Already in the queue: confirmed like any routed message.
                Submitted::Duplicate => {}
                Submitted::Full => {
                    out.rejected = true;
                    let dlx = q.limits().dead_letter_exchange.clone();
                    if let (Overflow::RejectPublishDlx, Some(dlx)) = (q.limits().overflow, dlx) {
                        metrics::counter!("ferry_messages_dead_lettered_total", "reason" => DeathReason::MaxLen.as_str())
                            .increment(1);
                        self.dead_lettered
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let dead = with_death(
                            record.clone(),
                            &q,
                            DeathReason::MaxLen,
                            self.clock.now_ms(),
                        );
                        let dead = match &q.limits().dead_letter_routing_key {
                            Some(k) => SimpleRecord {
                                key: Some(bytes::Bytes::copy_from_slice(k.as_bytes())),
                                ..dead
                            },
                            None => dead,
                        };
                        let dead_headers = self.headers_of(&dead).or_else(|| headers.cloned());
                        let publish =
                            self.publish_now(q.vhost(), &dlx, dead_headers.as_ref(), dead);
                        if let Err(e) = Box::pin(publish).await {
                            tracing::debug!(queue = q.name(), error = %e, "dead-lettering a rejected publish failed");
                        }
                    }
                }
            }
        }
        Ok(out)
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

/// The exchange type of RabbitMQ's delayed-message plugin. Ferry delays messages on every
/// exchange ([`super::delayed`]), so this type only names the routing of its
/// `x-delayed-type` argument; declarations written for the plugin work unchanged.
pub const DELAYED_MESSAGE_EXCHANGE: &str = "x-delayed-message";

/// How an exchange definition routes: its type, or for `x-delayed-message` its
/// `x-delayed-type`.
fn exchange_kind(def: &ExchangeDef) -> Option<ExchangeKind> {
    if def.kind == DELAYED_MESSAGE_EXCHANGE {
        return def
            .arguments
            .get("x-delayed-type")
            .and_then(Value::as_str)
            .and_then(ExchangeKind::parse);
    }
    ExchangeKind::parse(&def.kind)
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
fn is_death_cycle(deaths: &[Value], target: &str) -> bool {
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
fn with_death(
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

/// Declaration arguments compare equal when both are empty (absent, null or `{}`) or equal.
fn args_equivalent(a: &Value, b: &Value) -> bool {
    let empty = |v: &Value| match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        _ => false,
    };
    (empty(a) && empty(b)) || a == b
}

/// Maps any name to one safe directory name: ASCII letters, digits, `-` and `_` stay, every
/// other byte becomes `%XX`. Injective (so two queues never share a directory), never `.`,
/// `..` or empty, and reversible by reading the escapes.
pub fn escape_path_component(name: &str) -> String {
    if name.is_empty() {
        return "%".into();
    }
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn remove_dir_if_present(dir: &Path) -> Result<(), RoutingError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LogError::Io {
            context: format!("removing {}", dir.display()),
            source,
        }
        .into()),
    }
}

fn random_suffix() -> String {
    let bytes = crate::util::random_bytes16();
    let mut s = String::with_capacity(22);
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for b in bytes {
        s.push(ALPHABET[(b & 63) as usize] as char);
    }
    s
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

    #[test]
    fn escaping_is_safe_and_injective() {
        assert_eq!(escape_path_component("/"), "%2F");
        assert_eq!(escape_path_component(".."), "%2E%2E");
        assert_eq!(escape_path_component(""), "%");
        assert_eq!(escape_path_component("a%2F"), "a%252F");
        assert_ne!(escape_path_component("a/b"), escape_path_component("a%2Fb"));
        assert_eq!(escape_path_component("orders_v1-x"), "orders_v1-x");
    }
}
