//! Checking an Avro datum against its writer schema without building it: validation on
//! publish only needs to know that the bytes decode, and apache-avro's decoder builds a value
//! tree per record (a `String` for every field name of every record), which cost most of a
//! validated produce. [`walk`] follows the schema over the bytes the way the decoder reads
//! them (zig-zag varints, length-prefixed bytes and UTF-8 strings, enum and union indexes in
//! range, array and map blocks, records field by field, named types through [`AvroNames`])
//! and allocates nothing.
//!
//! Whatever it does not model (decimals, UUIDs, big decimals, a name it cannot resolve, an
//! array block longer than the bytes left, nesting past [`MAX_DEPTH`]) it reports as
//! [`Walked::Unsupported`], and the caller falls back to apache-avro's full decoder, so the
//! verdict never depends on the shortcut.

use std::collections::HashMap;

use apache_avro::schema::Schema;

/// Nesting deeper than this goes to the full decoder.
const MAX_DEPTH: u32 = 64;

/// The named types (records, enums, fixeds) a schema defines, by full name, for `Ref`s.
#[derive(Default)]
pub struct AvroNames {
    by_name: HashMap<String, Schema>,
}

impl AvroNames {
    /// The named types of `schema`; empty when they cannot be resolved (every `Ref` then
    /// falls back to the full decoder).
    pub fn of(schema: &Schema) -> Self {
        let by_name = apache_avro::schema::ResolvedSchema::try_from(schema)
            .map(|resolved| {
                resolved
                    .get_names()
                    .iter()
                    .map(|(name, s)| (name.fullname(None), (*s).clone()))
                    .collect()
            })
            .unwrap_or_default();
        Self { by_name }
    }
}

/// Why a walk stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Walked {
    /// The bytes do not decode: the reason.
    Invalid(String),
    /// Outside what the walk models: ask the full decoder.
    Unsupported,
}

