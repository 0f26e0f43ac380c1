//! Transaction state of one partition: which producers have a transaction open here (so the
//! last stable offset can be computed) and which transactions were aborted (so
//! `read_committed` readers can drop their records). Kafka's `.txnindex` and its producer
//! state's "ongoing transactions", in one table.
//!
//! Like the idempotence state beside it, this is derived entirely from the log: a
//! transactional data batch opens (or extends) its producer's transaction; a control batch
//! (the COMMIT or ABORT marker the transaction coordinator writes) closes it, and an ABORT
//! records the range `[first offset, marker offset]` of that producer as aborted. It is saved
//! with the producer-state snapshot (at roll and clean close) and the batches after the
//! snapshot are replayed on open, so it is durable and rebuilt on recovery without scanning
//! the whole log. Aborted ranges wholly below the log start are forgotten with the segments
//! that held them.
//!
//! Design choice: one index per partition rather than Kafka's one file per segment. The ranges
//! are tiny (24 bytes each) and retention trims them by offset, which is what the per-segment
//! files buy Kafka.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::batch::{decode_next_batch, BatchHeader};

/// One aborted transaction in this partition: producer `producer_id`'s records from
/// `first_offset` up to its ABORT marker at `last_offset` must be dropped by committed readers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
}

impl AbortedTxn {
    /// Whether the data batch of `producer_id` at `offset` belongs to this aborted transaction.
    pub fn covers(&self, producer_id: i64, offset: i64) -> bool {
        self.producer_id == producer_id && (self.first_offset..=self.last_offset).contains(&offset)
    }
}

/// Whether the data batch `h` belongs to one of the `aborted` transactions (those a
/// committed read returned with it): readers other than Kafka fetch drop such batches.
pub fn is_aborted(aborted: &[AbortedTxn], h: &BatchHeader) -> bool {
    h.is_transactional()
        && !h.is_control()
        && aborted
            .iter()
            .any(|a| a.covers(h.producer_id, h.base_offset))
}

/// What a control batch says (the `type` of its record key; Kafka's `ControlRecordType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlKind {
    Abort,
    Commit,
}

impl ControlKind {
    /// The key's `type` field.
    pub fn code(self) -> i16 {
        match self {
            ControlKind::Abort => 0,
            ControlKind::Commit => 1,
        }
    }
}

/// Reads the marker type from a control batch's first record key (version i16, type i16).
/// `None` for anything else (unknown types are ignored, as Kafka ignores them).
pub fn control_kind(batch: &[u8]) -> Option<ControlKind> {
    let mut buf = Bytes::copy_from_slice(batch);
    let records = decode_next_batch(&mut buf).ok()?;
    let key = records.first()?.record.key.as_ref()?;
    if key.len() < 4 {
        return None;
    }
    match i16::from_be_bytes([key[2], key[3]]) {
        0 => Some(ControlKind::Abort),
        1 => Some(ControlKind::Commit),
        _ => None,
    }
}

/// The table for one partition.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnIndex {
    /// Producer id -> offset of the first record of its open transaction here.
    ongoing: BTreeMap<i64, i64>,
    /// Aborted transactions in marker order (so sorted by `last_offset`).
    aborted: Vec<AbortedTxn>,
}

impl TxnIndex {
    /// Accounts for a batch as stored (offsets assigned); `batch` is its bytes, read only for
    /// control batches.
    pub fn record(&mut self, h: &BatchHeader, batch: &[u8]) {
        if h.producer_id < 0 || !h.is_transactional() {
            return;
        }
        if !h.is_control() {
            self.ongoing.entry(h.producer_id).or_insert(h.base_offset);
            return;
        }
        let first = self.ongoing.remove(&h.producer_id);
        if let (Some(ControlKind::Abort), Some(first_offset)) = (control_kind(batch), first) {
            self.aborted.push(AbortedTxn {
                producer_id: h.producer_id,
                first_offset,
                last_offset: h.base_offset,
            });
        }
    }

    /// Offset of the first record of the oldest open transaction, if any is open.
    pub fn first_unstable_offset(&self) -> Option<i64> {
        self.ongoing.values().min().copied()
    }

