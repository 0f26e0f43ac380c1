//! Avro: schemas parsed by apache-avro (the Apache project's Rust implementation), and
//! compatibility decided by its schema-resolution checker, the specification's own rules
//! (defaults for added fields, numeric promotion, enum symbols, unions, aliases).

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::Schema;

use super::Resolve;
use crate::meta::SchemaReference;

/// A parsed schema with the named types its references bring in.
pub struct ParsedAvro {
    pub schema: Schema,
    pub referenced: Vec<Schema>,
}

/// Parses `text`, resolving named types through its references (each a registered schema).
pub fn parse(
    text: &str,
    references: &[SchemaReference],
    resolve: &Resolve<'_>,
) -> Result<ParsedAvro, String> {
    if references.is_empty() {
        let schema = Schema::parse_str(text).map_err(|e| format!("invalid Avro schema: {e}"))?;
        return Ok(ParsedAvro {
            schema,
            referenced: Vec::new(),
        });
    }
    let texts: Vec<String> = super::referenced_schemas(references, resolve)?
        .into_iter()
        .map(|(_, text)| text)
        .collect();
    let (schema, referenced) = Schema::parse_str_with_list(text, &texts)
        .map_err(|e| format!("invalid Avro schema: {e}"))?;
    Ok(ParsedAvro { schema, referenced })
}

/// Why `reader` cannot read what `writer` wrote.
pub fn can_read(reader: &ParsedAvro, writer: &ParsedAvro) -> Vec<String> {
    match SchemaCompatibility::can_read(&writer.schema, &reader.schema) {
        Ok(()) => Vec::new(),
        Err(e) => vec![e.to_string()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> ParsedAvro {
        parse(text, &[], &|_| None).unwrap()
    }

    const V1: &str =
        r#"{"type":"record","name":"User","fields":[{"name":"name","type":"string"}]}"#;

    // The registry's documented Avro cases (Confluent "Schema Evolution and Compatibility").
    #[test]
    fn adding_a_field_with_a_default_is_backward_compatible() {
        let v2 = r#"{"type":"record","name":"User","fields":[{"name":"name","type":"string"},
            {"name":"favorite_color","type":"string","default":"green"}]}"#;
        assert!(can_read(&parsed(v2), &parsed(V1)).is_empty());
    }

    #[test]
    fn adding_a_field_without_a_default_is_not() {
        let v2 = r#"{"type":"record","name":"User","fields":[{"name":"name","type":"string"},
            {"name":"age","type":"int"}]}"#;
        assert!(!can_read(&parsed(v2), &parsed(V1)).is_empty());
        // ...but the old schema reads the new data (FORWARD): the extra field is skipped.
        assert!(can_read(&parsed(V1), &parsed(v2)).is_empty());
    }

    #[test]
    fn int_promotes_to_long_but_not_back() {
        let int = r#"{"type":"record","name":"R","fields":[{"name":"n","type":"int"}]}"#;
        let long = r#"{"type":"record","name":"R","fields":[{"name":"n","type":"long"}]}"#;
        assert!(can_read(&parsed(long), &parsed(int)).is_empty());
        assert!(!can_read(&parsed(int), &parsed(long)).is_empty());
    }

    #[test]
    fn a_record_without_fields_is_invalid() {
        assert!(parse(r#"{"type":"record","name":"R"}"#, &[], &|_| None).is_err());
    }
}
