//! The only place native wire types meet broker types: a [`v1::Message`] becomes a record with
//! CloudEvents headers and back, and core errors become typed [`v1::ErrorCode`]s.
//!
//! Metadata header names are the ones the CloudEvents Kafka binding and the AMQP adapter use
//! (see `broker::event`), so Kafka and AMQP consumers read the same id, type, source, time and
//! trace context:
//!
//! | field          | record header                                   |
//! |----------------|-------------------------------------------------|
//! | id             | `ce_id` (AMQP consumers see it as `message-id`)  |
//! | type, source   | `ce_type`, `ce_source` (+ `ce_specversion` 1.0) |
//! | time           | `ce_time` (RFC 3339, ms)                        |
//! | subject        | `ce_subject`                                    |
//! | correlation id | `correlation-id` and `amqp.correlation-id`      |
//! | causation id   | `causation-id`                                  |
//! | schema version | `schema-version`                                |
//! | traceparent    | `traceparent`, `tracestate`                     |
//! | content type   | `content-type`                                  |
//! | reply to       | `amqp.reply-to`                                 |

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::broker::event::{self, EventMetadata};
use crate::broker::routing::{RoutingError, EXCHANGE_HEADER};
use crate::broker::BrokerError;
use crate::log::{LogError, SimpleRecord};
use crate::proto::codec::FrameError;
use crate::proto::v1::{self, ErrorCode};

const CONTENT_TYPE: &str = "content-type";
const AMQP_CORRELATION_ID: &str = "amqp.correlation-id";
const AMQP_REPLY_TO: &str = "amqp.reply-to";
const CE_SUBJECT: &str = "ce_subject";

/// Header names an application may not set itself: they are the broker's or the metadata's.
fn reserved(name: &str) -> bool {
    name.starts_with("ferry.")
        || name.starts_with("amqp.")
        || name.starts_with(event::CE_PREFIX)
        || matches!(
            name,
            CONTENT_TYPE
                | event::CORRELATION_ID_HEADER
                | event::CAUSATION_ID_HEADER
                | event::SCHEMA_VERSION_HEADER
                | event::TRACEPARENT_HEADER
                | event::TRACESTATE_HEADER
                | "message-id"
        )
}

/// An error answered on a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeError {
    pub code: ErrorCode,
    pub message: String,
    /// `SCHEMA_REJECTED`: the refusal's reason (the metric's label) and, in a batch, the
    /// refused message's index.
    pub schema: Option<(&'static str, u32)>,
}

impl NativeError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            schema: None,
        }
    }

    /// A schema validation's refusal of the message at `index` (0 for a single publish).
    pub fn schema_rejected(
        refused: crate::broker::schema_check::MessageRejection,
        index: u32,
    ) -> Self {
        Self {
            code: ErrorCode::SchemaRejected,
            message: refused.message,
            schema: Some((refused.reason, index)),
        }
    }

    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Malformed, message)
    }

    pub fn response(&self) -> v1::Response {
        v1::Response {
            result: Some(v1::response::Result::Error(v1::Error {
                code: self.code as i32,
                message: self.message.clone(),
                schema_reason: self.schema.map(|(r, _)| r.to_string()).unwrap_or_default(),
                message_index: self.schema.map_or(0, |(_, i)| i),
            })),
        }
    }
}

impl From<RoutingError> for NativeError {
    fn from(e: RoutingError) -> Self {
        let code = match &e {
            RoutingError::NotFound { .. } => ErrorCode::NotFound,
            RoutingError::PreconditionFailed(_) | RoutingError::ResourceLocked { .. } => {
                ErrorCode::Conflict
            }
            RoutingError::AccessRefused(_) | RoutingError::InvalidRequest(_) => {
                ErrorCode::InvalidArgument
            }
            RoutingError::Log(_) | RoutingError::Meta(_) => ErrorCode::Unavailable,
        };
        Self::new(code, e.client_message())
    }
}

impl From<BrokerError> for NativeError {
    fn from(e: BrokerError) -> Self {
        Self::from_broker(&e)
    }
}

