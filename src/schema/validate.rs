//! Validation on publish: the registry as the core's [`SchemaValidator`].
//!
//! A Kafka record passes when its value is in Confluent's wire format (magic byte 0, the
//! big-endian schema id, then the payload; Protobuf puts its message-index array first), the
//! id names a schema registered under the topic's subject (`<topic>-value`, or for record
//! name strategies `<topic>-<record>` or the record's full name), and the payload decodes:
//! Avro with apache-avro against the writer schema (every byte consumed), JSON against the
//! JSON Schema (jsonschema; [`super::json_check`] for schemas with references), Protobuf with prost-reflect as the message the
//! message-index array names (every known field's wire type must match its declared type;
//! unknown fields are allowed, as Protobuf's rules say). A Protobuf schema no descriptor pool
//! can be built for (a base64 descriptor with unknown imports) only gets the well-formed
//! wire-format check, and its rejections say so.
//!
//! Schemas are parsed once per id and cached (an id's schema never changes); which subjects
//! hold an id is looked up once per batch per id, so a delete takes effect at once.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;

use super::avro_walk::{self, AvroNames, Walked};
use super::compat::avro::{self, ParsedAvro};
use super::compat::protobuf::{self, ProtoSchema};
use super::json_check;
use super::registry::{SchemaRegistry, StoredSchema, VersionRef};
use super::types::SchemaType;
use crate::broker::schema_check::{NamedSchemaMessage, RecordRejection, SchemaValidator};

/// A schema ready to check payloads against.
// Held once per schema id behind an `Arc`, so the Avro variant's size costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Prepared {
    /// With its named types, for the allocation-free walk.
    Avro(ParsedAvro, AvroNames),
    Json(PreparedJson),
    Protobuf(ProtoSchema),
}

/// A JSON schema and, unless it has references (which need the registry's other subjects as
/// resources) or jsonschema cannot compile it, its compiled validator.
pub struct PreparedJson {
    schema: serde_json::Value,
    validator: Option<jsonschema::Validator>,
}

impl PreparedJson {
    fn new(schema: serde_json::Value, has_references: bool) -> Self {
        let validator = if has_references {
            None
        } else {
            jsonschema::validator_for(&schema).ok()
        };
        Self { schema, validator }
    }

    fn check(&self, body: &[u8]) -> Result<(), String> {
        let Some(validator) = &self.validator else {
            return json_check::check_document(&self.schema, body);
        };
        let doc: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        validator.validate(&doc).map_err(|e| {
            let at = e.instance_path().to_string();
            let at = if at.is_empty() { "$".to_string() } else { at };
            format!("{at}: {e}")
        })
    }
}

/// Parsed schemas by id.
#[derive(Default)]
pub struct PreparedCache {
    by_id: RwLock<HashMap<i32, Arc<Prepared>>>,
}

impl PreparedCache {
    fn get(
        &self,
        registry: &SchemaRegistry,
        schema: &StoredSchema,
    ) -> Result<Arc<Prepared>, String> {
        let id = schema.record.id;
        if let Some(p) = self.by_id.read().get(&id) {
            return Ok(p.clone());
        }
        let prepared = Arc::new(match schema.schema_type {
            SchemaType::Avro => {
                let parsed = avro::parse(&schema.record.schema, &schema.record.references, &|r| {
                    registry.reference_schema(r)
                })?;
                let names = AvroNames::of(&parsed.schema);
                Prepared::Avro(parsed, names)
            }
            SchemaType::Json => Prepared::Json(PreparedJson::new(
                serde_json::from_str(&schema.record.schema).map_err(|e| e.to_string())?,
                !schema.record.references.is_empty(),
            )),
            SchemaType::Protobuf => Prepared::Protobuf(protobuf::parse(
                &schema.record.schema,
                &schema.record.references,
                &|r| registry.reference_schema(r),
            )?),
        });
        self.by_id.write().insert(id, prepared.clone());
        Ok(prepared)
    }
}

/// Whether a subject holding the schema is one a producer to `topic` could have used.
fn subject_fits(topic: &str, subject: &str, record_names: &[String]) -> bool {
    match subject
        .strip_prefix(topic)
        .and_then(|rest| rest.strip_prefix('-'))
    {
        Some("key") => false,
        Some(_) => true,
        None => record_names.iter().any(|name| name == subject),
    }
}

