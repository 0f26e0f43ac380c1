//! One function per request family; [`dispatch`] answers a stream's first request.

mod admin;
mod authorize;
mod es;
mod es_persistent;
mod es_subscribe;
mod group;
mod processed;
mod publish;
mod publish_stream;
mod subscribe;

use crate::proto::stream::{RecvStream, SendStream};

pub(super) use authorize::PermissionCache;

use super::connection::Ctx;
use super::convert::NativeError;
use crate::proto::framed::{self, FrameReader};
use crate::proto::v1::{request::Op, response::Result as R, Done, Response};

/// The declarations and processed-id requests: one answer each.
async fn unary(ctx: &Ctx, op: Op) -> Result<R, NativeError> {
    let done = |()| R::Done(Done {});
    match op {
        Op::DeclareTopic(d) => admin::declare_topic(ctx, d).await.map(done),
        Op::DeleteTopic(d) => admin::delete_topic(ctx, d).await.map(done),
        Op::DeclareExchange(d) => admin::declare_exchange(ctx, d).await.map(done),
        Op::DeleteExchange(d) => admin::delete_exchange(ctx, d).await.map(done),
        Op::DeclareQueue(d) => admin::declare_queue(ctx, d).await.map(R::QueueDeclared),
        Op::DeleteQueue(d) => admin::delete_queue(ctx, d).await.map(done),
        Op::Bind(b) => admin::bind(ctx, b).await.map(done),
        Op::Unbind(b) => admin::unbind(ctx, b).await.map(done),
        Op::CheckProcessed(c) => processed::check(ctx, c).await.map(R::ProcessedStatus),
        Op::RecordProcessed(r) => processed::record(ctx, r).await.map(done),
        Op::AppendToStream(a) => es::append(ctx, a).await.map(R::StreamAppended),
        Op::DeleteStream(d) => es::delete(ctx, d).await.map(R::StreamAppended),
        Op::GetStreamInfo(g) => es::info(ctx, g).await.map(R::StreamInfo),
        Op::ReadStream(r) => es::read_stream(ctx, r).await.map(R::EventsRead),
        Op::ReadAll(r) => es::read_all(ctx, r).await.map(R::EventsRead),
        Op::SetStreamMetadata(m) => es::set_metadata(ctx, m).await.map(R::StreamAppended),
        Op::CreatePersistentSubscription(c) => es_persistent::create(ctx, c).await.map(done),
        Op::UpdatePersistentSubscription(u) => es_persistent::update(ctx, u).await.map(done),
        Op::DeletePersistentSubscription(d) => es_persistent::delete(ctx, d).await.map(done),
        Op::ListPersistentSubscriptions(l) => es_persistent::list(ctx, l)
            .await
            .map(R::PersistentSubscriptions),
        Op::ReplayParked(r) => es_persistent::replay(ctx, r).await.map(R::ParkedReplayed),
        _ => Err(NativeError::malformed(
            "the request names no operation this server knows",
        )),
    }
}

/// Answers `op` on its stream: one response for a unary call, a sequence for a subscription;
/// an error is answered as a typed [`crate::proto::v1::Error`].
pub(super) async fn dispatch(
    ctx: &Ctx,
    op: Op,
    send: &mut SendStream,
    reader: FrameReader<RecvStream>,
) {
    if let Err(e) = authorize::authorize(ctx, &op) {
        let _ = framed::write(send, &e.response()).await;
        let _ = send.finish();
        return;
    }
    // Every handler's future is boxed: a stream's task is as large as the largest state it may
    // reach and is copied into every spawned task. Inline subscriptions made each publish's
    // task several kilobytes, copied per request; publishes now share a long-lived stream.
    if matches!(op, Op::Publish(_) | Op::PublishBatch(_)) {
        return Box::pin(publish_stream::serve(ctx, op, send, reader)).await;
    }
    let done = |()| R::Done(Done {});
    let answer = match op {
        Op::SubscribeQueue(s) => Box::pin(subscribe::queue(ctx, s, send, reader))
            .await
            .map(done),
        Op::SubscribeTopic(s) => Box::pin(subscribe::topic(ctx, s, send, reader))
            .await
            .map(done),
        Op::Settle(_) => Err(NativeError::malformed(
            "settle belongs on the stream of the subscription that delivered the message",
        )),
        Op::Authenticate(_) => Err(NativeError::new(
            crate::proto::v1::ErrorCode::InvalidArgument,
            "this connection is already authenticated",
        )),
        Op::SubscribeToStream(s) => Box::pin(es_subscribe::to_stream(ctx, s, send, reader))
            .await
            .map(done),
        Op::SubscribeToAll(s) => Box::pin(es_subscribe::to_all(ctx, s, send, reader))
            .await
            .map(done),
        Op::SubscribePersistent(s) => Box::pin(es_persistent::subscribe(ctx, s, send, reader))
            .await
            .map(done),
        Op::PersistentSettle(_) => Err(NativeError::malformed(
            "a persistent settle belongs on the stream of the subscription that delivered it",
        )),
        other => Box::pin(unary(ctx, other)).await,
    };
    let response = match answer {
        Ok(result) => Response {
            result: Some(result),
        },
        Err(e) => e.response(),
    };
    let _ = framed::write(send, &response).await;
    let _ = send.finish();
}
