//! Publishing on a channel: assembling basic.publish content (method, header, body frames),
//! routing the whole message through the core, transactions (tx.select/commit/rollback), and
//! publisher confirms, which a per-channel task sends in publish order once appends are durable.

use super::*;
use crate::broker::schema_check::MessageView;

impl Channel {
    /// basic.publish: remember it until its content arrives.
    pub fn start_publish(&mut self, m: basic::Publish) {
        self.publishing = Some(Publishing {
            exchange: m.exchange.as_str().to_string(),
            routing_key: m.routing_key.as_str().to_string(),
            mandatory: m.mandatory,
            header: None,
            body: BytesMut::new(),
        });
    }

    /// A content header frame for the pending publish.
    pub fn content_header(
        &mut self,
        size: u64,
        props: AMQPProperties,
    ) -> Result<ContentState, AmqpError> {
        let Some(p) = self.publishing.as_mut() else {
            return Err(AmqpError::connection(
                505,
                "content header without basic.publish",
            ));
        };
        if p.header.is_some() {
            return Err(AmqpError::connection(505, "second content header"));
        }
        if size > MAX_MESSAGE_BYTES as u64 {
            self.publishing = None;
            return Err(AmqpError::channel(
                406,
                format!(
                    "message size {size} is larger than configured max size {MAX_MESSAGE_BYTES}"
                ),
            ));
        }
        // Grow with what arrives rather than trusting the announced size up front.
        p.body.reserve((size as usize).min(1 << 20));
        p.header = Some((size, props));
        Ok(if size == 0 {
            ContentState::Done
        } else {
            ContentState::Incomplete
        })
    }

    /// A body frame for the pending publish.
    pub fn content_body(&mut self, chunk: &[u8]) -> Result<ContentState, AmqpError> {
        let Some(p) = self.publishing.as_mut() else {
            return Err(AmqpError::connection(
                505,
                "content body without basic.publish",
            ));
        };
        let Some((size, _)) = &p.header else {
            return Err(AmqpError::connection(505, "content body before its header"));
        };
        let size = *size;
        if p.body.len() as u64 + chunk.len() as u64 > size {
            return Err(AmqpError::connection(
                501,
                format!("content body longer than the announced {size} bytes"),
            ));
        }
        p.body.extend_from_slice(chunk);
        Ok(if p.body.len() as u64 == size {
            ContentState::Done
        } else {
            ContentState::Incomplete
        })
    }

    /// Routes and appends the completed message; returns it with basic.return if mandatory and
    /// unroutable; hands the appends to the confirm task in confirm mode.
    pub async fn finish_publish(
        &mut self,
        core: &BrokerCore,
        vhost: &str,
        out: &Out,
    ) -> Result<(), AmqpError> {
        let Some(p) = self.publishing.take() else {
            return Ok(());
        };
        let Some((_, props)) = p.header else {
            return Ok(());
        };
        let msg = Staged {
            exchange: p.exchange,
            routing_key: p.routing_key,
            mandatory: p.mandatory,
            props,
            body: p.body.freeze(),
        };
        if let Some(tx) = self.tx.as_mut() {
            // In a transaction the exchange must exist now; routing happens at commit.
            if !msg.exchange.is_empty() && core.router().exchange(vhost, &msg.exchange).is_none() {
                return Err(AmqpError::channel(
                    404,
                    format!("no exchange '{}' in vhost '{vhost}'", msg.exchange),
                ));
            }
            tx.publishes.push(msg);
            return Ok(());
        }
        // Waiting here holds up the connection's read loop: backpressure on a flood.
        let want = msg.body.len().clamp(1, PUBLISH_BUDGET) as u32;
        let permit = out
            .publish_budget
            .clone()
            .acquire_many_owned(want)
            .await
            .ok();
        let span = publish_span(&msg);
        let published = self.route(core, vhost, out, msg).instrument(span).await?;
        if let Some(c) = self.confirms.as_mut() {
            c.next += 1;
            let _ =
                c.tx.send((c.next, published.pending, published.rejected, permit));
        } else if !published.pending.is_empty() {
            tokio::spawn(async move {
                for p in published.pending {
                    let _ = p.wait().await;
                }
                drop(permit);
            });
        }
        Ok(())
    }

