//! Which segments retention deletes: a pure decision over segment metadata, the config and "now",
//! so the rules can be tested without files.
//!
//! Kafka's rules, applied to the oldest segments first and stopping at the first segment that
//! must stay (deletion always removes a prefix, so the log stays contiguous):
//! - time: a segment is expired when `now - largest_timestamp > retention.ms` (`-1` = never);
//! - size: with `diff = total - retention.bytes`, delete the oldest segment while
//!   `diff - segment.size >= 0`, i.e. only while the log stays at least `retention.bytes` big;
//! - the active (last) segment may be part of the prefix only when non-empty; the log then has
//!   to roll it first so a fresh empty active segment remains.

use super::config::LogConfig;

/// What retention needs to know about one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentMeta {
    /// Base offset (for reporting).
    pub base_offset: i64,
    /// Bytes in the segment.
    pub size_bytes: u64,
    /// Largest timestamp in the segment (see `Segment::retention_timestamp`).
    pub largest_timestamp_ms: i64,
}

/// The decision: delete the first `delete_count` segments, rolling the active one first if it is
/// among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionPlan {
    /// How many of the oldest segments to delete.
    pub delete_count: usize,
    /// Whether the active segment is included, so the log must roll before deleting.
    pub roll_active: bool,
    /// How many of them are deleted because of `retention.ms`.
    pub by_time: usize,
    /// How many because of `retention.bytes`.
    pub by_size: usize,
}

/// Decides what to delete. `segments` are oldest first; the last one is the active segment.
pub fn plan(segments: &[SegmentMeta], config: &LogConfig, now_ms: i64) -> RetentionPlan {
    // A `compact`-only log keeps its segments; the cleaner thins them instead.
    if !config.cleanup_policy.deletes() {
        return RetentionPlan::default();
    }
    let Some(active) = segments.last() else {
        return RetentionPlan::default();
    };
    // An empty active segment is never deletable: there is nothing in it to expire.
    let candidates = if active.size_bytes == 0 {
        &segments[..segments.len() - 1]
    } else {
        segments
    };

    let by_time = if config.retention_ms < 0 {
        0
    } else {
        candidates
            .iter()
            .take_while(|s| now_ms.saturating_sub(s.largest_timestamp_ms) > config.retention_ms)
            .count()
    };

    let by_size = if config.retention_bytes < 0 {
        0
    } else {
        let total: u64 = segments.iter().map(|s| s.size_bytes).sum();
        let mut diff = total as i128 - config.retention_bytes as i128;
        candidates
            .iter()
            .take_while(|s| {
                if diff - s.size_bytes as i128 >= 0 {
                    diff -= s.size_bytes as i128;
                    true
                } else {
                    false
                }
            })
            .count()
    };

    let delete_count = by_time.max(by_size);
    RetentionPlan {
        delete_count,
        roll_active: delete_count == segments.len(),
        by_time,
        by_size: delete_count - by_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(base: i64, size: u64, ts: i64) -> SegmentMeta {
        SegmentMeta {
            base_offset: base,
            size_bytes: size,
            largest_timestamp_ms: ts,
        }
    }

    fn cfg(ms: i64, bytes: i64) -> LogConfig {
        LogConfig {
            retention_ms: ms,
            retention_bytes: bytes,
            ..LogConfig::default()
        }
    }

    #[test]
    fn time_deletes_an_expired_prefix_only() {
        let segs = [
            seg(0, 10, 100),
            seg(10, 10, 500),
            seg(20, 10, 150),
            seg(30, 10, 900),
        ];
        // now 1000, retention 600: 100 and 150 are expired, but 500 stops the prefix.
        let p = plan(&segs, &cfg(600, -1), 1_000);
        assert_eq!(p.delete_count, 1);
        assert!(!p.roll_active);
        let p = plan(&segs, &cfg(400, -1), 1_000);
        assert_eq!(p.delete_count, 3);
        assert_eq!(p.by_time, 3);
        assert_eq!(plan(&segs, &cfg(-1, -1), i64::MAX).delete_count, 0);
        // Exactly at the limit is not expired (Kafka uses `>`).
        assert_eq!(plan(&segs, &cfg(900, -1), 1_000).delete_count, 0);
    }

    #[test]
    fn fully_expired_active_segment_rolls() {
        let segs = [seg(0, 10, 100), seg(10, 10, 200)];
        let p = plan(&segs, &cfg(100, -1), 1_000);
        assert_eq!(p.delete_count, 2);
        assert!(p.roll_active);
        // ...but an empty active segment stays and is not rolled.
        let segs = [seg(0, 10, 100), seg(10, 0, -1)];
        let p = plan(&segs, &cfg(100, -1), 1_000);
        assert_eq!(p.delete_count, 1);
        assert!(!p.roll_active);
    }

    #[test]
    fn size_keeps_at_least_retention_bytes() {
        let segs = [
            seg(0, 100, 0),
            seg(1, 100, 0),
            seg(2, 100, 0),
            seg(3, 50, 0),
        ];
        // total 350, limit 120: diff 230 -> delete 100 (130 left), 100 (30 left), stop.
        let p = plan(&segs, &cfg(-1, 120), 0);
        assert_eq!(p.delete_count, 2);
        assert_eq!(p.by_size, 2);
        assert_eq!(plan(&segs, &cfg(-1, 350), 0).delete_count, 0);
        assert_eq!(plan(&segs, &cfg(-1, 250), 0).delete_count, 1);
        // retention.bytes 0 deletes everything, including the active segment after a roll.
        let p = plan(&segs, &cfg(-1, 0), 0);
        assert_eq!(p.delete_count, 4);
        assert!(p.roll_active);
    }

    #[test]
    fn time_and_size_combine() {
        let segs = [seg(0, 100, 0), seg(1, 100, 5_000), seg(2, 100, 5_000)];
        let p = plan(&segs, &cfg(1_000, 150), 5_000);
        assert_eq!(p.delete_count, 1);
        assert_eq!(p.by_time, 1);
        assert_eq!(p.by_size, 0);
        let p = plan(&segs, &cfg(1_000, 50), 5_000);
        assert_eq!(p.delete_count, 2);
        assert_eq!(p.by_size, 1);
        assert!(plan(&[], &cfg(0, 0), 0).delete_count == 0);
    }
}
