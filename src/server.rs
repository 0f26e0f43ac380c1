//! The embeddable server: the core plus its listeners, as one value with a start and a stop.
//!
//! [`Broker::builder`] is the whole embedding API; `ferry serve` uses it too, so the binary and
//! an application's tests run the same start-up path. Start-up order matters for operators:
//! the HTTP listener comes first (so `/healthz` answers and `/readyz` says 503 while recovery
//! runs), then the data directory is locked and recovered, then the protocol listeners bind, and
//! only then is the broker ready. Shutdown runs the other way: stop accepting, let connections
//! finish, drain and fsync every partition writer, flush metadata, release the lock.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::broker::{BrokerCore, BrokerError, StartupReport};
use crate::clock::Clock;
use crate::config::{resolve_listen, Config, ConfigError};
use crate::meta::{Meta, MetaError, SledStore};
use crate::observe::http::{self, Health};
use crate::protocol;
use crate::tls::{TlsAcceptor, TlsError};

mod listeners;
use listeners::{bind, bind_tls, local_addr, log_listeners, watch_certificates};

/// Why a broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {what} {addr}: {source} (is another process using the port?)")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    /// Every listener that could not bind, found in one go so an operator fixes them at once.
    #[error("{}", listen_conflicts(.0))]
    Listen(Vec<ListenConflict>),
    #[error("data directory {path}: {message}")]
    DataDir { path: PathBuf, message: String },
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("recovery failed: {0}")]
    Recovery(#[from] BrokerError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("users: {0}")]
    Users(#[from] crate::broker::users::UserError),
    #[error("bridges: {0}")]
    Bridges(#[from] crate::broker::parameters::ParameterError),
    /// The native listener's certificate or QUIC configuration.
    #[error(transparent)]
    Native(#[from] crate::protocol::native::EndpointError),
}

/// One listen address that could not be bound.
#[derive(Debug)]
pub struct ListenConflict {
    /// The setting, e.g. `http_listen` (flag `--http-listen`, variable `FERRY_HTTP_LISTEN`).
    pub key: &'static str,
    pub addr: String,
    pub reason: String,
}

fn listen_conflicts(conflicts: &[ListenConflict]) -> String {
    let mut out = if conflicts.len() == 1 {
        "cannot listen on 1 address:".to_string()
    } else {
        format!("cannot listen on {} addresses:", conflicts.len())
    };
    for c in conflicts {
        out.push_str(&format!(
            "\n  --{} {} ({} / FERRY_{}): {}",
            c.key.replace('_', "-"),
            c.addr,
            c.key,
            c.key.to_ascii_uppercase(),
            c.reason
        ));
    }
    if conflicts.iter().any(|c| c.reason.contains("in use")) {
        out.push_str(
            "\nanother process (another ferry, a Kafka or RabbitMQ?) holds the port: stop it or \
             pick a free port with the flag named above",
        );
    }
    out
}

/// Why a bind or a directory operation failed, in words, without Rust's "(os error N)".
fn os_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => "address already in use".into(),
        std::io::ErrorKind::AddrNotAvailable => "no such address on this host".into(),
        std::io::ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need privileges)".into()
        }
        _ => {
            let text = e.to_string();
            text.find(" (os error")
                .map_or(text.clone(), |i| text[..i].to_string())
        }
    }
}

