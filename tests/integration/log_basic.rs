//! Behaviour of the synchronous `PartitionLog` through its public API: append/read round trips,
//! offset assignment, read limits (max bytes, upper bound, KIP-74 first batch), validation
//! errors, rolling, retention, timestamp lookup, `LogAppendTime`, and reopen after close.

use bytes::{Bytes, BytesMut};
use ferry::clock::Clock;
use ferry::log::{
    encode_batch, validate_batch, BatchIter, LogConfig, LogError, PartitionLog, SimpleRecord,
    TimestampType,
};
use kafka_protocol::records::RecordBatchDecoder;

const T0: i64 = 1_700_000_000_000;

fn records(tag: &str, n: usize, ts: i64, size: usize) -> Vec<SimpleRecord> {
    (0..n)
        .map(|i| {
            let mut v = format!("{tag}-{i}-").into_bytes();
            v.resize(size.max(v.len()), b'.');
            SimpleRecord {
                key: Some(Bytes::from(format!("key-{i}"))),
                value: Some(Bytes::from(v)),
                headers: vec![("h".to_string(), Some(Bytes::from_static(b"1")))],
                timestamp: ts + i as i64,
            }
        })
        .collect()
}

fn batch(tag: &str, n: usize, ts: i64) -> BytesMut {
    encode_batch(&records(tag, n, ts, 20))
}

fn sized_batch(tag: &str, n: usize, ts: i64, value_size: usize) -> BytesMut {
    encode_batch(&records(tag, n, ts, value_size))
}

/// (offset, value) of every record in `bytes`.
fn decode(bytes: &Bytes) -> Vec<(i64, String)> {
    let mut b = bytes.clone();
    RecordBatchDecoder::decode_all(&mut b)
        .unwrap()
        .into_iter()
        .flat_map(|set| set.records)
        .map(|r| {
            (
                r.offset,
                String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
            )
        })
        .collect()
}

fn open(dir: &std::path::Path, config: LogConfig, clock: &Clock) -> PartitionLog {
    PartitionLog::open(dir, config, clock.clone()).unwrap().0
}

fn cfg() -> LogConfig {
    LogConfig {
        preallocate: false,
        ..LogConfig::default()
    }
}

fn read_all(log: &PartitionLog) -> Vec<(i64, String)> {
    let slice = log
        .read(log.log_start_offset(), usize::MAX, i64::MAX)
        .unwrap();
    decode(&slice.bytes)
}

#[test]
fn round_trip_bytes_identical_except_base_offset() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let mut log = open(dir.path(), cfg(), &clock);
    log.append(&mut batch("a", 3, T0)).unwrap();

    let original = batch("b", 5, T0);
    let mut sent = original.clone();
    let info = log.append(&mut sent).unwrap();
    assert_eq!(info.base_offset, 3);
    assert_eq!(info.last_offset, 7);
    assert_eq!(info.record_count, 5);
    assert_eq!(info.bytes, original.len());
    assert_eq!(info.log_append_time_ms, -1);

    let slice = log.read(3, 1 << 20, i64::MAX).unwrap();
    assert_eq!(slice.first_offset, 3);
    assert_eq!(slice.next_offset, 8);
    assert_eq!(slice.bytes.len(), original.len());
    assert_eq!(&slice.bytes[..8], &3i64.to_be_bytes());
    assert_eq!(
        &slice.bytes[8..],
        &original[8..],
        "only the base offset may differ"
    );
    assert_eq!(
        &slice.bytes[..],
        &sent[..],
        "the caller's buffer shows what was stored"
    );
    validate_batch(&slice.bytes).unwrap();
}

#[test]
fn offsets_dense_across_appends_and_multi_batch_buffers() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let config = LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 256,
        ..cfg()
    };
    let mut log = open(dir.path(), config, &clock);
    let mut expected = 0i64;
    for i in 0..200 {
        let mut buf = BytesMut::new();
        let batches = 1 + i % 3;
        for b in 0..batches {
            buf.extend_from_slice(&batch(&format!("m{i}-{b}"), 1 + (i + b) % 4, T0));
        }
        let n: i64 = BatchIter::new(&buf).map(|(h, _)| h.record_count()).sum();
        let info = log.append(&mut buf).unwrap();
        assert_eq!(info.base_offset, expected);
        assert_eq!(info.last_offset, expected + n - 1);
        expected += n;
    }
    assert_eq!(log.log_end_offset(), expected);
    assert!(log.segment_count() > 3, "small segments should have rolled");
    let all = read_all(&log);
    let offsets: Vec<i64> = all.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (0..expected).collect::<Vec<_>>());
    assert!(all[0].1.starts_with("m0-0-0-"));
}

