//! Streams multiplexed over one TCP (TLS) connection: the native protocol's fallback for
//! networks that block UDP. Each stream carries exactly what a QUIC stream carries
//! (length-delimited `Request`s and `Response`s), so the server's handlers and the SDK use
//! both transports through the same [`crate::proto::stream`] types.
//!
//! Design, shaped by one rule: a stream whose reader is slow must never stall the others.
//! - The connection's reader task never waits on a stream: it appends each DATA payload to
//!   its stream's buffer and moves on. What bounds that buffer is per-stream flow control, as
//!   in QUIC and HTTP/2: a sender may have at most [`frame::INITIAL_WINDOW`] bytes unread on a
//!   stream, and the receiver returns credit (WINDOW) as its application reads. A subscriber
//!   that stops reading therefore stops only its own stream's deliveries; the broker's
//!   delivery loop waits on that stream's window, and publishes on the same socket go on.
//! - Writes of all streams go into one output buffer that a writer task drains with one
//!   socket write per batch (frames coalesce under load, as QUIC packets do). The buffer is
//!   bounded: a stream writing past [`OUT_HIGH`] waits until the writer has caught up.
//! - Only the client opens streams, with increasing ids; the server grants how many
//!   (MAX_STREAMS, cumulative, like QUIC's), one more each time a stream of its ends, so a
//!   client cannot make it hold more than `max_concurrent_streams` streams' buffers.
//!
//! A stream half dropped early behaves as quinn's: a dropped send half sends FIN, a dropped
//! receive half that has not seen FIN sends STOP (the peer's writes then fail). State lives
//! under one mutex per connection; no waker is called and no stream handle dropped while it is
//! held.

pub mod frame;
mod halves;

pub use halves::{RecvStream, SendStream};

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, watch, Notify};

use frame::{code, Frame, INITIAL_WINDOW, MAX_DATA};

/// Output bytes queued for the writer past which stream writes wait.
pub const OUT_HIGH: usize = 1024 * 1024;

/// How long the writer may take to flush what is queued (a CLOSE included) once closing.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);

/// Which end of the connection this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Client,
    Server,
}

/// Why the connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub code: u64,
    pub reason: String,
    /// The peer sent the CLOSE (or dropped the socket), rather than this side.
    pub by_peer: bool,
}

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let who = if self.by_peer { "peer" } else { "locally" };
        write!(
            f,
            "connection closed {who} (code {}): {}",
            self.code, self.reason
        )
    }
}

struct Stream {
    /// Received and not yet read. Copied out of the socket buffer rather than kept as
    /// slices of it, so what a stream holds is exactly its bytes (a slice would pin a whole
    /// read buffer: a peer sending tiny frames could make a window's worth of them cost far
    /// more than the window).
    recv: BytesMut,
    recv_fin: bool,
    recv_dropped: bool,
    recv_waker: Option<Waker>,
    /// Bytes the peer may still send before it needs more credit.
    recv_window: u64,
    /// Bytes the application read since credit was last returned.
    consumed: u64,
    send_window: u64,
    send_waker: Option<Waker>,
    send_done: bool,
    /// The peer sent STOP: it reads no more of this stream.
    stopped: bool,
    halves: u8,
}

impl Stream {
    fn new() -> Self {
        Self {
            recv: BytesMut::new(),
            recv_fin: false,
            recv_dropped: false,
            recv_waker: None,
            recv_window: INITIAL_WINDOW,
            consumed: 0,
            send_window: INITIAL_WINDOW,
            send_waker: None,
            send_done: false,
            stopped: false,
            halves: 2,
        }
    }
}

struct State {
    out: BytesMut,
    out_waiters: Vec<Waker>,
    streams: HashMap<u64, Stream>,
    closed: Option<Closed>,
    /// Client: the next id to open, and the highest the server allows.
    next_id: u64,
    max_id: u64,
    /// Server: the highest id the client opened, and the highest it may open.
    highest: u64,
    granted: u64,
    grant_dirty: bool,
}

