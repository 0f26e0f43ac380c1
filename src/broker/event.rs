//! Event metadata: one protocol-neutral view of the id, type, source, time, schema version,
//! correlation id, causation id and W3C trace context a stored record carries.
//!
//! Every message is stored as a Kafka record (ARCHITECTURE rule 3), so the metadata is read
//! from record headers, whichever protocol wrote them. The adapters agree on the header names
//! (the AMQP adapter writes AMQP properties as `amqp.*` headers and lifts the well-known event
//! headers out of the AMQP `headers` table, see `protocol::amqp::convert`), and this module
//! decides which one wins when several say the same thing:
//!
//! | field          | first of                                                               |
//! |----------------|------------------------------------------------------------------------|
//! | id             | `amqp.message-id`, `ce_id`, `ferry.message-id` (broker-assigned at an   |
//! |                | AMQP publish), the record's location `topic/partition/offset`           |
//! | type           | `amqp.type`, `ce_type`                                                 |
//! | source         | `ce_source`, `amqp.app-id`                                             |
//! | time (ms)      | `amqp.timestamp` (seconds), `ce_time` (RFC 3339), the record timestamp |
//! | schema version | `ce_dataschema`, `schema-version`                                      |
//! | correlation id | `amqp.correlation-id`, `correlation-id`                                |
//! | causation id   | `causation-id`                                                         |
//! | trace context  | `traceparent` (and `tracestate`)                                       |
//!
//! The id and the time are never missing: when a producer gave none the broker supplies them.
//! An AMQP publish is encoded by Ferry itself, so it gains a `ferry.message-id` header (a
//! UUIDv7) at publish; a Kafka batch is stored as the client sent it and cannot gain a header
//! without re-encoding, so a Kafka-produced record's id is its location, `T/P/O`, which is
//! stable, unique and known to every consumer (a queue copy of the record names it in its
//! `ferry.source` header). The time falls back to the record timestamp, which the broker sets
//! for AMQP publishes and which Kafka producers always fill in.
//!
//! Nothing here allocates unless asked: the tracing spans that carry these fields compute them
//! only when the span is enabled.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::log::SimpleRecord;

use super::topic_router::SOURCE_HEADER;

/// Header holding the id the broker assigned to an AMQP publish that carried none.
pub const MESSAGE_ID_HEADER: &str = "ferry.message-id";
/// W3C Trace Context headers, kept verbatim under the same names on both protocols.
pub const TRACEPARENT_HEADER: &str = "traceparent";
pub const TRACESTATE_HEADER: &str = "tracestate";
/// Plain headers for the event fields neither AMQP nor Kafka has a property for.
pub const CAUSATION_ID_HEADER: &str = "causation-id";
pub const SCHEMA_VERSION_HEADER: &str = "schema-version";
pub const CORRELATION_ID_HEADER: &str = "correlation-id";
/// The CloudEvents Kafka binding's attribute prefix (`ce_id`, `ce_type`, …).
pub const CE_PREFIX: &str = "ce_";

/// The event metadata of one stored record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventMetadata {
    /// The message/event id; never empty once read from a record.
    pub id: String,
    /// Where `id` came from.
    pub id_origin: IdOrigin,
    pub kind: Option<String>,
    pub source: Option<String>,
    /// Event time in ms since the epoch.
    pub time_ms: i64,
    pub schema_version: Option<String>,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

/// Who set a record's id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IdOrigin {
    /// The producer (AMQP message-id or CloudEvents id).
    #[default]
    Producer,
    /// The broker at an AMQP publish (`ferry.message-id`).
    Broker,
    /// The record's location `topic/partition/offset` (Kafka-produced, no id given).
    Location,
    /// No id and no known location (a record read without its position).
    Unknown,
}

/// Where a record sits in a topic: the id of a Kafka-produced record that carries none.
#[derive(Debug, Clone, Copy)]
pub struct RecordLocation<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

impl std::fmt::Display for RecordLocation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.topic, self.partition, self.offset)
    }
}

