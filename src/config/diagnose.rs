//! How configuration problems are reported: where a value came from (file, environment,
//! flag) so an invalid one is named with its source, and the nearest known key for a misspelled
//! one ("did you mean `log.fsync`?"). Kept apart from the settings themselves so the loader in
//! `config.rs` stays about precedence and the settings' shapes.

use super::{Config, ConfigError, OPTIONAL_KEYS};

/// Where each explicitly set key came from and the value it was given, so an invalid value is
/// reported with both ("got \"sometimes\" from environment variable FERRY_LOG__FSYNC").
pub(super) type Origins = std::collections::BTreeMap<String, (String, String)>;

pub(super) fn with_origin(e: ConfigError, origins: &Origins) -> ConfigError {
    match e {
        ConfigError::Invalid { key, message } => {
            let message = match origins.get(&key) {
                Some((origin, _)) if super::security::is_secret_key(&key) => {
                    format!("{message} (from {origin}; the value is not shown)")
                }
                Some((origin, value)) => format!("{message} (got {value} from {origin})"),
                None => message,
            };
            ConfigError::Invalid { key, message }
        }
        other => other,
    }
}

/// The `ferry serve` flag of a key as `ServeArgs` spells it.
pub(super) fn flag_name(key: &str) -> String {
    match key {
        "log.fsync" => "fsync".into(),
        other => other.replace(['_', '.'], "-"),
    }
}

/// An OS error without Rust's "(os error N)" suffix: the kind already says it for people.
pub(super) fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Every settable dotted key, from the defaults.
pub(super) fn known_keys() -> Vec<String> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
        if let Some(t) = v.as_table() {
            for (k, inner) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if inner.is_table() {
                    walk(&key, inner, out);
                } else {
                    out.push(key);
                }
            }
        }
    }
    let mut out: Vec<String> = OPTIONAL_KEYS.iter().map(|k| k.to_string()).collect();
    if let Ok(tree) = toml::Value::try_from(Config::default()) {
        walk("", &tree, &mut out);
    }
    out
}

/// The known key closest to a misspelled one: the same leaf in another section, or the
/// smallest edit distance within a third of the key's length.
pub(super) fn closest_key(key: &str) -> Option<String> {
    let known = known_keys();
    let leaf = key.rsplit('.').next().unwrap_or(key);
    if let Some(k) = known.iter().find(|k| k.rsplit('.').next() == Some(leaf)) {
        return Some(k.clone());
    }
    known
        .into_iter()
        .map(|k| (strsim::levenshtein(key, &k), k))
        .filter(|(d, _)| *d <= (key.len() / 3).max(2))
        .min()
        .map(|(_, k)| k)
}

pub(super) fn did_you_mean(key: &str) -> String {
    closest_key(key).map_or_else(String::new, |k| format!(" — did you mean `{k}`?"))
}

/// For `FERRY_*` variables: the suggestion spelled as a variable.
pub(super) fn did_you_mean_variable(dotted: &str) -> String {
    closest_key(dotted).map_or_else(String::new, |k| {
        format!(
            " — did you mean FERRY_{}?",
            k.to_ascii_uppercase().replace('.', "__")
        )
    })
}
