//! Request/reply over queues: [`Requester`] owns an exclusive, server-named reply queue and a
//! subscription to it; each request carries `reply_to` = that queue and a fresh correlation id,
//! and the reply whose correlation id matches completes it. A handler answers with
//! [`super::EventContext::reply`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::connection::{read_result, unexpected, NativeClientError, NativeConnection};
use super::event::{EventMetadata, ReceivedEvent};
use super::publisher::{EventPublisher, PublishConfig};
use crate::proto::framed;
use crate::proto::v1::{self, request, response, settle::Outcome};

type Waiting = Arc<Mutex<HashMap<String, oneshot::Sender<ReceivedEvent>>>>;

/// Sends requests and waits for their replies. Dropping it ends its reply subscription.
pub struct Requester {
    publisher: EventPublisher,
    reply_queue: String,
    waiting: Waiting,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Requester {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Requester {
    /// Declares the reply queue and subscribes to it.
    pub async fn new(conn: NativeConnection) -> Result<Self, NativeClientError> {
        let declare = v1::Request {
            op: Some(request::Op::DeclareQueue(v1::DeclareQueue {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            })),
        };
        let reply_queue = match conn.call(&declare).await? {
            response::Result::QueueDeclared(d) => d.name,
            other => return Err(unexpected(&other)),
        };
        let subscribe = v1::Request {
            op: Some(request::Op::SubscribeQueue(v1::SubscribeQueue {
                vhost: String::new(),
                queue: reply_queue.clone(),
                prefetch: 1000,
            })),
        };
        let (mut send, mut reader) = conn.open_subscription(&subscribe).await?;
        let waiting: Waiting = Arc::default();
        let task = {
            let waiting = waiting.clone();
            tokio::spawn(async move {
                while let Ok(response::Result::Delivery(d)) = read_result(&mut reader).await {
                    let event = ReceivedEvent::from_wire(d);
                    let settle = v1::Request {
                        op: Some(request::Op::Settle(v1::Settle {
                            delivery_tag: event.delivery_tag,
                            outcome: Outcome::Ack as i32,
                            reason: String::new(),
                        })),
                    };
                    if framed::write(&mut send, &settle).await.is_err() {
                        break;
                    }
                    // A reply nobody waits for any more (timed out) is dropped.
                    if let Some(tx) = waiting.lock().remove(&event.metadata.correlation_id) {
                        let _ = tx.send(event);
                    }
                }
            })
        };
        Ok(Self {
            publisher: EventPublisher::new(conn),
            reply_queue,
            waiting,
            task,
        })
    }

    /// The reply queue's name.
    pub fn reply_queue(&self) -> &str {
        &self.reply_queue
    }

    /// Publishes `event` as a request and waits up to `timeout` for its reply. The
    /// correlation id is `metadata`'s, else the request's id.
    pub async fn request(
        &self,
        event: &impl serde::Serialize,
        mut metadata: EventMetadata,
        config: &PublishConfig,
        timeout: Duration,
    ) -> Result<ReceivedEvent, NativeClientError> {
        let id = metadata.ensure_id().to_string();
        if metadata.correlation_id.is_empty() {
            metadata.correlation_id = id;
        }
        let correlation = metadata.correlation_id.clone();
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().insert(correlation.clone(), tx);
        let payload =
            serde_json::to_vec(event).map_err(|e| NativeClientError::Codec(e.to_string()))?;
        let sent = self
            .publisher
            .publish_bytes(
                payload,
                "application/json",
                metadata,
                config,
                &self.reply_queue,
            )
            .await;
        if let Err(e) = sent {
            self.waiting.lock().remove(&correlation);
            return Err(e);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(NativeClientError::Connection(
                "the reply subscription ended".into(),
            )),
            Err(_) => {
                self.waiting.lock().remove(&correlation);
                Err(NativeClientError::Timeout(timeout))
            }
        }
    }
}
