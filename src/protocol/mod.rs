//! Protocol adapters: each turns one wire protocol into calls on the core.
//!
//! Adapters own their sockets and codecs; the core never imports them. What they share is the
//! connection bookkeeping in [`accept_loop`]: accept until shutdown, run each connection as its
//! own task, and on shutdown give open connections a grace period before aborting them.
//! [`accept_loop_limited`] adds a cap on open connections: one accepted beyond it is handed to
//! the protocol's `refuse` (which says why, the protocol's way, and hangs up) and counted in
//! `ferry_connections_refused_total`.
//! [`loopback_congestion_control`] lets an adapter pick the TCP congestion control of
//! connections from this machine (see `kafka.loopback_congestion_control`).

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

/// Sets the TCP congestion control algorithm (`TCP_CONGESTION`) of `stream` to `name` when the
/// peer is on this machine. A loopback connection has no network to be fair to, but a pacing
/// algorithm such as BBR (with no `fq` qdisc on `lo`) arms a kernel timer for each burst it
/// spaces out, which on a VM costs more CPU than the bytes. Empty `name`, a remote peer or a
/// refusal by the kernel (an algorithm it does not have or lets this user set) keep the
/// system's choice; the refusal is logged at debug level only, since the connection works
/// either way.
pub(crate) fn loopback_congestion_control(stream: &TcpStream, peer: SocketAddr, name: &str) {
    use std::os::fd::AsRawFd;
    if name.is_empty() || !peer.ip().to_canonical().is_loopback() {
        return;
    }
    // SAFETY: the descriptor is open for the call (borrowed from `stream`), and the option
    // value is `name.len()` readable bytes; the kernel copies at most that many.
    let set = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if set != 0 {
        tracing::debug!(
            %peer,
            name,
            error = %std::io::Error::last_os_error(),
            "cannot set the TCP congestion control of a loopback connection"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn congestion_control(stream: &TcpStream) -> String {
        use std::os::fd::AsRawFd;
        let mut name = [0u8; 16];
        let mut len = name.len() as libc::socklen_t;
        // SAFETY: `name` is `len` writable bytes and the descriptor is open.
        let got = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_CONGESTION,
                name.as_mut_ptr().cast(),
                &mut len,
            )
        };
        assert_eq!(got, 0, "{}", std::io::Error::last_os_error());
        let name = &name[..len as usize];
        String::from_utf8_lossy(name.split(|b| *b == 0).next().unwrap_or(name)).into_owned()
    }

    /// `reno` is built into every kernel and open to every user, so it always takes; a remote
    /// peer or an empty name leaves the socket as accepted.
    #[tokio::test]
    async fn loopback_peers_get_the_configured_congestion_control() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let system = congestion_control(&stream);

        loopback_congestion_control(&stream, "10.1.2.3:9092".parse().unwrap(), "reno");
        assert_eq!(congestion_control(&stream), system);
        loopback_congestion_control(&stream, peer, "");
        assert_eq!(congestion_control(&stream), system);
        loopback_congestion_control(&stream, peer, "reno");
        assert_eq!(congestion_control(&stream), "reno");
        // An algorithm the kernel lacks is refused and changes nothing.
        loopback_congestion_control(&stream, peer, "nosuchcc");
        assert_eq!(congestion_control(&stream), "reno");
    }
}
