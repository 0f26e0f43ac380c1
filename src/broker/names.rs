//! The limits every way into the AMQP model shares: what an exchange, queue or binding may be
//! called and carry. AMQP's wire format enforces them by construction (a name or routing key
//! is a short string of at most 255 bytes, arguments are a field table sent inside one method
//! frame); the admin API and any future way in check the same rules here, so nothing can be
//! declared that an AMQP client could not have declared, or could not read back.

use serde_json::Value;

use super::routing::RoutingError;

/// Longest exchange or queue name and routing key, in bytes: an AMQP short string.
pub const MAX_NAME_BYTES: usize = 255;

/// Largest argument table, as compact JSON. An AMQP client sends arguments inside one method
/// frame, which Ferry's default `amqp.frame_max` (131072) bounds; the table must fit in one.
pub const MAX_ARGUMENTS_BYTES: usize = 128 * 1024;

/// Rejects a name longer than an AMQP short string (`kind` is "exchange", "queue", …).
pub fn check_name(kind: &str, name: &str) -> Result<(), RoutingError> {
    if name.len() > MAX_NAME_BYTES {
        return Err(RoutingError::InvalidRequest(format!(
            "{kind} name too long: {} bytes (at most {MAX_NAME_BYTES})",
            name.len()
        )));
    }
    Ok(())
}

/// Rejects arguments that are not a table, have a key longer than a short string, or do not
/// fit one frame.
pub fn check_arguments(arguments: &Value) -> Result<(), RoutingError> {
    let Value::Object(table) = arguments else {
        return Err(RoutingError::InvalidRequest(
            "arguments must be a table (a JSON object)".into(),
        ));
    };
    if let Some(key) = table.keys().find(|k| k.len() > MAX_NAME_BYTES) {
        return Err(RoutingError::InvalidRequest(format!(
            "argument name too long: {} bytes (at most {MAX_NAME_BYTES})",
            key.len()
        )));
    }
    let size = serde_json::to_vec(arguments).map_or(usize::MAX, |v| v.len());
    if size > MAX_ARGUMENTS_BYTES {
        return Err(RoutingError::InvalidRequest(format!(
            "arguments too large: {size} bytes (at most {MAX_ARGUMENTS_BYTES}, what fits one AMQP frame)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_are_short_strings() {
        assert!(check_name("queue", &"q".repeat(255)).is_ok());
        assert!(check_name("queue", &"q".repeat(256)).is_err());
        // Bytes, not characters: 128 two-byte characters are 256 bytes.
        assert!(check_name("exchange", &"ü".repeat(128)).is_err());
    }

    #[test]
    fn arguments_are_a_bounded_table() {
        assert!(check_arguments(&json!({})).is_ok());
        assert!(check_arguments(&json!({"x-max-length": 10})).is_ok());
        assert!(check_arguments(&json!([1])).is_err());
        assert!(check_arguments(&json!(null)).is_err());
        assert!(check_arguments(&json!({ "k".repeat(256): 1 })).is_err());
        assert!(check_arguments(&json!({"x-big": "a".repeat(MAX_ARGUMENTS_BYTES)})).is_err());
    }
}
