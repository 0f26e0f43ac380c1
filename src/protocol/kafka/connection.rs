//! One Kafka client connection.
//!
//! Kafka clients pipeline requests (librdkafka keeps up to five produce requests in flight) and
//! expect responses in request order. The reader decodes each request and runs its
//! *submission* step in order — for Produce that enqueues the batches on the partition writers,
//! so appends from one connection keep their order — then spawns the rest (waiting for fsync, a
//! long-poll fetch) as its own task. The writer task awaits those tasks in request order and
//! writes each response. A bounded queue between them caps the requests in flight per
//! connection, which is also the backpressure on a client that floods us: with 32 requests
//! waiting (for the disk, or for a client that does not read its responses) the reader stops
//! reading and TCP pushes back on the client.
//!
//! Hostile peers: a size prefix above `kafka.max_request_bytes` (a 2 GiB one, say) closes the
//! connection before anything is allocated for it, and a body is buffered only as its bytes
//! arrive. A connection that completes no request for `kafka.connections_max_idle_ms` while
//! nothing of its is in flight is closed (Kafka's `connections.max.idle.ms`); the same clock
//! runs while a request trickles in, so sending one byte at a time does not hold a connection.
//!
//! The loop is generic over the stream ([`Transport`]), so plaintext and TLS connections run
//! the same code; the TLS handshake has happened before [`run`] is called. A zero-copy fetch
//! answer ([`Outcome::RespondParts`]) is the one place the writer needs the plain socket: it
//! flushes the encoded bytes before each segment-file span and sends the span with
//! `sendfile(2)`, driven by tokio's writability readiness on the non-blocking socket.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufWriter, Interest};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::codec::{self, FrameError, ResponsePart};
use super::handlers::{self, Outcome};
use super::sasl::{Gate, SaslState};
use super::KafkaContext;
use crate::broker::connections::{close_requested, NewConnection, Protocol};
use crate::log::FileSpan;
use crate::tls::{ConnSecurity, Transport};

/// Requests one connection may have in flight before we stop reading from it.
const MAX_IN_FLIGHT: usize = 32;

/// Who is on the other end, for handlers that need it (advertised address, client host).
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: Option<SocketAddr>,
    pub client_id: Option<String>,
    /// TLS or not, and the client certificate's principal (mTLS).
    pub security: ConnSecurity,
    /// The user this connection authenticated as with SASL.
    pub user: Option<String>,
}

