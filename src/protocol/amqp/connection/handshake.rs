//! The connection handshake: connection.start with our capabilities, authentication,
//! tune/tune-ok negotiation of frame_max, channel_max and heartbeat, and connection.open with the
//! vhost permission check.

use amq_protocol::protocol::{connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};

use super::{Conn, Phase};
use crate::protocol::amqp::convert::AmqpError;

/// The smallest frame_max a client may negotiate (AMQP's frame-min-size is 4096 in 0-9-1).
const MIN_FRAME_MAX: u32 = 4096;

impl Conn {
    pub(super) async fn send_start(&self) {
        let mut caps = FieldTable::default();
        for cap in [
            "publisher_confirms",
            "exchange_exchange_bindings",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
            "consumer_priorities",
            "authentication_failure_close",
            "per_consumer_qos",
            "direct_reply_to",
        ] {
            caps.insert(cap.into(), AMQPValue::Boolean(true));
        }
        let mut props = FieldTable::default();
        let s = |v: &str| AMQPValue::LongString(LongString::from(v.as_bytes().to_vec()));
        props.insert("product".into(), s("Ferry"));
        props.insert("version".into(), s(env!("CARGO_PKG_VERSION")));
        props.insert(
            "platform".into(),
            s(&format!("Rust / {}", std::env::consts::OS)),
        );
        props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: props,
                mechanisms: crate::protocol::amqp::auth::mechanisms(&self.security).into(),
                locales: "en_US".into(),
            })),
        )
        .await;
    }

    pub(super) async fn handshake(&mut self, ch: u16, m: AMQPClass) -> Result<bool, AmqpError> {
        if ch != 0 {
            return Err(AmqpError::connection(
                504,
                "channel used before the connection is open",
            ));
        }
        match (&self.phase, m) {
            (Phase::AwaitStartOk, AMQPClass::Connection(connection::AMQPMethod::StartOk(s))) => {
                self.user = crate::protocol::amqp::auth::authenticate(
                    &self.core,
                    self.peer,
                    &self.security,
                    &s,
                )
                .await?;
                self.registration.set_user(&self.user);
                // Clients send it as a long string; a short one is accepted too.
                match s.client_properties.inner().get("connection_name") {
                    Some(AMQPValue::LongString(name)) => self
                        .registration
                        .set_client_name(&String::from_utf8_lossy(name.as_bytes())),
                    Some(AMQPValue::ShortString(name)) => {
                        self.registration.set_client_name(name.as_str())
                    }
                    _ => {}
                }
                self.wants_blocked = matches!(
                    s.client_properties.inner().get("capabilities"),
                    Some(AMQPValue::FieldTable(caps))
                        if matches!(caps.inner().get("connection.blocked"), Some(AMQPValue::Boolean(true)))
                );
                self.phase = Phase::AwaitTuneOk;
                self.send(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
                        channel_max: self.channel_max,
                        frame_max: self.settings.frame_max,
                        heartbeat: self.heartbeat,
                    })),
                )
                .await;
                Ok(true)
            }
            (Phase::AwaitTuneOk, AMQPClass::Connection(connection::AMQPMethod::TuneOk(t))) => {
                let ours = self.settings.frame_max;
                let fm = if t.frame_max == 0 {
                    ours
                } else {
                    t.frame_max.min(ours)
                };
                if fm < MIN_FRAME_MAX {
                    return Err(AmqpError::connection(
                        530,
                        format!("frame_max {fm} is below the minimum {MIN_FRAME_MAX}"),
                    ));
                }
                self.frame_max = fm as usize;
                self.out.frame_max = self.frame_max;
                self.channel_max = match t.channel_max {
                    0 => self.settings.channel_max,
                    n => n.min(self.settings.channel_max),
                };
                self.heartbeat = t.heartbeat;
                let _ = self.heartbeat_tx.send(self.heartbeat);
                self.phase = Phase::AwaitOpen;
                Ok(true)
            }
            (Phase::AwaitOpen, AMQPClass::Connection(connection::AMQPMethod::Open(o))) => {
                let vhost = o.virtual_host.as_str().to_string();
                if !self.core.router().vhost_exists(&vhost) {
                    return Err(AmqpError::connection(
                        530,
                        format!("vhost '{vhost}' not found"),
                    ));
                }
                if !self.may_open(&vhost) {
                    return Err(AmqpError::connection(
                        530,
                        format!("access to vhost '{vhost}' refused for user '{}'", self.user),
                    ));
                }
                self.registration.set_vhost(&vhost);
                self.vhost = vhost;
                self.phase = Phase::Open;
                self.send(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
                )
                .await;
                Ok(true)
            }
            (_, AMQPClass::Connection(connection::AMQPMethod::Close(_))) => {
                self.send(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                )
                .await;
                Ok(false)
            }
            _ => Err(AmqpError::connection(
                503,
                "unexpected method during the handshake",
            )),
        }
    }

    /// Whether the authenticated user may open `vhost`: RabbitMQ's rule, a permission entry
    /// for the user there (configured users get one on every configured vhost).
    fn may_open(&self, vhost: &str) -> bool {
        self.core.users().may_open_vhost(vhost, &self.user)
    }
}
