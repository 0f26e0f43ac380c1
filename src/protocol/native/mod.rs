//! The native protocol adapter: protobuf frames (`proto/ferry.proto`, types in
//! [`crate::proto`]) over QUIC (quinn, rustls with ring, ALPN `ferry/1`).
//!
//! Design: every request is its own bidirectional QUIC stream, so requests never queue behind
//! each other (QUIC multiplexes them with per-stream flow control, and the connection allows
//! `native.max_concurrent_streams` at once). A unary request gets one response and the server
//! finishes the stream; a subscription keeps its stream, streaming deliveries one way and
//! settles the other. Authentication is the connection's first request (PLAIN against the
//! broker's one user store, through `BrokerCore::login`, as AMQP and Kafka PLAIN).
//!
//! Layout, as in the other adapters: [`endpoint`] (certificate, transport limits), `connection`
//! (the stream accept loop, authentication), [`convert`] (the only place wire types meet core
//! types: CloudEvents headers, error codes) and `handlers` (one file per request family). The
//! adapter calls the same core entry points as AMQP and Kafka: `Router::publish` /
//! `publish_now`, partition appends, queue `take_for` / `ack` / `requeue`, `StreamReader`.

mod connection;
pub mod convert;
pub mod endpoint;
mod handlers;
mod settings;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

pub use endpoint::{EndpointError, Identity};
pub use settings::NativeSettings;

use crate::broker::BrokerCore;

/// How long open connections get to finish once shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves native connections on `endpoint` until `shutdown` turns true.
pub async fn serve(
    endpoint: quinn::Endpoint,
    core: BrokerCore,
    settings: NativeSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let settings = Arc::new(settings);
    let mut connections = JoinSet::new();
    let listen_addr = endpoint.local_addr().ok();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming)
                    if settings.max_connections > 0
                        && connections.len() >= settings.max_connections =>
                {
                    // QUIC's CONNECTION_REFUSED before any handshake work: a connection flood
                    // costs one packet each.
                    metrics::counter!("ferry_connections_refused_total", "protocol" => "native")
                        .increment(1);
                    tracing::debug!(peer = %incoming.remote_address(),
                        max_connections = settings.max_connections,
                        "native connection limit reached; refusing");
                    incoming.refuse();
                }
                Some(incoming) => {
                    connections.spawn(connection::run(
                        incoming,
                        listen_addr,
                        core.clone(),
                        settings.clone(),
                        shutdown.clone(),
                    ));
                }
                None => break,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = crate::util::stopped(&mut shutdown) => break,
        }
    }
    endpoint.close(0_u32.into(), b"broker shutting down");
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        connections.abort_all();
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
}