/// Tries every listen address before anything starts, so a port conflict is reported for all
/// listeners at once rather than one per attempt. The protocol listeners bind for real only
/// after recovery (clients must not queue up on a broker that is not ready); a port taken in
/// between still fails then, with the same message.
fn probe_listeners(config: &Config) -> Result<(), StartError> {
    let mut conflicts = Vec::new();
    let plain = [
        ("http_listen", &config.http_listen),
        ("kafka_listen", &config.kafka_listen),
        ("amqp_listen", &config.amqp_listen),
        ("native_tcp_listen", &config.native_tcp_listen),
    ];
    let plain = plain.into_iter().filter(|(_, addr)| !addr.is_empty());
    for (key, addr) in plain.chain(config.tls_listeners()) {
        let resolved = resolve_listen(key, addr)?;
        if resolved.port() == 0 {
            continue;
        }
        if let Err(e) = std::net::TcpListener::bind(resolved) {
            conflicts.push(ListenConflict {
                key,
                addr: addr.clone(),
                reason: os_reason(&e),
            });
        }
    }
    if conflicts.is_empty() {
        Ok(())
    } else {
        Err(StartError::Listen(conflicts))
    }
}

/// Where the broker keeps its files.
enum Storage {
    /// A directory that outlives the broker.
    Dir(PathBuf),
    /// A fresh temporary directory, deleted when the broker is dropped, with metadata in
    /// memory: the fastest start, for tests.
    Temp,
}

/// Configures and starts a [`Broker`].
pub struct BrokerBuilder {
    config: Config,
    storage: Storage,
    clock: Clock,
}

impl Default for BrokerBuilder {
    fn default() -> Self {
        // Embedded brokers listen on loopback, on ports the OS picks, so tests never collide.
        let config = Config {
            kafka_listen: "127.0.0.1:0".into(),
            amqp_listen: "127.0.0.1:0".into(),
            native_listen: "127.0.0.1:0".into(),
            // On for embedded brokers, so tests can run the native protocol over TCP too.
            native_tcp_listen: "127.0.0.1:0".into(),
            http_listen: "127.0.0.1:0".into(),
            ..Config::default()
        };
        Self {
            config,
            storage: Storage::Temp,
            clock: Clock::system(),
        }
    }
}

impl BrokerBuilder {
    /// Starts from a full configuration (its `data_dir` is used).
    pub fn config(mut self, config: Config) -> Self {
        self.storage = Storage::Dir(config.data_dir.clone());
        self.config = config;
        self
    }

