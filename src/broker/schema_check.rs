//! Validation on publish (issue 18): the core's one hook for the schema registry.
//!
//! The registry lives above the core (`crate::schema`), so the core holds it as a
//! [`SchemaValidator`] the server installs. A topic asks for validation with the topic config
//! `ferry.schema.validation=true`; the produce path then calls
//! [`BrokerCore::check_kafka_records`](super::BrokerCore::check_kafka_records), which for every
//! other topic is one bool test and returns. Messages that name their schema in metadata
//! (AMQP and native publishes) are checked by [`BrokerCore::check_published`] (an exchange
//! declared with `x-schema-validation`, or a validating topic's exchange face) and
//! [`BrokerCore::check_topic_message`] (a native publish straight to a topic); a queue
//! declared with `x-schema-validation` is checked by the router as the message reaches it
//! ([`check_queue_record`]). Rejections are counted as
//! `ferry_schema_rejections_total{topic|exchange|queue, reason}`.
//!
//! A message reaches a validating topic from a protocol other than Kafka in one of two forms:
//! naming its schema in metadata (a `schema-version` or CloudEvents `dataschema` header, the
//! native `schema_version` field) against the subject `<topic>-value`, or, naming none, in
//! Confluent's wire format as a Kafka record must be, so that Kafka consumers with Confluent
//! deserializers can read whatever the topic holds.

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

    /// Checks one message value bound for `topic` as [`check_records`](Self::check_records)
    /// checks a record's: Confluent's wire format, an id under the topic's subject, a payload
    /// that decodes. `Err` says why, with the metric's reason first.
    fn check_framed(&self, topic: &str, value: Option<&[u8]>)
        -> Result<(), (&'static str, String)>;

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
/// confirm mode gets basic.nack, others lose the message as with `x-overflow` reject-publish;
/// [`DEAD_LETTER_MODE`]: route the refused message to the exchange's dead-letter exchange).
pub const VALIDATION_ARGUMENT: &str = "x-schema-validation";
/// The `x-schema-validation` value that dead-letters a refused message to the exchange's
/// `x-dead-letter-exchange` (reason `schema`) instead of refusing the publish.
pub const DEAD_LETTER_MODE: &str = "dead-letter";
/// The exchange arguments naming where `dead-letter` mode sends refused messages.
pub const DEAD_LETTER_EXCHANGE_ARGUMENT: &str = "x-dead-letter-exchange";
pub const DEAD_LETTER_ROUTING_KEY_ARGUMENT: &str = "x-dead-letter-routing-key";
/// The header a schema dead letter carries with why it was refused.
pub const SCHEMA_ERROR_HEADER: &str = "x-schema-error";

/// The dead-letter exchange (and routing key) of an exchange declared with
/// `x-schema-validation: dead-letter`; `None` for nack semantics.
pub fn schema_dead_letter_target(
    arguments: &serde_json::Value,
) -> Option<(String, Option<String>)> {
    if arguments.get(VALIDATION_ARGUMENT)?.as_str()? != DEAD_LETTER_MODE {
        return None;
    }
    let exchange = arguments
        .get(DEAD_LETTER_EXCHANGE_ARGUMENT)?
        .as_str()?
        .to_string();
    let key = arguments
        .get(DEAD_LETTER_ROUTING_KEY_ARGUMENT)
        .and_then(|k| k.as_str())
        .map(str::to_string);
    Some((exchange, key))
}

/// The exchange argument naming the subject its messages follow (default `<exchange>-value`).
pub const SUBJECT_ARGUMENT: &str = "x-schema-subject";

/// A queue declared with `x-schema-validation`: every message routed to it is checked
/// against `subject` (argument `x-schema-subject`, default `<queue>-value`). A refusal nacks
/// the publish, or with `dead-letter` (and the queue's `x-dead-letter-exchange`) dead-letters
/// the message with reason `schema`. Parsed once at declaration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueValidation {
    /// `None`: `<queue>-value`.
    pub subject: Option<String>,
    pub dead_letter: bool,
}