impl NativeError {
    /// A core error as its typed code.
    pub fn from_broker(e: &BrokerError) -> Self {
        let code = match e {
            BrokerError::UnknownTopic(_) | BrokerError::UnknownPartition { .. } => {
                ErrorCode::NotFound
            }
            BrokerError::TopicExists(_) => ErrorCode::Conflict,
            BrokerError::InvalidTopicName { .. }
            | BrokerError::InvalidPartitions(_)
            | BrokerError::InvalidConfig { .. }
            | BrokerError::PolicyViolation(_) => ErrorCode::InvalidArgument,
            BrokerError::ShuttingDown => ErrorCode::ShuttingDown,
            BrokerError::Log(_) | BrokerError::Meta(_) => ErrorCode::Unavailable,
        };
        Self::new(code, e.client_message())
    }
}

impl From<LogError> for NativeError {
    fn from(e: LogError) -> Self {
        Self::new(ErrorCode::Unavailable, e.client_message())
    }
}

impl From<FrameError> for NativeError {
    fn from(e: FrameError) -> Self {
        let code = match e {
            FrameError::TooLarge { .. } => ErrorCode::TooLarge,
            FrameError::BadLength | FrameError::Malformed(_) => ErrorCode::Malformed,
        };
        Self::new(code, e.to_string())
    }
}

impl NativeError {
    /// The answer to a request frame that could not be read; `None` when the stream itself
    /// failed (nobody is left to answer).
    pub fn unreadable(e: crate::proto::framed::ReadError) -> Option<Self> {
        use crate::proto::framed::ReadError;
        match e {
            ReadError::Frame(e) => Some(e.into()),
            ReadError::Truncated => Some(Self::malformed("the stream ended inside a frame")),
            ReadError::Io(_) => None,
        }
    }
}

/// A published message as a record: the payload as value, `key` as key, the metadata as
/// headers (see the module docs). An empty id gets a broker-assigned UUIDv7. Returns the
/// record and its id.
pub fn to_record(
    msg: v1::Message,
    key: Option<Bytes>,
    now_ms: i64,
) -> Result<(SimpleRecord, String), NativeError> {
    let meta = msg.metadata.unwrap_or_default();
    let mut headers: Vec<(String, Option<Bytes>)> = Vec::with_capacity(msg.headers.len() + 8);
    for h in msg.headers {
        if reserved(&h.key) {
            return Err(NativeError::new(
                ErrorCode::InvalidArgument,
                format!(
                    "header `{}` is reserved (use the metadata fields; `ferry.`, `amqp.` and \
                     `ce_` names belong to the broker)",
                    h.key
                ),
            ));
        }
        if headers.iter().any(|(k, _)| *k == h.key) {
            return Err(NativeError::new(
                ErrorCode::InvalidArgument,
                format!("header `{}` given twice", h.key),
            ));
        }
        headers.push((h.key, Some(Bytes::from(h.value))));
    }
    let id = if meta.id.is_empty() {
        event::new_message_id(now_ms)
    } else {
        meta.id
    };
    let time_ms = if meta.time_ms > 0 {
        meta.time_ms
    } else {
        now_ms
    };
    let mut put = |name: &str, value: String| {
        if !value.is_empty() {
            headers.push((name.to_string(), Some(Bytes::from(value))));
        }
    };
    put("ce_specversion", "1.0".into());
    put("ce_id", id.clone());
    put("ce_type", meta.r#type);
    put("ce_source", meta.source);
    put("ce_time", event::format_rfc3339_ms(time_ms));
    put(CE_SUBJECT, meta.subject);
    put(event::CORRELATION_ID_HEADER, meta.correlation_id.clone());
    put(AMQP_CORRELATION_ID, meta.correlation_id);
    put(event::CAUSATION_ID_HEADER, meta.causation_id);
    put(event::SCHEMA_VERSION_HEADER, meta.schema_version);
    put(event::TRACEPARENT_HEADER, meta.traceparent);
    put(event::TRACESTATE_HEADER, meta.tracestate);
    put(CONTENT_TYPE, meta.content_type);
    put(AMQP_REPLY_TO, meta.reply_to);
    let record = SimpleRecord {
        key,
        value: Some(Bytes::from(msg.payload)),
        headers,
        timestamp: now_ms,
    };
    Ok((record, id))
}

fn header<'a>(record: &'a SimpleRecord, name: &str) -> Option<&'a Bytes> {
    record
        .headers
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.as_ref())
}

