//! The admin HTTP API under `/api/`: topics, queues, exchanges, bindings and consumer groups as
//! JSON, described in `docs/admin-api.yaml`.
//!
//! Every route needs HTTP basic auth with `observe.admin_user` / `observe.admin_password`
//! (default `admin`/`admin`; both empty turn the API off). Errors are `{"error", "message"}`
//! with the matching status: 400 bad input, 401 unauthenticated, 404 unknown, 409 exists,
//! 503 while the broker is still recovering or shutting down.

use std::collections::BTreeMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::{Buf, Bytes};
use kafka_protocol::messages::ConsumerProtocolAssignment;
use kafka_protocol::protocol::Decodable;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::http::AppState;
use super::metrics::{group_lag, GroupLag};
use crate::broker::{BrokerCore, BrokerError, GroupState, Topic};

/// The `/api/...` routes, to be merged into the HTTP router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/topics", get(list_topics).post(create_topic))
        .route("/api/topics/{name}", get(get_topic).delete(delete_topic))
        .route("/api/queues", get(list_queues))
        .route("/api/exchanges", get(list_exchanges))
        .route("/api/bindings", get(list_bindings))
        .route("/api/groups", get(list_groups))
        .route("/api/groups/{id}", get(get_group))
        .fallback(not_found)
}

/// Who may use the admin API.
#[derive(Clone, Debug, Default)]
pub struct AdminCredentials {
    pub user: String,
    pub password: String,
}

/// An admin API error: `{"error": kind, "message": text}` with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": self.kind, "message": self.message}));
        if self.status == StatusCode::UNAUTHORIZED {
            (
                self.status,
                [(header::WWW_AUTHENTICATE, "Basic realm=\"ferry\"")],
                body,
            )
                .into_response()
        } else {
            (self.status, body).into_response()
        }
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        let (status, kind) = match &e {
            BrokerError::UnknownTopic(_) | BrokerError::UnknownPartition { .. } => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            BrokerError::TopicExists(_) => (StatusCode::CONFLICT, "already_exists"),
            BrokerError::InvalidTopicName { .. }
            | BrokerError::InvalidPartitions(_)
            | BrokerError::InvalidConfig { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
            BrokerError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            BrokerError::Log(_) | BrokerError::Meta(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        Self::new(status, kind, e.to_string())
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such admin API path")
}

/// An authenticated admin request, with the core once recovery has finished.
pub struct Admin(BrokerCore);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let creds = &state.admin;
        if creds.user.is_empty() && creds.password.is_empty() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "disabled",
                "the admin API is disabled (observe.admin_user and observe.admin_password are empty)",
            ));
        }
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_basic);
        match given {
            Some((user, password))
                if constant_time_eq(user.as_bytes(), creds.user.as_bytes())
                    & constant_time_eq(password.as_bytes(), creds.password.as_bytes()) => {}
            Some(_) => {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "wrong admin user or password",
                ))
            }
            None => return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the admin API needs HTTP basic auth (observe.admin_user / observe.admin_password)",
            )),
        }
        match state.health.core() {
            Some(core) => Ok(Admin(core.clone())),
            None => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the broker is still recovering its data directory",
            )),
        }
    }
}

