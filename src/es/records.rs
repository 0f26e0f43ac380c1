//! How events sit in the log: one record per event, key = stream name, the CloudEvents headers
//! the adapter wrote (`ce_id`, `ce_type`, `ce_source`, ...) with `ce_subject` set to the stream,
//! plus [`REVISION_HEADER`] (the event's revision in its stream, decimal: a CloudEvents
//! extension attribute, so AMQP consumers see it as `cloudEvents:streamrevision`). A stream deletion is
//! a record of the stream with [`DELETED_HEADER`] (`soft` or `hard`) and no revision. One
//! append is one record batch, so a reader sees all of it or none.
//!
//! Kafka and AMQP consumers read these records as ordinary data; only records carrying one of
//! the two headers belong to a stream (anything else a topic that allows plain produce holds
//! is skipped by the index).

use bytes::Bytes;

use crate::log::batch::StoredRecord;
use crate::log::{EncodeOptions, LogError, SimpleRecord};

/// The event's revision in its stream, as decimal text (CloudEvents extension
/// `streamrevision` in the Kafka binding).
pub const REVISION_HEADER: &str = "ce_streamrevision";
/// On a deletion record: `soft` or `hard`.
pub const DELETED_HEADER: &str = "ferry.es.deleted";
/// On a stream-metadata record: JSON `{"maxCount": n, "maxAge": ms}` (either may be null).
pub const METADATA_HEADER: &str = "ferry.es.metadata";
const CE_SUBJECT: &str = "ce_subject";
const CE_ID: &str = "ce_id";

/// An event to append: its id (the idempotency key) and its record (value, headers,
/// timestamp); the store sets the key, `ce_subject` and the revision.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: String,
    pub record: SimpleRecord,
}

/// What an index needs from a stored record of an event-store topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EsRecord {
    Event {
        stream: String,
        revision: u64,
        id: String,
    },
    Deleted {
        stream: String,
        hard: bool,
    },
    Metadata {
        stream: String,
        limits: StreamLimits,
    },
}

/// A stream's metadata: KurrentDB's `$maxCount` and `$maxAge` (here in ms).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StreamLimits {
    #[serde(rename = "maxCount", default)]
    pub max_count: Option<u64>,
    #[serde(rename = "maxAge", default)]
    pub max_age_ms: Option<u64>,
}

fn header<'a>(record: &'a SimpleRecord, name: &str) -> Option<&'a [u8]> {
    record
        .headers
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.as_deref())
}

/// The stream part of a stored record, or `None` for a record that belongs to no stream.
pub fn classify(stored: &StoredRecord) -> Option<EsRecord> {
    if stored.is_control {
        return None;
    }
    let record = &stored.record;
    let stream = std::str::from_utf8(record.key.as_deref()?)
        .ok()?
        .to_string();
    if let Some(revision) = header(record, REVISION_HEADER) {
        let revision = std::str::from_utf8(revision).ok()?.parse().ok()?;
        let id = header(record, CE_ID)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        return Some(EsRecord::Event {
            stream,
            revision,
            id,
        });
    }
    if let Some(json) = header(record, METADATA_HEADER) {
        let limits = serde_json::from_slice(json).ok()?;
        return Some(EsRecord::Metadata { stream, limits });
    }
    match header(record, DELETED_HEADER)? {
        b"soft" => Some(EsRecord::Deleted {
            stream,
            hard: false,
        }),
        b"hard" => Some(EsRecord::Deleted { stream, hard: true }),
        _ => None,
    }
}

fn set_header(record: &mut SimpleRecord, name: &str, value: Bytes) {
    record.headers.retain(|(k, _)| k != name);
    record.headers.push((name.to_string(), Some(value)));
}