    /// Routes one message into its queues (basic.return if mandatory and unroutable); the
    /// returned appends resolve once durable.
    pub(super) async fn route(
        &self,
        core: &BrokerCore,
        vhost: &str,
        out: &Out,
        msg: Staged,
    ) -> Result<Published, AmqpError> {
        let mut msg = msg;
        convert::check_expiration(&msg.props)?;
        if msg.props.reply_to().as_ref().map(|r| r.as_str()) == Some(reply_to::PSEUDO_QUEUE) {
            let Some((token, _)) = &self.reply else {
                return Err(AmqpError::channel(
                    406,
                    "fast reply consumer does not exist",
                ));
            };
            msg.props = msg
                .props
                .with_reply_to(format!("{}{token}", reply_to::ADDRESS_PREFIX).into());
        }
        if msg.exchange.is_empty() && msg.routing_key.starts_with(reply_to::ADDRESS_PREFIX) {
            return Ok(self.reply_directly(out, msg).await);
        }
        let message = convert::to_message(
            &msg.routing_key,
            &msg.props,
            msg.body.clone(),
            core.clock().now_ms(),
        );
        record_event_fields(&tracing::Span::current(), || message.metadata(), false);
        if msg.exchange.is_empty() && stream_consumer::is_stream(core, vhost, &msg.routing_key) {
            let published =
                stream_consumer::publish(core, &msg.routing_key, message.into_record()).await?;
            out.metrics.publish(true, msg.mandatory);
            return Ok(published);
        }
        if let Some(ex) = (!msg.exchange.is_empty())
            .then(|| core.router().exchange(vhost, &msg.exchange))
            .flatten()
        {
            if ex.def().internal {
                return Err(AmqpError::channel(
                    403,
                    format!("cannot publish to internal exchange '{}'", msg.exchange),
                ));
            }
            if let Err(refused) = core.check_published(vhost, &ex, MessageView::Message(&message)) {
                let arguments = &ex.def().arguments;
                if let Some(dead_lettered) = core
                    .dead_letter_refused(vhost, &msg.exchange, arguments, message, &refused)
                    .await
                {
                    // Confirmed once the dead letter is durable, as RabbitMQ's DLX does.
                    return Ok(dead_lettered);
                }
                // Like x-overflow reject-publish: nacked in confirm mode, dropped otherwise.
                tracing::debug!(exchange = %msg.exchange, reason = refused.reason, "{}", refused.message);
                return Ok(Published {
                    rejected: true,
                    ..Published::default()
                });
            }
        }
        observe_in_catalog(core, out, &msg.exchange, &message);
        let route_span = tracing::debug_span!(
            "route",
            exchange = %msg.exchange,
            routed = tracing::field::Empty
        );
        let published = core
            .router()
            .publish(vhost, &msg.exchange, message)
            .instrument(route_span.clone())
            .await?;
        route_span.record("routed", published.routed);
        out.metrics.publish(published.routed, msg.mandatory);
        if !published.routed && msg.mandatory {
            let mut b = BytesMut::new();
            encode_method(
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                    reply_code: 312,
                    reply_text: "NO_ROUTE".into(),
                    exchange: msg.exchange.clone().into(),
                    routing_key: msg.routing_key.clone().into(),
                })),
                &mut b,
            );
            encode_content(self.id, msg.props, &msg.body, out.frame_max, &mut b);
            let _ = out.send(b.freeze()).await;
        }
        Ok(published)
    }

    /// Delivers a reply published to `amq.rabbitmq.reply-to.<token>` straight to that
    /// requester's consumer; unroutable (returned if mandatory) once the requester is gone.
    pub(super) async fn reply_directly(&self, out: &Out, msg: Staged) -> Published {
        let Some(r) = reply_to::lookup(&msg.routing_key) else {
            if msg.mandatory {
                let mut b = BytesMut::new();
                encode_method(
                    self.id,
                    AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                        reply_code: 312,
                        reply_text: "NO_ROUTE".into(),
                        exchange: "".into(),
                        routing_key: msg.routing_key.clone().into(),
                    })),
                    &mut b,
                );
                encode_content(self.id, msg.props, &msg.body, out.frame_max, &mut b);
                let _ = out.send(b.freeze()).await;
            }
            return Published::default();
        };
        let mut b = BytesMut::new();
        encode_method(
            r.channel,
            AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: r.consumer_tag.clone().into(),
                delivery_tag: (r.next_tag)(),
                redelivered: false,
                exchange: "".into(),
                routing_key: msg.routing_key.clone().into(),
            })),
            &mut b,
        );
        encode_content(r.channel, msg.props, &msg.body, r.out.frame_max, &mut b);
        let _ = r.out.send(b.freeze()).await;
        Published {
            routed: true,
            ..Published::default()
        }
    }

    /// tx.select.
    pub fn tx_select(&mut self) -> Result<(), AmqpError> {
        if self.confirms.is_some() {
            return Err(AmqpError::channel(
                406,
                "cannot switch from confirm to tx mode",
            ));
        }
        self.tx.get_or_insert_with(TxBuffer::default);
        Ok(())
    }

    /// tx.commit: routes the staged publishes, waits until they are durable, then applies the
    /// staged acks, nacks and rejects.
    pub async fn tx_commit(
        &mut self,
        core: &BrokerCore,
        vhost: &str,
        out: &Out,
    ) -> Result<(), AmqpError> {
        let Some(tx) = self.tx.as_mut() else {
            return Err(AmqpError::channel(406, "channel is not transactional"));
        };
        let TxBuffer { publishes, settles } = std::mem::take(tx);
        let mut pending = Vec::new();
        for msg in publishes {
            let span = publish_span(&msg);
            pending.extend(
                self.route(core, vhost, out, msg)
                    .instrument(span)
                    .await?
                    .pending,
            );
        }
        for p in pending {
            p.wait()
                .await
                .map_err(|e| AmqpError::connection(541, e.to_string()))?;
        }
        for (tag, multiple, requeue) in settles {
            self.settle_now(core, tag, multiple, requeue)?;
        }
        Ok(())
    }

    /// tx.rollback: drops what was staged (deliveries acked in the transaction stay unacked).
    pub fn tx_rollback(&mut self) -> Result<(), AmqpError> {
        let Some(tx) = self.tx.as_mut() else {
            return Err(AmqpError::channel(406, "channel is not transactional"));
        };
        *tx = TxBuffer::default();
        Ok(())
    }

    /// confirm.select.
    pub fn select_confirms(&mut self, out: &Out) -> Result<(), AmqpError> {
        if self.tx.is_some() {
            return Err(AmqpError::channel(
                406,
                "cannot switch from tx to confirm mode",
            ));
        }
        if self.confirms.is_some() {
            return Ok(());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(confirm_task(self.id, rx, out.clone()));
        self.confirms = Some(Confirms { next: 0, tx, task });
        Ok(())
    }

    pub fn confirm_select_ok(m: &confirm::Select) -> Option<AMQPClass> {
        (!m.nowait).then_some(AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(
            confirm::SelectOk {},
        )))
    }
}

