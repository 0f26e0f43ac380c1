//! Checking a JSON document against a JSON Schema on publish: the keywords that decide the
//! shape of an event (`type`, `enum`, `const`, `required`, `properties`,
//! `additionalProperties`, `items`, `prefixItems`, `minimum`/`maximum`, `minLength`/
//! `maxLength`, `minItems`/`maxItems`, `allOf`/`anyOf`/`oneOf`/`not`, local `$ref` to
//! `#/definitions/..` or `#/$defs/..`, `pattern` and `patternProperties`). Keywords outside
//! this list (`format`, an annotation unless a validator opts in, `dependentSchemas`, remote
//! `$ref`, ...) are not checked here: the producer-side serializer, a full validator, still
//! checks them; the broker guards the shape.
//!
//! Patterns are ECMA-262 regular expressions; they are compiled with the `regex` crate, which
//! takes the common subset. One it cannot compile (look-around, back-references) is not
//! checked, and then `additionalProperties` is not applied either: a message is never refused
//! for a rule the broker could not read. Compiled patterns are cached per process.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use regex::Regex;
use serde_json::Value;

/// Most compiled patterns kept; the cache starts over when full (schemas are few, and a
/// flood of distinct patterns only costs recompiling).
const PATTERN_CACHE_LIMIT: usize = 4096;

/// The compiled form of an ECMA-262 `pattern`, or `None` when the `regex` crate cannot take it.
fn compiled(pattern: &str) -> Option<Arc<Regex>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Option<Arc<Regex>>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(hit) = cache.lock().get(pattern) {
        return hit.clone();
    }
    let regex = Regex::new(pattern).ok().map(Arc::new);
    let mut cache = cache.lock();
    if cache.len() >= PATTERN_CACHE_LIMIT {
        cache.clear();
    }
    cache.insert(pattern.to_string(), regex.clone());
    regex
}

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
    if let (Some(Value::String(pattern)), Value::String(text)) = (map.get("pattern"), doc) {
        if compiled(pattern).is_some_and(|r| !r.is_match(text)) {
            return Err(format!("{path}: does not match the pattern {pattern:?}"));
        }
    }
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
        let patterned: Vec<(Option<Arc<Regex>>, &Value)> = map
            .get("patternProperties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(pattern, sub)| (compiled(pattern), sub))
            .collect();
        // additionalProperties covers the names no pattern matches; with a pattern we could
        // not compile, that set is unknown, so it is not applied.
        let all_patterns_read = patterned.iter().all(|(regex, _)| regex.is_some());
        for (name, value) in fields {
            let here = format!("{path}.{name}");
            let mut matched = false;
            if let Some(sub) = properties.and_then(|p| p.get(name)) {
                matched = true;
                check(root, sub, value, &here, depth + 1)?;
            }
            for (regex, sub) in &patterned {
                if regex.as_ref().is_some_and(|r| r.is_match(name)) {
                    matched = true;
                    check(root, sub, value, &here, depth + 1)?;
                }
            }
            if !matched && all_patterns_read {
                if let Some(extra) = map.get("additionalProperties") {
                    check(root, extra, value, &here, depth + 1)?;
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

    #[test]
    fn patterns_and_pattern_properties_are_checked() {
        let schema = json!({
            "type": "object",
            "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]+$"}},
            "patternProperties": {"^x-": {"type": "string"}},
            "additionalProperties": false
        });
        assert!(check_document(&schema, br#"{"sku": "ABC-12", "x-source": "pos"}"#).is_ok());
        for bad in [
            &br#"{"sku": "abc-12"}"#[..],
            br#"{"x-source": 3}"#,
            br#"{"other": "no pattern and not a property"}"#,
        ] {
            assert!(
                check_document(&schema, bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_pattern_the_regex_crate_cannot_read_never_refuses() {
        // Look-ahead is ECMA-262 but not `regex`: neither the pattern nor
        // additionalProperties (whose scope it decides) may refuse a message.
        let schema = json!({
            "type": "object",
            "properties": {"code": {"type": "string", "pattern": "^(?=[a-z])"}},
            "patternProperties": {"^(?!internal)": {"type": "string"}},
            "additionalProperties": false
        });
        assert!(check_document(&schema, br#"{"code": "9", "anything": "x"}"#).is_ok());
    }
}
