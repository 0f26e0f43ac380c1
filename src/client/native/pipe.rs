//! The connection's publish stream: publishes from every task share one stream, written back to
//! back and answered in order (see the server's `publish_stream`), instead of a stream each.
//!
//! A writer task takes encoded requests off a channel and writes every one waiting in one
//! write; before writing a request it queues the caller's answer slot, so the reader task,
//! which takes answers off the stream, always finds the slot of the answer it read at the front.
//! When the stream fails (or the connection under it), the reader fails every slot still
//! waiting with a connection error, which `EventPublisher` meets by sending again on a new
//! connection, and the pipe reports itself closed so the next publish opens another.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

use super::connection::{read_result, NativeClientError};
use crate::proto::framed::FrameReader;
use crate::proto::stream::{RecvStream, SendStream};
use crate::proto::v1::response;

type Answer = oneshot::Sender<Result<response::Result, NativeClientError>>;

/// Requests gathered into one write at most.
const WRITE_BYTES: usize = 64 * 1024;

/// The answer slots of requests written and not yet answered.
#[derive(Default)]
struct Waiting {
    slots: VecDeque<Answer>,
    /// Set once the stream failed: no slot may be queued after that.
    closed: Option<String>,
}

/// A handle on the publish stream; cheap to clone.
#[derive(Clone)]
pub(super) struct PublishPipe {
    requests: mpsc::UnboundedSender<(Bytes, Answer)>,
    waiting: Arc<Mutex<Waiting>>,
}

impl PublishPipe {
    /// Starts the pipe's tasks on a freshly opened stream.
    pub(super) fn start(send: SendStream, recv: RecvStream, max_frame_bytes: usize) -> Self {
        let (requests, queued) = mpsc::unbounded_channel();
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        tokio::spawn(write_requests(send, queued, waiting.clone()));
        tokio::spawn(read_answers(
            FrameReader::new(recv, max_frame_bytes),
            waiting.clone(),
        ));
        Self { requests, waiting }
    }

    pub(super) fn is_open(&self) -> bool {
        !self.requests.is_closed() && self.waiting.lock().closed.is_none()
    }

    /// Sends one encoded request and waits for its answer.
    pub(super) async fn call(&self, frame: Bytes) -> Result<response::Result, NativeClientError> {
        let (answer, answered) = oneshot::channel();
        self.requests
            .send((frame, answer))
            .map_err(|_| NativeClientError::Connection("the publish stream is closed".into()))?;
        answered.await.map_err(|_| {
            NativeClientError::Connection("the publish stream closed before the answer".into())
        })?
    }
}

async fn write_requests(
    mut send: SendStream,
    mut queued: mpsc::UnboundedReceiver<(Bytes, Answer)>,
    waiting: Arc<Mutex<Waiting>>,
) {
    let mut out = BytesMut::new();
    while let Some(first) = queued.recv().await {
        let mut next = Some(first);
        while let Some((frame, answer)) = next.take() {
            {
                let mut w = waiting.lock();
                if let Some(reason) = &w.closed {
                    let _ = answer.send(Err(NativeClientError::Connection(reason.clone())));
                    return;
                }
                w.slots.push_back(answer);
            }
            out.extend_from_slice(&frame);
            if out.len() < WRITE_BYTES {
                next = queued.try_recv().ok();
            }
        }
        if let Err(e) = send.write_all(&out.split()).await {
            close(
                &waiting,
                format!("writing to the publish stream failed: {e}"),
            );
            return;
        }
    }
    // Every handle is gone: no more requests; the broker ends the stream once it answered.
    let _ = send.finish();
}

async fn read_answers(mut reader: FrameReader<RecvStream>, waiting: Arc<Mutex<Waiting>>) {
    let reason = loop {
        let answer = read_result(&mut reader).await;
        // A broker error answers one request; a connection error ends the stream.
        let failed = match &answer {
            Err(NativeClientError::Connection(e)) => Some(e.clone()),
            _ => None,
        };
        if let Some(reason) = failed {
            break reason;
        }
        let slot = waiting.lock().slots.pop_front();
        match slot {
            Some(slot) => {
                let _ = slot.send(answer);
            }
            None => break "the broker answered a request that was not sent".to_string(),
        }
    };
    close(&waiting, reason);
}

/// Fails every waiting request and refuses new ones.
fn close(waiting: &Mutex<Waiting>, reason: String) {
    let slots = {
        let mut w = waiting.lock();
        w.closed.get_or_insert(reason.clone());
        std::mem::take(&mut w.slots)
    };
    for slot in slots {
        let _ = slot.send(Err(NativeClientError::Connection(reason.clone())));
    }
}