/// Serves one connection; `local` is the socket's local address (taken before a TLS
/// handshake wrapped it), `security` what the handshake established.
pub async fn run<S: Transport>(
    stream: S,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    security: ConnSecurity,
    ctx: Arc<KafkaContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (mut reader, writer) = stream.split_halves();
    let (queue, mut pending) = mpsc::channel::<JoinHandle<Outcome>>(MAX_IN_FLIGHT);
    metrics::gauge!("ferry_connections", "protocol" => "kafka").increment(1.0);
    let registration = ctx.core.connections().register(NewConnection {
        protocol: Protocol::Kafka,
        peer,
        local,
        tls: security.tls,
    });
    // The mTLS user (the mapped subject) is the principal; without one the listing shows
    // Kafka's ANONYMOUS until a SASL handshake sets the user (set once, so set it only when
    // known).
    if let Some(principal) = &security.client_cert {
        registration.set_user(&principal.name);
    }
    let mut close_requests = registration.close_requests();
    let written = registration.handle();
    // Requests read but not yet answered: while any is, the connection is not idle.
    let in_flight = Arc::new(AtomicUsize::new(0));
    let answered = in_flight.clone();

    let writer_task = tokio::spawn(async move {
        let mut out = BufWriter::new(writer);
        while let Some(handle) = pending.recv().await {
            let outcome = handle.await;
            answered.fetch_sub(1, Ordering::Relaxed);
            let outcome = match outcome {
                Ok(outcome) => outcome,
                Err(e) => {
                    tracing::error!(%peer, error = %e, "Kafka request handler failed");
                    break;
                }
            };
            match outcome {
                Outcome::Respond(bytes) => {
                    crate::observe::metrics::bytes_sent("kafka", bytes.len());
                    written.add_sent(bytes.len());
                    if out.write_all(&bytes).await.is_err() {
                        break;
                    }
                    // Flush only when nothing else is ready, so pipelined responses share writes.
                    if pending.is_empty() && out.flush().await.is_err() {
                        break;
                    }
                }
                Outcome::RespondParts(response) => {
                    crate::observe::metrics::bytes_sent("kafka", response.len);
                    written.add_sent(response.len);
                    if let Err(e) = write_parts::<S>(&mut out, response.parts).await {
                        // A short sendfile (a segment file cut under us) or a dead peer: part of
                        // a response may be out, so the connection cannot go on.
                        tracing::debug!(%peer, error = %e, "Kafka response not sent; closing");
                        break;
                    }
                    if pending.is_empty() && out.flush().await.is_err() {
                        break;
                    }
                }
                Outcome::RespondThenClose(bytes) => {
                    let _ = out.write_all(&bytes).await;
                    break;
                }
                Outcome::NoResponse => {}
                Outcome::Close(reason) => {
                    tracing::debug!(%peer, reason, "closing Kafka connection");
                    break;
                }
            }
        }
        let _ = out.flush().await;
        let _ = out.shutdown().await;
    });

    let max = ctx.settings.kafka.max_request_bytes;
    // Clamped (to ~49 days) so that adding it to an instant can never overflow.
    let idle = Duration::from_millis(
        ctx.settings
            .kafka
            .connections_max_idle_ms
            .min(u64::from(u32::MAX)),
    );
    let mut client_gone = false;
    let mut sasl = SaslState::new(&ctx, peer, &security);
    loop {
        let mut deadline = tokio::time::Instant::now() + idle;
        let read = read_request(&mut reader, max);
        tokio::pin!(read);
        let read = loop {
            tokio::select! {
                r = &mut read => break Some(r),
                _ = tokio::time::sleep_until(deadline) => {
                    if in_flight.load(Ordering::Relaxed) > 0 {
                        deadline = tokio::time::Instant::now() + idle;
                        continue;
                    }
                    tracing::info!(%peer, idle_ms = idle.as_millis() as u64, "Kafka connection idle; closing");
                    metrics::counter!("ferry_connections_idle_closed_total", "protocol" => "kafka").increment(1);
                    break None;
                }
                _ = crate::util::stopped(&mut shutdown) => break None,
                // Kafka has no server-side close frame: a forced close drops the socket.
                reason = close_requested(&mut close_requests) => {
                    tracing::info!(%peer, reason, "Kafka connection closed by an administrator");
                    client_gone = true;
                    break None;
                }
            }
        };
        let frame = match read {
            None => break,
            Some(Read::Frame(frame)) => frame,
            Some(Read::Closed) => {
                // The client closed its side: nobody will read what is still pending (a held
                // fetch would otherwise keep this connection alive until its max_wait_ms).
                client_gone = true;
                break;
            }
            Some(Read::TooLarge(size)) => {
                tracing::warn!(%peer, size, max, "Kafka request size out of bounds; closing connection");
                break;
            }
            Some(Read::Truncated) => break,
        };
        crate::observe::metrics::bytes_received("kafka", frame.len() + 4);
        registration.add_received(frame.len() + 4);
        // SASL requests are answered here, in order, before anything else of the connection
        // runs; other requests pass only once the connection may send them.
        let gate = if sasl.expects_raw_token() {
            Some(sasl.raw_token(&ctx, &frame).await)
        } else {
            None
        };
        let (request, gate) = match gate {
            Some(gate) => (None, gate),
            None => match codec::parse_request(Bytes::from(frame)) {
                Ok(r) => {
                    let gate = sasl.gate(&ctx, &r).await;
                    (Some(r), gate)
                }
                Err(FrameError::UnknownApiKey { key, version, .. }) => {
                    tracing::warn!(%peer, key, version, "unknown Kafka api key; closing connection");
                    break;
                }
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "malformed Kafka request; closing connection");
                    break;
                }
            },
        };
        let (answer, last) = match gate {
            Gate::Pass => (None, false),
            Gate::Answered(outcome) => (Some(outcome), false),
            Gate::Final(Outcome::Respond(bytes)) => (Some(Outcome::RespondThenClose(bytes)), true),
            Gate::Final(outcome) => (Some(outcome), true),
            Gate::Refuse(reason) => {
                tracing::info!(%peer, reason, "closing Kafka connection");
                break;
            }
        };
        if let Some(outcome) = answer {
            // A SASL exchange may just have named the user (the registry keeps the first).
            if let Some(user) = sasl.user() {
                registration.set_user(user);
            }
            in_flight.fetch_add(1, Ordering::Relaxed);
            let sent = queue.send(tokio::spawn(std::future::ready(outcome))).await;
            if sent.is_err() || last {
                break;
            }
            continue;
        }
        let Some(request) = request else { break };
        if let Some(client_id) = &request.client_id {
            registration.set_client_name(client_id);
        }
        let conn = ConnInfo {
            peer,
            local,
            client_id: request.client_id.clone(),
            security: security.clone(),
            user: sasl.user().map(str::to_string),
        };
        let work = handlers::dispatch(&ctx, &conn, request).await;
        in_flight.fetch_add(1, Ordering::Relaxed);
        if queue.send(tokio::spawn(work)).await.is_err() {
            break;
        }
    }
    drop(queue);
    if client_gone {
        writer_task.abort();
    }
    let _ = writer_task.await;
    metrics::gauge!("ferry_connections", "protocol" => "kafka").decrement(1.0);
}