/// The batch of one append: `events` at revisions `first_revision..`. The stream key, subject
/// and revision are set on the events' records in place (a resend sets them again), so the
/// records are not copied to be encoded.
pub fn encode_events(
    stream: &str,
    first_revision: u64,
    events: &mut [NewEvent],
) -> Result<bytes::BytesMut, LogError> {
    let key = Bytes::copy_from_slice(stream.as_bytes());
    for (event, revision) in events.iter_mut().zip(first_revision..) {
        let record = &mut event.record;
        record.key = Some(key.clone());
        set_header(record, CE_SUBJECT, key.clone());
        set_header(record, REVISION_HEADER, Bytes::from(revision.to_string()));
    }
    // Moved out for the encoder (which takes a slice of records) and back, not cloned.
    let records: Vec<SimpleRecord> = events
        .iter_mut()
        .map(|e| std::mem::take(&mut e.record))
        .collect();
    let batch = crate::log::try_encode_batch(&records, &EncodeOptions::default());
    for (event, record) in events.iter_mut().zip(records) {
        event.record = record;
    }
    batch
}

/// A record of the stream itself (deletion, metadata): CloudEvents type `kind`, the marker
/// header `(name, value)`.
fn system_record(
    stream: &str,
    kind: &str,
    marker: (&str, String),
    id: &str,
    now_ms: i64,
) -> Result<bytes::BytesMut, LogError> {
    let key = Bytes::copy_from_slice(stream.as_bytes());
    let text = |s: &str| Some(Bytes::copy_from_slice(s.as_bytes()));
    let record = SimpleRecord {
        key: Some(key.clone()),
        value: None,
        headers: vec![
            ("ce_specversion".into(), text("1.0")),
            (CE_ID.into(), text(id)),
            ("ce_type".into(), text(kind)),
            ("ce_source".into(), text("ferry")),
            (CE_SUBJECT.into(), Some(key)),
            (marker.0.into(), Some(Bytes::from(marker.1))),
        ],
        timestamp: now_ms,
    };
    crate::log::try_encode_batch(&[record], &EncodeOptions::default())
}

/// The batch of a deletion of `stream`.
pub fn encode_deletion(
    stream: &str,
    hard: bool,
    id: &str,
    now_ms: i64,
) -> Result<bytes::BytesMut, LogError> {
    let how = if hard { "hard" } else { "soft" };
    system_record(
        stream,
        "ferry.stream.deleted",
        (DELETED_HEADER, how.to_string()),
        id,
        now_ms,
    )
}

/// The batch that sets `stream`'s metadata.
pub fn encode_metadata(
    stream: &str,
    limits: StreamLimits,
    id: &str,
    now_ms: i64,
) -> Result<bytes::BytesMut, LogError> {
    let json = serde_json::to_string(&limits).unwrap_or_default();
    system_record(
        stream,
        "ferry.stream.metadata",
        (METADATA_HEADER, json),
        id,
        now_ms,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch::decode_next_batch;

    #[test]
    fn events_carry_stream_subject_and_revision() {
        let event = NewEvent {
            id: "e1".into(),
            record: SimpleRecord {
                headers: vec![
                    ("ce_id".into(), Some(Bytes::from_static(b"e1"))),
                    ("ce_subject".into(), Some(Bytes::from_static(b"other"))),
                ],
                value: Some(Bytes::from_static(b"{}")),
                ..Default::default()
            },
        };
        let batch = encode_events("order-1", 7, &mut [event.clone(), event]).expect("encode");
        let records = decode_next_batch(&mut batch.freeze()).expect("decode");
        let classified: Vec<_> = records.iter().filter_map(classify).collect();
        assert_eq!(
            classified,
            vec![
                EsRecord::Event {
                    stream: "order-1".into(),
                    revision: 7,
                    id: "e1".into()
                },
                EsRecord::Event {
                    stream: "order-1".into(),
                    revision: 8,
                    id: "e1".into()
                }
            ]
        );
        assert_eq!(
            header(&records[0].record, CE_SUBJECT),
            Some(&b"order-1"[..])
        );
    }

    #[test]
    fn deletions_and_foreign_records_are_told_apart() {
        let batch = encode_deletion("s", true, "d1", 0).expect("encode");
        let records = decode_next_batch(&mut batch.freeze()).expect("decode");
        assert_eq!(
            classify(&records[0]),
            Some(EsRecord::Deleted {
                stream: "s".into(),
                hard: true
            })
        );
        let plain = crate::log::encode_batch(&[SimpleRecord {
            key: Some(Bytes::from_static(b"s")),
            ..Default::default()
        }]);
        let records = decode_next_batch(&mut plain.freeze()).expect("decode");
        assert_eq!(classify(&records[0]), None);
    }
}
