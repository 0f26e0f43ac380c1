//! JSON Schema (draft 7 and 2020-12): "can `reader` read what `writer` wrote" means every
//! document the writer's schema accepts, the reader's accepts too. No Rust crate decides
//! that, so these are the rules Confluent's registry documents, walked over both schemas:
//!
//! - types may widen (`integer` to `number`, a type added), never narrow;
//! - bounds may loosen, never tighten (`minimum`, `maxLength`, `minItems`, ...);
//! - `enum`/`const`/`pattern`/`not` may be dropped or widened, never added or narrowed;
//! - a property newly `required` is refused; a content model may open, never close;
//! - a property added to an *open* content model is refused unless its schema accepts
//!   anything, because old documents may already carry that name with another type;
//! - a property removed from a *closed* content model is refused.
//!
//! `properties`, `items`/`prefixItems` and `additionalProperties` are compared recursively;
//! `allOf`/`anyOf`/`oneOf`/`$ref` must stay as they were (a change there is reported, not
//! analysed).

use serde_json::{Map, Value};

/// A schema document, checked to be one.
pub fn parse(text: &str) -> Result<Value, String> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("JSON Schema is not valid JSON: {e}"))?;
    if !(value.is_object() || value.is_boolean()) {
        return Err("a JSON Schema is an object or a boolean".into());
    }
    Ok(value)
}

/// Why `reader` refuses some document `writer` accepts (empty: it accepts them all).
pub fn can_read(reader: &Value, writer: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    compare(reader, writer, "#", &mut problems);
    problems
}

/// A schema that accepts every document: `true` or `{}`.
fn accepts_anything(schema: &Value) -> bool {
    match schema {
        Value::Bool(b) => *b,
        Value::Object(map) => map.is_empty(),
        _ => false,
    }
}

fn compare(reader: &Value, writer: &Value, path: &str, out: &mut Vec<String>) {
    if accepts_anything(reader) || writer == &Value::Bool(false) || reader == writer {
        return;
    }
    let (Some(r), Some(w)) = (reader.as_object(), writer.as_object()) else {
        out.push(format!(
            "{path}: the schema now refuses documents it accepted"
        ));
        return;
    };
    compare_types(r, w, path, out);
    compare_enums(r, w, path, out);
    for key in [
        "pattern", "not", "$ref", "allOf", "anyOf", "oneOf", "format",
    ] {
        if let Some(rv) = r.get(key) {
            if w.get(key) != Some(rv) {
                out.push(format!("{path}: '{key}' added or changed"));
            }
        }
    }
    for key in [
        "minimum",
        "exclusiveMinimum",
        "minLength",
        "minItems",
        "minProperties",
    ] {
        compare_bound(r, w, key, path, out, |reader, writer| reader <= writer);
    }
    for key in [
        "maximum",
        "exclusiveMaximum",
        "maxLength",
        "maxItems",
        "maxProperties",
    ] {
        compare_bound(r, w, key, path, out, |reader, writer| reader >= writer);
    }
    if r.get("uniqueItems") == Some(&Value::Bool(true))
        && w.get("uniqueItems") != Some(&Value::Bool(true))
    {
        out.push(format!("{path}: 'uniqueItems' added"));
    }
    compare_required(r, w, path, out);
    compare_properties(r, w, path, out);
    compare_items(r, w, path, out);
}

/// The JSON types a schema allows; `None` when it does not restrict the type.
fn types(schema: &Map<String, Value>) -> Option<Vec<&str>> {
    match schema.get("type")? {
        Value::String(t) => Some(vec![t.as_str()]),
        Value::Array(ts) => Some(ts.iter().filter_map(Value::as_str).collect()),
        _ => None,
    }
}

fn compare_types(
    r: &Map<String, Value>,
    w: &Map<String, Value>,
    path: &str,
    out: &mut Vec<String>,
) {
    let Some(reader_types) = types(r) else {
        return;
    };
    let Some(writer_types) = types(w) else {
        out.push(format!("{path}: 'type' restricted to {reader_types:?}"));
        return;
    };
    for t in writer_types {
        let widened = t == "integer" && reader_types.contains(&"number");
        if !reader_types.contains(&t) && !widened {
            out.push(format!(
                "{path}: type '{t}' no longer allowed (now {reader_types:?})"
            ));
        }
    }
}

fn compare_enums(
    r: &Map<String, Value>,
    w: &Map<String, Value>,
    path: &str,
    out: &mut Vec<String>,
) {
    let allowed = |m: &Map<String, Value>| -> Option<Vec<Value>> {
        match (m.get("enum"), m.get("const")) {
            (Some(Value::Array(values)), _) => Some(values.clone()),
            (_, Some(value)) => Some(vec![value.clone()]),
            _ => None,
        }
    };
    let Some(reader_values) = allowed(r) else {
        return;
    };
    match allowed(w) {
        None => out.push(format!("{path}: 'enum'/'const' added")),
        Some(writer_values) => {
            for v in writer_values.iter().filter(|v| !reader_values.contains(v)) {
                out.push(format!("{path}: enum value {v} removed"));
            }
        }
    }
}