impl EventMetadata {
    /// The metadata of a stored record. A queue copy of a topic record finds its location in
    /// its `ferry.source` header.
    pub fn from_record(record: &SimpleRecord) -> Self {
        Self::from_headers(
            record
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_deref())),
            record.timestamp,
            None,
        )
    }

    /// The metadata from record headers, the record timestamp and (if known) the location.
    pub fn from_headers<'a>(
        headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
        timestamp_ms: i64,
        location: Option<RecordLocation<'_>>,
    ) -> Self {
        #[derive(Default)]
        struct Seen<'a> {
            amqp_id: Option<&'a [u8]>,
            ce_id: Option<&'a [u8]>,
            broker_id: Option<&'a [u8]>,
            source_location: Option<&'a [u8]>,
            amqp_type: Option<&'a [u8]>,
            ce_type: Option<&'a [u8]>,
            ce_source: Option<&'a [u8]>,
            app_id: Option<&'a [u8]>,
            amqp_ts: Option<&'a [u8]>,
            ce_time: Option<&'a [u8]>,
            dataschema: Option<&'a [u8]>,
            schema_version: Option<&'a [u8]>,
            amqp_corr: Option<&'a [u8]>,
            corr: Option<&'a [u8]>,
            causation: Option<&'a [u8]>,
            traceparent: Option<&'a [u8]>,
            tracestate: Option<&'a [u8]>,
        }
        let mut s = Seen::default();
        for (name, value) in headers {
            let Some(v) = value else { continue };
            let slot = match name {
                "amqp.message-id" => &mut s.amqp_id,
                "ce_id" => &mut s.ce_id,
                MESSAGE_ID_HEADER => &mut s.broker_id,
                SOURCE_HEADER => &mut s.source_location,
                "amqp.type" => &mut s.amqp_type,
                "ce_type" => &mut s.ce_type,
                "ce_source" => &mut s.ce_source,
                "amqp.app-id" => &mut s.app_id,
                "amqp.timestamp" => &mut s.amqp_ts,
                "ce_time" => &mut s.ce_time,
                "ce_dataschema" => &mut s.dataschema,
                SCHEMA_VERSION_HEADER => &mut s.schema_version,
                "amqp.correlation-id" => &mut s.amqp_corr,
                CORRELATION_ID_HEADER => &mut s.corr,
                CAUSATION_ID_HEADER => &mut s.causation,
                TRACEPARENT_HEADER => &mut s.traceparent,
                TRACESTATE_HEADER => &mut s.tracestate,
                _ => continue,
            };
            *slot = Some(v);
        }
        let text = |v: Option<&[u8]>| v.map(|b| String::from_utf8_lossy(b).into_owned());
        let (id, id_origin) = if let Some(v) = s.amqp_id.or(s.ce_id) {
            (text(Some(v)).unwrap_or_default(), IdOrigin::Producer)
        } else if let Some(v) = s.broker_id {
            (text(Some(v)).unwrap_or_default(), IdOrigin::Broker)
        } else if let Some(v) = s.source_location {
            (text(Some(v)).unwrap_or_default(), IdOrigin::Location)
        } else if let Some(l) = location {
            (l.to_string(), IdOrigin::Location)
        } else {
            (String::new(), IdOrigin::Unknown)
        };
        let amqp_time = s
            .amqp_ts
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|t| t.parse::<i64>().ok())
            .map(|secs| secs.saturating_mul(1000));
        let ce_time = s
            .ce_time
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(parse_rfc3339_ms);
        Self {
            id,
            id_origin,
            kind: text(s.amqp_type.or(s.ce_type)),
            source: text(s.ce_source.or(s.app_id)),
            time_ms: amqp_time.or(ce_time).unwrap_or(timestamp_ms),
            schema_version: text(s.dataschema.or(s.schema_version)),
            correlation_id: text(s.amqp_corr.or(s.corr)),
            causation_id: text(s.causation),
            traceparent: text(s.traceparent),
            tracestate: text(s.tracestate),
        }
    }

    /// The trace id of a well-formed `traceparent`, for span fields.
    pub fn trace_id(&self) -> Option<&str> {
        self.traceparent
            .as_deref()
            .and_then(parse_traceparent)
            .map(|t| t.trace_id)
    }
}

/// The parts of a W3C `traceparent` (`version-traceid-parentid-flags`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent<'a> {
    pub version: &'a str,
    pub trace_id: &'a str,
    pub parent_id: &'a str,
    pub flags: &'a str,
}

/// Parses a `traceparent` value; `None` unless it has the W3C shape (lowercase hex fields of
/// 2, 32, 16 and 2 digits, trace and parent ids not all zero, version not `ff`).
pub fn parse_traceparent(s: &str) -> Option<TraceParent<'_>> {
    let mut it = s.trim().split('-');
    let version = it.next()?;
    let trace_id = it.next()?;
    let parent_id = it.next()?;
    let flags = it.next()?;
    // Version 00 has exactly four fields; later versions may append more.
    if version == "00" && it.next().is_some() {
        return None;
    }
    let hex = |f: &str, n: usize| {
        f.len() == n
            && f.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let zero = |f: &str| f.bytes().all(|b| b == b'0');
    let ok = hex(version, 2)
        && version != "ff"
        && hex(trace_id, 32)
        && !zero(trace_id)
        && hex(parent_id, 16)
        && !zero(parent_id)
        && hex(flags, 2);
    ok.then_some(TraceParent {
        version,
        trace_id,
        parent_id,
        flags,
    })
}