#[test]
fn reads_span_segments_and_find_every_offset() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let config = LogConfig {
        segment_bytes: 1000,
        index_interval_bytes: 100,
        ..cfg()
    };
    let mut log = open(dir.path(), config, &clock);
    for i in 0..60 {
        log.append(&mut batch(&format!("s{i}"), 2, T0)).unwrap();
    }
    assert!(log.segment_count() >= 5, "{}", log.segment_count());
    let all = read_all(&log);
    assert_eq!(all.len(), 120);
    // Every offset is found, in whichever segment it lives, from its containing batch.
    for offset in 0..120 {
        let slice = log.read(offset, 1, i64::MAX).unwrap();
        assert_eq!(slice.first_offset, offset - offset % 2);
        let recs = decode(&slice.bytes);
        assert_eq!(recs.len(), 2, "one whole batch for offset {offset}");
        assert!(recs.iter().any(|(o, _)| *o == offset));
    }
    // A read crossing segment boundaries returns contiguous whole batches.
    let slice = log.read(7, 5000, i64::MAX).unwrap();
    let recs = decode(&slice.bytes);
    assert_eq!(recs.first().unwrap().0, 6);
    let offsets: Vec<i64> = recs.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (6..slice.next_offset).collect::<Vec<_>>());
    assert!(slice.bytes.len() <= 5000);
    assert!(
        slice.next_offset > 20,
        "should have crossed into later segments"
    );
}

#[test]
fn max_bytes_and_first_batch_always_whole() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let mut log = open(dir.path(), cfg(), &clock);
    let big = sized_batch("big", 10, T0, 1000);
    let big_len = big.len();
    log.append(&mut big.clone()).unwrap();
    let small = batch("small", 1, T0);
    let small_len = small.len();
    for _ in 0..5 {
        log.append(&mut small.clone()).unwrap();
    }
    // max_bytes smaller than the first batch: the first batch still comes back whole, alone.
    let s = log.read(0, 10, i64::MAX).unwrap();
    assert_eq!(s.bytes.len(), big_len);
    assert_eq!(s.next_offset, 10);
    // Room for the first batch and two small ones, but not a third.
    let s = log
        .read(0, big_len + 2 * small_len + small_len / 2, i64::MAX)
        .unwrap();
    assert_eq!(s.bytes.len(), big_len + 2 * small_len);
    assert_eq!(s.next_offset, 12);
    // Reading from an offset inside the big batch returns the big batch from its start.
    let s = log.read(4, 0, i64::MAX).unwrap();
    assert_eq!(s.first_offset, 0);
    assert_eq!(s.bytes.len(), big_len);
}

#[test]
fn upper_bound_is_respected() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let mut log = open(dir.path(), cfg(), &clock);
    for i in 0..10 {
        log.append(&mut batch(&format!("u{i}"), 2, T0)).unwrap();
    }
    let s = log.read(0, usize::MAX, 6).unwrap();
    assert_eq!(s.next_offset, 6);
    assert_eq!(decode(&s.bytes).len(), 6);
    // At the upper bound: empty, not an error.
    let s = log.read(6, usize::MAX, 6).unwrap();
    assert!(s.bytes.is_empty());
    assert_eq!(s.next_offset, 6);
    // Between the upper bound and the log end: also empty.
    let s = log.read(8, usize::MAX, 6).unwrap();
    assert!(s.bytes.is_empty());
    // A bound inside a batch excludes that batch.
    let s = log.read(0, usize::MAX, 5).unwrap();
    assert_eq!(s.next_offset, 4);
    let s = log.read(20, usize::MAX, i64::MAX).unwrap();
    assert!(s.bytes.is_empty());
}

#[test]
fn offset_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let mut log = open(dir.path(), cfg(), &clock);
    log.append(&mut batch("x", 3, T0)).unwrap();
    for bad in [-1, 4, 1000] {
        match log.read(bad, 100, i64::MAX) {
            Err(LogError::OffsetOutOfRange {
                offset,
                log_start,
                log_end,
            }) => {
                assert_eq!((offset, log_start, log_end), (bad, 0, 3));
            }
            other => panic!("expected OffsetOutOfRange for {bad}, got {other:?}"),
        }
    }
}

