//! Dispatch of methods on an open connection: channel 0 methods, channel open/close, and every
//! channel method routed to its handler or to the channel's own state.

use amq_protocol::protocol::{basic, channel, connection, AMQPClass};

use super::Conn;
use crate::protocol::amqp::channel::Channel;
use crate::protocol::amqp::convert::AmqpError;
use crate::protocol::amqp::handlers::{self, Ctx};

impl Conn {
    pub(super) async fn connection_method(&mut self, m: AMQPClass) -> Result<bool, AmqpError> {
        match m {
            AMQPClass::Connection(connection::AMQPMethod::Close(_)) => {
                self.cleanup().await;
                self.send(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                )
                .await;
                Ok(false)
            }
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => Ok(false),
            AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(_)) => {
                self.send(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(
                        connection::UpdateSecretOk {},
                    )),
                )
                .await;
                Ok(true)
            }
            _ => Err(AmqpError::connection(503, "unexpected method on channel 0")),
        }
    }

    pub(super) async fn channel_method(&mut self, ch: u16, m: AMQPClass) -> Result<(), AmqpError> {
        // channel.open / close / close-ok manage the map itself.
        match &m {
            AMQPClass::Channel(channel::AMQPMethod::Open(_)) => {
                if self.channels.contains_key(&ch) {
                    return Err(AmqpError::connection(
                        504,
                        format!("channel {ch} is already open"),
                    ));
                }
                if ch > self.channel_max {
                    return Err(AmqpError::connection(
                        530,
                        format!("channel {ch} exceeds channel_max {}", self.channel_max),
                    ));
                }
                self.channels.insert(ch, Channel::new(ch));
                self.registration.channel_opened(ch);
                self.send(
                    ch,
                    AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
                )
                .await;
                return Ok(());
            }
            AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                if let Some(mut c) = self.channels.remove(&ch) {
                    c.shutdown(&self.core).await;
                }
                self.registration.channel_closed(ch);
                self.send(
                    ch,
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                )
                .await;
                return Ok(());
            }
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => {
                if self.channels.get(&ch).is_some_and(|c| c.closing) {
                    self.channels.remove(&ch);
                    self.registration.channel_closed(ch);
                }
                return Ok(());
            }
            _ => {}
        }
        let Some(c) = self.channels.get_mut(&ch) else {
            return Err(AmqpError::connection(
                504,
                format!("channel {ch} is not open"),
            ));
        };
        if c.closing {
            return Ok(());
        }
        if c.expects_content() {
            return Err(AmqpError::connection(
                505,
                "method frame while content was expected",
            ));
        }
        let mut m = m;
        // RabbitMQ checks configure on the name it generates for a server-named queue, so a
        // user without configure on `amq.gen-…` cannot declare one: name it before the check.
        let server_named = match &mut m {
            AMQPClass::Queue(amq_protocol::protocol::queue::AMQPMethod::Declare(d))
                if d.queue.as_str().is_empty() && !d.passive =>
            {
                d.queue = crate::broker::routing::server_queue_name().into();
                true
            }
            _ => false,
        };
        crate::protocol::amqp::auth::authorize(
            &self.core,
            self.peer.ip(),
            &self.vhost,
            &self.user,
            &mut self.permissions,
            &m,
        )?;
        let ctx = Ctx {
            core: &self.core,
            vhost: &self.vhost,
            connection_id: self.id,
        };
        // Queue and exchange methods may cancel consumers of this connection (queue.delete):
        // their reply goes out before any basic.cancel they cause (see `Out::replies_first`).
        // Never held across a wait for a consumer task, which may be waiting for it.
        let _replies_first = match &m {
            AMQPClass::Queue(_) | AMQPClass::Exchange(_) => {
                Some(self.out.replies_first.clone().write_owned().await)
            }
            _ => None,
        };
        let reply = match m {
            AMQPClass::Channel(channel::AMQPMethod::Flow(f)) => Some(AMQPClass::Channel(
                channel::AMQPMethod::FlowOk(channel::FlowOk { active: f.active }),
            )),
            AMQPClass::Exchange(e) => {
                use amq_protocol::protocol::exchange::AMQPMethod as E;
                match e {
                    E::Declare(m) => handlers::exchange::declare(&ctx, m).await?,
                    E::Delete(m) => handlers::exchange::delete(&ctx, m).await?,
                    E::Bind(m) => handlers::exchange::bind(&ctx, m).await?,
                    E::Unbind(m) => handlers::exchange::unbind(&ctx, m).await?,
                    _ => return Err(AmqpError::connection(503, "unexpected exchange method")),
                }
            }
            AMQPClass::Queue(q) => {
                use amq_protocol::protocol::queue::AMQPMethod as Q;
                match q {
                    Q::Declare(m) => handlers::queue::declare(&ctx, m, server_named).await?,
                    Q::Bind(m) => handlers::queue::bind(&ctx, m).await?,
                    Q::Unbind(m) => handlers::queue::unbind(&ctx, m).await?,
                    Q::Purge(m) => handlers::queue::purge(&ctx, m).await?,
                    Q::Delete(m) => handlers::queue::delete(&ctx, m).await?,
                    _ => return Err(AmqpError::connection(503, "unexpected queue method")),
                }
            }
            AMQPClass::Basic(b) => {
                use basic::AMQPMethod as B;
                match b {
                    B::Publish(m) => {
                        self.published = true;
                        c.start_publish(m);
                        None
                    }
                    B::Qos(m) => {
                        c.qos(&m);
                        self.registration
                            .channel_prefetch(ch, m.prefetch_count, m.global);
                        Some(AMQPClass::Basic(B::QosOk(basic::QosOk {})))
                    }
                    B::Consume(m) => {
                        c.consume(&self.core, &self.vhost, self.id, m, &self.out)
                            .await?;
                        None
                    }
                    B::Cancel(m) => {
                        c.cancel(&self.core, m.consumer_tag.as_str()).await;
                        self.registration
                            .consumer_removed(ch, m.consumer_tag.as_str());
                        (!m.nowait).then(|| {
                            AMQPClass::Basic(B::CancelOk(basic::CancelOk {
                                consumer_tag: m.consumer_tag.clone(),
                            }))
                        })
                    }
                    B::Get(m) => {
                        c.get(&self.core, &self.vhost, self.id, m, &self.out)
                            .await?;
                        None
                    }
                    B::Ack(m) => {
                        c.settle(&self.core, m.delivery_tag, m.multiple, None)?;
                        None
                    }
                    B::Nack(m) => {
                        c.settle(&self.core, m.delivery_tag, m.multiple, Some(m.requeue))?;
                        None
                    }
                    B::Reject(m) => {
                        c.settle(&self.core, m.delivery_tag, false, Some(m.requeue))?;
                        None
                    }
                    B::Recover(_) => {
                        c.recover();
                        Some(AMQPClass::Basic(B::RecoverOk(basic::RecoverOk {})))
                    }
                    B::RecoverAsync(_) => {
                        c.recover();
                        None
                    }
                    _ => return Err(AmqpError::connection(503, "unexpected basic method")),
                }
            }
            AMQPClass::Confirm(amq_protocol::protocol::confirm::AMQPMethod::Select(m)) => {
                c.select_confirms(&self.out)?;
                Channel::confirm_select_ok(&m)
            }
            AMQPClass::Tx(t) => {
                use amq_protocol::protocol::tx;
                match t {
                    tx::AMQPMethod::Select(_) => {
                        c.tx_select()?;
                        Some(AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})))
                    }
                    tx::AMQPMethod::Commit(_) => {
                        c.tx_commit(&self.core, &self.vhost, &self.out).await?;
                        Some(AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})))
                    }
                    tx::AMQPMethod::Rollback(_) => {
                        c.tx_rollback()?;
                        Some(AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})))
                    }
                    _ => return Err(AmqpError::connection(503, "unexpected tx method")),
                }
            }
            _ => return Err(AmqpError::connection(503, "unexpected method")),
        };
        if let Some(r) = reply {
            self.send(ch, r).await;
        }
        Ok(())
    }
}
