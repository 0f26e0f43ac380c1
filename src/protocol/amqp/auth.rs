//! Authentication of connection.start-ok (PLAIN and AMQPLAIN against the core's one user
//! store, EXTERNAL with a verified TLS client certificate) and RabbitMQ's permission checks on
//! every channel method that needs one.
//!
//! EXTERNAL follows RabbitMQ's `rabbitmq_auth_mechanism_ssl`: it is offered in
//! connection.start only on a TLS connection whose client sent a certificate that verified
//! against `tls.ca_file`, the user is the name `tls.principal_mapping_rules` maps the subject
//! to (the same name as the Kafka principal; by default the whole subject, as RabbitMQ's
//! `ssl_cert_login_from = distinguished_name`), and that user must exist
//! (its password is not asked for; the certificate is the credential). Failures get 403
//! ACCESS_REFUSED, as RabbitMQ answers, and count towards the core's login guard.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use amq_protocol::protocol::{basic, connection, exchange, queue, AMQPClass};
use amq_protocol::types::AMQPValue;

use super::convert::{self, AmqpError};
use crate::broker::users::{Access, LoginRefused, Resource};
use crate::broker::BrokerCore;
use crate::tls::ConnSecurity;

/// The mechanisms connection.start offers on a connection.
pub fn mechanisms(security: &ConnSecurity) -> &'static str {
    if security.client_cert.is_some() {
        "PLAIN AMQPLAIN EXTERNAL"
    } else {
        "PLAIN AMQPLAIN"
    }
}

/// Checks the credentials of connection.start-ok against the core's user store; returns the
/// user name.
pub async fn authenticate(
    core: &BrokerCore,
    peer: SocketAddr,
    security: &ConnSecurity,
    s: &connection::StartOk,
) -> Result<String, AmqpError> {
    let refused = || {
        AmqpError::connection(
            403,
            format!(
                "Login was refused using authentication mechanism {}. For details see the broker logfile.",
                s.mechanism
            ),
        )
    };
    match s.mechanism.as_str() {
        "EXTERNAL" => {
            let Some(cert) = &security.client_cert else {
                return Err(AmqpError::connection(
                    403,
                    "EXTERNAL authentication needs a TLS connection with a verified client certificate",
                ));
            };
            // The same name Kafka's principal uses (tls.principal_mapping_rules).
            let user = cert.name.clone();
            let guard = core.login_guard();
            match core.users().check_identity(&user, Some(peer.ip())) {
                Ok(info) => {
                    guard.succeeded(Some(peer.ip()));
                    Ok(info.name)
                }
                Err(e) => {
                    if let LoginRefused::LoopbackOnly(_) = e {
                        tracing::info!(%peer, user, "AMQP user may only connect from loopback");
                    }
                    guard.failed("amqp", Some(peer.ip()), &user).wait().await;
                    Err(refused())
                }
            }
        }
        "PLAIN" | "AMQPLAIN" => {
            let (user, password) = credentials(s).ok_or_else(refused)?;
            // Counted, logged (WARN, rate-limited) and slowed per peer by the core.
            core.login("amqp", Some(peer.ip()), &user, &password)
                .await
                .map(|info| info.name)
                .map_err(|_| refused())
        }
        other => Err(AmqpError::connection(
            403,
            format!("unsupported authentication mechanism {other}"),
        )),
    }
}

/// Most names one connection remembers decisions for; past it the memory starts over.
const MAX_CACHED_NAMES: usize = 1024;

/// A connection's memory of permission decisions, so a publish costs a hash lookup rather
/// than a regex match. Dropped whenever the user store changes (its generation moves), so a
/// revoked permission refuses the very next operation, as RabbitMQ does.
#[derive(Default)]
pub struct PermissionCache {
    generation: u64,
    /// Per name: bit `2 * slot` = decided, bit `2 * slot + 1` = allowed.
    decisions: HashMap<String, u16>,
}

impl PermissionCache {
    #[allow(clippy::too_many_arguments)]
    fn check(
        &mut self,
        core: &BrokerCore,
        peer: IpAddr,
        vhost: &str,
        user: &str,
        access: Access,
        resource: Resource,
        name: &str,
    ) -> Result<(), AmqpError> {
        let users = core.users();
        // Both only grow, so their sum moves whenever either does.
        let generation = users.generation() + core.acls().generation();
        if generation != self.generation || self.decisions.len() >= MAX_CACHED_NAMES {
            self.decisions.clear();
            self.generation = generation;
        }
        let slot = (access as u16) * 2 + resource as u16;
        let (decided, allowed) = (1u16 << (2 * slot), 1u16 << (2 * slot + 1));
        let bits = self.decisions.get(name).copied().unwrap_or(0);
        let ok = if bits & decided != 0 {
            bits & allowed != 0
        } else {
            let ok = users.allowed(vhost, user, access, resource, name)
                && topic_face_allowed(core, peer, vhost, user, access, resource, name);
            let entry = self.decisions.entry(name.to_string()).or_insert(0);
            *entry |= decided | if ok { allowed } else { 0 };
            ok
        };
        if ok {
            return Ok(());
        }
        let shown = match (resource, name) {
            (Resource::Exchange, "") => "amq.default",
            _ => name,
        };
        Err(AmqpError::channel(
            403,
            format!(
                "{} access to {} '{shown}' in vhost '{vhost}' refused for user '{user}'",
                access.as_str(),
                resource.as_str()
            ),
        ))
    }
}

