//! Protobuf: compared at the wire level, field number by field number, over resolved
//! `FileDescriptorProto`s. A schema arrives either as the base64 of a serialized
//! `FileDescriptorProto` (confluent-kafka's Python serializer) or as `.proto` source text (the
//! Java serializer, the REST API docs, curl users); both are compiled by protox into one
//! descriptor pool, so every named field type is resolved to message or enum (its wire group).
//! Imports are found among the schema's references (by reference name, as the registry's
//! clients import them) and in protox's bundled `google/protobuf/*.proto` well-known types.
//!
//! Refused, as Confluent's registry documents: a changed package, a removed message, a field
//! whose number now carries a wire-incompatible type (types within one wire group, such as
//! `int32`/`int64`/`bool`/enum or `string`/`bytes`, may change into each other), a required
//! field added or removed, and a field moved out of or into a oneof. Added fields, renamed
//! fields, new messages and new enum values are fine.
//!
//! Source text must compile (else the schema is invalid, 42201). A base64 descriptor whose
//! imports cannot all be found is still accepted, as before: its field types are already
//! resolved by the serializer's protoc, so it is compared as sent, and payloads written with
//! it are only checked to be well-formed wire format (no pool to decode them with).

use std::collections::{BTreeMap, HashMap};

use prost::Message;
use prost_reflect::{DescriptorPool, MessageDescriptor};
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto};
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};

use super::Resolve;
use crate::meta::SchemaReference;

/// The name a `.proto` source schema compiles under when it does not name itself; chosen
/// so that it cannot collide with an import path a reference uses.
const SOURCE_FILE_NAME: &str = "ferry-registered-schema.proto";

/// A Protobuf schema as registered, compiled.
pub struct ProtoSchema {
    /// The schema's own file, with field types resolved when `pool` is built.
    pub file: Box<FileDescriptorProto>,
    /// The file and everything it imports, for decoding payloads; `None` for a base64
    /// descriptor whose imports are not all known.
    pub pool: Option<DescriptorPool>,
}

impl ProtoSchema {
    /// The message Confluent's message-index path names: the first index picks a top-level
    /// message of the file, each further one a nested message of the previous.
    pub fn message(&self, indexes: &[usize]) -> Option<MessageDescriptor> {
        let pool = self.pool.as_ref()?;
        let file = pool.get_file_by_name(self.file.name())?;
        let (&first, rest) = indexes.split_first()?;
        let mut message = file.messages().nth(first)?;
        for &i in rest {
            let child = message.child_messages().nth(i)?;
            message = child;
        }
        Some(message)
    }
}

/// A serialized `FileDescriptorProto` in base64, if `text` is one.
fn as_descriptor(text: &str) -> Option<FileDescriptorProto> {
    let bytes = crate::util::base64_decode(text.trim())?;
    FileDescriptorProto::decode(bytes.as_slice()).ok()
}

/// Registered schema texts by the import name they answer to.
struct RegisteredFiles {
    files: HashMap<String, String>,
}

impl FileResolver for RegisteredFiles {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        let text = self
            .files
            .get(name)
            .ok_or_else(|| protox::Error::file_not_found(name))?;
        match as_descriptor(text) {
            Some(mut descriptor) => {
                // Imports name the file by the reference's name, whatever protoc called it.
                descriptor.name = Some(name.to_string());
                Ok(File::from_file_descriptor_proto(descriptor))
            }
            None => File::from_source(name, text),
        }
    }
}

