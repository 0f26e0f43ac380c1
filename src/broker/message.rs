//! The one protocol-neutral message of the core: key, value, timestamp and ordered headers,
//! each a name and a typed value, with the event metadata as accessors over them.
//!
//! Adapters build a [`Message`] at their edge (the AMQP adapter from basic.publish and its
//! properties) and hand it to the core ([`super::routing::Router::publish`]); the core never
//! calls back into an adapter to learn what a message says. Every message is stored as one
//! Kafka record (ARCHITECTURE rule 3), so a header value must survive as record-header bytes
//! that any Kafka consumer can read: a text value is stored as itself, and a typed value
//! (boolean, integer, float, timestamp, table or array) as its canonical text, its kind named
//! in the one extra record header [`HEADER_TYPES_HEADER`] (a JSON object `{name: kind}`, only
//! present when some value is typed). Reading a record back ([`Message::from_record`]) restores
//! the types, so the core routes a dead letter or a replay by a headers exchange exactly as it
//! routed the original publish, with no protocol's encoding in sight.
//!
//! The canonical text is the adapter's to choose where its wire type is more exact than the
//! kind (an AMQP decimal keeps its digits, a 32-bit float its shortest form): a typed value is
//! a kind plus its text, and the constructors ([`HeaderValue::int`], ...) write the same texts
//! the CloudEvents type system uses (decimal, `true`/`false`, RFC 3339, JSON).
//!
//! The headers-exchange view of a message ([`routing_headers`]) is every header that is not
//! one of the broker's or an adapter's own (`ferry.*`, `amqp.*`), typed, plus RabbitMQ's
//! `x-death` from the core's death history; it is computed only when a headers exchange asks
//! ([`RoutingHeaders`]), so other publishes never pay for it.

use std::cell::OnceCell;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::event::EventMetadata;
use crate::log::SimpleRecord;

/// Record header naming the kind of each typed header value: a JSON object `{name: kind}`.
pub const HEADER_TYPES_HEADER: &str = "ferry.header-types";

/// The kind of a typed header value; its text is the canonical string of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    Bool,
    Int,
    Float,
    /// Seconds since the epoch; the text is RFC 3339.
    Timestamp,
    /// A table or an array; the text is JSON.
    Json,
}

impl ValueKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ValueKind::Bool => "bool",
            ValueKind::Int => "int",
            ValueKind::Float => "float",
            ValueKind::Timestamp => "timestamp",
            ValueKind::Json => "json",
        }
    }

    fn parse(s: &str) -> Option<ValueKind> {
        Some(match s {
            "bool" => ValueKind::Bool,
            "int" => ValueKind::Int,
            "float" => ValueKind::Float,
            "timestamp" => ValueKind::Timestamp,
            "json" => ValueKind::Json,
            _ => return None,
        })
    }
}

/// One header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    /// No value (an AMQP void, a Kafka header with a null value).
    Null,
    /// A string or bytes, stored as themselves.
    Text(Bytes),
    /// A typed value: its kind and its canonical text.
    Typed { kind: ValueKind, text: Bytes },
}

impl HeaderValue {
    pub fn text(s: impl Into<Bytes>) -> HeaderValue {
        HeaderValue::Text(s.into())
    }

    /// A typed value with the adapter's own canonical `text` for it.
    pub fn typed(kind: ValueKind, text: impl Into<Bytes>) -> HeaderValue {
        HeaderValue::Typed {
            kind,
            text: text.into(),
        }
    }

    pub fn bool(b: bool) -> HeaderValue {
        Self::typed(ValueKind::Bool, b.to_string())
    }

    pub fn int(i: i64) -> HeaderValue {
        Self::typed(ValueKind::Int, i.to_string())
    }

    pub fn float(f: f64) -> HeaderValue {
        Self::typed(ValueKind::Float, f.to_string())
    }

    /// A timestamp in seconds since the epoch.
    pub fn timestamp(secs: i64) -> HeaderValue {
        Self::typed(
            ValueKind::Timestamp,
            super::event::format_rfc3339_secs(secs),
        )
    }

    pub fn json(v: &Value) -> HeaderValue {
        Self::typed(ValueKind::Json, v.to_string())
    }