/// A topic's exchange face (exchange `T` of vhost `/` for topic `T`) also asks the topic's
/// Kafka ACLs while they are enforced: publishing needs WRITE, binding from it READ, for
/// principal `User:<user>` (docs/security.md, "How AMQP permissions and Kafka ACLs meet").
fn topic_face_allowed(
    core: &BrokerCore,
    peer: IpAddr,
    vhost: &str,
    user: &str,
    access: Access,
    resource: Resource,
    name: &str,
) -> bool {
    let op = match access {
        Access::Write => crate::broker::acls::operation::WRITE,
        Access::Read => crate::broker::acls::operation::READ,
        Access::Configure => return true,
    };
    if resource != Resource::Exchange || vhost != "/" || core.topic(name).is_none() {
        return true;
    }
    let Some(policy) = core.acls().enforcement() else {
        return true;
    };
    core.acls().authorize(
        &policy,
        &format!("User:{user}"),
        peer,
        op,
        crate::broker::acls::resource::TOPIC,
        name,
    )
}

/// Checks what a channel method needs, with RabbitMQ's rules: configure to declare or
/// delete, write on the destination and read on the source of a binding, write to publish,
/// read to consume, get or purge. A passive declare only asks whether something exists and
/// needs nothing.
pub fn authorize(
    core: &BrokerCore,
    peer: IpAddr,
    vhost: &str,
    user: &str,
    cache: &mut PermissionCache,
    method: &AMQPClass,
) -> Result<(), AmqpError> {
    use Access::{Configure, Read, Write};
    use Resource::{Exchange, Queue};
    let mut check =
        |access, resource, name: &str| cache.check(core, peer, vhost, user, access, resource, name);
    match method {
        AMQPClass::Exchange(e) => match e {
            exchange::AMQPMethod::Declare(m) if !m.passive => {
                check(Configure, Exchange, m.exchange.as_str())
            }
            exchange::AMQPMethod::Delete(m) => check(Configure, Exchange, m.exchange.as_str()),
            exchange::AMQPMethod::Bind(m) => {
                check(Write, Exchange, m.destination.as_str())?;
                check(Read, Exchange, m.source.as_str())
            }
            exchange::AMQPMethod::Unbind(m) => {
                check(Write, Exchange, m.destination.as_str())?;
                check(Read, Exchange, m.source.as_str())
            }
            _ => Ok(()),
        },
        AMQPClass::Queue(q) => match q {
            // A server-named queue arrives here already named `amq.gen-…` (see dispatch).
            queue::AMQPMethod::Declare(m) if !m.passive => {
                check(Configure, Queue, m.queue.as_str())
            }
            queue::AMQPMethod::Delete(m) => check(Configure, Queue, m.queue.as_str()),
            queue::AMQPMethod::Purge(m) => check(Read, Queue, m.queue.as_str()),
            queue::AMQPMethod::Bind(m) => {
                check(Write, Queue, m.queue.as_str())?;
                check(Read, Exchange, m.exchange.as_str())
            }
            queue::AMQPMethod::Unbind(m) => {
                check(Write, Queue, m.queue.as_str())?;
                check(Read, Exchange, m.exchange.as_str())
            }
            _ => Ok(()),
        },
        AMQPClass::Basic(b) => match b {
            basic::AMQPMethod::Publish(m) => check(Write, Exchange, m.exchange.as_str()),
            basic::AMQPMethod::Consume(m) => check(Read, Queue, m.queue.as_str()),
            basic::AMQPMethod::Get(m) => check(Read, Queue, m.queue.as_str()),
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

/// The (user, password) of a PLAIN or AMQPLAIN response.
fn credentials(s: &connection::StartOk) -> Option<(String, String)> {
    let response = s.response.as_bytes();
    match s.mechanism.as_str() {
        "PLAIN" => {
            let mut parts = response.split(|b| *b == 0);
            let _authzid = parts.next();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(u), Some(p), None) => Some((
                    String::from_utf8_lossy(u).into_owned(),
                    String::from_utf8_lossy(p).into_owned(),
                )),
                _ => None,
            }
        }
        "AMQPLAIN" => {
            // The response is a field table without its length prefix.
            let mut raw = Vec::with_capacity(response.len() + 4);
            raw.extend_from_slice(&(response.len() as u32).to_be_bytes());
            raw.extend_from_slice(response);
            convert::decode_table(&raw).and_then(|t| {
                let get = |k: &str| match t.inner().get(k) {
                    Some(AMQPValue::LongString(v)) => {
                        Some(String::from_utf8_lossy(v.as_bytes()).into_owned())
                    }
                    Some(AMQPValue::ShortString(v)) => Some(v.as_str().to_string()),
                    _ => None,
                };
                Some((get("LOGIN")?, get("PASSWORD")?))
            })
        }
        _ => None,
    }
}
