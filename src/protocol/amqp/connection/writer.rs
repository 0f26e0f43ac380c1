//! The single writer task of a connection's socket.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use crate::protocol::amqp::channel::Outbound;
use crate::protocol::amqp::codec;

/// The single writer of the socket. Batches whatever is queued into one write, and sends a
/// heartbeat after `heartbeat` seconds without writing anything.
pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Outbound>,
    mut heartbeat: watch::Receiver<u16>,
    connection: std::sync::Arc<crate::broker::connections::Connection>,
) {
    let mut batch = BytesMut::new();
    let mut tuning = true;
    loop {
        let interval = *heartbeat.borrow_and_update();
        let idle = async {
            if interval == 0 {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_secs(u64::from(interval))).await;
        };
        tokio::select! {
            m = rx.recv() => {
                let Some(first) = m else { break };
                // Small frames are coalesced into one write; big messages are written from
                // their own buffer. Budget permits are released once their bytes are written.
                let mut permits = Vec::new();
                let mut next = Some(first);
                let mut failed = false;
                let mut written = 0;
                while let Some((bytes, permit)) = next.take() {
                    permits.push(permit);
                    crate::observe::metrics::bytes_sent("amqp", bytes.len());
                    written += bytes.len();
                    if bytes.len() >= 64 * 1024 {
                        failed |= wr.write_all(&batch).await.is_err();
                        batch.clear();
                        failed |= wr.write_all(&bytes).await.is_err();
                    } else {
                        batch.extend_from_slice(&bytes);
                    }
                    if failed || batch.len() >= 256 * 1024 {
                        break;
                    }
                    next = rx.try_recv().ok();
                }
                failed |= wr.write_all(&batch).await.is_err();
                // A TLS stream may hold the tail of a record until flushed (TCP: a no-op).
                failed |= wr.flush().await.is_err();
                batch.clear();
                connection.add_sent(written);
                drop(permits);
                if failed {
                    break;
                }
            }
            _ = idle => {
                let mut hb = BytesMut::new();
                codec::encode_heartbeat(&mut hb);
                if wr.write_all(&hb).await.is_err() || wr.flush().await.is_err() {
                    break;
                }
                connection.add_sent(hb.len());
            }
            // Once the connection drops its sender, only the frame channel matters.
            r = heartbeat.changed(), if tuning => tuning = r.is_ok(),
        }
    }
    // Drain so senders blocked on a full channel are released.
    rx.close();
    let _ = wr.shutdown().await;
}
