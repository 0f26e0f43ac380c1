//! Compatibility between a new schema and an earlier one, in the directions a level asks for.
//!
//! BACKWARD means the new schema can read what the old one wrote; FORWARD the reverse; FULL
//! both. A change of schema type is never compatible.

use super::types::{Compatibility, SchemaType};
use crate::meta::SchemaReference;

/// A schema as the checker sees it: its type, canonical text and references.
pub type Checked<'a> = (SchemaType, &'a str, &'a [SchemaReference]);

/// What keeps `new` from following `old` under `level` (empty: nothing).
pub fn check(
    level: Compatibility,
    new: Checked<'_>,
    old: Checked<'_>,
    _resolve: &dyn Fn(&SchemaReference) -> Option<String>,
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
    Vec::new()
}
