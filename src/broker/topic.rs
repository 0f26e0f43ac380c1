//! Topics: a name, an id, a config and an ordered set of partition logs.
//!
//! A [`Topic`] is immutable once built: changing its partition count or config builds a new
//! `Topic` value that shares the existing partition handles, and the registry swaps the `Arc`.
//! Readers holding the old value keep a consistent view, and no lock is held across log I/O.

use std::collections::BTreeMap;

use crate::log::{LogConfig, PartitionHandle};
use crate::meta::TopicDef;

use super::BrokerError;

/// Kafka's limit on topic name length (249, so `<name>-<partition>` fits a 255-byte file name).
pub const MAX_TOPIC_NAME_LEN: usize = 249;

#[derive(Clone)]
pub struct Topic {
    def: TopicDef,
    log_config: LogConfig,
    partitions: Vec<PartitionHandle>,
}

impl Topic {
    pub(super) fn new(
        def: TopicDef,
        log_config: LogConfig,
        partitions: Vec<PartitionHandle>,
    ) -> Self {
        Self {
            def,
            log_config,
            partitions,
        }
    }

    pub fn name(&self) -> &str {
        &self.def.name
    }

    pub fn topic_id(&self) -> [u8; 16] {
        self.def.topic_id
    }

    pub fn def(&self) -> &TopicDef {
        &self.def
    }

    /// Effective log config: broker defaults with this topic's overrides applied.
    pub fn log_config(&self) -> &LogConfig {
        &self.log_config
    }

    /// The topic-level overrides, by Kafka name.
    pub fn config_overrides(&self) -> &BTreeMap<String, String> {
        &self.def.configs
    }

    pub fn partition_count(&self) -> usize {
        self.partitions.len()
    }

    pub fn partition(&self, index: i32) -> Option<&PartitionHandle> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.partitions.get(i))
    }

    pub fn partitions(&self) -> &[PartitionHandle] {
        &self.partitions
    }
}

/// Checks a topic name against Kafka's rules: 1–249 characters of `[a-zA-Z0-9._-]`, not `.` or
/// `..` (they would name the directory itself or its parent).
pub fn validate_topic_name(name: &str) -> Result<(), BrokerError> {
    let invalid = |why: &str| BrokerError::InvalidTopicName {
        name: name.to_string(),
        reason: why.to_string(),
    };
    if name.is_empty() {
        return Err(invalid("is empty"));
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return Err(invalid("is longer than 249 characters"));
    }
    if name == "." || name == ".." {
        return Err(invalid("cannot be \".\" or \"..\""));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(invalid(
            "may contain only ASCII letters, digits, '.', '_' and '-'",
        ));
    }
    Ok(())
}

/// Applies topic overrides (Kafka names) on top of the broker defaults.
pub fn effective_log_config(
    defaults: &LogConfig,
    overrides: &BTreeMap<String, String>,
) -> Result<LogConfig, BrokerError> {
    let mut config = defaults.clone();
    for (key, value) in overrides {
        config
            .set(key, value)
            .map_err(|e| BrokerError::InvalidConfig {
                key: key.clone(),
                message: e.to_string(),
            })?;
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        for ok in ["orders", "a.b_c-d", "X1", &"x".repeat(249)] {
            validate_topic_name(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a b", "ü", &"x".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