impl QueueValidation {
    /// The queue's validation, if its arguments ask for it; an error names a bad argument.
    pub fn from_arguments(
        arguments: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Option<Self>, String> {
        let Some(value) = arguments.get(VALIDATION_ARGUMENT) else {
            return Ok(None);
        };
        let on = match value {
            serde_json::Value::Bool(b) => *b,
            serde_json::Value::String(s) => !matches!(s.as_str(), "false" | "off" | ""),
            other => {
                return Err(format!(
                "invalid arg '{VALIDATION_ARGUMENT}': {other} (true, false, nack or dead-letter)"
            ))
            }
        };
        if !on {
            return Ok(None);
        }
        let subject = match arguments.get(SUBJECT_ARGUMENT) {
            None => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(format!(
                    "invalid arg '{SUBJECT_ARGUMENT}': must be a string"
                ))
            }
        };
        Ok(Some(Self {
            subject,
            dead_letter: value.as_str() == Some(DEAD_LETTER_MODE),
        }))
    }
}

/// A message as validation reads it: the core's [`Message`](super::message::Message) (AMQP
/// publishes) or a record (native publishes, routed records).
#[derive(Clone, Copy)]
pub enum MessageView<'a> {
    Message(&'a super::message::Message),
    Record(&'a crate::log::SimpleRecord),
}

/// The facts a named-schema check needs, read only once validation is on.
struct SchemaFacts<'a> {
    schema_version: Option<String>,
    content_type: Option<String>,
    body: Option<&'a [u8]>,
}

/// Record headers that carry the content type: native and Kafka, then AMQP's property.
const CONTENT_TYPE_HEADERS: [&str; 2] = ["content-type", "amqp.content-type"];

impl<'a> MessageView<'a> {
    fn facts(self) -> SchemaFacts<'a> {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match self {
            MessageView::Message(m) => SchemaFacts {
                schema_version: m.metadata().schema_version,
                content_type: CONTENT_TYPE_HEADERS
                    .iter()
                    .find_map(|h| m.header(h))
                    .and_then(|v| v.as_bytes())
                    .map(|b| text(b)),
                body: m.value.as_deref(),
            },
            MessageView::Record(r) => SchemaFacts {
                schema_version: super::event::EventMetadata::from_record(r).schema_version,
                content_type: CONTENT_TYPE_HEADERS.iter().find_map(|h| {
                    r.headers
                        .iter()
                        .find(|(k, _)| k == h)
                        .and_then(|(_, v)| v.as_deref())
                        .map(text)
                }),
                body: r.value.as_deref(),
            },
        }
    }
}

fn no_registry(what: &str) -> MessageRejection {
    MessageRejection {
        reason: "no_registry",
        message: format!("the {what} requires schema validation but no schema registry runs"),
    }
}

/// Checks a message that names its schema version in metadata against `subject` (or the
/// subject its `dataschema` URI names).
fn check_named_facts(
    validator: &dyn SchemaValidator,
    subject: &str,
    facts: &SchemaFacts<'_>,
) -> Result<(), MessageRejection> {
    let (subject, version) = named_schema(subject, facts.schema_version.as_deref());
    let named = NamedSchemaMessage {
        subject: &subject,
        version: version.as_deref(),
        content_type: facts.content_type.as_deref(),
        body: facts.body.unwrap_or_default(),
    };
    validator
        .check_named(&named)
        .map_err(|(reason, message)| MessageRejection { reason, message })
}

