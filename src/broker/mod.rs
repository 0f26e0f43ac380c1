//! The broker core: the one place that owns topics and partitions (and, as the protocol
//! adapters land, exchanges, queues, groups and the reliability rules).
//!
//! The core never sees a wire format. Adapters call it with core types (`&str` topic names,
//! partition indexes, record batch bytes) and map its [`BrokerError`] to their own error codes.
//! State that must survive a restart is written to [`Meta`] *before* the in-memory registry
//! changes, so a crash between the two leaves the durable side ahead, and startup replays it.
//!
//! On disk, partition `p` of topic `t` lives in `<data_dir>/logs/t-p/`, as in Kafka.
//!
//! Exchanges, queues and bindings (the AMQP model, in protocol-free terms) live in
//! [`routing::Router`], reached with [`BrokerCore::router`]; each queue is a log with cursors
//! ([`queue::Queue`]) in `<data_dir>/queues/<escaped vhost>/<escaped name>/`.
//!
//! Every topic is also a `topic` exchange of the default vhost ([`topic_router`]): AMQP
//! publishes to it append to the topic (murmur2 partitioner), and per-partition router tasks
//! feed the queues bound to it from the topic log, exactly once per record and queue.

pub mod acl_names;
pub mod acls;
pub mod breaker;
pub mod catalog;
pub mod connections;
pub mod dedup;
pub mod delayed;
pub mod event;
pub mod exchange;
pub mod group;
pub mod limits;
pub mod login_guard;
pub mod message;
pub mod names;
pub mod offset_reset;
pub mod parameters;
pub mod processed;
pub mod producer;
pub mod queue;
pub mod queue_browse;
pub mod replay;
pub mod retry;
pub mod routing;
pub mod schema_check;
pub mod stream;
pub mod topic;
pub mod topic_router;
pub mod txn;
pub mod users;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use tokio::sync::Mutex as AsyncMutex;

use crate::clock::Clock;
use crate::log::{LogConfig, LogError, LogLabels, PartitionHandle, RecoveryReport};
use crate::meta::{Meta, MetaError, TopicDef};
use routing::remove_dir_if_present;

pub use group::{
    ConsumerGroupView, ConsumerHeartbeat, ConsumerHeartbeatResponse, ConsumerMemberView,
    GroupCoordinator, GroupDescription, GroupError, GroupListing, GroupSettings, GroupState,
    GroupType, JoinRequest, JoinResponse, JoinedMember, LeavingMember, MemberDescription,
    PartitionResults, SyncRequest, SyncResponse, TopicMeta, TopicSnapshot,
};
pub use limits::ResourceLimits;
pub use topic::{validate_topic_name, Topic};

/// Errors of the core; adapters translate each variant to their protocol's code.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("unknown topic `{0}`")]
    UnknownTopic(String),
    #[error("unknown partition {partition} of topic `{topic}`")]
    UnknownPartition { topic: String, partition: i32 },
    #[error("topic `{0}` already exists")]
    TopicExists(String),
    #[error("invalid topic name `{name}`: {reason}")]
    InvalidTopicName { name: String, reason: String },
    #[error("invalid partition count: {0}")]
    InvalidPartitions(String),
    #[error("invalid config `{key}`: {message}")]
    InvalidConfig { key: String, message: String },
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("broker is shutting down")]
    ShuttingDown,
    /// A request the broker's resource limits refuse (Kafka's POLICY_VIOLATION).
    #[error("{0}")]
    PolicyViolation(String),
}

impl BrokerError {
    /// The text a client may see: storage failures lose their paths and host details (see
    /// [`LogError::client_message`]) and are logged here in full, since this is where every
    /// one of them turns into an answer.
    pub fn client_message(&self) -> String {
        match self {
            BrokerError::Log(e) => e.client_message(),
            BrokerError::Meta(e) => e.client_message(),
            other => other.to_string(),
        }
    }
}

/// What startup found and repaired, for the log line and `/readyz`.
#[derive(Debug, Default)]
pub struct StartupReport {
    pub topics: usize,
    pub partitions: usize,
    /// Partitions whose recovery repaired something, with what.
    pub repairs: Vec<(String, i32, RecoveryReport)>,
}

