//! Fitting stored data into AMQP's bounded wire types, so no record can break a delivery.
//!
//! A record in a topic can come from any Kafka producer, and Kafka bounds nothing AMQP bounds:
//! its key, header names and header values may be any length. AMQP 0-9-1 carries the routing
//! key, the exchange name, the string properties (content-type, message-id, ...) and the names
//! of header-table entries as *short strings* (at most 255 bytes), and a content header must fit
//! in one frame of the negotiated `frame_max`. Rather than panic, close the connection, or drop
//! the message, the delivery moves what does not fit somewhere legal, by these rules:
//!
//! | does not fit                                   | delivered as                           |
//! |------------------------------------------------|----------------------------------------|
//! | routing key, exchange, or a string property    | the field left empty/absent; the full  |
//! | (content-type, message-id, expiration, ...)    | value in the long-string header        |
//! | longer than 255 bytes                          | `x-ferry-<field>` (`x-ferry-routing-key`, `x-ferry-content-type`, ...) |
//! | a header name longer than 255 bytes            | an entry `{name, value}` (long strings; value void for a null) in the array header `x-ferry-long-headers` |
//! | a property set (content header) larger than    | the largest `headers` entries dropped until it fits; their |
//! | `frame_max`                                    | names listed in `x-ferry-dropped-headers` (array of long strings) |
//!
//! Nothing is lost from the log: the record keeps every header, so a Kafka consumer (or a
//! consumer with a larger `frame_max`) still reads them; a dropped header is counted in
//! `ferry_amqp_headers_dropped_total` and logged at WARN.

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};

use super::convert::encode_table;

/// The longest value an AMQP short string holds.
pub const SHORT_STRING_MAX: usize = 255;
/// Prefix of the header that carries a field's value too long for its short string.
pub const OVERLONG_PREFIX: &str = "x-ferry-";
/// The array of `{name, value}` tables for record headers whose names exceed a short string.
pub const LONG_HEADERS: &str = "x-ferry-long-headers";
/// The names of the headers left out so that the content header fits `frame_max`.
pub const DROPPED_HEADERS: &str = "x-ferry-dropped-headers";
/// Bytes of header table kept free for the [`DROPPED_HEADERS`] list.
const DROPPED_LIST_ROOM: usize = 1024;

/// Broker-made headers collected while a record is read back, added to the table last (they
/// win over a publisher's entries of the same name).
#[derive(Default)]
pub struct Overflow {
    headers: Vec<(ShortString, AMQPValue)>,
    long_named: Vec<AMQPValue>,
}

impl Overflow {
    /// `value` as a short string, or `None` after keeping it in `x-ferry-<field>`.
    pub fn short(&mut self, field: &str, value: String) -> Option<ShortString> {
        if value.len() <= SHORT_STRING_MAX {
            return ShortString::try_new(value).ok();
        }
        let name = format!("{OVERLONG_PREFIX}{field}");
        // Field names are ours and short; a longer one would be a bug, never a panic.
        let name = ShortString::try_new(name).ok()?;
        self.headers.push((
            name,
            AMQPValue::LongString(LongString::from(value.into_bytes())),
        ));
        None
    }

    /// A header-table name: itself when it fits, else `None` after keeping the entry in
    /// [`LONG_HEADERS`].
    pub fn header_name(&mut self, name: &str, value: &AMQPValue) -> Option<ShortString> {
        if name.len() <= SHORT_STRING_MAX {
            return ShortString::try_new(name).ok();
        }
        let mut entry = FieldTable::default();
        entry.insert(
            "name".into(),
            AMQPValue::LongString(LongString::from(name.as_bytes().to_vec())),
        );
        entry.insert("value".into(), value.clone());
        self.long_named.push(AMQPValue::FieldTable(entry));
        None
    }

    pub fn is_empty(&self) -> bool {
        self.headers.is_empty() && self.long_named.is_empty()
    }