/// Checks a record routed to queue `queue` that validates with `validation`; counts a
/// refusal under `queue`.
pub fn check_queue_record(
    validator: Option<&dyn SchemaValidator>,
    queue: &str,
    validation: &QueueValidation,
    record: &crate::log::SimpleRecord,
) -> Result<(), MessageRejection> {
    let result = match validator {
        None => Err(no_registry("queue")),
        Some(v) => {
            let subject = validation
                .subject
                .clone()
                .unwrap_or_else(|| format!("{queue}-value"));
            check_named_facts(v, &subject, &MessageView::Record(record).facts())
        }
    };
    if let Err(r) = &result {
        count_rejection("queue", queue, r.reason);
    }
    result
}

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
        self.router().set_schema_validator(validator.clone());
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
        message: MessageView<'_>,
    ) -> Result<(), MessageRejection> {
        let Some(subject) = validation_subject(exchange, arguments) else {
            return Ok(());
        };
        let result = match self.inner.schema_validator.get() {
            None => Err(no_registry("exchange")),
            Some(v) => check_named_facts(v.as_ref(), &subject, &message.facts()),
        };
        if let Err(r) = &result {
            count_rejection("exchange", exchange, r.reason);
        }
        result
    }

    /// Checks a message published (not produced by Kafka) to a topic with
    /// `ferry.schema.validation=true`; one bool test for any other topic. A message naming a
    /// schema version in metadata is checked against `<topic>-value` (or the subject its
    /// `dataschema` URI names); one naming none must be in Confluent's wire format, as a
    /// Kafka record must.
    pub fn check_topic_message(
        &self,
        topic: &super::Topic,
        message: MessageView<'_>,
    ) -> Result<(), MessageRejection> {
        if !topic.log_config().schema_validation {
            return Ok(());
        }
        let result = match self.inner.schema_validator.get() {
            None => Err(no_registry("topic")),
            Some(v) => {
                let facts = message.facts();
                if facts.schema_version.is_some() {
                    check_named_facts(v.as_ref(), &format!("{}-value", topic.name()), &facts)
                } else {
                    v.check_framed(topic.name(), facts.body)
                        .map_err(|(reason, message)| MessageRejection { reason, message })
                }
            }
        };
        if let Err(r) = &result {
            count_rejection("topic", topic.name(), r.reason);
        }
        result
    }

    /// Checks a message published to `exchange` in `vhost`: a topic's exchange face (vhost
    /// `/`) by the topic's rules ([`check_topic_message`](Self::check_topic_message)), any
    /// other exchange by its `x-schema-validation` argument.
    pub fn check_published(
        &self,
        vhost: &str,
        exchange: &super::exchange::Exchange,
        message: MessageView<'_>,
    ) -> Result<(), MessageRejection> {
        if exchange.is_topic() && vhost == super::routing::DEFAULT_VHOST {
            if let Some(topic) = self.topic(exchange.name()) {
                return self.check_topic_message(&topic, message);
            }
        }
        self.check_exchange_message(exchange.name(), &exchange.def().arguments, message)
    }
}

impl super::BrokerCore {
    /// Dead-letters a message `exchange` refused (its arguments name the dead-letter exchange,
    /// see [`schema_dead_letter_target`]): published to that exchange with an `x-death` entry
    /// of reason `schema` and the refusal in [`SCHEMA_ERROR_HEADER`]. `None` when the exchange
    /// nacks refusals instead; a dead-letter exchange that does not exist drops the message,
    /// as RabbitMQ's dead-lettering does.
    pub async fn dead_letter_refused(
        &self,
        vhost: &str,
        exchange: &str,
        arguments: &serde_json::Value,
        message: super::message::Message,
        refused: &MessageRejection,
    ) -> Option<super::routing::Published> {
        let (dlx, routing_key) = schema_dead_letter_target(arguments)?;
        let mut record = message.into_record();
        let original_key = record
            .key
            .as_ref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        let death = serde_json::json!([{
            "queue": "",
            "reason": "schema",
            "count": 1,
            "exchange": exchange,
            "routing-keys": [original_key],
            "time": self.clock().now_ms().max(0) / 1000,
            "first": true,
            "error": refused.message,
        }]);
        record
            .headers
            .retain(|(k, _)| k != super::routing::DEATH_HEADER && k != SCHEMA_ERROR_HEADER);
        record.headers.push((
            super::routing::DEATH_HEADER.to_string(),
            Some(Bytes::from(death.to_string())),
        ));
        record.headers.push((
            SCHEMA_ERROR_HEADER.to_string(),
            Some(Bytes::from(refused.message.clone())),
        ));
        if let Some(key) = routing_key {
            record.key = Some(Bytes::from(key));
        }
        metrics::counter!("ferry_messages_dead_lettered_total", "reason" => "schema").increment(1);
        match self.router().publish_now(vhost, &dlx, record).await {
            Ok(published) => Some(published),
            Err(e) => {
                tracing::debug!(exchange, error = %e, "dead-lettering a refused message dropped it");
                Some(super::routing::Published::default())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn queue_arguments() {
        let parse = |v: serde_json::Value| {
            QueueValidation::from_arguments(v.as_object().expect("an object"))
        };
        assert_eq!(parse(json!({})), Ok(None));
        assert_eq!(parse(json!({"x-schema-validation": false})), Ok(None));
        assert_eq!(parse(json!({"x-schema-validation": "off"})), Ok(None));
        assert_eq!(
            parse(json!({"x-schema-validation": true})),
            Ok(Some(QueueValidation::default()))
        );
        assert_eq!(
            parse(json!({"x-schema-validation": "dead-letter", "x-schema-subject": "s"})),
            Ok(Some(QueueValidation {
                subject: Some("s".into()),
                dead_letter: true
            }))
        );
        assert!(parse(json!({"x-schema-validation": 1})).is_err());
        assert!(parse(json!({"x-schema-validation": true, "x-schema-subject": 2})).is_err());
    }

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
