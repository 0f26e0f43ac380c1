//! Authentication of connection.start-ok: PLAIN and AMQPLAIN against `amqp.users`, and
//! EXTERNAL with a verified TLS client certificate.
//!
//! EXTERNAL follows RabbitMQ's `rabbitmq_auth_mechanism_ssl`: it is offered in
//! connection.start only on a TLS connection whose client sent a certificate that verified
//! against `tls.ca_file`, the user is the certificate subject's CN, and that user must exist
//! (its password is not asked for; the certificate is the credential). Failures get 403
//! ACCESS_REFUSED, as RabbitMQ answers, and count towards the core's login guard.

use std::net::SocketAddr;

use amq_protocol::protocol::connection;
use amq_protocol::types::AMQPValue;

use super::convert::{self, AmqpError};
use crate::broker::BrokerCore;
use crate::config::AmqpSettings;
use crate::tls::ConnSecurity;

/// The mechanisms connection.start offers on a connection.
pub fn mechanisms(security: &ConnSecurity) -> &'static str {
    if security.client_cert.is_some() {
        "PLAIN AMQPLAIN EXTERNAL"
    } else {
        "PLAIN AMQPLAIN"
    }
}

/// Checks the credentials of connection.start-ok; returns the user name.
pub async fn authenticate(
    core: &BrokerCore,
    settings: &AmqpSettings,
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
    let guard = core.login_guard();
    let user = match s.mechanism.as_str() {
        "EXTERNAL" => {
            let Some(cert) = &security.client_cert else {
                return Err(AmqpError::connection(
                    403,
                    "EXTERNAL authentication needs a TLS connection with a verified client certificate",
                ));
            };
            let Some(user) = cert.common_name.clone() else {
                tracing::info!(%peer, subject = %cert.subject, "AMQP EXTERNAL: the client certificate has no CN");
                return Err(refused());
            };
            if !settings.users.iter().any(|u| u.name == user) {
                guard.failed("amqp", Some(peer.ip()), &user).wait().await;
                return Err(refused());
            }
            user
        }
        "PLAIN" | "AMQPLAIN" => {
            let (user, password) = credentials(s).ok_or_else(refused)?;
            // Counted, logged (WARN, rate-limited) and slowed per peer by the core's guard.
            let known = crate::protocol::credentials::verify_password(
                core, settings, "amqp", peer, &user, &password,
            )
            .await;
            if !known {
                return Err(refused());
            }
            user
        }
        other => {
            return Err(AmqpError::connection(
                403,
                format!("unsupported authentication mechanism {other}"),
            ))
        }
    };
    guard.succeeded(Some(peer.ip()));
    if !crate::protocol::credentials::allowed_from(settings, peer, &user) {
        tracing::info!(%peer, user, "AMQP user may only connect from loopback");
        return Err(refused());
    }
    Ok(user)
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