    /// Adds the collected headers to `table`.
    pub fn merge_into(self, table: &mut FieldTable) {
        for (k, v) in self.headers {
            table.insert(k, v);
        }
        if !self.long_named.is_empty() {
            table.insert(
                LONG_HEADERS.into(),
                AMQPValue::FieldArray(self.long_named.into()),
            );
        }
    }
}

/// Properties whose content header (of `encoded_len` bytes, frame included) exceeds
/// `frame_max`, made to fit: the largest `headers` entries are dropped first, and their names
/// listed in [`DROPPED_HEADERS`]. The other properties are short strings and numbers (under
/// 2.5 KiB together), so they always fit AMQP's smallest `frame_max` (4096).
pub fn fit_frame(props: AMQPProperties, encoded_len: usize, frame_max: usize) -> AMQPProperties {
    let Some(table) = props.headers().clone() else {
        return props;
    };
    let excess = encoded_len.saturating_sub(frame_max) + DROPPED_LIST_ROOM;
    let mut by_size: Vec<(usize, &ShortString)> = table
        .inner()
        .iter()
        .map(|(k, v)| {
            let mut one = FieldTable::default();
            one.insert(k.clone(), v.clone());
            (encode_table(&one).len(), k)
        })
        .collect();
    by_size.sort_by_key(|(size, _)| std::cmp::Reverse(*size));
    let mut freed = 0;
    let mut dropped = Vec::new();
    for (size, name) in by_size {
        if freed >= excess {
            break;
        }
        freed += size;
        dropped.push(name.clone());
    }
    let mut kept = FieldTable::default();
    for (k, v) in table.inner() {
        if !dropped.contains(k) {
            kept.insert(k.clone(), v.clone());
        }
    }
    metrics::counter!("ferry_amqp_headers_dropped_total").increment(dropped.len() as u64);
    tracing::warn!(
        dropped = dropped.len(),
        frame_max,
        "a message's headers exceed the consumer's frame_max; delivering it without its largest headers"
    );
    // The list itself stays within its room; names are short strings (5 bytes of framing each).
    let mut listed = Vec::new();
    let mut room = DROPPED_LIST_ROOM - 64;
    for name in dropped {
        let cost = name.as_str().len() + 5;
        if cost > room {
            break;
        }
        room -= cost;
        listed.push(AMQPValue::LongString(LongString::from(
            name.as_str().as_bytes().to_vec(),
        )));
    }
    kept.insert(DROPPED_HEADERS.into(), AMQPValue::FieldArray(listed.into()));
    props.with_headers(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overlong_field_moves_to_its_header() {
        let mut o = Overflow::default();
        assert_eq!(
            o.short("routing-key", "k".repeat(255))
                .map(|s| s.as_str().len()),
            Some(255)
        );
        assert!(o.is_empty());
        assert_eq!(o.short("routing-key", "k".repeat(256)), None);
        let mut t = FieldTable::default();
        o.merge_into(&mut t);
        assert_eq!(
            t.inner().get("x-ferry-routing-key"),
            Some(&AMQPValue::LongString("k".repeat(256).into()))
        );
    }

    #[test]
    fn a_content_header_over_frame_max_drops_its_largest_headers() {
        let mut table = FieldTable::default();
        table.insert(
            "big".into(),
            AMQPValue::LongString("x".repeat(10_000).into()),
        );
        table.insert("small".into(), AMQPValue::LongString("keep".into()));
        let props = AMQPProperties::default().with_headers(table);
        let fitted = fit_frame(props, 10_100, 4096);
        let h = fitted.headers().clone().unwrap();
        assert!(!h.contains_key("big"));
        assert_eq!(
            h.inner().get("small"),
            Some(&AMQPValue::LongString("keep".into()))
        );
        assert_eq!(
            h.inner().get(DROPPED_HEADERS),
            Some(&AMQPValue::FieldArray(
                vec![AMQPValue::LongString("big".into())].into()
            ))
        );
        assert!(encode_table(&h).len() < 4096 - 100);
    }
}
