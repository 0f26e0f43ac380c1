//! Topics read as streams: RabbitMQ's stream queues on top of the topic log.
//!
//! A stream *is* a topic. Declaring one (AMQP `x-queue-type=stream`) creates a one-partition
//! topic of that name, or reuses the topic that has it, with RabbitMQ's retention arguments
//! mapped to the topic's Kafka configs (`x-max-length-bytes` -> `retention.bytes`, `x-max-age`
//! -> `retention.ms`, `x-stream-max-segment-size-bytes` -> `segment.bytes`). Kafka clients
//! produce to and fetch from it as from any topic, and any topic can be read as a stream.
//!
//! A [`StreamReader`] is a non-destructive cursor: per partition, the next offset to hand out
//! and at most one decoded read chunk of look-ahead (so a small prefetch does not decode the
//! same batch over and over). It holds nothing per delivered message: the adapter's acks only
//! return credit, as in RabbitMQ. The start point is resolved once per partition when the
//! reader opens ([`StreamStart`]); offsets are the partition's own Kafka offsets, so on a
//! one-partition stream they are exactly RabbitMQ's stream offsets. Records of each partition
//! come out in offset order; partitions are interleaved round-robin.
//!
//! Waiting is long-poll style on the partitions' high watermarks: only durable records are
//! read, and [`StreamReader::wait`] resolves when any partition moves. The core sends no
//! notification when a topic is deleted or grows, so every poll re-reads the topic registry
//! (an `Arc` clone) and the adapter also polls at a slow tick.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::LazyLock;

use bytes::{Buf, Bytes};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::routing::EXCHANGE_HEADER;
use super::topic_router::{partition_for_key, SOURCE_HEADER};
use super::{BrokerCore, BrokerError, Topic};
use crate::log::{LogError, PartitionHandle, PendingAppend, SimpleRecord};

/// Bytes of log read per partition and poll.
const READ_CHUNK: usize = 256 * 1024;

/// Where a stream reader starts in each partition (RabbitMQ's `x-stream-offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamStart {
    /// The oldest record still in the log.
    First,
    /// The start of the newest batch (RabbitMQ: the last chunk).
    Last,
    /// Only records appended from now on (RabbitMQ's default).
    Next,
    /// This offset in every partition, clamped to what the log holds.
    Offset(i64),
    /// The first record with a timestamp at or after this many ms since the epoch.
    Timestamp(i64),
}

/// RabbitMQ's stream retention arguments, already validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamSettings {
    /// `x-max-length-bytes`.
    pub max_length_bytes: Option<u64>,
    /// `x-max-age`, in ms.
    pub max_age_ms: Option<i64>,
    /// `x-stream-max-segment-size-bytes`.
    pub max_segment_size_bytes: Option<u64>,
}

impl StreamSettings {
    /// The topic config overrides these settings stand for, by Kafka name.
    pub fn topic_configs(&self) -> BTreeMap<String, String> {
        let mut c = BTreeMap::new();
        if let Some(b) = self.max_length_bytes {
            c.insert("retention.bytes".to_string(), b.to_string());
        }
        if let Some(ms) = self.max_age_ms {
            c.insert("retention.ms".to_string(), ms.to_string());
        }
        if let Some(b) = self.max_segment_size_bytes {
            c.insert("segment.bytes".to_string(), b.to_string());
        }
        c
    }
}

/// Parses RabbitMQ's age strings (`x-max-age`, interval `x-stream-offset`): a positive whole
/// number followed by one unit of `Y` (365 days), `M` (30 days), `D`, `h`, `m` or `s`.
/// Returns milliseconds.
pub fn parse_age(s: &str) -> Option<i64> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = s.split_at(split);
    let n: i64 = digits.parse().ok().filter(|n| *n > 0)?;
    const DAY: i64 = 24 * 3600 * 1000;
    let ms = match unit {
        "Y" => 365 * DAY,
        "M" => 30 * DAY,
        "D" => DAY,
        "h" => 3600 * 1000,
        "m" => 60 * 1000,
        "s" => 1000,
        _ => return None,
    };
    n.checked_mul(ms)
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("no stream `{0}`")]
    NotFound(String),
    #[error("inequivalent arg '{arg}' for stream '{name}': received {received} but current is {current}")]
    Inequivalent {
        name: String,
        arg: String,
        received: String,
        current: String,
    },
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Log(#[from] LogError),
}

