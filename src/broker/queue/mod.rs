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
//!
//! Rooms: this file holds the [`Queue`] type, its construction and accessors; [`args`] parses
//! the declaration, [`state`] is the persisted delivery state and its codec (pure), [`ready`]
//! the size and priority bookkeeping, [`submit`] publishing, [`enforce`] TTLs and length limits,
//! [`consumers`] consumer slots and breakers, [`claim`] taking messages for delivery,
//! [`settle`] acks and requeues, [`reclaim`] the low-water mark, segment deletion and state
//! writes, [`flusher`] the coalesced state writer.

mod args;
mod claim;
mod consumers;
mod enforce;
mod flusher;
mod ready;
mod reclaim;
mod settle;
mod state;
mod submit;

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

pub use args::{Overflow, QueueLimits};
pub use flusher::{StateFlusher, STATE_WRITE_DELAY};
use ready::{
    body_len, head_of, record_expiry, record_priority, remove_head, PrioIndex, Sizes,
    PRIORITY_WINDOW,
};
use state::DeliveryState;
pub use submit::encode_one;

/// Why a message left its queue without being acked (RabbitMQ's x-death reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    Rejected,
    Expired,
    MaxLen,
    DeliveryLimit,
    /// Refused by the queue's schema validation (`x-schema-validation: dead-letter`).
    Schema,
}

impl DeathReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
            DeathReason::MaxLen => "maxlen",
            DeathReason::DeliveryLimit => "delivery_limit",
            DeathReason::Schema => "schema",
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
}
