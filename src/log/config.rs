//! Per-partition log configuration, named after Kafka's topic configs.
//!
//! `LogConfig` is what a topic's `DescribeConfigs` / `AlterConfigs` read and write, so each field
//! is reachable through its Kafka name (`segment.bytes`, `retention.ms`, ...) with [`LogConfig::set`]
//! and listed by [`LogConfig::entries`]. Three settings are Ferry's own: `fsync.policy` (when data
//! is made durable before it is acknowledged), `preallocate` (Kafka has the same name; here it
//! means keeping a zero-filled region ahead of the writer, see `segment.rs`) and
//! `ferry.dedup.window.ms` (the broker core's deduplication window for a topic; the log itself
//! ignores it, but topic configs live here). Values are checked
//! when set and again by [`LogConfig::validate`] when a whole config arrives through serde.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Every key [`LogConfig::set`] accepts, in the order [`LogConfig::entries`] lists them.
pub const KNOWN_KEYS: &[&str] = &[
    "segment.bytes",
    "segment.ms",
    "retention.ms",
    "retention.bytes",
    "max.message.bytes",
    "cleanup.policy",
    "delete.retention.ms",
    "min.cleanable.dirty.ratio",
    "min.compaction.lag.ms",
    "max.compaction.lag.ms",
    "index.interval.bytes",
    "message.timestamp.type",
    "fsync.policy",
    "preallocate",
    "ferry.dedup.window.ms",
    "ferry.schema.validation",
    "ferry.event.store",
    "ferry.event.store.allow.produce",
];

/// A rejected configuration key or value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The key is not a log config Ferry knows.
    #[error("unknown log config key `{0}`")]
    UnknownKey(String),
    /// The key is known but the value is not acceptable.
    #[error("invalid value `{value}` for `{key}`: {reason}")]
    InvalidValue {
        /// The Kafka-style key.
        key: String,
        /// The rejected value as given.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
}

fn invalid(key: &str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::InvalidValue {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// `cleanup.policy`: what happens to old data — whole segments deleted by age and size
/// (`delete`), older records of a key removed by the cleaner (`compact`, see `cleaner.rs`), or
/// both (`compact,delete`, in either order, as Kafka accepts it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum CleanupPolicy {
    /// Delete whole segments by age and size.
    #[default]
    Delete,
    /// Keep the latest record of every key; never delete segments by age or size.
    Compact,
    /// Both.
    CompactDelete,
}

impl CleanupPolicy {
    /// Whether the cleaner compacts this log.
    pub fn compacts(self) -> bool {
        matches!(self, CleanupPolicy::Compact | CleanupPolicy::CompactDelete)
    }

    /// Whether retention deletes whole segments of this log.
    pub fn deletes(self) -> bool {
        matches!(self, CleanupPolicy::Delete | CleanupPolicy::CompactDelete)
    }
}

impl FromStr for CleanupPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (mut compact, mut delete) = (false, false);
        for part in s.split(',') {
            match part.trim() {
                "compact" => compact = true,
                "delete" => delete = true,
                _ => return Err("expected `delete`, `compact` or `compact,delete`".to_string()),
            }
        }
        Ok(match (compact, delete) {
            (true, true) => CleanupPolicy::CompactDelete,
            (true, false) => CleanupPolicy::Compact,
            _ => CleanupPolicy::Delete,
        })
    }
}

impl fmt::Display for CleanupPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
            CleanupPolicy::CompactDelete => "compact,delete",
        })
    }
}

impl TryFrom<String> for CleanupPolicy {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<CleanupPolicy> for String {
    fn from(p: CleanupPolicy) -> String {
        p.to_string()
    }
}

/// `message.timestamp.type`: whose clock the stored timestamps are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum TimestampType {
    /// Keep the producer's timestamps.
    #[default]
    CreateTime,
    /// The broker stamps each batch with the append time (max timestamp, attribute bit 3).
    LogAppendTime,
}

impl FromStr for TimestampType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "CreateTime" => Ok(TimestampType::CreateTime),
            "LogAppendTime" => Ok(TimestampType::LogAppendTime),
            _ => Err("expected `CreateTime` or `LogAppendTime`".to_string()),
        }
    }
}

impl fmt::Display for TimestampType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimestampType::CreateTime => "CreateTime",
            TimestampType::LogAppendTime => "LogAppendTime",
        })
    }
}

