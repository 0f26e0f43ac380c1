//! Broker-wide resource limits, checked before anything touches the disk.
//!
//! Every partition and queue is a directory and (while its log is open) a few file
//! descriptors, so an anonymous client asking for 100,000 partitions could otherwise exhaust
//! the process's descriptors and leave thousands of half-made directories. The core refuses
//! such requests up front with a [`super::BrokerError::PolicyViolation`] (Kafka's
//! POLICY_VIOLATION) or, for queues, RabbitMQ's 406 "queue limit" wording. A topic's
//! `max.message.bytes` is capped the same way, as Kafka's `message.max.bytes` caps what a
//! client may configure.

use std::collections::BTreeMap;

use super::BrokerError;

/// The limits; 0 in a count means no limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceLimits {
    /// Most partitions over all topics. Default [`ResourceLimits::DEFAULT_MAX_PARTITIONS`].
    pub max_partitions: usize,
    /// Most queues over all vhosts. Default [`ResourceLimits::DEFAULT_MAX_QUEUES`].
    pub max_queues: usize,
    /// Largest `max.message.bytes` a topic may be given. Default
    /// [`ResourceLimits::DEFAULT_MAX_MESSAGE_BYTES_LIMIT`].
    pub max_message_bytes_limit: usize,
}

impl ResourceLimits {
    pub const DEFAULT_MAX_PARTITIONS: usize = 10_000;
    pub const DEFAULT_MAX_QUEUES: usize = 10_000;
    /// 10 MiB: ten times Kafka's default record batch size.
    pub const DEFAULT_MAX_MESSAGE_BYTES_LIMIT: usize = 10 * 1024 * 1024;

    /// No limits, for embedders and tests that want none.
    pub fn unlimited() -> Self {
        Self {
            max_partitions: 0,
            max_queues: 0,
            max_message_bytes_limit: usize::MAX,
        }
    }

    /// Refuses `adding` partitions to a broker that holds `existing`.
    pub fn check_partitions(&self, existing: usize, adding: usize) -> Result<(), BrokerError> {
        if self.max_partitions != 0 && existing.saturating_add(adding) > self.max_partitions {
            return Err(BrokerError::PolicyViolation(format!(
                "{adding} more partitions would exceed the broker's limit of {} \
                 (it holds {existing}); raise kafka.max_partitions to allow more",
                self.max_partitions
            )));
        }
        Ok(())
    }

    /// Refuses topic overrides that raise `max.message.bytes` past the broker's cap.
    pub fn check_topic_configs(
        &self,
        configs: &BTreeMap<String, String>,
    ) -> Result<(), BrokerError> {
        let Some(value) = configs.get("max.message.bytes") else {
            return Ok(());
        };
        // A value that is not a number is reported by the config parser with its own words.
        match value.trim().parse::<u64>() {
            Ok(asked) if asked > self.max_message_bytes_limit as u64 => {
                Err(BrokerError::PolicyViolation(format!(
                    "max.message.bytes {asked} exceeds the broker's limit of {} \
                     (kafka.max_message_bytes_limit)",
                    self.max_message_bytes_limit
                )))
            }
            _ => Ok(()),
        }
    }
}

impl Default for ResourceLimits {
    fn default() -> Self {
        Self {
            max_partitions: Self::DEFAULT_MAX_PARTITIONS,
            max_queues: Self::DEFAULT_MAX_QUEUES,
            max_message_bytes_limit: Self::DEFAULT_MAX_MESSAGE_BYTES_LIMIT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_sizes_are_checked_against_the_limits() {
        let limits = ResourceLimits {
            max_partitions: 10,
            max_queues: 0,
            max_message_bytes_limit: 1000,
        };
        assert!(limits.check_partitions(4, 6).is_ok());
        assert!(matches!(
            limits.check_partitions(4, 7),
            Err(BrokerError::PolicyViolation(_))
        ));
        assert!(limits.check_partitions(0, usize::MAX).is_err());
        let configs = |v: &str| BTreeMap::from([("max.message.bytes".to_string(), v.to_string())]);
        assert!(limits.check_topic_configs(&configs("1000")).is_ok());
        assert!(limits.check_topic_configs(&configs("1001")).is_err());
        assert!(limits.check_topic_configs(&configs("x")).is_ok());
        assert!(ResourceLimits::unlimited()
            .check_partitions(usize::MAX, 1)
            .is_ok());
    }
}
