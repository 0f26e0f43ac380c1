//! A message queue as a log with cursors (ARCHITECTURE rule 4, the LavinMQ model).
//!
//! Every queue owns one [`PartitionHandle`]: publishing appends a record batch, and nothing in
//! the log is ever rewritten. What a queue adds on top is *delivery state*, kept in memory and,
//! for durable queues, written to the meta store a few ms after it changes ([`StateFlusher`]
//! coalesces the writes; an older state only ever redelivers, never loses):
//!
//! - `next`: the cursor, the first offset never handed to a consumer. Offsets from `next` up to
//!   the log's high watermark are the fresh ready messages.
//! - `unacked`: offsets handed out and not yet settled.
//! - `requeued`: offsets handed out once and given back (nack/reject with requeue, a closed
//!   channel); they are delivered again, before fresh ones, with `redelivered` set.
//!
//! Every offset below `next` that is in neither set is *settled* (acked, rejected, purged). The
//! low-water mark is therefore `min(unacked ∪ requeued ∪ {next})`, and the persisted state is the
//! cursor plus the *unsettled* offsets below it, stored as ranges. We persist the unsettled set
//! rather than the settled holes above the low-water mark because it is bounded by the
//! consumers' prefetch plus what was requeued, and it is usually a handful of short ranges; the
//! two describe the same thing. After a restart every persisted unsettled offset becomes
//! `requeued`, so exactly the unacked-and-unsettled messages come back, flagged redelivered, and
//! acked ones never do.
//!
//! Queue arguments act on that state, not on the log: `x-message-ttl` settles (or
//! dead-letters) the ready messages older than the TTL, found with the log's time index; a
//! message's own TTL ([`TTL_HEADER`]) expires it only once it is the head, as in RabbitMQ;
//! `x-max-length` and `x-max-length-bytes` drop from the head (`drop-head`), or with
//! `x-overflow` reject-publish(-dlx) refuse new messages at [`Queue::submit`]. All of them run
//! before every claim and count, so a client never sees a message the limits have removed, and
//! a maintenance task in the router runs them on a timer for queues nobody reads (and deletes
//! queues whose `x-expires` ran out). Messages bound for a dead-letter exchange stay *unacked*
//! until their copy is durable in the target queues, so a crash in between redelivers rather
//! than loses.
//!
//! `x-delivery-limit` counts how often each message came back (`returns` in the state, 12
//! bytes per returned message in the persisted form, so the count survives a restart). A
//! priority queue (`x-max-priority`) keeps a bounded in-memory index of its oldest ready
//! messages by priority (a window of `PRIORITY_WINDOW` messages); bodies stay in the log. Consumers register
//! with a priority, and the queue decides which may take (consumer priorities, single active
//! consumer).
//!
//! Once every message in a segment is settled (the low-water mark passed the next segment's
//! base offset), the segment's files are deleted ([`PartitionHandle::delete_segments_below`]),
//! so a queue's disk use follows its backlog rather than its history.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use bytes::{Buf, BufMut, BytesMut};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::breaker::{Breaker, BreakerPolicy, BreakerState};
use super::dedup::{DedupCache, DedupPolicy};
use super::retry::{RetryPolicy, ReturnKind};
use crate::log::{LogError, PartitionHandle, PendingAppend, SimpleRecord};
use crate::meta::{Meta, QueueDef};

/// Version byte of the persisted delivery state without delivery counts.
const STATE_V1: u8 = 1;
/// Version byte of the state with delivery counts appended.
const STATE_V2: u8 = 2;
/// Version byte of the state with delivery counts and delayed retries (due times) appended.
const STATE_V3: u8 = 3;

/// How many bytes of log one read asks for when fetching messages for delivery.
const READ_CHUNK: usize = 256 * 1024;

/// Why a message left its queue without being acked (RabbitMQ's x-death reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    Rejected,
    Expired,
    MaxLen,
    DeliveryLimit,
}

impl DeathReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
            DeathReason::MaxLen => "maxlen",
            DeathReason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// Record header (protocol-neutral) with a message's own time-to-live in milliseconds, as
/// decimal ASCII; AMQP's `expiration` property is stored here. Counted from the record's
/// timestamp (its enqueue time), like `x-message-ttl`.
pub const TTL_HEADER: &str = "ferry.ttl";

/// Record header (protocol-neutral) with a message's priority, decimal ASCII 0-255; AMQP's
/// `priority` property is stored here. Priority queues order delivery by it.
pub const PRIORITY_HEADER: &str = "ferry.priority";

/// How many ready messages of a priority queue are held in its in-memory priority index.
/// Messages beyond the window wait in the log in arrival order and enter the index as it
/// drains, so the index costs at most about 60 bytes x 64 Ki = 4 MiB per queue however long
/// the queue grows (plus one byte per appended-but-not-indexed message for its priority);
/// priority order is exact among the oldest 64 Ki ready messages.
const PRIORITY_WINDOW: usize = 64 * 1024;

/// A quorum queue's `x-delivery-limit` when none is given (RabbitMQ 4.0's default).
const QUORUM_DEFAULT_DELIVERY_LIMIT: u32 = 20;

/// What a queue does with a publish that finds it full (`x-overflow`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest ready messages: RabbitMQ's default.
    #[default]
    DropHead,
    /// Refuse the new message (a publisher in confirm mode gets basic.nack).
    RejectPublish,
    /// Refuse it and dead-letter it with reason `maxlen`.
    RejectPublishDlx,
}