/// A new message id: a UUIDv7 (time-ordered, RFC 9562). The uuid crate is built without its
/// `v7`/`rng` features here, so the 74 random bits come from a per-process random seed and a
/// counter mixed by SplitMix64: unique within the process by the counter, across processes by
/// the seed, and time-ordered across both by the millisecond prefix.
pub fn new_message_id(now_ms: i64) -> String {
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        // RandomState is keyed from the OS's randomness once per process.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(std::process::id().into());
        h.finish()
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let a = splitmix64(seed ^ n);
    let b = splitmix64(a ^ n.rotate_left(32));
    let mut bytes = [0u8; 10];
    bytes[..8].copy_from_slice(&a.to_le_bytes());
    bytes[8..].copy_from_slice(&b.to_le_bytes()[..2]);
    uuid::Builder::from_unix_timestamp_millis(now_ms.max(0) as u64, &bytes)
        .into_uuid()
        .to_string()
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for a time in ms since the epoch: CloudEvents' `time` with the
/// milliseconds kept. Every native publish stamps one, so the digits are written by hand
/// rather than through `format!` (which cost ~4% of the broker's CPU per message); a year
/// outside 0..=9999 takes the slow path.
pub fn format_rfc3339_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let frac = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    if !(0..=9999).contains(&y) {
        let head = format_rfc3339_secs(secs);
        let head = head.strip_suffix('Z').unwrap_or(&head);
        return format!("{head}.{frac:03}Z");
    }
    let mut out = [0_u8; 24];
    let mut put = |at: usize, value: i64, width: usize| {
        let mut v = value;
        for i in (0..width).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, y, 4);
    put(5, m, 2);
    put(8, d, 2);
    put(11, rem / 3600, 2);
    put(14, rem / 60 % 60, 2);
    put(17, rem % 60, 2);
    put(20, frac, 3);
    for (at, sep) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
    ] {
        out[at] = sep;
    }
    out[23] = b'Z';
    out.iter().map(|&b| char::from(b)).collect()
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a time in whole seconds since the epoch (the CloudEvents
/// canonical string of an AMQP timestamp, which has one-second resolution).
pub fn format_rfc3339_secs(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Parses an RFC 3339 date-time (`2018-04-05T17:31:00.123+02:00`, `…Z`) to ms since the
/// epoch; `None` if malformed. Fractions beyond milliseconds are truncated.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.trim().as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            if i - start < 3 {
                millis = millis * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..3 {
            millis *= 10;
        }
    }
    let offset_secs = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            let o = oh * 3600 + om * 60;
            if *sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset_secs;
    Some(secs * 1000 + millis)
}