/// The names RecordNameStrategy would give the schema: the Avro record's full name, the JSON
/// schema's `title`, or (Protobuf, where the serializer names the subject after the message
/// it writes) the full name of any top-level message of the file.
fn record_names(prepared: &Prepared) -> Vec<String> {
    match prepared {
        Prepared::Avro(p, _) => p
            .schema
            .name()
            .map(|n| n.fullname(None))
            .into_iter()
            .collect(),
        Prepared::Json(v) => v
            .schema
            .get("title")
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .into_iter()
            .collect(),
        Prepared::Protobuf(p) => {
            let package = p.file.package();
            p.file
                .message_type
                .iter()
                .map(|m| match package {
                    "" => m.name().to_string(),
                    package => format!("{package}.{}", m.name()),
                })
                .collect()
        }
    }
}

impl SchemaRegistry {
    fn check_value(
        &self,
        topic: &str,
        value: Option<&[u8]>,
        seen: &mut HashMap<i32, Result<Arc<Prepared>, (&'static str, String)>>,
    ) -> Result<(), (&'static str, String)> {
        let value = value.ok_or(("wire_format", "the record has no value".to_string()))?;
        if value.len() < 5 || value[0] != 0 {
            return Err((
                "wire_format",
                "the value is not in the schema registry wire format (magic byte 0 and a \
                 4-byte schema id)"
                    .into(),
            ));
        }
        let id = i32::from_be_bytes([value[1], value[2], value[3], value[4]]);
        let prepared = seen
            .entry(id)
            .or_insert_with(|| self.prepare_for_topic(topic, id))
            .clone()?;
        let payload = &value[5..];
        match &*prepared {
            Prepared::Avro(schema, names) => decode_avro(schema, names, payload),
            Prepared::Json(schema) => schema.check(payload),
            Prepared::Protobuf(schema) => check_protobuf(schema, payload),
        }
        .map_err(|e| {
            (
                "decode",
                format!("the value does not decode against schema {id}: {e}"),
            )
        })
    }

    fn prepare_for_topic(
        &self,
        topic: &str,
        id: i32,
    ) -> Result<Arc<Prepared>, (&'static str, String)> {
        let schema = self.schema_by_id(id).map_err(|_| {
            (
                "unknown_schema",
                format!("schema id {id} is not registered"),
            )
        })?;
        let prepared = self
            .prepared
            .get(self, &schema)
            .map_err(|e| ("unknown_schema", format!("schema {id} cannot be used: {e}")))?;
        let names = record_names(&prepared);
        let subjects = self.versions_of_id(id, false).unwrap_or_default();
        if !subjects
            .iter()
            .any(|(subject, _)| subject_fits(topic, subject, &names))
        {
            return Err((
                "wrong_subject",
                format!("schema {id} is not registered under subject '{topic}-value'"),
            ));
        }
        Ok(prepared)
    }
}

impl SchemaValidator for SchemaRegistry {
    fn check_records(&self, topic: &str, batch: &Bytes) -> Vec<RecordRejection> {
        let mut bytes = batch.clone();
        let records = match crate::log::batch::decode_next_batch(&mut bytes) {
            Ok(records) => records,
            Err(e) => {
                return vec![RecordRejection {
                    batch_index: 0,
                    reason: "wire_format",
                    message: format!("the record batch cannot be read: {e}"),
                }]
            }
        };
        let mut seen = HashMap::new();
        records
            .iter()
            .enumerate()
            .filter_map(|(index, r)| {
                let value = r.record.value.as_deref();
                self.check_value(topic, value, &mut seen)
                    .err()
                    .map(|(reason, message)| RecordRejection {
                        batch_index: i32::try_from(index).unwrap_or(i32::MAX),
                        reason,
                        message,
                    })
            })
            .collect()
    }

    fn check_framed(
        &self,
        topic: &str,
        value: Option<&[u8]>,
    ) -> Result<(), (&'static str, String)> {
        self.check_value(topic, value, &mut HashMap::new())
    }

