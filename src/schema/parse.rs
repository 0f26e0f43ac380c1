//! Checking a schema text before it is registered, and the canonical form two registrations
//! of the same schema share (so they get the same id, as in Confluent's registry: whitespace
//! and key order do not make a new schema).
//!
//! AVRO and JSON Schema texts are JSON: the canonical form is the compact serialization of the
//! parsed value with object keys sorted (serde_json's map is ordered). PROTOBUF texts are kept
//! as sent, trimmed: either `.proto` source or, as confluent-kafka's Python serializer sends
//! it, a base64-encoded `FileDescriptorProto`.

use super::types::{RegistryError, SchemaType};

/// The canonical form of `text` as a schema of `schema_type`, or why it is not one.
pub fn canonical(schema_type: SchemaType, text: &str) -> Result<String, RegistryError> {
    match schema_type {
        SchemaType::Avro => {
            let value = parse_json(text, "Avro")?;
            check_avro(&value)?;
            Ok(sorted_keys(value).to_string())
        }
        SchemaType::Json => {
            let value = parse_json(text, "JSON")?;
            if !(value.is_object() || value.is_boolean()) {
                return Err(RegistryError::InvalidSchema(
                    "a JSON Schema is an object or a boolean".into(),
                ));
            }
            Ok(sorted_keys(value).to_string())
        }
        SchemaType::Protobuf => {
            let trimmed = text.trim();
            if trimmed.is_empty() {
                return Err(RegistryError::InvalidSchema("empty Protobuf schema".into()));
            }
            Ok(trimmed.to_string())
        }
    }
}

/// The value with every object's keys in sorted order, whatever map serde_json was built with.
fn sorted_keys(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sorted_keys(v)))
                    .collect(),
            )
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(sorted_keys).collect())
        }
        other => other,
    }
}

fn parse_json(text: &str, language: &str) -> Result<serde_json::Value, RegistryError> {
    serde_json::from_str(text).map_err(|e| {
        RegistryError::InvalidSchema(format!("{language} schema is not valid JSON: {e}"))
    })
}

/// The shape every Avro schema has: a type name, a union (array) or a named/complex type
/// object with a `type`.
fn check_avro(value: &serde_json::Value) -> Result<(), RegistryError> {
    match value {
        serde_json::Value::String(_) => Ok(()),
        serde_json::Value::Array(branches) => branches.iter().try_for_each(check_avro),
        serde_json::Value::Object(map) if map.contains_key("type") => Ok(()),
        _ => Err(RegistryError::InvalidSchema(
            "an Avro schema is a type name, a union (array) or an object with a \"type\"".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_and_key_order_do_not_change_the_canonical_form() {
        let a = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#;
        let b = "{ \"name\": \"R\",\n \"fields\": [ {\"type\": \"int\", \"name\": \"a\"} ], \"type\": \"record\" }";
        assert_eq!(
            canonical(SchemaType::Avro, a).unwrap(),
            canonical(SchemaType::Avro, b).unwrap()
        );
    }

    #[test]
    fn malformed_schemas_are_refused_with_42201() {
        for (t, text) in [
            (SchemaType::Avro, "{not json"),
            (SchemaType::Avro, "42"),
            (SchemaType::Json, "\"string\""),
            (SchemaType::Protobuf, "  "),
        ] {
            let err = canonical(t, text).unwrap_err();
            assert_eq!(err.code(), 42201, "{t:?} {text}");
        }
    }
}