impl TryFrom<String> for TimestampType {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<TimestampType> for String {
    fn from(t: TimestampType) -> String {
        t.to_string()
    }
}

/// `fsync.policy`: when appended data is forced to disk relative to acknowledging it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum FsyncPolicy {
    /// fdatasync before any append of a group is acknowledged (group commit amortises it).
    #[default]
    Always,
    /// Acknowledge after the write; a timer fdatasyncs dirty data this often.
    Interval(Duration),
    /// Acknowledge after the write; fdatasync only when a segment rolls or the log closes.
    Never,
}

impl FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            _ => {
                let ms = s
                    .strip_prefix("interval:")
                    .ok_or_else(|| "expected `always`, `never` or `interval:<ms>`".to_string())?;
                let ms: u64 = ms
                    .trim()
                    .parse()
                    .map_err(|_| "interval must be a whole number of milliseconds".to_string())?;
                if ms == 0 {
                    return Err("interval must be at least 1 ms (use `always`)".to_string());
                }
                Ok(FsyncPolicy::Interval(Duration::from_millis(ms)))
            }
        }
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsyncPolicy::Always => f.write_str("always"),
            FsyncPolicy::Never => f.write_str("never"),
            FsyncPolicy::Interval(d) => write!(f, "interval:{}", d.as_millis()),
        }
    }
}

impl TryFrom<String> for FsyncPolicy {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<FsyncPolicy> for String {
    fn from(p: FsyncPolicy) -> String {
        p.to_string()
    }
}

/// One row of `DescribeConfigs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    /// Kafka-style key.
    pub name: String,
    /// Current value, formatted the way [`LogConfig::set`] accepts it.
    pub value: String,
    /// Whether the value equals the built-in default.
    pub is_default: bool,
}

/// Configuration of one partition log. Defaults are Kafka's, except `fsync` (Kafka relies on
/// replication and never fsyncs per message; a single Ferry node must).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// `segment.bytes`: roll when the active segment would exceed this. Default 1 GiB.
    pub segment_bytes: u64,
    /// `segment.ms`: roll when the active segment is older than this. Default 7 days.
    pub segment_ms: i64,
    /// `retention.ms`: delete segments whose newest timestamp is older. -1 = forever. Default 7 days.
    pub retention_ms: i64,
    /// `retention.bytes`: delete oldest segments while the log stays at least this big. -1 = no
    /// limit (default).
    pub retention_bytes: i64,
    /// `max.message.bytes`: the largest record batch accepted. Default 1048588 (Kafka's).
    pub max_message_bytes: usize,
    /// `cleanup.policy`: `delete` (default), `compact` or `compact,delete`.
    pub cleanup_policy: CleanupPolicy,
    /// `delete.retention.ms`: how long the cleaner keeps a tombstone (a record with a null
    /// value) that is the latest of its key, so consumers that lag behind still see the delete.
    /// Default 86400000 (1 day).
    pub delete_retention_ms: i64,
    /// `min.cleanable.dirty.ratio`: the share of the cleanable log not yet compacted above which
    /// the cleaner compacts it. Default 0.5.
    pub min_cleanable_dirty_ratio: f64,
    /// `min.compaction.lag.ms`: a record stays uncompacted at least this long. Default 0.
    pub min_compaction_lag_ms: i64,
    /// `max.compaction.lag.ms`: a record not compacted after this long is compacted whatever the
    /// dirty ratio. Default 9223372036854775807 (never forced).
    pub max_compaction_lag_ms: i64,
    /// `index.interval.bytes`: log bytes between two sparse index entries. Default 4096.
    pub index_interval_bytes: usize,
    /// `message.timestamp.type`: `CreateTime` (default) or `LogAppendTime`.
    pub message_timestamp_type: TimestampType,
    /// `fsync.policy`: `always` (default), `interval:<ms>` or `never`.
    pub fsync: FsyncPolicy,
    /// `preallocate`: keep a zero-filled region ahead of the write position. Default: see
    /// [`DEFAULT_PREALLOCATE`].
    pub preallocate: bool,
    /// For power-loss tests only: keep a `sync.journal` file in the partition directory holding
    /// the log end offset as of the last successful fsync, so a test can cut the log back to
    /// what a power failure would have left (see `writer.rs`). Not a Kafka config, not listed
    /// by [`entries`](Self::entries). Default false.
    #[doc(hidden)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub sync_journal: bool,
    /// `ferry.dedup.window.ms`: AMQP publishes to the topic's exchange face whose message id
    /// was appended within this window are dropped (see `broker/topic_router.rs`). -1 (the
    /// default) turns it off.
    pub dedup_window_ms: i64,
    /// `ferry.schema.validation`: every record produced to the topic must carry the schema
    /// registry's wire format (magic 0 + schema id of a schema under `<topic>-value`) and
    /// decode against that schema; others are refused (see `broker::schema_check`). Default
    /// false: nothing is checked and the produce path pays one bool test.
    #[serde(default)]
    pub schema_validation: bool,
    /// `ferry.event.store`: the topic holds event streams with expected-revision appends
    /// (see `crate::es`; the log itself ignores it). Default false.
    pub event_store: bool,
    /// `ferry.event.store.allow.produce`: plain Kafka produce into an event-store topic is
    /// accepted (its records belong to no stream). Default false: refused.
    pub event_store_allow_produce: bool,
}

