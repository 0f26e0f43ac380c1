//! What the cleaner (`cleaner_run.rs`) needs of [`PartitionLog`]: a view of the segments, a
//! sealed segment's file pinned open for reading outside the lock, and the two steps of a swap
//! (see `cleaner.rs` for why it is split in two).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::PartitionLog;
use crate::log::cleaner::SegmentView;
use crate::log::segment::Segment;
use crate::log::{recovery, Result};

/// A sealed segment's `.log` held open, so its bytes stay readable whatever happens to the path.
pub(crate) struct PinnedSegment {
    pub file: Arc<File>,
    pub size: u64,
    pub log_path: PathBuf,
}

impl PartitionLog {
    /// The segments as the cleaner plans with them, oldest first (the last is the active one).
    pub(crate) fn cleaner_views(&self) -> Vec<SegmentView> {
        self.segments
            .iter()
            .map(|s| SegmentView {
                base_offset: s.base_offset(),
                next_offset: s.next_offset(),
                size: s.size(),
                max_timestamp: s.max_timestamp(),
            })
            .collect()
    }

    fn sealed_index(&self, base_offset: i64) -> Option<usize> {
        let last = self.segments.len() - 1;
        self.segments[..last]
            .iter()
            .position(|s| s.base_offset() == base_offset)
    }

    /// The sealed segment at `base_offset`, pinned open; `None` if it is gone or active.
    pub(crate) fn pin_sealed(&self, base_offset: i64) -> Result<Option<PinnedSegment>> {
        self.check_open()?;
        let Some(i) = self.sealed_index(base_offset) else {
            return Ok(None);
        };
        let seg = &self.segments[i];
        Ok(Some(PinnedSegment {
            file: seg.sync_handle().pin()?,
            size: seg.size(),
            log_path: seg.log_path().to_path_buf(),
        }))
    }

    /// First half of a swap: puts the fsynced `cleaned` file in place of the sealed segment at
    /// `base_offset`, if it is still there with `size` bytes (else removes `cleaned` and
    /// answers `false`). Its indexes are unlinked first, so that after a crash recovery
    /// rebuilds them from whichever `.log` is there. The segment object keeps serving reads
    /// from its pinned descriptor until [`finish_swap`](Self::finish_swap). A failure half
    /// way fail-stops the log: what is on disk is for recovery to sort out.
    pub(crate) fn begin_swap(
        &mut self,
        base_offset: i64,
        size: u64,
        cleaned: &Path,
    ) -> Result<bool> {
        self.check_open()?;
        let current = self.sealed_index(base_offset).map(|i| &self.segments[i]);
        let Some(seg) = current.filter(|s| s.size() == size) else {
            let _ = std::fs::remove_file(cleaned);
            return Ok(false);
        };
        let paths = [
            seg.index().path().to_path_buf(),
            seg.time_index().path().to_path_buf(),
        ];
        let log_path = seg.log_path().to_path_buf();
        let swapped = (|| {
            for path in &paths {
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(crate::log::LogError::io(
                            format!("remove {}", path.display()),
                            e,
                        ))
                    }
                }
            }
            std::fs::rename(cleaned, &log_path).map_err(|e| {
                crate::log::LogError::io(
                    format!("rename {} over {}", cleaned.display(), log_path.display()),
                    e,
                )
            })?;
            recovery::sync_dir(&self.dir)
        })();
        match swapped {
            Ok(()) => Ok(true),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Opens the cleaned segment at `base_offset` (building its indexes); no lock needed.
    pub(crate) fn open_cleaned(
        dir: &Path,
        base_offset: i64,
        config: &crate::log::LogConfig,
    ) -> Result<Segment> {
        recovery::reopen_cleaned_segment(dir, base_offset, config)
    }

    /// Second half of a swap: the new segment object replaces the old one (if retention has
    /// not deleted it meanwhile).
    pub(crate) fn finish_swap(&mut self, segment: Segment) -> bool {
        match self.sealed_index(segment.base_offset()) {
            Some(i) => {
                self.segments[i] = segment;
                true
            }
            None => false,
        }
    }
}