/// Whether every append of a publish became durable; a publish a full queue refused is
/// nacked after the other queues' appends settle (RabbitMQ nacks if any queue rejected it).
/// The publish's share of the connection's publish budget is released once its appends
/// settle.
pub(super) async fn wait_all(pending: Vec<Durable>, rejected: bool, permit: PublishPermit) -> bool {
    let mut ok = !rejected;
    for p in pending {
        if let Err(e) = p.wait().await {
            tracing::warn!(error = %e, "append for a confirmed publish failed");
            ok = false;
        }
    }

    drop(permit);
    ok
}

pub(super) async fn confirm_task(
    channel: u16,
    mut rx: mpsc::UnboundedReceiver<(u64, Vec<Durable>, bool, PublishPermit)>,
    out: Out,
) {
    type Fut = std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>;
    let mut carried: Option<(u64, Fut)> = None;
    loop {
        let (seq, fut) = match carried.take() {
            Some(x) => x,
            None => match rx.recv().await {
                Some((s, p, rejected, permit)) => {
                    (s, Box::pin(wait_all(p, rejected, permit)) as Fut)
                }
                None => return,
            },
        };
        if !fut.await {
            let nack = AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag: seq,
                multiple: false,
                requeue: false,
            }));
            if !out.method(channel, nack).await {
                return;
            }
            continue;
        }
        // Coalesce the confirms whose appends are already durable into one multiple ack.
        let mut last = seq;
        while let Ok((s, p, rejected, permit)) = rx.try_recv() {
            let mut f: Fut = Box::pin(wait_all(p, rejected, permit));
            match (&mut f).now_or_never() {
                Some(true) => last = s,
                Some(false) => {
                    carried = Some((s, Box::pin(async { false })));
                    break;
                }
                None => {
                    carried = Some((s, f));
                    break;
                }
            }
        }
        metrics::counter!("ferry_messages_confirmed_total").increment(last - seq + 1);
        let ack = AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: last,
            multiple: last > seq,
        }));
        if !out.method(channel, ack).await {
            return;
        }
    }
}

