//! The HTTP listener's accept loop: it serves the [`super::http`] router over HTTP/1.1 with the
//! limits a public port needs, which `axum::serve` does not have.
//!
//! - **Header read timeout**: a client that starts a request must finish its headers within
//!   `observe.http.header_read_timeout_ms`, or the connection is closed (slowloris).
//! - **Body timeout**: while a request body is being received, each piece of it must arrive
//!   within the header read timeout of the last, or the request fails (400) — a client that
//!   dribbles its body holds a connection "in flight", where eviction cannot reach it.
//! - **Idle timeout**: a keep-alive connection with no request for
//!   `observe.http.idle_timeout_ms` is closed.
//! - **Connection cap**: at most `observe.http.max_connections` are open. At the cap a new
//!   connection evicts the oldest one that has no request in flight (an idle keep-alive, or a
//!   client still dribbling its headers), so probes such as `/readyz` keep answering while
//!   slow clients hold every slot; if every open connection is busy with a request, the new one
//!   gets `503` and is closed. Either way the listener never holds more sockets (nor their
//!   buffers) than the cap, and memory returns to its baseline once the clients are gone.
//!
//! - **TLS**: given a [`TlsAcceptor`], the same loop serves HTTPS; the handshake runs in the
//!   connection's task within `tls.handshake_timeout_ms`, while the connection holds its slot.
//!
//! Each connection has a small [`Tracked`] record: whether a request is in flight and when the
//! current idle or header-reading phase began. A watchdog beside the hyper connection drops the
//! connection once the phase outlives its timeout. hyper's own header timer is not used: it also
//! runs while a keep-alive connection waits for its next request, so it would fold the idle
//! timeout into the header timeout.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tower::ServiceExt;

use crate::tls::TlsAcceptor;

/// `[observe.http]`: limits of the HTTP listener (health, metrics and admin API).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// A client must send a request's complete headers within this many milliseconds of its
    /// first byte, or the connection is closed. Default 10000.
    pub header_read_timeout_ms: u64,
    /// A keep-alive connection without a request for this many milliseconds is closed.
    /// Default 60000.
    pub idle_timeout_ms: u64,
    /// Most HTTP connections open at once; at the cap the oldest connection without a request
    /// in flight is closed to make room. Default 256.
    pub max_connections: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_connections: 256,
        }
    }
}

impl HttpSettings {
    /// The first problem with these settings, as (key, message).
    pub fn problem(&self) -> Option<(&'static str, &'static str)> {
        if self.header_read_timeout_ms == 0 {
            return Some(("observe.http.header_read_timeout_ms", "must be at least 1"));
        }
        if self.idle_timeout_ms == 0 {
            return Some(("observe.http.idle_timeout_ms", "must be at least 1"));
        }
        if self.max_connections == 0 {
            return Some(("observe.http.max_connections", "must be at least 1"));
        }
        None
    }
}

/// What the watchdog of one connection needs to know.
struct Tracked {
    /// Requests being answered (more than one only with pipelining).
    in_flight: AtomicUsize,
    /// Bytes arrived while no request was in flight: a request's headers are being read.
    reading_headers: AtomicBool,
    /// When the current idle or header phase began, in ms since the registry's epoch.
    phase_start_ms: AtomicU64,
    /// Set when the accept loop needs this connection's slot.
    evicted: Notify,
}

/// Why a connection was closed by the listener rather than by its client.
#[derive(Clone, Copy)]
enum Closed {
    HeaderTimeout,
    IdleTimeout,
    Evicted,
}

impl Closed {
    fn label(self) -> &'static str {
        match self {
            Closed::HeaderTimeout => "header_timeout",
            Closed::IdleTimeout => "idle_timeout",
            Closed::Evicted => "evicted",
        }
    }
}

/// The open connections, oldest first (ids grow with accept order).
struct Registry {
    epoch: Instant,
    next_id: AtomicU64,
    open: Mutex<BTreeMap<u64, Arc<Tracked>>>,
}

