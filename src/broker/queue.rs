//! A message queue as a log with cursors (ARCHITECTURE rule 4, the LavinMQ model).
//!
//! Every queue owns one [`PartitionHandle`]: publishing appends a record batch, and nothing in
//! the log is ever rewritten. What a queue adds on top is *delivery state*, kept in memory and,
//! for durable queues, persisted in the meta store after every change:
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
//! dead-letters) the ready messages older than the TTL, found with the log's time index;
//! `x-max-length` drops from the head (RabbitMQ's default `drop-head` overflow). Both run before
//! every claim and count, so a client never sees a message the limits have removed, and a
//! maintenance task in the router runs them on a timer for queues nobody reads. Messages bound
//! for a dead-letter exchange stay *unacked* until their copy is durable in the target queues,
//! so a crash in between redelivers rather than loses.
//!
//! Not yet done here: deleting a segment once every message in it is settled.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Buf, BufMut, BytesMut};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::log::{LogError, PartitionHandle, PendingAppend, SimpleRecord};
use crate::meta::{Meta, QueueDef};

/// Version byte of the persisted delivery state.
const STATE_V1: u8 = 1;

/// How many bytes of log one read asks for when fetching messages for delivery.
const READ_CHUNK: usize = 256 * 1024;

/// Why a message left its queue without being acked (RabbitMQ's x-death reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    Rejected,
    Expired,
    MaxLen,
}

impl DeathReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
            DeathReason::MaxLen => "maxlen",
        }
    }
}

