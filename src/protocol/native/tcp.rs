//! The native protocol over TCP (`native_tcp_listen`), for networks that block UDP: TLS with
//! the QUIC listener's certificate and ALPN `ferry/1`, then the streams of [`crate::proto::mux`]
//! carrying exactly what QUIC streams carry. After the handshake a connection is served by the
//! same `connection::serve` as a QUIC one, so every request goes through the same handlers.
//!
//! Limits as on the QUIC listener: `native.max_connections` (an excess connection is closed
//! at once and counted), `native.handshake_timeout_ms` for TCP accept to ALPN, the idle timeout
//! (`native.idle_timeout_ms`, reset by any frame; the SDK pings), `native.max_concurrent_streams`
//! granted per connection, and the frame limits of the mux and of `native.max_frame_bytes`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::connection::{self, Peer, Transport};
use super::NativeSettings;
use crate::broker::BrokerCore;
use crate::proto::mux;
use crate::tls::TlsAcceptor;

/// Where the listener's TLS configuration comes from.
pub enum TcpTls {
    /// The data directory's self-signed certificate (or `tls.cert_file` without the shared
    /// acceptor), fixed for the listener's life.
    Fixed(Arc<rustls::ServerConfig>),
    /// The shared TLS configuration: client certificates per `tls.client_auth`, reloads.
    Shared(Arc<TlsAcceptor>),
}

/// The rustls configuration for an identity: TLS 1.3, no client certificates, ALPN `ferry/1`.
pub fn fixed_config(
    identity: super::Identity,
) -> Result<Arc<rustls::ServerConfig>, super::EndpointError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(crate::proto::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| super::EndpointError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)
        .map_err(|e| super::EndpointError::Certificate(e.to_string()))?;
    tls.alpn_protocols = vec![crate::proto::ALPN.to_vec()];
    Ok(Arc::new(tls))
}

/// The configuration of the next handshake, following the shared acceptor's reloads.
struct Configs {
    tls: TcpTls,
    cached: std::sync::Mutex<Option<(u64, Arc<rustls::ServerConfig>)>>,
}

impl Configs {
    fn current(&self) -> Arc<rustls::ServerConfig> {
        match &self.tls {
            TcpTls::Fixed(c) => c.clone(),
            TcpTls::Shared(acceptor) => {
                let generation = acceptor.generation();
                let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((g, c)) = cached.as_ref() {
                    if *g == generation {
                        return c.clone();
                    }
                }
                let mut config = (*acceptor.server_config()).clone();
                config.alpn_protocols = vec![crate::proto::ALPN.to_vec()];
                let config = Arc::new(config);
                *cached = Some((generation, config.clone()));
                config
            }
        }
    }

    fn acceptor(&self) -> Option<&TlsAcceptor> {
        match &self.tls {
            TcpTls::Fixed(_) => None,
            TcpTls::Shared(a) => Some(a),
        }
    }
}

/// Serves native connections over TCP on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    core: BrokerCore,
    settings: NativeSettings,
    tls: TcpTls,
    shutdown: watch::Receiver<bool>,
) {
    let settings = Arc::new(settings);
    let configs = Arc::new(Configs {
        tls,
        cached: std::sync::Mutex::new(None),
    });
    let listen_addr = listener.local_addr().ok();
    let max_connections = settings.max_connections;
    crate::protocol::accept_loop_limited(
        "native",
        listener,
        shutdown,
        max_connections,
        move |stream, peer, shutdown| {
            serve_connection(
                stream,
                peer,
                listen_addr,
                configs.clone(),
                core.clone(),
                settings.clone(),
                shutdown,
            )
        },
        // No TLS session yet to say why in; the closed socket is the answer.
        |stream| async move { drop(stream) },
    )
    .await
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    listen_addr: Option<SocketAddr>,
    configs: Arc<Configs>,
    core: BrokerCore,
    settings: Arc<NativeSettings>,
    shutdown: watch::Receiver<bool>,
) {
    let local = stream.local_addr().ok().or(listen_addr);
    let handshake = tokio_rustls::TlsAcceptor::from(configs.current()).accept(stream);
    let timeout = Duration::from_millis(settings.handshake_timeout_ms);
    let tls = match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "native TCP handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "native TCP handshake timed out");
            return;
        }
    };
    let (_, session) = tls.get_ref();
    if session.alpn_protocol() != Some(crate::proto::ALPN) {
        tracing::debug!(%peer, "native TCP client did not negotiate ALPN ferry/1; closing");
        return;
    }
    let client_cert = session
        .peer_certificates()
        .and_then(|chain| connection::principal_of(chain, configs.acceptor(), peer));
    // 0 switches the idle timeout off, as it does for QUIC.
    let idle =
        (settings.idle_timeout_ms > 0).then(|| Duration::from_millis(settings.idle_timeout_ms));
    let (session, incoming) = mux::Session::server(tls, settings.max_concurrent_streams, idle);
    let transport = Transport::Tcp {
        session: session.clone(),
        incoming,
    };
    connection::serve(
        transport,
        Peer {
            addr: peer,
            local,
            client_cert,
        },
        core,
        settings,
        shutdown,
    )
    .await;
    // Streams are done: let the writer send what is queued (the CLOSE included) and end.
    session.close(mux::frame::code::NORMAL, "connection ended");
}