impl Registry {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Makes room for one more connection: `Some(id)` to serve it under, `None` when every
    /// slot is busy with a request.
    fn admit(&self, cap: usize) -> Option<(u64, Arc<Tracked>)> {
        let mut open = self.open.lock();
        if open.len() >= cap {
            let victim = open
                .iter()
                .find(|(_, t)| t.in_flight.load(Ordering::Acquire) == 0)
                .map(|(id, _)| *id)?;
            if let Some(t) = open.remove(&victim) {
                t.evicted.notify_one();
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let tracked = Arc::new(Tracked {
            in_flight: AtomicUsize::new(0),
            // A new connection is there to send a request: until its first one, the header
            // timeout applies (a client that connects and sends nothing is a slow client).
            reading_headers: AtomicBool::new(true),
            phase_start_ms: AtomicU64::new(self.now_ms()),
            evicted: Notify::new(),
        });
        open.insert(id, tracked.clone());
        metrics::gauge!("ferry_http_connections").set(open.len() as f64);
        Some((id, tracked))
    }

    fn release(&self, id: u64) {
        let mut open = self.open.lock();
        open.remove(&id);
        metrics::gauge!("ferry_http_connections").set(open.len() as f64);
    }
}

/// Serves `router` on an already-bound listener until `shutdown` turns true, with the limits
/// of `settings`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<TlsAcceptor>>,
    router: Router,
    settings: &HttpSettings,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let registry = Arc::new(Registry {
        epoch: Instant::now(),
        next_id: AtomicU64::new(0),
        open: Mutex::new(BTreeMap::new()),
    });
    let settings = Arc::new(settings.clone());
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = crate::util::stopped(&mut shutdown) => break,
            // Reap finished connection tasks so the set stays as small as the open count.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors (or a similar transient error): wait a little
                // instead of spinning on accept.
                tracing::warn!(error = %e, "HTTP accept failed; retrying in 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some((id, tracked)) = registry.admit(settings.max_connections) else {
            metrics::counter!("ferry_http_connections_closed_total", "reason" => "refused")
                .increment(1);
            if tls.is_none() {
                refuse_busy(&stream);
            }
            continue;
        };
        let router = router.clone();
        let registry = registry.clone();
        let settings = settings.clone();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let _ = stream.set_nodelay(true);
            match tls {
                None => {
                    serve_connection(
                        stream, peer, router, &registry, &tracked, &settings, shutdown,
                    )
                    .await
                }
                Some(acceptor) => {
                    if let Some((stream, _)) = acceptor.accept(stream, peer, "http").await {
                        serve_connection(
                            stream, peer, router, &registry, &tracked, &settings, shutdown,
                        )
                        .await
                    }
                }
            }
            registry.release(id);
        });
    }
    // Let requests in flight finish (their connections shut down gracefully), briefly.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

/// Best effort, without waiting: the socket's send buffer is empty, so one write goes out.
fn refuse_busy(stream: &TcpStream) {
    const BODY: &str = r#"{"error":"unavailable","message":"too many HTTP connections busy with requests (observe.http.max_connections)"}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = stream.try_write(response.as_bytes());
}

