//! The one configuration tree of a Ferry broker.
//!
//! Every setting lives in [`Config`], with its default documented on the field and mirrored in
//! `config/ferry.toml`. Settings come from three layers, later ones winning: the TOML file, then
//! `FERRY_*` environment variables, then command-line flags. The layers are merged as TOML values
//! *before* deserializing, so one code path validates all of them and an error can always name the
//! key (`log.fsync`, `FERRY_KAFKA_LISTEN`, …) and say what was wrong with it.
//!
//! The library never reads the environment itself: [`Config::load`] takes the variables as an
//! argument and only the CLI passes `std::env::vars()`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::log::{FsyncPolicy, LogConfig};

mod amqp;
mod diagnose;
mod kafka;
mod security;
pub use amqp::{AmqpPermission, AmqpSettings, AmqpUser};
use diagnose::{did_you_mean, did_you_mean_variable, flag_name, io_reason, with_origin, Origins};
pub use kafka::KafkaSettings;
pub use security::{AnonymousAccess, UserSettings, SASL_MECHANISMS};

/// A configuration problem, always naming the key (or variable) it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path} does not exist (check --config or FERRY_CONFIG)")]
    Missing { path: PathBuf },
    #[error("cannot read config file {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("invalid value for `{key}`: {message}")]
    Invalid { key: String, message: String },
    #[error(
        "unknown setting `{key}` in {origin}{} (every setting is listed in config/ferry.toml)",
        did_you_mean(key)
    )]
    Unknown { key: String, origin: String },
}

/// Everything a broker needs to start. `Config::default()` is what `ferry serve` runs with when
/// nothing is configured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where logs and metadata live. Default `./ferry-data`.
    pub data_dir: PathBuf,
    /// Kafka listener, `HOST:PORT`. Default `0.0.0.0:9092`.
    pub kafka_listen: String,
    /// The `HOST:PORT` Kafka clients are told to connect to (Metadata, FindCoordinator). Default:
    /// unset, meaning the listen address; when that is a wildcard (`0.0.0.0`, `[::]`), the local
    /// address of each client's own connection, which that client demonstrably can reach.
    pub kafka_advertised: Option<String>,
    /// AMQP 0-9-1 listener, `HOST:PORT`. Default `0.0.0.0:5672`.
    pub amqp_listen: String,
    /// Native protocol (protobuf over QUIC) listener, `HOST:PORT`. Default `0.0.0.0:7447`.
    pub native_listen: String,
    /// The native protocol over TCP (TLS, streams multiplexed by id; docs/native-protocol.md)
    /// for clients on networks that block UDP, `HOST:PORT` (7448 by convention). Default
    /// empty: off.
    pub native_tcp_listen: String,
    /// HTTP listener for `/healthz`, `/readyz`, `/metrics`. Default `0.0.0.0:8080`.
    pub http_listen: String,
    /// Kafka TLS (`SSL`) listener, `HOST:PORT` (Kafka's usual 9093). Default empty: off.
    pub kafka_tls_listen: String,
    /// The `HOST:PORT` clients of the TLS listener are told to connect to; the same rules as
    /// `kafka_advertised` otherwise. Default: unset.
    pub kafka_tls_advertised: Option<String>,
    /// AMQPS listener, `HOST:PORT` (RabbitMQ's 5671). Default empty: off.
    pub amqp_tls_listen: String,
    /// HTTPS listener for the same endpoints and admin API as `http_listen`. Default empty: off.
    pub http_tls_listen: String,
    /// `[tls]`: the certificate and key of every TLS listener, and client certificates.
    pub tls: crate::tls::TlsSettings,
    /// Storage settings and the defaults every new topic starts from.
    pub log: LogSettings,
    /// Kafka protocol settings.
    pub kafka: KafkaSettings,
    /// AMQP 0-9-1 protocol settings.
    pub amqp: AmqpSettings,
    /// `[native]`: native protocol (protobuf over QUIC) settings; its users are `amqp.users`.
    pub native: crate::protocol::native::NativeSettings,
    /// Logging and metrics.
    pub observe: ObserveSettings,
    /// Alert rules and where their events go (see `src/observe/alerts.rs`).
    pub alerts: crate::observe::alerts::AlertSettings,
    /// `[[users]]`: users of every protocol and the admin API (name, password or
    /// password_hash, tags). Default none: the first start creates the loopback-only default
    /// users `guest`/`guest` and `admin`/`admin` (see docs/security.md).
    pub users: Vec<UserSettings>,
    /// `[[bridges]]`: shovels to or from remote RabbitMQ/Kafka, one table each with `name`,
    /// optional `vhost` (default "/") and the dynamic shovel keys (`src-uri`, `src-queue`,
    /// `dest-uri`, `dest-topic`, `ack-mode`, ...; see docs/bridges.md). Stored at start like
    /// `PUT /api/parameters/shovel/...`. Default none.
    pub bridges: Vec<crate::bridge::BridgeSettings>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./ferry-data"),
            kafka_listen: "0.0.0.0:9092".into(),
            kafka_advertised: None,
            amqp_listen: "0.0.0.0:5672".into(),
            native_listen: "0.0.0.0:7447".into(),
            native_tcp_listen: String::new(),
            http_listen: "0.0.0.0:8080".into(),
            kafka_tls_listen: String::new(),
            kafka_tls_advertised: None,
            amqp_tls_listen: String::new(),
            http_tls_listen: String::new(),
            tls: crate::tls::TlsSettings::default(),
            log: LogSettings::default(),
            kafka: KafkaSettings::default(),
            amqp: AmqpSettings::default(),
            native: crate::protocol::native::NativeSettings::default(),
            observe: ObserveSettings::default(),
            alerts: crate::observe::alerts::AlertSettings::default(),
            users: Vec::new(),
            bridges: Vec::new(),
        }
    }
}

