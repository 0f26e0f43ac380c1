//! Property tests over the decoders a peer or the disk can reach, run by `cargo test` on stable:
//! the same surfaces the cargo-fuzz targets in `fuzz/` explore for longer. Arbitrary bytes must
//! produce an error or a value, never a panic, a hang or an unbounded allocation; and what the
//! log stores must read back exactly.

use bytes::{BufMut, Bytes, BytesMut};
use ferry::clock::Clock;
use ferry::log::batch::{encode_batch, validate_batch, SimpleRecord};
use ferry::log::{LogConfig, PartitionLog};
use ferry::protocol::kafka::codec::{decode_body, parse_request};
use ferry::protocol::kafka::versions::SUPPORTED;
use kafka_protocol::records::RecordBatchDecoder;
use proptest::prelude::*;

fn any_record() -> impl Strategy<Value = SimpleRecord> {
    (
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..32)),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..512)),
        proptest::collection::vec(
            (
                "[a-z]{1,8}",
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
            ),
            0..4,
        ),
        0i64..4_000_000_000_000,
    )
        .prop_map(|(key, value, headers, timestamp)| {
            // Header keys are unique per record here: the encoder keeps headers in a map.
            let mut seen = std::collections::BTreeSet::new();
            SimpleRecord {
                key: key.map(Bytes::from),
                value: value.map(Bytes::from),
                headers: headers
                    .into_iter()
                    .filter(|(k, _)| seen.insert(k.clone()))
                    .map(|(k, v)| (k, v.map(Bytes::from)))
                    .collect(),
                timestamp,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any bytes after a valid-looking header, for every served API and version.
    #[test]
    fn kafka_bodies_never_panic(api in 0usize..SUPPORTED.len(), version_pick in any::<u16>(), body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let (key, min, max) = SUPPORTED[api];
        let version = min + (version_pick % ((max - min + 1) as u16)) as i16;
        let mut frame = BytesMut::new();
        frame.put_i16(key as i16);
        frame.put_i16(version);
        frame.put_i32(1);
        frame.put_i16(-1); // null client id
        if key.request_header_version(version) >= 2 {
            frame.put_u8(0); // no tagged fields
        }
        frame.put_slice(&body);
        if let Ok(req) = parse_request(frame.freeze()) {
            let _ = decode_body(&req);
        }
    }

    /// Entirely arbitrary frames.
    #[test]
    fn kafka_frames_never_panic(frame in proptest::collection::vec(any::<u8>(), 0..128)) {
        if let Ok(req) = parse_request(Bytes::from(frame)) {
            let _ = decode_body(&req);
        }
    }

    /// Records survive encode -> validate -> append -> read -> decode unchanged.
    #[test]
    fn log_round_trip(batches in proptest::collection::vec(proptest::collection::vec(any_record(), 1..8), 1..6)) {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = PartitionLog::open(dir.path(), LogConfig::default(), Clock::system()).unwrap();
        for records in &batches {
            let mut batch = encode_batch(records);
            validate_batch(&batch).unwrap();
            log.append(&mut batch).unwrap();
        }
        let slice = log.read(0, usize::MAX, log.log_end_offset()).unwrap();
        let mut bytes = slice.bytes.clone();
        let decoded: Vec<_> = RecordBatchDecoder::decode_all(&mut bytes)
            .unwrap()
            .into_iter()
            .flat_map(|set| set.records)
            .collect();
        let expected: Vec<&SimpleRecord> = batches.iter().flatten().collect();
        prop_assert_eq!(decoded.len(), expected.len());
        for (i, (got, want)) in decoded.iter().zip(expected).enumerate() {
            prop_assert_eq!(got.offset, i as i64);
            prop_assert_eq!(&got.key, &want.key);
            prop_assert_eq!(&got.value, &want.value);
            prop_assert_eq!(got.timestamp, want.timestamp);
            prop_assert_eq!(got.headers.len(), want.headers.len());
        }
    }

    /// Arbitrary bytes as a segment file (with or without a valid prefix) recover to a log that
    /// accepts appends at its end.
    #[test]
    fn recovery_of_arbitrary_segment_files(valid in 0usize..4, garbage in proptest::collection::vec(any::<u8>(), 0..512), index in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64))) {
        let dir = tempfile::tempdir().unwrap();
        let mut content = Vec::new();
        for i in 0..valid {
            let mut batch = encode_batch(&[SimpleRecord { key: None, value: Some(Bytes::from(vec![i as u8; 10])), headers: vec![], timestamp: 1 }]);
            ferry::log::batch::set_base_offset(&mut batch, i as i64);
            content.extend_from_slice(&batch);
        }
        content.extend_from_slice(&garbage);
        std::fs::write(dir.path().join("00000000000000000000.log"), &content).unwrap();
        if let Some(index) = index {
            std::fs::write(dir.path().join("00000000000000000000.index"), index).unwrap();
        }
        let (mut log, _) = PartitionLog::open(dir.path(), LogConfig::default(), Clock::system()).unwrap();
        prop_assert!(log.log_end_offset() >= valid as i64);
        let end = log.log_end_offset();
        let mut batch = encode_batch(&[SimpleRecord { key: None, value: Some(Bytes::from_static(b"after")), headers: vec![], timestamp: 2 }]);
        let info = log.append(&mut batch).unwrap();
        prop_assert_eq!(info.base_offset, end);
        let slice = log.read(end, 1 << 20, end + 1).unwrap();
        prop_assert!(!slice.bytes.is_empty());
    }
}

