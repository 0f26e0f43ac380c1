//! Deleting whole segments from the start of a [`PartitionLog`]: by retention (`retention.ms`,
//! `retention.bytes`) and, for queues, once every message in them is settled.

use super::{PartitionLog, RetentionReport};
use crate::log::recovery;
use crate::log::retention::{self, SegmentMeta};
use crate::log::segment::Segment;
use crate::log::Result;

impl PartitionLog {
    /// Deletes whole old segments per `retention.ms` and `retention.bytes` (see `retention.rs`),
    /// rolling the active segment first if it has entirely expired. The log start offset moves
    /// up to the first remaining segment.
    pub fn enforce_retention(&mut self) -> Result<RetentionReport> {
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
            return Ok(report);
        }
        if plan.roll_active {
            if let Err(e) = self.roll() {
                return Err(self.fail(e));
            }
            report.rolled = true;
        }
        self.drop_oldest(plan.delete_count, "retention", report)
    }

    /// Deletes the `count` oldest segments' files and moves the log start past them; `why`
    /// names the rule in the log line. A file that cannot be deleted is reported (it would
    /// reappear at the next start, where the same rule deletes it again).
    fn drop_oldest(
        &mut self,
        count: usize,
        why: &str,
        mut report: RetentionReport,
    ) -> Result<RetentionReport> {
        let doomed: Vec<Segment> = self.segments.drain(..count).collect();
        let mut first_error = None;
        for seg in &doomed {
            report.deleted_segments += 1;
            report.deleted_bytes += seg.size();
            tracing::info!(path = %seg.log_path().display(), bytes = seg.size(), why, "deleting segment");
            if let Err(e) = seg.delete_files() {
                tracing::warn!(error = %e, why, "cannot delete segment; it will reappear on restart");
                first_error.get_or_insert(e);
            }
        }
        recovery::sync_dir(&self.dir)?;
        report.log_start_offset = self.log_start_offset();
        self.producers.expire_below(report.log_start_offset);
        self.txns.expire_below(report.log_start_offset);
        match first_error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// Deletes the oldest segments whose every offset lies below `offset`, never the active
    /// one. Queues call it with their low-water mark once every message in a segment is
    /// settled (ARCHITECTURE rule 4, the LavinMQ model); the log start moves up with it.
    pub fn delete_segments_below(&mut self, offset: i64) -> Result<RetentionReport> {
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
            return Ok(report);
        }
        self.drop_oldest(count, "settled", report)
    }
}