#[test]
fn crc_flip_is_rejected_and_nothing_is_appended() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let mut log = open(dir.path(), cfg(), &clock);
    log.append(&mut batch("ok", 2, T0)).unwrap();
    let size_before = log.size_bytes();

    let mut buf = BytesMut::new();
    buf.extend_from_slice(&batch("good", 2, T0));
    let second = buf.len();
    buf.extend_from_slice(&batch("bad", 2, T0));
    buf[second + 70] ^= 0x40; // inside the records, covered by the CRC
    assert!(matches!(
        log.append(&mut buf),
        Err(LogError::CorruptBatch(_))
    ));
    assert_eq!(log.log_end_offset(), 2, "all or nothing");
    assert_eq!(log.size_bytes(), size_before);

    let mut bad_magic = batch("m", 1, T0);
    bad_magic[16] = 1;
    assert!(matches!(
        log.append(&mut bad_magic),
        Err(LogError::InvalidBatch(_))
    ));
    let mut torn = batch("t", 1, T0);
    let cut = torn.len() - 1;
    assert!(matches!(
        log.append(&mut torn[..cut]),
        Err(LogError::InvalidBatch(_))
    ));
    assert!(matches!(
        log.append(&mut []),
        Err(LogError::InvalidBatch(_))
    ));
    assert_eq!(log.log_end_offset(), 2);
    assert_eq!(read_all(&log).len(), 2);
}

#[test]
fn message_too_large() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let config = LogConfig {
        max_message_bytes: 500,
        ..cfg()
    };
    let mut log = open(dir.path(), config, &clock);
    let mut big = sized_batch("big", 1, T0, 600);
    let len = big.len();
    match log.append(&mut big) {
        Err(LogError::MessageTooLarge { size, max }) => assert_eq!((size, max), (len, 500)),
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
    // The limit is per batch: several small batches in one buffer are fine.
    let mut buf = BytesMut::new();
    for i in 0..5 {
        buf.extend_from_slice(&sized_batch(&format!("s{i}"), 1, T0, 200));
    }
    assert!(buf.len() > 500);
    log.append(&mut buf).unwrap();
    assert_eq!(log.log_end_offset(), 5);
}

#[test]
fn roll_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let b = batch("r", 1, T0);
    let config = LogConfig {
        segment_bytes: (b.len() * 3) as u64,
        ..cfg()
    };
    let mut log = open(dir.path(), config, &clock);
    for _ in 0..7 {
        log.append(&mut b.clone()).unwrap();
    }
    // 3 batches fit per segment: 3 + 3 + 1.
    assert_eq!(log.segment_count(), 3);
    let bases: Vec<i64> = log.segments().iter().map(|s| s.base_offset()).collect();
    assert_eq!(bases, vec![0, 3, 6]);
    assert!(dir.path().join("00000000000000000003.log").exists());
    assert!(dir.path().join("00000000000000000006.index").exists());
    assert!(dir.path().join("00000000000000000006.timeindex").exists());
    // A batch larger than segment.bytes still goes in (alone in its segment).
    let mut huge = sized_batch("huge", 5, T0, 200);
    log.append(&mut huge).unwrap();
    assert_eq!(log.segment_count(), 4);
    assert_eq!(read_all(&log).len(), 12);
}

#[test]
fn roll_by_age_with_manual_clock() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let config = LogConfig {
        segment_ms: 60_000,
        ..cfg()
    };
    let mut log = open(dir.path(), config, &clock);
    log.append(&mut batch("a", 1, T0)).unwrap();
    clock.advance_ms(59_000);
    log.append(&mut batch("b", 1, T0)).unwrap();
    assert_eq!(log.segment_count(), 1);
    clock.advance_ms(2_000);
    log.append(&mut batch("c", 1, T0)).unwrap();
    assert_eq!(log.segment_count(), 2);
    assert_eq!(log.segments()[1].base_offset(), 2);
    // An idle empty segment does not age.
    clock.advance_ms(10 * 60_000);
    log.roll().unwrap();
    clock.advance_ms(10 * 60_000);
    log.append(&mut batch("d", 1, T0)).unwrap();
    assert_eq!(log.segment_count(), 3);
}

