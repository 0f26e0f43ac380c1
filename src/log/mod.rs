//! The segmented log: where every message Ferry accepts ends up, whatever protocol brought it.
//!
//! A partition is a directory of segments. Each segment is a `.log` file holding Kafka record
//! batch v2 bytes exactly as a Kafka broker stores them, plus a sparse offset index (`.index`) and
//! a sparse time index (`.timeindex`) in Kafka's on-disk formats. Batches are validated (framing,
//! magic, CRC-32C) and appended without re-encoding: only the base offset, and for
//! `LogAppendTime` topics the max timestamp and CRC, are patched in place.
//!
//! The layers, bottom up:
//! - [`batch`]: pure functions over record-batch bytes (header view, validation, offset patching).
//! - [`index`] / [`time_index`]: the two sparse indexes, in memory plus an append-only file.
//! - [`segment`]: one `.log` file with its indexes; positional reads and writes.
//! - [`partition_log`]: [`PartitionLog`], the synchronous single-owner log (append, read, roll,
//!   retention, close). [`recovery`] rebuilds it from disk on open; [`retention`] decides what to
//!   delete.
//! - [`writer`]: [`PartitionHandle`], the async face with a writer task per written partition
//!   doing group commit, and the high watermark readers are bounded by.
//! - [`cleaner`]: log compaction (`cleanup.policy=compact`), run pass by pass through
//!   [`PartitionHandle::clean`].
//!
//! Errors are one enum, [`LogError`], whose variants stay distinct because the protocol adapters
//! map them to different Kafka error codes and AMQP reply codes.

pub mod batch;
mod batch_records;
pub mod cleaner;
mod cleaner_run;
pub mod config;
pub mod index;
pub mod open_files;
pub mod partition_log;
pub mod producer_state;
pub mod recovery;
pub mod retention;
pub mod segment;
pub mod time_index;
pub mod txn_index;
pub mod writer;

pub use batch::{
    encode_batch, encode_control_batch, set_base_offset, try_encode_batch, validate_batch,
    BatchHeader, BatchIter, BatchStop, EncodeOptions, SimpleRecord,
};
pub use cleaner::OffsetMap;
pub use cleaner_run::CleanReport;
pub use config::{
    CleanupPolicy, ConfigEntry, ConfigError, FsyncPolicy, LogConfig, TimestampType, KNOWN_KEYS,
};
pub use index::OffsetIndex;
pub use open_files::{FileCache, LazyFile};
pub use partition_log::{AppendInfo, FileSpan, LogSlice, LogSpans, PartitionLog, RetentionReport};
pub use producer_state::ProducerSummary;
pub use recovery::RecoveryReport;
pub use segment::Segment;
pub use time_index::TimeIndex;
pub use txn_index::{AbortedTxn, ControlKind};
pub use writer::{LogLabels, PartitionHandle, PendingAppend, TrySubmit};

/// Everything that can go wrong in the log layer.
///
/// Kept deliberately fine-grained: `InvalidBatch` maps to Kafka `INVALID_RECORD`/`CORRUPT_MESSAGE`
/// differently from `CorruptBatch`, `MessageTooLarge` to `MESSAGE_TOO_LARGE`, `OffsetOutOfRange`
/// to `OFFSET_OUT_OF_RANGE`, and `FailStopped` / `Io` to `KAFKA_STORAGE_ERROR`.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// An operating-system I/O error, with what the log was doing at the time.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, including the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Bytes that are not a well-framed record batch v2 (bad magic, length, truncated, empty).
    #[error("invalid record batch: {0}")]
    InvalidBatch(String),
    /// A well-framed batch whose CRC-32C does not match its contents.
    #[error("corrupt record batch: {0}")]
    CorruptBatch(String),
    /// One batch is larger than `max.message.bytes`.
    #[error("record batch of {size} bytes exceeds max.message.bytes {max}")]
    MessageTooLarge {
        /// Size of the offending batch in bytes.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// A read or lookup outside `[log_start, log_end]`.
    #[error("offset {offset} out of range [{log_start}, {log_end}]")]
    OffsetOutOfRange {
        /// The requested offset.
        offset: i64,
        /// First offset still in the log.
        log_start: i64,
        /// Next offset to be written.
        log_end: i64,
    },
    /// A write or fsync failed earlier; the partition refuses everything until reopened, because
    /// after a failed fsync the kernel may have dropped dirty pages and the file content is unknown.
    #[error("partition log is fail-stopped: {0}")]
    FailStopped(String),
    /// The log (or its writer task) has been closed.
    #[error("partition log is closed")]
    Closed,
    /// A configuration value was rejected.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A record the topic cannot take, though the batch is well formed: a record without a key
    /// on a compacted topic (Kafka's INVALID_RECORD).
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    /// An idempotent producer's batch does not follow its previous one (a gap or reordering).
    #[error("producer {producer_id}: sequence {received} is out of order (expected {expected})")]
    OutOfOrderSequence {
        /// The producer id.
        producer_id: i64,
        /// The sequence the log expected next.
        expected: i32,
        /// The sequence the batch carried.
        received: i32,
    },
    /// A batch from an older epoch of a producer id that has moved on (a zombie producer).
    #[error("producer {producer_id}: epoch {epoch} is fenced by epoch {current}")]
    InvalidProducerEpoch {
        /// The producer id.
        producer_id: i64,
        /// The batch's epoch.
        epoch: i16,
        /// The newest epoch seen.
        current: i16,
    },
    /// A producer id with no state in this partition sent a batch not starting at sequence 0.
    #[error("producer {0} is unknown to this partition (its state expired or never existed)")]
    UnknownProducerId(i64),
}

impl LogError {
    /// What a client may be told. An I/O failure keeps only its kind (the context names
    /// files, which are the operator's business, not a peer's) and is logged in full, with its
    /// cause, as it is turned into an answer; other errors are already free of paths.
    pub fn client_message(&self) -> String {
        match self {
            LogError::Io { source, .. } => {
                tracing::error!(error = %self, "storage error");
                format!("storage error: {}", source.kind())
            }
            LogError::FailStopped(_) => {
                tracing::error!(error = %self, "storage error");
                "partition log stopped after a storage error".into()
            }
            other => other.to_string(),
        }
    }
}

impl LogError {
    /// Wraps an I/O error with what was being attempted.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        LogError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result alias for the log layer.
pub type Result<T, E = LogError> = std::result::Result<T, E>;
