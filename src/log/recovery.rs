//! Rebuilding a partition's in-memory state from its directory on open, repairing what a crash
//! or a bad disk left behind.
//!
//! Design (Kafka's, simplified to one writer and whole-segment retention):
//! - Stray files are cleaned up first: `.deleted` / `.tmp` / `.swap` / `.cleaned` are unlinked
//!   (half-done deletions or foreign temp files), indexes without a `.log` are unlinked, and a
//!   name that does not parse is reported and left alone — never a panic.
//! - Sealed segments (all but the last) were fsynced with their indexes when they rolled, so they
//!   are trusted if both indexes pass [`OffsetIndex::load`] / [`TimeIndex::load`]; only their tail
//!   after the last index entry is walked to learn the next offset. A failed check means a full
//!   scan and a rebuild.
//! - The last segment is fully scanned with CRC checks unless the previous close left the
//!   clean-shutdown marker (then only the tail after the last index entry is verified). The scan
//!   stops at a torn batch, a CRC mismatch, zero-filled (preallocated) space, or a batch whose
//!   offset goes backwards; the file is truncated there and both indexes are rebuilt.
//! - A corrupt sealed segment is truncated the same way but later segments are kept: that leaves
//!   an offset gap (reads skip it) instead of throwing away good data, unlike Kafka which deletes
//!   everything after the corruption.
//!
//! Every repair is a `tracing::warn!` and an entry in [`RecoveryReport`].

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::batch::{BatchHeader, BatchIter, BatchStop, CRC_START, HEADER_LEN};
use super::config::LogConfig;
use super::index::{IndexEntry, OffsetIndex};
use super::segment::{self, Segment, SegmentState};
use super::time_index::{TimeEntry, TimeIndex};
use super::{LogError, Result};
use crate::clock::Clock;

/// Name of the marker file a clean [`close`](super::PartitionLog::close) leaves in the directory.
pub const CLEAN_SHUTDOWN_FILE: &str = ".clean_shutdown";

/// Bytes read at a time while scanning a segment.
const SCAN_BUFFER: usize = 4 << 20;

/// What [`PartitionLog::open`](super::PartitionLog::open) found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments in the log after recovery.
    pub segments: usize,
    /// Bytes cut off the end of segments (torn, corrupt or zero-filled tails).
    pub truncated_bytes: u64,
    /// `.log` files that were truncated.
    pub truncated_segments: Vec<PathBuf>,
    /// Index files that were missing or corrupt and were rebuilt.
    pub rebuilt_indexes: Vec<PathBuf>,
    /// Whether the previous close was clean (the marker file was present).
    pub clean_shutdown: bool,
    /// Stray files that were unlinked (`.deleted`, `.tmp`, orphan indexes, ...).
    pub removed_files: Vec<PathBuf>,
    /// Files whose names are not segment files; left untouched.
    pub skipped_files: Vec<PathBuf>,
}

impl RecoveryReport {
    /// True when nothing had to be repaired.
    pub fn is_clean(&self) -> bool {
        self.truncated_bytes == 0
            && self.truncated_segments.is_empty()
            && self.rebuilt_indexes.is_empty()
    }

    /// Number of repairs (truncated segments plus rebuilt indexes), for metrics.
    pub fn repairs(&self) -> usize {
        self.truncated_segments.len() + self.rebuilt_indexes.len()
    }
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} segment(s), {} shutdown, ",
            self.segments,
            if self.clean_shutdown {
                "clean"
            } else {
                "unclean"
            }
        )?;
        if self.is_clean() {
            f.write_str("nothing repaired")?;
        } else {
            write!(
                f,
                "truncated {} byte(s) in {} segment(s), rebuilt {} index file(s)",
                self.truncated_bytes,
                self.truncated_segments.len(),
                self.rebuilt_indexes.len()
            )?;
        }
        if !self.removed_files.is_empty() {
            write!(f, ", removed {} stray file(s)", self.removed_files.len())?;
        }
        if !self.skipped_files.is_empty() {
            write!(f, ", skipped {} unknown file(s)", self.skipped_files.len())?;
        }
        Ok(())
    }
}

/// fsyncs a directory so created, renamed and deleted entries survive a power loss.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LogError::io(format!("fsync directory {}", dir.display()), e))
}

#[derive(Default)]
struct Found {
    log: bool,
    index: Option<PathBuf>,
    time_index: Option<PathBuf>,
}

