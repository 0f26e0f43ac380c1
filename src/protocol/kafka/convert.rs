//! Core errors to Kafka error codes. One table, so every API answers the same failure the same
//! way.

use kafka_protocol::ResponseError;

use crate::broker::BrokerError;
use crate::log::LogError;

pub const NONE: i16 = 0;

pub fn log_error_code(e: &LogError) -> i16 {
    match e {
        LogError::InvalidBatch(_) | LogError::CorruptBatch(_) => {
            ResponseError::CorruptMessage.code()
        }
        LogError::MessageTooLarge { .. } => ResponseError::MessageTooLarge.code(),
        LogError::InvalidRecord(_) => ResponseError::InvalidRecord.code(),
        LogError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange.code(),
        LogError::FailStopped(_) | LogError::Io { .. } => ResponseError::KafkaStorageError.code(),
        LogError::Closed => ResponseError::NotLeaderOrFollower.code(),
        LogError::Config(_) => ResponseError::InvalidConfig.code(),
        LogError::OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber.code(),
        LogError::InvalidProducerEpoch { .. } => ResponseError::InvalidProducerEpoch.code(),
        LogError::UnknownProducerId(_) => ResponseError::UnknownProducerId.code(),
    }
}

pub fn broker_error_code(e: &BrokerError) -> i16 {
    match e {
        BrokerError::UnknownTopic(_) | BrokerError::UnknownPartition { .. } => {
            ResponseError::UnknownTopicOrPartition.code()
        }
        BrokerError::TopicExists(_) => ResponseError::TopicAlreadyExists.code(),
        BrokerError::InvalidTopicName { .. } => ResponseError::InvalidTopicException.code(),
        BrokerError::InvalidPartitions(_) => ResponseError::InvalidPartitions.code(),
        BrokerError::InvalidConfig { .. } => ResponseError::InvalidConfig.code(),
        BrokerError::Log(log) => log_error_code(log),
        BrokerError::Meta(_) => ResponseError::KafkaStorageError.code(),
        BrokerError::ShuttingDown => ResponseError::NotLeaderOrFollower.code(),
        BrokerError::PolicyViolation(_) => ResponseError::PolicyViolation.code(),
    }
}
