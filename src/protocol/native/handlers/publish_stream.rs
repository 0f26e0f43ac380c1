//! Publish streams: a stream whose first request is `Publish` or `PublishBatch` may carry more
//! of either, and each is answered on it, in request order, once durable.
//!
//! A stream per publish costs both ends a stream open, a task and a frame reader per message,
//! which held native publishing to a third of AMQP's rate. Here one task reads the requests and
//! hands each to the core as it arrives (the next one does not wait for the last one's fsync,
//! so one fsync covers everything that arrived meanwhile, as on an AMQP channel in confirm
//! mode), and a second future in the same task answers them in order, writing every answer
//! that is already due in one write. A client that sends one request and finishes its side
//! sees exactly the unary exchange it always did.
//!
//! A refused publish (unknown destination, schema, permission, full queue) is answered with
//! its error and the stream goes on; a frame that cannot be read, or a request that is not a
//! publish, is answered with an error that ends the stream. Each request holds its bytes of the
//! connection's frame budget until answered, and at most [`IN_FLIGHT`] requests wait per stream,
//! so a client that never reads its answers stops being read.

use bytes::BytesMut;
use futures::FutureExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::super::connection::Ctx;
use super::super::convert::NativeError;
use super::authorize;
use super::publish::{confirm, confirm_batch, submit_batch, submit_one, Submitted};
use crate::proto::framed::FrameReader;
use crate::proto::stream::{RecvStream, SendStream};
use crate::proto::v1::{self, request::Op, response::Result as R};

/// Requests handed to the core and not yet answered, per stream.
const IN_FLIGHT: usize = 4096;

/// Answers gathered into one write at most (more wait for the next one).
const WRITE_BYTES: usize = 64 * 1024;

/// A request handed to the core, waiting for its answer.
enum Pending {
    One(Result<Submitted, NativeError>),
    Batch(Result<Vec<Submitted>, NativeError>),
    /// Answered with this error, then the stream ends.
    Fatal(NativeError),
}

impl Pending {
    async fn answer(self) -> v1::Response {
        let result = match self {
            Pending::One(s) => match s {
                Ok(s) => confirm(s).await.map(R::Published),
                Err(e) => Err(e),
            },
            Pending::Batch(s) => match s {
                Ok(s) => confirm_batch(s).await.map(R::PublishedBatch),
                Err(e) => Err(e),
            },
            Pending::Fatal(e) => Err(e),
        };
        match result {
            Ok(r) => v1::Response { result: Some(r) },
            Err(e) => e.response(),
        }
    }
}

/// Serves a publish stream whose first request (already read and authorized) is `first`.
pub(super) async fn serve(
    ctx: &Ctx,
    first: Op,
    send: &mut SendStream,
    mut reader: FrameReader<RecvStream>,
) {
    let (queued, mut waiting) = mpsc::channel::<(Pending, Option<OwnedSemaphorePermit>)>(IN_FLIGHT);
    let intake = async move {
        let mut first = Some(first);
        loop {
            // The first request holds the budget its stream took; it was authorized by the
            // dispatcher. Every later one is checked here, since it may name another
            // destination.
            let (pending, permit) = match first.take() {
                Some(op) => (submit(ctx, op).await, None),
                None => match read_request(ctx, &mut reader).await {
                    Ok(Some((op, permit))) => match authorize::authorize(ctx, &op) {
                        Ok(()) => (submit(ctx, op).await, Some(permit)),
                        Err(e) => (refused(&op, e), Some(permit)),
                    },
                    Ok(None) => return,
                    Err(e) => (Pending::Fatal(e), None),
                },
            };
            let fatal = matches!(pending, Pending::Fatal(_));
            if queued.send((pending, permit)).await.is_err() || fatal {
                return;
            }
        }
    };
    let answers = {
        let send = &mut *send;
        async move {
            let mut out = BytesMut::new();
            while let Some(first) = waiting.recv().await {
                let mut entry = Some(first);
                while let Some((pending, permit)) = entry.take() {
                    let fatal = matches!(pending, Pending::Fatal(_));
                    let answer = pending.answer();
                    tokio::pin!(answer);
                    // Answers already due go out together; before waiting on one that is not,
                    // the ones gathered so far are sent.
                    let response = match answer.as_mut().now_or_never() {
                        Some(r) => r,
                        None => {
                            if !out.is_empty() && send.write_all(&out.split()).await.is_err() {
                                return;
                            }
                            answer.await
                        }
                    };
                    crate::proto::codec::encode_into(&response, &mut out);
                    drop(permit);
                    if fatal {
                        let _ = send.write_all(&out.split()).await;
                        return;
                    }
                    if out.len() < WRITE_BYTES {
                        entry = waiting.try_recv().ok();
                    }
                }
                if send.write_all(&out.split()).await.is_err() {
                    return;
                }
            }
        }
    };
    // One task: the intake and the answers run side by side without a spawn per stream.
    tokio::join!(intake, answers);
    let _ = send.finish();
}

/// The next request with its share of the frame budget; `Ok(None)` once the client finished
/// or the stream failed.
async fn read_request(
    ctx: &Ctx,
    reader: &mut FrameReader<RecvStream>,
) -> Result<Option<(Op, OwnedSemaphorePermit)>, NativeError> {
    let len = match reader.next_len().await {
        Ok(Some(len)) => len,
        Ok(None) => return Ok(None),
        Err(e) => return NativeError::unreadable(e).map_or(Ok(None), Err),
    };
    let permits = u32::try_from(len.max(1)).unwrap_or(u32::MAX);
    let permit = ctx
        .frame_budget
        .clone()
        .acquire_many_owned(permits)
        .await
        .map_err(|_| NativeError::new(v1::ErrorCode::Unavailable, "the connection is closing"))?;
    match reader.next::<v1::Request>().await {
        Ok(Some(v1::Request { op: Some(op) })) => Ok(Some((op, permit))),
        Ok(Some(v1::Request { op: None })) => Err(NativeError::malformed(
            "the request names no operation this server knows",
        )),
        Ok(None) => Err(NativeError::malformed("the stream ended inside a frame")),
        Err(e) => NativeError::unreadable(e).map_or(Ok(None), Err),
    }
}

/// Hands one request of the stream to the core.
async fn submit(ctx: &Ctx, op: Op) -> Pending {
    match op {
        Op::Publish(p) => Pending::One(submit_one(ctx, p).await),
        Op::PublishBatch(b) => Pending::Batch(submit_batch(ctx, b).await),
        _ => Pending::Fatal(NativeError::malformed(
            "only publish and publish batch requests may follow a publish on its stream",
        )),
    }
}

/// The answer to a request the user may not make: refused, and the stream goes on (unless the
/// request was no publish at all).
fn refused(op: &Op, e: NativeError) -> Pending {
    match op {
        Op::Publish(_) => Pending::One(Err(e)),
        Op::PublishBatch(_) => Pending::Batch(Err(e)),
        _ => Pending::Fatal(e),
    }
}