    /// Keeps data in `dir` (logs and sled metadata), so a later broker can reopen it.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        self.config.data_dir = dir.clone();
        self.storage = Storage::Dir(dir);
        self
    }

    /// Keeps data in a temporary directory removed on drop, metadata in memory (the default).
    pub fn temp_dir(mut self) -> Self {
        self.storage = Storage::Temp;
        self
    }

    pub fn kafka_listen(mut self, addr: impl Into<String>) -> Self {
        self.config.kafka_listen = addr.into();
        self
    }

    pub fn amqp_listen(mut self, addr: impl Into<String>) -> Self {
        self.config.amqp_listen = addr.into();
        self
    }

    pub fn http_listen(mut self, addr: impl Into<String>) -> Self {
        self.config.http_listen = addr.into();
        self
    }

    pub fn native_listen(mut self, addr: impl Into<String>) -> Self {
        self.config.native_listen = addr.into();
        self
    }

    /// The native protocol's TCP listener; empty switches it off.
    pub fn native_tcp_listen(mut self, addr: impl Into<String>) -> Self {
        self.config.native_tcp_listen = addr.into();
        self
    }

    /// The clock retention and TTLs read; tests pass [`Clock::manual`].
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Edits the configuration in place, for settings without a builder method.
    pub fn configure(mut self, edit: impl FnOnce(&mut Config)) -> Self {
        edit(&mut self.config);
        self
    }

    /// Binds, recovers and starts serving. Returns once the broker is ready.
    pub async fn start(self) -> Result<Broker, StartError> {
        self.start_with(|_| {}).await
    }

    /// Like [`start`](Self::start), calling `on_http_bound` with the HTTP address as soon as it
    /// accepts, before recovery (the CLI prints it so operators can watch `/readyz`).
    pub async fn start_with(
        self,
        on_http_bound: impl FnOnce(SocketAddr),
    ) -> Result<Broker, StartError> {
        let config = self.config;
        config.validate()?;
        if let Storage::Dir(dir) = &self.storage {
            check_data_dir(dir)?;
        }
        probe_listeners(&config)?;
        // Certificates are checked before anything binds, so a bad file fails the start at
        // once with the reason rather than every handshake later.
        // The native listener uses the shared TLS configuration too when a certificate is
        // named, even without a TCP TLS listener (for client certificates and reloads).
        let native_tls = !config.tls.cert_file.is_empty() && !config.tls.key_file.is_empty();
        let tls = if config.tls_listeners().is_empty() && !native_tls {
            None
        } else {
            Some(TlsAcceptor::load(&config.tls)?)
        };
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let health = Health::new();
        let mut tasks = JoinSet::new();

        let prometheus = if config.observe.metrics {
            crate::observe::metrics::install()
        } else {
            None
        };
        let http_listener = bind("http_listen", &config.http_listen).await?;
        let http_addr = local_addr("HTTP", &config.http_listen, &http_listener)?;
        health.set_listener("http", http_addr);
        let https = match (&tls, config.http_tls_listen.as_str()) {
            (Some(acceptor), addr) if !addr.is_empty() => {
                let listener = bind("http_tls_listen", addr).await?;
                let bound = local_addr("HTTPS", addr, &listener)?;
                health.set_listener("https", bound);
                Some((listener, acceptor.clone(), bound))
            }
            _ => None,
        };
        let https_addr = https.as_ref().map(|(_, _, addr)| *addr);
        on_http_bound(http_addr);
        {
            let router = http::router(health.clone(), prometheus, &config.observe);
            let http_settings = Arc::new(config.observe.http.clone());
            let listeners = std::iter::once((http_listener, None))
                .chain(https.map(|(listener, acceptor, _)| (listener, Some(acceptor))));
            for (listener, acceptor) in listeners {
                let (router, shutdown) = (router.clone(), shutdown_rx.clone());
                let http_settings = http_settings.clone();
                tasks.spawn(async move {
                    let served =
                        http::serve(listener, acceptor, router, &http_settings, shutdown).await;
                    if let Err(e) = served {
                        tracing::error!(error = %e, "HTTP listener failed");
                    }
                });
            }
        }

        health.set_phase("recovering the data directory");
        let (temp, data_dir) = match self.storage {
            Storage::Dir(dir) => (None, dir),
            Storage::Temp => {
                let t = tempfile::Builder::new()
                    .prefix("ferry-")
                    .tempdir()
                    .map_err(|e| StartError::DataDir {
                        path: std::env::temp_dir(),
                        message: format!("cannot create a temporary directory: {e}"),
                    })?;
                let path = t.path().to_path_buf();
                (Some(t), path)
            }
        };
        let lock = lock_data_dir(&data_dir)?;
        raise_open_files_limit(&config);
        let meta = if temp.is_some() {
            Meta::in_memory()
        } else {
            Meta::open(Arc::new(SledStore::open(&data_dir.join("meta"))?))?
        };
        let default_log = config.log.to_log_config()?;
        let started = std::time::Instant::now();
        let (core, report) = BrokerCore::open(
            meta,
            &data_dir.join("logs"),
            default_log,
            config.kafka.group_settings(),
            self.clock,
        )
        .await?;
        core.set_limits(config.resource_limits());
        core.users().seed(&config.user_seed())?;
        core.acls()
            .set_enforcement(config.kafka.acl_enabled.then(|| config.kafka.acl_policy()));
        core.apply_vhosts()?;
        log_startup(&report, started.elapsed());
        health.set_core(core.clone());
        let schemas = Arc::new(crate::schema::SchemaRegistry::open(core.meta().clone())?);
        core.set_schema_validator(schemas.clone());
        core.catalog().set_examples(config.observe.catalog_examples);
        health.set_schemas(schemas);

        health.set_phase("binding protocol listeners");
        let kafka_listener = bind("kafka_listen", &config.kafka_listen).await?;
        let kafka_addr = local_addr("Kafka", &config.kafka_listen, &kafka_listener)?;
        let amqp_listener = bind("amqp_listen", &config.amqp_listen).await?;
        let amqp_addr = local_addr("AMQP", &config.amqp_listen, &amqp_listener)?;
        health.set_listener("kafka", kafka_addr);
        health.set_listener("amqp", amqp_addr);
        let kafka_tls = bind_tls(&tls, "kafka_tls_listen", &config.kafka_tls_listen).await?;
        let amqp_tls = bind_tls(&tls, "amqp_tls_listen", &config.amqp_tls_listen).await?;
        let kafka_tls_addr = kafka_tls.as_ref().map(|(_, _, addr)| *addr);
        let amqp_tls_addr = amqp_tls.as_ref().map(|(_, _, addr)| *addr);
        if let Some(addr) = kafka_tls_addr {
            health.set_listener("kafka_tls", addr);
        }
        if let Some(addr) = amqp_tls_addr {
            health.set_listener("amqps", addr);
        }
        let (native, native_fingerprint) =
            listeners::bind_native(&config, &data_dir, tls.as_ref())?;
        let native_addr = native.local_addr().map_err(|source| StartError::Bind {
            what: "native",
            addr: config.native_listen.clone(),
            source,
        })?;
        // Not in the health listeners: their checks connect over TCP, and this one is UDP.
        // It is bound before the broker turns ready, so /readyz waits for it all the same.
        let native_certificates =
            tls.clone()
                .filter(|_| native_tls)
                .map(|acceptor| protocol::native::Certificates {
                    acceptor,
                    cert_file: config.tls.cert_file.clone().into(),
                });
        tasks.spawn(protocol::native::serve(
            native,
            core.clone(),
            config.native.clone(),
            native_certificates,
            shutdown_rx.clone(),
        ));
        let native_tcp_addr =
            match listeners::bind_native_tcp(&config, &data_dir, tls.as_ref()).await? {
                Some((listener, addr, native_tls)) => {
                    health.set_listener("native_tcp", addr);
                    tasks.spawn(protocol::native::tcp::serve(
                        listener,
                        core.clone(),
                        config.native.clone(),
                        native_tls,
                        shutdown_rx.clone(),
                    ));
                    Some(addr)
                }
                None => None,
            };

        let kafka_settings = protocol::kafka::KafkaServerSettings {
            advertised: config.kafka_advertised.clone(),
            listen_addr: kafka_addr,
            tls_advertised: config.kafka_tls_advertised.clone(),
            tls_listen_addr: kafka_tls_addr,
            kafka: config.kafka.clone(),
        };
        tasks.spawn(protocol::kafka::serve(
            kafka_listener,
            kafka_tls.map(|(listener, acceptor, _)| (listener, acceptor)),
            core.clone(),
            kafka_settings,
            shutdown_rx.clone(),
        ));
        // The resource alarms block publishers of every protocol, so they run beside the
        // listeners rather than inside one of them.
        let (alarm_limits, limits_rx) = watch::channel(crate::observe::alarms::Limits::configured(
            config.amqp.vm_memory_high_watermark,
            config.amqp.vm_memory_high_watermark_absolute,
            config.amqp.disk_free_limit_bytes,
        ));
        tasks.spawn(crate::observe::alarms::monitor(
            core.clone(),
            limits_rx,
            shutdown_rx.clone(),
        ));
        tasks.spawn(crate::bridge::start(
            &core,
            &config.bridges,
            shutdown_rx.clone(),
        )?);
        tasks.spawn(crate::observe::alerts::run(
            core.clone(),
            config.alerts.clone(),
            health.alert_history().clone(),
            shutdown_rx.clone(),
        ));
        tasks.spawn(protocol::amqp::serve(
            amqp_listener,
            amqp_tls.map(|(listener, acceptor, _)| (listener, acceptor)),
            core.clone(),
            config.amqp.clone(),
            shutdown_rx.clone(),
        ));

        {
            let core = core.clone();
            tasks.spawn(every(
                config.log.retention_check_interval(),
                shutdown_rx.clone(),
                move || {
                    let deleted = core.enforce_retention();
                    if deleted > 0 {
                        tracing::info!(deleted, "retention deleted segments");
                    }
                },
            ));
        }
        {
            // The log cleaner: one offset map, allocated once and reused for every partition.
            let core = core.clone();
            let map = Mutex::new(crate::log::OffsetMap::with_memory(
                config.log.cleaner_dedupe_buffer_bytes,
            ));
            tasks.spawn(every(
                config.log.cleaner_backoff(),
                shutdown_rx.clone(),
                move || {
                    let removed = core.clean_logs(&mut map.lock());
                    if removed > 0 {
                        tracing::info!(removed, "log cleaner removed superseded records");
                    }
                },
            ));
        }

        if let Some(acceptor) = &tls {
            tasks.spawn(watch_certificates(acceptor.clone(), shutdown_rx.clone()));
        }
        let addrs = Addrs {
            kafka: kafka_addr,
            amqp: amqp_addr,
            native: native_addr,
            native_tcp: native_tcp_addr,
            native_fingerprint,
            http: http_addr,
            kafka_tls: kafka_tls_addr,
            amqp_tls: amqp_tls_addr,
            https: https_addr,
        };
        log_listeners(&config, &addrs, &data_dir);
        health.set_phase("ready");
        health.set_ready(true);
        let or_off = |addr: Option<SocketAddr>| addr.map_or("off".to_string(), |a| a.to_string());
        tracing::info!(
            %kafka_addr,
            %amqp_addr,
            %http_addr,
            data_dir = %data_dir.display(),
            kafka_tls_addr = %or_off(kafka_tls_addr),
            amqp_tls_addr = %or_off(amqp_tls_addr),
            https_addr = %or_off(https_addr),
            %native_addr,
            native_tcp_addr = %or_off(native_tcp_addr),
            "ferry is ready"
        );

        Ok(Broker {
            core,
            config,
            addrs,
            tls,
            data_dir,
            health,
            alarm_limits,
            running: Mutex::new(Some(Running {
                shutdown_tx,
                tasks,
                lock,
                temp,
            })),
        })
    }
}

