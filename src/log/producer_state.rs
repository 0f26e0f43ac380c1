//! Idempotent-producer state of one partition: which sequence numbers each producer id has
//! written, so a retried batch is recognised and not appended twice.
//!
//! Kafka keeps this beside the log, and so does Ferry: the state is derived entirely from the
//! batch headers (producer id, epoch, base sequence, offsets), so it can always be rebuilt by
//! scanning the log. To avoid scanning everything on every start, a snapshot of the table and
//! the offset it covers is written at roll and at clean close (`producer_state.snapshot`); on
//! open, the snapshot is loaded and only the batches after its offset are scanned.
//!
//! Rules (Kafka's, per producer id and partition): the last five batches' sequence ranges are
//! remembered; a batch equal to one of them is a duplicate and is answered with the offsets it
//! got the first time; otherwise its first sequence must follow the last one (wrapping at
//! `i32::MAX`); a lower epoch is fenced; a higher epoch starts again at sequence 0.

use std::collections::{HashMap, VecDeque};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::batch::BatchHeader;
use super::txn_index::TxnIndex;
use super::LogError;

/// Batches per producer whose sequence ranges are remembered (Kafka's
/// `max.in.flight.requests.per.connection` limit for idempotence).
const REMEMBERED_BATCHES: usize = 5;

/// File name of the snapshot inside the partition directory.
pub const SNAPSHOT_FILE: &str = "producer_state.snapshot";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SeqRange {
    first_seq: i32,
    last_seq: i32,
    first_offset: i64,
    last_offset: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ProducerEntry {
    epoch: i16,
    recent: VecDeque<SeqRange>,
    /// Largest timestamp of the last batch appended (DescribeProducers' `last_timestamp`);
    /// -1 in snapshots written before it was kept, until the producer's next batch.
    #[serde(default = "no_timestamp")]
    last_timestamp: i64,
}

fn no_timestamp() -> i64 {
    -1
}

/// What to do with an incoming batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqCheck {
    /// Not idempotent, or the next expected sequence: append it.
    Append,
    /// Already appended at these offsets: answer with them, append nothing.
    Duplicate { first_offset: i64, last_offset: i64 },
}

/// The sequence of the last record of a batch, wrapping as Kafka does.
fn last_sequence(base: i32, last_offset_delta: i32) -> i32 {
    ((i64::from(base) + i64::from(last_offset_delta)) % (i64::from(i32::MAX) + 1)) as i32
}

fn next_sequence(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

/// One idempotent producer's state in one partition, as operators see it (the admin API's
/// producer view): its epoch and the last batch it appended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducerSummary {
    pub producer_id: i64,
    pub epoch: i16,
    /// Sequence of the last record appended (the next batch must start one past it).
    pub last_sequence: i32,
    /// Offset of that record.
    pub last_offset: i64,
    /// Largest timestamp of that batch (-1 if unknown).
    pub last_timestamp: i64,
}

/// The table for one partition.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerStates {
    producers: HashMap<i64, ProducerEntry>,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    /// Every batch below this offset is reflected in `states`.
    offset: i64,
    states: ProducerStates,
    /// Open and aborted transactions (see `txn_index`); absent in snapshots of older versions,
    /// which predate transactions, so empty is right for them.
    #[serde(default)]
    txns: TxnIndex,
}