/// Parses `00000000000000000042` into 42; anything else is not a segment name.
fn parse_base(stem: &str) -> Option<i64> {
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Recovers the segments in `dir` (creating it if needed). Always returns at least one segment.
pub(crate) fn recover(
    dir: &Path,
    config: &LogConfig,
    clock: &Clock,
) -> Result<(Vec<Segment>, RecoveryReport)> {
    std::fs::create_dir_all(dir)
        .map_err(|e| LogError::io(format!("create directory {}", dir.display()), e))?;
    let mut report = RecoveryReport::default();

    let marker = dir.join(CLEAN_SHUTDOWN_FILE);
    if marker.exists() {
        report.clean_shutdown = true;
        // Removed before any append so that a crash from here on is seen as unclean.
        std::fs::remove_file(&marker)
            .map_err(|e| LogError::io(format!("remove {}", marker.display()), e))?;
        sync_dir(dir)?;
    }

    let mut found: BTreeMap<i64, Found> = BTreeMap::new();
    let entries =
        std::fs::read_dir(dir).map_err(|e| LogError::io(format!("list {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| LogError::io(format!("list {}", dir.display()), e))?;
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            tracing::warn!(path = %path.display(), "skipping file with a non-UTF-8 name");
            report.skipped_files.push(path);
            continue;
        };
        if path.is_dir() {
            tracing::warn!(path = %path.display(), "skipping unexpected directory in partition");
            report.skipped_files.push(path);
            continue;
        }
        if [".deleted", ".tmp", ".swap", ".cleaned"]
            .iter()
            .any(|s| name.ends_with(s))
        {
            tracing::warn!(path = %path.display(), "removing leftover file");
            std::fs::remove_file(&path)
                .map_err(|e| LogError::io(format!("remove {}", path.display()), e))?;
            report.removed_files.push(path);
            continue;
        }
        if name == super::producer_state::SNAPSHOT_FILE || name == super::cleaner::CHECKPOINT_FILE {
            continue;
        }
        let parsed = name
            .rsplit_once('.')
            .and_then(|(stem, ext)| parse_base(stem).map(|b| (b, ext)));
        match parsed {
            Some((base, "log")) => found.entry(base).or_default().log = true,
            Some((base, "index")) => found.entry(base).or_default().index = Some(path),
            Some((base, "timeindex")) => found.entry(base).or_default().time_index = Some(path),
            _ => {
                tracing::warn!(path = %path.display(), "skipping file that is not a segment file");
                report.skipped_files.push(path);
            }
        }
    }

    // Indexes whose log is gone (e.g. a crash mid-deletion) would confuse nothing but are junk.
    let mut bases = Vec::new();
    for (base, f) in found {
        if f.log {
            bases.push(base);
        } else {
            for path in [f.index, f.time_index].into_iter().flatten() {
                tracing::warn!(path = %path.display(), "removing index without a log file");
                std::fs::remove_file(&path)
                    .map_err(|e| LogError::io(format!("remove {}", path.display()), e))?;
                report.removed_files.push(path);
            }
        }
    }

    // Below this offset the cleaner may have left gaps (see `scan`).
    let gaps_below = super::cleaner::read_gaps_below(dir).unwrap_or(i64::MIN);
    let mut segments = Vec::with_capacity(bases.len().max(1));
    for (i, &base) in bases.iter().enumerate() {
        let is_last = i + 1 == bases.len();
        let trust_indexes = !is_last || report.clean_shutdown;
        let seg = recover_segment(
            dir,
            base,
            is_last,
            trust_indexes,
            gaps_below,
            config,
            clock,
            &mut report,
        )?;
        segments.push(seg);
    }
    if segments.is_empty() {
        segments.push(Segment::create(dir, 0)?);
        sync_dir(dir)?;
    }
    report.segments = segments.len();
    if !report.is_clean() {
        tracing::warn!(dir = %dir.display(), %report, "partition log recovered with repairs");
    } else {
        tracing::debug!(dir = %dir.display(), %report, "partition log opened");
    }
    Ok((segments, report))
}

/// Opens a sealed segment the cleaner has just rewritten (its indexes unlinked), building its
/// indexes from the new file.
pub(crate) fn reopen_cleaned_segment(dir: &Path, base: i64, config: &LogConfig) -> Result<Segment> {
    let mut report = RecoveryReport::default();
    // `clock` only dates an active segment; this one is sealed.
    recover_segment(
        dir,
        base,
        false,
        false,
        i64::MAX,
        config,
        &Clock::manual(0),
        &mut report,
    )
}

/// What a scan of (part of) a segment established.
struct Scan {
    valid_end: u64,
    next_offset: i64,
    max_timestamp: i64,
    offset_of_max_timestamp: i64,
    first_timestamp: Option<i64>,
    index: Vec<IndexEntry>,
    time_index: Vec<TimeEntry>,
    bytes_since_index: usize,
    stop: Option<String>,
}

#[allow(clippy::too_many_arguments)]
fn recover_segment(
    dir: &Path,
    base: i64,
    is_last: bool,
    trust_indexes: bool,
    gaps_below: i64,
    config: &LogConfig,
    clock: &Clock,
    report: &mut RecoveryReport,
) -> Result<Segment> {
    let log_path = segment::log_path(dir, base);
    let index_path = segment::index_path(dir, base);
    let time_path = segment::time_index_path(dir, base);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&log_path)
        .map_err(|e| LogError::io(format!("open {}", log_path.display()), e))?;
    let len = file
        .metadata()
        .map_err(|e| LogError::io(format!("stat {}", log_path.display()), e))?
        .len();

    let index = OffsetIndex::load(&index_path, base, len)?;
    let time_index = TimeIndex::load(&time_path, base, len)?;
    // A sealed segment opened without trusting its indexes is the cleaner's, which unlinked
    // them on purpose: no warning then.
    let expected_rebuild = !is_last && !trust_indexes;
    if index.is_none() {
        report.rebuilt_indexes.push(index_path.clone());
        if !expected_rebuild {
            tracing::warn!(path = %index_path.display(), "offset index missing or corrupt; rebuilding");
        }
    }
    if time_index.is_none() {
        report.rebuilt_indexes.push(time_path.clone());
        if !expected_rebuild {
            tracing::warn!(path = %time_path.display(), "time index missing or corrupt; rebuilding");
        }
    }

    // Fast path: trusted indexes, verify only from the last index entry on.
    if trust_indexes {
        if let (Some(mut index), Some(mut time_index)) = (index, time_index) {
            let from = index.last().map(|e| u64::from(e.position)).unwrap_or(0);
            let scan = scan(&file, &log_path, base, from, len, None, gaps_below, config)?;
            // Any problem in the tail means the index cannot be trusted to say where the valid
            // region ends (or what its next offset is): rescan the whole segment instead.
            if scan.stop.is_none() {
                truncate_if_needed(&file, &log_path, len, &scan, report)?;
                index.truncate_to_position(scan.valid_end)?;
                time_index.truncate_to_offset(scan.next_offset)?;
                for e in &scan.index {
                    index.append(e.offset, e.position);
                }
                let (mut max_ts, mut max_off) = time_index
                    .last()
                    .map(|e| (e.timestamp, e.offset))
                    .unwrap_or((-1, base));
                if scan.max_timestamp > max_ts {
                    max_ts = scan.max_timestamp;
                    max_off = scan.offset_of_max_timestamp;
                }
                for e in &scan.time_index {
                    time_index.maybe_append(e.timestamp, e.offset);
                }
                index.flush()?;
                time_index.flush()?;
                let created_at_ms = if is_last && scan.valid_end > 0 {
                    Some(created_at(&file, clock))
                } else {
                    None
                };
                let state = SegmentState {
                    size: scan.valid_end,
                    next_offset: scan.next_offset,
                    max_timestamp: max_ts,
                    offset_of_max_timestamp: max_off,
                    created_at_ms,
                    bytes_since_index: scan.bytes_since_index,
                };
                return Ok(Segment::from_parts(
                    base, log_path, file, index, time_index, state,
                ));
            }
            tracing::warn!(path = %log_path.display(), "segment tail fails verification; rescanning");
        }
    }

    let scan = scan(
        &file,
        &log_path,
        base,
        0,
        len,
        Some(base),
        gaps_below,
        config,
    )?;
    truncate_if_needed(&file, &log_path, len, &scan, report)?;
    let index = OffsetIndex::rebuild(&index_path, base, &scan.index)?;
    let mut time_index = TimeIndex::rebuild(&time_path, base, &scan.time_index)?;
    if !is_last {
        // Sealed segments carry their final max-timestamp entry, as `finish` would write.
        if scan.max_timestamp >= 0 {
            time_index.maybe_append(scan.max_timestamp, scan.offset_of_max_timestamp);
        }
        let mut index = index;
        index.sync()?;
        time_index.sync()?;
        return Ok(Segment::from_parts(
            base,
            log_path,
            file,
            index,
            time_index,
            SegmentState {
                size: scan.valid_end,
                next_offset: scan.next_offset,
                max_timestamp: scan.max_timestamp,
                offset_of_max_timestamp: scan.offset_of_max_timestamp,
                created_at_ms: None,
                bytes_since_index: scan.bytes_since_index,
            },
        ));
    }
    let now = clock.now_ms();
    let created_at_ms = scan
        .first_timestamp
        .map(|ts| if (0..=now).contains(&ts) { ts } else { now });
    Ok(Segment::from_parts(
        base,
        log_path,
        file,
        index,
        time_index,
        SegmentState {
            size: scan.valid_end,
            next_offset: scan.next_offset,
            max_timestamp: scan.max_timestamp,
            offset_of_max_timestamp: scan.offset_of_max_timestamp,
            created_at_ms,
            bytes_since_index: scan.bytes_since_index,
        },
    ))
}

/// `segment.ms` age origin of a reopened segment: its first batch's max timestamp (as Kafka),
/// unless that is missing or in the future, then now.
fn created_at(file: &File, clock: &Clock) -> i64 {
    let now = clock.now_ms();
    let mut header = [0u8; HEADER_LEN];
    match file.read_exact_at(&mut header, 0) {
        Ok(()) => match BatchHeader::parse(&header) {
            Ok(h) if (0..=now).contains(&h.max_timestamp) => h.max_timestamp,
            _ => now,
        },
        Err(_) => now,
    }
}

fn truncate_if_needed(
    file: &File,
    path: &Path,
    len: u64,
    scan: &Scan,
    report: &mut RecoveryReport,
) -> Result<()> {
    if scan.valid_end >= len {
        return Ok(());
    }
    let cut = len - scan.valid_end;
    tracing::warn!(
        path = %path.display(),
        valid_bytes = scan.valid_end,
        truncated_bytes = cut,
        reason = scan.stop.as_deref().unwrap_or("unknown"),
        "truncating segment at the end of its valid batches"
    );
    file.set_len(scan.valid_end)
        .map_err(|e| LogError::io(format!("truncate {}", path.display()), e))?;
    file.sync_data()
        .map_err(|e| LogError::io(format!("fsync {}", path.display()), e))?;
    report.truncated_bytes += cut;
    report.truncated_segments.push(path.to_path_buf());
    Ok(())
}

/// Scans batches from `from` (a batch boundary) to `len`, checking framing, CRC and offsets,
/// and computing the index entries the append path would have written. The writer assigns
/// offsets densely, so each batch must start where the previous one ended; `expected` is the
/// first batch's base offset if known (`None` when starting mid-segment, where any base at or
/// above the segment base is accepted). Since the base offset field is outside the CRC, this is
/// also what catches a damaged base offset. The one exception is below `gaps_below`, the range
/// the cleaner has compacted (`cleaner.rs`), where dropped records leave gaps: there a batch
/// may start past where the previous one ended, as in Kafka.
#[allow(clippy::too_many_arguments)]
fn scan(
    file: &File,
    path: &Path,
    segment_base: i64,
    from: u64,
    len: u64,
    expected: Option<i64>,
    gaps_below: i64,
    config: &LogConfig,
) -> Result<Scan> {
    let mut s = Scan {
        valid_end: from,
        next_offset: expected.unwrap_or(segment_base),
        max_timestamp: -1,
        offset_of_max_timestamp: segment_base,
        first_timestamp: None,
        index: Vec::new(),
        time_index: Vec::new(),
        bytes_since_index: 0,
        stop: None,
    };
    let mut expected_next = expected;
    let read_err = |e| LogError::io(format!("read {}", path.display()), e);
    let mut buf = vec![0u8; SCAN_BUFFER.min(len.saturating_sub(from) as usize)];
    let mut pos = from;
    'outer: while pos < len {
        let n = (buf.len() as u64).min(len - pos) as usize;
        file.read_exact_at(&mut buf[..n], pos).map_err(read_err)?;
        let mut it = BatchIter::new(&buf[..n]);
        for (h, range) in it.by_ref() {
            if !accept(
                &mut s,
                &h,
                pos + range.start as u64,
                expected_next,
                segment_base,
                gaps_below,
                config,
            ) {
                break 'outer;
            }
            expected_next = Some(h.next_offset());
        }
        let consumed = it.valid_len() as u64;
        match it.take_stop() {
            None => pos += consumed,
            Some(BatchStop::Incomplete { at, needed }) => {
                let at = pos + at as u64;
                if at + needed as u64 > len {
                    s.stop = Some(format!("torn batch at position {at}"));
                    break;
                }
                if needed > buf.len() {
                    // A batch bigger than the buffer: check it with a streaming CRC.
                    let mut header = [0u8; HEADER_LEN];
                    file.read_exact_at(&mut header, at).map_err(read_err)?;
                    let h = match BatchHeader::parse(&header) {
                        Ok(h) => h,
                        Err(e) => {
                            s.stop = Some(format!("invalid batch at position {at}: {e}"));
                            break;
                        }
                    };
                    if !large_batch_crc_ok(file, at, &h).map_err(read_err)? {
                        s.stop = Some(format!("CRC mismatch at position {at}"));
                        break;
                    }
                    if !accept(
                        &mut s,
                        &h,
                        at,
                        expected_next,
                        segment_base,
                        gaps_below,
                        config,
                    ) {
                        break;
                    }
                    expected_next = Some(h.next_offset());
                    pos = at + h.total_size() as u64;
                } else {
                    pos = at;
                }
            }
            Some(BatchStop::ZeroFilled { at }) => {
                s.stop = Some(format!(
                    "zero-filled (preallocated) space at position {}",
                    pos + at as u64
                ));
                break;
            }
            Some(BatchStop::Invalid { at, error }) => {
                s.stop = Some(format!("{error} at position {}", pos + at as u64));
                break;
            }
        }
    }
    Ok(s)
}