#[test]
fn retention_by_time_moves_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let b = batch("x", 2, T0);
    let config = LogConfig {
        segment_bytes: (b.len() * 2) as u64,
        retention_ms: 3_600_000,
        ..cfg()
    };
    let mut log = open(dir.path(), config, &clock);
    // Old data: timestamps at T0.
    for _ in 0..4 {
        log.append(&mut batch("old", 2, T0)).unwrap();
    }
    // New data: timestamps two hours later.
    clock.advance_ms(7_200_000);
    for _ in 0..4 {
        log.append(&mut batch("new", 2, T0 + 7_200_000)).unwrap();
    }
    assert_eq!(log.segment_count(), 4);
    let report = log.enforce_retention().unwrap();
    assert_eq!(report.deleted_segments, 2);
    assert_eq!(report.log_start_offset, 8);
    assert!(!report.rolled);
    assert_eq!(log.log_start_offset(), 8);
    assert!(!dir.path().join("00000000000000000000.log").exists());
    assert!(matches!(
        log.read(3, 100, i64::MAX),
        Err(LogError::OffsetOutOfRange { log_start: 8, .. })
    ));
    assert_eq!(read_all(&log).first().unwrap().0, 8);

    // Everything expired: the active segment is rolled, then deleted.
    clock.advance_ms(10 * 3_600_000);
    let report = log.enforce_retention().unwrap();
    assert!(report.rolled);
    assert_eq!(log.log_start_offset(), 16);
    assert_eq!(log.log_end_offset(), 16);
    assert_eq!(log.segment_count(), 1);
    assert!(log.read(16, 100, i64::MAX).unwrap().bytes.is_empty());
    // Appends continue at the right offset.
    assert_eq!(log.append(&mut batch("z", 1, T0)).unwrap().base_offset, 16);
}

#[test]
fn retention_by_bytes_keeps_at_least_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let b = batch("x", 1, T0);
    let seg_len = b.len() as u64 * 2;
    let config = LogConfig {
        segment_bytes: seg_len,
        retention_ms: -1,
        retention_bytes: (seg_len * 2) as i64,
        ..cfg()
    };
    let mut log = open(dir.path(), config, &clock);
    for _ in 0..10 {
        log.append(&mut b.clone()).unwrap();
    }
    assert_eq!(log.segment_count(), 5);
    let report = log.enforce_retention().unwrap();
    assert_eq!(report.deleted_segments, 3);
    assert_eq!(report.deleted_bytes, seg_len * 3);
    assert_eq!(log.size_bytes(), seg_len * 2);
    assert_eq!(log.log_start_offset(), 6);
    assert!(matches!(
        log.read(5, 100, i64::MAX),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert_eq!(log.enforce_retention().unwrap().deleted_segments, 0);
}

#[test]
fn timestamp_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let config = LogConfig {
        segment_bytes: 2000,
        index_interval_bytes: 200,
        ..cfg()
    };
    let mut log = open(dir.path(), config, &clock);
    // Batch i holds offsets 3i..3i+2 with timestamps T0 + 100i + {0,1,2}.
    for i in 0..50 {
        log.append(&mut batch(&format!("t{i}"), 3, T0 + 100 * i))
            .unwrap();
    }
    assert!(log.segment_count() > 2);
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some((0, T0)));
    assert_eq!(log.offset_for_timestamp(T0 + 1).unwrap(), Some((1, T0 + 1)));
    // Between batches: the first record of the next batch.
    assert_eq!(
        log.offset_for_timestamp(T0 + 2_050).unwrap(),
        Some((63, T0 + 2_100))
    );
    assert_eq!(
        log.offset_for_timestamp(T0 + 4_902).unwrap(),
        Some((149, T0 + 4_902))
    );
    assert_eq!(log.offset_for_timestamp(T0 + 4_903).unwrap(), None);
    // Timestamps that go backwards (CreateTime) still find the earliest offset >= target.
    log.append(&mut batch("late", 1, T0)).unwrap();
    assert_eq!(
        log.offset_for_timestamp(T0 + 10).unwrap(),
        Some((3, T0 + 100))
    );
}

#[test]
fn log_append_time_sets_max_timestamp_and_valid_crc() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0 + 5_000);
    let config = LogConfig {
        message_timestamp_type: TimestampType::LogAppendTime,
        ..cfg()
    };
    let mut log = open(dir.path(), config, &clock);
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&batch("a", 2, T0));
    buf.extend_from_slice(&batch("b", 2, T0));
    let info = log.append(&mut buf).unwrap();
    assert_eq!(info.log_append_time_ms, T0 + 5_000);
    let s = log.read(0, usize::MAX, i64::MAX).unwrap();
    let headers: Vec<_> = BatchIter::new(&s.bytes).map(|(h, _)| h).collect();
    assert_eq!(headers.len(), 2);
    for h in headers {
        assert!(h.is_log_append_time());
        assert_eq!(h.max_timestamp, T0 + 5_000);
    }
    // The CRC was recomputed (BatchIter checks it) and a Kafka decoder agrees.
    let mut b = s.bytes.clone();
    let sets = RecordBatchDecoder::decode_all(&mut b).unwrap();
    assert_eq!(sets.len(), 2);
    assert_eq!(
        log.offset_for_timestamp(T0 + 5_000).unwrap(),
        Some((0, T0 + 5_000))
    );
}

