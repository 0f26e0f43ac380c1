//! Publishing: routing a message through an exchange (and exchange-to-exchange bindings), delayed publishes (`x-delay`), and appending to every matched queue or topic.

use super::*;
use crate::broker::message::{Message, RoutingHeaders};
use crate::broker::schema_check::{
    check_queue_record, MessageRejection, QueueValidation, SCHEMA_ERROR_HEADER,
};

impl RouterInner {
    /// The queues a message reaches from `exchange`, following exchange-to-exchange bindings
    /// (each exchange visited once, so binding cycles end). When the exchange routes the
    /// message nowhere and has an `alternate-exchange` argument, the message goes there
    /// instead (and on to that one's alternate, cycles again ending).
    pub fn route(
        &self,
        vhost: &str,
        exchange: &str,
        routing_key: &str,
        headers: &RoutingHeaders<'_>,
    ) -> Result<Vec<Arc<Queue>>, RoutingError> {
        if exchange.is_empty() {
            return Ok(self.queue(vhost, routing_key).into_iter().collect());
        }
        let mut start = self.existing_exchange(vhost, exchange)?;
        let mut tried = HashSet::new();
        loop {
            let out = self.route_from(vhost, &start, routing_key, headers);
            if !out.is_empty() || !tried.insert(start.name().to_string()) {
                return Ok(out);
            }
            // A missing alternate exchange leaves the message unroutable (RabbitMQ warns).
            let alternate = start
                .def()
                .arguments
                .get("alternate-exchange")
                .and_then(Value::as_str)
                .and_then(|ae| self.exchange(vhost, ae));
            match alternate {
                Some(ae) => start = ae,
                None => return Ok(out),
            }
        }
    }

    /// The queues a record appended to topic exchange `ex` reaches through the exchange's
    /// bindings (topic patterns on the record key), each queue once. Used by the topic
    /// router; publishes never copy through a topic exchange.
    pub fn route_topic_record(&self, ex: &Exchange, routing_key: &str) -> Vec<Arc<Queue>> {
        let vhost = ex.def().vhost.as_str();
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let no_headers = RoutingHeaders::none();
        for (kind, dest) in ex.matches(routing_key, &no_headers) {
            let found: Vec<Arc<Queue>> = match kind {
                DestinationKind::Queue => self.queue(vhost, &dest).into_iter().collect(),
                DestinationKind::Exchange => self
                    .route(vhost, &dest, routing_key, &no_headers)
                    .unwrap_or_default(),
            };
            for q in found {
                if seen.insert(q.name().to_string()) {
                    out.push(q);
                }
            }
        }
        out
    }

    pub(super) fn route_from(
        &self,
        vhost: &str,
        start: &Arc<Exchange>,
        routing_key: &str,
        headers: &RoutingHeaders<'_>,
    ) -> Vec<Arc<Queue>> {
        let mut seen_ex = HashSet::new();
        let mut seen_q = HashSet::new();
        let mut out = Vec::new();
        let mut stack = vec![start.clone()];
        while let Some(ex) = stack.pop() {
            if !seen_ex.insert(ex.name().to_string()) {
                continue;
            }
            if ex.is_topic() {
                // A topic's bindings are served from the topic log by its router task;
                // copying here would deliver twice. (Exchange-to-topic bindings do not
                // append to the topic yet.)
                continue;
            }
            for (kind, dest) in ex.matches(routing_key, headers) {
                match kind {
                    DestinationKind::Queue => {
                        if seen_q.insert(dest.clone()) {
                            if let Some(q) = self.queue(vhost, &dest) {
                                out.push(q);
                            }
                        }
                    }
                    DestinationKind::Exchange => {
                        if let Some(next) = self.exchange(vhost, &dest) {
                            stack.push(next);
                        }
                    }
                }
            }
        }
        out
    }

