//! Fetch: serve stored batches as they are, long-polling until `min_bytes` arrive or
//! `max_wait_ms` passes.
//!
//! Per-partition and whole-response byte limits follow KIP-74: the first batch of the first
//! non-empty partition is returned whole even when larger than the limits, so a consumer can
//! always make progress.
//!
//! Fetch sessions (KIP-227, v7+): the request's session id and epoch are turned into the list
//! of partitions to serve by [`crate::protocol::kafka::fetch_session`] before anything is read
//! (a full fetch lists them, an incremental one names only changes and the session supplies
//! the rest); after the read the answer of an incremental fetch is cut down to the partitions
//! with something new. Session errors (FETCH_SESSION_ID_NOT_FOUND,
//! INVALID_FETCH_SESSION_EPOCH) are top-level and carry no partitions. From v13 topics are
//! named by id (Metadata's); an id this broker does not have answers UNKNOWN_TOPIC_ID.
//!
//! `isolation_level=read_committed` (v4+) reads only up to the last stable offset and returns
//! the aborted transactions overlapping what it read, from the partition's transaction index,
//! so the client drops their records (and skips control batches, as it always does).
//!
//! Zero copy (`kafka.zero_copy_fetch`, plaintext connections only): the log is asked where
//! the batches are ([`PartitionHandle::read_spans`]) instead of for their bytes, each
//! partition's records field is encoded as a placeholder, and the codec cuts the response
//! around the placeholders ([`codec::splice_records`]); the connection then sends the
//! segment-file spans with `sendfile(2)`. Kafka stores batches as the client reads them, and a
//! `read_committed` client filters aborted records itself from the aborted-transactions list,
//! so nothing in a batch ever needs rewriting here. TLS connections (the bytes must pass
//! through the cipher) and TRACE logging of delivered records (which decodes them) take the
//! copying path: one `pread` per segment into an unzeroed buffer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::select_all;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse, ProducerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{decode, respond, Outcome};
use crate::log::{FileSpan, LogError, PartitionHandle};
use crate::protocol::kafka::authz::{operation, resource};
use crate::protocol::kafka::codec::{self, RawRequest};
use crate::protocol::kafka::connection::ConnInfo;
use crate::protocol::kafka::convert::log_error_code;
use crate::protocol::kafka::fetch_session::{Context, Reported, WantedPartition};
use crate::protocol::kafka::KafkaContext;

/// Longest long-poll we honour, whatever the client asks.
const MAX_WAIT_CAP: Duration = Duration::from_secs(30);