struct Addrs {
    kafka: SocketAddr,
    amqp: SocketAddr,
    /// UDP (QUIC).
    native: SocketAddr,
    /// TCP, when `native_tcp_listen` is set.
    native_tcp: Option<SocketAddr>,
    /// SHA-256 of the native listener's certificate (what clients pin).
    native_fingerprint: String,
    http: SocketAddr,
    kafka_tls: Option<SocketAddr>,
    amqp_tls: Option<SocketAddr>,
    https: Option<SocketAddr>,
}

struct Running {
    shutdown_tx: watch::Sender<bool>,
    tasks: JoinSet<()>,
    lock: File,
    temp: Option<tempfile::TempDir>,
}

/// A running broker. Dropping it stops the listeners; call [`shutdown`](Broker::shutdown) to
/// also drain writers and fsync before the process exits.
pub struct Broker {
    core: BrokerCore,
    config: Config,
    addrs: Addrs,
    /// The certificates of the TLS listeners, if any is configured.
    tls: Option<Arc<TlsAcceptor>>,
    data_dir: PathBuf,
    health: Arc<Health>,
    /// What the resource alarm monitor checks against; changed at run time.
    alarm_limits: watch::Sender<crate::observe::alarms::Limits>,
    running: Mutex<Option<Running>>,
}