/// Default of `preallocate`, chosen by measurement on the 2-core dev VM, where the two
/// workloads disagree. Small appends (`benches/log.rs`): overwriting already-written zeros makes
/// each fdatasync cheaper because the file size — an inode change the journal must commit — does
/// not move (4 KiB write+fdatasync: 91 µs vs 128 µs); with `fsync=always` one appender of
/// 100-record batches went from 230 to 158 µs per append, 64 appenders within noise. Broker
/// throughput (`ferry bench kafka`, 64 KiB batches, 8 in flight): every byte is written twice
/// (zeros, then data), and turning preallocation off raised 1 KiB produce from 215–249 to
/// 450–613 MB/s (`interval:100`, 1 partition) and from 434–736 to 657–1056 MB/s (`always`,
/// 8 partitions). Throughput under load is what a broker is sized by, so it is off by default;
/// latency-sensitive single-producer deployments with `fsync=always` can turn it on.
pub const DEFAULT_PREALLOCATE: bool = false;

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * DAY_MS,
            retention_ms: 7 * DAY_MS,
            retention_bytes: -1,
            max_message_bytes: 1_048_588,
            cleanup_policy: CleanupPolicy::Delete,
            delete_retention_ms: DAY_MS,
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
            index_interval_bytes: 4096,
            message_timestamp_type: TimestampType::CreateTime,
            fsync: FsyncPolicy::Always,
            preallocate: DEFAULT_PREALLOCATE,
            sync_journal: false,
            dedup_window_ms: -1,
            schema_validation: false,
            event_store: false,
            event_store_allow_produce: false,
        }
    }
}

fn parse_bool(key: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(key, value, "expected `true` or `false`")),
    }
}

fn parse_int<T: FromStr>(key: &str, value: &str) -> Result<T, ConfigError> {
    value
        .trim()
        .parse::<T>()
        .map_err(|_| invalid(key, value, "not an integer in range"))
}

impl LogConfig {
    /// Sets one value by its Kafka name. Unknown keys and bad values are errors naming the key;
    /// on error `self` is unchanged.
    pub fn set(&mut self, kafka_name: &str, value: &str) -> Result<(), ConfigError> {
        let mut next = self.clone();
        match kafka_name {
            "segment.bytes" => next.segment_bytes = parse_int(kafka_name, value)?,
            "segment.ms" => next.segment_ms = parse_int(kafka_name, value)?,
            "retention.ms" => next.retention_ms = parse_int(kafka_name, value)?,
            "retention.bytes" => next.retention_bytes = parse_int(kafka_name, value)?,
            "max.message.bytes" => next.max_message_bytes = parse_int(kafka_name, value)?,
            "index.interval.bytes" => next.index_interval_bytes = parse_int(kafka_name, value)?,
            "delete.retention.ms" => next.delete_retention_ms = parse_int(kafka_name, value)?,
            "min.cleanable.dirty.ratio" => {
                next.min_cleanable_dirty_ratio = value
                    .trim()
                    .parse()
                    .map_err(|_| invalid(kafka_name, value, "not a number"))?
            }
            "min.compaction.lag.ms" => next.min_compaction_lag_ms = parse_int(kafka_name, value)?,
            "max.compaction.lag.ms" => next.max_compaction_lag_ms = parse_int(kafka_name, value)?,
            "cleanup.policy" => {
                next.cleanup_policy = value.parse().map_err(|r| invalid(kafka_name, value, r))?
            }
            "message.timestamp.type" => {
                next.message_timestamp_type =
                    value.parse().map_err(|r| invalid(kafka_name, value, r))?
            }
            "fsync.policy" => {
                next.fsync = value.parse().map_err(|r| invalid(kafka_name, value, r))?
            }
            "ferry.dedup.window.ms" => next.dedup_window_ms = parse_int(kafka_name, value)?,
            "ferry.schema.validation" => next.schema_validation = parse_bool(kafka_name, value)?,
            "preallocate" => next.preallocate = parse_bool(kafka_name, value)?,
            "ferry.event.store" => next.event_store = parse_bool(kafka_name, value)?,
            "ferry.event.store.allow.produce" => {
                next.event_store_allow_produce = parse_bool(kafka_name, value)?
            }
            other => return Err(ConfigError::UnknownKey(other.to_string())),
        }
        next.validate_key(kafka_name, value)?;
        *self = next;
        Ok(())
    }