struct Shared {
    role: Role,
    state: Mutex<State>,
    wake_writer: Notify,
    /// The client waits here for MAX_STREAMS credit.
    credit: Notify,
    closed_tx: watch::Sender<bool>,
    rx_bytes: AtomicU64,
    tx_bytes: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding it leaves plain data behind; keep serving it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the connection closed (once), queues a CLOSE when it is this side's decision,
    /// and returns every waker to call once the lock is released.
    fn close_locked(&self, st: &mut State, closed: Closed, wakers: &mut Vec<Waker>) {
        if st.closed.is_some() {
            return;
        }
        if !closed.by_peer {
            frame::put_close(&mut st.out, closed.code, &closed.reason);
        }
        st.closed = Some(closed);
        for s in st.streams.values_mut() {
            wakers.extend(s.recv_waker.take());
            wakers.extend(s.send_waker.take());
        }
        wakers.append(&mut st.out_waiters);
        self.wake_writer.notify_one();
        self.credit.notify_waiters();
        let _ = self.closed_tx.send(true);
    }

    fn close(&self, closed: Closed) {
        let mut wakers = Vec::new();
        {
            let mut st = self.lock();
            self.close_locked(&mut st, closed, &mut wakers);
        }
        wakers.into_iter().for_each(Waker::wake);
    }

    /// One half of stream `id` is gone: forget the stream once both are, and on the server
    /// grant the client one more.
    fn release(&self, st: &mut State, id: u64) {
        let Some(s) = st.streams.get_mut(&id) else {
            return;
        };
        s.halves = s.halves.saturating_sub(1);
        if s.halves == 0 {
            st.streams.remove(&id);
            if self.role == Role::Server {
                st.granted += 1;
                st.grant_dirty = true;
                self.wake_writer.notify_one();
            }
        }
    }
}

/// A multiplexed connection; cheap to clone. Dropping every clone does not close it: call
/// [`Session::close`] (the reader and writer tasks end when the socket does).
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
}

/// The server's stream acceptor.
pub struct Incoming {
    rx: mpsc::UnboundedReceiver<(SendStream, RecvStream)>,
}

impl Incoming {
    /// The next stream the client opened; `None` once the connection is closed.
    pub async fn accept(&mut self) -> Option<(SendStream, RecvStream)> {
        self.rx.recv().await
    }
}

impl Session {
    /// The client side over `io` (a TLS stream): streams open once the server's first
    /// MAX_STREAMS arrives. The client sends PING every `keep_alive`.
    pub fn client<T>(io: T, keep_alive: Duration) -> Self
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (session, _) = Self::start(io, Role::Client, 0, None, Some(keep_alive));
        session
    }

    /// The server side over `io`: grants `max_streams` concurrent streams and closes the
    /// connection when nothing arrives for `idle`.
    pub fn server<T>(io: T, max_streams: u32, idle: Option<Duration>) -> (Self, Incoming)
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (session, rx) = Self::start(io, Role::Server, max_streams.into(), idle, None);
        (
            session,
            Incoming {
                rx: rx.unwrap_or_else(|| mpsc::unbounded_channel().1),
            },
        )
    }

    #[allow(clippy::type_complexity)]
    fn start<T>(
        io: T,
        role: Role,
        max_streams: u64,
        idle: Option<Duration>,
        keep_alive: Option<Duration>,
    ) -> (
        Self,
        Option<mpsc::UnboundedReceiver<(SendStream, RecvStream)>>,
    )
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let mut out = BytesMut::with_capacity(64 * 1024);
        if role == Role::Server {
            frame::put_max_streams(&mut out, max_streams);
        }
        let (closed_tx, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            role,
            state: Mutex::new(State {
                out,
                out_waiters: Vec::new(),
                streams: HashMap::new(),
                closed: None,
                next_id: 1,
                max_id: 0,
                highest: 0,
                granted: max_streams,
                grant_dirty: false,
            }),
            wake_writer: Notify::new(),
            credit: Notify::new(),
            closed_tx,
            rx_bytes: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
        });
        shared.wake_writer.notify_one();
        let (rd, wr) = tokio::io::split(io);
        let (tx, rx) = match role {
            Role::Server => {
                let (tx, rx) = mpsc::unbounded_channel();
                (Some(tx), Some(rx))
            }
            Role::Client => (None, None),
        };
        tokio::spawn(read_loop(shared.clone(), rd, tx, idle));
        tokio::spawn(write_loop(shared.clone(), wr, keep_alive));
        (Self { shared }, rx)
    }

    /// Opens a stream, waiting for the server's credit if it has none to spare.
    pub async fn open(&self) -> io::Result<(SendStream, RecvStream)> {
        loop {
            let notified = self.shared.credit.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.shared.lock();
                if let Some(c) = &st.closed {
                    return Err(closed_error(c));
                }
                if st.next_id <= st.max_id {
                    let id = st.next_id;
                    st.next_id += 1;
                    st.streams.insert(id, Stream::new());
                    return Ok(self.halves(id));
                }
            }
            notified.await;
        }
    }

    fn halves(&self, id: u64) -> (SendStream, RecvStream) {
        (
            SendStream {
                shared: self.shared.clone(),
                id,
            },
            RecvStream {
                shared: self.shared.clone(),
                id,
            },
        )
    }

    /// Closes the connection with `code` and `reason` (sent to the peer in a CLOSE frame).
    pub fn close(&self, code: u64, reason: &str) {
        self.shared.close(Closed {
            code,
            reason: reason.to_string(),
            by_peer: false,
        });
    }

    /// Why the connection ended, if it did.
    pub fn close_reason(&self) -> Option<Closed> {
        self.shared.lock().closed.clone()
    }

    /// Resolves once the connection is closed.
    pub async fn closed(&self) -> Closed {
        let mut rx = self.shared.closed_tx.subscribe();
        let _ = rx.wait_for(|c| *c).await;
        self.close_reason().unwrap_or(Closed {
            code: code::NORMAL,
            reason: "closed".into(),
            by_peer: false,
        })
    }

    /// Bytes received and sent on the socket so far (frames included).
    pub fn byte_counts(&self) -> (u64, u64) {
        (
            self.shared.rx_bytes.load(Ordering::Relaxed),
            self.shared.tx_bytes.load(Ordering::Relaxed),
        )
    }
}

