//! [`EventPublisher`]: publish an event and return once the broker confirmed it durable.
//!
//! Resend and dedup: the event id is fixed (a UUIDv7 unless the caller gave one) before the
//! first attempt. If the connection fails before the confirm arrives, the publisher reconnects
//! (with the connection's backoff) and sends the same message again; the broker drops the
//! repeat by id where the destination deduplicates (queue argument
//! `x-message-deduplication`, topic config `ferry.dedup.window.ms`), so a blip neither loses
//! nor duplicates the event.

use bytes::Bytes;
use serde::Serialize;

use super::connection::{unexpected, NativeClientError, NativeConnection};
use super::event::EventMetadata;
use crate::proto::v1::{self, publish::Destination as Wire, request, response};

/// Where an event goes.
#[derive(Debug, Clone)]
pub enum Destination {
    /// A topic; the key picks the partition unless one is given.
    Topic {
        topic: String,
        partition: Option<i32>,
        key: Option<Bytes>,
    },
    /// An exchange (empty: the default exchange, routing key = queue name) in vhost `/`.
    Exchange {
        exchange: String,
        routing_key: String,
    },
}

/// Destination and headers of a publish.
#[derive(Debug, Clone)]
pub struct PublishConfig {
    pub destination: Destination,
    /// Extra message headers (besides the metadata's attributes).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Fail with `UNROUTABLE` if an exchange publish matches no queue.
    pub mandatory: bool,
}

impl PublishConfig {
    pub fn topic(topic: &str) -> Self {
        Self::to(Destination::Topic {
            topic: topic.into(),
            partition: None,
            key: None,
        })
    }

    pub fn topic_key(topic: &str, key: &[u8]) -> Self {
        Self::to(Destination::Topic {
            topic: topic.into(),
            partition: None,
            key: Some(Bytes::copy_from_slice(key)),
        })
    }

    pub fn exchange(exchange: &str, routing_key: &str) -> Self {
        Self::to(Destination::Exchange {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
        })
    }

    /// The default exchange: straight to `queue`.
    pub fn queue(queue: &str) -> Self {
        Self::exchange("", queue)
    }

    fn to(destination: Destination) -> Self {
        Self {
            destination,
            headers: Vec::new(),
            mandatory: false,
        }
    }
}

/// What the broker confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishReceipt {
    pub id: String,
    /// Topic publishes: partition and offset (-1 when not known or deduplicated).
    pub partition: i32,
    pub offset: i64,
    /// Exchange publishes: queues that took a copy.
    pub queues: u32,
    /// The broker already had this id (a resend it deduplicated).
    pub duplicate: bool,
    /// Times the publish was sent again after a connection failure.
    pub resent: u32,
}

/// Publishes events as JSON over a [`NativeConnection`]. Cheap to clone.
#[derive(Clone)]
pub struct EventPublisher {
    conn: NativeConnection,
}

impl EventPublisher {
    pub fn new(conn: NativeConnection) -> Self {
        Self { conn }
    }

    pub fn connection(&self) -> &NativeConnection {
        &self.conn
    }

    /// Publishes `event` (as JSON) and returns once it is durable.
    pub async fn publish(
        &self,
        event: &impl Serialize,
        metadata: EventMetadata,
        config: &PublishConfig,
    ) -> Result<PublishReceipt, NativeClientError> {
        let payload =
            serde_json::to_vec(event).map_err(|e| NativeClientError::Codec(e.to_string()))?;
        self.publish_bytes(payload, "application/json", metadata, config, "")
            .await
    }

    /// Publishes a payload already encoded (`content_type` names its format).
    pub async fn publish_bytes(
        &self,
        payload: Vec<u8>,
        content_type: &str,
        metadata: EventMetadata,
        config: &PublishConfig,
        reply_to: &str,
    ) -> Result<PublishReceipt, NativeClientError> {
        let req = publish_request(payload, content_type, metadata, config, reply_to);
        match self.call_resending(&req).await? {
            (response::Result::Published(p), resent) => Ok(receipt(p, resent)),
            (other, _) => Err(unexpected(&other)),
        }
    }

    /// Publishes several events (payloads already encoded as `content_type`) to one
    /// destination in one request; the broker confirms them together, after one write. Ids
    /// are fixed before sending, so a resend after a connection loss is deduplicated as for
    /// [`publish`](Self::publish). Not atomic: on an error, earlier events may be stored.
    pub async fn publish_batch(
        &self,
        events: Vec<(Vec<u8>, EventMetadata)>,
        content_type: &str,
        config: &PublishConfig,
    ) -> Result<Vec<PublishReceipt>, NativeClientError> {
        let req = publish_batch_request(events, content_type, config);
        match self.call_resending(&req).await? {
            (response::Result::PublishedBatch(b), resent) => {
                Ok(b.results.into_iter().map(|p| receipt(p, resent)).collect())
            }
            (other, _) => Err(unexpected(&other)),
        }
    }