/// The core broker handle; cheap to clone and share with every connection.
#[derive(Clone)]
pub struct BrokerCore {
    inner: Arc<CoreInner>,
}

/// A [`BrokerCore`] that does not keep the core alive: for background tasks that must end
/// with the broker rather than hold it open.
#[derive(Clone)]
pub struct WeakBrokerCore {
    inner: std::sync::Weak<CoreInner>,
}

impl WeakBrokerCore {
    /// The core, unless the broker is gone or shutting down.
    pub fn upgrade(&self) -> Option<BrokerCore> {
        let core = BrokerCore {
            inner: self.inner.upgrade()?,
        };
        core.check_running().ok()?;
        Some(core)
    }
}

struct CoreInner {
    clock: Clock,
    groups: GroupCoordinator,
    meta: Meta,
    logs_dir: PathBuf,
    default_log_config: LogConfig,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    /// Serializes topic creation, deletion and alteration: they do I/O and must not interleave
    /// for the same name, but they are rare, so one lock for all is simplest.
    admin: AsyncMutex<()>,
    shutting_down: std::sync::atomic::AtomicBool,
    /// The data directory: the parent of `logs_dir`. Queue logs live in `<data_dir>/queues/`.
    data_dir: PathBuf,
    /// Exchanges, queues and bindings (the AMQP model, protocol-free).
    router: routing::Router,
    /// Per-partition tasks feeding queues bound to topic exchanges from the topic logs.
    topic_routers: topic_router::TopicRouters,
    /// Failed logins of every protocol, per peer.
    login_guard: login_guard::LoginGuard,
    /// What creation requests may ask for (see [`limits`]).
    limits: RwLock<ResourceLimits>,
    /// Users, permissions and run-time vhosts of every protocol (see [`users`]).
    users: users::UserStore,
    /// Live client connections of every protocol, for the management API.
    connections: connections::ConnectionRegistry,
    /// Event ids idempotent handlers completed (see [`processed`]).
    processed: processed::ProcessedIds,
    /// Kafka ACL bindings (see [`acls`]).
    acls: acls::AclStore,
    /// The schema registry, for topics and exchanges that validate (see [`schema_check`]).
    schema_validator: std::sync::OnceLock<schema_check::SharedValidator>,
    /// Kafka transactions (see [`txn`]).
    txns: txn::TxnCoordinator,
    /// Runtime parameters (shovel definitions; see [`parameters`]).
    parameters: parameters::RuntimeParameters,
    /// State of layers above the core that must exist once per core (the event store's
    /// stream indexes), by type: see [`BrokerCore::layered`].
    layered: parking_lot::Mutex<HashMap<std::any::TypeId, Arc<dyn std::any::Any + Send + Sync>>>,
    /// The event types seen at publish (issue 18's catalog), sampled cheaply.
    catalog: catalog::EventCatalog,
}