fn closed_error(c: &Closed) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, c.to_string())
}

async fn read_loop<R: AsyncRead>(
    shared: Arc<Shared>,
    rd: R,
    accept: Option<mpsc::UnboundedSender<(SendStream, RecvStream)>>,
    idle: Option<Duration>,
) {
    tokio::pin!(rd);
    let mut closed_rx = shared.closed_tx.subscribe();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut accepted = Vec::new();
    let mut wakers = Vec::new();
    loop {
        // Every whole frame in the buffer is applied under one lock.
        let mut failure = None;
        {
            let mut st = shared.lock();
            loop {
                match frame::decode(&mut buf) {
                    Ok(Some(f)) => {
                        if let Err(e) = apply(&shared, &mut st, f, &mut accepted, &mut wakers) {
                            failure = Some(e);
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        failure = Some(Failure::Protocol(e.to_string()));
                        break;
                    }
                }
            }
            if let Some(f) = &failure {
                let closed = match f {
                    Failure::Protocol(reason) => Closed {
                        code: code::PROTOCOL,
                        reason: reason.clone(),
                        by_peer: false,
                    },
                    Failure::PeerClosed(c) => c.clone(),
                };
                shared.close_locked(&mut st, closed, &mut wakers);
            }
        }
        wakers.drain(..).for_each(Waker::wake);
        if let Some(tx) = &accept {
            for pair in accepted.drain(..) {
                // A connection loop that is gone drops the pair here, outside the lock.
                let _ = tx.send(pair);
            }
        }
        if failure.is_some() || *closed_rx.borrow() {
            return;
        }
        buf.reserve(16 * 1024);
        let read = rd.read_buf(&mut buf);
        let outcome = tokio::select! {
            r = async {
                match idle {
                    Some(d) => tokio::time::timeout(d, read).await.ok(),
                    None => Some(read.await),
                }
            } => r,
            _ = closed_rx.changed() => return,
        };
        match outcome {
            None => {
                shared.close(Closed {
                    code: code::IDLE,
                    reason: "idle timeout: nothing received".into(),
                    by_peer: false,
                });
                return;
            }
            Some(Ok(0)) => {
                shared.close(Closed {
                    code: code::NORMAL,
                    reason: "the peer closed the socket".into(),
                    by_peer: true,
                });
                return;
            }
            Some(Ok(n)) => {
                shared.rx_bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Some(Err(e)) => {
                shared.close(Closed {
                    code: code::NORMAL,
                    reason: format!("socket read failed: {e}"),
                    by_peer: true,
                });
                return;
            }
        }
    }
}

enum Failure {
    Protocol(String),
    PeerClosed(Closed),
}

fn protocol(reason: impl Into<String>) -> Failure {
    Failure::Protocol(reason.into())
}

/// Applies one frame from the peer.
fn apply(
    shared: &Arc<Shared>,
    st: &mut State,
    f: Frame,
    accepted: &mut Vec<(SendStream, RecvStream)>,
    wakers: &mut Vec<Waker>,
) -> Result<(), Failure> {
    match f {
        Frame::Data { stream, payload } => {
            open_peer_stream(shared, st, stream, true, accepted)?;
            let Some(s) = st.streams.get_mut(&stream) else {
                return Ok(()); // a stream this side already closed
            };
            if s.recv_fin {
                return Err(protocol(format!("DATA after FIN on stream {stream}")));
            }
            let len = payload.len() as u64;
            if len > s.recv_window {
                return Err(protocol(format!(
                    "stream {stream} sent past its flow-control window"
                )));
            }
            s.recv_window -= len;
            if !s.recv_dropped {
                s.recv.extend_from_slice(&payload);
                wakers.extend(s.recv_waker.take());
            }
        }
        Frame::Fin { stream } => {
            open_peer_stream(shared, st, stream, true, accepted)?;
            if let Some(s) = st.streams.get_mut(&stream) {
                s.recv_fin = true;
                wakers.extend(s.recv_waker.take());
            }
        }
        Frame::Stop { stream, .. } => {
            open_peer_stream(shared, st, stream, false, accepted)?;
            if let Some(s) = st.streams.get_mut(&stream) {
                s.stopped = true;
                wakers.extend(s.send_waker.take());
            }
        }
        Frame::Window { stream, increment } => {
            open_peer_stream(shared, st, stream, false, accepted)?;
            if let Some(s) = st.streams.get_mut(&stream) {
                s.send_window = s.send_window.saturating_add(increment);
                if s.send_window > 1 << 40 {
                    return Err(protocol("a flow-control window past 2^40 bytes"));
                }
                wakers.extend(s.send_waker.take());
            }
        }
        Frame::MaxStreams { max } => {
            if shared.role == Role::Server {
                return Err(protocol("MAX_STREAMS from a client"));
            }
            if max > st.max_id {
                st.max_id = max;
                shared.credit.notify_waiters();
            }
        }
        Frame::Ping => {}
        Frame::Close { code, reason } => {
            return Err(Failure::PeerClosed(Closed {
                code,
                reason,
                by_peer: true,
            }))
        }
    }
    Ok(())
}

/// Checks a stream id from the peer; on the server, a DATA or FIN past the highest id opens
/// every stream up to it (ids are used in order, as in QUIC).
fn open_peer_stream(
    shared: &Arc<Shared>,
    st: &mut State,
    id: u64,
    opens: bool,
    accepted: &mut Vec<(SendStream, RecvStream)>,
) -> Result<(), Failure> {
    match shared.role {
        Role::Client => {
            if id >= st.next_id {
                return Err(protocol(format!("stream {id} was never opened")));
            }
        }
        Role::Server => {
            if id <= st.highest {
                return Ok(());
            }
            if !opens {
                return Err(protocol(format!("stream {id} was never opened")));
            }
            if id > st.granted {
                return Err(protocol(format!(
                    "stream {id} is past the {} streams allowed",
                    st.granted
                )));
            }
            for new in st.highest + 1..=id {
                st.streams.insert(new, Stream::new());
                let session = Session {
                    shared: shared.clone(),
                };
                accepted.push(session.halves(new));
            }
            st.highest = id;
        }
    }
    Ok(())
}

async fn write_loop<W: AsyncWrite>(shared: Arc<Shared>, wr: W, keep_alive: Option<Duration>) {
    tokio::pin!(wr);
    loop {
        let (chunk, closing, waiters) = {
            let mut st = shared.lock();
            if st.grant_dirty {
                st.grant_dirty = false;
                let granted = st.granted;
                frame::put_max_streams(&mut st.out, granted);
            }
            let chunk = st.out.split().freeze();
            (
                chunk,
                st.closed.is_some(),
                std::mem::take(&mut st.out_waiters),
            )
        };
        waiters.into_iter().for_each(Waker::wake);
        if !chunk.is_empty() {
            let write = async {
                wr.write_all(&chunk).await?;
                wr.flush().await
            };
            let result = if closing {
                tokio::time::timeout(CLOSE_FLUSH, write)
                    .await
                    .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
            } else {
                write.await
            };
            if let Err(e) = result {
                shared.close(Closed {
                    code: code::NORMAL,
                    reason: format!("socket write failed: {e}"),
                    by_peer: true,
                });
                return;
            }
            shared
                .tx_bytes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            continue;
        }
        if closing {
            let _ = tokio::time::timeout(CLOSE_FLUSH, wr.shutdown()).await;
            return;
        }
        match keep_alive {
            Some(every) => {
                tokio::select! {
                    _ = shared.wake_writer.notified() => {}
                    _ = tokio::time::sleep(every) => {
                        frame::put_ping(&mut shared.lock().out);
                    }
                }
            }
            None => shared.wake_writer.notified().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair(max_streams: u32) -> (Session, Session, Incoming) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let client = Session::client(a, Duration::from_secs(5));
        let (server, incoming) = Session::server(b, max_streams, Some(Duration::from_secs(30)));
        (client, server, incoming)
    }

    #[tokio::test]
    async fn streams_carry_bytes_both_ways_and_end_with_fin() {
        let (client, _server, mut incoming) = pair(16).await;
        let (mut send, mut recv) = client.open().await.expect("open");
        send.write_all(b"request").await.expect("write");
        send.finish().expect("finish");
        let (mut s_send, mut s_recv) = incoming.accept().await.expect("accepted");
        let mut got = Vec::new();
        s_recv.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"request");
        s_send.write_all(b"response").await.expect("write");
        drop(s_send);
        let mut answer = Vec::new();
        recv.read_to_end(&mut answer).await.expect("read");
        assert_eq!(answer, b"response");
    }

    #[tokio::test]
    async fn an_unread_stream_does_not_block_another() {
        let (client, _server, mut incoming) = pair(16).await;
        // Stream 1: the server floods it, the client never reads it.
        let (mut send1, _recv1) = client.open().await.expect("open");
        send1.write_all(b"subscribe").await.expect("write");
        let (mut flood, _r) = incoming.accept().await.expect("accepted");
        let flooder = tokio::spawn(async move {
            let chunk = vec![7_u8; 16 * 1024];
            loop {
                if flood.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        });
        // Stream 2 still answers.
        let (mut send2, mut recv2) = client.open().await.expect("open");
        send2.write_all(b"ping").await.expect("write");
        send2.finish().expect("finish");
        let (mut s2, mut r2) = incoming.accept().await.expect("accepted");
        let mut got = Vec::new();
        r2.read_to_end(&mut got).await.expect("read");
        s2.write_all(b"pong").await.expect("write");
        drop(s2);
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), recv2.read_to_end(&mut answer))
            .await
            .expect("not blocked by the unread stream")
            .expect("read");
        assert_eq!(answer, b"pong");
        flooder.abort();
    }

    #[tokio::test]
    async fn the_client_waits_for_stream_credit() {
        let (client, _server, mut incoming) = pair(1).await;
        let first = client.open().await.expect("open");
        let second = tokio::time::timeout(Duration::from_millis(200), client.open()).await;
        assert!(second.is_err(), "only one stream is allowed");
        drop(first);
        let (s, r) = incoming.accept().await.expect("accepted");
        drop((s, r));
        tokio::time::timeout(Duration::from_secs(5), client.open())
            .await
            .expect("credit returned")
            .expect("open");
    }

    #[tokio::test]
    async fn garbage_closes_the_connection_with_a_reason() {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let (server, mut incoming) = Session::server(b, 16, Some(Duration::from_secs(30)));
        a.write_all(&[0xff; 12]).await.expect("write");
        assert!(incoming.accept().await.is_none());
        let closed = server.closed().await;
        assert_eq!(closed.code, code::PROTOCOL);
        // The server said why before closing.
        let mut rest = Vec::new();
        let _ = a.read_to_end(&mut rest).await;
        let mut buf = BytesMut::from(&rest[..]);
        let mut saw_close = false;
        while let Ok(Some(f)) = frame::decode(&mut buf) {
            saw_close |= matches!(
                f,
                Frame::Close {
                    code: code::PROTOCOL,
                    ..
                }
            );
        }
        assert!(saw_close);
    }

    #[tokio::test]
    async fn sending_past_the_window_is_a_protocol_error() {
        let (mut a, b) = tokio::io::duplex(1 << 22);
        let (server, mut incoming) = Session::server(b, 16, Some(Duration::from_secs(30)));
        let mut out = BytesMut::new();
        let chunk = vec![1_u8; MAX_DATA];
        for _ in 0..(INITIAL_WINDOW as usize / MAX_DATA + 1) {
            frame::put_data(&mut out, 1, &chunk);
        }
        a.write_all(&out).await.expect("write");
        let _ = incoming.accept().await;
        assert_eq!(server.closed().await.code, code::PROTOCOL);
    }

    #[test]
    fn frame_error_is_displayed() {
        assert!(frame::FrameError::UnknownType(9)
            .to_string()
            .contains("0x09"));
    }
}
