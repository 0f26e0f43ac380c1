//! Deliveries on a channel: basic.qos, basic.consume (a task per consumer that pulls from its
//! queue's log while it has credit, or a stream consumer for stream queues), basic.cancel,
//! basic.get, and the direct reply-to pseudo-queue.

use super::*;
use crate::broker::connections::ConsumerState;

impl Channel {
    /// basic.consume on `amq.rabbitmq.reply-to`: registers this channel for direct replies.
    pub(super) async fn consume_replies(
        &mut self,
        m: basic::Consume,
        out: &Out,
    ) -> Result<(), AmqpError> {
        if !m.no_ack {
            return Err(AmqpError::channel(406, "reply consumer cannot acknowledge"));
        }
        if self.reply.is_some() {
            return Err(AmqpError::channel(406, "reply consumer already set"));
        }
        let tag = if m.consumer_tag.as_str().is_empty() {
            format!("amq.ctag-{}", random_tag())
        } else {
            m.consumer_tag.as_str().to_string()
        };
        let shared = self.shared.clone();
        let token = reply_to::register(reply_to::Requester {
            out: out.clone(),
            channel: self.id,
            consumer_tag: tag.clone(),
            next_tag: Arc::new(move || {
                let mut book = shared.book.lock();
                book.next_tag += 1;
                book.next_tag
            }),
        });
        self.reply = Some((token, tag.clone()));
        if !m.nowait {
            out.method(
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: tag.into(),
                })),
            )
            .await;
        }
        Ok(())
    }

    /// basic.qos.
    pub fn qos(&mut self, m: &basic::Qos) {
        let mut book = self.shared.book.lock();
        if m.global {
            book.global_prefetch = m.prefetch_count;
        } else {
            book.consumer_prefetch = m.prefetch_count;
        }
        drop(book);
        self.shared.bump();
    }

    /// basic.consume: registers a consumer task. Returns the consumer tag.
    pub async fn consume(
        &mut self,
        core: &BrokerCore,
        vhost: &str,
        connection_id: u64,
        m: basic::Consume,
        out: &Out,
    ) -> Result<(), AmqpError> {
        if m.queue.as_str() == reply_to::PSEUDO_QUEUE {
            return self.consume_replies(m, out).await;
        }
        if stream_consumer::is_stream(core, vhost, m.queue.as_str()) {
            return self.consume_stream(core, vhost, m, out).await;
        }
        let queue = accessible_queue(core, vhost, m.queue.as_str(), connection_id)?;
        if m.exclusive && queue.consumer_count() > 0 {
            return Err(AmqpError::channel(
                403,
                format!("queue '{}' in vhost '{vhost}' in exclusive use", m.queue),
            ));
        }
        let tag = if m.consumer_tag.as_str().is_empty() {
            format!("amq.ctag-{}", random_tag())
        } else {
            m.consumer_tag.as_str().to_string()
        };
        let consumer_args = convert::table_to_json(&m.arguments);
        // A consumer's own circuit breaker (x-circuit-breaker-*), overriding the queue's.
        let breaker = consumer_args
            .as_object()
            .map(crate::broker::breaker::BreakerPolicy::from_arguments)
            .transpose()
            .map_err(|e| AmqpError::channel(406, e))?
            .flatten();
        // Consumer priorities: any integer, higher first (RabbitMQ refuses other types).
        let priority = match consumer_args.get("x-priority") {
            None => 0,
            Some(v) => v
                .as_i64()
                .map(|p| p.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32)
                .ok_or_else(|| AmqpError::channel(406, format!("invalid arg 'x-priority': {v}")))?,
        };
        if self.consumers.contains_key(&tag) || self.streams.contains_key(&tag) {
            return Err(AmqpError::connection(
                530,
                format!("attempt to reuse consumer tag '{tag}'"),
            ));
        }
        if !m.nowait {
            out.method(
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: tag.clone().into(),
                })),
            )
            .await;
        }
        let id = queue.add_consumer_with(priority, breaker);
        let prefetch = self.shared.book.lock().consumer_prefetch;
        out.connection.consumer_added(
            self.id,
            &tag,
            ConsumerState {
                queue: queue.name().to_string(),
                ack_required: !m.no_ack,
                exclusive: m.exclusive,
                prefetch_count: prefetch,
            },
        );
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run_consumer(ConsumerTask {
            channel: self.id,
            out: out.clone(),
            shared: self.shared.clone(),
            queue: queue.clone(),
            tag: tag.clone(),
            id,
            no_ack: m.no_ack,
            prefetch,
            stop: stop_rx,
        }));
        self.consumers.insert(
            tag,
            Consumer {
                queue,
                id,
                stop,
                task,
            },
        );
        Ok(())
    }

    /// basic.consume on a stream (see [`stream_consumer`]).
    pub(super) async fn consume_stream(
        &mut self,
        core: &BrokerCore,
        vhost: &str,
        m: basic::Consume,
        out: &Out,
    ) -> Result<(), AmqpError> {
        let tag = if m.consumer_tag.as_str().is_empty() {
            format!("amq.ctag-{}", random_tag())
        } else {
            m.consumer_tag.as_str().to_string()
        };
        if self.consumers.contains_key(&tag) || self.streams.contains_key(&tag) {
            return Err(AmqpError::connection(
                530,
                format!("attempt to reuse consumer tag '{tag}'"),
            ));
        }
        let prefetch = self.shared.book.lock().consumer_prefetch;
        let request = stream_consumer::ConsumeRequest {
            vhost,
            name: m.queue.as_str(),
            tag: tag.clone(),
            no_ack: m.no_ack,
            nowait: m.nowait,
            arguments: &m.arguments,
            prefetch,
        };
        let consumer =
            stream_consumer::start(core, self.id, out, self.shared.clone(), request).await?;
        out.connection.consumer_added(
            self.id,
            &tag,
            ConsumerState {
                queue: m.queue.as_str().to_string(),
                ack_required: !m.no_ack,
                exclusive: m.exclusive,
                prefetch_count: prefetch,
            },
        );
        self.streams.insert(tag, consumer);
        Ok(())
    }

    /// basic.cancel: stops the consumer; its unacked deliveries stay unacked.
    pub async fn cancel(&mut self, core: &BrokerCore, tag: &str) {
        if let Some(s) = self.streams.remove(tag) {
            s.stop().await;
        }
        if self.reply.as_ref().is_some_and(|(_, t)| t == tag) {
            if let Some((token, _)) = self.reply.take() {
                reply_to::unregister(&token);
            }
        }
        if let Some(c) = self.consumers.remove(tag) {
            let _ = c.stop.send(true);
            let _ = c.task.await;
            core.router().consumer_removed(&c.queue, c.id).await;
        }
    }

    /// basic.get.
    pub async fn get(
        &mut self,
        core: &BrokerCore,
        vhost: &str,
        connection_id: u64,
        m: basic::Get,
        out: &Out,
    ) -> Result<(), AmqpError> {
        if stream_consumer::is_stream(core, vhost, m.queue.as_str()) {
            return Err(stream_consumer::refuse_get(vhost, m.queue.as_str()));
        }
        let queue = accessible_queue(core, vhost, m.queue.as_str(), connection_id)?;
        queue.touch();
        // Methods on a channel take effect in order: a publish this channel just made to the
        // queue must be visible to this get, so wait for the queue's pending appends.
        queue.log().barrier().await;
        let msgs = queue
            .take(1, m.no_ack)
            .map_err(|e| AmqpError::connection(541, e.to_string()))?;
        let mut b = BytesMut::new();
        match msgs.into_iter().next() {
            None => encode_method(
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
                &mut b,
            ),
            Some(msg) => {
                crate::observe::metrics::record_delivered(1, usize::from(msg.redelivered));
                let tag = self.shared.record(&queue, msg.offset, None, m.no_ack);
                let span = deliver_span(queue.name(), "", tag, msg.redelivered, &msg.record);
                let _in = span.enter();
                let mut o = convert::from_record(&msg.record);
                if queue.limits().quorum {
                    o.properties = convert::with_delivery_count(o.properties, msg.delivery_count);
                }
                encode_method(
                    self.id,
                    AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                        delivery_tag: tag,
                        redelivered: msg.redelivered,
                        exchange: o.exchange,
                        routing_key: o.routing_key,
                        message_count: queue.message_count().min(u64::from(u32::MAX)) as u32,
                    })),
                    &mut b,
                );
                encode_content(self.id, o.properties, &o.body, out.frame_max, &mut b);
            }
        }
        let _ = out.send(b.freeze()).await;
        Ok(())
    }
}

