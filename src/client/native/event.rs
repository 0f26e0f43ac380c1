//! The SDK's event values: the metadata an application sets on publish, and what a handler
//! receives.

use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::connection::NativeClientError;
use crate::proto::v1;

/// Event metadata. Empty fields are not sent; an empty `id` becomes a fresh UUIDv7 on publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventMetadata {
    pub id: String,
    pub event_type: String,
    pub source: String,
    /// Ms since the epoch; 0 = now.
    pub time_ms: i64,
    pub subject: String,
    pub correlation_id: String,
    pub causation_id: String,
    pub schema_version: String,
    pub traceparent: String,
    pub tracestate: String,
    /// Custom attributes, sent as message headers.
    pub attributes: Vec<(String, String)>,
}

impl EventMetadata {
    /// Metadata with a type and source, the two attributes every event should name.
    pub fn new(event_type: &str, source: &str) -> Self {
        Self {
            event_type: event_type.into(),
            source: source.into(),
            ..Self::default()
        }
    }

    pub fn with_id(mut self, id: &str) -> Self {
        self.id = id.into();
        self
    }

    pub fn with_correlation_id(mut self, id: &str) -> Self {
        self.correlation_id = id.into();
        self
    }

    pub fn with_schema_version(mut self, v: &str) -> Self {
        self.schema_version = v.into();
        self
    }

    pub fn with_traceparent(mut self, tp: &str) -> Self {
        self.traceparent = tp.into();
        self
    }

    pub fn with_attribute(mut self, key: &str, value: &str) -> Self {
        self.attributes.push((key.into(), value.into()));
        self
    }

    /// The id, generating a UUIDv7 if it is empty (so a resend carries the same id).
    pub(crate) fn ensure_id(&mut self) -> &str {
        if self.id.is_empty() {
            self.id = uuid::Uuid::now_v7().to_string();
        }
        &self.id
    }

    pub(crate) fn to_wire(&self, content_type: &str, reply_to: &str) -> v1::EventMetadata {
        v1::EventMetadata {
            id: self.id.clone(),
            r#type: self.event_type.clone(),
            source: self.source.clone(),
            time_ms: self.time_ms,
            subject: self.subject.clone(),
            correlation_id: self.correlation_id.clone(),
            causation_id: self.causation_id.clone(),
            schema_version: self.schema_version.clone(),
            traceparent: self.traceparent.clone(),
            tracestate: self.tracestate.clone(),
            content_type: content_type.into(),
            reply_to: reply_to.into(),
        }
    }
}

/// An event as a handler receives it.
#[derive(Debug, Clone)]
pub struct ReceivedEvent {
    /// Never has an empty id or a zero time: the broker fills them in.
    pub metadata: EventMetadata,
    pub content_type: String,
    /// Where a reply should go (request/reply), if anywhere.
    pub reply_to: String,
    pub payload: Bytes,
    /// Application headers that are not custom attributes of the metadata (every header is
    /// also in `metadata.attributes`).
    pub key: Bytes,
    /// Times the message was handed back before (the retry count; 0 on the first attempt).
    pub retry_count: u32,
    pub redelivered: bool,
    pub exchange: String,
    pub routing_key: String,
    /// Topic subscriptions: where the record is (-1 for queues).
    pub partition: i32,
    pub offset: i64,
    pub(crate) delivery_tag: u64,
}

impl ReceivedEvent {
    pub(crate) fn from_wire(d: v1::Delivery) -> Self {
        let m = d.message.unwrap_or_default();
        let meta = m.metadata.unwrap_or_default();
        Self {
            metadata: EventMetadata {
                id: meta.id,
                event_type: meta.r#type,
                source: meta.source,
                time_ms: meta.time_ms,
                subject: meta.subject,
                correlation_id: meta.correlation_id,
                causation_id: meta.causation_id,
                schema_version: meta.schema_version,
                traceparent: meta.traceparent,
                tracestate: meta.tracestate,
                attributes: m
                    .headers
                    .into_iter()
                    .map(|h| (h.key, String::from_utf8_lossy(&h.value).into_owned()))
                    .collect(),
            },
            content_type: meta.content_type,
            reply_to: meta.reply_to,
            payload: Bytes::from(m.payload),
            key: Bytes::from(m.key),
            retry_count: d.delivery_count,
            redelivered: d.redelivered,
            exchange: d.exchange,
            routing_key: d.routing_key,
            partition: d.partition,
            offset: d.offset,
            delivery_tag: d.delivery_tag,
        }
    }

    /// The payload decoded from JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, NativeClientError> {
        serde_json::from_slice(&self.payload).map_err(|e| NativeClientError::Codec(e.to_string()))
    }

    /// A custom attribute (message header) by name.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.metadata
            .attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}