    /// Publishes a client's message: one with an `x-delay` header goes to the vhost's delay
    /// queue and is routed when due ([`crate::broker::delayed`]); any other is routed now
    /// ([`publish_now`](Self::publish_now)). The message is encoded into its record once,
    /// here; every destination gets that record.
    pub async fn publish(
        &self,
        vhost: &str,
        exchange: &str,
        message: Message,
    ) -> Result<Published, RoutingError> {
        let delay = crate::broker::delayed::delay_of(&message);
        let record = message.into_record();
        match delay {
            Some(delay) => self.publish_delayed(vhost, exchange, record, delay).await,
            None => self.publish_now(vhost, exchange, record).await,
        }
    }

    /// Appends a delayed message to the vhost's delay queue (declared, with its scheduler, on
    /// first use); its confirm follows that append.
    pub(super) async fn publish_delayed(
        &self,
        vhost: &str,
        exchange: &str,
        record: SimpleRecord,
        delay_ms: i64,
    ) -> Result<Published, RoutingError> {
        if !exchange.is_empty() && self.exchange(vhost, exchange).is_none() {
            return Err(RoutingError::not_found("exchange", vhost, exchange));
        }
        let q = self.delay_queue(vhost).await?;
        let due = self.clock.now_ms().saturating_add(delay_ms);
        let stored = crate::broker::delayed::wrap(record, exchange, due);
        let pending = match q.submit(stored).await? {
            Submitted::Appended(p) => vec![Durable::Append(p)],
            Submitted::Duplicate => vec![Durable::repeat_in(q.log())],
            Submitted::Full => Vec::new(),
        };
        Ok(Published {
            pending,
            routed: true,
            ..Published::default()
        })
    }

    /// The vhost's delay queue, declared and its scheduler started on first use.
    pub(super) async fn delay_queue(&self, vhost: &str) -> Result<Arc<Queue>, RoutingError> {
        if let Some(q) = self.queue(vhost, crate::broker::delayed::DELAY_QUEUE) {
            if self.delay_schedulers.lock().contains(vhost) {
                return Ok(q);
            }
        }
        let router = self
            .self_ref
            .get()
            .and_then(std::sync::Weak::upgrade)
            .map(|inner| Router { inner })
            .ok_or_else(|| RoutingError::InvalidRequest("the broker is shutting down".into()))?;
        let declared = router
            .declare_queue(QueueSpec {
                vhost: vhost.to_string(),
                name: crate::broker::delayed::DELAY_QUEUE.to_string(),
                passive: false,
                durable: true,
                exclusive_owner: None,
                auto_delete: false,
                arguments: Value::Object(Map::new()),
                connection: INTERNAL_CONNECTION,
                server_named: false,
            })
            .await?;
        router.start_delay_scheduler(&declared.queue);
        Ok(declared.queue)
    }

