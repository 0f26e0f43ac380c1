//! The remote AMQP 0-9-1 side of a bridge (a RabbitMQ node or cluster, or another Ferry),
//! through lapin.
//!
//! URIs are tried in order until one connects (a cluster's nodes); `amqps://` ones go
//! through [`super::amqps`]. A source declares its
//! queue durable, as RabbitMQ's dynamic shovels do (an exchange source gets an exclusive
//! server-named queue bound with the key), sets `basic.qos` to `src-prefetch-count` and acks
//! with `multiple` up to the last message of each forwarded batch; deliveries it holds when
//! the connection drops are requeued by the remote broker, so nothing is lost, only
//! redelivered. A destination puts its channel in confirm mode for `on-confirm` and waits
//! for every confirm of a batch before the source settles it; a nack fails the batch, which
//! is then sent again (the at-least-once window).
//!
//! Messages cross through the AMQP adapter's one mapping (`protocol::amqp::convert`), so
//! properties, headers, CloudEvents attributes and `traceparent` come out as a Ferry AMQP
//! consumer would see them, and go in as a Ferry AMQP publish would store them.

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer};

use super::definition::{redact, DestSpec, SourceSpec};
use super::runner::{BridgeError, Confirms, Incoming, Token};
use crate::broker::message::Message;
use crate::protocol::amqp::convert;