pub(super) struct ConsumerTask {
    channel: u16,
    out: Out,
    shared: Arc<Shared>,
    queue: Arc<Queue>,
    tag: String,
    /// The queue's id for this consumer (priorities, single active consumer).
    id: u64,
    no_ack: bool,
    prefetch: u16,
    stop: watch::Receiver<bool>,
}

pub(super) async fn run_consumer(mut t: ConsumerTask) {
    let mut appends = t.queue.subscribe_appends();
    let mut ready = t.queue.subscribe_ready();
    let mut credit = t.shared.credit.subscribe();
    loop {
        if *t.stop.borrow_and_update() {
            return;
        }
        appends.borrow_and_update();
        ready.borrow_and_update();
        credit.borrow_and_update();
        if t.queue.is_deleted() {
            // consumer_cancel_notify: tell the client its consumer is gone.
            t.out.cancel_consumer(t.channel, &t.tag, &mut t.stop).await;
            return;
        }
        let n = t.shared.credit_for(&t.tag, t.prefetch, t.no_ack);
        t.queue.set_credit(t.id, n > 0);
        if n > 0 && t.queue.may_take(t.id) {
            match t.queue.take_for(t.id, n, t.no_ack) {
                Ok(msgs) if !msgs.is_empty() => {
                    t.out.metrics.deliveries(&msgs);
                    let mut b = BytesMut::new();
                    for msg in msgs {
                        let tag = t
                            .shared
                            .record(&t.queue, msg.offset, Some(&t.tag), t.no_ack);
                        let span =
                            deliver_span(t.queue.name(), &t.tag, tag, msg.redelivered, &msg.record);
                        let _in = span.enter();
                        let mut o = convert::from_record(&msg.record);
                        if t.queue.limits().quorum {
                            o.properties =
                                convert::with_delivery_count(o.properties, msg.delivery_count);
                        }
                        encode_method(
                            t.channel,
                            AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                                consumer_tag: t.tag.clone().into(),
                                delivery_tag: tag,
                                redelivered: msg.redelivered,
                                exchange: o.exchange,
                                routing_key: o.routing_key,
                            })),
                            &mut b,
                        );
                        encode_content(t.channel, o.properties, &o.body, t.out.frame_max, &mut b);
                    }
                    if !t.out.send(b.freeze()).await {
                        return;
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(queue = t.queue.name(), error = %e, "reading a queue for delivery failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        // An open circuit breaker ends by time, not by any event below.
        let breaker_wait = t.queue.breaker_wait(t.id);
        tokio::select! {
            r = appends.changed() => if r.is_err() && !t.queue.is_deleted() { return },
            r = ready.changed() => if r.is_err() { return },
            r = credit.changed() => if r.is_err() { return },
            r = t.stop.changed() => if r.is_err() { return },
            _ = async {
                match breaker_wait {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}

/// The `deliver` span of one delivery (basic.deliver or basic.get-ok).
pub(super) fn deliver_span(
    queue: &str,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    record: &crate::log::SimpleRecord,
) -> tracing::Span {
    let span = tracing::debug_span!(
        "deliver",
        protocol = "amqp",
        queue,
        consumer_tag,
        delivery_tag,
        redelivered,
        message_id = tracing::field::Empty,
        correlation_id = tracing::field::Empty,
        causation_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    record_event_fields(
        &span,
        || crate::broker::event::EventMetadata::from_record(record),
        true,
    );
    span
}