/// Adds one verified batch at `position` to the scan, or records why it ends the valid region.
fn accept(
    s: &mut Scan,
    h: &BatchHeader,
    position: u64,
    expected: Option<i64>,
    segment_base: i64,
    gaps_below: i64,
    config: &LogConfig,
) -> bool {
    let in_order = match expected {
        Some(e) => h.base_offset == e || (h.base_offset > e && h.base_offset < gaps_below),
        None => h.base_offset >= segment_base,
    };
    if !in_order || h.last_offset() - segment_base > u32::MAX as i64 {
        s.stop = Some(format!(
            "batch at position {position} has base offset {} but {} was expected",
            h.base_offset,
            expected.unwrap_or(segment_base)
        ));
        return false;
    }
    if s.first_timestamp.is_none() && position == 0 {
        s.first_timestamp = Some(h.max_timestamp);
    }
    if h.max_timestamp > s.max_timestamp {
        s.max_timestamp = h.max_timestamp;
        s.offset_of_max_timestamp = h.last_offset();
    }
    if s.bytes_since_index > config.index_interval_bytes {
        if let Ok(pos) = u32::try_from(position) {
            s.index.push(IndexEntry {
                offset: h.last_offset(),
                position: pos,
            });
            s.time_index.push(TimeEntry {
                timestamp: s.max_timestamp,
                offset: s.offset_of_max_timestamp,
            });
        }
        s.bytes_since_index = 0;
    }
    s.bytes_since_index += h.total_size();
    s.valid_end = position + h.total_size() as u64;
    s.next_offset = h.next_offset();
    true
}