pub async fn handle(ctx: Arc<KafkaContext>, conn: ConnInfo, req: RawRequest) -> Outcome {
    let request: FetchRequest = match decode(&req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    let v = req.api_version;
    let max_wait = Duration::from_millis(request.max_wait_ms.max(0) as u64).min(MAX_WAIT_CAP);
    let deadline = tokio::time::Instant::now() + max_wait;
    let min_bytes = request.min_bytes.max(0) as usize;
    // A client cannot make one response (and so the connection's write buffer) bigger than
    // fetch.max.bytes.
    let cap = ctx.settings.kafka.fetch_max_bytes;
    let max_bytes = if request.max_bytes <= 0 {
        cap
    } else {
        (request.max_bytes as usize).min(cap)
    };
    let read_committed = request.isolation_level == 1;
    // sendfile needs the plain socket; TRACE delivery events decode the records.
    let zero_copy = ctx.settings.kafka.zero_copy_fetch
        && !conn.security.tls
        && !tracing::enabled!(tracing::Level::TRACE);

    // v13+ names topics by id: each id is looked up once; an unknown one gets an empty name
    // (and UNKNOWN_TOPIC_ID below).
    let mut names: HashMap<uuid::Uuid, String> = HashMap::new();
    let mut topic_of = |name: &TopicName, id: uuid::Uuid| -> (String, uuid::Uuid) {
        if v < 13 {
            return (name.to_string(), uuid::Uuid::nil());
        }
        let name = names.entry(id).or_insert_with(|| {
            ctx.core
                .topic_by_id(*id.as_bytes())
                .map(|t| t.name().to_string())
                .unwrap_or_default()
        });
        (name.clone(), id)
    };
    let mut wanted: Vec<WantedPartition> = Vec::new();
    for t in &request.topics {
        let (topic, topic_id) = topic_of(&t.topic, t.topic_id);
        wanted.extend(t.partitions.iter().map(|p| WantedPartition {
            topic: topic.clone(),
            topic_id,
            partition: p.partition,
            fetch_offset: p.fetch_offset,
            max_bytes: p.partition_max_bytes,
        }));
    }
    let context = if v >= 7 {
        let mut forgotten = Vec::new();
        for t in &request.forgotten_topics_data {
            let (topic, topic_id) = topic_of(&t.topic, t.topic_id);
            forgotten.extend(t.partitions.iter().map(|p| (topic.clone(), topic_id, *p)));
        }
        ctx.fetch_sessions.open(
            &conn.principal(),
            request.session_id,
            request.session_epoch,
            wanted,
            &forgotten,
        )
    } else {
        Context::Sessionless(wanted)
    };
    let (mode, partitions) = match context {
        Context::Sessionless(p) => (Mode::Sessionless, p),
        Context::Full(p) => (Mode::Full, p),
        Context::Incremental {
            session_id,
            next_epoch,
            partitions,
        } => (
            Mode::Incremental {
                session_id,
                next_epoch,
            },
            partitions,
        ),
        Context::Error(code) => return session_error(&req, code),
    };
    let partitions = &partitions;

    // Resolve handles once; a topic deleted mid-poll keeps answering from its old handle.
    // A topic the client may not READ answers TOPIC_AUTHORIZATION_FAILED per partition.
    let mut topics: HashMap<&str, Result<Arc<crate::broker::Topic>, i16>> = HashMap::new();
    let targets: Vec<Result<PartitionHandle, i16>> = partitions
        .iter()
        .map(|w| {
            if v >= 13 && w.topic.is_empty() {
                return Err(ResponseError::UnknownTopicId.code());
            }
            let topic = topics.entry(w.topic.as_str()).or_insert_with(|| {
                if ctx.allowed(&conn, operation::READ, resource::TOPIC, &w.topic) {
                    ctx.core
                        .topic(&w.topic)
                        .ok_or(ResponseError::UnknownTopicOrPartition.code())
                } else {
                    Err(ResponseError::TopicAuthorizationFailed.code())
                }
            });
            topic.as_ref().map_err(|code| *code).and_then(|t| {
                t.partition(w.partition)
                    .cloned()
                    .ok_or(ResponseError::UnknownTopicOrPartition.code())
            })
        })
        .collect();

    let built = loop {
        // Subscribe before reading so an append between the read and the wait still wakes us.
        let mut watchers: Vec<_> = targets
            .iter()
            .filter_map(|h| h.as_ref().ok().map(|h| h.subscribe_high_watermark()))
            .collect();
        let built = build(partitions, &targets, max_bytes, read_committed, zero_copy);
        let total = built.total;
        let now = tokio::time::Instant::now();
        if total >= min_bytes
            || total > 0 && min_bytes == 0
            || now >= deadline
            || watchers.is_empty()
        {
            break built;
        }
        let any_change = select_all(watchers.iter_mut().map(|w| Box::pin(w.changed())));
        let mut shutdown = ctx.shutdown.clone();
        let woken = tokio::select! {
            changed = tokio::time::timeout_at(deadline, any_change) => changed.is_ok(),
            // Shutting down: answer with what there is rather than hold the shutdown up.
            _ = crate::util::stopped(&mut shutdown) => false,
        };
        if !woken {
            break build(partitions, &targets, max_bytes, read_committed, zero_copy);
        }
    };

    if built.copied > 0 {
        crate::observe::metrics::kafka_fetch_bytes("copy", built.copied);
    }

    let (session_id, keep) = match mode {
        Mode::Sessionless => (0, None),
        Mode::Full => (
            ctx.fetch_sessions
                .create(&conn.principal(), partitions, &built.reports),
            None,
        ),
        Mode::Incremental {
            session_id,
            next_epoch,
        } => match ctx
            .fetch_sessions
            .complete(session_id, next_epoch, partitions, &built.reports)
        {
            Some(keep) => (session_id, Some(keep)),
            None => return session_error(&req, ResponseError::InvalidFetchSessionEpoch.code()),
        },
    };
    let mut body = FetchResponse::default().with_responses(by_topic(
        partitions,
        built.data,
        keep.as_deref(),
        v,
    ));
    if v >= 7 {
        body = body.with_session_id(session_id).with_error_code(0);
    }
    if built.spans.is_empty() {
        return respond(ApiKey::Fetch, v, req.correlation_id, &body);
    }
    let framed = match codec::encode_response(ApiKey::Fetch, v, req.correlation_id, &body) {
        Ok(framed) => framed,
        Err(_) => return respond(ApiKey::Fetch, v, req.correlation_id, &body),
    };
    match codec::splice_records(framed, v >= 12, &built.spans) {
        Some(spliced) => Outcome::RespondParts(spliced),
        None => {
            // Cannot happen unless the encoder changes shape; answer correctly regardless.
            tracing::warn!("zero-copy fetch response could not be spliced; copying");
            copy_instead(&mut body, &built.spans);
            respond(ApiKey::Fetch, v, req.correlation_id, &body)
        }
    }
}

/// Replaces every placeholder in `body` by the bytes it stands for (read now), or by an
/// error for a partition whose read fails.
fn copy_instead(body: &mut FetchResponse, spans: &[Vec<FileSpan>]) {
    for p in body
        .responses
        .iter_mut()
        .flat_map(|t| t.partitions.iter_mut())
    {
        let Some(records) = &p.records else { continue };
        if records.len() != codec::PLACEHOLDER_LEN || records[8..12] != *b"FZC1" {
            continue;
        }
        let index = u32::from_be_bytes([records[12], records[13], records[14], records[15]]);
        let read = spans.get(index as usize).map(|s| {
            crate::log::LogSpans {
                spans: s.clone(),
                first_offset: 0,
                next_offset: 0,
            }
            .read_bytes()
        });
        match read {
            Some(Ok(bytes)) => p.records = Some(bytes),
            _ => {
                p.error_code = ResponseError::KafkaStorageError.code();
                p.records = Some(Bytes::new());
            }
        }
    }
}

/// How the answer relates to a fetch session.
enum Mode {
    Sessionless,
    /// Create a session from this full fetch once it is answered.
    Full,
    Incremental {
        session_id: i32,
        next_epoch: i32,
    },
}

/// A top-level session error: no partitions, session 0 (the client starts a new session).
fn session_error(req: &RawRequest, code: i16) -> Outcome {
    let body = FetchResponse::default()
        .with_error_code(code)
        .with_session_id(0);
    respond(ApiKey::Fetch, req.api_version, req.correlation_id, &body)
}

/// Groups per-partition answers by topic (first appearance order), keeping only the
/// partitions `keep` selects. Topics are named by id from v13, by name before.
fn by_topic(
    partitions: &[WantedPartition],
    data: Vec<PartitionData>,
    keep: Option<&[bool]>,
    version: i16,
) -> Vec<FetchableTopicResponse> {
    let mut out: Vec<FetchableTopicResponse> = Vec::new();
    let mut index: HashMap<(&str, uuid::Uuid), usize> = HashMap::new();
    for (i, (wanted, data)) in partitions.iter().zip(data).enumerate() {
        if keep.is_some_and(|k| !k.get(i).copied().unwrap_or(false)) {
            continue;
        }
        let key = (wanted.topic.as_str(), wanted.topic_id);
        let at = *index.entry(key).or_insert_with(|| {
            let topic = if version >= 13 {
                FetchableTopicResponse::default().with_topic_id(wanted.topic_id)
            } else {
                FetchableTopicResponse::default()
                    .with_topic(TopicName(StrBytes::from_string(wanted.topic.clone())))
            };
            out.push(topic);
            out.len() - 1
        });
        out[at].partitions.push(data);
    }
    out
}

/// One read of every partition.
struct Built {
    data: Vec<PartitionData>,
    reports: Vec<Reported>,
    total: usize,
    /// Record bytes read into the response (the copying path).
    copied: usize,
    /// Zero copy: the spans each records placeholder stands for, by placeholder index.
    spans: Vec<Vec<FileSpan>>,
}

/// A partition's records: read, or located for sendfile.
enum Records {
    Copied(Bytes),
    Spans(Vec<FileSpan>),
}

fn build(
    partitions: &[WantedPartition],
    targets: &[Result<PartitionHandle, i16>],
    max_bytes: usize,
    read_committed: bool,
    zero_copy: bool,
) -> Built {
    let mut spans = Vec::new();
    let mut copied = 0;
    let mut remaining = max_bytes;
    let mut total = 0usize;
    let mut out = Vec::with_capacity(partitions.len());
    let mut reports = Vec::with_capacity(partitions.len());
    for (wanted, handle) in partitions.iter().zip(targets) {
        let mut data = PartitionData::default().with_partition_index(wanted.partition);
        let mut bytes = 0;
        match handle {
            Err(code) => {
                data = data.with_error_code(*code);
            }
            Ok(h) => {
                let hw = h.high_watermark();
                data = data
                    .with_high_watermark(hw)
                    .with_last_stable_offset(h.last_stable_offset())
                    .with_log_start_offset(h.log_start_offset());
                let limit = (wanted.max_bytes.max(0) as usize).min(remaining);
                // KIP-74: until something is in the response, let one whole batch through.
                let limit = if total == 0 { limit.max(1) } else { limit };
                if limit == 0 {
                    data = data.with_records(Some(Bytes::new()));
                } else {
                    let topic = wanted.topic.as_str();
                    // One span per partition read; per-record ids only as TRACE events.
                    let span = tracing::debug_span!(
                        "deliver",
                        protocol = "kafka",
                        topic,
                        partition = wanted.partition,
                        fetch_offset = wanted.fetch_offset,
                        bytes = tracing::field::Empty,
                    );
                    let _in = span.enter();
                    let read = if read_committed {
                        h.read_committed_spans(wanted.fetch_offset, limit)
                    } else {
                        h.read_spans(wanted.fetch_offset, limit)
                            .map(|found| (found, Vec::new()))
                    };
                    // Copying reads the bytes now, under no lock (the spans hold the files).
                    let read = read.and_then(|(found, aborted)| {
                        let n = found.len();
                        let records = if zero_copy || n == 0 {
                            Records::Spans(found.spans)
                        } else {
                            Records::Copied(found.read_bytes()?)
                        };
                        Ok((records, n, aborted))
                    });
                    match read {
                        Ok((records, n, aborted)) => {
                            if read_committed {
                                data = data.with_aborted_transactions(Some(
                                    aborted
                                        .iter()
                                        .map(|a| {
                                            AbortedTransaction::default()
                                                .with_producer_id(ProducerId(a.producer_id))
                                                .with_first_offset(a.first_offset)
                                        })
                                        .collect(),
                                ));
                            }
                            if total > 0 && n > remaining {
                                data = data.with_records(Some(Bytes::new()));
                            } else {
                                span.record("bytes", n);
                                total += n;
                                bytes = n;
                                remaining = remaining.saturating_sub(n);
                                let field = match records {
                                    Records::Copied(b) => {
                                        copied += n;
                                        crate::broker::event::trace_records(
                                            "fetch",
                                            topic,
                                            wanted.partition,
                                            0,
                                            &b,
                                        );
                                        b
                                    }
                                    Records::Spans(_) if n == 0 => Bytes::new(),
                                    Records::Spans(s) => {
                                        spans.push(s);
                                        codec::records_placeholder((spans.len() - 1) as u32)
                                    }
                                };
                                data = data.with_records(Some(field));
                            }
                        }
                        Err(e @ LogError::OffsetOutOfRange { .. }) => {
                            data = data
                                .with_error_code(log_error_code(&e))
                                .with_high_watermark(hw)
                                .with_records(Some(Bytes::new()));
                        }
                        Err(e) => {
                            data = data
                                .with_error_code(log_error_code(&e))
                                .with_records(Some(Bytes::new()));
                        }
                    }
                }
            }
        }
        reports.push(Reported {
            high_watermark: data.high_watermark,
            last_stable_offset: data.last_stable_offset,
            log_start_offset: data.log_start_offset,
            error_code: data.error_code,
            record_bytes: bytes,
        });
        out.push(data);
    }
    Built {
        data: out,
        reports,
        total,
        copied,
        spans,
    }
}