/// What a stream declaration (or a passive check) reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamInfo {
    /// Records in the log, over all partitions (RabbitMQ counts a stream's messages the same
    /// way: consuming does not remove them).
    pub message_count: u64,
    /// Stream readers open on the topic.
    pub consumer_count: u32,
}

/// Open readers per topic id. Topic ids are random per topic, so one map serves every core in
/// the process (tests run several) and a re-created topic starts from zero.
static READERS: LazyLock<Mutex<HashMap<[u8; 16], u32>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

struct ReaderCount([u8; 16]);

impl ReaderCount {
    fn new(id: [u8; 16]) -> Self {
        *READERS.lock().entry(id).or_default() += 1;
        ReaderCount(id)
    }
}

impl Drop for ReaderCount {
    fn drop(&mut self) {
        let mut all = READERS.lock();
        if let Some(n) = all.get_mut(&self.0) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                all.remove(&self.0);
            }
        }
    }
}

fn info_of(topic: &Topic) -> StreamInfo {
    let message_count = topic
        .partitions()
        .iter()
        .map(|p| (p.high_watermark() - p.log_start_offset()).max(0) as u64)
        .sum();
    let consumer_count = READERS.lock().get(&topic.topic_id()).copied().unwrap_or(0);
    StreamInfo {
        message_count,
        consumer_count,
    }
}

