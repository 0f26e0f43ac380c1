//! Declaring and deleting exchanges and queues with RabbitMQ's equivalence rules, exclusive and auto-delete lifetimes, purge.

use super::*;

impl RouterInner {
    /// Declares (or with `passive`, checks) an exchange.
    pub async fn declare_exchange(
        &self,
        def: ExchangeDef,
        passive: bool,
    ) -> Result<Arc<Exchange>, RoutingError> {
        let _admin = self.admin.lock().await;
        if def.name.is_empty() {
            // The default exchange always exists and cannot be redeclared.
            return if passive {
                Ok(Arc::new(Exchange::new(
                    ExchangeDef {
                        kind: "direct".into(),
                        durable: true,
                        ..def
                    },
                    ExchangeKind::Direct,
                )))
            } else {
                Err(RoutingError::AccessRefused(
                    "operation not permitted on the default exchange".into(),
                ))
            };
        }
        if let Some(existing) = self.exchange(&def.vhost, &def.name) {
            if passive {
                return Ok(existing);
            }
            let e = existing.def();
            for (field, now, asked) in [
                ("type", e.kind.clone(), def.kind.clone()),
                ("durable", e.durable.to_string(), def.durable.to_string()),
                (
                    "auto_delete",
                    e.auto_delete.to_string(),
                    def.auto_delete.to_string(),
                ),
                ("internal", e.internal.to_string(), def.internal.to_string()),
            ] {
                if now != asked {
                    return Err(RoutingError::PreconditionFailed(format!(
                        "inequivalent arg '{field}' for exchange '{}' in vhost '{}': received '{asked}' but current is '{now}'",
                        def.name, def.vhost
                    )));
                }
            }
            if !args_equivalent(&e.arguments, &def.arguments) {
                return Err(RoutingError::PreconditionFailed(format!(
                    "inequivalent arguments for exchange '{}' in vhost '{}'",
                    def.name, def.vhost
                )));
            }
            return Ok(existing);
        }
        if passive {
            return Err(RoutingError::not_found("exchange", &def.vhost, &def.name));
        }
        if def.name.starts_with("amq.") {
            return Err(RoutingError::AccessRefused(format!(
                "exchange name '{}' contains reserved prefix 'amq.*'",
                def.name
            )));
        }
        let kind = exchange_kind(&def).ok_or_else(|| {
            if def.kind == DELAYED_MESSAGE_EXCHANGE {
                RoutingError::PreconditionFailed(
                    "Invalid argument, 'x-delayed-type' must be an existing exchange type".into(),
                )
            } else {
                RoutingError::InvalidRequest(format!("invalid exchange type '{}'", def.kind))
            }
        })?;
        if def.durable {
            self.meta.put_exchange(&def)?;
            // Declarations are rare and a client may rely on them at once: make them durable
            // before declare-ok rather than at sled's next periodic flush.
            self.meta.flush()?;
        }
        let ex = Arc::new(Exchange::new(def, kind));
        self.exchanges
            .write()
            .insert(key(&ex.def().vhost, ex.name()), ex.clone());
        Ok(ex)
    }

    /// Deletes an exchange and every binding from or to it.
    pub async fn delete_exchange(
        &self,
        vhost: &str,
        name: &str,
        if_unused: bool,
    ) -> Result<(), RoutingError> {
        let _admin = self.admin.lock().await;
        if name.is_empty() || name.starts_with("amq.") {
            return Err(RoutingError::AccessRefused(format!(
                "operation not permitted on exchange '{name}'"
            )));
        }
        let Some(ex) = self.exchange(vhost, name) else {
            // RabbitMQ answers delete-ok for a missing exchange.
            return Ok(());
        };
        if ex.is_topic() {
            // The exchange is the topic's other face: deleting it would delete the topic's
            // data, which only the topic admin APIs (Kafka DeleteTopics) may do.
            return Err(RoutingError::AccessRefused(format!(
                "exchange '{name}' in vhost '{vhost}' is a topic; delete the topic instead"
            )));
        }
        if if_unused && ex.has_bindings() {
            return Err(RoutingError::PreconditionFailed(format!(
                "exchange '{name}' in vhost '{vhost}' in use"
            )));
        }
        self.remove_exchange(&ex)
    }