fn compare_bound(
    r: &Map<String, Value>,
    w: &Map<String, Value>,
    key: &str,
    path: &str,
    out: &mut Vec<String>,
    loose_enough: impl Fn(f64, f64) -> bool,
) {
    let Some(reader) = r.get(key).and_then(Value::as_f64) else {
        return;
    };
    match w.get(key).and_then(Value::as_f64) {
        Some(writer) if loose_enough(reader, writer) => {}
        Some(writer) => out.push(format!(
            "{path}: '{key}' tightened from {writer} to {reader}"
        )),
        None => out.push(format!("{path}: '{key}' added")),
    }
}

fn required(m: &Map<String, Value>) -> Vec<&str> {
    m.get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn compare_required(
    r: &Map<String, Value>,
    w: &Map<String, Value>,
    path: &str,
    out: &mut Vec<String>,
) {
    let writer_required = required(w);
    for name in required(r) {
        if !writer_required.contains(&name) {
            out.push(format!("{path}: property '{name}' is now required"));
        }
    }
}

/// `additionalProperties`, absent meaning `true` (an open content model).
fn additional(m: &Map<String, Value>) -> Value {
    m.get("additionalProperties")
        .cloned()
        .unwrap_or(Value::Bool(true))
}

fn compare_properties(
    r: &Map<String, Value>,
    w: &Map<String, Value>,
    path: &str,
    out: &mut Vec<String>,
) {
    let empty = Map::new();
    let reader_props = r
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let writer_props = w
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let reader_extra = additional(r);
    let writer_extra = additional(w);
    for (name, reader_prop) in reader_props {
        let here = format!("{path}/properties/{name}");
        match writer_props.get(name) {
            Some(writer_prop) => compare(reader_prop, writer_prop, &here, out),
            None if accepts_anything(reader_prop) => {}
            None if writer_extra == Value::Bool(false) => {}
            None if accepts_anything(&writer_extra) => out.push(format!(
                "{here}: property added to an open content model (old documents may carry it \
                 with another type)"
            )),
            None => compare(reader_prop, &writer_extra, &here, out),
        }
    }
    for (name, writer_prop) in writer_props {
        if reader_props.contains_key(name) {
            continue;
        }
        let here = format!("{path}/properties/{name}");
        if reader_extra == Value::Bool(false) {
            out.push(format!(
                "{here}: property removed from a closed content model"
            ));
        } else {
            compare(&reader_extra, writer_prop, &here, out);
        }
    }
    if !accepts_anything(&reader_extra) && reader_extra != writer_extra {
        compare(
            &reader_extra,
            &writer_extra,
            &format!("{path}/additionalProperties"),
            out,
        );
    }
}

fn compare_items(
    r: &Map<String, Value>,
    w: &Map<String, Value>,
    path: &str,
    out: &mut Vec<String>,
) {
    for key in ["items", "prefixItems", "additionalItems"] {
        if let Some(reader_items) = r.get(key) {
            let writer_items = w.get(key).cloned().unwrap_or(Value::Bool(true));
            match (reader_items, &writer_items) {
                (Value::Array(rs), Value::Array(ws)) => {
                    for (i, (ri, wi)) in rs.iter().zip(ws).enumerate() {
                        compare(ri, wi, &format!("{path}/{key}/{i}"), out);
                    }
                }
                _ => compare(reader_items, &writer_items, &format!("{path}/{key}"), out),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problems(reader: Value, writer: Value) -> Vec<String> {
        can_read(&reader, &writer)
    }

    #[test]
    fn widening_is_compatible_and_narrowing_is_not() {
        let int = json!({"type": "integer"});
        let number = json!({"type": "number"});
        assert!(problems(number.clone(), int.clone()).is_empty());
        assert!(!problems(int, number).is_empty());
        let short = json!({"type": "string", "maxLength": 5});
        let long = json!({"type": "string", "maxLength": 10});
        assert!(problems(long.clone(), short.clone()).is_empty());
        assert!(!problems(short, long).is_empty());
    }

    #[test]
    fn new_required_property_is_refused() {
        let old = json!({"type": "object", "properties": {"a": {"type": "string"}}});
        let new =
            json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]});
        assert!(!problems(new.clone(), old.clone()).is_empty());
        assert!(problems(old, new).is_empty());
    }

    #[test]
    fn content_model_rules() {
        let open = json!({"type": "object", "properties": {"a": {"type": "string"}}});
        let open_added = json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}});
        // A typed property added to an open model: old documents may carry "b" as anything.
        assert!(!problems(open_added.clone(), open.clone()).is_empty());
        let closed = json!({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": false});
        let closed_added = json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}, "additionalProperties": false});
        // Added to a closed model: old documents never had "b".
        assert!(problems(closed_added.clone(), closed.clone()).is_empty());
        // Removed from a closed model: old documents with "b" are now refused.
        assert!(!problems(closed, closed_added).is_empty());
        // Closing an open model refuses documents with extra properties.
        assert!(!problems(
            json!({"type": "object", "additionalProperties": false}),
            json!({"type": "object"})
        )
        .is_empty());
    }

    #[test]
    fn enum_values_may_be_added_not_removed() {
        let ab = json!({"enum": ["a", "b"]});
        let abc = json!({"enum": ["a", "b", "c"]});
        assert!(problems(abc.clone(), ab.clone()).is_empty());
        assert!(!problems(ab, abc).is_empty());
    }
}
