//! The Kafka wire protocol adapter: existing Kafka clients (librdkafka, the Java client,
//! kafka-python, …) talk to the core through it unchanged.
//!
//! Layout: [`codec`] frames requests and responses without I/O; [`connection`] owns a socket,
//! reads frames and writes responses in request order while letting requests run concurrently;
//! [`handlers`] hold one file per API family and translate decoded requests into core calls;
//! [`convert`] maps core errors to Kafka error codes; [`versions`] is the advertised table;
//! [`sasl`] authenticates connections (SaslHandshake, SaslAuthenticate, re-authentication);
//! [`authz`] authorizes requests with Kafka ACLs; [`fetch_session`] keeps KIP-227 incremental
//! fetch sessions.
//! Message bodies are decoded and encoded by the `kafka-protocol` crate.

pub mod authz;
pub mod codec;
pub mod connection;
pub mod convert;
pub mod fetch_session;
pub mod handlers;
pub mod sasl;
pub mod versions;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::broker::BrokerCore;
use crate::config::KafkaSettings;
use crate::tls::{ConnSecurity, TlsAcceptor};
use connection::ConnInfo;

/// Ferry is a single node; it answers as broker 1 and is its own controller and coordinator.
pub const NODE_ID: i32 = 1;

/// What the Kafka listener needs besides the core.
#[derive(Clone, Debug)]
pub struct KafkaServerSettings {
    /// `--kafka-advertised`, if set.
    pub advertised: Option<String>,
    /// The address the listener actually bound.
    pub listen_addr: SocketAddr,
    /// `kafka_tls_advertised`, if set.
    pub tls_advertised: Option<String>,
    /// The address the TLS listener bound, if there is one.
    pub tls_listen_addr: Option<SocketAddr>,
    pub kafka: KafkaSettings,
}

/// Shared by every Kafka connection.
pub struct KafkaContext {
    pub core: BrokerCore,
    /// Turns true when the broker shuts down, so held requests (long-poll fetches, joins
    /// waiting for a rebalance) answer at once instead of holding up the shutdown.
    pub shutdown: watch::Receiver<bool>,
    pub settings: KafkaServerSettings,
    pub cluster_id: String,
    /// `kafka.super_users` and `kafka.allow_everyone_if_no_acl_found`, for [`authz`].
    pub acl_policy: crate::broker::acls::AclPolicy,
    /// KIP-227 fetch sessions, shared by both listeners (a client may reconnect elsewhere).
    pub fetch_sessions: fetch_session::FetchSessionCache,
}

impl KafkaContext {
    /// The `(host, port)` the client on `conn` is told to use: a client that came in over TLS
    /// is sent to the TLS listener, any other to the plaintext one (Kafka's per-listener
    /// advertised addresses, with the listener the client used).
    pub fn advertised_endpoint(&self, conn: &ConnInfo) -> (String, i32) {
        let (advertised, listen) = match (conn.security.tls, self.settings.tls_listen_addr) {
            (true, Some(tls)) => (&self.settings.tls_advertised, tls),
            _ => (&self.settings.advertised, self.settings.listen_addr),
        };
        let local = conn.local;
        if let Some(adv) = advertised {
            if let Some((host, port)) = adv.rsplit_once(':') {
                if let Ok(port) = port.parse::<u16>() {
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    return (host.to_string(), i32::from(port));
                }
            }
        }
        let addr = if listen.ip().is_unspecified() {
            // A wildcard listener has no single address; the one this client reached us on is
            // the one it can certainly reach again.
            local.unwrap_or(listen)
        } else {
            listen
        };
        (addr.ip().to_string(), i32::from(addr.port()))
    }
}

/// Serves the plaintext listener and, if given, the TLS one, until shutdown. Each listener
/// has its own `kafka.max_connections` cap.
pub async fn serve(
    listener: TcpListener,
    tls: Option<(TcpListener, Arc<TlsAcceptor>)>,
    core: BrokerCore,
    settings: KafkaServerSettings,
    shutdown: watch::Receiver<bool>,
) {
    let cluster_id = match core.meta().cluster_id() {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = %e, "cannot read or create the cluster id; Kafka listener stopped");
            return;
        }
    };
    let ctx = Arc::new(KafkaContext {
        core,
        shutdown: shutdown.clone(),
        cluster_id,
        acl_policy: settings.kafka.acl_policy(),
        fetch_sessions: fetch_session::FetchSessionCache::new(
            settings.kafka.max_incremental_fetch_session_cache_slots,
        ),
        settings,
    });
    let max_connections = ctx.settings.kafka.max_connections;
    // Kafka has no way to say "too many connections": the broker just closes the socket and
    // the client backs off and reconnects.
    let plain = {
        let ctx = ctx.clone();
        super::accept_loop_limited(
            "kafka",
            listener,
            shutdown.clone(),
            max_connections,
            move |stream, peer, shutdown| {
                let local = stream.local_addr().ok();
                let ctx = ctx.clone();
                let cc = &ctx.settings.kafka.loopback_congestion_control;
                super::loopback_congestion_control(&stream, peer, cc);
                connection::run(stream, peer, local, ConnSecurity::default(), ctx, shutdown)
            },
            |stream| async move { drop(stream) },
        )
    };
    let Some((tls_listener, acceptor)) = tls else {
        return plain.await;
    };
    let secure = super::accept_loop_limited(
        "kafka-tls",
        tls_listener,
        shutdown,
        max_connections,
        move |stream, peer, shutdown| {
            let ctx = ctx.clone();
            let acceptor = acceptor.clone();
            async move {
                let local = stream.local_addr().ok();
                let cc = &ctx.settings.kafka.loopback_congestion_control;
                super::loopback_congestion_control(&stream, peer, cc);
                if let Some((stream, security)) = acceptor.accept(stream, peer, "kafka").await {
                    connection::run(stream, peer, local, security, ctx, shutdown).await;
                }
            }
        },
        |stream| async move { drop(stream) },
    );
    tokio::join!(plain, secure);
}
