//! Protobuf: compared at the wire level, field number by field number, over
//! `FileDescriptorProto`s (prost-types). confluent-kafka's serializers register a schema as the
//! base64 of its serialized `FileDescriptorProto`, which decodes here directly.
//!
//! Refused, as Confluent's registry documents: a changed package, a removed message, a field
//! whose number now carries a wire-incompatible type (types within one wire group, such as
//! `int32`/`int64`/`bool`/enum or `string`/`bytes`, may change into each other), a required
//! field added or removed, and a field moved out of or into a oneof. Added fields, renamed
//! fields, new messages and new enum values are fine.
//!
//! Schemas sent as `.proto` source text are accepted and stored, but not compared (no parser
//! for the language is compiled in): only an unchanged text or a change of schema type is
//! decided for them.

use std::collections::BTreeMap;

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto};

/// A Protobuf schema as registered.
pub enum ProtoSchema {
    Descriptor(Box<FileDescriptorProto>),
    /// `.proto` source text.
    Source,
}

pub fn parse(text: &str) -> Result<ProtoSchema, String> {
    let trimmed = text.trim();
    if let Some(bytes) = crate::util::base64_decode(trimmed) {
        if let Ok(file) = FileDescriptorProto::decode(bytes.as_slice()) {
            return Ok(ProtoSchema::Descriptor(Box::new(file)));
        }
    }
    let looks_like_source = ["syntax", "message", "enum", "package", "import"]
        .iter()
        .any(|word| trimmed.contains(word));
    if looks_like_source {
        Ok(ProtoSchema::Source)
    } else {
        Err("neither .proto source nor a base64 FileDescriptorProto".into())
    }
}

/// Why `reader` cannot read what `writer` wrote.
pub fn can_read(reader: &ProtoSchema, writer: &ProtoSchema) -> Vec<String> {
    let (ProtoSchema::Descriptor(r), ProtoSchema::Descriptor(w)) = (reader, writer) else {
        return Vec::new();
    };
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

    fn file(fields: Vec<FieldDescriptorProto>) -> ProtoSchema {
        ProtoSchema::Descriptor(Box::new(FileDescriptorProto {
            name: Some("order.proto".into()),
            package: Some("shop".into()),
            message_type: vec![DescriptorProto {
                name: Some("Order".into()),
                field: fields,
                ..Default::default()
            }],
            ..Default::default()
        }))
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
    fn the_base64_descriptor_form_parses() {
        let ProtoSchema::Descriptor(descriptor) = file(vec![field("id", 1, Type::Int64)]) else {
            unreachable!()
        };
        let text = crate::util::base64_encode(&descriptor.encode_to_vec());
        assert!(matches!(parse(&text), Ok(ProtoSchema::Descriptor(_))));
        assert!(matches!(
            parse("syntax = \"proto3\"; message A {}"),
            Ok(ProtoSchema::Source)
        ));
        assert!(parse("!!").is_err());
    }
}
