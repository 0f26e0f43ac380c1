//! One cleaner pass over one partition ([`PartitionHandle::clean`]): plan, map the dirty
//! section's keys, rewrite each sealed segment with something to drop, swap it in, advance the
//! checkpoint. The rules are in `cleaner.rs`; this file is the I/O and the locking, which is
//! kept to short critical sections so producers and readers are never held up behind a pass.

use std::io::Write;
use std::os::unix::fs::FileExt;

use bytes::{Bytes, BytesMut};

use super::batch::BatchIter;
use super::cleaner::{self, Compacted, OffsetMap, Retain};
use super::partition_log::PartitionLog;
use super::writer::PartitionHandle;
use super::{LogError, Result};

/// Bytes read at a time, both when mapping keys and when rewriting a segment.
const READ_CHUNK: usize = 4 << 20;

/// What a pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CleanReport {
    /// The dirty ratio that made the pass run.
    pub dirty_ratio: f64,
    /// Segments rewritten.
    pub segments_rewritten: usize,
    /// Records dropped.
    pub records_removed: u64,
    /// Bytes the log shrank by.
    pub bytes_reclaimed: u64,
    /// The offset below which the log is now clean.
    pub clean_upto: i64,
}

impl PartitionHandle {
    /// Runs one compaction pass if the partition is compacted and due (see `cleaner.rs`),
    /// with `map` as the offset map (cleared first; its memory bounds the pass). Blocking:
    /// call it from a blocking thread. `Ok(None)`: nothing was due.
    pub fn clean(&self, map: &mut OffsetMap) -> Result<Option<CleanReport>> {
        let lock = self.log_lock();
        let (views, dir, config, now, first_unstable, aborted) = {
            let log = lock.read();
            log.check_open()?;
            (
                log.cleaner_views(),
                log.dir().to_path_buf(),
                log.config().clone(),
                log.clock_now_ms(),
                log.first_unstable_offset(),
                // Everything the pass can reach is below the log end.
                log.aborted_between(i64::MIN, log.log_end_offset()),
            )
        };
        let checkpoint = cleaner::read_checkpoint(&dir).unwrap_or(i64::MIN);
        let gaps_below = cleaner::read_gaps_below(&dir).unwrap_or(i64::MIN);
        let Some(plan) = cleaner::plan(&views, checkpoint, &config, now) else {
            return Ok(None);
        };
        metrics::gauge!("ferry_log_cleaner_dirty_ratio", self.metric_labels())
            .set(plan.dirty_ratio);
        if !plan.due {
            return Ok(None);
        }

        // Map the keys of the dirty section, which ends before any open transaction (its
        // outcome decides whether its records count).
        map.clear();
        let clean_upto = first_unstable.map_or(plan.clean_upto, |f| f.min(plan.clean_upto));
        let mut map_end = clean_upto;
        let mut at = plan.dirty_from;
        while at < clean_upto {
            let slice = lock.read().read(at, READ_CHUNK, clean_upto)?;
            if slice.bytes.is_empty() || slice.next_offset <= at {
                break;
            }
            if let Some(full_at) = cleaner::map_keys(&slice.bytes, at, map, &aborted)? {
                map_end = full_at;
                break;
            }
            at = slice.next_offset;
        }
        let rules = Retain {
            map_end,
            tombstone_horizon: now.saturating_sub(config.delete_retention_ms),
        };

        // Recovery must accept the gaps this pass may leave before the first swap.
        let gaps_below = gaps_below.max(map_end);
        cleaner::write_checkpoint(&dir, checkpoint.max(plan.dirty_from), gaps_below)?;
        let mut report = CleanReport {
            dirty_ratio: plan.dirty_ratio,
            clean_upto: map_end,
            ..CleanReport::default()
        };
        for view in &views[..plan.cleanable_segments] {
            if view.base_offset >= map_end {
                break;
            }
            let Some(pinned) = lock.read().pin_sealed(view.base_offset)? else {
                continue;
            };
            let (bytes, counts) = compact_file(&pinned.file, pinned.size, map, rules, &aborted)?;
            if counts.removed == 0 {
                continue;
            }
            let mut cleaned = pinned.log_path.clone().into_os_string();
            cleaned.push(".cleaned");
            let cleaned = std::path::PathBuf::from(cleaned);
            if let Err(e) = write_synced(&cleaned, &bytes) {
                let _ = std::fs::remove_file(&cleaned);
                return Err(e);
            }
            if !lock
                .write()
                .begin_swap(view.base_offset, pinned.size, &cleaned)?
            {
                continue;
            }
            let segment = match PartitionLog::open_cleaned(&dir, view.base_offset, &config) {
                Ok(s) => s,
                Err(e) => {
                    // The new file is in place; the old object keeps serving reads from its
                    // pinned descriptor, and a restart would open the new one.
                    tracing::error!(dir = %dir.display(), base = view.base_offset, error = %e, "opening a cleaned segment failed");
                    return Err(e);
                }
            };
            lock.write().finish_swap(segment);
            drop(pinned);
            report.segments_rewritten += 1;
            report.records_removed += counts.removed;
            report.bytes_reclaimed += view.size.saturating_sub(bytes.len() as u64);
        }
        cleaner::write_checkpoint(&dir, map_end, gaps_below)?;
        metrics::counter!("ferry_log_cleaner_runs_total").increment(1);
        metrics::counter!("ferry_log_cleaner_bytes_reclaimed_total")
            .increment(report.bytes_reclaimed);
        metrics::counter!("ferry_log_cleaner_records_removed_total")
            .increment(report.records_removed);
        if report.segments_rewritten > 0 {
            self.refresh_gauges();
        }
        tracing::debug!(dir = %dir.display(), ?report, "cleaned partition log");
        Ok(Some(report))
    }
}

/// Reads a sealed segment through its pinned descriptor in chunks of whole batches and
/// returns what the cleaner keeps of it.
fn compact_file(
    file: &std::fs::File,
    size: u64,
    map: &OffsetMap,
    rules: Retain,
    aborted: &[crate::log::AbortedTxn],
) -> Result<(Bytes, Compacted)> {
    let mut out = BytesMut::new();
    let mut total = Compacted::default();
    let mut pos = 0u64;
    while pos < size {
        let want = (READ_CHUNK as u64).min(size - pos) as usize;
        let mut buf = vec![0u8; want];
        file.read_exact_at(&mut buf, pos)
            .map_err(|e| LogError::io("read a segment to clean", e))?;
        let mut whole = 0usize;
        let mut iter = BatchIter::new(&buf);
        for (_, range) in iter.by_ref() {
            whole = range.end;
        }
        if whole == 0 {
            // One batch larger than the chunk: read exactly it.
            let Some(stop) = iter.take_stop() else { break };
            let header = super::batch::BatchHeader::parse(&buf).map_err(|_| stop.into_error())?;
            buf = vec![0u8; header.total_size()];
            file.read_exact_at(&mut buf, pos)
                .map_err(|e| LogError::io("read a segment to clean", e))?;
            whole = buf.len();
        }
        buf.truncate(whole);
        let counts = cleaner::compact_batches(&Bytes::from(buf), map, rules, aborted, &mut out)?;
        total.kept += counts.kept;
        total.removed += counts.removed;
        pos += whole as u64;
    }
    Ok((out.freeze(), total))
}

fn write_synced(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let io = |what: &str, e| LogError::io(format!("{what} {}", path.display()), e);
    let mut file = std::fs::File::create(path).map_err(|e| io("create", e))?;
    file.write_all(bytes).map_err(|e| io("write", e))?;
    file.sync_data().map_err(|e| io("fsync", e))
}