impl ProducerStates {
    /// Decides what to do with a batch (header as received, before offsets are assigned).
    pub fn check(&self, h: &BatchHeader) -> Result<SeqCheck, LogError> {
        // Transaction markers carry no sequence; the coordinator writes them, never a client.
        if h.producer_id < 0 || h.is_control() {
            return Ok(SeqCheck::Append);
        }
        let last_seq = last_sequence(h.base_sequence, h.last_offset_delta);
        let Some(entry) = self.producers.get(&h.producer_id) else {
            return if h.base_sequence == 0 {
                Ok(SeqCheck::Append)
            } else {
                Err(LogError::UnknownProducerId(h.producer_id))
            };
        };
        if h.producer_epoch < entry.epoch {
            return Err(LogError::InvalidProducerEpoch {
                producer_id: h.producer_id,
                epoch: h.producer_epoch,
                current: entry.epoch,
            });
        }
        if h.producer_epoch > entry.epoch {
            return if h.base_sequence == 0 {
                Ok(SeqCheck::Append)
            } else {
                Err(LogError::OutOfOrderSequence {
                    producer_id: h.producer_id,
                    expected: 0,
                    received: h.base_sequence,
                })
            };
        }
        if let Some(dup) = entry
            .recent
            .iter()
            .find(|r| r.first_seq == h.base_sequence && r.last_seq == last_seq)
        {
            return Ok(SeqCheck::Duplicate {
                first_offset: dup.first_offset,
                last_offset: dup.last_offset,
            });
        }
        let expected = entry
            .recent
            .back()
            .map(|r| next_sequence(r.last_seq))
            .unwrap_or(0);
        if h.base_sequence == expected {
            Ok(SeqCheck::Append)
        } else {
            Err(LogError::OutOfOrderSequence {
                producer_id: h.producer_id,
                expected,
                received: h.base_sequence,
            })
        }
    }

    /// Records a batch as appended (header with its assigned offsets).
    pub fn record(&mut self, h: &BatchHeader) {
        if h.producer_id < 0 {
            return;
        }
        if h.is_control() {
            // A marker written with a bumped epoch (a zombie's transaction aborted by its
            // successor) fences the older epoch here too; it has no sequence to remember.
            let entry = self.producers.entry(h.producer_id).or_default();
            if h.producer_epoch > entry.epoch {
                entry.epoch = h.producer_epoch;
                entry.recent.clear();
            }
            return;
        }
        let range = SeqRange {
            first_seq: h.base_sequence,
            last_seq: last_sequence(h.base_sequence, h.last_offset_delta),
            first_offset: h.base_offset,
            last_offset: h.base_offset + i64::from(h.last_offset_delta),
        };
        let entry = self.producers.entry(h.producer_id).or_default();
        if h.producer_epoch != entry.epoch {
            entry.epoch = h.producer_epoch;
            entry.recent.clear();
        }
        entry.recent.push_back(range);
        entry.last_timestamp = h.max_timestamp;
        while entry.recent.len() > REMEMBERED_BATCHES {
            entry.recent.pop_front();
        }
    }

    /// Forgets producers none of whose remembered batches is at or above `log_start` (their
    /// data was deleted by retention; Kafka answers them UNKNOWN_PRODUCER_ID too).
    pub fn expire_below(&mut self, log_start: i64) {
        self.producers
            .retain(|_, e| e.recent.back().is_some_and(|r| r.last_offset >= log_start));
    }

