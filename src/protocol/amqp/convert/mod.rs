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
//! | headers: string entry   | the entry's own name     | UTF-8 (the long string's bytes)       |
//! | headers: void entry     | the entry's own name     | null                                  |
//! | headers: typed entry    | the entry's own name     | canonical text (decimal, `true`,      |
//! |                         | + `amqp.headers`         | RFC 3339, JSON for tables/arrays) +   |
//! |                         |                          | the typed entry in field-table wire   |
//! |                         |                          | encoding (it wins at delivery)        |
//! | headers: reserved name  | `amqp.headers` only      | AMQP field-table wire encoding        |
//! | (kinds of typed entries)| `ferry.header-types`     | JSON `{name: kind}`, written by the   |
//! |                         |                          | core's `Message` (see broker::message)|
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
//! **Application headers are readable from every protocol.** Each `headers` entry becomes a
//! record header of the same name, so a Kafka consumer reads `x-source` as a plain header. A
//! long string is *moved* (stored once, as its bytes) and comes back as the same long string;
//! any other type is *copied* as its canonical text and its typed value also kept in the
//! `amqp.headers` table, where it wins at delivery, so an AMQP consumer gets back exactly what
//! was published, field types included. Names Ferry reads back as its own (`amqp.*`,
//! `ferry.*`, `ce_*`, `content-type`) are not copied out: those entries live in `amqp.headers`
//! only. Records written before this mapping (every entry in `amqp.headers`) read back as
//! before. The core's
//! protocol-neutral death history (`ferry.death`, newest first) is delivered as RabbitMQ's
//! `x-death` array of tables (`queue`, `reason`, `count`, `time`, `exchange`, `routing-keys`)
//! plus `x-first-death-{queue,reason,exchange}` and `x-last-death-{queue,reason,exchange}`. Record headers
//! *without* the `amqp.` prefix (a Kafka producer's) are delivered as AMQP headers with
//! long-string values (void for a null value), so a Kafka record reaches an AMQP consumer with
//! its headers readable.
//!
//! **Event headers, CloudEvents and trace context.** By the rule above, `traceparent`,
//! `tracestate`, `causation-id` and `schema-version` become record headers of their own, which
//! the core's [`EventMetadata`](crate::broker::event::EventMetadata) reads; CloudEvents
//! attributes are renamed to the Kafka binding's:
//!
//! | AMQP `headers` entry                      | record header          |
//! |-------------------------------------------|------------------------|
//! | `traceparent`, `tracestate` (W3C)         | `traceparent`, `tracestate` |
//! | `causation-id`, `schema-version`          | `causation-id`, `schema-version` |
//! | `cloudEvents:<attr>` or `cloudEvents_<attr>` | `ce_<attr>` (CloudEvents Kafka binding) |
//!
//! A long-string value (what pika, lapin and the CloudEvents SDKs send) is *moved*: the record
//! header holds its UTF-8 bytes and the delivery turns it back into the same long string. Any
//! other type (a CloudEvents `time` sent as an AMQP timestamp, a `long`, a `boolean`) is
//! *copied* as its canonical string (RFC 3339 for timestamps, decimal, `true`/`false`) and the
//! typed value also stays in the table, where it wins at delivery: the round trip is exact.
//! CloudEvents' AMQP binding allows both separators, `:` (the original, and what RabbitMQ
//! users mostly see) and `_` (preferred since for JMS selectors); a message uses one. Ferry
//! delivers `cloudEvents:` unless the publisher used `_`, which it remembers in
//! `ferry.ce-separator`; attributes written with the other separator in the same message stay
//! plain AMQP headers. The binding carries `datacontenttype` in the content-type property on
//! AMQP and in the `content-type` header on Kafka, so a CloudEvents message (one with any
//! `cloudEvents` attribute) stores its content-type as `content-type` rather than
//! `amqp.content-type`; a Kafka record's `content-type` header is delivered as the AMQP
//! content-type property.
//!
//! **Broker-assigned id and timestamp.** A publish without a message-id (and without a
//! CloudEvents id) gets a `ferry.message-id` header holding a fresh UUIDv7; the record
//! timestamp is the publish time. At delivery an absent message-id property is filled from, in
//! order, `ce_id`, `ferry.message-id`, and the record's location `topic/partition/offset` (the
//! `ferry.source` of a queue copy: the id of a Kafka-produced record that carries none), and an
//! absent timestamp from `ce_time`, else the record timestamp (in seconds, as AMQP counts;
//! RabbitMQ's `set_header_timestamp` interceptor does the same). So every delivered message
//! has an id and a timestamp, and Kafka and AMQP consumers see the same ones.
//!
//! **What AMQP cannot carry.** A Kafka producer can write a key, a header name or an `amqp.*`
//! value longer than AMQP's 255-byte short strings, or headers larger than a consumer's
//! `frame_max`. Such a record is still delivered, never dropped: the routing key, exchange or
//! property that does not fit is left empty and its full value sent in the long-string header
//! `x-ferry-<field>` (`x-ferry-routing-key`, `x-ferry-content-type`, `x-ferry-message-id`,
//! ...); a header whose name is too long arrives as a `{name, value}` entry of the array
//! header `x-ferry-long-headers`; and a property set too large for one frame loses its largest
//! headers, named in `x-ferry-dropped-headers` (the record itself keeps them). The rules live
//! in [`super::bounded`].
//!
//! Field tables (message headers for the headers exchange, declare and bind arguments) become
//! `serde_json` values for the core, which compares and persists them without knowing AMQP.

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::types::generation::gen_field_table;
use amq_protocol::types::parsing::parse_field_table;
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use bytes::Bytes;
use serde_json::{Map, Number, Value};