    fn check_named(&self, message: &NamedSchemaMessage<'_>) -> Result<(), (&'static str, String)> {
        let which = match message.version {
            None => VersionRef::Latest,
            Some(v) => VersionRef::parse(v).map_err(|e| ("unknown_schema", e.to_string()))?,
        };
        let found = self
            .version(message.subject, which, false)
            .map_err(|e| ("unknown_schema", e.to_string()))?;
        let prepared = self
            .prepared
            .get(self, &found.schema)
            .map_err(|e| ("unknown_schema", e))?;
        if let (Prepared::Json(_), Some(content_type)) = (&*prepared, message.content_type) {
            let essence = content_type.split(';').next().unwrap_or("").trim();
            if !(essence == "application/json" || essence.ends_with("+json")) {
                return Err((
                    "content_type",
                    format!(
                        "subject '{}' holds a JSON schema but the content type is '{content_type}'",
                        message.subject
                    ),
                ));
            }
        }
        match &*prepared {
            Prepared::Json(schema) => schema.check(message.body),
            Prepared::Avro(schema, names) => decode_avro(schema, names, message.body),
            Prepared::Protobuf(schema) => check_protobuf(schema, message.body),
        }
        .map_err(|e| {
            (
                "decode",
                format!(
                    "the body does not match subject '{}' version {}: {e}",
                    message.subject, found.version
                ),
            )
        })
    }
}

/// Whether `payload` is one whole datum of `schema`: walked without building it when the
/// schema stands alone (see [`avro_walk`]), else (references, or a type the walk leaves to
/// the decoder) decoded by apache-avro.
fn decode_avro(schema: &ParsedAvro, names: &AvroNames, payload: &[u8]) -> Result<(), String> {
    let mut reader = payload;
    if schema.referenced.is_empty() {
        match avro_walk::walk(&schema.schema, names, &mut reader) {
            Ok(()) if reader.is_empty() => return Ok(()),
            Ok(()) => return Err(format!("{} bytes left over after the datum", reader.len())),
            Err(Walked::Invalid(reason)) => return Err(reason),
            Err(Walked::Unsupported) => reader = payload,
        }
    }
    let decoded = if schema.referenced.is_empty() {
        apache_avro::from_avro_datum(&schema.schema, &mut reader, None)
    } else {
        apache_avro::from_avro_datum_schemata(
            &schema.schema,
            schema.referenced.iter().collect(),
            &mut reader,
            None,
        )
    };
    decoded.map_err(|e| e.to_string())?;
    if reader.is_empty() {
        Ok(())
    } else {
        Err(format!("{} bytes left over after the datum", reader.len()))
    }
}

fn read_varint(buf: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first().ok_or("truncated varint")?;
        *buf = rest;
        value |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(value);
        }
    }
    Err("varint longer than 10 bytes".into())
}

/// Confluent's message-index array: a zig-zag varint count, then that many zig-zag indexes
/// (a lone 0 means `[0]`, the file's first message).
fn read_message_indexes(buf: &mut &[u8]) -> Result<Vec<usize>, String> {
    let zigzag = |v: u64| (v >> 1) as i64 ^ -((v & 1) as i64);
    let count = zigzag(read_varint(buf)?);
    if !(0..=64).contains(&count) {
        return Err(format!("message-index array of length {count}"));
    }
    if count == 0 {
        return Ok(vec![0]);
    }
    (0..count)
        .map(|_| {
            let index = zigzag(read_varint(buf)?);
            usize::try_from(index).map_err(|_| format!("negative message index {index}"))
        })
        .collect()
}

/// The payload decoded as the message its index array names, when the schema has a
/// descriptor pool; else only checked to be well-formed wire format.
fn check_protobuf(schema: &ProtoSchema, payload: &[u8]) -> Result<(), String> {
    let mut buf = payload;
    let indexes = read_message_indexes(&mut buf)?;
    if schema.pool.is_none() {
        return check_wire_format(buf).map_err(|e| {
            format!("{e} (only wire format checked: the schema's imports are not all registered)")
        });
    }
    let message = schema
        .message(&indexes)
        .ok_or_else(|| format!("message index {indexes:?} names no message of the schema"))?;
    prost_reflect::DynamicMessage::decode(message.clone(), buf)
        .map(drop)
        .map_err(|e| format!("not a valid {}: {e}", message.full_name()))
}