    /// The bytes a reader without types sees (a record header's value); `None` for null.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            HeaderValue::Null => None,
            HeaderValue::Text(b) | HeaderValue::Typed { text: b, .. } => Some(b),
        }
    }

    /// The value as JSON, typed where it has a kind (how headers exchanges compare values).
    pub fn to_json(&self) -> Value {
        let text = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
        match self {
            HeaderValue::Null => Value::Null,
            HeaderValue::Text(b) => Value::String(text(b)),
            HeaderValue::Typed { kind, text: b } => {
                let s = text(b);
                let typed = match kind {
                    ValueKind::Bool => s.parse::<bool>().ok().map(Value::Bool),
                    ValueKind::Int => s.parse::<i64>().ok().map(Value::from).or_else(|| {
                        // Unsigned 64-bit values beyond i64.
                        s.parse::<u64>().ok().map(Value::from)
                    }),
                    ValueKind::Float => s
                        .parse::<f64>()
                        .ok()
                        .and_then(serde_json::Number::from_f64)
                        .map(Value::Number),
                    ValueKind::Timestamp => {
                        super::event::parse_rfc3339_ms(&s).map(|ms| Value::from(ms / 1000))
                    }
                    ValueKind::Json => serde_json::from_str(&s).ok(),
                };
                typed.unwrap_or(Value::String(s))
            }
        }
    }
}

/// A message as the core sees it, whichever protocol brought it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// Record key: a Kafka key, an AMQP routing key.
    pub key: Option<Bytes>,
    /// The body.
    pub value: Option<Bytes>,
    /// Ms since the epoch (the publish time for an AMQP publish).
    pub timestamp: i64,
    /// Headers in order; names are distinct.
    pub headers: Vec<(String, HeaderValue)>,
}

impl Message {
    /// The value of header `name`.
    pub fn header(&self, name: &str) -> Option<&HeaderValue> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// Replaces header `name`, or adds it at the end.
    pub fn set_header(&mut self, name: &str, value: HeaderValue) {
        match self.headers.iter_mut().find(|(k, _)| k == name) {
            Some((_, v)) => *v = value,
            None => self.headers.push((name.to_string(), value)),
        }
    }

    /// The routing key (the record key as text; empty when absent).
    pub fn routing_key(&self) -> std::borrow::Cow<'_, str> {
        match &self.key {
            Some(k) => String::from_utf8_lossy(k),
            None => std::borrow::Cow::Borrowed(""),
        }
    }

    /// The event metadata (id, type, source, time, schema version, correlation and causation
    /// ids, trace context) by the rules of [`super::event`].
    pub fn metadata(&self) -> EventMetadata {
        EventMetadata::from_headers(
            self.headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_bytes().map(|b| &b[..]))),
            self.timestamp,
            None,
        )
    }

    /// The message/event id (never empty for a message an adapter built: the broker assigns
    /// one when the producer gave none).
    pub fn id(&self) -> String {
        self.metadata().id
    }

    pub fn event_type(&self) -> Option<String> {
        self.metadata().kind
    }

    pub fn source(&self) -> Option<String> {
        self.metadata().source
    }

    /// Event time in ms since the epoch.
    pub fn time_ms(&self) -> i64 {
        self.metadata().time_ms
    }

    pub fn correlation_id(&self) -> Option<String> {
        self.metadata().correlation_id
    }

    pub fn causation_id(&self) -> Option<String> {
        self.metadata().causation_id
    }

    pub fn schema_version(&self) -> Option<String> {
        self.metadata().schema_version
    }

    /// The W3C `traceparent`, if any.
    pub fn traceparent(&self) -> Option<String> {
        self.metadata().traceparent
    }

    /// The key a deduplicating queue or topic remembers this message by (see
    /// [`super::dedup`]); `None`: never deduplicated.
    pub fn dedup_key(&self) -> Option<Bytes> {
        super::dedup::key_of(self.headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())))
    }

    /// The record this message is stored as: typed values as their text, their kinds in
    /// [`HEADER_TYPES_HEADER`].
    pub fn into_record(self) -> SimpleRecord {
        let mut kinds = Map::new();
        let mut headers = Vec::with_capacity(self.headers.len() + 1);
        for (name, value) in self.headers {
            if name == HEADER_TYPES_HEADER {
                continue;
            }
            let bytes = match value {
                HeaderValue::Null => None,
                HeaderValue::Text(b) => Some(b),
                HeaderValue::Typed { kind, text } => {
                    kinds.insert(name.clone(), Value::from(kind.as_str()));
                    Some(text)
                }
            };
            headers.push((name, bytes));
        }
        if !kinds.is_empty() {
            headers.push((
                HEADER_TYPES_HEADER.to_string(),
                Some(Bytes::from(Value::Object(kinds).to_string())),
            ));
        }
        SimpleRecord {
            key: self.key,
            value: self.value,
            headers,
            timestamp: self.timestamp,
        }
    }

    /// The message a stored record holds (the inverse of [`Message::into_record`]; a record
    /// without kinds, e.g. a Kafka producer's, has text and null values only).
    pub fn from_record(record: SimpleRecord) -> Message {
        let kinds = header_kinds(&record);
        let headers = record
            .headers
            .into_iter()
            .filter(|(k, _)| k != HEADER_TYPES_HEADER)
            .map(|(name, value)| {
                let value = match (value, kinds.as_ref().and_then(|m| m.get(&name))) {
                    (None, _) => HeaderValue::Null,
                    (Some(text), Some(kind)) => HeaderValue::Typed { kind: *kind, text },
                    (Some(b), None) => HeaderValue::Text(b),
                };
                (name, value)
            })
            .collect();
        Message {
            key: record.key,
            value: record.value,
            timestamp: record.timestamp,
            headers,
        }
    }
}