mod error;
mod headers;

pub use self::error::AmqpError;
use self::headers::*;
pub use self::headers::{decode_table, encode_table, table_to_json};
use crate::broker::event::{self, RecordLocation, CE_PREFIX, MESSAGE_ID_HEADER};
use crate::broker::message::{HeaderValue, Message, ValueKind};
use crate::broker::routing::{
    RoutingError, DEATH_HEADER, EXCHANGE_HEADER, PRIORITY_HEADER, TTL_HEADER,
};
use crate::broker::topic_router::SOURCE_HEADER;
use crate::log::SimpleRecord;
use crate::protocol::amqp::bounded::Overflow;

/// The prefix of record headers that carry AMQP properties.
pub const PREFIX: &str = "amqp.";
const HEADERS_HEADER: &str = "amqp.headers";
const DELIVERY_MODE_HEADER: &str = "amqp.delivery-mode";
/// Where records written before priority became the core's kept it.
const LEGACY_PRIORITY_HEADER: &str = "amqp.priority";
const TIMESTAMP_HEADER: &str = "amqp.timestamp";
/// Where records written before expiration became the core's TTL kept it.
const LEGACY_EXPIRATION_HEADER: &str = "amqp.expiration";
const CONTENT_TYPE_PROPERTY: &str = "amqp.content-type";
/// The CloudEvents Kafka binding's header for `datacontenttype`.
const CONTENT_TYPE_HEADER: &str = "content-type";
/// Set to `_` when a publisher wrote its CloudEvents attributes as `cloudEvents_*`.
const CE_SEPARATOR_HEADER: &str = "ferry.ce-separator";
const CE_AMQP_PREFIX: &str = "cloudEvents";

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