/// `[log]`: durability policy and topic defaults, with Kafka's names and defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// When an append counts as done: `"always"` (fsync before confirming; default),
    /// `"interval:<ms>"` (fsync every <ms>, confirm on write), `"never"` (leave it to the OS).
    pub fsync: String,
    /// Keep zero-filled space ahead of the write position so fsyncs overwrite instead of grow
    /// the file (cheaper fdatasync for small appends, but every byte is written twice).
    /// Default false.
    pub preallocate: bool,
    /// `segment.bytes`: roll to a new segment file at this size. Default 1 GiB.
    pub segment_bytes: u64,
    /// `segment.ms`: roll a segment this old even if not full. Default 7 days.
    pub segment_ms: i64,
    /// `retention.ms`: delete segments whose newest record is older. -1 keeps forever. Default 7 days.
    pub retention_ms: i64,
    /// `retention.bytes`: per partition; delete oldest segments beyond this. -1 = no limit (default).
    pub retention_bytes: i64,
    /// `max.message.bytes`: largest record batch accepted. Default 1048588 (Kafka's).
    pub max_message_bytes: usize,
    /// `index.interval.bytes`: bytes of log between offset index entries. Default 4096.
    pub index_interval_bytes: usize,
    /// How often retention runs, in milliseconds. Default 300000 (Kafka's 5 minutes).
    pub retention_check_interval_ms: u64,
    /// How often the log cleaner looks for compacted partitions that are due
    /// (`log.cleaner.backoff.ms`). Default 15000.
    pub cleaner_backoff_ms: u64,
    /// Memory of the cleaner's offset map (`log.cleaner.dedupe.buffer.size`), about 40 bytes a
    /// key: a pass maps at most this many keys and leaves the rest for the next one. Default
    /// 33554432 (32 MiB).
    pub cleaner_dedupe_buffer_bytes: usize,
    /// Most segment and index files kept open at once, over all partitions and queues; idle
    /// ones beyond it are closed (least recently used first) and reopened when next read or
    /// written, so descriptors follow the active partitions, not all of them. Files in use
    /// are never closed, so this is a soft cap. 0 (default) = half the open-files limit
    /// (after it is raised to the hard limit at start), leaving the rest for connections.
    pub max_open_files: usize,
    /// Test hook for power-loss tests (`FERRY_LOG__SYNC_JOURNAL=true`): every partition records
    /// the log end offset of its last fsync in a `sync.journal` file. Default false.
    #[doc(hidden)]
    pub sync_journal: bool,
}