async fn serve_connection<S: AsyncRead + AsyncWrite + Send + Unpin + 'static>(
    stream: S,
    peer: SocketAddr,
    router: Router,
    registry: &Registry,
    tracked: &Arc<Tracked>,
    settings: &HttpSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let io = TokioIo::new(WatchedIo {
        inner: stream,
        tracked: tracked.clone(),
        registry_epoch: registry.epoch,
    });
    let service = {
        let tracked = tracked.clone();
        let epoch = registry.epoch;
        let body_timeout = Duration::from_millis(settings.header_read_timeout_ms);
        hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            let in_flight = InFlight::start(tracked.clone(), epoch);
            request.extensions_mut().insert(ConnectInfo(peer));
            let router = router.clone();
            let request = request.map(|body| {
                axum::body::Body::new(SlowBodyTimeout {
                    inner: body,
                    limit: body_timeout,
                    deadline: None,
                })
            });
            async move {
                let response = router.oneshot(request).await;
                drop(in_flight);
                Ok::<_, Infallible>(match response {
                    Ok(r) => r,
                    Err(never) => match never {},
                })
            }
        })
    };
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .header_read_timeout(None)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let closed = tokio::select! {
        _ = connection.as_mut() => None,
        reason = watchdog(registry, tracked, settings) => Some(reason),
        _ = crate::util::stopped(&mut shutdown) => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), connection.as_mut()).await;
            None
        }
    };
    if let Some(reason) = closed {
        // Dropping the connection closes the socket; nothing is in flight on it.
        metrics::counter!("ferry_http_connections_closed_total", "reason" => reason.label())
            .increment(1);
        tracing::debug!(%peer, reason = reason.label(), "HTTP connection closed by the listener");
    }
}

/// Resolves when the connection should be dropped: its idle or header phase outlived its
/// timeout with no request in flight, or the accept loop evicted it.
async fn watchdog(registry: &Registry, tracked: &Tracked, settings: &HttpSettings) -> Closed {
    let header = settings.header_read_timeout_ms;
    let idle = settings.idle_timeout_ms;
    // Often enough that a timeout fires within a quarter of itself; no busier than 20 Hz.
    let tick = Duration::from_millis((header.min(idle) / 4).clamp(50, 1000));
    loop {
        let expired = if tracked.in_flight.load(Ordering::Acquire) > 0 {
            None
        } else {
            let (limit, why) = if tracked.reading_headers.load(Ordering::Acquire) {
                (header, Closed::HeaderTimeout)
            } else {
                (idle, Closed::IdleTimeout)
            };
            let began = tracked.phase_start_ms.load(Ordering::Acquire);
            (registry.now_ms().saturating_sub(began) >= limit).then_some(why)
        };
        if let Some(why) = expired {
            return why;
        }
        tokio::select! {
            _ = tracked.evicted.notified() => return Closed::Evicted,
            _ = tokio::time::sleep(tick) => {}
        }
    }
}

/// Marks a request in flight for as long as it lives; dropping it starts the idle phase.
struct InFlight {
    tracked: Arc<Tracked>,
    epoch: Instant,
}

impl InFlight {
    fn start(tracked: Arc<Tracked>, epoch: Instant) -> Self {
        tracked.in_flight.fetch_add(1, Ordering::AcqRel);
        tracked.reading_headers.store(false, Ordering::Release);
        Self { tracked, epoch }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.tracked
            .phase_start_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Release);
        self.tracked.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The socket, noting when bytes arrive between requests (a request's headers have begun).
struct WatchedIo<S> {
    inner: S,
    tracked: Arc<Tracked>,
    registry_epoch: Instant,
}

impl<S: AsyncRead + Unpin> AsyncRead for WatchedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before
            && this.tracked.in_flight.load(Ordering::Acquire) == 0
            && !this.tracked.reading_headers.swap(true, Ordering::AcqRel)
        {
            this.tracked.phase_start_ms.store(
                this.registry_epoch.elapsed().as_millis() as u64,
                Ordering::Release,
            );
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WatchedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A request body whose every frame must arrive within `limit` of the previous one.
struct SlowBodyTimeout {
    inner: Incoming,
    limit: Duration,
    /// Armed at the first read: a handler may read its body late (after the auth delay).
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for SlowBodyTimeout {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let limit = this.limit;
        let deadline = this
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                deadline.as_mut().reset(Instant::now() + limit);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(format!(
                    "the request body stalled for more than {} ms (observe.http.header_read_timeout_ms)",
                    this.limit.as_millis()
                )
                .into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
