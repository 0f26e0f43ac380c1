//! Looking at and sending single messages from the console: browse a topic partition from an
//! offset or a timestamp (`GET /api/topics/{name}/records`), publish a test message to an
//! exchange or a topic's exchange face (`POST /api/exchanges/{vhost}/{name}/publish`, RabbitMQ's
//! shape and answer `{"routed": bool}`), and who the caller is (`GET /api/whoami`, as RabbitMQ,
//! so the console can hide what a `monitoring` user may not do).
//!
//! A browse is a plain read of the log (no group, no commit), decoded with the one record
//! decoder; a record shows like a dead-letter browse ([`super::dlq`]): text or base64 body,
//! headers as text and AMQP headers typed. A publish goes through the router like an AMQP
//! basic.publish and is answered once every copy is durable.

use std::collections::BTreeMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Caller;
use super::dlq::message_view;
use super::queues::unknown_vhost;
use super::{bad_request, json_body, Admin, ApiError};
use crate::broker::message::{HeaderValue, Message};
use crate::broker::BrokerError;
use crate::log::batch::decode_next_batch;

/// Most records one browse returns.
const MAX_RECORDS: usize = 500;
/// Bytes read from the log per step of a browse.
const READ_STEP: usize = 1 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BrowseParams {
    #[serde(default)]
    partition: i32,
    /// First offset to show; default: the last `count` records.
    offset: Option<i64>,
    /// Or the first record at or after this time (ms since the epoch), as Kafka's ListOffsets.
    timestamp: Option<i64>,
    #[serde(default = "twenty")]
    count: usize,
}

fn twenty() -> usize {
    20
}

pub(super) async fn browse_topic(
    Admin(core): Admin,
    Path(name): Path<String>,
    Query(params): Query<BrowseParams>,
) -> Result<Json<Value>, ApiError> {
    if params.count == 0 || params.count > MAX_RECORDS {
        return Err(bad_request(format!("count must be 1..={MAX_RECORDS}")));
    }
    if params.offset.is_some() && params.timestamp.is_some() {
        return Err(bad_request("give an offset or a timestamp, not both"));
    }
    let topic = core
        .topic(&name)
        .ok_or_else(|| BrokerError::UnknownTopic(name.clone()))?;
    let handle =
        topic
            .partition(params.partition)
            .cloned()
            .ok_or(BrokerError::UnknownPartition {
                topic: name.clone(),
                partition: params.partition,
            })?;
    let read = tokio::task::spawn_blocking(move || -> Result<Vec<Value>, ApiError> {
        let (start, end) = (handle.log_start_offset(), handle.high_watermark());
        let from = match (params.offset, params.timestamp) {
            (Some(offset), _) => offset,
            (None, Some(ts)) => match handle.offset_for_timestamp(ts)? {
                Some((offset, _)) => offset,
                None => end,
            },
            (None, None) => end - params.count as i64,
        }
        .clamp(start, end);
        let mut out = Vec::new();
        let mut next = from;
        while out.len() < params.count && next < end {
            let slice = handle.read(next, READ_STEP)?;
            if slice.bytes.is_empty() {
                break;
            }
            let mut bytes: Bytes = slice.bytes;
            while !bytes.is_empty() && out.len() < params.count {
                for stored in decode_next_batch(&mut bytes)? {
                    if stored.is_control || stored.offset < from || out.len() >= params.count {
                        continue;
                    }
                    let mut view =
                        serde_json::to_value(message_view(stored.offset, &stored.record))
                            .unwrap_or(Value::Null);
                    view["partition"] = json!(params.partition);
                    view["key"] = view["routing_key"].take();
                    if let Some(v) = view.as_object_mut() {
                        v.remove("routing_key");
                    }
                    out.push(view);
                }
            }
            if slice.next_offset <= next {
                break;
            }
            next = slice.next_offset;
        }
        Ok(out)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    Ok(Json(json!(read)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PublishBody {
    #[serde(default)]
    routing_key: String,
    payload: String,
    /// `string` (default) or `base64`.
    #[serde(default)]
    payload_encoding: Option<String>,
    /// RabbitMQ's `properties`; only `headers` (strings, numbers, booleans) is used.
    #[serde(default)]
    properties: Option<Value>,
}

/// Publishes one message as AMQP basic.publish would: `{"routed": false}` when nothing matched.
/// `amq.default` is the default exchange, as in RabbitMQ's URLs.
pub(super) async fn publish(
    Admin(core): Admin,
    Path((vhost, exchange)): Path<(String, String)>,
    body: Result<Json<PublishBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let req = json_body(body)?;
    unknown_vhost(&core, &vhost)?;
    let value = match req.payload_encoding.as_deref() {
        None | Some("string") => Bytes::from(req.payload.into_bytes()),
        Some("base64") => Bytes::from(
            crate::util::base64_decode(&req.payload)
                .ok_or_else(|| bad_request("payload is not valid base64"))?,
        ),
        Some(other) => {
            return Err(bad_request(format!(
                "payload_encoding `{other}`: use string or base64"
            )))
        }
    };
    let mut headers: BTreeMap<String, HeaderValue> = BTreeMap::new();
    if let Some(h) = req.properties.as_ref().and_then(|p| p.get("headers")) {
        let h = h
            .as_object()
            .ok_or_else(|| bad_request("properties.headers must be an object"))?;
        for (k, v) in h {
            let value = match v {
                Value::String(s) => HeaderValue::text(s.clone()),
                Value::Bool(b) => HeaderValue::bool(*b),
                Value::Number(n) => match n.as_i64() {
                    Some(i) => HeaderValue::int(i),
                    None => HeaderValue::float(n.as_f64().unwrap_or(0.0)),
                },
                Value::Null => HeaderValue::Null,
                other => HeaderValue::json(other),
            };
            headers.insert(k.clone(), value);
        }
    }
    let exchange = if exchange == "amq.default" {
        String::new()
    } else {
        exchange
    };
    let message = Message {
        key: Some(Bytes::from(req.routing_key.into_bytes())),
        value: Some(value),
        timestamp: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
        headers: headers.into_iter().collect(),
    };
    let published = core.router().publish(&vhost, &exchange, message).await?;
    for copy in published.pending {
        copy.wait().await?;
    }
    Ok(Json(
        json!({"routed": published.routed && !published.rejected}),
    ))
}

/// `GET /api/whoami`: the caller's name and tags.
pub(super) async fn whoami(Caller(user): Caller) -> Json<Value> {
    Json(json!({"name": user.name, "tags": user.tags.join(",")}))
}