async fn connect(uris: &[String]) -> Result<(Connection, Channel), String> {
    let mut last = String::from("no URI");
    for uri in uris {
        let connected = if uri.starts_with("amqps://") {
            super::amqps::connect(uri, ConnectionProperties::default()).await
        } else {
            Connection::connect(uri, ConnectionProperties::default())
                .await
                .map_err(|e| e.to_string())
        };
        match connected {
            Ok(conn) => {
                let channel = conn
                    .create_channel()
                    .await
                    .map_err(|e| format!("{}: channel.open: {e}", redact(uri)))?;
                return Ok((conn, channel));
            }
            Err(e) => last = format!("{}: {e}", redact(uri)),
        }
    }
    Err(last)
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

pub struct AmqpSource {
    conn: Connection,
    channel: Channel,
    consumer: Consumer,
    no_ack: bool,
    queue_length: u64,
}

impl AmqpSource {
    pub async fn open(
        uris: &[String],
        source: &SourceSpec,
        prefetch: u16,
        no_ack: bool,
    ) -> Result<Self, BridgeError> {
        let (conn, channel) = connect(uris).await.map_err(BridgeError::Source)?;
        let src = |e: lapin::Error| BridgeError::Source(e.to_string());
        let (queue, queue_length) = match source {
            SourceSpec::Queue(q) => {
                let declared = channel
                    .queue_declare(q.as_str().into(), durable(), FieldTable::default())
                    .await
                    .map_err(src)?;
                (q.clone(), u64::from(declared.message_count()))
            }
            SourceSpec::Exchange { exchange, key } => {
                let declared = channel
                    .queue_declare(
                        "".into(),
                        QueueDeclareOptions {
                            exclusive: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .map_err(src)?;
                let name = declared.name().as_str().to_string();
                channel
                    .queue_bind(
                        name.as_str().into(),
                        exchange.as_str().into(),
                        key.as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(src)?;
                (name, 0)
            }
            SourceSpec::Topic { .. } => {
                return Err(BridgeError::Source("an AMQP source has no topics".into()))
            }
        };
        if !no_ack {
            channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await
                .map_err(src)?;
        }
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "ferry-bridge".into(),
                BasicConsumeOptions {
                    no_ack,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(src)?;
        Ok(Self {
            conn,
            channel,
            consumer,
            no_ack,
            queue_length,
        })
    }

    /// Messages the source queue held when the bridge connected (`src-delete-after:
    /// queue-length`).
    pub fn queue_length(&self) -> u64 {
        self.queue_length
    }

    /// Waits for one delivery, then takes what else has already arrived, up to `max`.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<Incoming>, BridgeError> {
        let mut out = Vec::new();
        let first = self.consumer.next().await;
        let mut next = first;
        loop {
            match next {
                Some(Ok(d)) => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|t| t.as_millis() as i64)
                        .unwrap_or(0);
                    let message = convert::to_message(
                        d.routing_key.as_str(),
                        &d.properties,
                        bytes::Bytes::from(d.data),
                        now,
                    );
                    out.push(Incoming {
                        message,
                        exchange: d.exchange.as_str().to_string(),
                        token: Token::Tag(d.delivery_tag),
                    });
                }
                Some(Err(e)) => return Err(BridgeError::Source(e.to_string())),
                None => {
                    if out.is_empty() {
                        return Err(BridgeError::Source("the consumer was cancelled".into()));
                    }
                    return Ok(out);
                }
            }
            if out.len() >= max {
                return Ok(out);
            }
            match futures::FutureExt::now_or_never(self.consumer.next()) {
                Some(n) => next = n,
                None => return Ok(out),
            }
        }
    }

    /// Acks everything up to the batch's last delivery in one `multiple` ack.
    pub async fn settle(&mut self, tokens: &[Token]) -> Result<(), BridgeError> {
        if self.no_ack {
            return Ok(());
        }
        let Some(last) = tokens.iter().rev().find_map(|t| match t {
            Token::Tag(tag) => Some(*tag),
            _ => None,
        }) else {
            return Ok(());
        };
        self.channel
            .basic_ack(last, BasicAckOptions { multiple: true })
            .await
            .map_err(|e| BridgeError::Source(e.to_string()))
    }

    pub async fn close(self) {
        let _ = self.conn.close(200, "bridge stopped".into()).await;
    }
}

pub struct AmqpSink {
    conn: Connection,
    channel: Channel,
    exchange: String,
    key: Option<String>,
    confirms: bool,
}

impl AmqpSink {
    pub async fn open(
        uris: &[String],
        dest: &DestSpec,
        confirms: bool,
    ) -> Result<Self, BridgeError> {
        let (conn, channel) = connect(uris).await.map_err(BridgeError::Destination)?;
        let dst = |e: lapin::Error| BridgeError::Destination(e.to_string());
        if confirms {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(dst)?;
        }
        let (exchange, key) = match dest {
            DestSpec::Queue(q) => {
                channel
                    .queue_declare(q.as_str().into(), durable(), FieldTable::default())
                    .await
                    .map_err(dst)?;
                (String::new(), Some(q.clone()))
            }
            DestSpec::Exchange { exchange, key } => (exchange.clone(), key.clone()),
            DestSpec::Topic(_) => {
                return Err(BridgeError::Destination(
                    "an AMQP destination has no topics".into(),
                ))
            }
        };
        Ok(Self {
            conn,
            channel,
            exchange,
            key,
            confirms,
        })
    }

    /// Publishes the batch pipelined; with confirms on, what lands once all are acked.
    ///
    /// lapin's `basic_publish` queues the frames (and takes the delivery tag) in its first
    /// poll, then waits until its I/O loop has written them. Awaiting each in turn wrote one
    /// message per wake-up of that loop; instead every publish is polled once, in order (so
    /// frames and delivery tags keep the batch's order), and only then are they awaited, so
    /// the loop writes the batch in a few large writes.
    pub async fn publish(
        &mut self,
        batch: Vec<Message>,
        wait: bool,
    ) -> Result<Confirms, BridgeError> {
        let dst = |e: lapin::Error| BridgeError::Destination(e.to_string());
        let mut outs: Vec<_> = batch
            .into_iter()
            .map(|m| convert::from_record(&m.into_record()))
            .collect();
        let mut writes = Vec::with_capacity(outs.len());
        for out in &mut outs {
            let properties = std::mem::take(&mut out.properties);
            // The publish borrows the body until it is written.
            let out: &convert::Outgoing = out;
            let key = match &self.key {
                Some(k) => k.as_str(),
                None => out.routing_key.as_str(),
            };
            let mut write = Box::pin(self.channel.basic_publish(
                self.exchange.as_str().into(),
                key.into(),
                BasicPublishOptions::default(),
                &out.body,
                properties,
            ));
            match futures::poll!(write.as_mut()) {
                std::task::Poll::Ready(r) => {
                    writes.push(futures::future::Either::Left(futures::future::ready(r)))
                }
                std::task::Poll::Pending => writes.push(futures::future::Either::Right(write)),
            }
        }
        let mut confirms = Vec::with_capacity(writes.len());
        for write in writes {
            confirms.push(write.await.map_err(dst)?);
        }
        Ok(if self.confirms && wait {
            Confirms::Amqp(confirms)
        } else {
            Confirms::None
        })
    }

    pub async fn close(self) {
        let _ = self.conn.close(200, "bridge stopped".into()).await;
    }
}