    /// Offset of the first record of `producer_id`'s open transaction here, if one is open.
    pub fn open_since(&self, producer_id: i64) -> Option<i64> {
        self.ongoing.get(&producer_id).copied()
    }

    /// Whether `producer_id` has an open transaction in this partition.
    pub fn is_open(&self, producer_id: i64) -> bool {
        self.ongoing.contains_key(&producer_id)
    }

    /// Aborted transactions with records in `[from, to)`: what a fetch of that range returns
    /// so the client can drop their records.
    pub fn aborted_between(&self, from: i64, to: i64) -> Vec<AbortedTxn> {
        // Sorted by marker offset: everything whose marker is below `from` is irrelevant.
        let start = self.aborted.partition_point(|a| a.last_offset < from);
        self.aborted[start..]
            .iter()
            .filter(|a| a.first_offset < to)
            .copied()
            .collect()
    }

    /// Forgets aborted transactions whose marker is below `log_start` (deleted by retention).
    pub fn expire_below(&mut self, log_start: i64) {
        self.aborted.retain(|a| a.last_offset >= log_start);
    }

    /// Number of aborted transactions remembered.
    pub fn aborted_len(&self) -> usize {
        self.aborted.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch::{encode_control_batch, try_encode_batch, EncodeOptions, SimpleRecord};

    fn data(pid: i64, base_offset: i64, n: usize) -> (BatchHeader, Vec<u8>) {
        let records: Vec<SimpleRecord> = (0..n)
            .map(|i| SimpleRecord {
                key: None,
                value: Some(Bytes::from(format!("v{i}"))),
                headers: vec![],
                timestamp: 1,
            })
            .collect();
        let options = EncodeOptions {
            base_offset,
            producer_id: pid,
            producer_epoch: 0,
            base_sequence: 0,
            transactional: true,
            ..EncodeOptions::default()
        };
        let bytes = try_encode_batch(&records, &options).unwrap().to_vec();
        (BatchHeader::parse(&bytes).unwrap(), bytes)
    }

    fn marker(pid: i64, offset: i64, kind: ControlKind) -> (BatchHeader, Vec<u8>) {
        let mut bytes = encode_control_batch(pid, 0, kind, 0, 1).to_vec();
        crate::log::batch::set_base_offset(&mut bytes, offset);
        (BatchHeader::parse(&bytes).unwrap(), bytes)
    }

    #[test]
    fn open_commit_abort_and_ranges() {
        let mut index = TxnIndex::default();
        let (h, b) = data(1, 10, 3);
        index.record(&h, &b);
        let (h, b) = data(2, 13, 1);
        index.record(&h, &b);
        let (h, b) = data(1, 14, 1);
        index.record(&h, &b);
        assert_eq!(index.first_unstable_offset(), Some(10));
        assert_eq!(
            control_kind(&marker(1, 15, ControlKind::Abort).1),
            Some(ControlKind::Abort)
        );
        let (h, b) = marker(1, 15, ControlKind::Abort);
        index.record(&h, &b);
        assert_eq!(index.first_unstable_offset(), Some(13));
        let (h, b) = marker(2, 16, ControlKind::Commit);
        index.record(&h, &b);
        assert_eq!(index.first_unstable_offset(), None);
        let aborted = AbortedTxn {
            producer_id: 1,
            first_offset: 10,
            last_offset: 15,
        };
        assert_eq!(index.aborted_between(0, 100), vec![aborted]);
        assert_eq!(index.aborted_between(16, 100), vec![]);
        assert_eq!(index.aborted_between(0, 10), vec![]);
        assert!(aborted.covers(1, 14) && !aborted.covers(2, 14) && !aborted.covers(1, 16));
        // A marker with no open transaction (a repeated marker after a restart) changes nothing.
        let (h, b) = marker(1, 17, ControlKind::Abort);
        index.record(&h, &b);
        assert_eq!(index.aborted_len(), 1);
        index.expire_below(16);
        assert_eq!(index.aborted_len(), 0);
    }
}