impl Broker {
    pub fn builder() -> BrokerBuilder {
        BrokerBuilder::default()
    }

    /// The core, for in-process use (create topics, append, read) without a network client.
    pub fn core(&self) -> &BrokerCore {
        &self.core
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn kafka_addr(&self) -> SocketAddr {
        self.addrs.kafka
    }

    pub fn amqp_addr(&self) -> SocketAddr {
        self.addrs.amqp
    }

    /// The native protocol's QUIC (UDP) address.
    pub fn native_addr(&self) -> SocketAddr {
        self.addrs.native
    }

    /// The native protocol's TCP address, when `native_tcp_listen` is on.
    pub fn native_tcp_addr(&self) -> Option<SocketAddr> {
        self.addrs.native_tcp
    }

    /// The SHA-256 fingerprint of the native listener's certificate, for
    /// `client::native::Trust::Fingerprint`.
    pub fn native_fingerprint(&self) -> &str {
        &self.addrs.native_fingerprint
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.addrs.http
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The Kafka TLS listener's address, if `kafka_tls_listen` is set.
    pub fn kafka_tls_addr(&self) -> Option<SocketAddr> {
        self.addrs.kafka_tls
    }

    /// The AMQPS listener's address, if `amqp_tls_listen` is set.
    pub fn amqp_tls_addr(&self) -> Option<SocketAddr> {
        self.addrs.amqp_tls
    }

    /// The HTTPS listener's address, if `http_tls_listen` is set.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.addrs.https
    }

    /// Re-reads the TLS certificate, key and CA files (what `ferry serve` does on SIGHUP).
    /// New handshakes use them; open connections keep theirs. On error the certificates in
    /// use stay. Without TLS listeners there is nothing to reload and this is `Ok`.
    pub fn reload_tls(&self) -> Result<(), TlsError> {
        match &self.tls {
            Some(acceptor) => acceptor.reload(),
            None => Ok(()),
        }
    }

    /// The TLS certificates in use, if any TLS listener is configured.
    pub fn tls(&self) -> Option<&Arc<TlsAcceptor>> {
        self.tls.as_ref()
    }

    /// Changes the memory high watermark until the broker stops (RabbitMQ's `rabbitmqctl
    /// set_vm_memory_high_watermark`); the alarm is re-evaluated at once.
    pub fn set_memory_high_watermark(&self, watermark: crate::observe::alarms::Watermark) {
        self.alarm_limits
            .send_modify(|limits| limits.memory = watermark);
    }

    /// `Ok` when `/readyz` would answer 200.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        self.health.readiness()
    }