/// Compiles `text` (with the schemas its `references` name) into a [`ProtoSchema`], or says
/// why it is not a valid Protobuf schema.
pub fn parse(
    text: &str,
    references: &[SchemaReference],
    resolve: &Resolve<'_>,
) -> Result<ProtoSchema, String> {
    let descriptor = as_descriptor(text);
    let name = match &descriptor {
        Some(d) if !d.name().is_empty() => d.name().to_string(),
        _ => SOURCE_FILE_NAME.to_string(),
    };
    // Every schema the references name, transitively: an import of an imported file answers
    // to the name its own referrer gave it. One that does not resolve leaves its import
    // unanswered, and compiling says which.
    let mut files: HashMap<String, String> = super::resolvable_schemas(references, resolve)?
        .into_iter()
        .map(|(reference, text)| (reference.name, text))
        .collect();
    files.insert(name.clone(), text.trim().to_string());
    let mut resolver = ChainFileResolver::new();
    resolver.add(RegisteredFiles { files });
    resolver.add(GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(true);
    let compiled = compiler
        .open_file(&name)
        .map(|c| c.descriptor_pool())
        .map_err(|e| e.to_string());
    match (compiled, descriptor) {
        (Ok(pool), _) => {
            let file = pool
                .get_file_by_name(&name)
                .map(|f| f.file_descriptor_proto().clone())
                .ok_or_else(|| format!("{name} missing after compiling it"))?;
            Ok(ProtoSchema {
                file: Box::new(file),
                pool: Some(pool),
            })
        }
        (Err(_), Some(descriptor)) => Ok(ProtoSchema {
            file: Box::new(descriptor),
            pool: None,
        }),
        (Err(e), None) => Err(format!("not a valid .proto schema: {e}")),
    }
}

/// Why `reader` cannot read what `writer` wrote.
pub fn can_read(reader: &ProtoSchema, writer: &ProtoSchema) -> Vec<String> {
    let (r, w) = (&reader.file, &writer.file);
    let mut out = Vec::new();
    if r.package != w.package {
        out.push(format!(
            "package changed from '{}' to '{}'",
            w.package(),
            r.package()
        ));
    }
    let reader_messages = messages(r);
    for (name, writer_message) in messages(w) {
        match reader_messages.get(&name) {
            None => out.push(format!("message {name} removed")),
            Some(reader_message) => {
                compare_message(&name, reader_message, writer_message, &mut out)
            }
        }
    }
    out
}

/// Every message of the file, nested ones included, by full name.
fn messages(file: &FileDescriptorProto) -> BTreeMap<String, &DescriptorProto> {
    fn walk<'a>(
        prefix: &str,
        list: &'a [DescriptorProto],
        out: &mut BTreeMap<String, &'a DescriptorProto>,
    ) {
        for m in list {
            let name = format!("{prefix}.{}", m.name());
            walk(&name, &m.nested_type, out);
            out.insert(name, m);
        }
    }
    let mut out = BTreeMap::new();
    let prefix = if file.package().is_empty() {
        String::new()
    } else {
        format!(".{}", file.package())
    };
    walk(&prefix, &file.message_type, &mut out);
    out
}

/// Types that read each other's wire bytes.
fn wire_group(field: &FieldDescriptorProto) -> String {
    match field.r#type() {
        Type::Int32 | Type::Uint32 | Type::Int64 | Type::Uint64 | Type::Bool | Type::Enum => {
            "varint".into()
        }
        Type::Sint32 | Type::Sint64 => "zigzag".into(),
        Type::Fixed32 | Type::Sfixed32 => "fixed32".into(),
        Type::Fixed64 | Type::Sfixed64 => "fixed64".into(),
        Type::String | Type::Bytes => "length-delimited".into(),
        Type::Float => "float".into(),
        Type::Double => "double".into(),
        Type::Message | Type::Group => format!("message {}", field.type_name()),
    }
}

fn oneof_name<'a>(message: &'a DescriptorProto, field: &FieldDescriptorProto) -> Option<&'a str> {
    let index = usize::try_from(field.oneof_index?).ok()?;
    // proto3 `optional` is a synthetic oneof, not a real one.
    if field.proto3_optional() {
        return None;
    }
    message.oneof_decl.get(index).map(|o| o.name())
}