    /// Checks every range constraint; used on configs that arrive whole (serde, `open`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        for key in KNOWN_KEYS {
            let value = self.value_of(key).unwrap_or_default();
            self.validate_key(key, &value)?;
        }
        Ok(())
    }

    fn validate_key(&self, key: &str, value: &str) -> Result<(), ConfigError> {
        // Index entries store 32-bit file positions, hence the i32 cap (Kafka's is the same, as
        // segment.bytes is an int there); 14 bytes is Kafka's minimum.
        let ok = match key {
            "segment.bytes" => (14..=i32::MAX as u64).contains(&self.segment_bytes),
            "segment.ms" => self.segment_ms >= 1,
            "retention.ms" => self.retention_ms >= -1,
            "retention.bytes" => self.retention_bytes >= -1,
            "ferry.dedup.window.ms" => self.dedup_window_ms >= -1,
            "delete.retention.ms" => self.delete_retention_ms >= 0,
            "min.compaction.lag.ms" => self.min_compaction_lag_ms >= 0,
            "max.compaction.lag.ms" => self.max_compaction_lag_ms >= 1,
            "min.cleanable.dirty.ratio" => (0.0..=1.0).contains(&self.min_cleanable_dirty_ratio),
            "max.message.bytes" => self.max_message_bytes <= i32::MAX as usize,
            "index.interval.bytes" => self.index_interval_bytes <= i32::MAX as usize,
            _ => true,
        };
        if ok {
            Ok(())
        } else {
            let reason = match key {
                "segment.bytes" => "must be between 14 and 2147483647",
                "segment.ms" => "must be at least 1",
                "retention.ms" | "retention.bytes" => "must be -1 (unlimited) or non-negative",
                "ferry.dedup.window.ms" => "must be -1 (off) or non-negative",
                "delete.retention.ms" | "min.compaction.lag.ms" => "must be non-negative",
                "max.compaction.lag.ms" => "must be at least 1",
                "min.cleanable.dirty.ratio" => "must be between 0 and 1",
                _ => "must be between 0 and 2147483647",
            };
            Err(invalid(key, value, reason))
        }
    }

    fn value_of(&self, key: &str) -> Option<String> {
        Some(match key {
            "segment.bytes" => self.segment_bytes.to_string(),
            "segment.ms" => self.segment_ms.to_string(),
            "retention.ms" => self.retention_ms.to_string(),
            "retention.bytes" => self.retention_bytes.to_string(),
            "max.message.bytes" => self.max_message_bytes.to_string(),
            "cleanup.policy" => self.cleanup_policy.to_string(),
            "delete.retention.ms" => self.delete_retention_ms.to_string(),
            "min.cleanable.dirty.ratio" => self.min_cleanable_dirty_ratio.to_string(),
            "min.compaction.lag.ms" => self.min_compaction_lag_ms.to_string(),
            "max.compaction.lag.ms" => self.max_compaction_lag_ms.to_string(),
            "index.interval.bytes" => self.index_interval_bytes.to_string(),
            "message.timestamp.type" => self.message_timestamp_type.to_string(),
            "fsync.policy" => self.fsync.to_string(),
            "preallocate" => self.preallocate.to_string(),
            "ferry.dedup.window.ms" => self.dedup_window_ms.to_string(),
            "ferry.schema.validation" => self.schema_validation.to_string(),
            "ferry.event.store" => self.event_store.to_string(),
            "ferry.event.store.allow.produce" => self.event_store_allow_produce.to_string(),
            _ => return None,
        })
    }

    /// All settings with their current values, for `DescribeConfigs`.
    pub fn entries(&self) -> Vec<ConfigEntry> {
        let default = LogConfig::default();
        KNOWN_KEYS
            .iter()
            .map(|key| {
                let value = self.value_of(key).unwrap_or_default();
                let is_default = default.value_of(key).as_deref() == Some(value.as_str());
                ConfigEntry {
                    name: (*key).to_string(),
                    value,
                    is_default,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_kafkas() {
        let c = LogConfig::default();
        assert_eq!(c.segment_bytes, 1 << 30);
        assert_eq!(c.retention_ms, 604_800_000);
        assert_eq!(c.max_message_bytes, 1_048_588);
        assert!(c.entries().iter().all(|e| e.is_default));
        assert_eq!(c.entries().len(), KNOWN_KEYS.len());
        c.validate().unwrap();
    }

    #[test]
    fn set_by_kafka_name() {
        let mut c = LogConfig::default();
        c.set("segment.bytes", "1048576").unwrap();
        c.set("retention.ms", "-1").unwrap();
        c.set("message.timestamp.type", "LogAppendTime").unwrap();
        c.set("fsync.policy", "interval:250").unwrap();
        c.set("preallocate", "false").unwrap();
        assert_eq!(c.segment_bytes, 1_048_576);
        assert_eq!(c.retention_ms, -1);
        assert_eq!(c.message_timestamp_type, TimestampType::LogAppendTime);
        assert_eq!(c.fsync, FsyncPolicy::Interval(Duration::from_millis(250)));
        assert!(!c.preallocate);
        let e = c.entries();
        let seg = e.iter().find(|e| e.name == "segment.bytes").unwrap();
        assert_eq!(seg.value, "1048576");
        assert!(!seg.is_default);
        let fs = e.iter().find(|e| e.name == "fsync.policy").unwrap();
        assert_eq!(fs.value, "interval:250");
    }

    #[test]
    fn rejects_bad_values_naming_the_key() {
        let mut c = LogConfig::default();
        let before = c.clone();
        let err = c.set("cleanup.policy", "compress").unwrap_err();
        assert!(err.to_string().contains("cleanup.policy"), "{err}");
        assert!(c.set("cleanup.policy", "compact,forever").is_err());
        assert!(c.set("min.cleanable.dirty.ratio", "1.5").is_err());
        assert!(c.set("min.cleanable.dirty.ratio", "half").is_err());
        assert!(c.set("delete.retention.ms", "-1").is_err());
        assert!(c.set("max.compaction.lag.ms", "0").is_err());
        assert!(matches!(
            c.set("no.such.key", "1"),
            Err(ConfigError::UnknownKey(_))
        ));
        assert!(c.set("segment.bytes", "abc").is_err());
        assert!(c.set("segment.bytes", "5").is_err());
        assert!(c.set("retention.ms", "-2").is_err());
        assert!(c.set("fsync.policy", "interval:0").is_err());
        assert!(c.set("fsync.policy", "sometimes").is_err());
        assert!(c.set("preallocate", "yes").is_err());
        assert_eq!(c, before);
    }

    #[test]
    fn cleanup_policies_as_kafka_spells_them() {
        let mut c = LogConfig::default();
        for (given, policy, shown) in [
            ("compact", CleanupPolicy::Compact, "compact"),
            (
                "compact,delete",
                CleanupPolicy::CompactDelete,
                "compact,delete",
            ),
            (
                "delete, compact",
                CleanupPolicy::CompactDelete,
                "compact,delete",
            ),
            ("delete", CleanupPolicy::Delete, "delete"),
        ] {
            c.set("cleanup.policy", given).unwrap();
            assert_eq!(c.cleanup_policy, policy, "{given}");
            assert_eq!(c.cleanup_policy.to_string(), shown);
        }
        assert!(CleanupPolicy::Compact.compacts() && !CleanupPolicy::Compact.deletes());
        assert!(CleanupPolicy::CompactDelete.compacts() && CleanupPolicy::CompactDelete.deletes());
        c.set("min.cleanable.dirty.ratio", "0.25").unwrap();
        c.set("delete.retention.ms", "100").unwrap();
        c.set("min.compaction.lag.ms", "5").unwrap();
        c.set("max.compaction.lag.ms", "60000").unwrap();
        assert_eq!(c.min_cleanable_dirty_ratio, 0.25);
        assert_eq!(
            (
                c.delete_retention_ms,
                c.min_compaction_lag_ms,
                c.max_compaction_lag_ms
            ),
            (100, 5, 60_000)
        );
        c.validate().unwrap();
    }

    #[test]
    fn fsync_policy_round_trips() {
        for s in ["always", "never", "interval:1000"] {
            let p: FsyncPolicy = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
        }
    }

    #[test]
    fn serde_uses_the_same_strings() {
        let c = LogConfig {
            fsync: FsyncPolicy::Interval(Duration::from_millis(5)),
            ..LogConfig::default()
        };
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains("\"interval:5\""), "{json}");
        let back: LogConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        let bad = json.replace("\"delete\"", "\"compress\"");
        assert!(serde_json::from_str::<LogConfig>(&bad).is_err());
    }
}