/// The queue arguments the core acts on, parsed from the declaration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueLimits {
    /// `x-message-ttl`: milliseconds a message may wait in the queue.
    pub message_ttl_ms: Option<i64>,
    /// `x-max-length`: ready messages kept; older ones are dropped from the head.
    pub max_length: Option<u64>,
    /// `x-dead-letter-exchange`.
    pub dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`; `None` keeps the message's routing key.
    pub dead_letter_routing_key: Option<String>,
}

impl QueueLimits {
    /// Parses and validates the arguments RabbitMQ would; an error names the argument.
    pub fn from_arguments(args: &serde_json::Value) -> Result<QueueLimits, String> {
        let mut limits = QueueLimits::default();
        let Some(map) = args.as_object() else {
            return Ok(limits);
        };
        let non_negative = |key: &str, v: &serde_json::Value| -> Result<u64, String> {
            v.as_u64()
                .ok_or_else(|| format!("invalid arg '{key}': {v} (must be a non-negative integer)"))
        };
        for (key, v) in map {
            match key.as_str() {
                "x-message-ttl" => {
                    let ttl = non_negative(key, v)?;
                    limits.message_ttl_ms = Some(
                        i64::try_from(ttl)
                            .map_err(|_| format!("invalid arg '{key}': too large"))?,
                    );
                }
                "x-max-length" => limits.max_length = Some(non_negative(key, v)?),
                "x-dead-letter-exchange" => {
                    limits.dead_letter_exchange = Some(
                        v.as_str()
                            .ok_or_else(|| format!("invalid arg '{key}': must be a string"))?
                            .to_string(),
                    )
                }
                "x-dead-letter-routing-key" => {
                    limits.dead_letter_routing_key = Some(
                        v.as_str()
                            .ok_or_else(|| format!("invalid arg '{key}': must be a string"))?
                            .to_string(),
                    )
                }
                "x-overflow" if v.as_str() == Some("drop-head") => {}
                "x-overflow" => {
                    return Err(format!(
                        "arg 'x-overflow' {v} is not supported yet (only \"drop-head\")"
                    ))
                }
                _ => {}
            }
        }
        if limits.dead_letter_routing_key.is_some() && limits.dead_letter_exchange.is_none() {
            return Err(
                "invalid arg 'x-dead-letter-routing-key': needs x-dead-letter-exchange".into(),
            );
        }
        Ok(limits)
    }

    /// Whether the router must run a maintenance task for this queue.
    pub fn needs_maintenance(&self) -> bool {
        self.message_ttl_ms.is_some() || self.max_length.is_some()
    }
}

/// A message read back from a queue for delivery.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// Offset in the queue's log: the queue-side identity of the delivery.
    pub offset: i64,
    /// Whether it was handed out before (requeued, or unacked at a restart).
    pub redelivered: bool,
    /// The stored record: routing key as key, body as value, properties as headers.
    pub record: SimpleRecord,
}

/// The delivery state described in the module docs.
#[derive(Debug, Default, Clone, PartialEq)]
struct DeliveryState {
    next: i64,
    unacked: BTreeSet<i64>,
    requeued: BTreeSet<i64>,
}

impl DeliveryState {
    /// `[version u8][next i64][range count u32]([start i64][len u32])*` over the unsettled offsets.
    fn encode(&self) -> Vec<u8> {
        let mut all: Vec<i64> = self.unacked.union(&self.requeued).copied().collect();
        all.sort_unstable();
        let mut ranges: Vec<(i64, u32)> = Vec::new();
        for o in all {
            match ranges.last_mut() {
                Some((start, len)) if *start + i64::from(*len) == o && *len < u32::MAX => *len += 1,
                _ => ranges.push((o, 1)),
            }
        }
        let mut buf = BytesMut::with_capacity(13 + ranges.len() * 12);
        buf.put_u8(STATE_V1);
        buf.put_i64(self.next);
        buf.put_u32(ranges.len() as u32);
        for (start, len) in ranges {
            buf.put_i64(start);
            buf.put_u32(len);
        }
        buf.to_vec()
    }

    /// Decodes persisted state; every unsettled offset comes back as requeued. `None` on bytes
    /// this version cannot read (the caller then starts from the log's beginning, redelivering
    /// rather than losing).
    fn decode(raw: &[u8]) -> Option<DeliveryState> {
        let mut b = raw;
        if b.remaining() < 13 || b.get_u8() != STATE_V1 {
            return None;
        }
        let next = b.get_i64();
        let n = b.get_u32() as usize;
        if b.remaining() != n.checked_mul(12)? {
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
        Some(DeliveryState {
            next,
            unacked: BTreeSet::new(),
            requeued,
        })
    }
}

struct Counters {
    state: DeliveryState,
    consumers: u32,
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
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("vhost", &self.def.vhost)
            .field("name", &self.def.name)
            .finish()
    }
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
        let (ready_tx, _) = watch::channel(0);
        Queue {
            def,
            exclusive_owner,
            log,
            dir,
            meta,
            inner: Mutex::new(Counters {
                state: st,
                consumers: 0,
            }),
            limits,
            dead: Mutex::new(Vec::new()),
            maintenance: tokio::sync::Notify::new(),
            clock,
            ready_tx,
            deleted: AtomicBool::new(false),
        }
    }

    pub fn limits(&self) -> &QueueLimits {
        &self.limits
    }

    /// Applies TTL and max-length to the ready messages. Removed ones are settled, or with a
    /// dead-letter exchange, kept unacked and queued for the maintenance task. Called with the
    /// state lock held.
    fn enforce_limits(&self, st: &mut DeliveryState, hw: i64) {
        if !self.limits.needs_maintenance() {
            return;
        }
        let mut removed: Vec<(i64, DeathReason)> = Vec::new();
        if let Some(ttl) = self.limits.message_ttl_ms {
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
        if let Some(max) = self.limits.max_length {
            let ready = (hw - st.next).max(0) as u64 + st.requeued.len() as u64;
            for _ in 0..ready.saturating_sub(max) {
                // The head is the oldest ready message: requeued ones sit below the cursor.
                if let Some(o) = st.requeued.pop_first() {
                    removed.push((o, DeathReason::MaxLen));
                } else {
                    removed.push((st.next, DeathReason::MaxLen));
                    st.next += 1;
                }
            }
        }
        if removed.is_empty() {
            return;
        }
        if self.limits.dead_letter_exchange.is_some() {
            st.unacked.extend(removed.iter().map(|(o, _)| *o));
            self.dead.lock().extend(removed);
            self.maintenance.notify_one();
        }
        self.persist(st);
    }

    /// Runs the limits now (the maintenance task's tick).
    pub fn enforce_now(&self) {
        let hw = self.log.high_watermark();
        let mut inner = self.inner.lock();
        self.enforce_limits(&mut inner.state, hw);
    }

    /// Takes the messages waiting to be dead-lettered.
    pub fn take_dead(&self) -> Vec<(i64, DeathReason)> {
        std::mem::take(&mut *self.dead.lock())
    }

    /// Resolves when dead letters are waiting.
    pub async fn dead_letters_waiting(&self) {
        self.maintenance.notified().await
    }

    /// When the oldest ready message expires (ms since the epoch), if the queue has a TTL.
    pub fn next_expiry_ms(&self) -> Option<i64> {
        let ttl = self.limits.message_ttl_ms?;
        let hw = self.log.high_watermark();
        let head = {
            let inner = self.inner.lock();
            let st = &inner.state;
            match st.requeued.first() {
                Some(o) => *o,
                None if st.next < hw => st.next,
                None => return None,
            }
        };
        let records = self.read_records(&[head]).ok()?;
        Some(records.get(&head)?.timestamp.saturating_add(ttl))
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
    pub async fn submit(&self, record: SimpleRecord) -> Result<PendingAppend, LogError> {
        self.log
            .submit_append(crate::log::try_encode_batch(
                std::slice::from_ref(&record),
                &crate::log::EncodeOptions::default(),
            )?)
            .await
    }

    /// Ready messages: fresh ones below the high watermark plus requeued ones.
    pub fn message_count(&self) -> u64 {
        let hw = self.log.high_watermark();
        let mut inner = self.inner.lock();
        self.enforce_limits(&mut inner.state, hw);
        (hw - inner.state.next).max(0) as u64 + inner.state.requeued.len() as u64
    }

    /// Messages handed out and not settled.
    pub fn unacked_count(&self) -> u64 {
        self.inner.lock().state.unacked.len() as u64
    }

    pub fn consumer_count(&self) -> u32 {
        self.inner.lock().consumers
    }

    pub fn add_consumer(&self) {
        self.inner.lock().consumers += 1;
    }

    /// Returns the remaining consumer count.
    pub fn remove_consumer(&self) -> u32 {
        let mut inner = self.inner.lock();
        inner.consumers = inner.consumers.saturating_sub(1);
        inner.consumers
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
        let mut claimed: Vec<(i64, bool)> = Vec::new();
        {
            let mut inner = self.inner.lock();
            let st = &mut inner.state;
            self.enforce_limits(st, hw);
            while claimed.len() < max {
                let Some(o) = st.requeued.pop_first() else {
                    break;
                };
                claimed.push((o, true));
            }
            while claimed.len() < max && st.next < hw {
                claimed.push((st.next, false));
                st.next += 1;
            }
            if claimed.is_empty() {
                return Ok(Vec::new());
            }
            if !settle {
                st.unacked.extend(claimed.iter().map(|(o, _)| *o));
            }
            self.persist(st);
        }
        let offsets: Vec<i64> = claimed.iter().map(|(o, _)| *o).collect();
        let records = match self.read_records(&offsets) {
            Ok(r) => r,
            Err(e) => {
                // Give the claim back so the messages are not lost to a transient read error.
                let mut inner = self.inner.lock();
                for o in &offsets {
                    inner.state.unacked.remove(o);
                    inner.state.requeued.insert(*o);
                }
                self.persist(&inner.state);
                return Err(e);
            }
        };
        let mut out = Vec::with_capacity(claimed.len());
        let mut missing = Vec::new();
        for (offset, redelivered) in claimed {
            match records.get(&offset) {
                Some(record) => out.push(QueuedMessage {
                    offset,
                    redelivered,
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
                let set = match kafka_protocol::records::RecordBatchDecoder::decode(&mut buf) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(queue = %self.def.name, error = %e, "undecodable batch in queue log");
                        break;
                    }
                };
                for r in set.records {
                    if r.control || wanted.binary_search(&r.offset).is_err() {
                        continue;
                    }
                    found.insert(
                        r.offset,
                        SimpleRecord {
                            key: r.key,
                            value: r.value,
                            headers: r
                                .headers
                                .into_iter()
                                .map(|(k, v)| (k.to_string(), v))
                                .collect(),
                            timestamp: r.timestamp,
                        },
                    );
                }
            }
            i += 1;
        }
        Ok(found)
    }

    /// Settles unacked offsets (ack, reject/nack without requeue). Unknown offsets are ignored.
    pub fn ack(&self, offsets: &[i64]) {
        let mut inner = self.inner.lock();
        let mut changed = false;
        for o in offsets {
            changed |= inner.state.unacked.remove(o);
        }
        if changed {
            self.persist(&inner.state);
        }
    }

    /// Returns unacked offsets to the queue, to be delivered again with `redelivered` set.
    pub fn requeue(&self, offsets: &[i64]) {
        let mut inner = self.inner.lock();
        let mut changed = false;
        for o in offsets {
            if inner.state.unacked.remove(o) {
                inner.state.requeued.insert(*o);
                changed = true;
            }
        }
        if changed {
            self.persist(&inner.state);
            drop(inner);
            self.ready_tx.send_modify(|v| *v += 1);
        }
    }

    /// Settles every ready message (not the unacked ones); returns how many.
    pub fn purge(&self) -> u64 {
        let hw = self.log.high_watermark();
        let mut inner = self.inner.lock();
        let st = &mut inner.state;
        let fresh = (hw - st.next).max(0) as u64;
        let count = fresh + st.requeued.len() as u64;
        st.next = st.next.max(hw);
        st.requeued.clear();
        self.persist(st);
        count
    }

    /// The low-water mark: every offset below it is settled.
    pub fn low_water_mark(&self) -> i64 {
        let inner = self.inner.lock();
        let st = &inner.state;
        let mut low = st.next;
        if let Some(o) = st.unacked.first() {
            low = low.min(*o);
        }
        if let Some(o) = st.requeued.first() {
            low = low.min(*o);
        }
        low
    }

    fn persist(&self, st: &DeliveryState) {
        let Some(meta) = &self.meta else { return };
        if self.is_deleted() {
            return;
        }
        if let Err(e) = meta.put_queue_state(&self.def.vhost, &self.def.name, &st.encode()) {
            // The in-memory state stays right; a restart would redeliver, never lose.
            tracing::error!(queue = %self.def.name, error = %e, "persisting queue state failed");
        }
    }

    /// Bytes of the persisted state, for tests of the on-disk design.
    pub fn encoded_state(&self) -> Vec<u8> {
        self.inner.lock().state.encode()
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