    /// Stops accepting, gives open connections a moment to finish, drains and fsyncs every
    /// partition, flushes metadata and releases the data directory. Idempotent.
    pub async fn shutdown(&self) {
        let Some(mut running) = self.running.lock().take() else {
            return;
        };
        self.health.set_ready(false);
        self.health.set_phase("shutting down");
        let _ = running.shutdown_tx.send(true);
        let drain = async { while running.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(10), drain)
            .await
            .is_err()
        {
            tracing::warn!("listeners did not stop within 10 s; aborting them");
            running.tasks.abort_all();
        }
        self.core.shutdown().await;
        drop(running.lock);
        drop(running.temp);
        tracing::info!("ferry stopped");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(running) = self.running.get_mut().take() {
            // Without an async context the most we can do is stop the listeners; partition
            // writers finish their queued appends and exit when their handles drop.
            let _ = running.shutdown_tx.send(true);
        }
    }
}

/// A data directory path that names a file is refused before anything starts.
/// Runs the blocking `job` (file deletions, segment rewrites) every `interval` on the blocking
/// pool, one run at a time, until shutdown.
async fn every(
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
    job: impl Fn() + Send + Sync + 'static,
) {
    let job = Arc::new(job);
    let mut tick = tokio::time::interval(interval);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let job = Arc::clone(&job);
                if let Err(e) = tokio::task::spawn_blocking(move || job()).await {
                    tracing::error!(error = %e, "a periodic storage task panicked");
                }
            }
            _ = crate::util::stopped(&mut shutdown) => break,
        }
    }
}

