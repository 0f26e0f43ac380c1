//! Event-store requests: append to a stream with an expected revision, delete a stream, a
//! stream's state. Events arrive as `Message`s and become records through `convert::to_record`
//! (the CloudEvents headers); the event store (`crate::es`) adds the key, `ce_subject` and the
//! revision, checks and writes.

use super::super::connection::Ctx;
use super::super::convert::{self, NativeError};
use crate::es::{
    AppendOutcome, EsError, EventStore, ExpectedRevision, NewEvent, ReadFrom, RecordedEvent,
    StreamLimits,
};
use crate::proto::v1::{
    self, expected_revision::Kind, read_stream::From as Start, stream_appended::Outcome, ErrorCode,
};

/// Events a read returns when the request says 0.
const DEFAULT_READ_COUNT: usize = 100;

impl From<EsError> for NativeError {
    fn from(e: EsError) -> Self {
        let code = match &e {
            EsError::UnknownTopic(_) => ErrorCode::NotFound,
            EsError::NotEventStore(_) | EsError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            EsError::StreamDeleted(_) => ErrorCode::StreamDeleted,
            EsError::StreamNotFound(_) => ErrorCode::StreamNotFound,
            EsError::Unavailable(_) | EsError::Log(_) | EsError::Meta(_) => ErrorCode::Unavailable,
            EsError::GroupNotFound(_) => ErrorCode::NotFound,
            EsError::Conflict(_) => ErrorCode::Conflict,
            EsError::Broker(b) => return NativeError::from_broker(b),
        };
        NativeError::new(code, e.client_message())
    }
}

fn expected(wire: Option<v1::ExpectedRevision>) -> ExpectedRevision {
    match wire.and_then(|e| e.kind) {
        None | Some(Kind::Any(_)) => ExpectedRevision::Any,
        Some(Kind::NoStream(_)) => ExpectedRevision::NoStream,
        Some(Kind::StreamExists(_)) => ExpectedRevision::StreamExists,
        Some(Kind::Exact(n)) => ExpectedRevision::Exact(n),
    }
}

fn expected_to_wire(expected: ExpectedRevision) -> v1::ExpectedRevision {
    let kind = match expected {
        ExpectedRevision::Any => Kind::Any(true),
        ExpectedRevision::NoStream => Kind::NoStream(true),
        ExpectedRevision::StreamExists => Kind::StreamExists(true),
        ExpectedRevision::Exact(n) => Kind::Exact(n),
    };
    v1::ExpectedRevision { kind: Some(kind) }
}

fn answer(outcome: AppendOutcome) -> v1::StreamAppended {
    let outcome = match outcome {
        AppendOutcome::Success(s) => Outcome::Success(v1::AppendSuccess {
            next_expected_revision: s.next_expected_revision,
            partition: s.partition,
            position: s.position,
            duplicate: s.duplicate,
        }),
        AppendOutcome::WrongExpectedVersion { current, expected } => {
            Outcome::WrongExpectedVersion(v1::WrongExpectedVersion {
                current_revision: current,
                expected: Some(expected_to_wire(expected)),
            })
        }
    };
    v1::StreamAppended {
        outcome: Some(outcome),
    }
}

pub(crate) async fn append(
    ctx: &Ctx,
    a: v1::AppendToStream,
) -> Result<v1::StreamAppended, NativeError> {
    let now = ctx.core.clock().now_ms();
    let mut events = Vec::with_capacity(a.events.len());
    for mut message in a.events {
        let subject = message
            .metadata
            .as_ref()
            .map(|m| m.subject.as_str())
            .unwrap_or_default();
        if !subject.is_empty() && subject != a.stream {
            return Err(NativeError::new(
                ErrorCode::InvalidArgument,
                "an event's subject must be empty or its stream's name",
            ));
        }
        message.key = Vec::new();
        let (record, id) = convert::to_record(message, None, now)?;
        events.push(NewEvent { id, record });
    }
    let store = EventStore::new(&ctx.core);
    let outcome = store
        .append(&a.topic, &a.stream, expected(a.expected), events)
        .await?;
    Ok(answer(outcome))
}

pub(crate) async fn delete(
    ctx: &Ctx,
    d: v1::DeleteStream,
) -> Result<v1::StreamAppended, NativeError> {
    let store = EventStore::new(&ctx.core);
    let outcome = store
        .delete_stream(&d.topic, &d.stream, expected(d.expected), d.hard)
        .await?;
    Ok(answer(outcome))
}

pub(crate) async fn info(ctx: &Ctx, g: v1::GetStreamInfo) -> Result<v1::StreamInfo, NativeError> {
    let store = EventStore::new(&ctx.core);
    let (partition, state) = store.stream_info(&g.topic, &g.stream).await?;
    Ok(v1::StreamInfo {
        last_revision: state.last_revision,
        soft_deleted: state.soft_deleted,
        tombstoned: state.tombstoned,
        partition,
        last_position: state.last_offset,
        max_count: state.limits.max_count,
        max_age_ms: state.limits.max_age_ms,
        truncate_before: state.truncate_before,
    })
}

fn read_count(wire: u32) -> usize {
    match wire {
        0 => DEFAULT_READ_COUNT,
        n => n as usize,
    }
}

pub(super) fn recorded(event: RecordedEvent) -> v1::RecordedEvent {
    v1::RecordedEvent {
        message: Some(convert::from_record(&event.record, None)),
        stream: event.stream,
        revision: event.revision,
        partition: event.partition,
        position: event.position,
    }
}

pub(crate) async fn read_stream(
    ctx: &Ctx,
    r: v1::ReadStream,
) -> Result<v1::EventsRead, NativeError> {
    let from = match r.from {
        None | Some(Start::Start(_)) => ReadFrom::Start,
        Some(Start::End(_)) => ReadFrom::End,
        Some(Start::Revision(n)) => ReadFrom::Revision(n),
    };
    let events = EventStore::new(&ctx.core)
        .read_stream(
            &r.topic,
            &r.stream,
            from,
            r.backwards,
            read_count(r.max_count),
        )
        .await?;
    Ok(v1::EventsRead {
        next_position: events.last().map_or(-1, |e| e.position + 1),
        events: events.into_iter().map(recorded).collect(),
    })
}

pub(crate) async fn read_all(ctx: &Ctx, r: v1::ReadAll) -> Result<v1::EventsRead, NativeError> {
    let (events, next_position) = EventStore::new(&ctx.core)
        .read_all(
            &r.topic,
            r.partition,
            r.from_position,
            read_count(r.max_count),
        )
        .await?;
    Ok(v1::EventsRead {
        events: events.into_iter().map(recorded).collect(),
        next_position,
    })
}

pub(crate) async fn set_metadata(
    ctx: &Ctx,
    m: v1::SetStreamMetadata,
) -> Result<v1::StreamAppended, NativeError> {
    let limits = StreamLimits {
        max_count: m.max_count,
        max_age_ms: m.max_age_ms,
    };
    let success = EventStore::new(&ctx.core)
        .set_stream_metadata(&m.topic, &m.stream, limits)
        .await?;
    Ok(answer(AppendOutcome::Success(success)))
}