    /// Removes an exchange, its bindings and the bindings to it; then auto-deletes what that
    /// left without bindings. Called with the admin lock held.
    pub(super) fn remove_exchange(&self, ex: &Arc<Exchange>) -> Result<(), RoutingError> {
        let (vhost, name) = (ex.def().vhost.clone(), ex.name().to_string());
        if ex.def().durable {
            for b in ex.bindings() {
                self.meta.delete_binding(&b)?;
            }
            if !ex.is_topic() {
                self.meta.delete_exchange(&vhost, &name)?;
            }
            self.meta.flush()?;
        }
        let mut emptied = Vec::new();
        let others: Vec<_> = self.exchanges.read().values().cloned().collect();
        for other in others {
            let gone = other.remove_bindings_to(DestinationKind::Exchange, &name);
            for b in &gone {
                let _ = self.meta.delete_binding(b);
            }
            if !gone.is_empty() {
                emptied.push(other);
            }
        }
        self.exchanges.write().remove(&key(&vhost, &name));
        self.auto_delete_exchanges(emptied);
        Ok(())
    }

    /// Deletes the auto-delete exchanges among `sources` that lost their last binding
    /// (RabbitMQ: an auto-delete exchange goes when its last binding goes, not before it had
    /// one). Cascades through exchange-to-exchange bindings.
    pub(super) fn auto_delete_exchanges(&self, sources: Vec<Arc<Exchange>>) {
        for ex in sources {
            let still_there = self.exchange(&ex.def().vhost, ex.name()).is_some();
            if ex.def().auto_delete && !ex.has_bindings() && still_there {
                if let Err(e) = self.remove_exchange(&ex) {
                    tracing::warn!(exchange = ex.name(), error = %e, "auto-deleting an exchange failed");
                }
            }
        }
    }