    /// Routes a message now and queues an append to every matching queue that accepts it. A
    /// queue that is full with `x-overflow` reject-publish refuses it; with
    /// reject-publish-dlx the refused message is also dead-lettered (reason `maxlen`).
    pub async fn publish_now(
        &self,
        vhost: &str,
        exchange: &str,
        record: SimpleRecord,
    ) -> Result<Published, RoutingError> {
        if vhost == DEFAULT_VHOST && !exchange.is_empty() {
            if let Some(ex) = self.exchange(vhost, exchange).filter(|e| e.is_topic()) {
                let sink = self
                    .topic_sink
                    .get()
                    .ok_or_else(|| RoutingError::not_found("exchange", vhost, exchange))?;
                let copy = sink.submit(ex.name(), record).await?;
                return Ok(Published {
                    pending: vec![copy],
                    routed: true,
                    ..Published::default()
                });
            }
        }
        let queues = {
            let routing_key = record
                .key
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            self.route(vhost, exchange, &routing_key, &RoutingHeaders::of(&record))?
        };
        let mut record = record;
        record.headers.retain(|(k, _)| k != EXCHANGE_HEADER);
        record.headers.insert(
            0,
            (
                EXCHANGE_HEADER.to_string(),
                Some(bytes::Bytes::copy_from_slice(exchange.as_bytes())),
            ),
        );
        let mut out = Published {
            pending: Vec::with_capacity(queues.len()),
            routed: !queues.is_empty(),
            ..Published::default()
        };
        let deaths = death_history(&record);
        // Encoded once; each queue appends its own copy of the bytes (the log patches offsets
        // in place), the last one the original.
        let mut batch = (!queues.is_empty())
            .then(|| crate::broker::queue::encode_one(&record))
            .transpose()?;
        let last = queues.len().saturating_sub(1);
        for (i, q) in queues.into_iter().enumerate() {
            if is_death_cycle(&deaths, q.name()) {
                tracing::debug!(
                    queue = q.name(),
                    "dropping a dead letter that went round a cycle"
                );
                continue;
            }
            if let Some(validation) = &q.limits().schema_validation {
                let validator = self.schema_validator.get().map(|v| v.as_ref());
                if let Err(refused) = check_queue_record(validator, q.name(), validation, &record) {
                    self.refuse_for_schema(&q, validation, &record, refused, &mut out)
                        .await;
                    continue;
                }
            }
            let encoded = match if i == last {
                batch.take()
            } else {
                batch.clone()
            } {
                Some(b) => b,
                None => crate::broker::queue::encode_one(&record)?,
            };
            match q.submit_encoded(&record, encoded).await? {
                Submitted::Appended(p) => out.pending.push(Durable::Append(p)),
                // Already in the queue: confirmed like any routed message, once the original
                // copy is durable.
                Submitted::Duplicate => out.pending.push(Durable::repeat_in(q.log())),
                Submitted::Full => {
                    out.rejected = true;
                    let dlx = q.limits().dead_letter_exchange.clone();
                    if let (Overflow::RejectPublishDlx, Some(dlx)) = (q.limits().overflow, dlx) {
                        metrics::counter!("ferry_messages_dead_lettered_total", "reason" => DeathReason::MaxLen.as_str())
                            .increment(1);
                        self.dead_lettered
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let dead = with_death(
                            record.clone(),
                            &q,
                            DeathReason::MaxLen,
                            self.clock.now_ms(),
                        );
                        let dead = match &q.limits().dead_letter_routing_key {
                            Some(k) => SimpleRecord {
                                key: Some(bytes::Bytes::copy_from_slice(k.as_bytes())),
                                ..dead
                            },
                            None => dead,
                        };
                        let publish = self.publish_now(q.vhost(), &dlx, dead);
                        if let Err(e) = Box::pin(publish).await {
                            tracing::debug!(queue = q.name(), error = %e, "dead-lettering a rejected publish failed");
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// A queue's schema validation refused `record`: with `dead-letter` (and the queue's
    /// `x-dead-letter-exchange`) it is dead-lettered with reason `schema`, the publish
    /// confirmed once the dead letter is durable; otherwise the publish is refused (a nack).
    async fn refuse_for_schema(
        &self,
        q: &Arc<Queue>,
        validation: &QueueValidation,
        record: &SimpleRecord,
        refused: MessageRejection,
        out: &mut Published,
    ) {
        let dlx = q.limits().dead_letter_exchange.clone();
        let Some(dlx) = dlx.filter(|_| validation.dead_letter) else {
            tracing::debug!(
                queue = q.name(),
                reason = refused.reason,
                "{}",
                refused.message
            );
            out.rejected = true;
            out.schema_refused.get_or_insert(refused);
            return;
        };
        metrics::counter!("ferry_messages_dead_lettered_total", "reason" => DeathReason::Schema.as_str())
            .increment(1);
        self.dead_lettered
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut dead = with_death(record.clone(), q, DeathReason::Schema, self.clock.now_ms());
        note_error(&mut dead, &refused.message);
        dead.headers.retain(|(k, _)| k != SCHEMA_ERROR_HEADER);
        dead.headers.push((
            SCHEMA_ERROR_HEADER.to_string(),
            Some(bytes::Bytes::from(refused.message)),
        ));
        if let Some(k) = &q.limits().dead_letter_routing_key {
            dead.key = Some(bytes::Bytes::copy_from_slice(k.as_bytes()));
        }
        match Box::pin(self.publish_now(q.vhost(), &dlx, dead)).await {
            Ok(published) => out.pending.extend(published.pending),
            Err(e) => {
                tracing::debug!(queue = q.name(), error = %e, "dead-lettering a refused message dropped it");
            }
        }
    }
}
