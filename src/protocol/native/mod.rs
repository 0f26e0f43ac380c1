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
//! The same streams run over TCP for networks that block UDP ([`tcp`], `native_tcp_listen`):
//! TLS, then [`crate::proto::mux`] multiplexing streams by id with per-stream flow control.
//! Both transports hand their streams to one `connection::serve`, so the handlers never know
//! which carried a request.
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
pub mod tcp;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

pub use endpoint::{EndpointError, Identity};
pub use settings::NativeSettings;

use crate::broker::BrokerCore;

/// How long open connections get to finish once shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How often the endpoint looks for reloaded certificates (the shared acceptor reloads them on
/// SIGHUP or a file change; this only notices that it did).
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// The shared TLS configuration the endpoint follows when `tls.cert_file` is set.
pub struct Certificates {
    pub acceptor: Arc<crate::tls::TlsAcceptor>,
    /// For the new fingerprint in the log after a reload.
    pub cert_file: std::path::PathBuf,
}

/// Serves native connections on `endpoint` until `shutdown` turns true.
pub async fn serve(
    endpoint: quinn::Endpoint,
    core: BrokerCore,
    settings: NativeSettings,
    certificates: Option<Certificates>,
    mut shutdown: watch::Receiver<bool>,
) {
    let settings = Arc::new(settings);
    let mut connections = JoinSet::new();
    let listen_addr = endpoint.local_addr().ok();
    let mut loaded = certificates.as_ref().map(|c| c.acceptor.generation());
    let mut reload_check = tokio::time::interval(RELOAD_CHECK);
    reload_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = reload_check.tick(), if certificates.is_some() => {
                if let Some(c) = &certificates {
                    follow_reload(&endpoint, c, &settings, &mut loaded);
                }
            }
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
                        certificates.as_ref().map(|c| c.acceptor.clone()),
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

/// Swaps the endpoint's configuration when the shared acceptor loaded new certificates: new
/// connections get them, open ones keep theirs (as on the TCP TLS listeners).
fn follow_reload(
    endpoint: &quinn::Endpoint,
    certificates: &Certificates,
    settings: &NativeSettings,
    loaded: &mut Option<u64>,
) {
    let generation = certificates.acceptor.generation();
    if *loaded == Some(generation) {
        return;
    }
    *loaded = Some(generation);
    match endpoint::server_config(&certificates.acceptor.server_config(), settings) {
        Ok(config) => {
            endpoint.set_server_config(Some(config));
            let fingerprint = std::fs::read(&certificates.cert_file)
                .ok()
                .and_then(|pem| {
                    use rustls::pki_types::pem::PemObject;
                    rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
                        .next()?
                        .ok()
                })
                .map(|leaf| endpoint::fingerprint(&leaf))
                .unwrap_or_default();
            tracing::info!(generation, sha256_fingerprint = %fingerprint,
                "native listener uses the reloaded certificates");
        }
        Err(e) => {
            tracing::error!(error = %e, "the reloaded certificates do not suit QUIC; the native listener keeps its own");
        }
    }
}