/// Writes a response in pieces: encoded bytes through the buffered writer, file spans with
/// `sendfile(2)` on the plain socket after flushing what precedes them (or, on a stream that
/// has no plain socket, read and written like any bytes).
async fn write_parts<S: Transport>(
    out: &mut BufWriter<S::Write>,
    parts: Vec<ResponsePart>,
) -> std::io::Result<()> {
    for part in parts {
        match part {
            ResponsePart::Bytes(bytes) => out.write_all(&bytes).await?,
            ResponsePart::File(span) => {
                out.flush().await?;
                match S::plain_socket(out.get_ref()) {
                    Some(socket) => {
                        sendfile_all(socket, &span).await?;
                        crate::observe::metrics::kafka_fetch_bytes("sendfile", span.len);
                    }
                    None => {
                        let bytes = crate::log::LogSpans {
                            spans: vec![span],
                            first_offset: 0,
                            next_offset: 0,
                        }
                        .read_bytes()
                        .map_err(std::io::Error::other)?;
                        out.write_all(&bytes).await?;
                        crate::observe::metrics::kafka_fetch_bytes("copy", bytes.len());
                    }
                }
            }
        }
    }
    Ok(())
}

/// Sends all of `span` from its file to the non-blocking `socket`: `sendfile` whenever tokio
/// says the socket is writable, resuming after partial sends and `EAGAIN`. The file ending
/// before the span does (truncated while we send) is an error; the bytes sent so far were the
/// right ones, and the caller closes the connection rather than send anything else.
async fn sendfile_all(socket: &TcpStream, span: &FileSpan) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let end = span.pos + span.len as u64;
    let mut offset = libc::off_t::try_from(span.pos).map_err(std::io::Error::other)?;
    let (out_fd, in_fd) = (socket.as_raw_fd(), span.file.as_raw_fd());
    while (offset as u64) < end {
        // Linux sends at most ~2 GiB per call; a response is far smaller.
        let want = (end - offset as u64).min(1 << 30) as usize;
        socket.writable().await?;
        let sent = socket.try_io(Interest::WRITABLE, || {
            // SAFETY: both descriptors are open for the call (the socket is borrowed, the file
            // held by `span`), and `offset` is a valid pointer the kernel advances.
            let n = unsafe { libc::sendfile(out_fd, in_fd, &mut offset, want) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match sent {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "segment file ended before the fetched batches",
                ))
            }
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What reading one request frame gave.
enum Read {
    Frame(Vec<u8>),
    /// End of stream before a size prefix: the client hung up.
    Closed,
    /// A size prefix that is negative or above the maximum.
    TooLarge(i32),
    /// The stream ended inside a frame.
    Truncated,
}

/// Reads one size-prefixed request. The prefix is checked against `max` before anything is
/// allocated, and the buffer grows as bytes arrive rather than trusting the prefix.
async fn read_request<R: AsyncRead + Unpin>(reader: &mut R, max: usize) -> Read {
    let Ok(size) = reader.read_i32().await else {
        return Read::Closed;
    };
    if size < 0 || size as usize > max {
        return Read::TooLarge(size);
    }
    let mut frame = Vec::with_capacity((size as usize).min(64 * 1024));
    match reader.take(size as u64).read_to_end(&mut frame).await {
        Ok(n) if n == size as usize => Read::Frame(frame),
        _ => Read::Truncated,
    }
}
