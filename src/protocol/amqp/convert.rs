//! The AMQP adapter's boundary with the core: messages, arguments and errors.
//!
//! A published AMQP message is stored as one Kafka record (ARCHITECTURE rule 3): the routing key
//! is the record key, the body is the record value, the timestamp is the publish time, and the
//! exchange and every basic property travel as record headers, by this one table:
//!
//! | AMQP                    | record header            | header value                          |
//! |-------------------------|--------------------------|---------------------------------------|
//! | exchange published to   | `ferry.exchange`         | UTF-8 (stamped by the core's router)  |
//! | `x-death` & co.         | `ferry.death`            | JSON list (written by the core's      |
//! |                         |                          | dead-lettering; see below)            |
//! | content-type            | `amqp.content-type`      | UTF-8                                 |
//! | content-encoding        | `amqp.content-encoding`  | UTF-8                                 |
//! | headers                 | `amqp.headers`           | AMQP field-table wire encoding        |
//! | delivery-mode           | `amqp.delivery-mode`     | decimal ASCII (`1`, `2`)              |
//! | priority                | `ferry.priority`         | decimal ASCII (the core orders        |
//! |                         |                          | priority queues by it)                |
//! | correlation-id          | `amqp.correlation-id`    | UTF-8                                 |
//! | reply-to                | `amqp.reply-to`          | UTF-8                                 |
//! | expiration              | `ferry.ttl`              | decimal ASCII ms (the core's per-     |
//! |                         |                          | message TTL; checked at publish)      |
//! | message-id              | `amqp.message-id`        | UTF-8                                 |
//! | timestamp               | `amqp.timestamp`         | decimal ASCII seconds                 |
//! | type                    | `amqp.type`              | UTF-8                                 |
//! | user-id                 | `amqp.user-id`           | UTF-8                                 |
//! | app-id                  | `amqp.app-id`            | UTF-8                                 |
//! | cluster-id              | `amqp.cluster-id`        | UTF-8                                 |
//!
//! The `headers` table keeps its AMQP types exactly by storing its wire encoding. The core's
//! protocol-neutral death history (`ferry.death`, newest first) is delivered as RabbitMQ's
//! `x-death` array of tables (`queue`, `reason`, `count`, `time`, `exchange`, `routing-keys`)
//! plus `x-first-death-{queue,reason,exchange}` and `x-last-death-{queue,reason,exchange}`. Record headers
//! *without* the `amqp.` prefix (a Kafka producer's) are delivered as AMQP headers with
//! long-string values (void for a null value), so a Kafka record reaches an AMQP consumer with
//! its headers readable.
//!
//! Field tables (message headers for the headers exchange, declare and bind arguments) become
//! `serde_json` values for the core, which compares and persists them without knowing AMQP.

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::types::generation::gen_field_table;
use amq_protocol::types::parsing::parse_field_table;
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use bytes::Bytes;
use serde_json::{Map, Number, Value};

use crate::broker::routing::{
    RoutingError, DEATH_HEADER, EXCHANGE_HEADER, PRIORITY_HEADER, TTL_HEADER,
};
use crate::log::SimpleRecord;

/// The prefix of record headers that carry AMQP properties.
pub const PREFIX: &str = "amqp.";
const HEADERS_HEADER: &str = "amqp.headers";
const DELIVERY_MODE_HEADER: &str = "amqp.delivery-mode";
/// Where records written before priority became the core's kept it.
const LEGACY_PRIORITY_HEADER: &str = "amqp.priority";
const TIMESTAMP_HEADER: &str = "amqp.timestamp";
/// Where records written before expiration became the core's TTL kept it.
const LEGACY_EXPIRATION_HEADER: &str = "amqp.expiration";

type Getter = fn(&AMQPProperties) -> &Option<ShortString>;
type Setter = fn(AMQPProperties, ShortString) -> AMQPProperties;

/// The string-valued rows of the table above.
const STRING_PROPERTIES: &[(&str, Getter, Setter)] = &[
    (
        "amqp.content-type",
        AMQPProperties::content_type,
        AMQPProperties::with_content_type,
    ),
    (
        "amqp.content-encoding",
        AMQPProperties::content_encoding,
        AMQPProperties::with_content_encoding,
    ),
    (
        "amqp.correlation-id",
        AMQPProperties::correlation_id,
        AMQPProperties::with_correlation_id,
    ),
    (
        "amqp.reply-to",
        AMQPProperties::reply_to,
        AMQPProperties::with_reply_to,
    ),
    (
        "amqp.message-id",
        AMQPProperties::message_id,
        AMQPProperties::with_message_id,
    ),
    ("amqp.type", AMQPProperties::kind, AMQPProperties::with_type),
    (
        "amqp.user-id",
        AMQPProperties::user_id,
        AMQPProperties::with_user_id,
    ),
    (
        "amqp.app-id",
        AMQPProperties::app_id,
        AMQPProperties::with_app_id,
    ),
    (
        "amqp.cluster-id",
        AMQPProperties::cluster_id,
        AMQPProperties::with_cluster_id,
    ),
];