/// The queue arguments the core acts on, parsed from the declaration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueLimits {
    /// `x-message-ttl`: milliseconds a message may wait in the queue.
    pub message_ttl_ms: Option<i64>,
    /// `x-max-length`: ready messages kept.
    pub max_length: Option<u64>,
    /// `x-max-length-bytes`: total body bytes of the ready messages kept.
    pub max_length_bytes: Option<u64>,
    /// `x-overflow`.
    pub overflow: Overflow,
    /// `x-dead-letter-exchange`.
    pub dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`; `None` keeps the message's routing key.
    pub dead_letter_routing_key: Option<String>,
    /// `x-expires`: the queue is deleted after this many milliseconds unused.
    pub expires_ms: Option<i64>,
    /// `x-delivery-limit`: a message returned to the queue more often than this is
    /// dead-lettered with reason `delivery_limit`.
    pub delivery_limit: Option<u32>,
    /// `x-queue-type=quorum`: a durable queue that also counts deliveries.
    pub quorum: bool,
    /// `x-single-active-consumer`: one consumer receives; the next takes over when it goes.
    pub single_active_consumer: bool,
    /// `x-max-priority`: a priority queue with levels 0..=max.
    pub max_priority: Option<u8>,
    /// `x-delayed-retry-*`: returned messages wait before they are ready again.
    pub retry: Option<RetryPolicy>,
    /// `x-message-deduplication`: repeats of a message id within a window are dropped.
    pub dedup: Option<DedupPolicy>,
    /// `x-circuit-breaker-*`: every consumer's breaker (consumer arguments override it).
    pub breaker: Option<BreakerPolicy>,
}

impl QueueLimits {
    /// Parses and validates the arguments RabbitMQ would; an error names the argument.
    pub fn from_arguments(args: &serde_json::Value) -> Result<QueueLimits, String> {
        let mut limits = QueueLimits::default();
        let Some(map) = args.as_object() else {
            return Ok(limits);
        };
        let mut delivery_limit: Option<Option<u32>> = None;
        let non_negative = |key: &str, v: &serde_json::Value| -> Result<u64, String> {
            v.as_u64()
                .ok_or_else(|| format!("invalid arg '{key}': {v} (must be a non-negative integer)"))
        };
        let string = |key: &str, v: &serde_json::Value| -> Result<String, String> {
            Ok(v.as_str()
                .ok_or_else(|| format!("invalid arg '{key}': must be a string"))?
                .to_string())
        };
        let millis = |key: &str, v: &serde_json::Value| -> Result<i64, String> {
            i64::try_from(non_negative(key, v)?)
                .map_err(|_| format!("invalid arg '{key}': too large"))
        };
        for (key, v) in map {
            match key.as_str() {
                "x-message-ttl" => limits.message_ttl_ms = Some(millis(key, v)?),
                "x-max-length" => limits.max_length = Some(non_negative(key, v)?),
                "x-max-length-bytes" => limits.max_length_bytes = Some(non_negative(key, v)?),
                "x-dead-letter-exchange" => limits.dead_letter_exchange = Some(string(key, v)?),
                "x-dead-letter-routing-key" => {
                    limits.dead_letter_routing_key = Some(string(key, v)?)
                }
                "x-overflow" => {
                    limits.overflow = match v.as_str() {
                        Some("drop-head") => Overflow::DropHead,
                        Some("reject-publish") => Overflow::RejectPublish,
                        Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
                        _ => return Err(format!("invalid arg 'x-overflow': {v}")),
                    }
                }
                "x-expires" => {
                    // RabbitMQ refuses 0: a queue that expires at once is a mistake.
                    let ms = millis(key, v)?;
                    if ms == 0 {
                        return Err("invalid arg 'x-expires': 0 (must be positive)".into());
                    }
                    limits.expires_ms = Some(ms);
                }
                "x-delivery-limit" => {
                    // RabbitMQ 4: a negative limit means unlimited.
                    delivery_limit = Some(match v.as_i64() {
                        Some(n) if n < 0 => None,
                        _ => Some(u32::try_from(non_negative(key, v)?).unwrap_or(u32::MAX)),
                    });
                }
                "x-queue-type" => match v.as_str() {
                    Some("classic") => {}
                    Some("quorum") => limits.quorum = true,
                    Some("stream") => {
                        return Err("arg 'x-queue-type' \"stream\" is not supported yet".into())
                    }
                    _ => return Err(format!("invalid arg 'x-queue-type': {v}")),
                },
                "x-max-priority" => {
                    // RabbitMQ refuses more than 255 levels (a priority is one byte).
                    let max = non_negative(key, v)?;
                    limits.max_priority = Some(u8::try_from(max).map_err(|_| {
                        format!("invalid arg '{key}': {max} (must be at most 255)")
                    })?);
                }
                "x-single-active-consumer" => {
                    limits.single_active_consumer = v
                        .as_bool()
                        .ok_or_else(|| format!("invalid arg '{key}': {v} (must be a boolean)"))?
                }
                _ => {}
            }
        }
        limits.retry = RetryPolicy::from_arguments(map)?;
        limits.dedup = DedupPolicy::from_arguments(map)?;
        limits.breaker = BreakerPolicy::from_arguments(map)?;
        // Quorum queues default to a delivery limit of 20 (RabbitMQ 4.0), so a poison message
        // cannot loop forever, and so do queues with delayed retry (LavinMQ): retrying with
        // backoff forever would hide a poison message instead of dead-lettering it. Classic
        // queues have none unless asked.
        limits.delivery_limit = match delivery_limit {
            Some(explicit) => explicit,
            None if limits.quorum || limits.retry.is_some() => Some(QUORUM_DEFAULT_DELIVERY_LIMIT),
            None => None,
        };
        if limits.dead_letter_routing_key.is_some() && limits.dead_letter_exchange.is_none() {
            return Err(
                "invalid arg 'x-dead-letter-routing-key': needs x-dead-letter-exchange".into(),
            );
        }
        Ok(limits)
    }

    /// Whether the router must run a maintenance task for this queue.
    pub fn needs_maintenance(&self) -> bool {
        self.message_ttl_ms.is_some()
            || self.max_length.is_some()
            || self.max_length_bytes.is_some()
            || self.expires_ms.is_some()
            || self.retry.is_some()
            || self.breaker.is_some()
    }

    /// Whether returns are counted per message (for the delivery limit or the backoff).
    fn counts_returns(&self) -> bool {
        self.delivery_limit.is_some() || self.retry.is_some()
    }

    /// Whether the queue keeps the body size of every unsettled message (byte limits) and
    /// counts messages still being appended (reject-publish must see them).
    fn tracks_sizes(&self) -> bool {
        self.max_length_bytes.is_some()
            || (self.overflow != Overflow::DropHead && self.max_length.is_some())
    }
}

/// What [`Queue::submit`] did with a message.
#[derive(Debug)]
pub enum Submitted {
    /// Queued for append; resolves once durable.
    Appended(PendingAppend),
    /// The queue is full and its `x-overflow` rejects publishes (nothing appended).
    Full,
    /// A repeat of a message id inside the deduplication window (nothing appended).
    Duplicate,
}

/// A message read back from a queue for delivery.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// Offset in the queue's log: the queue-side identity of the delivery.
    pub offset: i64,
    /// Whether it was handed out before (requeued, or unacked at a restart).
    pub redelivered: bool,
    /// How often it was returned to the queue (counted for `x-delivery-limit`).
    pub delivery_count: u32,
    /// The stored record: routing key as key, body as value, properties as headers.
    pub record: SimpleRecord,
}

/// The delivery state described in the module docs.
#[derive(Debug, Default, Clone, PartialEq)]
struct DeliveryState {
    next: i64,
    unacked: BTreeSet<i64>,
    requeued: BTreeSet<i64>,
    /// How often each unsettled message was returned to the queue, for `x-delivery-limit`.
    /// Only messages returned at least once have an entry, so it is bounded by the unsettled
    /// set (usually by prefetch), not by the queue's length.
    returns: BTreeMap<i64, u32>,
    /// Returned messages waiting out a retry backoff: offset -> when they become ready (ms
    /// since the epoch). Unsettled, but neither ready nor unacked.
    delayed: BTreeMap<i64, i64>,
}

impl DeliveryState {
    /// Every offset below this is settled: the least of the cursor and the unsettled sets.
    fn low_water_mark(&self) -> i64 {
        let mut low = self.next;
        if let Some(o) = self.unacked.first() {
            low = low.min(*o);
        }
        if let Some(o) = self.requeued.first() {
            low = low.min(*o);
        }
        if let Some((o, _)) = self.delayed.first_key_value() {
            low = low.min(*o);
        }
        low
    }

    /// `[version u8][next i64][range count u32]([start i64][len u32])*` over the unsettled
    /// offsets, then (version 2) `[count u32]([offset i64][returns u32])*`: 12 bytes per
    /// message that was ever returned, nothing for the rest; then (version 3)
    /// `[count u32]([offset i64][due ms i64])*` for the messages waiting out a retry delay.
    fn encode(&self) -> Vec<u8> {
        let mut all: Vec<i64> = self
            .unacked
            .iter()
            .chain(&self.requeued)
            .chain(self.delayed.keys())
            .copied()
            .collect();
        all.sort_unstable();
        all.dedup();
        let mut ranges: Vec<(i64, u32)> = Vec::new();
        for o in all {
            match ranges.last_mut() {
                Some((start, len)) if *start + i64::from(*len) == o && *len < u32::MAX => *len += 1,
                _ => ranges.push((o, 1)),
            }
        }
        let mut buf = BytesMut::with_capacity(17 + ranges.len() * 12 + self.returns.len() * 12);
        let version = if !self.delayed.is_empty() {
            STATE_V3
        } else if !self.returns.is_empty() {
            STATE_V2
        } else {
            STATE_V1
        };
        buf.put_u8(version);
        buf.put_i64(self.next);
        buf.put_u32(ranges.len() as u32);
        for (start, len) in ranges {
            buf.put_i64(start);
            buf.put_u32(len);
        }
        if version >= STATE_V2 {
            buf.put_u32(self.returns.len() as u32);
            for (o, n) in &self.returns {
                buf.put_i64(*o);
                buf.put_u32(*n);
            }
        }
        if version >= STATE_V3 {
            buf.put_u32(self.delayed.len() as u32);
            for (o, due) in &self.delayed {
                buf.put_i64(*o);
                buf.put_i64(*due);
            }
        }
        buf.to_vec()
    }

    /// Decodes persisted state; every unsettled offset comes back as requeued. `None` on bytes
    /// this version cannot read (the caller then starts from the log's beginning, redelivering
    /// rather than losing).
    fn decode(raw: &[u8]) -> Option<DeliveryState> {
        let mut b = raw;
        if b.remaining() < 13 {
            return None;
        }
        let version = b.get_u8();
        if !(STATE_V1..=STATE_V3).contains(&version) {
            return None;
        }
        let next = b.get_i64();
        let n = b.get_u32() as usize;
        let ranges_len = n.checked_mul(12)?;
        if version == STATE_V1 && b.remaining() != ranges_len {
            return None;
        }
        if b.remaining() < ranges_len {
            return None;
        }
        let mut requeued = BTreeSet::new();
        for _ in 0..n {
            let start = b.get_i64();
            let len = b.get_u32();
            let end = start.checked_add(i64::from(len))?;
            // Unsettled offsets lie below the cursor; anything else is not our encoding.
            if start < 0 || end > next {
                return None;
            }
            requeued.extend(start..end);
        }
        let mut returns = BTreeMap::new();
        if version >= STATE_V2 {
            if b.remaining() < 4 {
                return None;
            }
            let m = b.get_u32() as usize;
            let len = m.checked_mul(12)?;
            if b.remaining() < len || (version == STATE_V2 && b.remaining() != len) {
                return None;
            }
            for _ in 0..m {
                let o = b.get_i64();
                let count = b.get_u32();
                if requeued.contains(&o) {
                    returns.insert(o, count);
                }
            }
        }
        let mut delayed = BTreeMap::new();
        if version >= STATE_V3 {
            if b.remaining() < 4 {
                return None;
            }
            let m = b.get_u32() as usize;
            if b.remaining() != m.checked_mul(16)? {
                return None;
            }
            for _ in 0..m {
                let o = b.get_i64();
                let due = b.get_i64();
                // A delayed message is unsettled; it waits again after a restart, not ready.
                if requeued.remove(&o) {
                    delayed.insert(o, due);
                }
            }
        }
        Some(DeliveryState {
            next,
            unacked: BTreeSet::new(),
            requeued,
            returns,
            delayed,
        })
    }
}

/// Body sizes of the unsettled messages, for `x-max-length-bytes` and for reject-publish (which
/// must count messages still on their way into the log). Kept only by queues with those
/// arguments: 12 bytes or so per unsettled message, bounded by the limits themselves.
#[derive(Debug, Default)]
struct Sizes {
    /// Sizes of appends submitted but not yet below the high watermark, in offset order: one
    /// writer per log keeps submit order and offset order the same.
    inflight: VecDeque<u32>,
    /// Every offset below this has its size in `by_offset` (if unsettled).
    known_upto: i64,
    by_offset: HashMap<i64, u32>,
    /// Body bytes of the ready messages (fresh and requeued).
    ready_bytes: u64,
}

/// The delivery order of a priority queue. Ready messages in the window (see
/// [`PRIORITY_WINDOW`]) are kept in `DeliveryState::requeued` (so persistence and counting
/// treat them like any ready message below the cursor) and, here, by priority level; delivery
/// takes the lowest offset of the highest non-empty level. Bodies are never copied: the index
/// holds offsets and one byte of priority each.
#[derive(Debug)]
struct PrioIndex {
    max: u8,
    /// Ready indexed offsets per priority level, in offset order.
    levels: Vec<BTreeSet<i64>>,
    /// Priority of every indexed unsettled message (ready or unacked), so a returned
    /// message goes back to its level.
    prio_of: HashMap<i64, u8>,
    /// Indexed messages never handed out (delivered with `redelivered` unset).
    fresh: HashSet<i64>,
    /// Priorities of messages from offset `base` on that are not indexed yet, in offset
    /// order: appends record them at submit, so indexing them needs no read.
    pending: VecDeque<u8>,
    base: i64,
    /// Ready offsets restored at open whose priorities must be read once.
    scan: bool,
}

impl PrioIndex {
    fn add(&mut self, o: i64, p: u8) {
        let p = p.min(self.max);
        self.prio_of.insert(o, p);
        self.levels[usize::from(p)].insert(o);
    }

    /// Makes an indexed message ready again (a return, a failed read).
    fn readd(&mut self, o: i64) {
        let p = self.prio_of.get(&o).copied().unwrap_or(0);
        self.add(o, p);
    }

    /// A ready message left the ready set without being delivered.
    fn unready(&mut self, o: i64) {
        if let Some(p) = self.prio_of.get(&o) {
            self.levels[usize::from(*p)].remove(&o);
        }
        self.fresh.remove(&o);
    }

    fn settle(&mut self, o: i64) {
        self.unready(o);
        self.prio_of.remove(&o);
    }

    fn pop_highest(&mut self) -> Option<i64> {
        self.levels.iter_mut().rev().find_map(|l| l.pop_first())
    }
}

fn record_priority(record: &SimpleRecord) -> u8 {
    record
        .headers
        .iter()
        .find(|(k, _)| k == PRIORITY_HEADER)
        .and_then(|(_, v)| std::str::from_utf8(v.as_ref()?).ok()?.parse().ok())
        .unwrap_or(0)
}

/// The ready message to be delivered next, which is where RabbitMQ expires and drops from:
/// the oldest ready message, or in a priority queue the oldest of the highest priority (so
/// there, as in RabbitMQ, a full queue drops high-priority messages first).
fn head_of(c: &Counters, hw: i64) -> Option<i64> {
    if let Some(ix) = &c.prio {
        if let Some(o) = ix.levels.iter().rev().find_map(|l| l.first().copied()) {
            return Some(o);
        }
    }
    match c.state.requeued.first() {
        Some(o) => Some(*o),
        None if c.state.next < hw => Some(c.state.next),
        None => None,
    }
}

/// Takes the head found by [`head_of`] out of the ready set.
fn remove_head(c: &mut Counters, head: i64) {
    if let Some(ix) = c.prio.as_mut() {
        ix.unready(head);
    }
    if !c.state.requeued.remove(&head) {
        c.state.next += 1;
    }
}

/// A registered consumer, as the queue sees it (for priorities and single active consumer).
#[derive(Debug)]
struct ConsumerSlot {
    id: u64,
    priority: i32,
    has_credit: bool,
    /// Present when the queue or the consumer's arguments enable a circuit breaker.
    breaker: Option<Breaker>,
}

struct Counters {
    state: DeliveryState,
    consumers: u32,
    /// Consumers in registration order.
    slots: Vec<ConsumerSlot>,
    next_consumer_id: u64,
    /// Present when the limits need body sizes (see [`Sizes`]).
    sizes: Option<Sizes>,
    /// Whether a ready message may carry its own TTL: set by such an append, and at open
    /// when messages are ready (we cannot know without reading them). While false, the head
    /// is never read for its expiry, so queues without per-message TTLs pay nothing.
    ttl_seen: bool,
    /// The head's per-message expiry, cached so each head is read once: (offset, expires at).
    head_expiry: Option<(i64, Option<i64>)>,
    /// Requeued offsets restored at open whose sizes were not read yet.
    scan_requeued: bool,
    /// Present for priority queues.
    prio: Option<PrioIndex>,
    /// The log end once every submitted append has landed: the log end at open plus one per
    /// submit (each is one record, and only submits append to a queue's log).
    appends_expected: i64,
    /// `state.delayed` ordered by due time, to release the due ones cheaply.
    delayed_by_due: BTreeSet<(i64, i64)>,
}

/// How long a changed delivery state waits before it is written, so a busy queue writes it
/// a few hundred times a second instead of twice per message.
pub const STATE_WRITE_DELAY: std::time::Duration = std::time::Duration::from_millis(5);

/// Coalesces delivery-state writes of durable queues. Writing the state to the meta store
/// after every take and ack cost a sled batch (and its write-buffer flush) per message: a
/// third of the broker's CPU in `ferry bench amqp`. Instead a queue marks itself dirty and the
/// router's flusher task writes each dirty queue's *current* state [`STATE_WRITE_DELAY`]
/// later, once for every change in between.
///
/// Writing later never loses a message, because an older state only ever describes more
/// work: its cursor is lower and its unsettled set is a superset of what was settled since
/// (anything acked after it was written is redelivered after a crash, at least once, like
/// RabbitMQ's acks, which are not confirmed to the consumer either). The window adds to the
/// meta store's own flush interval; a clean shutdown writes every dirty state.
#[derive(Clone, Default)]
pub struct StateFlusher {
    inner: std::sync::Arc<FlusherInner>,
}

#[derive(Default)]
struct FlusherInner {
    dirty: Mutex<HashSet<(String, String)>>,
    wake: tokio::sync::Notify,
}

impl StateFlusher {
    fn mark(&self, vhost: &str, name: &str) {
        self.inner
            .dirty
            .lock()
            .insert((vhost.to_string(), name.to_string()));
        self.inner.wake.notify_one();
    }

    /// Resolves when some queue's state changed.
    pub async fn changed(&self) {
        self.inner.wake.notified().await
    }

    /// The queues (vhost, name) whose state changed since the last call.
    pub fn take_dirty(&self) -> Vec<(String, String)> {
        self.inner.dirty.lock().drain().collect()
    }
}

/// What a queue is built from (see [`Queue::new`]).
pub(crate) struct QueueSetup {
    pub def: QueueDef,
    pub exclusive_owner: Option<u64>,
    pub log: PartitionHandle,
    pub dir: PathBuf,
    /// Where durable queues persist their delivery state; `None` for transient queues.
    pub meta: Option<Meta>,
    pub limits: QueueLimits,
    pub clock: crate::clock::Clock,
    /// Coalesces the writes of the delivery state; `None` writes after every change.
    pub flusher: Option<StateFlusher>,
}

/// One queue: its definition, its log and its delivery state.
pub struct Queue {
    def: QueueDef,
    /// Connection id owning an exclusive queue.
    exclusive_owner: Option<u64>,
    log: PartitionHandle,
    dir: PathBuf,
    /// Where durable queues persist their delivery state; `None` for transient queues.
    meta: Option<Meta>,
    inner: Mutex<Counters>,
    limits: QueueLimits,
    /// Messages the limits removed that wait to be dead-lettered (still unacked meanwhile).
    dead: Mutex<Vec<(i64, DeathReason)>>,
    /// Wakes the router's maintenance task (dead letters are waiting).
    maintenance: tokio::sync::Notify,
    clock: crate::clock::Clock,
    /// Bumped whenever messages become ready other than by an append (requeue), so push
    /// consumers waiting on the high watermark also wake for those.
    ready_tx: watch::Sender<u64>,
    deleted: AtomicBool,
    /// Serializes submits so the order of `Sizes::inflight` is the order of offsets, and so
    /// reject-publish decides on a count no concurrent publish is changing.
    submit_lock: tokio::sync::Mutex<()>,
    /// When the queue was last used (declared, read by basic.get, consumed), for `x-expires`.
    last_used_ms: AtomicI64,
    /// The offset the low-water mark must reach before the oldest segment can be deleted
    /// (`i64::MAX`: not known yet), and a counter pacing the look-ups while unknown.
    reclaim_at: AtomicI64,
    reclaim_polls: std::sync::atomic::AtomicU64,
    /// The first offset of every settling claim still being read (see `take`).
    reads_in_flight: Mutex<Vec<i64>>,
    /// Writes the delivery state behind changes (durable queues opened by the router).
    flusher: Option<StateFlusher>,
    /// The state changed since it was last written.
    state_dirty: AtomicBool,
    /// Message ids seen recently, with `x-message-deduplication`. Its own lock: rebuilding
    /// it reads the log, which must not happen under `inner`.
    dedup: Mutex<Option<DedupCache>>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("vhost", &self.def.vhost)
            .field("name", &self.def.name)
            .finish()
    }
}

impl Sizes {
    fn size(&self, o: i64) -> u64 {
        self.by_offset.get(&o).copied().map_or(0, u64::from)
    }

    fn leave_ready(&mut self, o: i64) {
        self.ready_bytes = self.ready_bytes.saturating_sub(self.size(o));
    }

    fn enter_ready(&mut self, o: i64) {
        self.ready_bytes += self.size(o);
    }

    fn settle(&mut self, o: i64) {
        self.by_offset.remove(&o);
    }
}

fn body_len(record: &SimpleRecord) -> u32 {
    record
        .value
        .as_ref()
        .map_or(0, |v| u32::try_from(v.len()).unwrap_or(u32::MAX))
}

/// The record's own expiry (ms since the epoch), from [`TTL_HEADER`].
fn record_expiry(record: &SimpleRecord) -> Option<i64> {
    let (_, v) = record.headers.iter().find(|(k, _)| k == TTL_HEADER)?;
    let ttl: i64 = std::str::from_utf8(v.as_ref()?).ok()?.parse().ok()?;
    Some(record.timestamp.saturating_add(ttl.max(0)))
}

impl Queue {
    /// Wraps an opened log. `state` is the persisted delivery state, if any.
    pub(crate) fn new(setup: QueueSetup, state: Option<&[u8]>) -> Queue {
        let QueueSetup {
            def,
            exclusive_owner,
            log,
            dir,
            meta,
            limits,
            clock,
            flusher,
        } = setup;
        let start = log.log_start_offset();
        let mut st = state
            .and_then(DeliveryState::decode)
            .unwrap_or(DeliveryState {
                next: start,
                ..DeliveryState::default()
            });
        // The log is the truth: a cursor outside it (lost tail, foreign state) is clamped.
        let end = log.log_end_offset();
        st.next = st.next.clamp(start, end);
        st.requeued.retain(|o| *o >= start && *o < st.next);
        let next = st.next;
        st.delayed.retain(|o, _| *o >= start && *o < next);
        let (requeued, delayed) = (&st.requeued, &st.delayed);
        st.returns
            .retain(|o, _| requeued.contains(o) || delayed.contains_key(o));
        let delayed_by_due = st.delayed.iter().map(|(o, due)| (*due, *o)).collect();
        let (ready_tx, _) = watch::channel(0);
        let sizes = limits.tracks_sizes().then(|| Sizes {
            known_upto: st.next,
            ..Sizes::default()
        });
        let ttl_seen = !st.requeued.is_empty() || !st.delayed.is_empty() || st.next < end;
        let scan_requeued = !st.requeued.is_empty() || !st.delayed.is_empty();
        let prio = limits.max_priority.map(|max| PrioIndex {
            max,
            levels: vec![BTreeSet::new(); usize::from(max) + 1],
            prio_of: HashMap::new(),
            fresh: HashSet::new(),
            pending: VecDeque::new(),
            base: end,
            scan: !st.requeued.is_empty(),
        });
        let now = clock.now_ms();
        let dedup = limits.dedup.map(DedupCache::new);
        Queue {
            def,
            exclusive_owner,
            log,
            dir,
            meta,
            inner: Mutex::new(Counters {
                state: st,
                consumers: 0,
                slots: Vec::new(),
                next_consumer_id: 0,
                sizes,
                ttl_seen,
                head_expiry: None,
                scan_requeued,
                prio,
                appends_expected: end,
                delayed_by_due,
            }),
            limits,
            dead: Mutex::new(Vec::new()),
            maintenance: tokio::sync::Notify::new(),
            clock,
            ready_tx,
            deleted: AtomicBool::new(false),
            submit_lock: tokio::sync::Mutex::new(()),
            last_used_ms: AtomicI64::new(now),
            dedup: Mutex::new(dedup),
            flusher,
            state_dirty: AtomicBool::new(false),
            reclaim_at: AtomicI64::new(i64::MAX),
            reclaim_polls: std::sync::atomic::AtomicU64::new(0),
            reads_in_flight: Mutex::new(Vec::new()),
        }
    }

    pub fn limits(&self) -> &QueueLimits {
        &self.limits
    }

    /// Marks the queue used now (declare, basic.get, consumers), restarting `x-expires`.
    pub fn touch(&self) {
        self.last_used_ms
            .store(self.clock.now_ms(), Ordering::Release);
    }

    /// Whether `x-expires` has run out: no consumers and unused for that long.
    pub fn expired_unused(&self) -> bool {
        let Some(expires) = self.limits.expires_ms else {
            return false;
        };
        let idle = self
            .clock
            .now_ms()
            .saturating_sub(self.last_used_ms.load(Ordering::Acquire));
        self.consumer_count() == 0 && idle >= expires
    }

    /// Brings the size book up to the high watermark: appends that landed move from
    /// `inflight` to `by_offset` and count as ready; offsets nobody submitted in this process
    /// (messages from before a restart) are read once for their sizes.
    fn sync_sizes(&self, c: &mut Counters, hw: i64) {
        let Some(sz) = c.sizes.as_mut() else {
            return;
        };
        let mut missing = Vec::new();
        if c.scan_requeued {
            c.scan_requeued = false;
            missing.extend(c.state.requeued.iter().copied());
            missing.extend(c.state.delayed.keys().copied());
        }
        while sz.known_upto < hw {
            let o = sz.known_upto;
            match sz.inflight.pop_front() {
                Some(n) => {
                    sz.by_offset.insert(o, n);
                    sz.ready_bytes += u64::from(n);
                }
                None => missing.push(o),
            }
            sz.known_upto += 1;
        }
        if missing.is_empty() {
            return;
        }
        match self.read_records(&missing) {
            Ok(records) => {
                for (o, r) in records {
                    let n = body_len(&r);
                    sz.by_offset.insert(o, n);
                    sz.ready_bytes += u64::from(n);
                }
            }
            Err(e) => {
                // Sizes stay unknown (counted as 0): a byte limit is enforced late, never
                // by losing a message.
                tracing::warn!(queue = %self.def.name, error = %e, "reading message sizes failed")
            }
        }
    }

    /// Moves fresh messages from the cursor into a priority queue's index, up to the window.
    fn absorb(&self, c: &mut Counters, hw: i64) {
        let Some(ix) = c.prio.as_mut() else {
            return;
        };
        let st = &mut c.state;
        let mut unknown: Vec<i64> = Vec::new();
        if ix.scan {
            ix.scan = false;
            unknown.extend(st.requeued.iter().copied());
        }
        // The cursor may have moved past pending priorities (purge, TTL, overflow).
        while ix.base < st.next {
            ix.pending.pop_front();
            ix.base += 1;
        }
        let room = PRIORITY_WINDOW.saturating_sub(st.requeued.len()) as i64;
        let end = hw.min(st.next.saturating_add(room));
        let mut known: Vec<(i64, u8)> = Vec::new();
        while st.next < end {
            let o = st.next;
            match ix.pending.front().copied().filter(|_| o == ix.base) {
                Some(p) => {
                    ix.pending.pop_front();
                    ix.base += 1;
                    known.push((o, p));
                }
                None => unknown.push(o),
            }
            st.requeued.insert(o);
            ix.fresh.insert(o);
            st.next += 1;
        }
        for (o, p) in known {
            ix.add(o, p);
        }
        if unknown.is_empty() {
            return;
        }
        match self.read_records(&unknown) {
            Ok(records) => {
                for o in unknown {
                    let p = records.get(&o).map_or(0, record_priority);
                    ix.add(o, p);
                }
            }
            Err(e) => {
                // Delivered at priority 0 rather than not at all.
                tracing::warn!(queue = %self.def.name, error = %e, "reading message priorities failed");
                for o in unknown {
                    ix.add(o, 0);
                }
            }
        }
    }

    /// The head's own expiry, reading it once per head.
    fn head_expiry(&self, c: &mut Counters, head: i64) -> Option<i64> {
        if let Some((o, at)) = c.head_expiry {
            if o == head {
                return at;
            }
        }
        let at = match self.read_records(&[head]) {
            Ok(r) => r.get(&head).and_then(record_expiry),
            Err(_) => None,
        };
        c.head_expiry = Some((head, at));
        at
    }

    /// Applies TTLs and length limits to the ready messages. Removed ones are settled, or with
    /// a dead-letter exchange, kept unacked and queued for the maintenance task. Called with
    /// the state lock held.
    fn enforce_limits(&self, c: &mut Counters, hw: i64) {
        self.release_due(c);
        self.sync_sizes(c, hw);
        self.absorb(c, hw);
        let mut removed: Vec<(i64, DeathReason)> = Vec::new();
        if let Some(ttl) = self.limits.message_ttl_ms {
            let st = &mut c.state;
            let cutoff = self.clock.now_ms().saturating_sub(ttl);
            // Records are stamped with their enqueue time, in offset order: everything below
            // the first record younger than the cutoff has expired.
            let boundary = match self.log.offset_for_timestamp(cutoff.saturating_add(1)) {
                Ok(Some((o, _))) => o.min(hw),
                Ok(None) => hw,
                Err(_) => st.next.min(hw),
            };
            while let Some(o) = st.requeued.first().copied().filter(|o| *o < boundary) {
                st.requeued.remove(&o);
                removed.push((o, DeathReason::Expired));
            }
            while st.next < boundary {
                removed.push((st.next, DeathReason::Expired));
                st.next += 1;
            }
        }
        if c.ttl_seen && c.state.requeued.is_empty() && c.state.next >= hw {
            // Nothing is ready and no submitted message is still on its way into the log:
            // no message can carry a TTL any more, so heads need not be read for one until a
            // publish with a TTL comes (a queue reopened with messages starts flagged).
            if c.appends_expected <= hw {
                c.ttl_seen = false;
            }
        }
        if c.ttl_seen {
            // Per-message TTL, RabbitMQ's way: only the head expires. A message behind an
            // unexpired one waits until it reaches the head (it is never delivered expired,
            // because delivery takes from the head after this check).
            let now = self.clock.now_ms();
            while let Some(head) = head_of(c, hw) {
                match self.head_expiry(c, head) {
                    Some(at) if at <= now => {
                        remove_head(c, head);
                        removed.push((head, DeathReason::Expired));
                    }
                    _ => break,
                }
            }
        }
        if let Some(sz) = c.sizes.as_mut() {
            for (o, _) in &removed {
                sz.leave_ready(*o);
            }
        }
        if self.limits.overflow == Overflow::DropHead {
            let mut ready = (hw - c.state.next).max(0) as u64 + c.state.requeued.len() as u64;
            loop {
                let over_count = self.limits.max_length.is_some_and(|m| ready > m);
                let over_bytes = match (self.limits.max_length_bytes, c.sizes.as_ref()) {
                    (Some(m), Some(sz)) => sz.ready_bytes > m,
                    _ => false,
                };
                if ready == 0 || !(over_count || over_bytes) {
                    break;
                }
                let Some(o) = head_of(c, hw) else {
                    break;
                };
                remove_head(c, o);
                if let Some(sz) = c.sizes.as_mut() {
                    sz.leave_ready(o);
                }
                removed.push((o, DeathReason::MaxLen));
                ready -= 1;
            }
        }
        if removed.is_empty() {
            return;
        }
        for (o, _) in &removed {
            c.state.returns.remove(o);
            if let Some(ix) = c.prio.as_mut() {
                if self.limits.dead_letter_exchange.is_some() {
                    ix.unready(*o);
                } else {
                    ix.settle(*o);
                }
            }
        }
        if self.limits.dead_letter_exchange.is_some() {
            c.state.unacked.extend(removed.iter().map(|(o, _)| *o));
            self.dead.lock().extend(removed);
            self.maintenance.notify_one();
        } else if let Some(sz) = c.sizes.as_mut() {
            for (o, _) in &removed {
                sz.settle(*o);
            }
        }
        self.persist(&c.state);
    }

    /// Runs the limits now (the maintenance task's tick).
    pub fn enforce_now(&self) {
        let hw = self.log.high_watermark();
        let mut inner = self.inner.lock();
        let delayed = inner.state.delayed.len();
        self.enforce_limits(&mut inner, hw);
        let now = self.clock.now_ms();
        // Consumers wait on appends and requeues; a released retry or a breaker whose
        // cool-down ended is neither, so wake them here.
        let wake = inner.state.delayed.len() < delayed
            || inner.slots.iter().any(|slot| {
                slot.breaker
                    .as_ref()
                    .and_then(Breaker::wake_at)
                    .is_some_and(|at| at <= now)
            });
        drop(inner);
        if wake {
            self.ready_tx.send_modify(|v| *v += 1);
        }
    }

    /// Takes the messages waiting to be dead-lettered.
    pub fn take_dead(&self) -> Vec<(i64, DeathReason)> {
        std::mem::take(&mut *self.dead.lock())
    }

    /// Resolves when dead letters are waiting.
    pub async fn dead_letters_waiting(&self) {
        self.maintenance.notified().await
    }

    /// When the maintenance task next has something to do (ms since the epoch): the oldest
    /// ready message expiring by `x-message-ttl` or by its own TTL, or `x-expires` running out.
    pub fn next_expiry_ms(&self) -> Option<i64> {
        let hw = self.log.high_watermark();
        let mut due: Option<i64> = self
            .limits
            .expires_ms
            .map(|e| self.last_used_ms.load(Ordering::Acquire).saturating_add(e));
        let mut inner = self.inner.lock();
        let mut earliest = |at: i64| due = Some(due.map_or(at, |d| d.min(at)));
        if let Some((at, _)) = inner.delayed_by_due.first() {
            earliest(*at);
        }
        for slot in &inner.slots {
            if let Some(at) = slot.breaker.as_ref().and_then(Breaker::wake_at) {
                earliest(at);
            }
        }
        let Some(head) = head_of(&inner, hw) else {
            return due;
        };
        if inner.ttl_seen {
            if let Some(at) = self.head_expiry(&mut inner, head) {
                earliest(at);
            }
        }
        drop(inner);
        if let Some(ttl) = self.limits.message_ttl_ms {
            if let Ok(records) = self.read_records(&[head]) {
                if let Some(r) = records.get(&head) {
                    earliest(r.timestamp.saturating_add(ttl));
                }
            }
        }
        due
    }

    /// Reads the records at `offsets` (for dead-lettering).
    pub fn read(
        &self,
        offsets: &[i64],
    ) -> Result<std::collections::HashMap<i64, SimpleRecord>, LogError> {
        self.read_records(offsets)
    }

    pub fn name(&self) -> &str {
        &self.def.name
    }

    pub fn vhost(&self) -> &str {
        &self.def.vhost
    }

    pub fn def(&self) -> &QueueDef {
        &self.def
    }

    pub fn durable(&self) -> bool {
        self.def.durable
    }

    /// Whether the definition and delivery state are kept in the meta store (durable and not
    /// exclusive).
    pub fn persistent(&self) -> bool {
        self.meta.is_some()
    }

    pub fn auto_delete(&self) -> bool {
        self.def.auto_delete
    }

    pub fn exclusive_owner(&self) -> Option<u64> {
        self.exclusive_owner
    }

    pub(crate) fn dir(&self) -> &PathBuf {
        &self.dir
    }

    pub fn log(&self) -> &PartitionHandle {
        &self.log
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    pub(crate) fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
        self.ready_tx.send_modify(|v| *v += 1);
    }

    /// Queues an append of one message; the returned handle resolves once it is durable.
    pub async fn submit(&self, record: SimpleRecord) -> Result<Submitted, LogError> {
        let batch = crate::log::try_encode_batch(
            std::slice::from_ref(&record),
            &crate::log::EncodeOptions::default(),
        )?;
        let size = body_len(&record);
        let _order = self.submit_lock.lock().await;
        let Some(dedup_key) = self.admit_dedup(&record) else {
            metrics::counter!("ferry_messages_deduplicated_total").increment(1);
            return Ok(Submitted::Duplicate);
        };
        let forget = |key: &Option<bytes::Bytes>| {
            if let (Some(k), Some(cache)) = (key, self.dedup.lock().as_mut()) {
                cache.forget(k);
            }
        };
        {
            let hw = self.log.high_watermark();
            let mut c = self.inner.lock();
            if record.headers.iter().any(|(k, _)| k == TTL_HEADER) {
                c.ttl_seen = true;
            }
            if self.limits.overflow != Overflow::DropHead {
                // Expired messages must not hold the queue full.
                self.enforce_limits(&mut c, hw);
                let (inflight, inflight_bytes, ready_bytes) = match &c.sizes {
                    Some(sz) => (
                        sz.inflight.len() as u64,
                        sz.inflight.iter().map(|n| u64::from(*n)).sum::<u64>(),
                        sz.ready_bytes,
                    ),
                    None => (0, 0, 0),
                };
                let ready =
                    (hw - c.state.next).max(0) as u64 + c.state.requeued.len() as u64 + inflight;
                let full = self.limits.max_length.is_some_and(|m| ready >= m)
                    || self
                        .limits
                        .max_length_bytes
                        .is_some_and(|m| ready_bytes + inflight_bytes + u64::from(size) > m);
                if full {
                    drop(c);
                    forget(&dedup_key);
                    return Ok(Submitted::Full);
                }
            }
            if let Some(sz) = c.sizes.as_mut() {
                sz.inflight.push_back(size);
            }
            if let Some(ix) = c.prio.as_mut() {
                ix.pending.push_back(record_priority(&record));
            }
            c.appends_expected += 1;
        }
        match self.log.submit_append(batch).await {
            Ok(p) => Ok(Submitted::Appended(p)),
            Err(e) => {
                forget(&dedup_key);
                let mut c = self.inner.lock();
                if let Some(sz) = c.sizes.as_mut() {
                    sz.inflight.pop_back();
                }
                if let Some(ix) = c.prio.as_mut() {
                    ix.pending.pop_back();
                }
                c.appends_expected -= 1;
                Err(e)
            }
        }
    }

    /// Checks `record` against the deduplication window: `None` when it is a repeat (drop
    /// it), else the key it was admitted under (to forget if the append fails), if any.
    fn admit_dedup(&self, record: &SimpleRecord) -> Option<Option<bytes::Bytes>> {
        let mut guard = self.dedup.lock();
        let Some(cache) = guard.as_mut() else {
            return Some(None);
        };
        if !cache.loaded {
            cache.loaded = true;
            self.reload_dedup(cache);
        }
        let Some(key) = super::dedup::record_key(record) else {
            return Some(None);
        };
        cache
            .admit(key.clone(), self.clock.now_ms())
            .then_some(Some(key))
    }

    /// Refills the deduplication cache from the tail of the log after a restart: the ids of
    /// the last `x-cache-size` records inside the window.
    fn reload_dedup(&self, cache: &mut DedupCache) {
        let policy = cache.policy();
        let end = self.log.high_watermark();
        let mut from = self
            .log
            .log_start_offset()
            .max(end.saturating_sub(policy.max_entries as i64));
        if let Some(window) = policy.window_ms {
            let cutoff = self.clock.now_ms().saturating_sub(window);
            match self.log.offset_for_timestamp(cutoff) {
                Ok(Some((o, _))) => from = from.max(o),
                Ok(None) => from = end,
                Err(_) => {}
            }
        }
        let offsets: Vec<i64> = (from..end).collect();
        match self.read_records(&offsets) {
            Ok(records) => {
                let mut by_offset: Vec<_> = records.into_iter().collect();
                by_offset.sort_unstable_by_key(|(o, _)| *o);
                for (_, r) in by_offset {
                    if let Some(key) = super::dedup::record_key(&r) {
                        cache.admit(key, r.timestamp);
                    }
                }
            }
            Err(e) => {
                // Repeats right after a restart may get through; nothing is lost.
                tracing::warn!(queue = %self.def.name, error = %e, "rebuilding the deduplication cache failed")
            }
        }
    }

    /// Messages in the queue and not handed out: fresh ones below the high watermark,
    /// requeued ones, and those waiting out a retry delay (they are in the queue, only not
    /// deliverable yet; [`delayed_count`](Self::delayed_count) tells them apart).
    pub fn message_count(&self) -> u64 {
        let hw = self.log.high_watermark();
        let mut inner = self.inner.lock();
        self.enforce_limits(&mut inner, hw);
        (hw - inner.state.next).max(0) as u64
            + inner.state.requeued.len() as u64
            + inner.state.delayed.len() as u64
    }

    /// Messages handed out and not settled.
    pub fn unacked_count(&self) -> u64 {
        self.inner.lock().state.unacked.len() as u64
    }

    pub fn consumer_count(&self) -> u32 {
        self.inner.lock().consumers
    }

    /// Registers a consumer with its priority (`x-priority`, default 0); returns its id for
    /// [`may_take`](Self::may_take), [`set_credit`](Self::set_credit) and
    /// [`remove_consumer`](Self::remove_consumer).
    pub fn add_consumer(&self, priority: i32) -> u64 {
        self.add_consumer_with(priority, None)
    }

    /// [`add_consumer`](Self::add_consumer) with the consumer's own circuit breaker policy
    /// (from its basic.consume arguments), which overrides the queue's.
    pub fn add_consumer_with(&self, priority: i32, breaker: Option<BreakerPolicy>) -> u64 {
        self.touch();
        let mut inner = self.inner.lock();
        inner.consumers += 1;
        inner.next_consumer_id += 1;
        let id = inner.next_consumer_id;
        inner.slots.push(ConsumerSlot {
            id,
            priority,
            has_credit: true,
            breaker: breaker.or(self.limits.breaker).map(Breaker::new),
        });
        drop(inner);
        // A new consumer can change who is allowed to take.
        self.ready_tx.send_modify(|v| *v += 1);
        id
    }

    /// Returns the remaining consumer count.
    pub fn remove_consumer(&self, id: u64) -> u32 {
        self.touch();
        let mut inner = self.inner.lock();
        inner.consumers = inner.consumers.saturating_sub(1);
        if let Some(slot) = inner.slots.iter().find(|c| c.id == id) {
            if slot.breaker.is_some() {
                self.breaker_gauge(id, BreakerState::Closed);
            }
        }
        inner.slots.retain(|c| c.id != id);
        let left = inner.consumers;
        drop(inner);
        // The next single active consumer, or lower-priority ones, may take now.
        self.ready_tx.send_modify(|v| *v += 1);
        left
    }

    /// Records whether a consumer can take messages now (it has prefetch credit). Consumers
    /// of lower priority wait only while a higher one has credit, so a change wakes them.
    pub fn set_credit(&self, id: u64, has_credit: bool) {
        let mut inner = self.inner.lock();
        let Some(slot) = inner.slots.iter_mut().find(|c| c.id == id) else {
            return;
        };
        if slot.has_credit == has_credit {
            return;
        }
        slot.has_credit = has_credit;
        drop(inner);
        self.ready_tx.send_modify(|v| *v += 1);
    }

    /// Whether a consumer may take messages now. With `x-single-active-consumer` only the
    /// active one may: the highest priority, earliest registered (RabbitMQ). Otherwise a
    /// consumer waits while any consumer of higher priority has credit (consumer priorities:
    /// higher ones get messages first, lower ones when the higher are full).
    pub fn may_take(&self, id: u64) -> bool {
        let inner = self.inner.lock();
        let Some(me) = inner.slots.iter().find(|c| c.id == id) else {
            return false;
        };
        if self.limits.single_active_consumer {
            let mut active: Option<&ConsumerSlot> = None;
            for c in &inner.slots {
                if active.is_none_or(|a| c.priority > a.priority) {
                    active = Some(c);
                }
            }
            return active.is_some_and(|a| a.id == id);
        }
        !inner
            .slots
            .iter()
            .any(|c| c.priority > me.priority && c.has_credit)
    }

    /// [`take`](Self::take) for consumer `id`, within what its circuit breaker allows: nothing
    /// while open, one probe while half-open.
    pub fn take_for(
        &self,
        id: u64,
        max: usize,
        settle: bool,
    ) -> Result<Vec<QueuedMessage>, LogError> {
        let now = self.clock.now_ms();
        let max = {
            let mut inner = self.inner.lock();
            match inner
                .slots
                .iter_mut()
                .find(|c| c.id == id)
                .and_then(|c| c.breaker.as_mut())
            {
                Some(b) => {
                    let (allowed, change) = b.allowance(now, max);
                    if let Some(state) = change {
                        drop(inner);
                        self.breaker_changed(id, state);
                    }
                    allowed
                }
                None => max,
            }
        };
        let msgs = self.take(max, settle)?;
        if !msgs.is_empty() {
            let mut inner = self.inner.lock();
            if let Some(b) = inner
                .slots
                .iter_mut()
                .find(|c| c.id == id)
                .and_then(|c| c.breaker.as_mut())
            {
                b.delivered(msgs.len());
            }
        }
        Ok(msgs)
    }

    /// Feeds consumer `id`'s circuit breaker with the outcome of `n` of its deliveries: acks
    /// (`success`) or nacks/rejects.
    pub fn record_outcome(&self, id: u64, success: bool, n: usize) {
        let now = self.clock.now_ms();
        let mut changes = Vec::new();
        {
            let mut inner = self.inner.lock();
            let Some(b) = inner
                .slots
                .iter_mut()
                .find(|c| c.id == id)
                .and_then(|c| c.breaker.as_mut())
            else {
                return;
            };
            for _ in 0..n {
                if let Some(state) = b.outcome(success, now) {
                    changes.push(state);
                }
            }
        }
        for state in changes {
            self.breaker_changed(id, state);
        }
    }

    /// How many of the queue's consumers have an open circuit breaker.
    pub fn open_breakers(&self) -> usize {
        self.inner
            .lock()
            .slots
            .iter()
            .filter(|c| {
                matches!(
                    c.breaker.as_ref().map(Breaker::state),
                    Some(BreakerState::Open { .. })
                )
            })
            .count()
    }

    /// The state of consumer `id`'s circuit breaker, if it has one.
    pub fn breaker_state(&self, id: u64) -> Option<BreakerState> {
        let inner = self.inner.lock();
        inner
            .slots
            .iter()
            .find(|c| c.id == id)
            .and_then(|c| c.breaker.as_ref())
            .map(Breaker::state)
    }

    /// How long until consumer `id`'s open circuit breaker may be probed.
    pub fn breaker_wait(&self, id: u64) -> Option<std::time::Duration> {
        let at = {
            let inner = self.inner.lock();
            inner
                .slots
                .iter()
                .find(|c| c.id == id)
                .and_then(|c| c.breaker.as_ref())
                .and_then(Breaker::wake_at)?
        };
        let ms = at.saturating_sub(self.clock.now_ms()).max(1);
        Some(std::time::Duration::from_millis(ms as u64))
    }

    fn breaker_changed(&self, id: u64, state: BreakerState) {
        tracing::info!(
            vhost = %self.def.vhost,
            queue = %self.def.name,
            consumer = id,
            state = state.name(),
            "consumer circuit breaker changed state"
        );
        metrics::counter!(
            "ferry_circuit_breaker_transitions_total",
            "vhost" => self.def.vhost.clone(),
            "queue" => self.def.name.clone(),
            "to" => state.name()
        )
        .increment(1);
        self.breaker_gauge(id, state);
        // The maintenance task must wake when an open breaker's cool-down ends.
        self.maintenance.notify_one();
        self.ready_tx.send_modify(|v| *v += 1);
    }

    fn breaker_gauge(&self, id: u64, state: BreakerState) {
        metrics::gauge!(
            "ferry_circuit_breaker_state",
            "vhost" => self.def.vhost.clone(),
            "queue" => self.def.name.clone(),
            "consumer" => id.to_string()
        )
        .set(state.gauge());
    }

    /// Wakes when the high watermark advances (new messages are readable).
    pub fn subscribe_appends(&self) -> watch::Receiver<i64> {
        self.log.subscribe_high_watermark()
    }

    /// Wakes when messages are requeued or the queue is deleted.
    pub fn subscribe_ready(&self) -> watch::Receiver<u64> {
        self.ready_tx.subscribe()
    }

    /// Claims up to `max` ready messages (requeued first, then fresh ones in log order) and
    /// reads them. With `settle` the claim settles them at once (no-ack consumers, basic.get
    /// with no-ack); otherwise they are unacked until [`ack`](Self::ack) or
    /// [`requeue`](Self::requeue).
    pub fn take(&self, max: usize, settle: bool) -> Result<Vec<QueuedMessage>, LogError> {
        if max == 0 || self.is_deleted() {
            return Ok(Vec::new());
        }
        let hw = self.log.high_watermark();
        let mut claimed: Vec<(i64, bool, u32)> = Vec::new();
        {
            let mut inner = self.inner.lock();
            self.enforce_limits(&mut inner, hw);
            let c = &mut *inner;
            let st = &mut c.state;
            while claimed.len() < max {
                let next_ready = match c.prio.as_mut() {
                    Some(ix) => ix.pop_highest().inspect(|o| {
                        st.requeued.remove(o);
                    }),
                    None => st.requeued.pop_first(),
                };
                let Some(o) = next_ready else {
                    break;
                };
                // A message never handed out is not redelivered, even from the index.
                let redelivered = match c.prio.as_mut() {
                    Some(ix) => {
                        let fresh = ix.fresh.remove(&o);
                        if settle {
                            ix.settle(o);
                        }
                        !fresh
                    }
                    None => true,
                };
                let returns = if settle {
                    st.returns.remove(&o)
                } else {
                    st.returns.get(&o).copied()
                };
                claimed.push((o, redelivered, returns.unwrap_or(0)));
            }
            // A priority queue delivers only through its index (absorb fills it).
            while c.prio.is_none() && claimed.len() < max && st.next < hw {
                claimed.push((st.next, false, 0));
                st.next += 1;
            }
            if claimed.is_empty() {
                return Ok(Vec::new());
            }
            if let Some(sz) = c.sizes.as_mut() {
                for (o, _, _) in &claimed {
                    sz.leave_ready(*o);
                    if settle {
                        sz.settle(*o);
                    }
                }
            }
            if !settle {
                st.unacked.extend(claimed.iter().map(|(o, _, _)| *o));
            }
            self.persist(st);
            if settle {
                // Settled already, but not read yet: their segments must stay until then.
                if let Some(first) = claimed.iter().map(|(o, _, _)| *o).min() {
                    self.reads_in_flight.lock().push(first);
                }
            }
        }
        let offsets: Vec<i64> = claimed.iter().map(|(o, _, _)| *o).collect();
        let read_guard = settle.then(|| offsets.iter().copied().min()).flatten();
        let result = self.read_claimed(claimed, offsets);
        if let Some(first) = read_guard {
            let mut reads = self.reads_in_flight.lock();
            if let Some(i) = reads.iter().position(|o| *o == first) {
                reads.swap_remove(i);
            }
        }
        if settle {
            // Only now that the claimed records are read may their segments go.
            let low = self.low_water_mark();
            self.reclaim_settled(low);
        }
        result
    }

    /// Reads the records of a claim made by [`take`](Self::take).
    fn read_claimed(
        &self,
        claimed: Vec<(i64, bool, u32)>,
        offsets: Vec<i64>,
    ) -> Result<Vec<QueuedMessage>, LogError> {
        let records = match self.read_records(&offsets) {
            Ok(r) => r,
            Err(e) => {
                // Give the claim back so the messages are not lost to a transient read error.
                let mut inner = self.inner.lock();
                let c = &mut *inner;
                for o in &offsets {
                    c.state.unacked.remove(o);
                    c.state.requeued.insert(*o);
                    if let Some(sz) = c.sizes.as_mut() {
                        sz.enter_ready(*o);
                    }
                    if let Some(ix) = c.prio.as_mut() {
                        ix.readd(*o);
                    }
                }
                self.persist(&c.state);
                return Err(e);
            }
        };
        let mut out = Vec::with_capacity(claimed.len());
        let mut missing = Vec::new();
        for (offset, redelivered, delivery_count) in claimed {
            match records.get(&offset) {
                Some(record) => out.push(QueuedMessage {
                    offset,
                    redelivered,
                    delivery_count,
                    record: record.clone(),
                }),
                None => missing.push(offset),
            }
        }
        if !missing.is_empty() {
            // An offset with no record (a foreign batch we cannot decode): settle it rather
            // than hand it out again forever.
            tracing::warn!(queue = %self.def.name, ?missing, "queue offsets without a readable record; skipping");
            self.ack(&missing);
        }
        Ok(out)
    }

    /// Reads the records at `offsets` (any order) from the log.
    fn read_records(
        &self,
        offsets: &[i64],
    ) -> Result<std::collections::HashMap<i64, SimpleRecord>, LogError> {
        let mut wanted: Vec<i64> = offsets.to_vec();
        wanted.sort_unstable();
        let mut found = std::collections::HashMap::with_capacity(wanted.len());
        let mut i = 0;
        while i < wanted.len() {
            let at = wanted[i];
            if found.contains_key(&at) {
                i += 1;
                continue;
            }
            // Ask for about as much log as the run of consecutive offsets needs (the first
            // batch always comes whole), so a prefetch-1 consumer does not read 256 KiB per
            // message.
            let run = wanted[i..]
                .windows(2)
                .take_while(|w| w[1] == w[0] + 1)
                .count()
                + 1;
            let slice = self.log.read(at, (run * 1024).min(READ_CHUNK))?;
            if slice.bytes.is_empty() {
                i += 1;
                continue;
            }
            let mut buf = slice.bytes.clone();
            while buf.has_remaining() {
                let records = match crate::log::batch::decode_next_batch(&mut buf) {
                    Ok(records) => records,
                    Err(e) => {
                        tracing::warn!(queue = %self.def.name, error = %e, "undecodable batch in queue log");
                        break;
                    }
                };
                for r in records {
                    if r.is_control || wanted.binary_search(&r.offset).is_err() {
                        continue;
                    }
                    found.insert(r.offset, r.record);
                }
            }
            i += 1;
        }
        Ok(found)
    }

    /// Settles unacked offsets (ack, reject/nack without requeue). Unknown offsets are ignored.
    pub fn ack(&self, offsets: &[i64]) {
        let mut inner = self.inner.lock();
        let c = &mut *inner;
        let mut changed = false;
        for o in offsets {
            if c.state.unacked.remove(o) {
                changed = true;
                c.state.returns.remove(o);
                if let Some(sz) = c.sizes.as_mut() {
                    sz.settle(*o);
                }
                if let Some(ix) = c.prio.as_mut() {
                    ix.settle(*o);
                }
            }
        }
        if changed {
            self.persist(&c.state);
            let low = c.state.low_water_mark();
            drop(inner);
            self.reclaim_settled(low);
        }
    }

    /// Returns unacked offsets to the queue because the consumer failed them (basic.nack or
    /// basic.reject with requeue), to be delivered again with `redelivered` set. Each return
    /// counts as a delivery attempt; past `x-delivery-limit` the message is dead-lettered (or
    /// dropped without a dead-letter exchange) instead, as RabbitMQ's quorum queues do; with
    /// `x-delayed-retry-*` it waits out its backoff first.
    pub fn requeue(&self, offsets: &[i64]) {
        self.return_to_queue(offsets, ReturnKind::Failed)
    }

    /// Returns unacked offsets whose channel closed (or basic.recover, a cancelled consumer):
    /// like [`requeue`](Self::requeue), but delayed only with `x-delayed-retry-type` `returned`
    /// or `all`.
    pub fn requeue_returned(&self, offsets: &[i64]) {
        self.return_to_queue(offsets, ReturnKind::Returned)
    }

    fn return_to_queue(&self, offsets: &[i64], kind: ReturnKind) {
        let now = self.clock.now_ms();
        let retry = self.limits.retry.filter(|r| r.applies_to(kind));
        let mut inner = self.inner.lock();
        let c = &mut *inner;
        let mut changed = false;
        let mut over = Vec::new();
        for o in offsets {
            if !c.state.unacked.contains(o) {
                continue;
            }
            changed = true;
            let mut attempts = 0;
            if self.limits.counts_returns() {
                let n = c.state.returns.entry(*o).or_insert(0);
                *n = n.saturating_add(1);
                attempts = *n;
                if self
                    .limits
                    .delivery_limit
                    .is_some_and(|limit| attempts > limit)
                {
                    c.state.returns.remove(o);
                    over.push(*o);
                    continue;
                }
            }
            c.state.unacked.remove(o);
            if let Some(policy) = retry {
                let due = now.saturating_add(policy.delay_ms(attempts));
                c.state.delayed.insert(*o, due);
                c.delayed_by_due.insert((due, *o));
                metrics::counter!("ferry_retries_scheduled_total").increment(1);
                continue;
            }
            c.state.requeued.insert(*o);
            if let Some(sz) = c.sizes.as_mut() {
                sz.enter_ready(*o);
            }
            if let Some(ix) = c.prio.as_mut() {
                ix.readd(*o);
            }
        }
        if !over.is_empty() {
            if self.limits.dead_letter_exchange.is_some() {
                // They stay unacked until the maintenance task has their copies durable.
                self.dead
                    .lock()
                    .extend(over.iter().map(|o| (*o, DeathReason::DeliveryLimit)));
                self.maintenance.notify_one();
            } else {
                for o in &over {
                    c.state.unacked.remove(o);
                    if let Some(sz) = c.sizes.as_mut() {
                        sz.settle(*o);
                    }
                    if let Some(ix) = c.prio.as_mut() {
                        ix.settle(*o);
                    }
                }
            }
        }
        if changed {
            self.persist(&c.state);
            drop(inner);
            self.ready_tx.send_modify(|v| *v += 1);
        }
    }

    /// Makes delayed retries whose time has come ready again (oldest offset first, like any
    /// requeued message). Called with the state lock held, before every claim and count.
    fn release_due(&self, c: &mut Counters) -> usize {
        if c.delayed_by_due.is_empty() {
            return 0;
        }
        let now = self.clock.now_ms();
        let mut released = 0;
        while let Some(&(due, o)) = c.delayed_by_due.first() {
            if due > now {
                break;
            }
            c.delayed_by_due.pop_first();
            if c.state.delayed.remove(&o).is_none() {
                continue;
            }
            released += 1;
            c.state.requeued.insert(o);
            if let Some(sz) = c.sizes.as_mut() {
                sz.enter_ready(o);
            }
            if let Some(ix) = c.prio.as_mut() {
                ix.readd(o);
            }
        }
        released
    }

    /// Messages waiting out a retry delay.
    pub fn delayed_count(&self) -> u64 {
        self.inner.lock().state.delayed.len() as u64
    }

    /// Returns unacked offsets without counting a delivery attempt (a dead-letter copy that
    /// could not be written: the broker failed, not the consumer).
    pub fn restore(&self, offsets: &[i64]) {
        let mut inner = self.inner.lock();
        let c = &mut *inner;
        let mut changed = false;
        for o in offsets {
            if c.state.unacked.remove(o) {
                c.state.requeued.insert(*o);
                if let Some(sz) = c.sizes.as_mut() {
                    sz.enter_ready(*o);
                }
                if let Some(ix) = c.prio.as_mut() {
                    ix.readd(*o);
                }
                changed = true;
            }
        }
        if changed {
            self.persist(&c.state);
            drop(inner);
            self.ready_tx.send_modify(|v| *v += 1);
        }
    }

    /// Settles every ready message (not the unacked ones); returns how many.
    pub fn purge(&self) -> u64 {
        let hw = self.log.high_watermark();
        let mut inner = self.inner.lock();
        self.sync_sizes(&mut inner, hw);
        let c = &mut *inner;
        let st = &mut c.state;
        let fresh = (hw - st.next).max(0) as u64;
        let count = fresh + st.requeued.len() as u64 + st.delayed.len() as u64;
        if let Some(sz) = c.sizes.as_mut() {
            for o in st
                .requeued
                .iter()
                .chain(st.delayed.keys())
                .copied()
                .chain(st.next..hw)
            {
                sz.settle(o);
            }
            sz.ready_bytes = 0;
        }
        for o in st.delayed.keys() {
            st.returns.remove(o);
            if let Some(ix) = c.prio.as_mut() {
                ix.settle(*o);
            }
        }
        st.delayed.clear();
        c.delayed_by_due.clear();
        for o in &st.requeued {
            st.returns.remove(o);
            if let Some(ix) = c.prio.as_mut() {
                ix.settle(*o);
            }
        }
        st.next = st.next.max(hw);
        st.requeued.clear();
        self.persist(st);
        let low = st.low_water_mark();
        drop(inner);
        self.reclaim_settled(low);
        count
    }

    /// The low-water mark: every offset below it is settled.
    pub fn low_water_mark(&self) -> i64 {
        self.inner.lock().state.low_water_mark()
    }

    /// Deletes the log segments whose messages are all settled (ARCHITECTURE rule 4), so a
    /// queue's disk use follows its backlog, not its history. Cheap on the ack path: the
    /// boundary to cross (the second segment's base) is cached, and looked up again only
    /// every 256 calls while the log has a single segment.
    fn reclaim_settled(&self, low: i64) {
        let mut boundary = self.reclaim_at.load(Ordering::Acquire);
        if boundary == i64::MAX {
            if self.reclaim_polls.fetch_add(1, Ordering::Relaxed) % 256 != 0 {
                return;
            }
            boundary = self.log.second_segment_base().unwrap_or(i64::MAX);
            self.reclaim_at.store(boundary, Ordering::Release);
        }
        // No-ack claims being read hold their segments (they are settled before they are read).
        let low = self
            .reads_in_flight
            .lock()
            .iter()
            .copied()
            .fold(low, i64::min);
        if low < boundary || self.is_deleted() {
            return;
        }
        match self.log.delete_segments_below(low) {
            Ok(report) if report.deleted_segments > 0 => {
                tracing::debug!(queue = %self.def.name, segments = report.deleted_segments, bytes = report.deleted_bytes, "deleted settled queue segments");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(queue = %self.def.name, error = %e, "deleting settled queue segments failed")
            }
        }
        self.reclaim_at.store(
            self.log.second_segment_base().unwrap_or(i64::MAX),
            Ordering::Release,
        );
    }

    /// Marks the delivery state changed. Durable queues write it to the meta store a few
    /// milliseconds later through the router's [`StateFlusher`], once for all the changes
    /// in between (see [`StateFlusher`] for why that loses nothing); without a flusher, now.
    fn persist(&self, st: &DeliveryState) {
        if self.meta.is_none() || self.is_deleted() {
            return;
        }
        match &self.flusher {
            Some(f) => {
                if !self.state_dirty.swap(true, Ordering::AcqRel) {
                    f.mark(&self.def.vhost, &self.def.name);
                }
            }
            None => self.write_state(st),
        }
    }

    /// Writes the delivery state now if it changed since the last write.
    pub(crate) fn persist_now(&self) {
        if !self.state_dirty.swap(false, Ordering::AcqRel) || self.is_deleted() {
            return;
        }
        let encoded = self.inner.lock().state.encode();
        self.write_encoded(&encoded);
    }

    fn write_state(&self, st: &DeliveryState) {
        self.write_encoded(&st.encode());
    }

    fn write_encoded(&self, encoded: &[u8]) {
        let Some(meta) = &self.meta else { return };
        if let Err(e) = meta.put_queue_state(&self.def.vhost, &self.def.name, encoded) {
            // The in-memory state stays right; a restart would redeliver, never lose.
            tracing::error!(queue = %self.def.name, error = %e, "persisting queue state failed");
        }
    }

    /// Bytes of the persisted state, for tests of the on-disk design.
    pub fn encoded_state(&self) -> Vec<u8> {
        self.inner.lock().state.encode()
    }

    /// Up to `max` offsets of ready messages, in delivery order for a plain queue (requeued
    /// ones first, then fresh ones from the cursor), without claiming them. For the admin
    /// API's browse ([`super::queue_browse`]), which must not change delivery state.
    pub(crate) fn ready_offsets(&self, max: usize) -> Vec<i64> {
        let hw = self.log.high_watermark();
        let mut inner = self.inner.lock();
        self.enforce_limits(&mut inner, hw);
        let st = &inner.state;
        let mut out: Vec<i64> = st.requeued.iter().copied().take(max).collect();
        let mut o = st.next;
        while out.len() < max && o < hw {
            out.push(o);
            o += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trip_turns_unsettled_into_requeued() {
        let st = DeliveryState {
            next: 10,
            unacked: [2, 3, 4, 8].into_iter().collect(),
            requeued: [5].into_iter().collect(),
            returns: BTreeMap::new(),
            delayed: BTreeMap::new(),
        };
        let raw = st.encode();
        // 3 ranges: 2..=5, 8
        assert_eq!(raw.len(), 13 + 2 * 12);
        let back = DeliveryState::decode(&raw).unwrap();
        assert_eq!(back.next, 10);
        assert!(back.unacked.is_empty());
        assert_eq!(back.requeued, [2, 3, 4, 5, 8].into_iter().collect());
    }

    #[test]
    fn delivery_counts_survive_a_round_trip() {
        let st = DeliveryState {
            next: 10,
            unacked: [2, 3].into_iter().collect(),
            requeued: [7].into_iter().collect(),
            returns: [(3, 2), (7, 1)].into_iter().collect(),
            delayed: BTreeMap::new(),
        };
        let raw = st.encode();
        assert_eq!(raw[0], STATE_V2);
        // Two ranges, then two (offset, count) pairs.
        assert_eq!(raw.len(), 13 + 2 * 12 + 4 + 2 * 12);
        let back = DeliveryState::decode(&raw).unwrap();
        assert_eq!(back.requeued, [2, 3, 7].into_iter().collect());
        assert_eq!(back.returns, st.returns);
        // A count for an offset that is not unsettled is dropped, not trusted.
        let mut raw = raw;
        let n = raw.len();
        raw[n - 12..n - 4].copy_from_slice(&9i64.to_be_bytes());
        let back = DeliveryState::decode(&raw).unwrap();
        assert_eq!(back.returns, [(3, 2)].into_iter().collect());
    }

    #[test]
    fn delayed_retries_survive_a_round_trip_as_delayed() {
        let st = DeliveryState {
            next: 10,
            unacked: [2].into_iter().collect(),
            requeued: BTreeSet::new(),
            returns: [(4, 1)].into_iter().collect(),
            delayed: [(4, 1_000_500)].into_iter().collect(),
        };
        let raw = st.encode();
        assert_eq!(raw[0], STATE_V3);
        let back = DeliveryState::decode(&raw).unwrap();
        // The unacked one comes back ready; the delayed one keeps waiting, with its count.
        assert_eq!(back.requeued, [2].into_iter().collect());
        assert_eq!(back.delayed, st.delayed);
        assert_eq!(back.returns, st.returns);
        // Trailing garbage after the delayed section is refused.
        let mut raw = raw;
        raw.push(0);
        assert!(DeliveryState::decode(&raw).is_none());
    }

    #[test]
    fn quorum_queues_default_to_a_delivery_limit_of_20() {
        let parse = |v: serde_json::Value| QueueLimits::from_arguments(&v);
        let q = parse(serde_json::json!({"x-queue-type": "quorum"})).unwrap();
        assert_eq!(q.delivery_limit, Some(20));
        let q =
            parse(serde_json::json!({"x-queue-type": "quorum", "x-delivery-limit": -1})).unwrap();
        assert_eq!(q.delivery_limit, None);
        let c = parse(serde_json::json!({"x-delivery-limit": 3})).unwrap();
        assert_eq!((c.delivery_limit, c.quorum), (Some(3), false));
        assert_eq!(parse(serde_json::json!({})).unwrap().delivery_limit, None);
        assert!(parse(serde_json::json!({"x-max-priority": 256})).is_err());
        assert_eq!(
            parse(serde_json::json!({"x-max-priority": 255}))
                .unwrap()
                .max_priority,
            Some(255)
        );
    }

    #[test]
    fn garbage_state_is_refused() {
        assert!(DeliveryState::decode(b"").is_none());
        assert!(DeliveryState::decode(&[9; 20]).is_none());
        let mut raw = DeliveryState::default().encode();
        raw.push(0);
        assert!(DeliveryState::decode(&raw).is_none());
        // A huge range must not loop forever past the cursor.
        let mut b = BytesMut::new();
        b.put_u8(STATE_V1);
        b.put_i64(3);
        b.put_u32(1);
        b.put_i64(i64::MAX - 1);
        b.put_u32(u32::MAX);
        assert!(DeliveryState::decode(&b).is_none());
    }
}
