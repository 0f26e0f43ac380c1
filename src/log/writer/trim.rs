//! Deleting a partition's oldest segments through its handle: retention, and a queue's fully
//! settled segments. Under the log's write lock the segments only leave the list and their
//! files are renamed (see `partition_log/trim.rs`); the slow part, unlinking and syncing the
//! directory, runs after the lock is released, so appends, reads and deliveries go on
//! meanwhile.

use super::{PartitionHandle, RetentionReport};
use crate::log::partition_log::RetiredFiles;
use crate::log::{LogError, Result};

impl PartitionHandle {
    /// Applies retention (blocking file deletions; call from a blocking context). The files
    /// are unlinked after the log's lock is released, so appends and reads go on meanwhile.
    pub fn enforce_retention(&self) -> Result<RetentionReport> {
        let (result, end) = {
            let mut log = self.shared.log.write();
            (log.retire_for_retention(), log.log_end_offset())
        };
        let result = result.and_then(|(report, retired)| {
            retired.unlink()?;
            Ok(report)
        });
        match &result {
            // Rolling synced everything, so the whole log is durable: without this the log start
            // could briefly pass a high watermark still waiting for the writer's fsync.
            Ok(report) if report.rolled => self.shared.advance_high_watermark(end),
            Err(e @ LogError::FailStopped(_)) => self.shared.mark_failed(e),
            _ => {}
        }
        self.shared.publish_gauges();
        result
    }

    /// Deletes the segments wholly below `offset` (see
    /// [`PartitionLog::delete_segments_below`]). Queues call it on the ack path, from async
    /// tasks: the segments leave the log under its lock, and their files are unlinked on the
    /// blocking pool (inline outside a runtime), since unlinking a large file and syncing the
    /// directory can take tens of milliseconds.
    pub fn delete_segments_below(&self, offset: i64) -> Result<RetentionReport> {
        let result = self.shared.log.write().retire_segments_below(offset);
        let result = match result {
            Ok((report, retired)) => {
                unlink_off_worker(retired);
                Ok(report)
            }
            Err(e) => Err(e),
        };
        if let Err(e @ LogError::FailStopped(_)) = &result {
            self.shared.mark_failed(e);
        }
        self.shared.publish_gauges();
        result
    }

    /// Where the second-oldest segment starts: once everything below it is settled, the
    /// oldest segment can go. `None` while the log has one segment.
    pub fn second_segment_base(&self) -> Option<i64> {
        self.shared
            .log
            .read()
            .segments()
            .get(1)
            .map(|s| s.base_offset())
    }
}

/// Unlinks retired segment files on the blocking pool when called from a runtime, else now.
fn unlink_off_worker(retired: RetiredFiles) {
    if retired.is_empty() {
        return;
    }
    let unlink = move || {
        if let Err(e) = retired.unlink() {
            tracing::warn!(error = %e, "syncing the directory of deleted segments failed");
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn_blocking(unlink);
        }
        Err(_) => unlink(),
    }
}
