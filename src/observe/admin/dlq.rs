//! Any queue as a dead-letter queue: browse its messages without consuming them (a read of
//! its log, `Queue::peek`), and replay them to where they came from (the core's
//! [`crate::broker::replay`] decides where each goes and when it is settled).

use std::collections::BTreeMap;

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::queues::queue_of;
use super::{bad_request, Admin, ApiError};
use crate::broker::replay::ReplayRequest;
use crate::broker::routing::{death_history, DEATH_HEADER, EXCHANGE_HEADER};
use crate::log::SimpleRecord;

/// Most messages one browse returns.
const MAX_BROWSE: usize = 10_000;

#[derive(Serialize)]
pub(super) struct MessageView {
    /// Offset in the queue's log: the message's identity inside this queue.
    offset: i64,
    /// The record key: the AMQP routing key (or a Kafka key).
    routing_key: Option<String>,
    /// Exchange the message was last published to.
    exchange: Option<String>,
    timestamp: i64,
    /// The body as text (`payload_encoding: "string"`) or base64 when it is not UTF-8.
    payload: String,
    payload_encoding: &'static str,
    payload_bytes: usize,
    /// Record headers other than the exchange, the death history and the AMQP header table,
    /// as text (`null` for a null value).
    headers: BTreeMap<String, Option<String>>,
    /// The application headers with their types (numbers, booleans, tables as JSON values),
    /// as a headers exchange and an AMQP consumer see them; absent when there are none.
    amqp_headers: Option<serde_json::Value>,
    /// Dead-letter history, newest first: RabbitMQ's `x-death` entries (`queue`, `reason`,
    /// `count`, `time`, `exchange`, `routing-keys`; `first: true` marks the first death).
    death: Vec<serde_json::Value>,
}

fn header_text(record: &SimpleRecord, name: &str) -> Option<String> {
    record
        .headers
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.as_ref())
        .map(|b| String::from_utf8_lossy(b).into_owned())
}

/// The application headers of a record as typed JSON (the core's headers-exchange view of the
/// message); the death history is shown apart, as `death`.
fn amqp_headers_of(record: &SimpleRecord) -> Option<serde_json::Map<String, serde_json::Value>> {
    let mut headers = crate::broker::message::routing_headers(record)?;
    headers.remove("x-death");
    (!headers.is_empty()).then_some(headers)
}

pub(super) fn message_view(offset: i64, record: &SimpleRecord) -> MessageView {
    let body = record.value.clone().unwrap_or_default();
    let (payload, payload_encoding) = match std::str::from_utf8(&body) {
        Ok(t) => (t.to_string(), "string"),
        Err(_) => (crate::util::base64_encode(&body), "base64"),
    };
    let headers = record
        .headers
        .iter()
        .filter(|(k, _)| {
            k != DEATH_HEADER
                && k != EXCHANGE_HEADER
                && k != "amqp.headers"
                && k != crate::broker::message::HEADER_TYPES_HEADER
        })
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()),
            )
        })
        .collect();
    MessageView {
        offset,
        routing_key: record
            .key
            .as_ref()
            .map(|k| String::from_utf8_lossy(k).into_owned()),
        exchange: header_text(record, EXCHANGE_HEADER),
        timestamp: record.timestamp,
        payload,
        payload_encoding,
        payload_bytes: body.len(),
        headers,
        amqp_headers: amqp_headers_of(record).map(serde_json::Value::Object),
        death: death_history(record),
    }
}

#[derive(Deserialize)]
pub(super) struct BrowseParams {
    /// How many ready messages to show (default 10, at most 10000).
    count: Option<usize>,
}

/// The queue's ready messages, read from its log without consuming them.
pub(super) async fn browse_queue(
    Admin(core): Admin,
    Path((vhost, name)): Path<(String, String)>,
    Query(params): Query<BrowseParams>,
) -> Result<Response, ApiError> {
    let q = queue_of(&core, &vhost, &name)?;
    let count = params.count.unwrap_or(10);
    if count == 0 || count > MAX_BROWSE {
        return Err(bad_request(format!("count must be 1..={MAX_BROWSE}")));
    }
    let messages = tokio::task::spawn_blocking(move || q.peek(count))
        .await
        .map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })??;
    let views: Vec<MessageView> = messages
        .iter()
        .map(|m| message_view(m.offset, &m.record))
        .collect();
    Ok(Json(views).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplayBody {
    /// Most messages to move (default: every ready message).
    #[serde(default, alias = "limit")]
    count: Option<u64>,
    /// Publish to this exchange instead of the one in each message's first death entry
    /// (`""` is the default exchange).
    #[serde(default)]
    exchange: Option<String>,
    /// With `exchange`: the routing key to use (default: the one in the death entry).
    #[serde(default)]
    routing_key: Option<String>,
}

/// Moves dead letters back ([`BrokerCore::replay_dead_letters`]); answers how it went.
pub(super) async fn replay_queue(
    Admin(core): Admin,
    Path((vhost, name)): Path<(String, String)>,
    body: Option<Json<ReplayBody>>,
) -> Result<Response, ApiError> {
    let body = body.map(|Json(r)| r).unwrap_or_default();
    queue_of(&core, &vhost, &name)?;
    let req = ReplayRequest {
        count: body.count,
        exchange: body.exchange,
        routing_key: body.routing_key,
    };
    let report = core.replay_dead_letters(&vhost, &name, &req).await?;
    Ok(Json(report).into_response())
}