impl Default for LogSettings {
    fn default() -> Self {
        let log = LogConfig::default();
        Self {
            fsync: log.fsync.to_string(),
            preallocate: log.preallocate,
            segment_bytes: log.segment_bytes,
            segment_ms: log.segment_ms,
            retention_ms: log.retention_ms,
            retention_bytes: log.retention_bytes,
            max_message_bytes: log.max_message_bytes,
            index_interval_bytes: log.index_interval_bytes,
            retention_check_interval_ms: 300_000,
            cleaner_backoff_ms: 15_000,
            cleaner_dedupe_buffer_bytes: crate::log::cleaner::DEFAULT_DEDUPE_BUFFER_BYTES,
            max_open_files: 0,
            sync_journal: false,
        }
    }
}

impl LogSettings {
    /// The topic defaults as a [`LogConfig`]; fails on an unparseable fsync policy.
    pub fn to_log_config(&self) -> Result<LogConfig, ConfigError> {
        let fsync: FsyncPolicy = self
            .fsync
            .parse()
            .map_err(|e: String| ConfigError::Invalid {
                key: "log.fsync".into(),
                message: e.to_string(),
            })?;
        Ok(LogConfig {
            fsync,
            preallocate: self.preallocate,
            segment_bytes: self.segment_bytes,
            segment_ms: self.segment_ms,
            retention_ms: self.retention_ms,
            retention_bytes: self.retention_bytes,
            max_message_bytes: self.max_message_bytes,
            index_interval_bytes: self.index_interval_bytes,
            sync_journal: self.sync_journal,
            ..LogConfig::default()
        })
    }

    /// The open-files budget of the log: `max_open_files`, or when 0 half the current
    /// open-files limit (call it after raising the limit).
    pub fn open_files_budget(&self) -> usize {
        match self.max_open_files {
            0 => crate::log::open_files::default_max_open_files(),
            n => n,
        }
    }

    pub fn retention_check_interval(&self) -> Duration {
        Duration::from_millis(self.retention_check_interval_ms.max(1))
    }

    pub fn cleaner_backoff(&self) -> Duration {
        Duration::from_millis(self.cleaner_backoff_ms.max(1))
    }
}

impl Config {
    /// The broker's resource limits (`kafka.max_partitions`, `amqp.max_queues`,
    /// `kafka.max_message_bytes_limit`).
    pub fn resource_limits(&self) -> crate::broker::ResourceLimits {
        crate::broker::ResourceLimits {
            max_partitions: self.kafka.max_partitions,
            max_queues: self.amqp.max_queues,
            max_message_bytes_limit: self.kafka.max_message_bytes_limit,
        }
    }
}

pub use crate::observe::settings::ObserveSettings;

/// Environment variables that belong to the CLI, not to the server configuration.
const CLI_ONLY_VARIABLES: &[&str] = &[
    "FERRY_ADMIN_URL",
    "FERRY_ADMIN_USER",
    "FERRY_ADMIN_PASSWORD",
    "FERRY_ADMIN_CACERT",
    "FERRY_AMQP_URL",
    "FERRY_BOOTSTRAP",
    "FERRY_CONFIG",
];

