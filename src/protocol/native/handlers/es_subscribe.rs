//! Event-store catch-up subscriptions (`SubscribeToStream`, `SubscribeToAll`): after
//! `Subscribed`, the core's [`CatchUp`] cursor is polled and every event, checkpoint and
//! caught-up / fell-behind signal is written as a `CatchUp` response, waiting on the partition's
//! high watermark when there is nothing new. Stream flow control is the back-pressure: a slow
//! client stalls `write`, not the broker's memory. The client ends it by finishing its side.

use std::time::Duration;

use bytes::BytesMut;
use prost::Message as _;

use crate::proto::stream::{RecvStream, SendStream};

use super::super::connection::Ctx;
use super::super::convert::NativeError;
use super::es::recorded;
use crate::es::{CatchUp, CatchUpMessage, EventFilter, EventStore};
use crate::proto::framed::{self, FrameReader};
use crate::proto::v1::{self, catch_up::Message as M, event_filter::Kind, response, ErrorCode};

/// Messages read from the log per poll.
const POLL_MESSAGES: usize = 256;
/// A live subscription re-polls this often even without a watermark change (topic deleted).
const RECHECK: Duration = Duration::from_secs(1);
/// Largest compiled filter regex (bytes of program), to bound what a client may make us build.
const MAX_REGEX_BYTES: usize = 1 << 20;

pub(crate) async fn to_stream(
    ctx: &Ctx,
    s: v1::SubscribeToStream,
    send: &mut SendStream,
    reader: FrameReader<RecvStream>,
) -> Result<(), NativeError> {
    let catch_up = EventStore::new(&ctx.core)
        .subscribe_to_stream(&s.topic, &s.stream, s.from_revision)
        .await?;
    run(catch_up, &s.stream, send, reader).await
}

pub(crate) async fn to_all(
    ctx: &Ctx,
    s: v1::SubscribeToAll,
    send: &mut SendStream,
    reader: FrameReader<RecvStream>,
) -> Result<(), NativeError> {
    let filter = filter(s.filter)?;
    let catch_up = EventStore::new(&ctx.core).subscribe_to_all(
        &s.topic,
        s.partition,
        s.from_position,
        filter,
        u64::from(s.checkpoint_interval),
    )?;
    run(catch_up, "$all", send, reader).await
}

/// The core's filter of a wire filter (regexes compiled with a size cap).
pub(super) fn filter(wire: Option<v1::EventFilter>) -> Result<Option<EventFilter>, NativeError> {
    let regex = |pattern: &str| {
        regex::RegexBuilder::new(pattern)
            .size_limit(MAX_REGEX_BYTES)
            .build()
            .map_err(|e| NativeError::new(ErrorCode::InvalidArgument, format!("filter: {e}")))
    };
    Ok(match wire.and_then(|f| f.kind) {
        None => None,
        Some(Kind::StreamPrefix(p)) => Some(EventFilter::StreamPrefix(p)),
        Some(Kind::StreamRegex(r)) => Some(EventFilter::StreamRegex(regex(&r)?)),
        Some(Kind::TypePrefix(p)) => Some(EventFilter::TypePrefix(p)),
        Some(Kind::TypeRegex(r)) => Some(EventFilter::TypeRegex(regex(&r)?)),
    })
}

async fn write(send: &mut SendStream, r: &v1::Response) -> Result<(), NativeError> {
    framed::write(send, r)
        .await
        .map_err(|e| NativeError::new(ErrorCode::Unavailable, format!("stream closed: {e}")))
}

async fn run(
    mut catch_up: CatchUp,
    name: &str,
    send: &mut SendStream,
    mut reader: FrameReader<RecvStream>,
) -> Result<(), NativeError> {
    let subscribed = v1::Response {
        result: Some(response::Result::Subscribed(v1::Subscribed {
            name: name.to_string(),
        })),
    };
    write(send, &subscribed).await?;
    // Nothing is expected from the client; its finishing (or failing) ends the subscription.
    let closed = async move { while let Ok(Some(_)) = reader.next::<v1::Request>().await {} };
    tokio::pin!(closed);
    loop {
        let messages = catch_up.poll(POLL_MESSAGES)?;
        if messages.is_empty() {
            tokio::select! {
                _ = catch_up.wait() => {}
                _ = tokio::time::sleep(RECHECK) => {}
                _ = &mut closed => return Ok(()),
            }
            continue;
        }
        // One write per poll, not per message: every stream write takes the connection's lock
        // (QUIC) or a frame of its own (TCP) and may wake a driver, a fixed cost per call that a
        // small event cannot amortise.
        let mut frames = BytesMut::new();
        for message in messages {
            let message = match message {
                CatchUpMessage::Event(e) => M::Event(recorded(e)),
                CatchUpMessage::Checkpoint(p) => M::Checkpoint(p),
                CatchUpMessage::CaughtUp(p) => M::CaughtUp(p),
                CatchUpMessage::FellBehind(p) => M::FellBehind(p),
            };
            let response = v1::Response {
                result: Some(response::Result::CatchUp(v1::CatchUp {
                    message: Some(message),
                })),
            };
            // Writing into a BytesMut grows it as needed; it cannot run out of capacity.
            let _ = response.encode_length_delimited(&mut frames);
        }
        super::subscribe::write_bytes(send, &frames).await?;
    }
}