fn large_batch_crc_ok(file: &File, at: u64, h: &BatchHeader) -> std::io::Result<bool> {
    let mut chunk = vec![0u8; 1 << 20];
    let mut crc = 0u32;
    let mut off = at + CRC_START as u64;
    let end = at + h.total_size() as u64;
    while off < end {
        let n = (chunk.len() as u64).min(end - off) as usize;
        file.read_exact_at(&mut chunk[..n], off)?;
        crc = crc32c::crc32c_append(crc, &chunk[..n]);
        off += n as u64;
    }
    Ok(crc == h.crc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_strictly() {
        assert_eq!(parse_base("00000000000000000042"), Some(42));
        assert_eq!(parse_base("42"), None);
        assert_eq!(parse_base("0000000000000000004x"), None);
        assert_eq!(parse_base("99999999999999999999"), None);
    }

    #[test]
    fn report_display_is_one_line() {
        let r = RecoveryReport {
            segments: 2,
            truncated_bytes: 10,
            truncated_segments: vec![PathBuf::from("a.log")],
            ..Default::default()
        };
        let s = r.to_string();
        assert!(!s.contains('\n'));
        assert!(s.contains("truncated 10 byte(s)"), "{s}");
        assert!(!r.is_clean());
        assert!(RecoveryReport::default().is_clean());
    }
}
