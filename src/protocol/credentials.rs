//! The user/password check every protocol's PLAIN login goes through (AMQP PLAIN and AMQPLAIN,
//! the native protocol's `Authenticate`), so they accept exactly the same users and count
//! failures in the same per-peer login guard.

use std::net::SocketAddr;

use crate::broker::BrokerCore;
use crate::config::AmqpSettings;

/// Whether `user`/`password` names a configured user. A failure is counted, logged and slowed
/// per peer by the core's login guard before this returns (`protocol` labels it).
pub async fn verify_password(
    core: &BrokerCore,
    settings: &AmqpSettings,
    protocol: &'static str,
    peer: SocketAddr,
    user: &str,
    password: &str,
) -> bool {
    let known = settings
        .users
        .iter()
        .any(|u| u.name == user && u.password == password);
    if !known {
        core.login_guard()
            .failed(protocol, Some(peer.ip()), user)
            .wait()
            .await;
    }
    known
}

/// Whether `user` may log in from `peer` (RabbitMQ's `loopback_users`: such users only from a
/// loopback address).
pub fn allowed_from(settings: &AmqpSettings, peer: SocketAddr, user: &str) -> bool {
    !settings.loopback_users.iter().any(|u| u == user) || peer.ip().is_loopback()
}