    pub(super) async fn declare_queue_inner(
        &self,
        spec: QueueSpec,
    ) -> Result<QueueDeclared, RoutingError> {
        let _admin = self.admin.lock().await;
        let name = if spec.name.is_empty() && !spec.passive {
            server_queue_name()
        } else {
            spec.name.clone()
        };
        if let Some(q) = self.queue(&spec.vhost, &name) {
            if let Some(owner) = q.exclusive_owner() {
                if owner != spec.connection {
                    return Err(RoutingError::ResourceLocked {
                        vhost: spec.vhost,
                        name,
                    });
                }
            }
            if !spec.passive {
                let d = q.def();
                let exclusive_now = q.exclusive_owner().is_some();
                for (field, now, asked) in [
                    ("durable", d.durable, spec.durable),
                    ("exclusive", exclusive_now, spec.exclusive_owner.is_some()),
                    ("auto_delete", d.auto_delete, spec.auto_delete),
                ] {
                    if now != asked {
                        return Err(RoutingError::PreconditionFailed(format!(
                            "inequivalent arg '{field}' for queue '{name}' in vhost '{}': received '{asked}' but current is '{now}'",
                            spec.vhost
                        )));
                    }
                }
                if !args_equivalent(&d.arguments, &spec.arguments) {
                    return Err(RoutingError::PreconditionFailed(format!(
                        "inequivalent arguments for queue '{name}' in vhost '{}'",
                        spec.vhost
                    )));
                }
            }
            // A re-declare (passive or not) counts as use for x-expires (RabbitMQ).
            q.touch();
            return Ok(QueueDeclared {
                message_count: q.message_count(),
                consumer_count: q.consumer_count(),
                queue: q,
                fresh: false,
            });
        }
        if spec.passive {
            return Err(RoutingError::NotFound {
                kind: "queue",
                vhost: spec.vhost,
                name,
            });
        }
        if name.starts_with("amq.")
            && !spec.name.is_empty()
            && !(spec.server_named && name.starts_with("amq.gen-"))
            && spec.connection != INTERNAL_CONNECTION
        {
            return Err(RoutingError::AccessRefused(format!(
                "queue name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        let limits = QueueLimits::from_arguments(&spec.arguments).map_err(|e| {
            RoutingError::PreconditionFailed(format!(
                "{e} for queue '{name}' in vhost '{}'",
                spec.vhost
            ))
        })?;
        if limits.quorum {
            // RabbitMQ's quorum queues are always durable, never exclusive or auto-delete.
            let refused = if !spec.durable {
                Some("must be durable")
            } else if spec.exclusive_owner.is_some() {
                Some("cannot be exclusive")
            } else if spec.auto_delete {
                Some("cannot be auto-delete")
            } else {
                None
            };
            if let Some(why) = refused {
                return Err(RoutingError::PreconditionFailed(format!(
                    "quorum queue '{name}' in vhost '{}' {why}",
                    spec.vhost
                )));
            }
        }
        let max_queues = self.max_queues.load(std::sync::atomic::Ordering::Relaxed);
        if max_queues != 0 && self.queues.read().len() >= max_queues {
            // RabbitMQ's words for its cluster-wide queue limit, so client code that matches
            // on them keeps working.
            return Err(RoutingError::PreconditionFailed(format!(
                "cannot declare queue '{name}' in vhost '{}': queue limit in cluster ({max_queues}) is reached",
                spec.vhost
            )));
        }
        let def = QueueDef {
            vhost: spec.vhost.clone(),
            name: name.clone(),
            durable: spec.durable,
            auto_delete: spec.auto_delete,
            arguments: spec.arguments,
            storage_dir: long_name_storage_dir(&spec.vhost, &name),
        };
        // A directory left by a transient queue of the same name (or a crash mid-delete) must
        // not leak its messages into the new queue.
        remove_dir_if_present(&self.queue_dir(&def))?;
        // An exclusive queue dies with its connection, so it never outlives a restart
        // (RabbitMQ treats durable exclusive queues the same way).
        if def.durable && spec.exclusive_owner.is_none() {
            self.meta.put_queue(&def)?;
            self.meta.flush()?;
        }
        let queue = Arc::new(self.open_queue(def, spec.exclusive_owner, None)?);
        self.queues
            .write()
            .insert(key(&spec.vhost, &name), queue.clone());
        // Every queue is bound to the default exchange by its name; that binding is implicit.
        Ok(QueueDeclared {
            queue,
            message_count: 0,
            consumer_count: 0,
            fresh: true,
        })
    }

    /// Deletes a queue; returns how many ready messages it held.
    pub async fn delete_queue(
        &self,
        vhost: &str,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        connection: Option<u64>,
    ) -> Result<u64, RoutingError> {
        let _admin = self.admin.lock().await;
        let Some(q) = self.queue(vhost, name) else {
            return Err(RoutingError::not_found("queue", vhost, name));
        };
        if let (Some(owner), Some(conn)) = (q.exclusive_owner(), connection) {
            if owner != conn {
                return Err(RoutingError::ResourceLocked {
                    vhost: vhost.into(),
                    name: name.into(),
                });
            }
        }
        if if_unused && q.consumer_count() > 0 {
            return Err(RoutingError::PreconditionFailed(format!(
                "queue '{name}' in vhost '{vhost}' in use"
            )));
        }
        let count = q.message_count();
        if if_empty && count > 0 {
            return Err(RoutingError::PreconditionFailed(format!(
                "queue '{name}' in vhost '{vhost}' is not empty"
            )));
        }
        self.remove_queue(&q).await?;
        Ok(count)
    }

    pub(super) async fn remove_queue(&self, q: &Arc<Queue>) -> Result<(), RoutingError> {
        let (vhost, name) = (q.vhost().to_string(), q.name().to_string());
        if q.persistent() {
            self.meta.delete_queue(&vhost, &name)?;
        }
        let exchanges: Vec<_> = self.exchanges.read().values().cloned().collect();
        let mut emptied = Vec::new();
        for ex in exchanges {
            let gone = ex.remove_bindings_to(DestinationKind::Queue, &name);
            for b in &gone {
                if b.vhost == vhost && q.persistent() {
                    self.meta.delete_binding(b)?;
                }
            }
            if !gone.is_empty() {
                emptied.push(ex);
            }
        }
        self.queues.write().remove(&key(&vhost, &name));
        self.auto_delete_exchanges(emptied);
        q.mark_deleted();
        q.log().shutdown().await;
        remove_dir_if_present(q.dir())?;
        Ok(())
    }

    /// Deletes the exclusive queues of a connection that closed.
    pub async fn connection_closed(&self, connection: u64) {
        let owned: Vec<_> = self
            .queues
            .read()
            .values()
            .filter(|q| q.exclusive_owner() == Some(connection))
            .cloned()
            .collect();
        for q in owned {
            let _admin = self.admin.lock().await;
            if let Err(e) = self.remove_queue(&q).await {
                tracing::warn!(queue = q.name(), error = %e, "deleting an exclusive queue failed");
            }
        }
    }

    /// Called after a consumer of `q` went away: an auto-delete queue with no consumers left
    /// is deleted (RabbitMQ deletes it once it had at least one consumer).
    pub async fn consumer_removed(&self, q: &Arc<Queue>, consumer: u64) {
        if q.remove_consumer(consumer) == 0 && q.auto_delete() && !q.is_deleted() {
            let _admin = self.admin.lock().await;
            if q.consumer_count() == 0 && !q.is_deleted() {
                if let Err(e) = self.remove_queue(q).await {
                    tracing::warn!(queue = q.name(), error = %e, "auto-deleting a queue failed");
                }
            }
        }
    }

    /// Settles every ready message of a queue; returns how many.
    pub fn purge_queue(&self, vhost: &str, name: &str) -> Result<u64, RoutingError> {
        let q = self.existing_queue(vhost, name)?;
        Ok(q.purge())
    }
}

/// The exchange type of RabbitMQ's delayed-message plugin. Ferry delays messages on every
/// exchange ([`crate::broker::delayed`]), so this type only names the routing of its
/// `x-delayed-type` argument; declarations written for the plugin work unchanged.
pub const DELAYED_MESSAGE_EXCHANGE: &str = "x-delayed-message";

/// How an exchange definition routes: its type, or for `x-delayed-message` its
/// `x-delayed-type`.
pub(super) fn exchange_kind(def: &ExchangeDef) -> Option<ExchangeKind> {
    if def.kind == DELAYED_MESSAGE_EXCHANGE {
        return def
            .arguments
            .get("x-delayed-type")
            .and_then(Value::as_str)
            .and_then(ExchangeKind::parse);
    }
    ExchangeKind::parse(&def.kind)
}

/// Declaration arguments compare equal when both are empty (absent, null or `{}`) or equal.
pub(super) fn args_equivalent(a: &Value, b: &Value) -> bool {
    let empty = |v: &Value| match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        _ => false,
    };
    (empty(a) && empty(b)) || a == b
}

/// A fresh name for a queue the client asked the server to name (RabbitMQ's `amq.gen-…`).
pub fn server_queue_name() -> String {
    format!("amq.gen-{}", random_suffix())
}

pub(super) fn random_suffix() -> String {
    let bytes = crate::util::random_bytes16();
    let mut s = String::with_capacity(22);
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for b in bytes {
        s.push(ALPHABET[(b & 63) as usize] as char);
    }
    s
}