fn check_data_dir(dir: &Path) -> Result<(), StartError> {
    if dir.exists() && !dir.is_dir() {
        return Err(StartError::DataDir {
            path: dir.to_path_buf(),
            message: "is a file, not a directory — pass --data-dir (or FERRY_DATA_DIR) a \
                      directory"
                .into(),
        });
    }
    Ok(())
}

/// Takes an exclusive `flock` on `<dir>/.lock` so two brokers never share a data directory.
fn lock_data_dir(dir: &Path) -> Result<File, StartError> {
    use std::os::fd::AsRawFd;
    let err = |message: String| StartError::DataDir {
        path: dir.to_path_buf(),
        message,
    };
    check_data_dir(dir)?;
    std::fs::create_dir_all(dir)
        .map_err(|e| err(format!("cannot create it: {}", os_reason(&e))))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))
        .map_err(|e| err(format!("cannot open its lock file: {e}")))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(err(
            "is in use by another ferry process (stop it, or pass a different --data-dir)".into(),
        ));
    }
    Ok(file)
}

fn log_startup(report: &StartupReport, took: Duration) {
    for (topic, partition, recovery) in &report.repairs {
        tracing::warn!(topic, partition, %recovery, "recovery repaired partition");
    }
    tracing::info!(
        topics = report.topics,
        partitions = report.partitions,
        repaired = report.repairs.len(),
        took_ms = took.as_millis() as u64,
        "recovery finished"
    );
}

/// Raises the soft limit on open files to the hard limit (Kafka and RabbitMQ ask operators to
/// do this by hand), logging both, then sets the log's open-files budget (`log.max_open_files`,
/// by default half the raised limit) and warns when it plus the connection limits could need
/// more descriptors than that. A failure leaves the limit as it was and is logged.
fn raise_open_files_limit(config: &Config) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot read the open-files limit");
        return;
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        } else {
            tracing::warn!(error = %std::io::Error::last_os_error(), soft = before, hard = limit.rlim_max, "cannot raise the open-files limit");
        }
    }
    tracing::info!(
        soft_before = before,
        soft = limit.rlim_cur,
        hard = limit.rlim_max,
        "open-files limit"
    );
    // Segment and index files share one budget however many partitions and queues there
    // are (idle ones are closed); each connection holds one descriptor.
    let budget = config.log.open_files_budget();
    crate::log::FileCache::global().set_budget(budget);
    tracing::info!(max_open_files = budget, "log open-files budget");
    let wanted =
        budget as u64 + config.kafka.max_connections as u64 + config.amqp.max_connections as u64;
    // The defaults (an automatic budget of half the limit, 10,000 connections per protocol)
    // over-commit on purpose: both caps are ceilings that are rarely reached together, and a
    // fresh `ferry serve` should not greet its user with a warning. Only limits an operator set
    // are worth a WARN.
    let defaults = (
        crate::config::KafkaSettings::default().max_connections,
        crate::config::AmqpSettings::default().max_connections,
    );
    let operator_set = config.log.max_open_files != 0
        || (config.kafka.max_connections, config.amqp.max_connections) != defaults;
    if wanted > limit.rlim_cur && !operator_set {
        tracing::info!(
            open_files_limit = limit.rlim_cur,
            log_max_open_files = budget,
            "the default connection limits plus the log's open-files budget exceed the open-files limit; raise the limit for more than a few thousand connections"
        );
    } else if wanted > limit.rlim_cur {
        tracing::warn!(
            open_files_limit = limit.rlim_cur,
            log_max_open_files = budget,
            kafka_max_connections = config.kafka.max_connections,
            amqp_max_connections = config.amqp.max_connections,
            "log.max_open_files plus the connection limits exceed the open-files limit; lower them or raise the limit"
        );
    }
}