/// Builds the core's message of a publish (the router adds the exchange when it stores it).
pub fn to_message(
    routing_key: &str,
    properties: &AMQPProperties,
    body: Bytes,
    now_ms: i64,
) -> Message {
    let text = |b: Bytes| HeaderValue::Text(b);
    let mut headers: Vec<(String, HeaderValue)> = Vec::with_capacity(4);
    let lifted = properties.headers().as_ref().map(split_headers);
    let cloud_event = lifted.as_ref().and_then(|l| l.separator);
    for (name, get, _) in STRING_PROPERTIES {
        if let Some(v) = get(properties) {
            let name = if cloud_event.is_some() && *name == CONTENT_TYPE_PROPERTY {
                CONTENT_TYPE_HEADER
            } else {
                name
            };
            headers.push((
                name.into(),
                text(Bytes::copy_from_slice(v.as_str().as_bytes())),
            ));
        }
    }
    let mut has_ce_id = false;
    if let Some(l) = lifted {
        if let Some(rest) = l.rest {
            headers.push((HEADERS_HEADER.into(), text(encode_table(&rest))));
        }
        if l.separator == Some('_') {
            headers.push((CE_SEPARATOR_HEADER.into(), text(Bytes::from_static(b"_"))));
        }
        has_ce_id = l.headers.iter().any(|(name, _)| name == "ce_id");
        headers.extend(l.headers);
    }
    if let Some(m) = properties.delivery_mode() {
        headers.push((DELIVERY_MODE_HEADER.into(), text(m.to_string().into())));
    }
    if let Some(p) = properties.priority() {
        headers.push((PRIORITY_HEADER.into(), text(p.to_string().into())));
    }
    if let Some(t) = properties.timestamp() {
        headers.push((TIMESTAMP_HEADER.into(), text(t.to_string().into())));
    }
    if let Some(e) = properties.expiration() {
        headers.push((
            TTL_HEADER.into(),
            text(Bytes::copy_from_slice(e.as_str().as_bytes())),
        ));
    }
    if properties.message_id().is_none() && !has_ce_id {
        headers.push((
            MESSAGE_ID_HEADER.into(),
            text(event::new_message_id(now_ms).into()),
        ));
    }
    Message {
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
    pub exchange: ShortString,
    pub routing_key: ShortString,
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
    from_record_at(record, None)
}

/// [`from_record`] for a record read straight from a topic (a stream consumer), whose
/// location is its id when it carries none.
pub fn from_record_at(record: &SimpleRecord, location: Option<RecordLocation<'_>>) -> Outgoing {
    let mut props = AMQPProperties::default();
    let mut exchange = String::new();
    let mut table: Option<FieldTable> = None;
    let mut foreign = FieldTable::default();
    let mut deaths: Option<FieldTable> = None;
    let mut plain_content_type: Option<&Option<Bytes>> = None;
    let mut broker_id: Option<&Option<Bytes>> = None;
    let mut source: Option<&Option<Bytes>> = None;
    let mut ce_id: Option<&Option<Bytes>> = None;
    let mut ce_time: Option<&Option<Bytes>> = None;
    let mut ce_attrs: Vec<(&str, &Bytes)> = Vec::new();
    let mut ce_separator = ':';
    // Values too long for their AMQP short string (see `bounded`): any Kafka producer can
    // write them.
    let mut overflow = Overflow::default();
    for (name, value) in &record.headers {
        if let Some((n, _, set)) = STRING_PROPERTIES.iter().find(|(n, _, _)| n == name) {
            if let Some(v) = overflow.short(&n[PREFIX.len()..], text(value)) {
                props = set(props, v);
            }
            continue;
        }
        match name.as_str() {
            EXCHANGE_HEADER => exchange = text(value),
            DEATH_HEADER => deaths = death_headers(&text(value)),
            TTL_HEADER | LEGACY_EXPIRATION_HEADER => {
                if let Some(v) = overflow.short("expiration", text(value)) {
                    props = props.with_expiration(v);
                }
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
            CONTENT_TYPE_HEADER => plain_content_type = Some(value),
            MESSAGE_ID_HEADER => broker_id = Some(value),
            SOURCE_HEADER => source = Some(value),
            CE_SEPARATOR_HEADER => {
                if value.as_deref() == Some(b"_") {
                    ce_separator = '_';
                }
            }
            other if other.starts_with(PREFIX) || other.starts_with("ferry.") => {}
            other => {
                if let (Some(attr), Some(v)) = (other.strip_prefix(CE_PREFIX), value) {
                    if !attr.is_empty() {
                        match attr {
                            "id" => ce_id = Some(value),
                            "time" => ce_time = Some(value),
                            _ => {}
                        }
                        ce_attrs.push((attr, v));
                        continue;
                    }
                }
                let v = match value {
                    Some(b) => AMQPValue::LongString(LongString::from(b.to_vec())),
                    None => AMQPValue::Void,
                };
                if let Some(name) = overflow.header_name(other, &v) {
                    foreign.insert(name, v);
                }
            }
        }
    }
    if props.content_type().is_none() {
        if let Some(v) = plain_content_type.and_then(|v| overflow.short("content-type", text(v))) {
            props = props.with_content_type(v);
        }
    }
    if props.message_id().is_none() {
        let id = ce_id
            .or(broker_id)
            .or(source)
            .map(text)
            .or_else(|| location.map(|l| l.to_string()));
        if let Some(id) = id.and_then(|id| overflow.short("message-id", id)) {
            props = props.with_message_id(id);
        }
    }
    if props.timestamp().is_none() {
        let ce_secs = ce_time
            .and_then(|v| v.as_deref())
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(event::parse_rfc3339_ms)
            .map(|ms| ms.div_euclid(1000));
        let secs = ce_secs.unwrap_or(record.timestamp.div_euclid(1000));
        if let Ok(secs) = u64::try_from(secs) {
            props = props.with_timestamp(secs);
        }
    }
    for (attr, v) in ce_attrs {
        let v = AMQPValue::LongString(LongString::from(v.to_vec()));
        if let Some(name) =
            overflow.header_name(&format!("{CE_AMQP_PREFIX}{ce_separator}{attr}"), &v)
        {
            foreign.insert(name, v);
        }
    }
    let exchange = overflow.short("exchange", exchange).unwrap_or_default();
    let routing_key = overflow
        .short("routing-key", text(&record.key))
        .unwrap_or_default();
    if !foreign.inner().is_empty() {
        // A typed value the publisher put in the table wins over its string copy.
        let mut merged = table.take().unwrap_or_default();
        for (k, v) in foreign.inner() {
            if !merged.contains_key(k.as_str()) {
                merged.insert(k.clone(), v.clone());
            }
        }
        table = Some(merged);
    }
    if !overflow.is_empty() {
        let mut merged = table.take().unwrap_or_default();
        overflow.merge_into(&mut merged);
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
        routing_key,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The stored record of a publish, as the router receives it.
    fn to_record(rk: &str, props: &AMQPProperties, body: Bytes, now_ms: i64) -> SimpleRecord {
        to_message(rk, props, body, now_ms).into_record()
    }

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
            .with_message_id("m".into())
            .with_headers(table);
        let mut rec = to_record("rk", &props, Bytes::from_static(b"hi"), 5);
        rec.headers
            .push((EXCHANGE_HEADER.into(), Some("ex".into())));
        let out = from_record(&rec);
        assert_eq!(out.exchange.as_str(), "ex");
        assert_eq!(out.routing_key.as_str(), "rk");
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

    fn long(s: &str) -> AMQPValue {
        AMQPValue::LongString(s.into())
    }

    fn header<'a>(rec: &'a SimpleRecord, name: &str) -> Option<&'a [u8]> {
        rec.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    }

    #[test]
    fn cloudevents_attributes_become_ce_headers_and_come_back() {
        for sep in [':', '_'] {
            let mut table = FieldTable::default();
            table.insert(format!("cloudEvents{sep}id").into(), long("e-1"));
            table.insert(format!("cloudEvents{sep}type").into(), long("com.ex.t"));
            table.insert(
                format!("cloudEvents{sep}time").into(),
                AMQPValue::Timestamp(1_522_900_584),
            );
            table.insert(
                format!("cloudEvents{sep}seq").into(),
                AMQPValue::LongLongInt(3),
            );
            table.insert(
                "traceparent".into(),
                long("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            );
            table.insert("tenant".into(), AMQPValue::LongInt(9));
            let props = AMQPProperties::default()
                .with_content_type("application/json".into())
                .with_message_id("m".into())
                .with_timestamp(1)
                .with_headers(table.clone());
            let rec = to_record("rk", &props, Bytes::new(), 5);
            assert_eq!(header(&rec, "ce_id"), Some(&b"e-1"[..]));
            assert_eq!(header(&rec, "ce_type"), Some(&b"com.ex.t"[..]));
            assert_eq!(header(&rec, "ce_time"), Some(&b"2018-04-05T03:56:24Z"[..]));
            assert_eq!(header(&rec, "ce_seq"), Some(&b"3"[..]));
            assert_eq!(header(&rec, "content-type"), Some(&b"application/json"[..]));
            assert_eq!(header(&rec, "amqp.content-type"), None);
            assert!(header(&rec, "traceparent").is_some());
            // Moved string values are not duplicated in the table; typed ones stay.
            let rest = decode_table(header(&rec, "amqp.headers").unwrap()).unwrap();
            assert!(!rest.contains_key(format!("cloudEvents{sep}id").as_str()));
            assert!(!rest.contains_key("traceparent"));
            assert!(rest.contains_key(format!("cloudEvents{sep}time").as_str()));
            assert!(rest.contains_key("tenant"));
            assert_eq!(from_record(&rec).properties, props, "separator {sep}");
        }
    }

    #[test]
    fn kafka_cloudevents_are_delivered_as_cloudevents_application_properties() {
        let rec = SimpleRecord {
            key: None,
            value: None,
            headers: vec![
                ("ce_id".into(), Some("k-1".into())),
                ("ce_specversion".into(), Some("1.0".into())),
                ("ce_time".into(), Some("2018-04-05T03:56:24Z".into())),
                ("content-type".into(), Some("text/plain".into())),
            ],
            timestamp: 99_000,
        };
        let p = from_record(&rec).properties;
        let h = p.headers().clone().unwrap();
        assert_eq!(h.inner().get("cloudEvents:id"), Some(&long("k-1")));
        assert_eq!(h.inner().get("cloudEvents:specversion"), Some(&long("1.0")));
        assert!(!h.contains_key("content-type"));
        assert_eq!(
            p.content_type().as_ref().map(|s| s.as_str()),
            Some("text/plain")
        );
        // The event's id and time are the message's.
        assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("k-1"));
        assert_eq!(p.timestamp(), &Some(1_522_900_584));
    }

    #[test]
    fn broker_assigns_id_and_timestamp_when_missing() {
        let rec = to_record(
            "rk",
            &AMQPProperties::default(),
            Bytes::new(),
            1_700_000_123_456,
        );
        let id = std::str::from_utf8(header(&rec, "ferry.message-id").unwrap()).unwrap();
        assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
        let p = from_record(&rec).properties;
        assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some(id));
        assert_eq!(p.timestamp(), &Some(1_700_000_123));
        // A queue copy of a Kafka record without an id: its location is its id.
        let copy = SimpleRecord {
            key: None,
            value: None,
            headers: vec![("ferry.source".into(), Some("t/1/42".into()))],
            timestamp: 5_000,
        };
        let p = from_record(&copy).properties;
        assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("t/1/42"));
        assert_eq!(p.timestamp(), &Some(5));
    }
    #[test]
    fn application_headers_become_plain_record_headers_and_round_trip_exactly() {
        use amq_protocol::types::{DecimalValue, FieldArray};
        let mut nested = FieldTable::default();
        nested.insert("a".into(), AMQPValue::LongInt(1));
        let mut table = FieldTable::default();
        table.insert("x-source".into(), long("amqp"));
        table.insert("retries".into(), AMQPValue::LongLongInt(-3));
        table.insert("small".into(), AMQPValue::ShortShortUInt(7));
        table.insert("ok".into(), AMQPValue::Boolean(true));
        table.insert("at".into(), AMQPValue::Timestamp(1_522_900_584));
        table.insert("ratio".into(), AMQPValue::Double(0.25));
        table.insert("f".into(), AMQPValue::Float(1.5));
        table.insert(
            "price".into(),
            AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 1999,
            }),
        );
        table.insert(
            "tiny".into(),
            AMQPValue::DecimalValue(DecimalValue { scale: 3, value: 5 }),
        );
        table.insert("nested".into(), AMQPValue::FieldTable(nested));
        table.insert(
            "list".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![long("p"), AMQPValue::LongInt(2)])),
        );
        table.insert("nothing".into(), AMQPValue::Void);
        // Names Ferry would read back as its own stay in the typed table only.
        table.insert("amqp.content-type".into(), long("not the property"));
        table.insert("ferry.priority".into(), long("9"));
        table.insert("ce_id".into(), long("not an event id"));
        table.insert("content-type".into(), long("text/evil"));
        let props = AMQPProperties::default()
            .with_message_id("m".into())
            .with_timestamp(1)
            .with_headers(table.clone());
        let rec = to_record("rk", &props, Bytes::new(), 5);
        for (name, text) in [
            ("x-source", &b"amqp"[..]),
            ("retries", b"-3"),
            ("small", b"7"),
            ("ok", b"true"),
            ("at", b"2018-04-05T03:56:24Z"),
            ("ratio", b"0.25"),
            ("f", b"1.5"),
            ("price", b"19.99"),
            ("tiny", b"0.005"),
            ("nested", br#"{"a":1}"#),
            ("list", br#"["p",2]"#),
        ] {
            assert_eq!(header(&rec, name), Some(text), "{name}");
        }
        assert!(rec
            .headers
            .iter()
            .any(|(k, v)| k == "nothing" && v.is_none()));
        for reserved in ["ferry.priority", "ce_id", "content-type"] {
            assert_eq!(header(&rec, reserved), None, "{reserved}");
        }
        assert_eq!(header(&rec, "amqp.content-type"), None);
        // Strings and voids are stored once: not also in the typed table.
        let typed = decode_table(header(&rec, "amqp.headers").unwrap()).unwrap();
        assert!(!typed.contains_key("x-source"));
        assert!(!typed.contains_key("nothing"));
        assert!(typed.contains_key("retries") && typed.contains_key("ce_id"));
        let out = from_record(&rec).properties;
        assert_eq!(out, props);
        assert_eq!(out.content_type(), &None);
    }

    #[test]
    fn records_of_the_previous_format_read_back_the_same() {
        // Before the mapping, every entry travelled in the `amqp.headers` blob.
        let mut table = FieldTable::default();
        table.insert("x-source".into(), long("amqp"));
        table.insert("n".into(), AMQPValue::LongInt(4));
        let rec = SimpleRecord {
            key: Some("rk".into()),
            value: Some("v".into()),
            headers: vec![
                ("amqp.message-id".into(), Some("m".into())),
                ("amqp.headers".into(), Some(encode_table(&table))),
            ],
            timestamp: 7_000,
        };
        assert_eq!(from_record(&rec).properties.headers(), &Some(table));
    }

    #[test]
    fn an_empty_headers_table_round_trips() {
        let props = AMQPProperties::default()
            .with_message_id("m".into())
            .with_timestamp(1)
            .with_headers(FieldTable::default());
        let rec = to_record("rk", &props, Bytes::new(), 5);
        assert_eq!(from_record(&rec).properties, props);
    }
}
