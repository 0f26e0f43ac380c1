//! AMQP field tables at the edge: splitting a published `headers` table into record headers a
//! Kafka consumer can read (strings as themselves, typed values as their canonical text with
//! the exact AMQP value kept for AMQP consumers), tables in wire form, and tables as JSON for
//! the core (headers-exchange routing, dead letters, display).

use super::*;

/// An AMQP `headers` table split into record headers (see the module docs).
pub(super) struct Lifted {
    /// What stays in `amqp.headers` (typed values, reserved names); `None` when nothing does.
    pub(super) rest: Option<FieldTable>,
    /// Message headers to add: application headers under their own names, `ce_*`, ...,
    /// typed where the AMQP value has a type other than a string.
    pub(super) headers: Vec<(String, HeaderValue)>,
    /// The CloudEvents separator, if the message carries CloudEvents attributes.
    pub(super) separator: Option<char>,
}

/// Whether an application header name would be read back as one of Ferry's own record headers
/// (`amqp.*`, `ferry.*`, `ce_*`, `content-type`): such an entry stays in `amqp.headers` only.
pub(super) fn reserved_name(name: &str) -> bool {
    name.starts_with(PREFIX)
        || name.starts_with("ferry.")
        || name.starts_with(CE_PREFIX)
        || name == CONTENT_TYPE_HEADER
}

/// Splits `table` into record headers a Kafka consumer can read: a long-string entry moves to
/// a record header of its name (UTF-8 bytes), a void one to a null-valued record header, and
/// any other type is copied as its canonical text while the typed value stays in the returned
/// table, where it wins at delivery. Each value is encoded once: strings are never also put in
/// `amqp.headers`.
pub(super) fn split_headers(table: &FieldTable) -> Lifted {
    let ce_with = |sep: char| {
        table.inner().keys().any(|k| {
            k.as_str()
                .strip_prefix(CE_AMQP_PREFIX)
                .and_then(|r| r.strip_prefix(sep))
                .is_some_and(|attr| !attr.is_empty())
        })
    };
    let separator = if ce_with(':') {
        Some(':')
    } else if ce_with('_') {
        Some('_')
    } else {
        None
    };
    let mut rest = FieldTable::default();
    let mut headers = Vec::with_capacity(table.inner().len());
    for (k, v) in table.inner() {
        let key = k.as_str();
        let ce_attr = separator
            .and_then(|sep| key.strip_prefix(CE_AMQP_PREFIX)?.strip_prefix(sep))
            .filter(|attr| !attr.is_empty());
        let (name, text) = match ce_attr {
            // CloudEvents attributes keep the binding's canonical strings; other types (a
            // float `cloudEvents:x`) stay typed only.
            Some(attr) => match canonical_string(v) {
                Some(text) => (format!("{CE_PREFIX}{attr}"), header_value(v, Some(text))),
                None => {
                    rest.insert(k.clone(), v.clone());
                    continue;
                }
            },
            None if reserved_name(key) => {
                rest.insert(k.clone(), v.clone());
                continue;
            }
            None => (key.to_string(), header_value(v, plain_text(v))),
        };
        headers.push((name, text));
        if !matches!(v, AMQPValue::LongString(_) | AMQPValue::Void) {
            rest.insert(k.clone(), v.clone());
        }
    }

    Lifted {
        // An empty table stays an empty table (`headers={}` round-trips as published).
        rest: (!rest.inner().is_empty() || table.inner().is_empty()).then_some(rest),
        headers,
        separator,
    }
}

/// The core's value of an AMQP header value whose canonical `text` was computed: strings and
/// byte arrays as text, void as null, anything else typed with that text.
fn header_value(v: &AMQPValue, text: Option<Bytes>) -> HeaderValue {
    let kind = match v {
        AMQPValue::LongString(_) | AMQPValue::ShortString(_) | AMQPValue::ByteArray(_) => {
            return text.map_or(HeaderValue::Null, HeaderValue::Text)
        }
        AMQPValue::Void => return HeaderValue::Null,
        AMQPValue::Boolean(_) => ValueKind::Bool,
        AMQPValue::ShortShortInt(_)
        | AMQPValue::ShortShortUInt(_)
        | AMQPValue::ShortInt(_)
        | AMQPValue::ShortUInt(_)
        | AMQPValue::LongInt(_)
        | AMQPValue::LongUInt(_)
        | AMQPValue::LongLongInt(_) => ValueKind::Int,
        AMQPValue::Float(_) | AMQPValue::Double(_) | AMQPValue::DecimalValue(_) => ValueKind::Float,
        AMQPValue::Timestamp(_) => ValueKind::Timestamp,
        AMQPValue::FieldArray(_) | AMQPValue::FieldTable(_) => ValueKind::Json,
    };
    match text {
        Some(text) => HeaderValue::typed(kind, text),
        None => HeaderValue::Null,
    }
}

/// A header value as the text of a record header: the canonical string where the CloudEvents
/// type system has one, shortest round-trip decimals for floats, the exact decimal for an AMQP
/// decimal, JSON for tables and arrays; `None` (a null record header) for void.
pub(super) fn plain_text(v: &AMQPValue) -> Option<Bytes> {
    if let Some(text) = canonical_string(v) {
        return Some(text);
    }

    let text = match v {
        AMQPValue::Void => return None,
        AMQPValue::Float(f) => f.to_string(),
        AMQPValue::Double(f) => f.to_string(),
        AMQPValue::DecimalValue(d) => {
            let digits = format!("{:0>width$}", d.value, width = usize::from(d.scale) + 1);
            let (int, frac) = digits.split_at(digits.len() - usize::from(d.scale));
            if frac.is_empty() {
                int.to_string()
            } else {
                format!("{int}.{frac}")
            }
        }
        other => value_to_json(other).to_string(),
    };
    Some(text.into())
}

/// The canonical string form of a header value (the CloudEvents type system's), or `None` for
/// types without one (floats, decimals, tables, arrays, void).
pub(super) fn canonical_string(v: &AMQPValue) -> Option<Bytes> {
    let s = match v {
        AMQPValue::LongString(s) => return Some(Bytes::copy_from_slice(s.as_bytes())),
        AMQPValue::ShortString(s) => return Some(Bytes::copy_from_slice(s.as_str().as_bytes())),
        AMQPValue::ByteArray(b) => return Some(Bytes::copy_from_slice(b.as_slice())),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(i) => i.to_string(),
        AMQPValue::ShortShortUInt(i) => i.to_string(),
        AMQPValue::ShortInt(i) => i.to_string(),
        AMQPValue::ShortUInt(i) => i.to_string(),
        AMQPValue::LongInt(i) => i.to_string(),
        AMQPValue::LongUInt(i) => i.to_string(),
        AMQPValue::LongLongInt(i) => i.to_string(),
        AMQPValue::Timestamp(t) => {
            event::format_rfc3339_secs(i64::try_from(*t).unwrap_or(i64::MAX))
        }
        _ => return None,
    };
    Some(s.into())
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

pub(super) fn float(f: f64) -> Value {
    Number::from_f64(f)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

pub(super) fn value_to_json(v: &AMQPValue) -> Value {
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