/// The kinds a record's [`HEADER_TYPES_HEADER`] names; unknown kinds read as text.
fn header_kinds(record: &SimpleRecord) -> Option<std::collections::HashMap<String, ValueKind>> {
    let raw = record
        .headers
        .iter()
        .find(|(k, _)| k == HEADER_TYPES_HEADER)?
        .1
        .as_ref()?;
    let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(raw) else {
        return None;
    };
    Some(
        m.into_iter()
            .filter_map(|(k, v)| Some((k, ValueKind::parse(v.as_str()?)?)))
            .collect(),
    )
}

/// Whether a header is the broker's or an adapter's own rather than the application's.
fn internal_header(name: &str) -> bool {
    name.starts_with("ferry.") || name.starts_with("amqp.")
}

/// The headers-exchange view of a stored record (see the module docs): application headers,
/// typed, plus `x-death` when the message was dead-lettered. `None` when there are none.
pub fn routing_headers(record: &SimpleRecord) -> Option<Map<String, Value>> {
    let kinds = header_kinds(record);
    let mut out = Map::new();
    for (name, value) in &record.headers {
        if internal_header(name) {
            continue;
        }
        let value = match (value, kinds.as_ref().and_then(|m| m.get(name))) {
            (None, _) => HeaderValue::Null,
            (Some(text), Some(kind)) => HeaderValue::Typed {
                kind: *kind,
                text: text.clone(),
            },
            (Some(b), None) => HeaderValue::Text(b.clone()),
        };
        out.insert(name.clone(), value.to_json());
    }
    let deaths = super::routing::death_history(record);
    if !deaths.is_empty() {
        out.insert("x-death".into(), Value::Array(deaths));
    }
    (!out.is_empty()).then_some(out)
}

/// A record's [`routing_headers`], computed at most once and only if a headers exchange asks.
pub struct RoutingHeaders<'a> {
    record: Option<&'a SimpleRecord>,
    view: OnceCell<Option<Map<String, Value>>>,
}

impl<'a> RoutingHeaders<'a> {
    pub fn of(record: &'a SimpleRecord) -> Self {
        RoutingHeaders {
            record: Some(record),
            view: OnceCell::new(),
        }
    }

    /// No headers (a record routed by key only).
    pub fn none() -> Self {
        RoutingHeaders {
            record: None,
            view: OnceCell::new(),
        }
    }

    /// A view the caller already has (e.g. a native publish's text headers, kept after its
    /// record was moved into the log).
    pub fn from_view(view: Option<Map<String, Value>>) -> Self {
        let cell = OnceCell::new();
        let _ = cell.set(view);
        RoutingHeaders {
            record: None,
            view: cell,
        }
    }