/// A protobuf message whose every field is well formed, whatever its fields mean.
fn check_wire_format(mut buf: &[u8]) -> Result<(), String> {
    while !buf.is_empty() {
        let tag = read_varint(&mut buf)?;
        if tag >> 3 == 0 {
            return Err("field number 0".into());
        }
        let skip = match tag & 7 {
            0 => {
                read_varint(&mut buf)?;
                0
            }
            1 => 8,
            2 => usize::try_from(read_varint(&mut buf)?).map_err(|_| "length too large")?,
            5 => 4,
            other => return Err(format!("unsupported wire type {other}")),
        };
        if skip > buf.len() {
            return Err("field runs past the end of the message".into());
        }
        buf = &buf[skip..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_strategies() {
        let order = ["shop.Order".to_string()];
        assert!(subject_fits("orders", "orders-value", &[]));
        assert!(subject_fits("orders", "orders-shop.Order", &[]));
        assert!(!subject_fits("orders", "orders-key", &[]));
        assert!(subject_fits("orders", "shop.Order", &order));
        assert!(!subject_fits("orders", "payments-value", &order));
    }

    #[test]
    fn json_payloads_meet_the_whole_vocabulary() {
        // Keywords the broker's own shape checker never had: multipleOf, uniqueItems,
        // if/then/else, dependentRequired.
        let schema = serde_json::json!({
            "type": "object",
            "properties": {
                "qty": {"type": "integer", "multipleOf": 5},
                "tags": {"type": "array", "uniqueItems": true},
                "kind": {"enum": ["card", "cash"]}
            },
            "if": {"properties": {"kind": {"const": "card"}}},
            "then": {"required": ["last4"]},
            "dependentRequired": {"refund": ["reason"]}
        });
        let prepared = PreparedJson::new(schema, false);
        assert!(prepared.validator.is_some());
        assert!(prepared
            .check(br#"{"qty": 10, "tags": ["a", "b"], "kind": "cash"}"#)
            .is_ok());
        for bad in [
            &br#"{"qty": 7}"#[..],
            br#"{"tags": ["a", "a"]}"#,
            br#"{"kind": "card"}"#,
            br#"{"refund": true}"#,
            b"{not json",
        ] {
            let err = prepared.check(bad).unwrap_err();
            assert!(!err.is_empty(), "{}", String::from_utf8_lossy(bad));
        }
        // The path says where: `/qty`.
        assert!(prepared
            .check(br#"{"qty": 7}"#)
            .unwrap_err()
            .starts_with("/qty"));
    }

    #[test]
    fn json_schemas_with_references_use_the_shape_checker() {
        let prepared = PreparedJson::new(serde_json::json!({"type": "object"}), true);
        assert!(prepared.validator.is_none());
        assert!(prepared.check(br#"{"a": 1}"#).is_ok());
        assert!(prepared.check(b"[1]").is_err());
    }

    #[test]
    fn protobuf_record_names_are_the_files_messages() {
        // RecordNameStrategy: confluent-kafka's ProtobufSerializer registers under the
        // message's full name, so a validating topic must accept that subject.
        let schema = protobuf::parse(
            r#"syntax = "proto3"; package shop;
               message Order { int32 id = 1; } message Refund { string reason = 1; }"#,
            &[],
            &|_| None,
        )
        .unwrap();
        let names = record_names(&Prepared::Protobuf(schema));
        assert_eq!(names, ["shop.Order", "shop.Refund"]);
        assert!(subject_fits("orders", "shop.Refund", &names));
        assert!(!subject_fits("orders", "shop.Invoice", &names));
    }

    #[test]
    fn protobuf_wire_format_without_a_pool() {
        // field 1 varint 150, field 2 "hi".
        assert!(check_wire_format(&[0x08, 0x96, 0x01, 0x12, 0x02, b'h', b'i']).is_ok());
        assert!(check_wire_format(&[0x12, 0x05, b'h']).is_err());
        assert!(check_wire_format(&[0x0f]).is_err());
    }

    #[test]
    fn protobuf_payloads_decode_as_the_indexed_message() {
        let schema = protobuf::parse(
            r#"syntax = "proto3"; package shop;
               message Order { int32 id = 1; string note = 2; Line line = 3;
                               message Line { string sku = 1; } }
               message Refund { string reason = 1; }"#,
            &[],
            &|_| None,
        )
        .unwrap();
        // [0] then id = 150, note = "hi".
        assert!(check_protobuf(&schema, &[0x00, 0x08, 0x96, 0x01, 0x12, 0x02, b'h', b'i']).is_ok());
        // A string where the int32 id is declared: wire type 2 for a varint field.
        let err = check_protobuf(&schema, &[0x00, 0x0a, 0x02, b'h', b'i']).unwrap_err();
        assert!(err.contains("shop.Order"), "{err}");
        // Unknown fields are allowed.
        assert!(check_protobuf(&schema, &[0x00, 0x78, 0x01]).is_ok());
        // A nested message cut short inside: line = { sku: length 5, 1 byte }.
        assert!(check_protobuf(&schema, &[0x00, 0x1a, 0x03, 0x0a, 0x05, b'x']).is_err());
        // Index array [1] (count 1, index 1: zig-zag 2, 2): Refund, whose field 1 is a string.
        assert!(check_protobuf(&schema, &[0x02, 0x02, 0x08, 0x01]).is_err());
        assert!(check_protobuf(&schema, &[0x02, 0x02, 0x0a, 0x01, b'r']).is_ok());
        // [0, 0]: Order.Line.
        assert!(check_protobuf(&schema, &[0x04, 0x00, 0x00, 0x0a, 0x01, b's']).is_ok());
        // An index past the file's messages.
        assert!(check_protobuf(&schema, &[0x02, 0x04]).is_err());
    }
}