    /// Calls `req`, sending it again on a new connection when the connection failed before
    /// the answer came (the caller fixed the ids, so the broker can drop repeats).
    async fn call_resending(
        &self,
        req: &v1::Request,
    ) -> Result<(response::Result, u32), NativeClientError> {
        let attempts = self.conn.options().backoff.attempts.max(1);
        let mut resent = 0;
        loop {
            match self.conn.call_publish(req).await {
                Ok(r) => return Ok((r, resent)),
                // The confirm may have been lost with the connection: send the same message
                // (same id) again on a new one.
                Err(NativeClientError::Connection(e)) if resent + 1 < attempts => {
                    tracing::debug!(error = %e, "publish interrupted; resending");
                    resent += 1;
                    // No need to drop the connection here: the next call replaces it if it
                    // is closed, and closing it would fail other callers' calls on it.
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The `Publish` request [`EventPublisher::publish_bytes`] sends (with an id: a UUIDv7 if
/// `metadata` has none); also for clients that write their own frames, as `ferry bench native`
/// does.
pub(crate) fn publish_request(
    payload: Vec<u8>,
    content_type: &str,
    mut metadata: EventMetadata,
    config: &PublishConfig,
    reply_to: &str,
) -> v1::Request {
    metadata.ensure_id();
    request(payload, content_type, &metadata, config, reply_to)
}

fn request(
    payload: Vec<u8>,
    content_type: &str,
    metadata: &EventMetadata,
    config: &PublishConfig,
    reply_to: &str,
) -> v1::Request {
    let (destination, key) = destination(config);
    v1::Request {
        op: Some(request::Op::Publish(v1::Publish {
            destination: Some(destination),
            message: Some(message(
                payload,
                key,
                content_type,
                metadata,
                config,
                reply_to,
            )),
        })),
    }
}

/// The wire destination of `config`, and the record key it implies.
fn destination(config: &PublishConfig) -> (Wire, Vec<u8>) {
    match &config.destination {
        Destination::Topic {
            topic,
            partition,
            key,
        } => (
            Wire::Topic(v1::TopicDestination {
                topic: topic.clone(),
                partition: *partition,
            }),
            key.as_ref().map(|k| k.to_vec()).unwrap_or_default(),
        ),
        Destination::Exchange {
            exchange,
            routing_key,
        } => (
            Wire::Exchange(v1::ExchangeDestination {
                vhost: String::new(),
                exchange: exchange.clone(),
                routing_key: routing_key.clone(),
                mandatory: config.mandatory,
            }),
            Vec::new(),
        ),
    }
}

fn message(
    payload: Vec<u8>,
    key: Vec<u8>,
    content_type: &str,
    metadata: &EventMetadata,
    config: &PublishConfig,
    reply_to: &str,
) -> v1::Message {
    let mut headers: Vec<v1::Header> = metadata
        .attributes
        .iter()
        .map(|(k, v)| v1::Header {
            key: k.clone(),
            value: v.as_bytes().to_vec(),
        })
        .collect();
    headers.extend(config.headers.iter().map(|(k, v)| v1::Header {
        key: k.clone(),
        value: v.clone(),
    }));
    v1::Message {
        metadata: Some(metadata.to_wire(content_type, reply_to)),
        key,
        payload,
        headers,
    }
}

/// The `PublishBatch` request [`EventPublisher::publish_batch`] sends (ids as for
/// [`publish_request`]).
pub(crate) fn publish_batch_request(
    events: Vec<(Vec<u8>, EventMetadata)>,
    content_type: &str,
    config: &PublishConfig,
) -> v1::Request {
    let events = events
        .into_iter()
        .map(|(payload, mut metadata)| {
            metadata.ensure_id();
            (payload, metadata)
        })
        .collect();
    batch_request(events, content_type, config)
}

/// Many events to one destination as one `PublishBatch` request.
fn batch_request(
    events: Vec<(Vec<u8>, EventMetadata)>,
    content_type: &str,
    config: &PublishConfig,
) -> v1::Request {
    let (wire, key) = destination(config);
    let destination = match wire {
        Wire::Topic(t) => v1::publish_batch::Destination::Topic(t),
        Wire::Exchange(e) => v1::publish_batch::Destination::Exchange(e),
    };
    let messages = events
        .into_iter()
        .map(|(payload, metadata)| {
            message(payload, key.clone(), content_type, &metadata, config, "")
        })
        .collect();
    v1::Request {
        op: Some(request::Op::PublishBatch(v1::PublishBatch {
            destination: Some(destination),
            messages,
        })),
    }
}

fn receipt(p: v1::PublishResult, resent: u32) -> PublishReceipt {
    PublishReceipt {
        id: p.id,
        partition: p.partition,
        offset: p.offset,
        queues: p.queues,
        duplicate: p.duplicate,
        resent,
    }
}