    /// Every producer with a remembered batch, by producer id.
    pub fn summaries(&self) -> Vec<ProducerSummary> {
        let mut out: Vec<ProducerSummary> = self
            .producers
            .iter()
            .filter_map(|(&producer_id, entry)| {
                entry.recent.back().map(|last| ProducerSummary {
                    producer_id,
                    epoch: entry.epoch,
                    last_sequence: last.last_seq,
                    last_offset: last.last_offset,
                    last_timestamp: entry.last_timestamp,
                })
            })
            .collect();
        out.sort_by_key(|p| p.producer_id);
        out
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Writes the snapshot atomically (temp file + rename). Failure is not fatal — the state
    /// can be rebuilt from the log — so it is logged by the caller, not propagated as a
    /// fail-stop.
    pub fn save(&self, dir: &Path, offset: i64, txns: &TxnIndex) -> std::io::Result<()> {
        let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
        let body = serde_json::to_vec(&Snapshot {
            offset,
            states: self.clone(),
            txns: txns.clone(),
        })
        .map_err(std::io::Error::other)?;
        std::fs::write(&tmp, body)?;
        std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))
    }

    /// Loads the snapshot, if there is a readable one; returns it with the transaction index
    /// saved with it and the offset both cover.
    pub fn load(dir: &Path) -> Option<(ProducerStates, TxnIndex, i64)> {
        let raw = std::fs::read(dir.join(SNAPSHOT_FILE)).ok()?;
        match serde_json::from_slice::<Snapshot>(&raw) {
            Ok(s) => Some((s.states, s.txns, s.offset)),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "ignoring unreadable producer state snapshot; rebuilding from the log");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(pid: i64, epoch: i16, base_seq: i32, count: i32, base_offset: i64) -> BatchHeader {
        BatchHeader {
            base_offset,
            batch_length: 0,
            partition_leader_epoch: -1,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: count - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: base_seq,
            records_count: count,
        }
    }

    #[test]
    fn sequences_duplicates_gaps_and_epochs() {
        let mut s = ProducerStates::default();
        assert_eq!(
            s.check(&header(-1, -1, -1, 3, 0)).unwrap(),
            SeqCheck::Append
        );
        assert!(matches!(
            s.check(&header(7, 0, 5, 1, 0)),
            Err(LogError::UnknownProducerId(7))
        ));
        assert_eq!(s.check(&header(7, 0, 0, 3, 0)).unwrap(), SeqCheck::Append);
        s.record(&header(7, 0, 0, 3, 10));
        assert_eq!(
            s.check(&header(7, 0, 0, 3, 0)).unwrap(),
            SeqCheck::Duplicate {
                first_offset: 10,
                last_offset: 12
            }
        );
        assert!(matches!(
            s.check(&header(7, 0, 4, 1, 0)),
            Err(LogError::OutOfOrderSequence { expected: 3, .. })
        ));
        assert_eq!(s.check(&header(7, 0, 3, 1, 0)).unwrap(), SeqCheck::Append);
        s.record(&header(7, 1, 0, 1, 20));
        assert!(matches!(
            s.check(&header(7, 0, 1, 1, 0)),
            Err(LogError::InvalidProducerEpoch { .. })
        ));
        assert!(matches!(
            s.check(&header(7, 2, 3, 1, 0)),
            Err(LogError::OutOfOrderSequence { expected: 0, .. })
        ));
    }

    #[test]
    fn only_the_last_five_batches_are_remembered_and_sequences_wrap() {
        let mut s = ProducerStates::default();
        for i in 0..7 {
            s.record(&header(1, 0, i, 1, i64::from(i)));
        }
        assert!(matches!(
            s.check(&header(1, 0, 6, 1, 0)).unwrap(),
            SeqCheck::Duplicate {
                first_offset: 6,
                ..
            }
        ));
        assert!(s.check(&header(1, 0, 1, 1, 0)).is_err());
        assert_eq!(last_sequence(i32::MAX - 1, 3), 1);
        s.record(&header(2, 0, i32::MAX - 1, 2, 100));
        assert_eq!(s.check(&header(2, 0, 0, 1, 0)).unwrap(), SeqCheck::Append);
    }

    #[test]
    fn snapshot_round_trip_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ProducerStates::default();
        s.record(&header(1, 0, 0, 2, 0));
        s.record(&header(2, 3, 0, 1, 50));
        s.save(dir.path(), 51, &TxnIndex::default()).unwrap();
        let (loaded, _, offset) = ProducerStates::load(dir.path()).unwrap();
        assert_eq!((loaded.clone(), offset), (s, 51));
        let mut expired = loaded;
        expired.expire_below(10);
        assert_eq!(expired.len(), 1);
        std::fs::write(dir.path().join(SNAPSHOT_FILE), b"garbage").unwrap();
        assert!(ProducerStates::load(dir.path()).is_none());
    }
}