    pub fn get(&self) -> Option<&Map<String, Value>> {
        self.view
            .get_or_init(|| self.record.and_then(routing_headers))
            .as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        Message {
            key: Some(Bytes::from_static(b"orders.eu")),
            value: Some(Bytes::from_static(b"{}")),
            timestamp: 1_700_000_000_000,
            headers: vec![
                ("amqp.message-id".into(), HeaderValue::text("m-1")),
                ("x-source".into(), HeaderValue::text("warehouse")),
                ("attempt".into(), HeaderValue::int(2)),
                ("urgent".into(), HeaderValue::bool(true)),
                ("ratio".into(), HeaderValue::typed(ValueKind::Float, "0.1")),
                ("sent".into(), HeaderValue::timestamp(1_700_000_000)),
                (
                    "tags".into(),
                    HeaderValue::json(&serde_json::json!(["a", 1])),
                ),
                ("empty".into(), HeaderValue::Null),
                ("causation-id".into(), HeaderValue::text("c-9")),
                (
                    "traceparent".into(),
                    HeaderValue::text("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                ),
            ],
        }
    }

    #[test]
    fn a_record_keeps_texts_readable_and_types_restorable() {
        let m = sample();
        let record = m.clone().into_record();
        let text = |name: &str| {
            record
                .headers
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.clone())
        };
        // What a Kafka consumer reads: strings as themselves, typed values as canonical text.
        assert_eq!(text("x-source"), Some(Bytes::from_static(b"warehouse")));
        assert_eq!(text("attempt"), Some(Bytes::from_static(b"2")));
        assert_eq!(text("urgent"), Some(Bytes::from_static(b"true")));
        assert_eq!(
            text("sent"),
            Some(Bytes::from_static(b"2023-11-14T22:13:20Z"))
        );
        assert_eq!(text("tags"), Some(Bytes::from_static(br#"["a",1]"#)));
        assert_eq!(text("empty"), None);
        assert_eq!(Message::from_record(record), m);
    }

    #[test]
    fn routing_headers_are_typed_application_headers() {
        let record = sample().into_record();
        let h = routing_headers(&record).unwrap();
        assert_eq!(h.get("x-source"), Some(&Value::from("warehouse")));
        assert_eq!(h.get("attempt"), Some(&Value::from(2)));
        assert_eq!(h.get("urgent"), Some(&Value::Bool(true)));
        assert_eq!(h.get("ratio"), Some(&Value::from(0.1)));
        assert_eq!(h.get("sent"), Some(&Value::from(1_700_000_000i64)));
        assert_eq!(h.get("tags"), Some(&serde_json::json!(["a", 1])));
        assert_eq!(h.get("empty"), Some(&Value::Null));
        assert!(h.get("amqp.message-id").is_none());
        assert!(h.get(HEADER_TYPES_HEADER).is_none());
        // Lazily: nothing is computed for a record nobody routes by headers.
        let lazy = RoutingHeaders::of(&record);
        assert_eq!(lazy.get(), Some(&h));
        assert!(RoutingHeaders::none().get().is_none());
    }

    #[test]
    fn accessors_read_the_event_metadata() {
        let m = sample();
        assert_eq!(m.id(), "m-1");
        assert_eq!(m.causation_id().as_deref(), Some("c-9"));
        assert_eq!(m.time_ms(), 1_700_000_000_000);
        assert!(m.traceparent().unwrap().starts_with("00-0af7"));
        assert_eq!(m.dedup_key(), Some(Bytes::from_static(b"m-1")));
        assert_eq!(m.routing_key(), "orders.eu");
    }

    #[test]
    fn a_record_of_a_kafka_producer_reads_as_text() {
        let record = SimpleRecord {
            key: None,
            value: None,
            headers: vec![("n".into(), Some(Bytes::from_static(b"5")))],
            timestamp: 1,
        };
        let m = Message::from_record(record.clone());
        assert_eq!(m.header("n"), Some(&HeaderValue::text("5")));
        assert_eq!(
            routing_headers(&record).unwrap().get("n"),
            Some(&Value::from("5"))
        );
        // A damaged kinds header leaves the texts as they are.
        let mut damaged = record;
        damaged
            .headers
            .push((HEADER_TYPES_HEADER.into(), Some(Bytes::from_static(b"{"))));
        assert_eq!(
            Message::from_record(damaged).header("n"),
            Some(&HeaderValue::text("5"))
        );
    }
}