impl Config {
    /// Builds the configuration from a TOML file (optional), environment variables and flag
    /// overrides, in that order of increasing precedence. `overrides` are `(dotted.key, value)`
    /// pairs, values already typed.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: Vec<(String, toml::Value)>,
    ) -> Result<Config, ConfigError> {
        Self::load_with_warnings(file, env, overrides).map(|(config, _)| config)
    }

    /// Like [`load`](Self::load), also returning warnings for `FERRY_*` variables that name no
    /// setting. Those are ignored rather than fatal: orchestrators set variables of their own
    /// with the same prefix (Kubernetes adds `FERRY_PORT`, `FERRY_SERVICE_HOST`, … to every pod
    /// when a Service is named `ferry`), and refusing to start over them would be wrong. A
    /// variable that names a setting but holds a bad value is still an error.
    pub fn load_with_warnings(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: Vec<(String, toml::Value)>,
    ) -> Result<(Config, Vec<String>), ConfigError> {
        let mut warnings = Vec::new();
        let mut origins = Origins::new();
        let mut tree =
            toml::Value::try_from(Config::default()).map_err(|e| ConfigError::Invalid {
                key: "<defaults>".into(),
                message: e.to_string(),
            })?;

        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => ConfigError::Missing {
                    path: path.to_path_buf(),
                },
                _ => ConfigError::Read {
                    path: path.to_path_buf(),
                    message: io_reason(&e),
                },
            })?;
            let file_tree: toml::Table =
                toml::from_str(&text).map_err(|e| ConfigError::Syntax {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
            let origin = format!("config file {}", path.display());
            merge_table(&mut tree, file_tree, &origin, "", &mut origins)?;
        }

        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("FERRY_") && !CLI_ONLY_VARIABLES.contains(&k.as_str()))
            .collect();
        vars.sort();
        for (name, raw) in vars {
            let dotted = env_var_to_key(&name);
            let origin = format!("environment variable {name}");
            match set_path(
                &mut tree,
                &dotted,
                parse_env_value(&raw),
                &origin,
                &mut origins,
            ) {
                Err(ConfigError::Unknown { .. }) => warnings.push(format!(
                    "ignoring environment variable {name}: it names no setting{} (see \
                     config/ferry.toml)",
                    did_you_mean_variable(&dotted)
                )),
                other => other?,
            }
        }

        for (key, value) in overrides {
            let origin = format!("flag --{}", flag_name(&key));
            set_path(&mut tree, &key, value, &origin, &mut origins)?;
        }

        // serde_path_to_error keeps the path of a bad value, so the message can name the key.
        let config: Config = serde_path_to_error::deserialize(tree)
            .map_err(|e| ConfigError::Invalid {
                key: e.path().to_string(),
                // toml's message repeats the path on later lines; the key is named already.
                message: e
                    .inner()
                    .to_string()
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string(),
            })
            .map_err(|e| with_origin(e, &origins))?;
        config.validate().map_err(|e| with_origin(e, &origins))?;
        Ok((config, warnings))
    }

    /// Checks what serde cannot: addresses resolve, numbers are in range, policies parse.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_users()?;
        self.alerts
            .validate()
            .map_err(|message| ConfigError::Invalid {
                key: "alerts".into(),
                message,
            })?;
        for (key, value) in [
            ("kafka_listen", &self.kafka_listen),
            ("amqp_listen", &self.amqp_listen),
            ("native_listen", &self.native_listen),
            ("http_listen", &self.http_listen),
        ] {
            resolve_listen(key, value)?;
        }
        for (key, value) in self.tls_listeners() {
            resolve_listen(key, value)?;
        }
        if !self.native_tcp_listen.is_empty() {
            resolve_listen("native_tcp_listen", &self.native_tcp_listen)?;
        }
        if let Some(adv) = &self.kafka_advertised {
            parse_host_port("kafka_advertised", adv)?;
        }
        if let Some(adv) = &self.kafka_tls_advertised {
            parse_host_port("kafka_tls_advertised", adv)?;
        }
        if let Some((key, message)) = self.native.problem() {
            return Err(ConfigError::Invalid {
                key: key.into(),
                message: message.into(),
            });
        }
        if let Some((key, message)) = self.tls.problem(!self.tls_listeners().is_empty()) {
            return Err(ConfigError::Invalid {
                key: key.into(),
                message: message.into(),
            });
        }
        self.log.to_log_config()?;
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        };
        if self.log.segment_bytes < 1024 {
            return Err(invalid("log.segment_bytes", "must be at least 1024"));
        }
        if self.log.segment_ms < 1 {
            return Err(invalid("log.segment_ms", "must be at least 1"));
        }
        if self.log.retention_ms < -1 {
            return Err(invalid("log.retention_ms", "must be -1 (forever) or >= 0"));
        }
        if self.log.retention_bytes < -1 {
            return Err(invalid(
                "log.retention_bytes",
                "must be -1 (no limit) or >= 0",
            ));
        }
        if self.log.max_message_bytes < 64 {
            return Err(invalid("log.max_message_bytes", "must be at least 64"));
        }
        if self.log.max_message_bytes > self.kafka.max_message_bytes_limit {
            return Err(invalid(
                "log.max_message_bytes",
                "must not exceed kafka.max_message_bytes_limit",
            ));
        }
        if self.log.index_interval_bytes == 0 {
            return Err(invalid("log.index_interval_bytes", "must be at least 1"));
        }
        if let Some((key, message)) = self.kafka.problem() {
            return Err(invalid(key, message));
        }
        if self.amqp.frame_max < 4096 {
            return Err(invalid("amqp.frame_max", "must be at least 4096"));
        }
        if self.amqp.handshake_timeout_ms == 0 {
            return Err(invalid("amqp.handshake_timeout_ms", "must be at least 1"));
        }
        if self.amqp.channel_max == 0 {
            return Err(invalid("amqp.channel_max", "must be at least 1"));
        }
        let watermark = self.amqp.vm_memory_high_watermark;
        if watermark.is_nan() || watermark < 0.0 {
            return Err(invalid(
                "amqp.vm_memory_high_watermark",
                "must be a fraction >= 0 (0.6 = 60% of the available memory)",
            ));
        }
        if self.amqp.vhosts.iter().any(|v| v.is_empty()) {
            return Err(invalid("amqp.vhosts", "vhost names must not be empty"));
        }
        if !matches!(self.observe.log_format.as_str(), "text" | "json") {
            return Err(invalid(
                "observe.log_format",
                "must be \"text\" or \"json\"",
            ));
        }
        if let Some((key, message)) = self.observe.http.problem() {
            return Err(invalid(key, message));
        }
        let otlp = &self.observe.otlp_endpoint;
        let http = otlp.starts_with("http://") || otlp.starts_with("https://");
        if !otlp.is_empty() && !http {
            return Err(invalid(
                "observe.otlp_endpoint",
                "must be an http:// or https:// URL (OTLP over HTTP) or empty",
            ));
        }
        Ok(())
    }
}

