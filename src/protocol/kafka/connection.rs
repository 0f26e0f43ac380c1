//! One Kafka client connection.
//!
//! Kafka clients pipeline requests (librdkafka keeps up to five produce requests in flight) and
//! expect responses in request order. The reader decodes each request and runs its
//! *submission* step in order — for Produce that enqueues the batches on the partition writers,
//! so appends from one connection keep their order — then spawns the rest (waiting for fsync, a
//! long-poll fetch) as its own task. The writer task awaits those tasks in request order and
//! writes each response. A bounded queue between them caps the requests in flight per
//! connection, which is also the backpressure on a client that floods us.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::codec::{self, FrameError};
use super::handlers::{self, Outcome};
use super::KafkaContext;

/// Requests one connection may have in flight before we stop reading from it.
const MAX_IN_FLIGHT: usize = 32;

/// Who is on the other end, for handlers that need it (advertised address, client host).
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: Option<SocketAddr>,
    pub client_id: Option<String>,
}

pub async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<KafkaContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    let local = stream.local_addr().ok();
    let (mut reader, writer) = stream.into_split();
    let (queue, mut pending) = mpsc::channel::<JoinHandle<Outcome>>(MAX_IN_FLIGHT);
    metrics::gauge!("ferry_connections", "protocol" => "kafka").increment(1.0);

    let writer_task = tokio::spawn(async move {
        let mut out = BufWriter::new(writer);
        while let Some(handle) = pending.recv().await {
            let outcome = match handle.await {
                Ok(outcome) => outcome,
                Err(e) => {
                    tracing::error!(%peer, error = %e, "Kafka request handler failed");
                    break;
                }
            };
            match outcome {
                Outcome::Respond(bytes) => {
                    crate::observe::metrics::bytes_sent("kafka", bytes.len());
                    if out.write_all(&bytes).await.is_err() {
                        break;
                    }
                    // Flush only when nothing else is ready, so pipelined responses share writes.
                    if pending.is_empty() && out.flush().await.is_err() {
                        break;
                    }
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
    let mut client_gone = false;
    loop {
        let size = tokio::select! {
            size = reader.read_i32() => size,
            _ = crate::util::stopped(&mut shutdown) => break,
        };
        let Ok(size) = size else {
            // The client closed its side: nobody will read what is still pending (a held
            // fetch would otherwise keep this connection alive until its max_wait_ms).
            client_gone = true;
            break;
        };
        if size < 0 || size as usize > max {
            tracing::warn!(%peer, size, max, "Kafka request size out of bounds; closing connection");
            break;
        }
        // Grow the buffer as bytes arrive rather than trusting the prefix with an allocation.
        let mut frame = Vec::with_capacity((size as usize).min(64 * 1024));
        match (&mut reader)
            .take(size as u64)
            .read_to_end(&mut frame)
            .await
        {
            Ok(n) if n == size as usize => {}
            _ => break,
        }
        crate::observe::metrics::bytes_received("kafka", frame.len() + 4);
        let request = match codec::parse_request(Bytes::from(frame)) {
            Ok(r) => r,
            Err(FrameError::UnknownApiKey { key, version, .. }) => {
                tracing::warn!(%peer, key, version, "unknown Kafka api key; closing connection");
                break;
            }
            Err(e) => {
                tracing::warn!(%peer, error = %e, "malformed Kafka request; closing connection");
                break;
            }
        };
        let conn = ConnInfo {
            peer,
            local,
            client_id: request.client_id.clone(),
        };
        let work = handlers::dispatch(&ctx, &conn, request).await;
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