fn text(record: &SimpleRecord, name: &str) -> String {
    header(record, name)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

/// A stored record as a delivered message, whichever protocol wrote it: the metadata as
/// `broker::event` reads it (so an AMQP message-id or a Kafka record's `ce_id` is the id).
pub fn from_record(
    record: &SimpleRecord,
    location: Option<event::RecordLocation<'_>>,
) -> v1::Message {
    let mut meta = match location {
        Some(at) => EventMetadata::from_headers(
            record
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_deref())),
            record.timestamp,
            Some(at),
        ),
        None => EventMetadata::from_record(record),
    };
    let content_type = match header(record, CONTENT_TYPE) {
        Some(v) => String::from_utf8_lossy(v).into_owned(),
        None => text(record, "amqp.content-type"),
    };
    let metadata = v1::EventMetadata {
        id: std::mem::take(&mut meta.id),
        r#type: meta.kind.unwrap_or_default(),
        source: meta.source.unwrap_or_default(),
        time_ms: meta.time_ms,
        subject: text(record, CE_SUBJECT),
        correlation_id: meta.correlation_id.unwrap_or_default(),
        causation_id: meta.causation_id.unwrap_or_default(),
        schema_version: meta.schema_version.unwrap_or_default(),
        traceparent: meta.traceparent.unwrap_or_default(),
        tracestate: meta.tracestate.unwrap_or_default(),
        content_type,
        reply_to: text(record, AMQP_REPLY_TO),
    };
    let headers = record
        .headers
        .iter()
        .filter(|(k, _)| !reserved(k))
        .map(|(k, v)| v1::Header {
            key: k.clone(),
            value: v.as_ref().map(|b| b.to_vec()).unwrap_or_default(),
        })
        .collect();
    v1::Message {
        metadata: Some(metadata),
        key: record.key.as_ref().map(|k| k.to_vec()).unwrap_or_default(),
        payload: record
            .value
            .as_ref()
            .map(|v| v.to_vec())
            .unwrap_or_default(),
        headers,
    }
}

/// The exchange a queued record was published to.
pub fn exchange_of(record: &SimpleRecord) -> String {
    text(record, EXCHANGE_HEADER)
}

/// A JSON object argument field (`arguments_json`); empty means none.
pub fn arguments(field: &str, text: &str) -> Result<Value, NativeError> {
    if text.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(NativeError::new(
            ErrorCode::InvalidArgument,
            format!("{field} must be a JSON object"),
        )),
        Err(e) => Err(NativeError::new(
            ErrorCode::InvalidArgument,
            format!("{field} is not valid JSON: {e}"),
        )),
    }
}

/// The vhost a request names; empty is the default vhost.
pub fn vhost(v: &str) -> &str {
    if v.is_empty() {
        "/"
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_through_record_headers() {
        let msg = v1::Message {
            metadata: Some(v1::EventMetadata {
                id: "e-1".into(),
                r#type: "order.placed".into(),
                source: "/orders".into(),
                time_ms: 1_700_000_000_123,
                subject: "o-9".into(),
                correlation_id: "c-1".into(),
                causation_id: "e-0".into(),
                schema_version: "2".into(),
                traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
                tracestate: String::new(),
                content_type: "application/json".into(),
                reply_to: "replies".into(),
            }),
            key: Vec::new(),
            payload: b"{}".to_vec(),
            headers: vec![v1::Header {
                key: "tenant".into(),
                value: b"acme".to_vec(),
            }],
        };
        let (record, id) = to_record(msg.clone(), None, 5).expect("valid");
        assert_eq!(id, "e-1");
        assert_eq!(text(&record, "ce_time"), "2023-11-14T22:13:20.123Z");
        let back = from_record(&record, None);
        assert_eq!(back.metadata, msg.metadata);
        assert_eq!(back.headers, msg.headers);
        assert_eq!(back.payload, msg.payload);
    }

    #[test]
    fn reserved_headers_are_refused() {
        let msg = v1::Message {
            headers: vec![v1::Header {
                key: "ce_id".into(),
                value: b"x".to_vec(),
            }],
            ..Default::default()
        };
        let err = to_record(msg, None, 0).expect_err("reserved");
        assert_eq!(err.code, ErrorCode::InvalidArgument);
    }
}