impl BrokerCore {
    /// Opens the core over `meta` and the partition logs under `logs_dir`, running recovery on
    /// every partition of every known topic.
    pub async fn open(
        meta: Meta,
        logs_dir: &Path,
        default_log_config: LogConfig,
        group_settings: GroupSettings,
        clock: Clock,
    ) -> Result<(Self, StartupReport), BrokerError> {
        std::fs::create_dir_all(logs_dir).map_err(|source| LogError::Io {
            context: format!("creating {}", logs_dir.display()),
            source,
        })?;
        // `logs_dir` is `<data_dir>/logs`; queues sit beside it in `<data_dir>/queues`.
        let data_dir = logs_dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| logs_dir.to_path_buf());
        let topic_defs = meta.topics()?;
        let topic_names: Vec<String> = topic_defs.iter().map(|d| d.name.clone()).collect();
        let router = routing::Router::open(
            meta.clone(),
            clock.clone(),
            &data_dir.join("queues"),
            &default_log_config,
            &topic_names,
        )
        .map_err(|e| match e {
            routing::RoutingError::Log(l) => BrokerError::Log(l),
            routing::RoutingError::Meta(m) => BrokerError::Meta(m),
            // Opening only fails on I/O or meta; keep the enum unchanged for the adapters.
            other => BrokerError::InvalidConfig {
                key: "queues".into(),
                message: other.to_string(),
            },
        })?;
        let users = users::UserStore::open(meta.clone())?;
        let processed = processed::ProcessedIds::new(meta.clone(), clock.clone());
        let acls = acls::AclStore::open(meta.clone())?;
        let txns = txn::TxnCoordinator::load(&meta)?;
        let parameters = parameters::RuntimeParameters::open(meta.clone())?;
        let core = Self {
            inner: Arc::new(CoreInner {
                data_dir,
                router,
                groups: GroupCoordinator::new(meta.clone(), clock.clone(), group_settings),
                clock,
                meta,
                logs_dir: logs_dir.to_path_buf(),
                default_log_config,
                topics: RwLock::new(HashMap::new()),
                admin: AsyncMutex::new(()),
                shutting_down: false.into(),
                topic_routers: topic_router::TopicRouters::default(),
                login_guard: login_guard::LoginGuard::new(),
                limits: RwLock::new(ResourceLimits::default()),
                processed,
                users,
                connections: Default::default(),
                acls,
                schema_validator: std::sync::OnceLock::new(),
                txns,
                parameters,
                layered: Default::default(),
                catalog: catalog::EventCatalog::default(),
            }),
        };
        core.inner
            .router
            .set_topic_sink(Arc::new(topic_router::CoreTopicSink::new(Arc::downgrade(
                &core.inner,
            ))));
        core.remove_orphan_partition_dirs(&topic_defs);
        let mut report = StartupReport::default();
        for def in topic_defs {
            let log_config =
                topic::effective_log_config(&core.inner.default_log_config, &def.configs)?;
            let mut partitions = Vec::with_capacity(def.partitions as usize);
            for p in 0..def.partitions as i32 {
                let (handle, recovery) = core.open_partition(&def.name, p, &log_config)?;
                if !recovery.is_clean() {
                    report.repairs.push((def.name.clone(), p, recovery));
                }
                partitions.push(handle);
            }
            report.topics += 1;
            report.partitions += partitions.len();
            let name = def.name.clone();
            core.inner
                .topics
                .write()
                .insert(name, Arc::new(Topic::new(def, log_config, partitions)));
        }
        for topic in core.topics() {
            for (p, handle) in topic.partitions().iter().enumerate() {
                core.inner
                    .topic_routers
                    .attach(&core, topic.name(), p as i32, handle.clone());
            }
        }
        core.recover_transactions().await;
        txn::spawn_timeout_sweeper(Arc::downgrade(&core.inner));
        Ok((core, report))
    }

    fn partition_dir(&self, topic: &str, partition: i32) -> PathBuf {
        self.inner.logs_dir.join(format!("{topic}-{partition}"))
    }

    fn open_partition(
        &self,
        topic: &str,
        partition: i32,
        config: &LogConfig,
    ) -> Result<(PartitionHandle, RecoveryReport), BrokerError> {
        let labels = LogLabels {
            topic: topic.to_string(),
            partition,
        };
        Ok(PartitionHandle::open(
            &self.partition_dir(topic, partition),
            config.clone(),
            self.inner.clock.clone(),
            labels,
        )?)
    }

    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    pub fn meta(&self) -> &Meta {
        &self.inner.meta
    }

    /// The data directory (parent of the partition logs and the queue logs).
    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// The topic whose id (Metadata v10+, Fetch v13+) is `id`, if there is one.
    pub fn topic_by_id(&self, id: [u8; 16]) -> Option<Arc<Topic>> {
        self.inner
            .topics
            .read()
            .values()
            .find(|t| t.topic_id() == id)
            .cloned()
    }

    /// The directory holding the topics' partition logs (Kafka's `log.dirs`, of which Ferry
    /// has one).
    pub fn logs_dir(&self) -> &Path {
        &self.inner.logs_dir
    }

    /// Failed-login counting, logging and slowing, shared by the admin API and the AMQP
    /// handshake.
    /// The one user store of every protocol and the admin API.
    pub fn users(&self) -> &users::UserStore {
        &self.inner.users
    }

    /// The processed-id store of idempotent handlers.
    pub fn processed(&self) -> &processed::ProcessedIds {
        &self.inner.processed
    }

    /// The Kafka ACL bindings.
    pub fn acls(&self) -> &acls::AclStore {
        &self.inner.acls
    }

    /// Runtime parameters: shovel definitions and their components' live state.
    pub fn parameters(&self) -> &parameters::RuntimeParameters {
        &self.inner.parameters
    }

    /// The one value of type `T` kept for this core, made by `init` on first use: how a layer
    /// above the core (which the core may not import) keeps state that must be shared by every
    /// adapter, such as the event store's stream indexes. `T` must not hold the core itself
    /// (that would be a reference cycle).
    pub fn layered<T: std::any::Any + Send + Sync>(&self, init: impl FnOnce() -> T) -> Arc<T> {
        let key = std::any::TypeId::of::<T>();
        let mut layered = self.inner.layered.lock();
        if let Some(existing) = layered
            .get(&key)
            .and_then(|v| Arc::clone(v).downcast::<T>().ok())
        {
            return existing;
        }
        let value = Arc::new(init());
        layered.insert(key, value.clone());
        value
    }

    pub fn login_guard(&self) -> &login_guard::LoginGuard {
        &self.inner.login_guard
    }

    /// The event catalog: types, flows and producers seen at publish.
    pub fn catalog(&self) -> &catalog::EventCatalog {
        &self.inner.catalog
    }

    /// Live client connections (see [`connections`]).
    pub fn connections(&self) -> &connections::ConnectionRegistry {
        &self.inner.connections
    }

    /// Exchanges, queues and bindings.
    pub fn router(&self) -> &routing::Router {
        &self.inner.router
    }

    /// The consumer-group coordinator.
    pub fn groups(&self) -> &GroupCoordinator {
        &self.inner.groups
    }

    /// The broker-wide defaults new topics start from.
    pub fn default_log_config(&self) -> &LogConfig {
        &self.inner.default_log_config
    }

    /// Sets the resource limits creation requests are checked against (queues included).
    pub fn set_limits(&self, limits: ResourceLimits) {
        self.inner.router.set_max_queues(limits.max_queues);
        *self.inner.limits.write() = limits;
    }

    pub fn limits(&self) -> ResourceLimits {
        self.inner.limits.read().clone()
    }

    /// Partitions over all topics.
    pub fn partition_total(&self) -> usize {
        self.inner
            .topics
            .read()
            .values()
            .map(|t| t.partition_count())
            .sum()
    }

    /// The log config a topic with `configs` overrides would run with, refusing overrides
    /// past the broker's limits (`max.message.bytes`).
    pub fn topic_log_config(
        &self,
        configs: &BTreeMap<String, String>,
    ) -> Result<LogConfig, BrokerError> {
        let log_config = topic::effective_log_config(&self.inner.default_log_config, configs)?;
        self.inner.limits.read().check_topic_configs(configs)?;
        Ok(log_config)
    }

    /// A handle that does not keep the core alive.
    pub fn downgrade(&self) -> WeakBrokerCore {
        WeakBrokerCore {
            inner: Arc::downgrade(&self.inner),
        }
    }

    fn check_running(&self) -> Result<(), BrokerError> {
        if self
            .inner
            .shutting_down
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(BrokerError::ShuttingDown);
        }
        Ok(())
    }

    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.inner.topics.read().get(name).cloned()
    }

    /// All topics, sorted by name.
    pub fn topics(&self) -> Vec<Arc<Topic>> {
        let mut all: Vec<_> = self.inner.topics.read().values().cloned().collect();
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }

    pub fn partition(&self, topic: &str, partition: i32) -> Result<PartitionHandle, BrokerError> {
        let t = self
            .topic(topic)
            .ok_or_else(|| BrokerError::UnknownTopic(topic.to_string()))?;
        t.partition(partition)
            .cloned()
            .ok_or_else(|| BrokerError::UnknownPartition {
                topic: topic.to_string(),
                partition,
            })
    }

    /// Creates a topic with `partitions` partitions and Kafka-named config overrides. The
    /// definition is durable before this returns.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        configs: BTreeMap<String, String>,
    ) -> Result<Arc<Topic>, BrokerError> {
        self.check_running()?;
        validate_topic_name(name)?;
        if partitions == 0 || partitions > 100_000 {
            return Err(BrokerError::InvalidPartitions(format!(
                "{partitions} (must be 1..=100000)"
            )));
        }
        let log_config = self.topic_log_config(&configs)?;
        let _admin = self.inner.admin.lock().await;
        if self.topic(name).is_some() {
            return Err(BrokerError::TopicExists(name.to_string()));
        }
        self.inner
            .limits
            .read()
            .check_partitions(self.partition_total(), partitions as usize)?;
        let def = TopicDef {
            name: name.to_string(),
            topic_id: random_topic_id(),
            partitions,
            configs,
            created_ms: self.inner.clock.now_ms(),
        };
        // A directory left by an earlier topic of the same name (deleted while we were down
        // before its files went) must not leak its records into the new topic.
        for p in 0..partitions as i32 {
            remove_dir_if_present(&self.partition_dir(name, p))?;
        }
        let made = self
            .open_new_partitions(name, 0, partitions as i32, &log_config)
            .await?;
        let handles = made.clone();
        // A new topic routes into bound queues from its first record.
        let recorded = (0..partitions as i32)
            .try_for_each(|p| self.inner.meta.put_topic_route_offset(name, p, 0))
            .and_then(|()| self.inner.meta.put_topic(&def))
            .and_then(|()| self.inner.meta.flush());
        if let Err(e) = recorded {
            self.abandon_partitions(name, 0, made).await;
            return Err(e.into());
        }
        let topic = Arc::new(Topic::new(def, log_config, handles));
        self.inner
            .topics
            .write()
            .insert(name.to_string(), topic.clone());
        self.inner.router.register_topic_exchange(name).await;
        for (p, handle) in topic.partitions().iter().enumerate() {
            self.inner
                .topic_routers
                .attach(self, name, p as i32, handle.clone());
        }
        tracing::info!(topic = name, partitions, "created topic");
        Ok(topic)
    }

    /// Opens partitions `from..upto` of `name` as new, empty logs. All or nothing: if one
    /// fails, the ones already opened are closed and every directory made is removed, so a
    /// refused creation leaves no orphan behind. The failure is logged with its cause.
    async fn open_new_partitions(
        &self,
        name: &str,
        from: i32,
        upto: i32,
        config: &LogConfig,
    ) -> Result<Vec<PartitionHandle>, BrokerError> {
        let mut opened = Vec::with_capacity(upto.saturating_sub(from).max(0) as usize);
        for p in from..upto {
            match self.open_partition(name, p, config) {
                Ok((handle, _)) => opened.push(handle),
                Err(e) => {
                    tracing::error!(topic = name, partition = p, error = %e, "creating a partition failed; undoing the partitions made");
                    self.abandon_partitions(name, from, opened).await;
                    // The failed partition may have left a directory too.
                    if let Err(e) = remove_dir_if_present(&self.partition_dir(name, p)) {
                        tracing::error!(topic = name, partition = p, error = %e, "removing a half-made partition failed");
                    }
                    return Err(e);
                }
            }
        }
        Ok(opened)
    }

    /// Closes `handles` (partitions `from..` of `name`) and removes their directories.
    async fn abandon_partitions(&self, name: &str, from: i32, handles: Vec<PartitionHandle>) {
        for (i, handle) in handles.into_iter().enumerate() {
            handle.shutdown().await;
            let p = from + i as i32;
            if let Err(e) = remove_dir_if_present(&self.partition_dir(name, p)) {
                tracing::error!(topic = name, partition = p, error = %e, "removing an abandoned partition failed");
            }
        }
    }

    /// Removes directories under the logs directory that belong to no partition of a known
    /// topic: left by a creation or deletion that a crash interrupted. Only names shaped like a
    /// partition directory (`<topic>-<n>`) are touched.
    fn remove_orphan_partition_dirs(&self, topics: &[TopicDef]) {
        let expected: std::collections::HashSet<String> = topics
            .iter()
            .flat_map(|t| (0..t.partitions).map(move |p| format!("{}-{p}", t.name)))
            .collect();
        let Ok(entries) = std::fs::read_dir(&self.inner.logs_dir) else {
            return;
        };
        let mut removed = 0usize;
        for entry in entries.flatten() {
            let Ok(file_name) = entry.file_name().into_string() else {
                continue;
            };
            let partition_shaped = file_name.rsplit_once('-').is_some_and(|(topic, p)| {
                validate_topic_name(topic).is_ok() && p.parse::<u32>().is_ok()
            });
            if !partition_shaped || expected.contains(&file_name) || !entry.path().is_dir() {
                continue;
            }
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::error!(dir = %file_name, error = %e, "removing an orphan partition directory failed")
                }
            }
        }
        if removed > 0 {
            tracing::warn!(
                removed,
                "removed partition directories of no known topic (left by an interrupted creation or deletion)"
            );
        }
    }

    /// Deletes a topic: its definition, its committed offsets and its files.
    pub async fn delete_topic(&self, name: &str) -> Result<(), BrokerError> {
        self.check_running()?;
        let _admin = self.inner.admin.lock().await;
        let topic = self
            .topic(name)
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))?;
        self.inner.topic_routers.stop(Some(name)).await;
        if let Err(e) = self.inner.router.unregister_topic_exchange(name).await {
            tracing::warn!(topic = name, error = %e, "removing the topic's exchange failed");
        }
        self.inner.meta.delete_topic(name)?;
        self.inner.meta.flush()?;
        self.inner.topics.write().remove(name);
        self.inner.groups.remove_topic(name);
        for (p, handle) in topic.partitions().iter().enumerate() {
            handle.shutdown().await;
            remove_dir_if_present(&self.partition_dir(name, p as i32))?;
        }
        tracing::info!(topic = name, "deleted topic");
        Ok(())
    }

    /// Grows a topic to `total` partitions (Kafka never shrinks one).
    pub async fn create_partitions(
        &self,
        name: &str,
        total: u32,
    ) -> Result<Arc<Topic>, BrokerError> {
        self.check_running()?;
        let _admin = self.inner.admin.lock().await;
        let topic = self
            .topic(name)
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))?;
        let current = topic.partition_count() as u32;
        if total <= current {
            return Err(BrokerError::InvalidPartitions(format!(
                "topic `{name}` has {current} partitions; the new count {total} must be larger"
            )));
        }
        if total > 100_000 {
            return Err(BrokerError::InvalidPartitions(format!(
                "{total} (must be <= 100000)"
            )));
        }
        self.inner
            .limits
            .read()
            .check_partitions(self.partition_total(), (total - current) as usize)?;
        for p in current as i32..total as i32 {
            remove_dir_if_present(&self.partition_dir(name, p))?;
        }
        let added = self
            .open_new_partitions(name, current as i32, total as i32, topic.log_config())
            .await?;
        let mut handles = topic.partitions().to_vec();
        handles.extend(added.iter().cloned());
        let mut def = topic.def().clone();
        def.partitions = total;
        let recorded = (current as i32..total as i32)
            .try_for_each(|p| self.inner.meta.put_topic_route_offset(name, p, 0))
            .and_then(|()| self.inner.meta.put_topic(&def))
            .and_then(|()| self.inner.meta.flush());
        if let Err(e) = recorded {
            self.abandon_partitions(name, current as i32, added).await;
            return Err(e.into());
        }
        let grown = Arc::new(Topic::new(def, topic.log_config().clone(), handles));
        self.inner
            .topics
            .write()
            .insert(name.to_string(), grown.clone());
        for p in current as i32..total as i32 {
            if let Some(handle) = grown.partition(p) {
                self.inner
                    .topic_routers
                    .attach(self, name, p, handle.clone());
            }
        }
        Ok(grown)
    }

    /// Replaces a topic's config overrides (Kafka AlterConfigs semantics: the given map is the
    /// whole new set) and applies the result to every partition.
    pub async fn set_topic_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
    ) -> Result<Arc<Topic>, BrokerError> {
        self.check_running()?;
        let log_config = self.topic_log_config(&configs)?;
        let _admin = self.inner.admin.lock().await;
        let topic = self
            .topic(name)
            .ok_or_else(|| BrokerError::UnknownTopic(name.to_string()))?;
        let mut def = topic.def().clone();
        def.configs = configs;
        self.inner.meta.put_topic(&def)?;
        self.inner.meta.flush()?;
        for handle in topic.partitions() {
            handle.update_config(log_config.clone())?;
        }
        let altered = Arc::new(Topic::new(def, log_config, topic.partitions().to_vec()));
        self.inner
            .topics
            .write()
            .insert(name.to_string(), altered.clone());
        Ok(altered)
    }

    /// Runs retention on every partition; returns how many segments were deleted.
    pub fn enforce_retention(&self) -> usize {
        let mut deleted = 0;
        for topic in self.topics() {
            for (p, handle) in topic.partitions().iter().enumerate() {
                match handle.enforce_retention() {
                    Ok(report) => deleted += report.deleted_segments,
                    Err(e) => {
                        tracing::warn!(topic = topic.name(), partition = p, error = %e, "retention failed")
                    }
                }
            }
        }
        deleted
    }

    /// Runs a compaction pass on every compacted partition that is due, with `map` as the
    /// offset map (its memory bounds each pass); returns the records removed. Blocking.
    pub fn clean_logs(&self, map: &mut crate::log::OffsetMap) -> u64 {
        let mut removed = 0;
        for topic in self.topics() {
            if !topic.log_config().cleanup_policy.compacts() {
                continue;
            }
            for (p, handle) in topic.partitions().iter().enumerate() {
                match handle.clean(map) {
                    Ok(Some(report)) => removed += report.records_removed,
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(topic = topic.name(), partition = p, error = %e, "log cleaning failed")
                    }
                }
            }
        }
        removed
    }

    /// Partitions (and queue logs) that stopped accepting writes after an I/O failure.
    pub fn failed_partitions(&self) -> Vec<(String, i32)> {
        let mut failed = Vec::new();
        for topic in self.topics() {
            for (p, handle) in topic.partitions().iter().enumerate() {
                if handle.is_failed() {
                    failed.push((topic.name().to_string(), p as i32));
                }
            }
        }
        // Queue logs fail-stop the same way; they are named like their metrics label.
        for q in self.inner.router.queues() {
            if q.log().is_failed() {
                failed.push((format!("queue:{}:{}", q.vhost(), q.name()), 0));
            }
        }
        failed
    }

    /// Refuses new admin work, drains every partition writer (fsyncing what it wrote) and
    /// flushes metadata. Idempotent.
    pub async fn shutdown(&self) {
        self.inner
            .shutting_down
            .store(true, std::sync::atomic::Ordering::Release);
        let _admin = self.inner.admin.lock().await;
        self.inner.groups.shutdown().await;
        self.inner.topic_routers.stop(None).await;
        self.inner.router.shutdown().await;
        // Closing a partition is a few fsyncs; one at a time, 20,000 partitions took 30 s
        // here. Closed together (the filesystem journal batches their syncs) they take a
        // fraction of that.
        use futures::StreamExt;
        let handles: Vec<PartitionHandle> = self
            .topics()
            .iter()
            .flat_map(|t| t.partitions().to_vec())
            .collect();
        futures::stream::iter(handles)
            .for_each_concurrent(SHUTDOWN_CONCURRENCY, |handle| async move {
                handle.shutdown().await;
            })
            .await;
        if let Err(e) = self.inner.meta.flush() {
            tracing::error!(error = %e, "flushing metadata at shutdown failed");
        }
    }
}

/// Partitions closed at once at shutdown (each close runs on the blocking pool).
const SHUTDOWN_CONCURRENCY: usize = 64;

/// A random topic id.
fn random_topic_id() -> [u8; 16] {
    let mut id = crate::util::random_bytes16();
    // Kafka reserves the all-zero id (ZERO_UUID) and the id with only the last bit set.
    if id == [0; 16] || id[..15] == [0; 15] {
        id[0] = 1;
    }
    id
}