/// Builds the stored record of a published message (the router adds the exchange).
pub fn to_record(
    routing_key: &str,
    properties: &AMQPProperties,
    body: Bytes,
    now_ms: i64,
) -> SimpleRecord {
    let mut headers: Vec<(String, Option<Bytes>)> = Vec::with_capacity(4);
    for (name, get, _) in STRING_PROPERTIES {
        if let Some(v) = get(properties) {
            headers.push((
                (*name).into(),
                Some(Bytes::copy_from_slice(v.as_str().as_bytes())),
            ));
        }
    }
    if let Some(table) = properties.headers() {
        headers.push((HEADERS_HEADER.into(), Some(encode_table(table))));
    }
    if let Some(m) = properties.delivery_mode() {
        headers.push((DELIVERY_MODE_HEADER.into(), Some(m.to_string().into())));
    }
    if let Some(p) = properties.priority() {
        headers.push((PRIORITY_HEADER.into(), Some(p.to_string().into())));
    }
    if let Some(t) = properties.timestamp() {
        headers.push((TIMESTAMP_HEADER.into(), Some(t.to_string().into())));
    }
    if let Some(e) = properties.expiration() {
        headers.push((
            TTL_HEADER.into(),
            Some(Bytes::copy_from_slice(e.as_str().as_bytes())),
        ));
    }
    SimpleRecord {
        key: Some(Bytes::copy_from_slice(routing_key.as_bytes())),
        value: Some(body),
        headers,
        timestamp: now_ms,
    }
}

/// RabbitMQ's rule for the `expiration` property: a whole number of milliseconds, written in
/// decimal, that fits 32 bits; for anything else the publish is refused with 406.
pub fn check_expiration(properties: &AMQPProperties) -> Result<(), AmqpError> {
    let Some(e) = properties.expiration() else {
        return Ok(());
    };
    let e = e.as_str();
    let valid = !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()) && e.parse::<u32>().is_ok();
    if valid {
        Ok(())
    } else {
        Err(AmqpError::channel(406, format!("invalid expiration '{e}'")))
    }
}

/// A stored record as what basic.deliver / get-ok / return need.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub exchange: String,
    pub routing_key: String,
    pub properties: AMQPProperties,
    pub body: Bytes,
}

