//! Checking a JSON document against a JSON Schema on publish: the keywords that decide the
//! shape of an event (`type`, `enum`, `const`, `required`, `properties`,
//! `additionalProperties`, `items`, `prefixItems`, `minimum`/`maximum`, `minLength`/
//! `maxLength`, `minItems`/`maxItems`, `allOf`/`anyOf`/`oneOf`/`not`, local `$ref` to
//! `#/definitions/..` or `#/$defs/..`). Keywords outside this list (`pattern`, `format`,
//! `dependentSchemas`, remote `$ref`, ...) are not checked here: the producer-side
//! serializer, a full validator, still checks them; the broker guards the shape.

use serde_json::Value;

/// `Ok` when `body` is JSON that `schema` accepts.
pub fn check_document(schema: &Value, body: &[u8]) -> Result<(), String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    check(schema, schema, &doc, "$", 0)
}

fn type_matches(name: &str, doc: &Value) -> bool {
    match name {
        "object" => doc.is_object(),
        "array" => doc.is_array(),
        "string" => doc.is_string(),
        "boolean" => doc.is_boolean(),
        "null" => doc.is_null(),
        "number" => doc.is_number(),
        "integer" => doc.as_f64().is_some_and(|n| n.fract() == 0.0),
        _ => true,
    }
}

fn resolve<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    root.pointer(pointer)
}

fn check(
    root: &Value,
    schema: &Value,
    doc: &Value,
    path: &str,
    depth: usize,
) -> Result<(), String> {
    if depth > 64 {
        return Err(format!("{path}: schema nesting deeper than 64"));
    }
    let map = match schema {
        Value::Bool(true) => return Ok(()),
        Value::Bool(false) => return Err(format!("{path}: no value is allowed here")),
        Value::Object(map) => map,
        _ => return Ok(()),
    };
    if let Some(Value::String(reference)) = map.get("$ref") {
        if let Some(target) = resolve(root, reference) {
            check(root, target, doc, path, depth + 1)?;
        }
    }
    match map.get("type") {
        Some(Value::String(t)) if !type_matches(t, doc) => {
            return Err(format!("{path}: expected {t}"));
        }
        Some(Value::Array(ts))
            if !ts
                .iter()
                .filter_map(Value::as_str)
                .any(|t| type_matches(t, doc)) =>
        {
            return Err(format!("{path}: expected one of {ts:?}"));
        }
        _ => {}
    }
    if let Some(Value::Array(values)) = map.get("enum") {
        if !values.contains(doc) {
            return Err(format!("{path}: not one of the enum values"));
        }
    }
    if let Some(value) = map.get("const") {
        if value != doc {
            return Err(format!("{path}: must be {value}"));
        }
    }
    check_bounds(map, doc, path)?;
    if let Value::Object(fields) = doc {
        for name in map
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(name) = name.as_str() {
                if !fields.contains_key(name) {
                    return Err(format!("{path}: missing required property '{name}'"));
                }
            }
        }
        let properties = map.get("properties").and_then(Value::as_object);
        for (name, value) in fields {
            let here = format!("{path}.{name}");
            match properties.and_then(|p| p.get(name)) {
                Some(sub) => check(root, sub, value, &here, depth + 1)?,
                None => {
                    if let Some(extra) = map.get("additionalProperties") {
                        check(root, extra, value, &here, depth + 1)?;
                    }
                }
            }
        }
    }
    if let Value::Array(items) = doc {
        let prefix = map.get("prefixItems").and_then(Value::as_array);
        for (i, item) in items.iter().enumerate() {
            let here = format!("{path}[{i}]");
            match (prefix.and_then(|p| p.get(i)), map.get("items")) {
                (Some(sub), _) => check(root, sub, item, &here, depth + 1)?,
                (None, Some(Value::Array(tuple))) => {
                    if let Some(sub) = tuple.get(i) {
                        check(root, sub, item, &here, depth + 1)?;
                    }
                }
                (None, Some(sub)) => check(root, sub, item, &here, depth + 1)?,
                (None, None) => {}
            }
        }
    }
    for sub in map
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        check(root, sub, doc, path, depth + 1)?;
    }
    if let Some(Value::Array(any)) = map.get("anyOf") {
        if !any
            .iter()
            .any(|s| check(root, s, doc, path, depth + 1).is_ok())
        {
            return Err(format!("{path}: matches none of anyOf"));
        }
    }
    if let Some(Value::Array(one)) = map.get("oneOf") {
        let matching = one
            .iter()
            .filter(|s| check(root, s, doc, path, depth + 1).is_ok())
            .count();
        if matching != 1 {
            return Err(format!(
                "{path}: matches {matching} of oneOf, not exactly one"
            ));
        }
    }
    if let Some(not) = map.get("not") {
        if check(root, not, doc, path, depth + 1).is_ok() {
            return Err(format!("{path}: matches 'not'"));
        }
    }
    Ok(())
}

fn check_bounds(
    map: &serde_json::Map<String, Value>,
    doc: &Value,
    path: &str,
) -> Result<(), String> {
    let bound = |key: &str| map.get(key).and_then(Value::as_f64);
    let size = match doc {
        Value::String(s) => Some(("Length", s.chars().count() as f64)),
        Value::Array(a) => Some(("Items", a.len() as f64)),
        _ => None,
    };
    if let Some(n) = doc.as_f64() {
        if bound("minimum").is_some_and(|m| n < m)
            || bound("exclusiveMinimum").is_some_and(|m| n <= m)
        {
            return Err(format!("{path}: below the minimum"));
        }
        if bound("maximum").is_some_and(|m| n > m)
            || bound("exclusiveMaximum").is_some_and(|m| n >= m)
        {
            return Err(format!("{path}: above the maximum"));
        }
    }
    if let Some((what, n)) = size {
        if bound(&format!("min{what}")).is_some_and(|m| n < m) {
            return Err(format!("{path}: shorter than min{what}"));
        }
        if bound(&format!("max{what}")).is_some_and(|m| n > m) {
            return Err(format!("{path}: longer than max{what}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shape_keywords_are_checked() {
        let schema = json!({
            "type": "object",
            "properties": {"id": {"type": "integer", "minimum": 1}, "tags": {"type": "array", "items": {"type": "string"}}},
            "required": ["id"],
            "additionalProperties": false
        });
        assert!(check_document(&schema, br#"{"id": 3, "tags": ["a"]}"#).is_ok());
        for bad in [
            &br#"{"tags": []}"#[..],
            br#"{"id": "3"}"#,
            br#"{"id": 0}"#,
            br#"{"id": 1, "tags": [1]}"#,
            br#"{"id": 1, "extra": true}"#,
            b"not json",
        ] {
            assert!(
                check_document(&schema, bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
