//! Protocol adapters: each turns one wire protocol into calls on the core.
//!
//! Adapters own their sockets and codecs; the core never imports them. What they share is the
//! connection bookkeeping in [`accept_loop`]: accept until shutdown, run each connection as its
//! own task, and on shutdown give open connections a grace period before aborting them.
//! [`accept_loop_limited`] adds a cap on open connections: one accepted beyond it is handed to
//! the protocol's `refuse` (which says why, the protocol's way, and hangs up) and counted in
//! `ferry_connections_refused_total`.

pub mod amqp;
mod consumer_protocol;
pub mod kafka;
pub mod native;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long open connections get to finish once shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Refusals being written at once, beyond which an excess connection is just dropped: the
/// polite answer must not itself become the resource a connection flood exhausts.
const MAX_REFUSING: usize = 64;

/// Accepts connections until `shutdown` turns true, running `handle` for each as its own task.
pub async fn accept_loop<F, Fut>(
    protocol: &'static str,
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    accept_loop_limited(protocol, listener, shutdown, 0, handle, |_| async {}).await
}

/// Like [`accept_loop`], with at most `max_connections` (0 = no limit) served at once; an
/// excess connection goes to `refuse` instead, which should answer and close promptly.
pub async fn accept_loop_limited<F, Fut, R, RFut>(
    protocol: &'static str,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    max_connections: usize,
    handle: F,
    refuse: R,
) where
    F: Fn(TcpStream, SocketAddr, watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
    R: Fn(TcpStream) -> RFut,
    RFut: Future<Output = ()> + Send + 'static,
{
    let mut connections = JoinSet::new();
    let mut refusing = JoinSet::new();
    let for_connections = shutdown.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) if max_connections > 0 && connections.len() >= max_connections => {
                    metrics::counter!("ferry_connections_refused_total", "protocol" => protocol).increment(1);
                    tracing::debug!(protocol, %peer, max_connections, "connection limit reached; refusing");
                    if refusing.len() < MAX_REFUSING {
                        refusing.spawn(tokio::time::timeout(Duration::from_secs(1), refuse(stream)));
                    }
                }
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(handle(stream, peer, for_connections.clone()));
                }
                Err(e) => {
                    // Running out of file descriptors is transient; back off instead of spinning.
                    tracing::warn!(protocol, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            Some(_) = refusing.join_next(), if !refusing.is_empty() => {}
            _ = crate::util::stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    refusing.abort_all();
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        connections.abort_all();
    }
}