fn invalid(message: impl Into<String>) -> Walked {
    Walked::Invalid(message.into())
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], Walked> {
    if buf.len() < n {
        return Err(invalid("unexpected end of the datum"));
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

/// A zig-zag varint of at most `max_bytes` bytes (5 for an int, 10 for a long).
fn varint(buf: &mut &[u8], max_bytes: usize) -> Result<i64, Walked> {
    let mut raw = 0u64;
    for i in 0..max_bytes {
        let b = *take(buf, 1)?.first().ok_or_else(|| invalid("empty"))?;
        raw |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Ok((raw >> 1) as i64 ^ -((raw & 1) as i64));
        }
    }
    Err(invalid("varint too long"))
}

fn int(buf: &mut &[u8]) -> Result<i32, Walked> {
    let v = varint(buf, 5)?;
    i32::try_from(v).map_err(|_| invalid(format!("int out of range: {v}")))
}

fn length(buf: &mut &[u8]) -> Result<usize, Walked> {
    let n = varint(buf, 10)?;
    usize::try_from(n).map_err(|_| invalid(format!("negative length {n}")))
}

/// Reads an array or map block count; `None` at the end marker. A negative count is followed
/// by the block's byte size, which the walk reads and ignores.
fn block(buf: &mut &[u8]) -> Result<Option<usize>, Walked> {
    let n = varint(buf, 10)?;
    if n == 0 {
        return Ok(None);
    }
    if n < 0 {
        varint(buf, 10)?;
    }
    let n = usize::try_from(n.unsigned_abs()).map_err(|_| Walked::Unsupported)?;
    // Each item takes at least a byte unless its schema is empty; a count past the bytes
    // left is for the full decoder to judge.
    if n > buf.len() {
        return Err(Walked::Unsupported);
    }
    Ok(Some(n))
}

/// Walks one datum of `schema` off the front of `buf`.
pub fn walk(schema: &Schema, names: &AvroNames, buf: &mut &[u8]) -> Result<(), Walked> {
    walk_at(schema, names, buf, 0)
}

fn walk_at(schema: &Schema, names: &AvroNames, buf: &mut &[u8], depth: u32) -> Result<(), Walked> {
    if depth > MAX_DEPTH {
        return Err(Walked::Unsupported);
    }
    let next = depth + 1;
    match schema {
        Schema::Null => Ok(()),
        Schema::Boolean => match take(buf, 1)? {
            [0] | [1] => Ok(()),
            other => Err(invalid(format!("invalid boolean {other:?}"))),
        },
        Schema::Int | Schema::Date | Schema::TimeMillis => int(buf).map(drop),
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => varint(buf, 10).map(drop),
        Schema::Float => take(buf, 4).map(drop),
        Schema::Double => take(buf, 8).map(drop),
        Schema::Duration => take(buf, 12).map(drop),
        Schema::Bytes => {
            let n = length(buf)?;
            take(buf, n).map(drop)
        }
        Schema::String => {
            let n = length(buf)?;
            std::str::from_utf8(take(buf, n)?)
                .map(drop)
                .map_err(|e| invalid(format!("invalid UTF-8 string: {e}")))
        }
        Schema::Fixed(f) => take(buf, f.size).map(drop),
        Schema::Enum(e) => {
            let i = int(buf)?;
            if usize::try_from(i).is_ok_and(|i| i < e.symbols.len()) {
                Ok(())
            } else {
                Err(invalid(format!("enum index {i} out of range")))
            }
        }
        Schema::Union(u) => {
            let i = varint(buf, 10)?;
            let variant = usize::try_from(i)
                .ok()
                .and_then(|i| u.variants().get(i))
                .ok_or_else(|| invalid(format!("union index {i} out of range")))?;
            walk_at(variant, names, buf, next)
        }
        Schema::Array(a) => {
            while let Some(n) = block(buf)? {
                for _ in 0..n {
                    walk_at(&a.items, names, buf, next)?;
                }
            }
            Ok(())
        }
        Schema::Map(m) => {
            while let Some(n) = block(buf)? {
                for _ in 0..n {
                    walk_at(&Schema::String, names, buf, next)?;
                    walk_at(&m.types, names, buf, next)?;
                }
            }
            Ok(())
        }
        Schema::Record(r) => {
            for field in &r.fields {
                walk_at(&field.schema, names, buf, next)?;
            }
            Ok(())
        }
        Schema::Ref { name } => match names.by_name.get(&name.fullname(None)) {
            Some(s) => walk_at(s, names, buf, next),
            None => Err(Walked::Unsupported),
        },
        Schema::Decimal(_) | Schema::BigDecimal | Schema::Uuid => Err(Walked::Unsupported),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Value;

    fn check(schema: &Schema, bytes: &[u8]) -> Result<(), Walked> {
        let names = AvroNames::of(schema);
        let mut buf = bytes;
        walk(schema, &names, &mut buf)?;
        if buf.is_empty() {
            Ok(())
        } else {
            Err(invalid("left over"))
        }
    }

    #[test]
    fn agrees_with_the_decoder_on_valid_and_broken_data() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"R","namespace":"n","fields":[
              {"name":"a","type":"int"},{"name":"b","type":["null","string"]},
              {"name":"c","type":{"type":"array","items":{"type":"record","name":"I","fields":[
                {"name":"x","type":"long"},{"name":"e","type":{"type":"enum","name":"E","symbols":["A","B"]}}]}}},
              {"name":"d","type":{"type":"map","values":"n.I"}},
              {"name":"f","type":{"type":"fixed","name":"F","size":3}},
              {"name":"g","type":"boolean"},{"name":"h","type":"double"}]}"#,
        )
        .unwrap();
        let item = |x: i64, e: u32| {
            Value::Record(vec![
                ("x".into(), Value::Long(x)),
                (
                    "e".into(),
                    Value::Enum(e, if e == 0 { "A" } else { "B" }.into()),
                ),
            ])
        };
        let value = Value::Record(vec![
            ("a".into(), Value::Int(-7)),
            (
                "b".into(),
                Value::Union(1, Box::new(Value::String("héllo".into()))),
            ),
            ("c".into(), Value::Array(vec![item(1, 0), item(-300, 1)])),
            (
                "d".into(),
                Value::Map([("k".to_string(), item(5, 1))].into_iter().collect()),
            ),
            ("f".into(), Value::Fixed(3, vec![1, 2, 3])),
            ("g".into(), Value::Boolean(true)),
            ("h".into(), Value::Double(1.5)),
        ]);
        let bytes = apache_avro::to_avro_datum(&schema, value).unwrap();
        assert_eq!(check(&schema, &bytes), Ok(()));
        // Every truncation is refused, as the decoder refuses it.
        for cut in 0..bytes.len() {
            let decoded = apache_avro::from_avro_datum(&schema, &mut &bytes[..cut], None);
            assert!(decoded.is_err(), "decoder accepted {cut} bytes");
            assert!(
                check(&schema, &bytes[..cut]).is_err(),
                "walk accepted {cut} bytes"
            );
        }
        // A bad union index, enum index and boolean.
        let mut bad = bytes.clone();
        bad[1] = 0x08; // union index 4
        assert!(matches!(check(&schema, &bad), Err(Walked::Invalid(_))));
        assert!(check(&Schema::Boolean, &[2]).is_err());
        let e = Schema::parse_str(r#"{"type":"enum","name":"E","symbols":["A"]}"#).unwrap();
        assert!(check(&e, &[2]).is_err());
        assert!(check(&Schema::String, &[4, 0xff, 0xfe]).is_err());
        assert_eq!(
            check(&Schema::Uuid, &[0]),
            Err(Walked::Unsupported),
            "logical types it does not model go to the decoder"
        );
    }
}