impl BrokerCore {
    /// Declares stream `name`: creates a one-partition topic with `settings` as its retention,
    /// or checks that the existing topic of that name has the retention asked for.
    pub async fn declare_stream(
        &self,
        name: &str,
        settings: &StreamSettings,
    ) -> Result<StreamInfo, StreamError> {
        let wanted = settings.topic_configs();
        if self.topic(name).is_none() {
            match self.create_topic(name, 1, wanted.clone()).await {
                Ok(_) | Err(BrokerError::TopicExists(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let topic = self
            .topic(name)
            .ok_or_else(|| StreamError::NotFound(name.to_string()))?;
        for (key, value) in &wanted {
            let current = topic.config_overrides().get(key);
            if current != Some(value) {
                let arg = match key.as_str() {
                    "retention.bytes" => "x-max-length-bytes",
                    "retention.ms" => "x-max-age",
                    _ => "x-stream-max-segment-size-bytes",
                };
                return Err(StreamError::Inequivalent {
                    name: name.to_string(),
                    arg: arg.to_string(),
                    received: format!("'{key}={value}'"),
                    current: current.map_or_else(|| "none".to_string(), |c| format!("'{key}={c}'")),
                });
            }
        }
        Ok(info_of(&topic))
    }

    /// Message and reader counts of the topic `name`, if it exists.
    pub fn stream_info(&self, name: &str) -> Option<StreamInfo> {
        self.topic(name).map(|t| info_of(&t))
    }

    /// Appends a record to stream `name` (a publish to the default exchange with the stream's
    /// name as routing key), keeping the record's `ferry.exchange` header so readers see the
    /// exchange it was published to. The partition comes from the key, as for Kafka.
    pub async fn stream_append(
        &self,
        name: &str,
        record: SimpleRecord,
    ) -> Result<PendingAppend, StreamError> {
        let topic = self
            .topic(name)
            .ok_or_else(|| StreamError::NotFound(name.to_string()))?;
        let partition = match record.key.as_deref() {
            Some(k) if !k.is_empty() => partition_for_key(k, topic.partition_count()),
            _ => 0,
        };
        let log = topic
            .partition(partition)
            .ok_or_else(|| StreamError::NotFound(name.to_string()))?;
        let batch = crate::log::try_encode_batch(
            std::slice::from_ref(&record),
            &crate::log::EncodeOptions::default(),
        )?;
        Ok(log.submit_append(batch).await?)
    }
}

/// One record handed out by a [`StreamReader`].
#[derive(Debug, Clone)]
pub struct StreamRecord {
    pub partition: i32,
    pub offset: i64,
    /// The stored record. Records without a `ferry.exchange` header (Kafka-produced, or
    /// appended through the topic's exchange face) get one naming the topic, so they read like
    /// the copies the topic router puts into bound queues.
    pub record: SimpleRecord,
}

struct Cursor {
    /// The partition's number in its topic.
    partition: i32,
    log: PartitionHandle,
    hw: watch::Receiver<i64>,
    /// Next offset to read from the log.
    next: i64,
    /// Decoded records at or after the position, not yet handed out.
    ahead: VecDeque<StreamRecord>,
}

/// A non-destructive reader over every partition of a topic; see the module docs.
pub struct StreamReader {
    core: BrokerCore,
    name: String,
    topic_id: [u8; 16],
    partitions: usize,
    cursors: Vec<Cursor>,
    /// Partition polled first next time, so one busy partition cannot starve the others.
    turn: usize,
    /// Reads only the partitions it was opened with (a consumer-group member's assignment);
    /// partitions added later are someone else's until the next assignment.
    assigned_only: bool,
    _count: ReaderCount,
}

impl StreamReader {
    /// Opens a reader on topic `name`, positioned per `start` in each partition.
    pub fn open(core: &BrokerCore, name: &str, start: StreamStart) -> Result<Self, StreamError> {
        let topic = core
            .topic(name)
            .ok_or_else(|| StreamError::NotFound(name.to_string()))?;
        let mut cursors = Vec::with_capacity(topic.partition_count());
        for (p, log) in topic.partitions().iter().enumerate() {
            let next = start_offset(log, start)?;
            cursors.push(Cursor {
                partition: p as i32,
                hw: log.subscribe_high_watermark(),
                log: log.clone(),
                next,
                ahead: VecDeque::new(),
            });
        }
        Ok(StreamReader {
            core: core.clone(),
            name: name.to_string(),
            topic_id: topic.topic_id(),
            partitions: topic.partition_count(),
            cursors,
            turn: 0,
            assigned_only: false,
            _count: ReaderCount::new(topic.topic_id()),
        })
    }

    /// Opens a reader on some partitions of topic `name` only, each at its own start (a
    /// consumer-group member's assignment, at its committed offsets). A partition the topic
    /// does not have is [`StreamError::NotFound`].
    pub fn open_partitions(
        core: &BrokerCore,
        name: &str,
        starts: &[(i32, StreamStart)],
    ) -> Result<Self, StreamError> {
        let topic = core
            .topic(name)
            .ok_or_else(|| StreamError::NotFound(name.to_string()))?;
        let mut cursors = Vec::with_capacity(starts.len());
        for &(partition, start) in starts {
            let log = usize::try_from(partition)
                .ok()
                .and_then(|p| topic.partitions().get(p))
                .ok_or_else(|| StreamError::NotFound(format!("{name}/{partition}")))?;
            cursors.push(Cursor {
                partition,
                hw: log.subscribe_high_watermark(),
                next: start_offset(log, start)?,
                log: log.clone(),
                ahead: VecDeque::new(),
            });
        }
        Ok(StreamReader {
            core: core.clone(),
            name: name.to_string(),
            topic_id: topic.topic_id(),
            partitions: cursors.len(),
            cursors,
            turn: 0,
            assigned_only: true,
            _count: ReaderCount::new(topic.topic_id()),
        })
    }

    /// Makes a reader opened with [`Self::open_partitions`] on partitions `0..n`, in order,
    /// also read partitions added to the topic later, from their start: a reader that owns
    /// the whole topic (a bridge's topic source) rather than one member's assignment.
    pub fn follow_new_partitions(mut self) -> Self {
        let in_order = self
            .cursors
            .iter()
            .enumerate()
            .all(|(i, c)| c.partition == i as i32);
        self.assigned_only = !in_order;
        self
    }

    /// The next offset this reader hands out in each of its partitions.
    pub fn positions(&self) -> Vec<(i32, i64)> {
        self.cursors
            .iter()
            .map(|c| (c.partition, c.ahead.front().map_or(c.next, |r| r.offset)))
            .collect()
    }

    /// The topic read.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Partitions read (a topic may grow while read).
    pub fn partition_count(&self) -> usize {
        self.partitions
    }

    /// Checks the topic still exists (the same one, not a re-created namesake) and picks up
    /// partitions added since the last poll; they are read from their start.
    fn refresh(&mut self) -> Result<(), StreamError> {
        let topic = self
            .core
            .topic(&self.name)
            .filter(|t| t.topic_id() == self.topic_id)
            .ok_or_else(|| StreamError::NotFound(self.name.clone()))?;
        if self.assigned_only {
            return Ok(());
        }
        for (p, log) in topic
            .partitions()
            .iter()
            .enumerate()
            .skip(self.cursors.len())
        {
            self.cursors.push(Cursor {
                partition: p as i32,
                hw: log.subscribe_high_watermark(),
                next: log.log_start_offset(),
                log: log.clone(),
                ahead: VecDeque::new(),
            });
        }
        self.partitions = self.cursors.len();
        Ok(())
    }

    /// Up to `max` records that are readable now, in offset order within each partition.
    /// [`StreamError::NotFound`] once the topic is gone.
    pub fn poll(&mut self, max: usize) -> Result<Vec<StreamRecord>, StreamError> {
        self.refresh()?;
        let mut out = Vec::new();
        let n = self.cursors.len();
        if n == 0 || max == 0 {
            return Ok(out);
        }
        // Round-robin, one chunk's worth per partition per turn.
        let mut idle = 0;
        while out.len() < max && idle < n {
            let p = self.turn % n;
            self.turn = self.turn.wrapping_add(1);
            let before = out.len();
            let name = self.name.clone();
            fill(&mut self.cursors[p], &name)?;
            let c = &mut self.cursors[p];
            while out.len() < max {
                match c.ahead.pop_front() {
                    Some(r) => out.push(r),
                    None => break,
                }
            }
            idle = if out.len() == before { idle + 1 } else { 0 };
        }
        Ok(out)
    }

    /// Resolves once some partition's high watermark moved since the last [`Self::poll`].
    /// Never resolves for a topic without partitions; callers also wake on a timer.
    pub async fn wait(&mut self) {
        if self
            .cursors
            .iter()
            .any(|c| !c.ahead.is_empty() || c.next < c.log.last_stable_offset())
        {
            return;
        }
        if self.cursors.is_empty() {
            std::future::pending::<()>().await;
        }
        let waits = self.cursors.iter_mut().map(|c| Box::pin(c.hw.changed()));
        // A closed watch (partition shut down) resolves at once; the next poll's refresh
        // then reports the topic gone.
        let _ = futures::future::select_all(waits).await;
    }
}

/// Where a reader starts in one partition.
fn start_offset(log: &PartitionHandle, start: StreamStart) -> Result<i64, StreamError> {
    let first = log.log_start_offset();
    let end = log.high_watermark().max(first);
    Ok(match start {
        StreamStart::First => first,
        StreamStart::Next => end,
        StreamStart::Offset(o) => o.clamp(first, end),
        StreamStart::Last => {
            if end > first {
                // A read returns whole batches from the one holding the offset asked for.
                log.read(end - 1, 1)?.first_offset.clamp(first, end)
            } else {
                end
            }
        }
        StreamStart::Timestamp(ms) => match log.offset_for_timestamp(ms)? {
            Some((o, _)) => o.clamp(first, end),
            None => end,
        },
    })
}

/// Decodes the next chunk of a partition into its look-ahead when that is empty.
fn fill(c: &mut Cursor, topic: &str) -> Result<(), StreamError> {
    let partition = c.partition;
    // Mark the watermark seen before reading, so an append after the read wakes `wait`.
    c.hw.borrow_and_update();
    if !c.ahead.is_empty() {
        return Ok(());
    }
    // Retention may have removed what the reader had not reached yet: go on from the start.
    c.next = c.next.max(c.log.log_start_offset());
    // Stream readers see committed records only: up to the last stable offset, without
    // aborted transactions' batches.
    if c.next >= c.log.last_stable_offset() {
        return Ok(());
    }
    let (slice, aborted) = match c.log.read_committed(c.next, READ_CHUNK) {
        Ok(s) => s,
        Err(LogError::OffsetOutOfRange { log_start, .. }) => {
            c.next = log_start;
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    if slice.bytes.is_empty() || slice.next_offset <= c.next {
        // Nothing readable below the watermark (a gap): skip it rather than spin on it.
        tracing::warn!(
            topic,
            partition,
            offset = c.next,
            "nothing readable below the last stable offset; skipping"
        );
        c.next = c.log.last_stable_offset();
        return Ok(());
    }
    let mut buf: Bytes = slice.bytes.clone();
    while buf.has_remaining() {
        let header = crate::log::BatchHeader::parse(&buf).ok();
        let records = match crate::log::batch::decode_next_batch(&mut buf) {
            Ok(records) => records,
            Err(e) => {
                tracing::warn!(topic, partition, offset = c.next, error = %e, "undecodable batch in a stream; skipping it");
                break;
            }
        };
        if header.is_some_and(|h| crate::log::txn_index::is_aborted(&aborted, &h)) {
            continue;
        }
        for crate::log::batch::StoredRecord {
            offset,
            is_control,
            record: r,
        } in records
        {
            if offset < c.next || is_control {
                continue;
            }
            let mut headers: Vec<(String, Option<Bytes>)> = Vec::with_capacity(r.headers.len());
            let mut has_exchange = false;
            for (k, v) in r.headers {
                has_exchange |= k == EXCHANGE_HEADER;
                if k != SOURCE_HEADER {
                    headers.push((k, v));
                }
            }
            if !has_exchange {
                headers.push((
                    EXCHANGE_HEADER.to_string(),
                    Some(Bytes::copy_from_slice(topic.as_bytes())),
                ));
            }
            c.ahead.push_back(StreamRecord {
                partition,
                offset,
                record: SimpleRecord {
                    key: r.key,
                    value: r.value,
                    headers,
                    timestamp: r.timestamp,
                },
            });
        }
    }
    // Whole batches were read, so the slice end is the next batch boundary (a batch that
    // failed to decode is skipped with it).
    c.next = slice.next_offset;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_follow_rabbitmq() {
        assert_eq!(parse_age("1h"), Some(3_600_000));
        assert_eq!(parse_age("7D"), Some(7 * 86_400_000));
        assert_eq!(parse_age("2M"), Some(60 * 86_400_000));
        assert_eq!(parse_age("1Y"), Some(365 * 86_400_000));
        assert_eq!(parse_age("30s"), Some(30_000));
        assert_eq!(parse_age("5m"), Some(300_000));
        for bad in ["", "h", "0h", "1", "1x", "1hh", "-1h", "1.5h", "first"] {
            assert_eq!(parse_age(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn settings_map_to_topic_configs() {
        let s = StreamSettings {
            max_length_bytes: Some(1000),
            max_age_ms: Some(60_000),
            max_segment_size_bytes: Some(4096),
        };
        let c = s.topic_configs();
        assert_eq!(c["retention.bytes"], "1000");
        assert_eq!(c["retention.ms"], "60000");
        assert_eq!(c["segment.bytes"], "4096");
        assert!(StreamSettings::default().topic_configs().is_empty());
    }
}