// --- event tracing -------------------------------------------------------------------------
//
// Spans are DEBUG so a broker at the default INFO level pays one callsite check per message;
// the event fields are computed only when the span is enabled.

/// The `publish` span of one AMQP message; its event fields are filled in by
/// [`record_event_fields`] once the stored record (with any broker-assigned id) exists.
pub(super) fn publish_span(msg: &Staged) -> tracing::Span {
    let span = tracing::debug_span!(
        "publish",
        protocol = "amqp",
        exchange = %msg.exchange,
        routing_key = %msg.routing_key,
        message_id = tracing::field::Empty,
        correlation_id = tracing::field::Empty,
        causation_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    // The parent must be set before the span is first entered (OTLP export only).
    if !span.is_disabled() {
        if let Some(headers) = msg.props.headers() {
            let text = |k: &str| match headers.inner().get(k) {
                Some(amq_protocol::types::AMQPValue::LongString(s)) => {
                    std::str::from_utf8(s.as_bytes()).ok()
                }
                Some(amq_protocol::types::AMQPValue::ShortString(s)) => Some(s.as_str()),
                _ => None,
            };
            if let Some(tp) = text(crate::broker::event::TRACEPARENT_HEADER) {
                let ts = text(crate::broker::event::TRACESTATE_HEADER);
                crate::observe::otlp::set_remote_parent(&span, tp, ts);
            }
        }
    }

    span
}

/// Records a record's event metadata on `span`; a no-op (nothing computed) for a disabled
/// span or one without these fields. `link_parent` makes the span a child of the message's
/// `traceparent` (only before the span is first entered).
pub(super) fn record_event_fields(
    span: &tracing::Span,
    metadata: impl FnOnce() -> crate::broker::event::EventMetadata,
    link_parent: bool,
) {
    if span.is_disabled() || !span.has_field("message_id") {
        return;
    }

    let m = metadata();
    span.record("message_id", m.id.as_str());
    if let Some(c) = m.correlation_id.as_deref() {
        span.record("correlation_id", c);
    }

    if let Some(c) = m.causation_id.as_deref() {
        span.record("causation_id", c);
    }

    if let Some(t) = m.trace_id() {
        span.record("trace_id", t);
        if let Some(tp) = m.traceparent.as_deref().filter(|_| link_parent) {
            crate::observe::otlp::set_remote_parent(span, tp, m.tracestate.as_deref());
        }
    }
}

/// Counts a publish in the event catalog, reading the message's metadata only when the
/// exchange is due a sample (see `broker::catalog`). The default exchange is `amq.default`.
fn observe_in_catalog(
    core: &BrokerCore,
    out: &Out,
    exchange: &str,
    message: &crate::broker::message::Message,
) {
    use crate::broker::catalog::{FlowKind, SeenEvent};
    let name = if exchange.is_empty() {
        "amq.default"
    } else {
        exchange
    };
    core.catalog()
        .observe(FlowKind::Exchange, name, core.clock().now_ms(), 1, || {
            let text = |h: &str| {
                message
                    .header(h)
                    .and_then(|v| v.as_bytes())
                    .map(|b| String::from_utf8_lossy(b).into_owned())
            };
            let Some(event_type) = message.event_type() else {
                return Vec::new();
            };
            let producer = text("amqp.app-id")
                .map(|a| format!("amqp:{a}"))
                .or_else(|| out.connection.user().map(|u| format!("amqp-user:{u}")));
            vec![SeenEvent {
                event_type,
                schema_version: message.schema_version(),
                content_type: text("amqp.content-type"),
                producer,
                example: message.value.clone(),
            }]
        });
}