impl Config {
    /// The TLS listeners that are switched on, as (setting, address).
    pub fn tls_listeners(&self) -> Vec<(&'static str, &String)> {
        [
            ("kafka_tls_listen", &self.kafka_tls_listen),
            ("amqp_tls_listen", &self.amqp_tls_listen),
            ("http_tls_listen", &self.http_tls_listen),
        ]
        .into_iter()
        .filter(|(_, addr)| !addr.is_empty())
        .collect()
    }
}

/// Resolves a listen address; port 0 asks the OS for a free port.
pub fn resolve_listen(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    parse_host_port(key, value)?;
    value
        .to_socket_addrs()
        .map_err(|e| ConfigError::Invalid {
            key: key.into(),
            message: format!("cannot resolve `{value}`: {e}"),
        })?
        .next()
        .ok_or_else(|| ConfigError::Invalid {
            key: key.into(),
            message: format!("`{value}` resolves to no address"),
        })
}

fn parse_host_port(key: &str, value: &str) -> Result<(), ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        key: key.into(),
        message,
    };
    let (host, port) = value
        .rsplit_once(':')
        .ok_or_else(|| invalid(format!("`{value}` is not HOST:PORT")))?;
    if host.is_empty() {
        return Err(invalid(format!(
            "`{value}` has no host (use 0.0.0.0:PORT for all interfaces)"
        )));
    }
    port.parse::<u16>().map_err(|_| {
        invalid(format!(
            "`{port}` in `{value}` is not a port number (0-65535)"
        ))
    })?;
    Ok(())
}