/// One `trace` event per record of a stored batch slice, with its event metadata: how a
/// Kafka produce or fetch reports per-record ids without touching the hot path (the batch is
/// decoded only when TRACE is enabled for this module).
/// `offset_delta` is added to the offsets read from the batches: a produced batch still has
/// the client's base offset 0, a fetched one its real offsets (delta 0).
pub fn trace_records(
    what: &'static str,
    topic: &str,
    partition: i32,
    offset_delta: i64,
    batches: &[u8],
) {
    if !tracing::enabled!(tracing::Level::TRACE) {
        return;
    }
    let mut buf = bytes::Bytes::copy_from_slice(batches);
    while bytes::Buf::has_remaining(&buf) {
        let Ok(records) = crate::log::batch::decode_next_batch(&mut buf) else {
            return;
        };
        for r in records.iter().filter(|r| !r.is_control) {
            let m = EventMetadata::from_headers(
                r.record
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_deref())),
                r.record.timestamp,
                Some(RecordLocation {
                    topic,
                    partition,
                    offset: r.offset + offset_delta,
                }),
            );
            tracing::trace!(
                what,
                topic,
                partition,
                offset = r.offset + offset_delta,
                message_id = %m.id,
                correlation_id = m.correlation_id.as_deref(),
                causation_id = m.causation_id.as_deref(),
                trace_id = m.trace_id(),
                "record"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn rec(headers: &[(&str, &str)], ts: i64) -> SimpleRecord {
        SimpleRecord {
            key: None,
            value: None,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), Some(Bytes::copy_from_slice(v.as_bytes()))))
                .collect(),
            timestamp: ts,
        }
    }

    #[test]
    fn amqp_properties_win_over_cloudevents_attributes() {
        let m = EventMetadata::from_record(&rec(
            &[
                ("ce_id", "ce-1"),
                ("amqp.message-id", "m-1"),
                ("ce_type", "com.example.t"),
                ("ce_source", "/src"),
                ("amqp.app-id", "app"),
                ("ce_time", "2018-04-05T03:56:24Z"),
                ("ce_dataschema", "https://s/v2"),
                ("schema-version", "1"),
                ("amqp.correlation-id", "c-1"),
                ("causation-id", "cause-1"),
            ],
            5,
        ));
        assert_eq!(m.id, "m-1");
        assert_eq!(m.id_origin, IdOrigin::Producer);
        assert_eq!(m.kind.as_deref(), Some("com.example.t"));
        assert_eq!(m.source.as_deref(), Some("/src"));
        assert_eq!(m.time_ms, 1_522_900_584_000);
        assert_eq!(m.schema_version.as_deref(), Some("https://s/v2"));
        assert_eq!(m.correlation_id.as_deref(), Some("c-1"));
        assert_eq!(m.causation_id.as_deref(), Some("cause-1"));
    }

    #[test]
    fn missing_id_falls_back_to_broker_id_then_location() {
        let m = EventMetadata::from_record(&rec(&[("ferry.message-id", "u-1")], 7));
        assert_eq!((m.id.as_str(), m.id_origin), ("u-1", IdOrigin::Broker));
        assert_eq!(m.time_ms, 7);
        let m = EventMetadata::from_record(&rec(&[("ferry.source", "t/2/40")], 7));
        assert_eq!((m.id.as_str(), m.id_origin), ("t/2/40", IdOrigin::Location));
        let loc = RecordLocation {
            topic: "t",
            partition: 0,
            offset: 9,
        };
        let m = EventMetadata::from_headers(std::iter::empty(), 3, Some(loc));
        assert_eq!((m.id.as_str(), m.id_origin), ("t/0/9", IdOrigin::Location));
        let m = EventMetadata::from_headers(std::iter::empty(), 3, None);
        assert_eq!(m.id_origin, IdOrigin::Unknown);
    }

    #[test]
    fn traceparent_is_validated_for_the_trace_id() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let m = EventMetadata::from_record(&rec(&[("traceparent", tp)], 0));
        assert_eq!(m.trace_id(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "garbage",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn rfc3339_parses_offsets_and_fractions_and_formats_back() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2018-04-05T17:31:00.5+02:00"),
            Some(1_522_942_260_500)
        );
        assert_eq!(
            parse_rfc3339_ms("2018-04-05T15:31:00.123456Z"),
            Some(1_522_942_260_123)
        );
        assert_eq!(parse_rfc3339_ms("1969-12-31T23:59:59Z"), Some(-1000));
        for bad in [
            "",
            "2018-04-05",
            "2018-13-05T00:00:00Z",
            "2018-04-05T00:00:00",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
        for secs in [0, 1_522_900_584, 951_782_400, 4_102_444_800, -86_401] {
            assert_eq!(
                parse_rfc3339_ms(&format_rfc3339_secs(secs)),
                Some(secs * 1000)
            );
        }
        assert_eq!(format_rfc3339_secs(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(
            format_rfc3339_ms(951_782_400_007),
            "2000-02-29T00:00:00.007Z"
        );
        assert_eq!(
            format_rfc3339_ms(1_765_157_696_123),
            "2025-12-08T01:34:56.123Z"
        );
        assert_eq!(format_rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(
            format_rfc3339_ms(253_402_300_800_000),
            "10000-01-01T00:00:00.000Z"
        );
        for ms in [0, 999, 86_399_999, 1_700_000_000_042, 4_102_444_799_999] {
            assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(ms)), Some(ms));
        }
    }

    #[test]
    fn message_ids_are_distinct_uuid_v7() {
        let a = new_message_id(1_700_000_000_000);
        let b = new_message_id(1_700_000_000_000);
        assert_ne!(a, b);
        let u = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(u.get_version_num(), 7);
        let (secs, _) = u.get_timestamp().unwrap().to_unix();
        assert_eq!(secs, 1_700_000_000);
    }
}
