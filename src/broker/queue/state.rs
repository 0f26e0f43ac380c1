//! The persisted delivery state of a queue (see the module docs of [`super`]): the cursor and
//! the unsettled offsets below it as ranges, delivery counts and delayed retries, in a small
//! versioned binary form. Pure data and codec, no I/O, so it is tested on its own.

use super::*;

/// Version byte of the persisted delivery state without delivery counts.
pub(super) const STATE_V1: u8 = 1;
/// Version byte of the state with delivery counts appended.
pub(super) const STATE_V2: u8 = 2;
/// Version byte of the state with delivery counts and delayed retries (due times) appended.
pub(super) const STATE_V3: u8 = 3;

/// The delivery state described in the module docs.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct DeliveryState {
    pub(super) next: i64,
    pub(super) unacked: BTreeSet<i64>,
    pub(super) requeued: BTreeSet<i64>,
    /// How often each unsettled message was returned to the queue, for `x-delivery-limit`.
    /// Only messages returned at least once have an entry, so it is bounded by the unsettled
    /// set (usually by prefetch), not by the queue's length.
    pub(super) returns: BTreeMap<i64, u32>,
    /// Returned messages waiting out a retry backoff: offset -> when they become ready (ms
    /// since the epoch). Unsettled, but neither ready nor unacked.
    pub(super) delayed: BTreeMap<i64, i64>,
}

impl DeliveryState {
    /// Every offset below this is settled: the least of the cursor and the unsettled sets.
    pub(super) fn low_water_mark(&self) -> i64 {
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
    pub(super) fn encode(&self) -> Vec<u8> {
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
    pub(super) fn decode(raw: &[u8]) -> Option<DeliveryState> {
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