/// `FERRY_KAFKA_LISTEN` -> `kafka_listen`; `FERRY_LOG__FSYNC` -> `log.fsync` (a double
/// underscore separates a section from its key, since keys contain single underscores).
fn env_var_to_key(name: &str) -> String {
    name.trim_start_matches("FERRY_")
        .to_ascii_lowercase()
        .replace("__", ".")
}

/// An environment value is typed as TOML when it parses as a TOML value (`true`, `42`), and is a
/// plain string otherwise (`0.0.0.0:9092`, `interval:100`).
fn parse_env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .filter(|v| !matches!(v, toml::Value::Table(_) | toml::Value::Array(_)))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

/// Applies every value of a parsed file onto the tree, by dotted path, so file keys go through
/// the same "must exist" check as environment variables and flags.
fn merge_table(
    base: &mut toml::Value,
    incoming: toml::Table,
    origin: &str,
    prefix: &str,
    origins: &mut Origins,
) -> Result<(), ConfigError> {
    for (k, v) in incoming {
        let key = if prefix.is_empty() {
            k
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(inner) => merge_table(base, inner, origin, &key, origins)?,
            other => set_path(base, &key, other, origin, origins)?,
        }
    }
    Ok(())
}

/// Sets `dotted.key` in the tree. The key must exist in the defaults, except optional settings
/// (absent from the serialized defaults because they are `None`), which are accepted by name.
fn set_path(
    tree: &mut toml::Value,
    dotted: &str,
    value: toml::Value,
    origin: &str,
    origins: &mut Origins,
) -> Result<(), ConfigError> {
    let unknown = || ConfigError::Unknown {
        key: dotted.into(),
        origin: origin.into(),
    };
    let mut parts: Vec<&str> = dotted.split('.').collect();
    let last = parts.pop().ok_or_else(unknown)?;
    let mut node = tree;
    for part in parts {
        node = node
            .as_table_mut()
            .and_then(|t| t.get_mut(part))
            .filter(|n| n.is_table())
            .ok_or_else(unknown)?;
    }
    let table = node.as_table_mut().ok_or_else(unknown)?;
    if !table.contains_key(last) && !OPTIONAL_KEYS.contains(&dotted) {
        return Err(unknown());
    }
    if let Some(existing) = table.get(last) {
        if existing.is_table() {
            return Err(ConfigError::Invalid {
                key: dotted.into(),
                message: format!("is a section, not a value (from {origin})"),
            });
        }
    }
    origins.insert(dotted.to_string(), (origin.to_string(), value.to_string()));
    table.insert(last.to_string(), value);
    Ok(())
}

/// Optional settings: absent from the serialized defaults because they are `None`.
const OPTIONAL_KEYS: &[&str] = &["kafka_advertised", "kafka_tls_advertised"];

/// Flag overrides in the shape [`Config::load`] takes, built by the CLI.
#[derive(Default)]
pub struct Overrides(pub Vec<(String, toml::Value)>);

impl Overrides {
    pub fn set_str(&mut self, key: &str, value: Option<impl Into<String>>) {
        if let Some(v) = value {
            self.0.push((key.into(), toml::Value::String(v.into())));
        }
    }
}