fn text(v: &Option<Bytes>) -> String {
    v.as_ref()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

/// Reads a stored record back into AMQP terms; unknown or unreadable `amqp.*` headers are
/// skipped rather than failing the delivery.
pub fn from_record(record: &SimpleRecord) -> Outgoing {
    let mut props = AMQPProperties::default();
    let mut exchange = String::new();
    let mut table: Option<FieldTable> = None;
    let mut foreign = FieldTable::default();
    let mut deaths: Option<FieldTable> = None;
    for (name, value) in &record.headers {
        if let Some((_, _, set)) = STRING_PROPERTIES.iter().find(|(n, _, _)| n == name) {
            props = set(props, ShortString::from(text(value)));
            continue;
        }
        match name.as_str() {
            EXCHANGE_HEADER => exchange = text(value),
            DEATH_HEADER => deaths = death_headers(&text(value)),
            TTL_HEADER | LEGACY_EXPIRATION_HEADER => {
                props = props.with_expiration(ShortString::from(text(value)))
            }
            HEADERS_HEADER => table = value.as_ref().and_then(|b| decode_table(b)),
            DELIVERY_MODE_HEADER => {
                if let Ok(m) = text(value).parse() {
                    props = props.with_delivery_mode(m);
                }
            }
            PRIORITY_HEADER | LEGACY_PRIORITY_HEADER => {
                if let Ok(p) = text(value).parse() {
                    props = props.with_priority(p);
                }
            }
            TIMESTAMP_HEADER => {
                if let Ok(t) = text(value).parse() {
                    props = props.with_timestamp(t);
                }
            }
            other if other.starts_with(PREFIX) || other.starts_with("ferry.") => {}
            other => {
                let v = match value {
                    Some(b) => AMQPValue::LongString(LongString::from(b.to_vec())),
                    None => AMQPValue::Void,
                };
                foreign.insert(ShortString::from(other.to_string()), v);
            }
        }
    }
    if !foreign.inner().is_empty() {
        let mut merged = table.take().unwrap_or_default();
        for (k, v) in foreign.inner() {
            if !merged.contains_key(k.as_str()) {
                merged.insert(k.clone(), v.clone());
            }
        }
        table = Some(merged);
    }
    // The broker's own death history wins over anything a publisher put in x-death.
    if let Some(d) = deaths {
        let mut merged = table.take().unwrap_or_default();
        for (k, v) in d.inner() {
            merged.insert(k.clone(), v.clone());
        }
        table = Some(merged);
    }
    if let Some(t) = table {
        props = props.with_headers(t);
    }
    Outgoing {
        exchange,
        routing_key: text(&record.key),
        properties: props,
        body: record.value.clone().unwrap_or_default(),
    }
}

/// RabbitMQ's dead-letter headers from the core's JSON death history (newest first).
fn death_headers(json: &str) -> Option<FieldTable> {
    let list: Vec<Value> = serde_json::from_str(json).ok()?;
    let long = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
    let field = |d: &Value, k: &str| d.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let mut entries = Vec::with_capacity(list.len());
    for d in &list {
        let mut t = FieldTable::default();
        t.insert("queue".into(), long(&field(d, "queue")));
        t.insert("reason".into(), long(&field(d, "reason")));
        t.insert(
            "count".into(),
            AMQPValue::LongLongInt(d.get("count").and_then(Value::as_i64).unwrap_or(1)),
        );
        t.insert(
            "time".into(),
            AMQPValue::Timestamp(d.get("time").and_then(Value::as_u64).unwrap_or(0)),
        );
        t.insert("exchange".into(), long(&field(d, "exchange")));
        let keys = d
            .get("routing-keys")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(long)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        t.insert("routing-keys".into(), AMQPValue::FieldArray(keys.into()));
        if let Some(e) = d.get("original-expiration").and_then(Value::as_str) {
            t.insert("original-expiration".into(), long(e));
        }
        entries.push(AMQPValue::FieldTable(t));
    }
    let mut out = FieldTable::default();
    let first = list
        .iter()
        .find(|d| d.get("first").and_then(Value::as_bool) == Some(true))
        .or(list.last());
    if let (Some(first), Some(last)) = (first, list.first()) {
        for (prefix, d) in [("x-first-death", first), ("x-last-death", last)] {
            for k in ["queue", "reason", "exchange"] {
                out.insert(format!("{prefix}-{k}").into(), long(&field(d, k)));
            }
        }
    }
    out.insert("x-death".into(), AMQPValue::FieldArray(entries.into()));
    Some(out)
}

/// Adds quorum queues' `x-delivery-count` header (how often the message was returned before
/// this delivery); RabbitMQ leaves it out on a first delivery.
pub fn with_delivery_count(properties: AMQPProperties, count: u32) -> AMQPProperties {
    if count == 0 {
        return properties;
    }
    let mut table = properties.headers().clone().unwrap_or_default();
    table.insert(
        "x-delivery-count".into(),
        AMQPValue::LongLongInt(i64::from(count)),
    );
    properties.with_headers(table)
}

/// A field table in its wire form (with the 4-byte length prefix).
pub fn encode_table(table: &FieldTable) -> Bytes {
    match gen_field_table(table)(Vec::new().into()) {
        Ok(ctx) => Bytes::from(ctx.write),
        Err(_) => Bytes::new(),
    }
}

/// Parses a field table in wire form; `None` if malformed.
pub fn decode_table(raw: &[u8]) -> Option<FieldTable> {
    match parse_field_table(raw) {
        Ok((&[], t)) => Some(t),
        _ => None,
    }
}

/// A field table as a JSON object, for the core.
pub fn table_to_json(table: &FieldTable) -> Value {
    let mut m = Map::new();
    for (k, v) in table.inner() {
        m.insert(k.as_str().to_string(), value_to_json(v));
    }
    Value::Object(m)
}

/// Message headers as a JSON map for headers-exchange routing.
pub fn headers_json(properties: &AMQPProperties) -> Option<Map<String, Value>> {
    match properties.headers().as_ref().map(table_to_json) {
        Some(Value::Object(m)) => Some(m),
        _ => None,
    }
}

fn float(f: f64) -> Value {
    Number::from_f64(f)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

fn value_to_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(i) => Value::from(*i),
        AMQPValue::ShortShortUInt(i) => Value::from(*i),
        AMQPValue::ShortInt(i) => Value::from(*i),
        AMQPValue::ShortUInt(i) => Value::from(*i),
        AMQPValue::LongInt(i) => Value::from(*i),
        AMQPValue::LongUInt(i) => Value::from(*i),
        AMQPValue::LongLongInt(i) => Value::from(*i),
        AMQPValue::Float(f) => float(f64::from(*f)),
        AMQPValue::Double(f) => float(*f),
        AMQPValue::DecimalValue(d) => float(f64::from(d.value) / 10f64.powi(i32::from(d.scale))),
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_string()),
        AMQPValue::LongString(s) => Value::String(String::from_utf8_lossy(s.as_bytes()).into()),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_to_json).collect()),
        AMQPValue::Timestamp(t) => Value::from(*t),
        AMQPValue::FieldTable(t) => table_to_json(t),
        AMQPValue::ByteArray(b) => Value::String(String::from_utf8_lossy(b.as_slice()).into()),
        AMQPValue::Void => Value::Null,
    }
}