/// Names drawn heavily from the bytes the key encoding treats specially (NUL, 0x01, the
/// escape's 0xFF as U+00FF, the kind separator), so collisions would show up fast.
fn any_name() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just('\0'),
            Just('\u{1}'),
            Just('\u{ff}'),
            Just('/'),
            Just('a'),
            any::<char>()
        ],
        0..6,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

/// One metadata key of each kind that carries names, with the tuple it was built from.
fn keyed(kind: u8, a: &str, b: &str, c: &str, n: i32) -> (Vec<u8>, Vec<Vec<u8>>) {
    use ferry::meta::keys;
    let part = |s: &str| s.as_bytes().to_vec();
    let num = |n: i32| format!("{n:010}").into_bytes();
    match kind % 8 {
        0 => (keys::topic(a), vec![part(a)]),
        1 => (keys::exchange(a, b), vec![part(a), part(b)]),
        2 => (keys::queue(a, b), vec![part(a), part(b)]),
        3 => (keys::queue_state(a, b), vec![part(a), part(b)]),
        4 => (keys::group(a), vec![part(a)]),
        5 => (keys::group_offset(a, b, n), vec![part(a), part(b), num(n)]),
        6 => (keys::topic_route(a, n), vec![part(a), num(n)]),
        _ => (
            keys::binding(a, b, "queue", c, b, a),
            vec![part(a), part(b), part("queue"), part(c), part(b), part(a)],
        ),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// No two distinct (kind, names) tuples share a key, every key splits back into its names,
    /// and an owner's scan prefix only matches what that very owner holds (group `victim` never
    /// sees the offsets of group `victim\0x`).
    #[test]
    fn metadata_keys_are_unambiguous_for_any_name(
        kinds in (any::<u8>(), any::<u8>()),
        first in (any_name(), any_name(), any_name(), 0i32..3),
        second in (any_name(), any_name(), any_name(), 0i32..3),
    ) {
        use ferry::meta::keys;
        let (k1, parts1) = keyed(kinds.0, &first.0, &first.1, &first.2, first.3);
        let (k2, parts2) = keyed(kinds.1, &second.0, &second.1, &second.2, second.3);
        prop_assert_eq!(keys::parts(&k1), Some(parts1.clone()));
        prop_assert_eq!(keys::parts(&k2), Some(parts2.clone()));
        if kinds.0 % 8 != kinds.1 % 8 || parts1 != parts2 {
            prop_assert_ne!(&k1, &k2);
        }
        let offsets = keys::group_offset(&second.0, &second.1, second.3);
        prop_assert_eq!(offsets.starts_with(&keys::group_offsets(&first.0)), first.0 == second.0);
        let route = keys::topic_route(&second.0, second.3);
        prop_assert_eq!(route.starts_with(&keys::topic_routes(&first.0)), first.0 == second.0);
    }
}