/// A flattened view used by tests and `ferry serve --print-config`.
/// Secrets (passwords, password hashes) are shown as `<redacted>`.
pub fn to_toml_string(config: &Config) -> String {
    let Ok(mut tree) = toml::Value::try_from(config) else {
        return String::new();
    };
    security::redact(&mut tree);
    toml::to_string_pretty(&tree).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_documented_values() {
        let c = Config::load(None, env(&[]), vec![]).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.kafka_listen, "0.0.0.0:9092");
        assert_eq!(c.log.fsync, "always");
    }

    #[test]
    fn precedence_file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.toml");
        std::fs::write(
            &path,
            "kafka_listen = \"127.0.0.1:1000\"\namqp_listen = \"127.0.0.1:1001\"\n[log]\nfsync = \"never\"\nsegment_bytes = 4096\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&path),
            env(&[
                ("FERRY_AMQP_LISTEN", "127.0.0.1:2001"),
                ("FERRY_LOG__SEGMENT_BYTES", "8192"),
                ("FERRY_ADMIN_URL", "http://x"),
                ("HOME", "/root"),
            ]),
            vec![(
                "amqp_listen".into(),
                toml::Value::String("127.0.0.1:3001".into()),
            )],
        )
        .unwrap();
        assert_eq!(c.kafka_listen, "127.0.0.1:1000");
        assert_eq!(c.amqp_listen, "127.0.0.1:3001");
        assert_eq!(c.log.fsync, "never");
        assert_eq!(c.log.segment_bytes, 8192);
    }

    #[test]
    fn errors_name_the_key() {
        let err = Config::load(None, env(&[("FERRY_LOG__FSYNC", "sometimes")]), vec![])
            .unwrap_err()
            .to_string();
        assert!(err.contains("log.fsync"), "{err}");

        let err = Config::load(None, env(&[("FERRY_KAFKA_LISTEN", "nohostport")]), vec![])
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka_listen"), "{err}");

        // Unknown variables are reported, not fatal (orchestrators set FERRY_PORT and such).
        let (config, warnings) = Config::load_with_warnings(
            None,
            env(&[("FERRY_BOGUS", "1"), ("FERRY_PORT", "tcp://10.0.0.5:9092")]),
            vec![],
        )
        .unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("FERRY_BOGUS"), "{warnings:?}");
        // A known variable with a bad value still stops start-up.
        let err = Config::load(
            None,
            env(&[("FERRY_KAFKA__DEFAULT_PARTITIONS", "many")]),
            vec![],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("kafka.default_partitions"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.toml");
        std::fs::write(&path, "[log]\nsegment_bytes = \"big\"\n").unwrap();
        let err = Config::load(Some(&path), env(&[]), vec![])
            .unwrap_err()
            .to_string();
        assert!(err.contains("segment_bytes"), "{err}");

        std::fs::write(&path, "[kafka]\ndefault_partitions = 0\n").unwrap();
        let err = Config::load(Some(&path), env(&[]), vec![])
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka.default_partitions"), "{err}");

        // setsockopt would cut a long name at the kernel's 16 bytes and set something else.
        for bad in ["bbr; rm", "averyverylongname"] {
            let var = [("FERRY_KAFKA__LOOPBACK_CONGESTION_CONTROL", bad)];
            let err = Config::load(None, env(&var), vec![])
                .unwrap_err()
                .to_string();
            assert!(err.contains("kafka.loopback_congestion_control"), "{err}");
        }
        for good in ["", "cubic"] {
            let var = [("FERRY_KAFKA__LOOPBACK_CONGESTION_CONTROL", good)];
            let config = Config::load(None, env(&var), vec![]).unwrap();
            assert_eq!(config.kafka.loopback_congestion_control, good);
        }

        std::fs::write(&path, "this is not toml").unwrap();
        let err = Config::load(Some(&path), env(&[]), vec![])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not valid TOML"), "{err}");
    }

    #[test]
    fn optional_advertised_address() {
        let c = Config::load(
            None,
            env(&[("FERRY_KAFKA_ADVERTISED", "broker.example:9092")]),
            vec![],
        )
        .unwrap();
        assert_eq!(c.kafka_advertised.as_deref(), Some("broker.example:9092"));
    }

    #[test]
    fn shipped_config_file_matches_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/ferry.toml");
        let c = Config::load(Some(&path), env(&[]), vec![]).unwrap();
        assert_eq!(
            c,
            Config::default(),
            "config/ferry.toml must document the defaults"
        );
    }
}