#[test]
fn reopen_after_close_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let config = LogConfig {
        segment_bytes: 3000,
        index_interval_bytes: 300,
        preallocate: true,
        ..LogConfig::default()
    };
    let mut log = open(dir.path(), config.clone(), &clock);
    for i in 0..40 {
        log.append(&mut batch(&format!("r{i}"), 3, T0 + i)).unwrap();
    }
    let before = read_all(&log);
    let segments = log.segment_count();
    let index_entries: Vec<usize> = log.segments().iter().map(|s| s.index().len()).collect();
    log.close().unwrap();

    let (mut log, report) = PartitionLog::open(dir.path(), config, clock.clone()).unwrap();
    assert!(report.clean_shutdown, "{report}");
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.segments, segments);
    assert_eq!(log.segment_count(), segments);
    let after_indexes: Vec<usize> = log.segments().iter().map(|s| s.index().len()).collect();
    assert_eq!(after_indexes, index_entries);
    for seg in log.segments() {
        let len = std::fs::metadata(seg.log_path()).unwrap().len();
        assert_eq!(len, seg.size(), "no preallocated space left after close");
    }
    assert_eq!(read_all(&log), before);
    assert_eq!(log.log_end_offset(), 120);
    // Batch 37 holds offsets 111..=113 with timestamps T0+37..=T0+39.
    assert_eq!(
        log.offset_for_timestamp(T0 + 39).unwrap(),
        Some((113, T0 + 39))
    );
    assert_eq!(
        log.append(&mut batch("more", 1, T0)).unwrap().base_offset,
        120
    );
    // The marker is consumed on open: a crash now would be seen as unclean.
    drop(log);
    let (_, report) = PartitionLog::open(dir.path(), LogConfig::default(), clock).unwrap();
    assert!(!report.clean_shutdown);
}

#[test]
fn closed_and_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let bad = LogConfig {
        segment_bytes: 1,
        ..cfg()
    };
    assert!(matches!(
        PartitionLog::open(dir.path(), bad, clock.clone()),
        Err(LogError::Config(_))
    ));
    let mut log = open(dir.path(), cfg(), &clock);
    let mut c = log.config().clone();
    assert!(c.set("cleanup.policy", "compress").is_err());
    c.set("retention.ms", "1000").unwrap();
    log.update_config(c).unwrap();
    assert_eq!(log.config().retention_ms, 1000);
    let mut mismatched = batch("c", 2, T0);
    // recordsCount (at 57) disagreeing with lastOffsetDelta is rejected like Kafka does.
    mismatched[60] = 9;
    let crc = crc32c::crc32c(&mismatched[21..]);
    mismatched[17..21].copy_from_slice(&crc.to_be_bytes());
    assert!(matches!(
        log.append(&mut mismatched),
        Err(LogError::InvalidBatch(_))
    ));
    log.delete().unwrap();
    assert!(!dir.path().exists());
}

#[test]
fn append_many_matches_one_by_one_appends() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let one = batch("g", 2, T0);
    let config = LogConfig {
        // Four requests per segment, so the group below rolls twice mid-group.
        segment_bytes: (one.len() * 4) as u64,
        index_interval_bytes: 0,
        ..cfg()
    };
    let mut log = open(dir.path(), config, &clock);
    let mut requests: Vec<BytesMut> = (0..10).map(|i| batch(&format!("g{i}"), 2, T0)).collect();
    let n = requests[3].len();
    requests[3][n - 1] ^= 1; // corrupt: fails alone
    requests[6] = sized_batch("big", 1, T0, 2_000_000); // too large: fails alone
    let results = log.append_many(&mut requests);
    let mut expected = 0;
    for (i, r) in results.iter().enumerate() {
        match i {
            3 => assert!(matches!(r, Err(LogError::CorruptBatch(_))), "{r:?}"),
            6 => assert!(matches!(r, Err(LogError::MessageTooLarge { .. })), "{r:?}"),
            _ => {
                let info = r.as_ref().unwrap();
                assert_eq!(info.base_offset, expected);
                expected += 2;
            }
        }
    }
    assert_eq!(log.log_end_offset(), 16);
    assert!(log.segment_count() >= 2);
    let all = read_all(&log);
    assert_eq!(all.len(), 16);
    assert_eq!(all[6].1, format!("{:.<20}", "g4-0-"));
    // Everything survives a reopen with indexes rebuilt from the file.
    log.close().unwrap();
    let (log, report) = PartitionLog::open(dir.path(), cfg(), clock).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(read_all(&log), all);
}
