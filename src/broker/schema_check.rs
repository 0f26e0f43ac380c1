//! Validation on publish (issue 18): the core's one hook for the schema registry.
//!
//! The registry lives above the core (`crate::schema`), so the core holds it as a
//! [`SchemaValidator`] the server installs. A topic asks for validation with the topic config
//! `ferry.schema.validation=true`; the produce path then calls
//! [`BrokerCore::check_kafka_records`](super::BrokerCore::check_kafka_records), which for every
//! other topic is one bool test and returns. Rejections are counted as
//! `ferry_schema_rejections_total{topic|exchange, reason}`.

use std::sync::Arc;

use bytes::Bytes;

/// One refused record: its index in the batch and why (Kafka's KIP-467 record error).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordRejection {
    pub batch_index: i32,
    /// `wire_format`, `unknown_schema`, `wrong_subject`, `decode` or `no_registry`: the
    /// metric's `reason` label.
    pub reason: &'static str,
    pub message: String,
}

/// A message body a schema must accept, for protocols that name the schema in metadata
/// (AMQP: content type plus a `schema-version` or CloudEvents `dataschema` header).
pub struct NamedSchemaMessage<'a> {
    pub subject: &'a str,
    /// A version number, `latest`, or `None` for the latest.
    pub version: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
}

/// What the core asks of the schema registry.
pub trait SchemaValidator: Send + Sync + 'static {
    /// Checks every record value of `batch` (one whole record batch as produced) bound for
    /// `topic`: Confluent's wire format, a schema id registered under the topic's subject,
    /// and a payload that decodes against it. Empty when every record passes.
    fn check_records(&self, topic: &str, batch: &Bytes) -> Vec<RecordRejection>;

    /// Checks a message whose schema is named by metadata; `Err` says why it is refused,
    /// with the metric's reason first.
    fn check_named(&self, message: &NamedSchemaMessage<'_>) -> Result<(), (&'static str, String)>;
}

pub(super) type SharedValidator = Arc<dyn SchemaValidator>;

/// Counts one refusal.
pub fn count_rejection(kind: &'static str, name: &str, reason: &'static str) {
    metrics::counter!(
        "ferry_schema_rejections_total",
        kind => name.to_string(),
        "reason" => reason
    )
    .increment(1);
}

/// The exchange argument that turns validation on (`true`, or `nack`: refuse; a publisher in
/// confirm mode gets basic.nack, others lose the message as with `x-overflow` reject-publish).
pub const VALIDATION_ARGUMENT: &str = "x-schema-validation";
/// The exchange argument naming the subject its messages follow (default `<exchange>-value`).
pub const SUBJECT_ARGUMENT: &str = "x-schema-subject";

/// Why a message published to a validating exchange was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageRejection {
    pub reason: &'static str,
    pub message: String,
}

/// Whether an exchange's arguments ask for validation, and under which subject.
pub fn validation_subject(exchange: &str, arguments: &serde_json::Value) -> Option<String> {
    let on = match arguments.get(VALIDATION_ARGUMENT)? {
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::String(s) => !matches!(s.as_str(), "false" | "off" | ""),
        _ => false,
    };
    on.then(|| {
        arguments
            .get(SUBJECT_ARGUMENT)
            .and_then(|v| v.as_str())
            .map_or_else(|| format!("{exchange}-value"), str::to_string)
    })
}

/// `(subject, version)` named by a message's schema header: a CloudEvents `dataschema` URI
/// ending in `/subjects/{subject}/versions/{version}` names both; a bare `schema-version` (or
/// a `dataschema` that is a number) names the version of the exchange's subject.
fn named_schema<'a>(default_subject: &'a str, header: Option<&'a str>) -> (String, Option<String>) {
    let Some(header) = header else {
        return (default_subject.to_string(), None);
    };
    if let Some((before, version)) = header.rsplit_once("/versions/") {
        if let Some((_, subject)) = before.rsplit_once("/subjects/") {
            return (subject.to_string(), Some(version.to_string()));
        }
    }
    (default_subject.to_string(), Some(header.to_string()))
}

impl super::BrokerCore {
    /// Installs the schema registry that validating topics and exchanges check against.
    pub fn set_schema_validator(&self, validator: Arc<dyn SchemaValidator>) {
        let _ = self.inner.schema_validator.set(validator);
    }

    /// The records of `batch` that `topic` refuses (`ferry.schema.validation=true`); empty,
    /// after one bool test, for a topic that does not validate.
    pub fn check_kafka_records(&self, topic: &super::Topic, batch: &Bytes) -> Vec<RecordRejection> {
        if !topic.log_config().schema_validation {
            return Vec::new();
        }
        let rejections = match self.inner.schema_validator.get() {
            Some(validator) => validator.check_records(topic.name(), batch),
            None => vec![RecordRejection {
                batch_index: 0,
                reason: "no_registry",
                message: "the topic requires schema validation but no schema registry runs".into(),
            }],
        };
        for r in &rejections {
            count_rejection("topic", topic.name(), r.reason);
        }
        rejections
    }

    /// Checks a message published to an exchange declared with `x-schema-validation`;
    /// `Ok` at once for every other exchange. The message names its schema version with a
    /// `schema-version` or CloudEvents `dataschema` header (absent: the latest), and a JSON
    /// schema needs a JSON content type (or none).
    pub fn check_exchange_message(
        &self,
        exchange: &str,
        arguments: &serde_json::Value,
        message: &super::message::Message,
    ) -> Result<(), MessageRejection> {
        let Some(subject) = validation_subject(exchange, arguments) else {
            return Ok(());
        };
        let result = self.check_named_message(&subject, message);
        if let Err(r) = &result {
            count_rejection("exchange", exchange, r.reason);
        }
        result
    }

    fn check_named_message(
        &self,
        subject: &str,
        message: &super::message::Message,
    ) -> Result<(), MessageRejection> {
        let Some(validator) = self.inner.schema_validator.get() else {
            return Err(MessageRejection {
                reason: "no_registry",
                message: "the exchange requires schema validation but no schema registry runs"
                    .into(),
            });
        };
        let metadata = message.metadata();
        let (subject, version) = named_schema(subject, metadata.schema_version.as_deref());
        let content_type = ["content-type", "amqp.content-type"]
            .iter()
            .find_map(|h| message.header(h))
            .and_then(|v| v.as_bytes())
            .map(|b| String::from_utf8_lossy(b).into_owned());
        let named = NamedSchemaMessage {
            subject: &subject,
            version: version.as_deref(),
            content_type: content_type.as_deref(),
            body: message.value.as_deref().unwrap_or_default(),
        };
        validator
            .check_named(&named)
            .map_err(|(reason, message)| MessageRejection { reason, message })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exchange_arguments_and_schema_headers() {
        assert_eq!(
            validation_subject("orders", &json!({"x-schema-validation": true})),
            Some("orders-value".into())
        );
        assert_eq!(
            validation_subject(
                "o",
                &json!({"x-schema-validation": "nack", "x-schema-subject": "s"})
            ),
            Some("s".into())
        );
        assert_eq!(validation_subject("o", &json!({})), None);
        assert_eq!(named_schema("d", None), ("d".into(), None));
        assert_eq!(named_schema("d", Some("3")), ("d".into(), Some("3".into())));
        assert_eq!(
            named_schema(
                "d",
                Some("http://reg:8080/subjects/orders-value/versions/2")
            ),
            ("orders-value".into(), Some("2".into()))
        );
    }
}
