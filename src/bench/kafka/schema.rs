//! `--schema avro`: the cost of validation on publish (issue 18). Each case's topic is created
//! with `ferry.schema.validation=true`, an Avro schema is registered under `<topic>-value` in
//! the schema registry (`--registry`), and every record value is an order in
//! Confluent's wire format (magic byte 0, the 4-byte schema id, the Avro body) padded to the
//! case's size, so the broker decodes a realistic record per record: a fixed stamp, a long, a
//! string, a double, an enum, an array of item records and a padding string.
//!
//! The e2e phase stamps its send time into the Avro `stamp` field (an 8-byte `fixed`, right
//! after the 5-byte header), so stamped values still decode. Values are built here once per
//! case and re-sent, as the plain bench re-sends its filler.

use super::*;

/// The schema every validated record follows.
pub(super) const ORDER_SCHEMA: &str = r#"{"type":"record","name":"BenchOrder","namespace":"ferry.bench","fields":[
{"name":"stamp","type":{"type":"fixed","name":"Stamp","size":8}},
{"name":"id","type":"long"},
{"name":"customer","type":"string"},
{"name":"amount","type":"double"},
{"name":"currency","type":{"type":"enum","name":"Currency","symbols":["EUR","USD","GBP"]}},
{"name":"items","type":{"type":"array","items":{"type":"record","name":"Item","fields":[
 {"name":"sku","type":"string"},{"name":"quantity","type":"int"},{"name":"price","type":"double"}]}}},
{"name":"note","type":"string"}]}"#;

/// Where the e2e stamp goes in a framed value: after the magic byte and the schema id.
pub(super) const FRAMED_STAMP_AT: usize = 5;
/// Most items per order.
const MAX_ITEMS: usize = 10;

/// The registry the bench registers its schema with.
#[derive(Debug, Clone)]
pub struct SchemaBench {
    /// `http://host:port` of the schema registry (Ferry's HTTP listener).
    pub registry: String,
    pub user: String,
    pub password: String,
}

/// The value every record of a case carries, and where the e2e phase stamps it.
#[derive(Clone)]
pub(super) struct CaseValue {
    pub(super) template: Bytes,
    pub(super) stamp_at: usize,
}

impl CaseValue {
    pub(super) fn plain(size: usize) -> Self {
        Self {
            template: Bytes::from(filler(size)),
            stamp_at: 0,
        }
    }
}

fn put_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        let b = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    put_long(out, s.len() as i64);
    out.extend_from_slice(s);
}

/// The Avro body before the `note` field, with `items` items.
fn order_head(items: usize) -> Vec<u8> {
    let mut out = vec![0u8; 8]; // stamp
    put_long(&mut out, 1_234_567_890);
    put_str(&mut out, b"customer-000042");
    out.extend_from_slice(&129.95f64.to_le_bytes());
    put_long(&mut out, 1); // USD
    if items > 0 {
        put_long(&mut out, items as i64);
        for i in 0..items {
            put_str(&mut out, format!("sku-{i:06}").as_bytes());
            put_long(&mut out, (i % 5 + 1) as i64);
            out.extend_from_slice(&(9.99 + i as f64).to_le_bytes());
        }
    }
    put_long(&mut out, 0); // end of the array
    out
}

/// A framed order of exactly `size` bytes under schema `id`; `None` when `size` is too small
/// for an order with no items.
pub(super) fn framed_order(id: u32, size: usize) -> Option<Vec<u8>> {
    let body_size = size.checked_sub(FRAMED_STAMP_AT)?;
    let head = (0..=MAX_ITEMS)
        .rev()
        .map(order_head)
        .find(|h| h.len() < body_size)?;
    // The note fills the rest: its length prefix plus its bytes.
    let rest = body_size - head.len();
    let note_len = (0..=rest).rev().find(|n| {
        let mut prefix = Vec::new();
        put_long(&mut prefix, *n as i64);
        prefix.len() + n == rest
    })?;
    let mut out = Vec::with_capacity(size);
    out.push(0);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&head);
    // Avro strings are UTF-8: ASCII letters, not the plain bench's byte filler.
    let note: Vec<u8> = (0..note_len).map(|i| b'a' + (i % 26) as u8).collect();
    put_str(&mut out, &note);
    Some(out)
}

/// The smallest `--sizes` value `--schema avro` can fill.
pub(super) fn smallest_order() -> usize {
    (1..4096)
        .find(|s| framed_order(0, *s).is_some())
        .unwrap_or(4096)
}

/// Registers [`ORDER_SCHEMA`] under `<topic>-value`; returns its id.
pub(super) async fn register(schema: &SchemaBench, topic: &str) -> Result<u32, BenchError> {
    let client = crate::client::http::Client::new(&schema.registry, &schema.user, &schema.password)
        .map_err(|e| BenchError::Invalid(format!("--registry: {e}")))?;
    let path = format!(
        "/subjects/{}/versions",
        crate::client::http::segment(&format!("{topic}-value"))
    );
    let body = serde_json::json!({ "schema": ORDER_SCHEMA });
    let (status, answer) = client
        .request("POST", &path, Some(&body))
        .await
        .map_err(|e| BenchError::Failed(format!("schema registry {}: {e}", schema.registry)))?;
    answer
        .get("id")
        .and_then(serde_json::Value::as_u64)
        .and_then(|id| u32::try_from(id).ok())
        .filter(|_| (200..300).contains(&status))
        .ok_or_else(|| {
            BenchError::Failed(format!(
                "schema registry {} refused the bench schema: {status} {answer}",
                schema.registry
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framed_orders_decode_against_the_schema_at_every_size() {
        let schema = apache_avro::Schema::parse_str(ORDER_SCHEMA).unwrap();
        for size in [smallest_order(), 100, 200, 1024, 1025, 4096, 65536] {
            let value = framed_order(7, size).unwrap();
            assert_eq!(value.len(), size);
            assert_eq!(&value[..5], &[0, 0, 0, 0, 7]);
            let mut body = &value[5..];
            apache_avro::from_avro_datum(&schema, &mut body, None).unwrap();
            assert!(body.is_empty(), "{size}: {} bytes left", body.len());
        }
        assert!(framed_order(7, smallest_order() - 1).is_none());
        assert!(smallest_order() < 64);
    }
}