fn compare_message(
    name: &str,
    reader: &DescriptorProto,
    writer: &DescriptorProto,
    out: &mut Vec<String>,
) {
    for wf in &writer.field {
        let Some(rf) = reader.field.iter().find(|f| f.number == wf.number) else {
            if wf.label() == Label::Required {
                out.push(format!(
                    "{name}: required field {} ({}) removed",
                    wf.name(),
                    wf.number()
                ));
            }
            continue;
        };
        let field = format!("{name}: field {} ({})", rf.name(), rf.number());
        if wire_group(rf) != wire_group(wf) {
            out.push(format!(
                "{field} changed type from {} to {}",
                wire_group(wf),
                wire_group(rf)
            ));
        }
        if rf.label() == Label::Required && wf.label() != Label::Required {
            out.push(format!("{field} became required"));
        }
        let repeated = |f: &FieldDescriptorProto| f.label() == Label::Repeated;
        if repeated(rf) != repeated(wf)
            && wire_group(rf) != "length-delimited"
            && !wire_group(rf).starts_with("message")
        {
            out.push(format!("{field} changed between repeated and singular"));
        }
        if oneof_name(reader, rf) != oneof_name(writer, wf) {
            out.push(format!("{field} moved into or out of a oneof"));
        }
    }
    for rf in &reader.field {
        let added = !writer.field.iter().any(|f| f.number == rf.number);
        if added && rf.label() == Label::Required {
            out.push(format!(
                "{name}: required field {} ({}) added",
                rf.name(),
                rf.number()
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, number: i32, kind: Type) -> FieldDescriptorProto {
        FieldDescriptorProto {
            name: Some(name.into()),
            number: Some(number),
            r#type: Some(kind as i32),
            label: Some(Label::Optional as i32),
            ..Default::default()
        }
    }

    fn descriptor(fields: Vec<FieldDescriptorProto>) -> FileDescriptorProto {
        FileDescriptorProto {
            name: Some("order.proto".into()),
            package: Some("shop".into()),
            syntax: Some("proto3".into()),
            message_type: vec![DescriptorProto {
                name: Some("Order".into()),
                field: fields,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn file(fields: Vec<FieldDescriptorProto>) -> ProtoSchema {
        ProtoSchema {
            file: Box::new(descriptor(fields)),
            pool: None,
        }
    }

    fn no_references(_: &SchemaReference) -> Option<super::super::ResolvedReference> {
        None
    }

    fn source(text: &str) -> ProtoSchema {
        match parse(text, &[], &no_references) {
            Ok(schema) => schema,
            Err(e) => panic!("{text}: {e}"),
        }
    }

    /// BACKWARD: can `new` read what `old` wrote?
    fn backward(new: &str, old: &str) -> Vec<String> {
        can_read(&source(new), &source(old))
    }

    const ORDER_V1: &str = r#"
        syntax = "proto3";
        package shop;
        enum Status { NEW = 0; PAID = 1; }
        message Item { string sku = 1; int32 quantity = 2; }
        message Order {
            int64 id = 1;
            Status status = 2;
            repeated Item items = 3;
        }
    "#;

    #[test]
    fn an_unresolved_reference_leaves_the_resolved_ones_in_place() {
        let reference = |name: &str, subject: &str| SchemaReference {
            name: name.into(),
            subject: subject.into(),
            version: 1,
        };
        let references = [
            reference("money.proto", "money"),
            reference("gone.proto", "gone"),
        ];
        let resolve = |r: &SchemaReference| {
            (r.subject == "money").then(|| {
                (
                    "syntax = \"proto3\"; package shop; message Money { int64 cents = 1; }"
                        .to_string(),
                    Vec::new(),
                )
            })
        };
        let importing = |imports: &str| {
            format!(
                "syntax = \"proto3\"; package shop; {imports} \
                 message Order {{ Money total = 1; }}"
            )
        };
        // The resolved reference still answers its import although another one is missing.
        let only_money = importing("import \"money.proto\";");
        assert!(parse(&only_money, &references, &resolve).is_ok());
        // Importing the missing one is named by the compile error.
        let both = importing("import \"money.proto\"; import \"gone.proto\";");
        match parse(&both, &references, &resolve) {
            Ok(_) => panic!("compiled although gone.proto is missing"),
            Err(err) => assert!(err.contains("gone.proto"), "{err}"),
        }
    }

    #[test]
    fn adding_and_renaming_fields_is_compatible() {
        let v1 = file(vec![field("id", 1, Type::Int64)]);
        let v2 = file(vec![
            field("order_id", 1, Type::Int32),
            field("item", 2, Type::String),
        ]);
        assert!(can_read(&v2, &v1).is_empty());
        assert!(can_read(&v1, &v2).is_empty());
    }

    #[test]
    fn a_wire_incompatible_type_change_is_refused() {
        let v1 = file(vec![field("id", 1, Type::Int64)]);
        let v2 = file(vec![field("id", 1, Type::String)]);
        assert_eq!(can_read(&v2, &v1).len(), 1);
    }

    #[test]
    fn the_base64_descriptor_form_parses_and_compiles() {
        let text = crate::util::base64_encode(
            &descriptor(vec![field("id", 1, Type::Int64)]).encode_to_vec(),
        );
        let parsed = parse(&text, &[], &no_references).unwrap();
        assert!(parsed.pool.is_some());
        assert_eq!(parsed.message(&[0]).unwrap().full_name(), "shop.Order");
        assert!(parse("!!", &[], &no_references).is_err());
        assert!(parse(
            "syntax = \"proto3\"; message A { int32 x = 1 }",
            &[],
            &no_references
        )
        .is_err());
    }

    #[test]
    fn source_field_added_is_compatible() {
        let v2 = ORDER_V1.replace(
            "repeated Item items = 3;",
            "repeated Item items = 3; string note = 4;",
        );
        assert_eq!(backward(&v2, ORDER_V1), Vec::<String>::new());
        assert_eq!(backward(ORDER_V1, &v2), Vec::<String>::new());
    }

    #[test]
    fn source_field_renamed_is_compatible() {
        let v2 = ORDER_V1.replace("int64 id = 1;", "int64 order_id = 1;");
        assert_eq!(backward(&v2, ORDER_V1), Vec::<String>::new());
    }

    #[test]
    fn source_type_change_within_a_wire_group_is_compatible() {
        // An enum and int32 share the varint wire group: named types are resolved to an enum.
        let v2 = ORDER_V1.replace("Status status = 2;", "int32 status = 2;");
        assert_eq!(backward(&v2, ORDER_V1), Vec::<String>::new());
    }

    #[test]
    fn source_type_change_across_wire_groups_is_incompatible() {
        let v2 = ORDER_V1.replace("int64 id = 1;", "string id = 1;");
        let problems = backward(&v2, ORDER_V1);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("field id (1)"), "{problems:?}");
        // A named message in place of an enum: length-delimited versus varint.
        let v3 = ORDER_V1.replace("Status status = 2;", "Item status = 2;");
        assert_eq!(backward(&v3, ORDER_V1).len(), 1);
    }

    #[test]
    fn source_message_removed_is_incompatible() {
        let v2 = ORDER_V1.replace("message Item { string sku = 1; int32 quantity = 2; }", "");
        let v2 = v2.replace("repeated Item items = 3;", "");
        let problems = backward(&v2, ORDER_V1);
        assert!(
            problems.iter().any(|p| p == "message .shop.Item removed"),
            "{problems:?}"
        );
    }

    #[test]
    fn source_imports_resolve_from_references_and_well_known_types() {
        let common = r#"syntax = "proto3"; package common; message Money { int64 cents = 1; }"#;
        let order = r#"
            syntax = "proto3";
            package shop;
            import "common/money.proto";
            import "google/protobuf/timestamp.proto";
            message Order { common.Money total = 1; google.protobuf.Timestamp at = 2; }
        "#;
        let reference = SchemaReference {
            name: "common/money.proto".into(),
            subject: "money".into(),
            version: 1,
        };
        let resolve =
            |r: &SchemaReference| (r.subject == "money").then(|| (common.to_string(), Vec::new()));
        let parsed = parse(order, std::slice::from_ref(&reference), &resolve).unwrap();
        let message = parsed.message(&[0]).unwrap();
        assert_eq!(
            message
                .get_field(1)
                .unwrap()
                .kind()
                .as_message()
                .unwrap()
                .full_name(),
            "common.Money"
        );
        // Without the reference the import cannot be found: not a valid schema.
        assert!(parse(order, &[], &no_references).is_err());
    }

    #[test]
    fn imports_of_imported_files_resolve_through_their_own_references() {
        // order imports line, which imports money: Confluent's registry follows the chain.
        let money = r#"syntax = "proto3"; package common; message Money { int64 cents = 1; }"#;
        let line = r#"syntax = "proto3"; package shop; import "common/money.proto";
                      message Line { string sku = 1; common.Money price = 2; }"#;
        let order = r#"syntax = "proto3"; package shop; import "shop/line.proto";
                       message Order { repeated Line lines = 1; }"#;
        let to_money = SchemaReference {
            name: "common/money.proto".into(),
            subject: "money".into(),
            version: 1,
        };
        let to_line = SchemaReference {
            name: "shop/line.proto".into(),
            subject: "line".into(),
            version: 1,
        };
        let resolve = |r: &SchemaReference| match r.subject.as_str() {
            "money" => Some((money.to_string(), Vec::new())),
            "line" => Some((line.to_string(), vec![to_money.clone()])),
            _ => None,
        };
        let parsed = parse(order, std::slice::from_ref(&to_line), &resolve).unwrap();
        let line_message = parsed.message(&[0]).unwrap().get_field(1).unwrap().kind();
        let price = line_message
            .as_message()
            .unwrap()
            .get_field(2)
            .unwrap()
            .kind();
        assert_eq!(price.as_message().unwrap().full_name(), "common.Money");
    }
}