/// An AMQP error: a reply code, its text, and whether it closes the connection.
#[derive(Debug, Clone)]
pub struct AmqpError {
    pub code: u16,
    pub text: String,
    /// Connection errors close the connection; channel errors close only the channel.
    pub connection: bool,
}

impl AmqpError {
    pub fn channel(code: u16, text: impl Into<String>) -> Self {
        Self {
            code,
            text: text.into(),
            connection: false,
        }
    }

    pub fn connection(code: u16, text: impl Into<String>) -> Self {
        Self {
            code,
            text: text.into(),
            connection: true,
        }
    }

    /// The reply text with the code's name in front, as RabbitMQ writes it.
    pub fn reply_text(&self) -> String {
        let name = match self.code {
            311 => "CONTENT_TOO_LARGE",
            312 => "NO_ROUTE",
            403 => "ACCESS_REFUSED",
            404 => "NOT_FOUND",
            405 => "RESOURCE_LOCKED",
            406 => "PRECONDITION_FAILED",
            320 => "CONNECTION_FORCED",
            501 => "FRAME_ERROR",
            502 => "SYNTAX_ERROR",
            503 => "COMMAND_INVALID",
            504 => "CHANNEL_ERROR",
            505 => "UNEXPECTED_FRAME",
            530 => "NOT_ALLOWED",
            540 => "NOT_IMPLEMENTED",
            _ => "INTERNAL_ERROR",
        };
        let mut t = format!("{name} - {}", self.text);
        // A short string holds at most 255 bytes.
        if t.len() > 255 {
            let mut cut = 255;
            while !t.is_char_boundary(cut) {
                cut -= 1;
            }
            t.truncate(cut);
        }
        t
    }
}

impl From<RoutingError> for AmqpError {
    fn from(e: RoutingError) -> Self {
        let text = e.to_string();
        match e {
            RoutingError::NotFound { .. } => AmqpError::channel(404, text),
            RoutingError::PreconditionFailed(_) => AmqpError::channel(406, text),
            RoutingError::ResourceLocked { .. } => AmqpError::channel(405, text),
            RoutingError::AccessRefused(_) => AmqpError::channel(403, text),
            RoutingError::InvalidRequest(_) => AmqpError::connection(503, text),
            RoutingError::Log(_) | RoutingError::Meta(_) => AmqpError::connection(541, text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_round_trip_through_a_record() {
        let mut table = FieldTable::default();
        table.insert("n".into(), AMQPValue::LongInt(-5));
        table.insert("s".into(), AMQPValue::LongString("x".into()));
        let props = AMQPProperties::default()
            .with_content_type("text/plain".into())
            .with_delivery_mode(2)
            .with_priority(3)
            .with_correlation_id("c1".into())
            .with_timestamp(1_700_000_000)
            .with_expiration("60000".into())
            .with_type("t".into())
            .with_headers(table);
        let mut rec = to_record("rk", &props, Bytes::from_static(b"hi"), 5);
        rec.headers
            .push((EXCHANGE_HEADER.into(), Some("ex".into())));
        let out = from_record(&rec);
        assert_eq!(out.exchange, "ex");
        assert_eq!(out.routing_key, "rk");
        assert_eq!(out.body, Bytes::from_static(b"hi"));
        assert_eq!(out.properties, props);
    }

    #[test]
    fn kafka_headers_become_amqp_headers() {
        let rec = SimpleRecord {
            key: Some("k".into()),
            value: Some("v".into()),
            headers: vec![
                ("trace".into(), Some("abc".into())),
                ("amqp.bogus".into(), None),
            ],
            timestamp: 0,
        };
        let out = from_record(&rec);
        let h = out.properties.headers().clone().unwrap();
        assert_eq!(h.inner().len(), 1);
        assert!(h.contains_key("trace"));
    }
}
