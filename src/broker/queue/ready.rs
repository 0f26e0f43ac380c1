//! Bookkeeping of what is ready and in which order: body sizes for byte limits and
//! reject-publish ([`Sizes`]), the bounded priority index of priority queues ([`PrioIndex`]),
//! and the head that TTLs and drop-head act on.

use super::*;

/// How many ready messages of a priority queue are held in its in-memory priority index.
/// Messages beyond the window wait in the log in arrival order and enter the index as it
/// drains, so the index costs at most about 60 bytes x 64 Ki = 4 MiB per queue however long
/// the queue grows (plus one byte per appended-but-not-indexed message for its priority);
/// priority order is exact among the oldest 64 Ki ready messages.
pub(super) const PRIORITY_WINDOW: usize = 64 * 1024;

/// Body sizes of the unsettled messages, for `x-max-length-bytes` and for reject-publish (which
/// must count messages still on their way into the log). Kept only by queues with those
/// arguments: 12 bytes or so per unsettled message, bounded by the limits themselves.
#[derive(Debug, Default)]
pub(super) struct Sizes {
    /// Sizes of appends submitted but not yet below the high watermark, in offset order: one
    /// writer per log keeps submit order and offset order the same.
    pub(super) inflight: VecDeque<u32>,
    /// Every offset below this has its size in `by_offset` (if unsettled).
    pub(super) known_upto: i64,
    pub(super) by_offset: HashMap<i64, u32>,
    /// Body bytes of the ready messages (fresh and requeued).
    pub(super) ready_bytes: u64,
}

/// The delivery order of a priority queue. Ready messages in the window (see
/// [`PRIORITY_WINDOW`]) are kept in `DeliveryState::requeued` (so persistence and counting
/// treat them like any ready message below the cursor) and, here, by priority level; delivery
/// takes the lowest offset of the highest non-empty level. Bodies are never copied: the index
/// holds offsets and one byte of priority each.
#[derive(Debug)]
pub(super) struct PrioIndex {
    pub(super) max: u8,
    /// Ready indexed offsets per priority level, in offset order.
    pub(super) levels: Vec<BTreeSet<i64>>,
    /// Priority of every indexed unsettled message (ready or unacked), so a returned
    /// message goes back to its level.
    pub(super) prio_of: HashMap<i64, u8>,
    /// Indexed messages never handed out (delivered with `redelivered` unset).
    pub(super) fresh: HashSet<i64>,
    /// Priorities of messages from offset `base` on that are not indexed yet, in offset
    /// order: appends record them at submit, so indexing them needs no read.
    pub(super) pending: VecDeque<u8>,
    pub(super) base: i64,
    /// Ready offsets restored at open whose priorities must be read once.
    pub(super) scan: bool,
}

impl PrioIndex {
    pub(super) fn add(&mut self, o: i64, p: u8) {
        let p = p.min(self.max);
        self.prio_of.insert(o, p);
        self.levels[usize::from(p)].insert(o);
    }

    /// Makes an indexed message ready again (a return, a failed read).
    pub(super) fn readd(&mut self, o: i64) {
        let p = self.prio_of.get(&o).copied().unwrap_or(0);
        self.add(o, p);
    }

    /// A ready message left the ready set without being delivered.
    pub(super) fn unready(&mut self, o: i64) {
        if let Some(p) = self.prio_of.get(&o) {
            self.levels[usize::from(*p)].remove(&o);
        }
        self.fresh.remove(&o);
    }

    pub(super) fn settle(&mut self, o: i64) {
        self.unready(o);
        self.prio_of.remove(&o);
    }

    pub(super) fn pop_highest(&mut self) -> Option<i64> {
        self.levels.iter_mut().rev().find_map(|l| l.pop_first())
    }
}

pub(super) fn record_priority(record: &SimpleRecord) -> u8 {
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
pub(super) fn head_of(c: &Counters, hw: i64) -> Option<i64> {
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
pub(super) fn remove_head(c: &mut Counters, head: i64) {
    if let Some(ix) = c.prio.as_mut() {
        ix.unready(head);
    }
    if !c.state.requeued.remove(&head) {
        c.state.next += 1;
    }
}

impl Sizes {
    pub(super) fn size(&self, o: i64) -> u64 {
        self.by_offset.get(&o).copied().map_or(0, u64::from)
    }

    pub(super) fn leave_ready(&mut self, o: i64) {
        self.ready_bytes = self.ready_bytes.saturating_sub(self.size(o));
    }

    pub(super) fn enter_ready(&mut self, o: i64) {
        self.ready_bytes += self.size(o);
    }

    pub(super) fn settle(&mut self, o: i64) {
        self.by_offset.remove(&o);
    }
}

pub(super) fn body_len(record: &SimpleRecord) -> u32 {
    record
        .value
        .as_ref()
        .map_or(0, |v| u32::try_from(v.len()).unwrap_or(u32::MAX))
}

/// The record's own expiry (ms since the epoch), from [`TTL_HEADER`].
pub(super) fn record_expiry(record: &SimpleRecord) -> Option<i64> {
    let (_, v) = record.headers.iter().find(|(k, _)| k == TTL_HEADER)?;
    let ttl: i64 = std::str::from_utf8(v.as_ref()?).ok()?.parse().ok()?;
    Some(record.timestamp.saturating_add(ttl.max(0)))
}
