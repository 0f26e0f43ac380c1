//! Deleting whole segments from the start of a [`PartitionLog`]: by retention (`retention.ms`,
//! `retention.bytes`) and, for queues, once every message in them is settled.
//!
//! Deleting is done in two steps. Under the log's lock, the segments leave the list and their
//! files are renamed to `*.deleted` (from then on no restart brings them back). Unlinking them
//! and syncing the directory ([`RetiredFiles::unlink`]) is the slow part, tens of
//! milliseconds for a 64 MiB queue segment on a disk mounted with `discard`, so the partition
//! handle does it after releasing the lock, off the async workers: done under the lock, it
//! stalled every append, read and delivery of the partition (and the async worker that
//! acknowledged the message that settled the segment) for as long.

use std::path::PathBuf;

use super::{PartitionLog, RetentionReport};
use crate::log::recovery;
use crate::log::retention::{self, SegmentMeta};
use crate::log::segment::{self, Segment};
use crate::log::Result;

/// Why segments are deleted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reason {
    /// `retention.ms` / `retention.bytes`: a zero-copy send may still be reading such a segment
    /// through an open descriptor, so its file is unlinked whole.
    Retention,
    /// Every message in them is settled (queues): nothing reads them any more, so their blocks
    /// are freed in steps ([`segment::shrink_gradually`]).
    Settled,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Retention => "retention",
            Reason::Settled => "settled",
        }
    }
}

/// Files of deleted segments, renamed but not yet unlinked.
#[must_use = "the files stay on disk (as *.deleted) until unlinked"]
#[derive(Debug, Default)]
pub struct RetiredFiles {
    dir: Option<PathBuf>,
    paths: Vec<PathBuf>,
    /// Free the files' blocks in steps first (see [`Reason::Settled`]).
    shrink: bool,
}

impl RetiredFiles {
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Unlinks the files and syncs their directory; blocking.
    pub fn unlink(self) -> Result<()> {
        for path in &self.paths {
            if self.shrink {
                segment::shrink_gradually(path);
            }
            segment::unlink_retired(path);
        }
        match &self.dir {
            // The directory may be gone with its partition or queue meanwhile.
            Some(dir) if dir.exists() => recovery::sync_dir(dir),
            _ => Ok(()),
        }
    }
}

impl PartitionLog {
    /// Deletes whole old segments per `retention.ms` and `retention.bytes` (see `retention.rs`),
    /// rolling the active segment first if it has entirely expired. The log start offset moves
    /// up to the first remaining segment.
    pub fn enforce_retention(&mut self) -> Result<RetentionReport> {
        let (report, retired) = self.retire_for_retention()?;
        retired.unlink()?;
        Ok(report)
    }

    /// [`enforce_retention`](Self::enforce_retention) up to the renames; the caller unlinks.
    pub fn retire_for_retention(&mut self) -> Result<(RetentionReport, RetiredFiles)> {
        self.check_open()?;
        let now = self.clock.now_ms();
        let metas: Vec<SegmentMeta> = self
            .segments
            .iter()
            .map(|s| SegmentMeta {
                base_offset: s.base_offset(),
                size_bytes: s.size(),
                largest_timestamp_ms: s.retention_timestamp(),
            })
            .collect();
        let plan = retention::plan(&metas, &self.config, now);
        let mut report = RetentionReport {
            log_start_offset: self.log_start_offset(),
            ..RetentionReport::default()
        };
        if plan.delete_count == 0 {
            return Ok((report, RetiredFiles::default()));
        }
        if plan.roll_active {
            if let Err(e) = self.roll() {
                return Err(self.fail(e));
            }
            report.rolled = true;
        }
        self.retire_oldest(plan.delete_count, Reason::Retention, report)
    }

    /// Takes the `count` oldest segments out of the log, renames their files for deletion and
    /// moves the log start past them; `why` also names the rule in the log line. A file that cannot
    /// be renamed is reported (it would reappear at the next start, where the same rule
    /// deletes it again).
    fn retire_oldest(
        &mut self,
        count: usize,
        why: Reason,
        mut report: RetentionReport,
    ) -> Result<(RetentionReport, RetiredFiles)> {
        let doomed: Vec<Segment> = self.segments.drain(..count).collect();
        let mut retired = RetiredFiles {
            dir: Some(self.dir.clone()),
            paths: Vec::new(),
            shrink: why == Reason::Settled,
        };
        let mut first_error = None;
        for seg in &doomed {
            report.deleted_segments += 1;
            report.deleted_bytes += seg.size();
            tracing::info!(path = %seg.log_path().display(), bytes = seg.size(), why = why.as_str(), "deleting segment");
            match seg.retire_files() {
                Ok(paths) => retired.paths.extend(paths),
                Err(e) => {
                    tracing::warn!(error = %e, why = why.as_str(), "cannot delete segment; it will reappear on restart");
                    first_error.get_or_insert(e);
                }
            }
        }
        report.log_start_offset = self.log_start_offset();
        self.producers.expire_below(report.log_start_offset);
        self.txns.expire_below(report.log_start_offset);
        match first_error {
            Some(e) => {
                // What was renamed still goes.
                let _ = retired.unlink();
                Err(e)
            }
            None => Ok((report, retired)),
        }
    }

    /// Deletes the oldest segments whose every offset lies below `offset`, never the active
    /// one. Queues call it with their low-water mark once every message in a segment is
    /// settled (ARCHITECTURE rule 4, the LavinMQ model); the log start moves up with it.
    pub fn delete_segments_below(&mut self, offset: i64) -> Result<RetentionReport> {
        let (report, retired) = self.retire_segments_below(offset)?;
        retired.unlink()?;
        Ok(report)
    }

    /// [`delete_segments_below`](Self::delete_segments_below) up to the renames; the caller
    /// unlinks.
    pub fn retire_segments_below(
        &mut self,
        offset: i64,
    ) -> Result<(RetentionReport, RetiredFiles)> {
        self.check_open()?;
        let report = RetentionReport {
            log_start_offset: self.log_start_offset(),
            ..RetentionReport::default()
        };
        // A segment is wholly below `offset` when its successor starts at or below it; the
        // active segment has no successor, so it is never chosen.
        let count = self
            .segments
            .windows(2)
            .take_while(|w| w[1].base_offset() <= offset)
            .count();
        if count == 0 {
            return Ok((report, RetiredFiles::default()));
        }
        self.retire_oldest(count, Reason::Settled, report)
    }
}