/// `Basic <base64(user:password)>` -> (user, password).
fn parse_basic(value: &str) -> Option<(String, String)> {
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(base64_decode(encoded.trim())?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Standard base64 (RFC 4648, padding optional); `None` on any other character.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

// --- topics -------------------------------------------------------------------------------------

#[derive(Serialize)]
struct PartitionView {
    partition: i32,
    start_offset: i64,
    end_offset: i64,
    size_bytes: u64,
    segments: usize,
}

#[derive(Serialize)]
struct TopicView {
    name: String,
    partition_count: usize,
    /// Sum over partitions.
    size_bytes: u64,
    /// Topic-level config overrides (Kafka names).
    configs: BTreeMap<String, String>,
    partitions: Vec<PartitionView>,
}

fn topic_view(t: &Topic) -> TopicView {
    let partitions: Vec<PartitionView> = t
        .partitions()
        .iter()
        .enumerate()
        .map(|(p, h)| PartitionView {
            partition: p as i32,
            start_offset: h.log_start_offset(),
            end_offset: h.high_watermark(),
            size_bytes: h.size_bytes(),
            segments: h.segment_count(),
        })
        .collect();
    TopicView {
        name: t.name().to_string(),
        partition_count: partitions.len(),
        size_bytes: partitions.iter().map(|p| p.size_bytes).sum(),
        configs: t.config_overrides().clone(),
        partitions,
    }
}

async fn list_topics(Admin(core): Admin) -> Json<Vec<TopicView>> {
    Json(core.topics().iter().map(|t| topic_view(t)).collect())
}

async fn get_topic(Admin(core): Admin, Path(name): Path<String>) -> Result<Response, ApiError> {
    let topic = core.topic(&name).ok_or(BrokerError::UnknownTopic(name))?;
    Ok(Json(topic_view(&topic)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTopic {
    name: String,
    #[serde(default = "one")]
    partitions: u32,
    #[serde(default)]
    configs: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

async fn create_topic(
    Admin(core): Admin,
    body: Result<Json<CreateTopic>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) =
        body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    let topic = core
        .create_topic(&req.name, req.partitions, req.configs)
        .await?;
    Ok((StatusCode::CREATED, Json(topic_view(&topic))).into_response())
}

async fn delete_topic(Admin(core): Admin, Path(name): Path<String>) -> Result<Response, ApiError> {
    core.delete_topic(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// --- AMQP model ---------------------------------------------------------------------------------

#[derive(Serialize)]
struct QueueView {
    vhost: String,
    name: String,
    durable: bool,
    auto_delete: bool,
    exclusive: bool,
    arguments: serde_json::Value,
    ready: u64,
    unacked: u64,
    consumers: u32,
}

async fn list_queues(Admin(core): Admin) -> Json<Vec<QueueView>> {
    let mut queues: Vec<QueueView> = core
        .router()
        .queues()
        .iter()
        .map(|q| QueueView {
            vhost: q.vhost().to_string(),
            name: q.name().to_string(),
            durable: q.durable(),
            auto_delete: q.auto_delete(),
            exclusive: q.exclusive_owner().is_some(),
            arguments: q.def().arguments.clone(),
            ready: q.message_count(),
            unacked: q.unacked_count(),
            consumers: q.consumer_count(),
        })
        .collect();
    queues.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
    Json(queues)
}

#[derive(Serialize)]
struct ExchangeView {
    vhost: String,
    name: String,
    #[serde(rename = "type")]
    kind: String,
    durable: bool,
    auto_delete: bool,
    internal: bool,
    arguments: serde_json::Value,
}

async fn list_exchanges(Admin(core): Admin) -> Json<Vec<ExchangeView>> {
    let mut exchanges: Vec<ExchangeView> = core
        .router()
        .exchanges()
        .iter()
        .map(|e| {
            let d = e.def();
            ExchangeView {
                vhost: d.vhost.clone(),
                name: d.name.clone(),
                kind: e.kind().as_str().to_string(),
                durable: d.durable,
                auto_delete: d.auto_delete,
                internal: d.internal,
                arguments: d.arguments.clone(),
            }
        })
        .collect();
    exchanges.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
    Json(exchanges)
}

async fn list_bindings(Admin(core): Admin) -> Json<Vec<crate::meta::BindingDef>> {
    let mut bindings: Vec<crate::meta::BindingDef> = core
        .router()
        .exchanges()
        .iter()
        .flat_map(|e| e.bindings())
        .collect();
    bindings.sort_by(|a, b| {
        (&a.vhost, &a.source, &a.destination, &a.routing_key).cmp(&(
            &b.vhost,
            &b.source,
            &b.destination,
            &b.routing_key,
        ))
    });
    Json(bindings)
}

// --- consumer groups ----------------------------------------------------------------------------

#[derive(Serialize)]
struct GroupSummary {
    group_id: String,
    state: &'static str,
    protocol_type: String,
}

async fn list_groups(Admin(core): Admin) -> Json<Vec<GroupSummary>> {
    Json(
        core.groups()
            .list_groups(&[])
            .into_iter()
            .map(|g| GroupSummary {
                group_id: g.group_id,
                state: g.state.as_str(),
                protocol_type: g.protocol_type,
            })
            .collect(),
    )
}

#[derive(Serialize)]
struct AssignedPartitions {
    topic: String,
    partitions: Vec<i32>,
}

#[derive(Serialize)]
struct MemberView {
    member_id: String,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    /// Decoded "consumer" protocol assignment; `null` when the group is not Stable or the
    /// assignment is not in the consumer protocol's format.
    assignment: Option<Vec<AssignedPartitions>>,
}

#[derive(Serialize)]
struct OffsetView {
    topic: String,
    partition: i32,
    committed_offset: i64,
    high_watermark: Option<i64>,
    lag: Option<i64>,
}

#[derive(Serialize)]
struct GroupView {
    group_id: String,
    state: &'static str,
    protocol_type: String,
    protocol: String,
    members: Vec<MemberView>,
    offsets: Vec<OffsetView>,
    /// Sum of the partitions' lag.
    total_lag: i64,
}

/// A "consumer" protocol assignment: a version prefix, then the v0 body every version shares.
fn decode_assignment(bytes: &Bytes) -> Option<Vec<AssignedPartitions>> {
    let mut buf = bytes.clone();
    if buf.remaining() < 2 {
        return None;
    }
    let _version = buf.get_i16();
    let a = ConsumerProtocolAssignment::decode(&mut buf, 0).ok()?;
    Some(
        a.assigned_partitions
            .into_iter()
            .map(|tp| AssignedPartitions {
                topic: tp.topic.to_string(),
                partitions: tp.partitions,
            })
            .collect(),
    )
}

async fn get_group(
    Admin(core): Admin,
    Path(id): Path<String>,
) -> Result<Json<GroupView>, ApiError> {
    let d = core.groups().describe_group(&id);
    let offsets = group_lag(&core, &id);
    if d.state == GroupState::Dead && offsets.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("unknown consumer group `{id}`"),
        ));
    }
    let members = d
        .members
        .into_iter()
        .map(|m| MemberView {
            assignment: decode_assignment(&m.assignment),
            member_id: m.member_id,
            instance_id: m.instance_id,
            client_id: m.client_id,
            client_host: m.client_host,
        })
        .collect();
    let total_lag = offsets.iter().filter_map(|o| o.lag).sum();
    let offsets = offsets
        .into_iter()
        .map(|o: GroupLag| OffsetView {
            topic: o.topic,
            partition: o.partition,
            committed_offset: o.committed,
            high_watermark: o.high_watermark,
            lag: o.lag,
        })
        .collect();
    Ok(Json(GroupView {
        group_id: d.group_id,
        state: d.state.as_str(),
        protocol_type: d.protocol_type,
        protocol: d.protocol,
        members,
        offsets,
        total_lag,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_header_is_parsed() {
        // "admin:s3cr:et" — the password may contain ':'.
        assert_eq!(
            parse_basic("Basic YWRtaW46czNjcjpldA=="),
            Some(("admin".into(), "s3cr:et".into()))
        );
        assert_eq!(parse_basic("Bearer abc"), None);
        assert_eq!(parse_basic("Basic !!!"), None);
        assert_eq!(base64_decode("YQ"), Some(b"a".to_vec()));
        assert_eq!(base64_decode(""), Some(Vec::new()));
    }

    #[test]
    fn comparison_needs_equal_length_and_bytes() {
        assert!(constant_time_eq(b"admin", b"admin"));
        assert!(!constant_time_eq(b"admin", b"admim"));
        assert!(!constant_time_eq(b"admin", b"admin1"));
    }
}
