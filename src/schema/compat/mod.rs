//! Compatibility between a new schema and an earlier one, in the directions a level asks for,
//! and the full parse a schema must pass before it is registered.
//!
//! BACKWARD means the new schema can read what the old one wrote; FORWARD the reverse; FULL
//! both. Each language answers one question, "can `reader` read what `writer` wrote?":
//! [`avro`] through apache-avro's own schema-resolution checker, [`json`] with the rules
//! Confluent's registry documents for JSON Schema (written here: no crate has them), and
//! [`protobuf`] by compiling `.proto` source or descriptors (protox) and comparing the resolved
//! `FileDescriptorProto`s field number by field number at the wire
//! level. A change of schema type is never compatible.

pub mod avro;
pub mod json;
pub mod protobuf;

use super::types::{Compatibility, RegistryError, SchemaType};
use crate::meta::SchemaReference;

/// A schema as the checker sees it: its type, text and references.
pub type Checked<'a> = (SchemaType, &'a str, &'a [SchemaReference]);

/// A referenced schema: its text and its own references.
pub type ResolvedReference = (String, Vec<SchemaReference>);

/// The schema a reference names, if it exists.
pub type Resolve<'a> = dyn Fn(&SchemaReference) -> Option<ResolvedReference> + 'a;

/// Most schemas one schema may pull in through references, directly and transitively.
const MAX_REFERENCED_SCHEMAS: usize = 1024;

/// Every schema `references` names, and every schema those name in turn (as Confluent's
/// registry resolves them), each once: the reference that first named it and its text.
/// Fails on a reference that does not resolve.
pub fn referenced_schemas(
    references: &[SchemaReference],
    resolve: &Resolve<'_>,
) -> Result<Vec<(SchemaReference, String)>, String> {
    walk_references(references, resolve, true)
}

/// [`referenced_schemas`] without failing on a reference that does not resolve: it and what
/// it would have named are left out, the rest is kept (a Protobuf compile then names the one
/// import that is missing). Fails only past the size bound.
pub fn resolvable_schemas(
    references: &[SchemaReference],
    resolve: &Resolve<'_>,
) -> Result<Vec<(SchemaReference, String)>, String> {
    walk_references(references, resolve, false)
}

fn walk_references(
    references: &[SchemaReference],
    resolve: &Resolve<'_>,
    strict: bool,
) -> Result<Vec<(SchemaReference, String)>, String> {
    let mut out: Vec<(SchemaReference, String)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut pending: Vec<SchemaReference> = references.iter().rev().cloned().collect();
    while let Some(reference) = pending.pop() {
        if !seen.insert((reference.subject.clone(), reference.version)) {
            continue;
        }
        if out.len() >= MAX_REFERENCED_SCHEMAS {
            return Err(format!(
                "more than {MAX_REFERENCED_SCHEMAS} schemas referenced, directly or not"
            ));
        }
        let Some((text, nested)) = resolve(&reference) else {
            if !strict {
                continue;
            }
            return Err(format!(
                "reference '{}' (subject '{}' version {}) cannot be resolved",
                reference.name, reference.subject, reference.version
            ));
        };
        pending.extend(nested.into_iter().rev());
        out.push((reference, text));
    }
    Ok(out)
}

/// Parses `schema` fully (with its references), or says why it is not a valid schema.
pub fn validate(schema: Checked<'_>, resolve: &Resolve<'_>) -> Result<(), RegistryError> {
    let (schema_type, text, references) = schema;
    let result = match schema_type {
        SchemaType::Avro => avro::parse(text, references, resolve).map(drop),
        SchemaType::Json => json::parse(text).map(drop),
        SchemaType::Protobuf => protobuf::parse(text, references, resolve).map(drop),
    };
    result.map_err(RegistryError::InvalidSchema)
}

/// What keeps `new` from following `old` under `level` (empty: nothing).
pub fn check(
    level: Compatibility,
    new: Checked<'_>,
    old: Checked<'_>,
    resolve: &Resolve<'_>,
) -> Vec<String> {
    if level == Compatibility::None {
        return Vec::new();
    }
    if new.0 != old.0 {
        return vec![format!(
            "the schema type changed from {} to {}",
            old.0.as_str(),
            new.0.as_str()
        )];
    }
    let mut problems = Vec::new();
    if level.backward() {
        problems.extend(
            can_read(new, old, resolve).into_iter().map(|p| {
                format!("BACKWARD: the new schema cannot read data the old one wrote: {p}")
            }),
        );
    }
    if level.forward() {
        problems.extend(
            can_read(old, new, resolve).into_iter().map(|p| {
                format!("FORWARD: the old schema cannot read data the new one writes: {p}")
            }),
        );
    }
    problems
}

/// Why `reader` cannot read everything `writer` can write (empty: it can).
fn can_read(reader: Checked<'_>, writer: Checked<'_>, resolve: &Resolve<'_>) -> Vec<String> {
    match reader.0 {
        SchemaType::Avro => {
            let parsed = (
                avro::parse(reader.1, reader.2, resolve),
                avro::parse(writer.1, writer.2, resolve),
            );
            match parsed {
                (Ok(r), Ok(w)) => avro::can_read(&r, &w),
                (Err(e), _) | (_, Err(e)) => vec![e],
            }
        }
        SchemaType::Json => match (json::parse(reader.1), json::parse(writer.1)) {
            (Ok(r), Ok(w)) => json::can_read(&r, &w),
            (Err(e), _) | (_, Err(e)) => vec![e],
        },
        SchemaType::Protobuf => {
            let parsed = (
                protobuf::parse(reader.1, reader.2, resolve),
                protobuf::parse(writer.1, writer.2, resolve),
            );
            match parsed {
                (Ok(r), Ok(w)) => protobuf::can_read(&r, &w),
                (Err(e), _) | (_, Err(e)) => vec![e],
            }
        }
    }
}
