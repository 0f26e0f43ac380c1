//! The admin HTTP API under `/api/`: topics, queues, exchanges, bindings and consumer groups as
//! JSON, described in `docs/admin-api.yaml`.
//!
//! Every route needs HTTP basic auth with `observe.admin_user` / `observe.admin_password`
//! (default `admin`/`admin`; both empty turn the API off). Errors are `{"error", "message"}`
//! with the matching status: 400 bad input, 401 unauthenticated, 403 reserved names, 404
//! unknown, 409 exists / inequivalent / in use, 503 while the broker is still recovering or
//! shutting down.
//!
//! Mutations go through the same core calls the protocols use (`BrokerCore::create_topic`,
//! the router's declare/delete/bind, the group coordinator's simple commit), so an object made
//! here is indistinguishable from one a Kafka or AMQP client made. AMQP objects are addressed
//! RabbitMQ-style as `/api/queues/{vhost}/{name}` (vhost percent-encoded). Any queue can serve
//! as a dead-letter queue: `.../messages` browses it without consuming (a read of its log,
//! `Queue::peek`), `.../replay` moves its messages back to where their first death says they
//! came from, settling each only after its copy is durable, and `.../purge` (or DELETE
//! `.../contents`) empties it. RabbitMQ-style health checks live in [`super::http`].

use std::collections::BTreeMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::{Buf, Bytes};
use kafka_protocol::messages::ConsumerProtocolAssignment;
use kafka_protocol::protocol::Decodable;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::http::AppState;
use super::metrics::{group_lag, GroupLag};
use crate::broker::queue::QueueLimits;
use crate::broker::routing::{QueueSpec, RoutingError, DEATH_HEADER, EXCHANGE_HEADER};
use crate::broker::{BrokerCore, BrokerError, GroupError, GroupState, Topic};
use crate::log::SimpleRecord;
use crate::meta::{BindingDef, CommittedOffset, DestinationKind, ExchangeDef};

/// The `/api/...` routes, to be merged into the HTTP router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/topics", get(list_topics).post(create_topic))
        .route("/api/topics/{name}", get(get_topic).delete(delete_topic))
        .route("/api/topics/{name}/partitions", post(grow_topic))
        .route("/api/queues", get(list_queues))
        .route(
            "/api/queues/{vhost}/{name}",
            get(get_queue).put(put_queue).delete(delete_queue),
        )
        .route(
            "/api/queues/{vhost}/{name}/contents",
            axum::routing::delete(purge_queue),
        )
        .route("/api/queues/{vhost}/{name}/purge", post(purge_queue))
        .route("/api/queues/{vhost}/{name}/messages", get(browse_queue))
        .route("/api/queues/{vhost}/{name}/replay", post(replay_queue))
        .route("/api/exchanges", get(list_exchanges))
        .route(
            "/api/exchanges/{vhost}/{name}",
            get(get_exchange).put(put_exchange).delete(delete_exchange),
        )
        .route(
            "/api/bindings",
            get(list_bindings)
                .post(create_binding)
                .delete(delete_binding),
        )
        .route("/api/groups", get(list_groups))
        .route("/api/groups/{id}", get(get_group))
        .route("/api/groups/{id}/reset-offsets", post(reset_offsets))
        .merge(super::http::health_check_routes())
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
    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

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

impl From<RoutingError> for ApiError {
    fn from(e: RoutingError) -> Self {
        let (status, kind) = match &e {
            RoutingError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            RoutingError::PreconditionFailed(_) | RoutingError::ResourceLocked { .. } => {
                (StatusCode::CONFLICT, "conflict")
            }
            RoutingError::AccessRefused(_) => (StatusCode::FORBIDDEN, "forbidden"),
            RoutingError::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            RoutingError::Log(_) | RoutingError::Meta(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        Self::new(status, kind, e.to_string())
    }
}

impl From<GroupError> for ApiError {
    fn from(e: GroupError) -> Self {
        let (status, kind) = match &e {
            GroupError::NonEmptyGroup
            | GroupError::UnknownMemberId
            | GroupError::RebalanceInProgress => (StatusCode::CONFLICT, "conflict"),
            GroupError::InvalidGroupId => (StatusCode::BAD_REQUEST, "bad_request"),
            GroupError::CoordinatorNotAvailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        Self::new(status, kind, e.to_string())
    }
}

impl From<crate::log::LogError> for ApiError {
    fn from(e: crate::log::LogError) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message)
}

/// A JSON body, or a 400 naming what is wrong with it.
fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(v)| v)
        .map_err(|e| bad_request(e.body_text()))
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such admin API path")
}

/// An authenticated admin request, with the core once recovery has finished.
pub struct Admin(pub(super) BrokerCore);

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
        .map(|q| queue_view(q))
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
        .map(|e| exchange_view(e))
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

// --- topic growth -------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrowTopic {
    /// The new total partition count (Kafka's CreatePartitions: only ever larger).
    count: u32,
}

async fn grow_topic(
    Admin(core): Admin,
    Path(name): Path<String>,
    body: Result<Json<GrowTopic>, JsonRejection>,
) -> Result<Response, ApiError> {
    let req = json_body(body)?;
    let topic = core.create_partitions(&name, req.count).await?;
    Ok(Json(topic_view(&topic)).into_response())
}

// --- queue and exchange mutations ---------------------------------------------------------------

fn unknown_vhost(core: &BrokerCore, vhost: &str) -> Result<(), ApiError> {
    if core.router().vhost_exists(vhost) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no vhost '{vhost}' (the only vhost is '/', written %2F in a URL)"),
        ))
    }
}

fn queue_of(
    core: &BrokerCore,
    vhost: &str,
    name: &str,
) -> Result<std::sync::Arc<crate::broker::queue::Queue>, ApiError> {
    unknown_vhost(core, vhost)?;
    core.router().queue(vhost, name).ok_or_else(|| {
        ApiError::from(RoutingError::NotFound {
            kind: "queue",
            vhost: vhost.into(),
            name: name.into(),
        })
    })
}

fn queue_view(q: &crate::broker::queue::Queue) -> QueueView {
    QueueView {
        vhost: q.vhost().to_string(),
        name: q.name().to_string(),
        durable: q.durable(),
        auto_delete: q.auto_delete(),
        exclusive: q.exclusive_owner().is_some(),
        arguments: q.def().arguments.clone(),
        ready: q.message_count(),
        unacked: q.unacked_count(),
        consumers: q.consumer_count(),
    }
}

async fn get_queue(
    Admin(core): Admin,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let q = queue_of(&core, &vhost, &name)?;
    Ok(Json(queue_view(&q)).into_response())
}

fn yes() -> bool {
    true
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutQueue {
    #[serde(default = "yes")]
    durable: bool,
    #[serde(default)]
    auto_delete: bool,
    /// `x-message-ttl`, `x-dead-letter-exchange`, `x-max-length`, … as in AMQP.
    #[serde(default = "empty_object")]
    arguments: serde_json::Value,
}

/// Declares a queue like AMQP queue.declare: 201 when created, 200 when an equivalent one
/// exists, 409 when one with other properties exists.
async fn put_queue(
    Admin(core): Admin,
    Path((vhost, name)): Path<(String, String)>,
    body: Result<Json<PutQueue>, JsonRejection>,
) -> Result<Response, ApiError> {
    let req = json_body(body)?;
    unknown_vhost(&core, &vhost)?;
    if name.is_empty() {
        return Err(bad_request("a queue needs a name"));
    }
    if !req.arguments.is_object() {
        return Err(bad_request("`arguments` must be a JSON object"));
    }
    QueueLimits::from_arguments(&req.arguments)
        .map_err(|e| bad_request(format!("invalid queue arguments: {e}")))?;
    let declared = core
        .router()
        .declare_queue(QueueSpec {
            vhost,
            name,
            passive: false,
            durable: req.durable,
            exclusive_owner: None,
            auto_delete: req.auto_delete,
            arguments: req.arguments,
            // No AMQP connection owns an admin declaration (ids start at 1, so 0 is nobody);
            // an existing exclusive queue of a real connection then answers 409.
            connection: 0,
        })
        .await?;
    let status = if declared.fresh {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(queue_view(&declared.queue))).into_response())
}

#[derive(Deserialize)]
struct DeleteQueueParams {
    #[serde(default)]
    if_unused: bool,
    #[serde(default)]
    if_empty: bool,
}

async fn delete_queue(
    Admin(core): Admin,
    Path((vhost, name)): Path<(String, String)>,
    Query(params): Query<DeleteQueueParams>,
) -> Result<Response, ApiError> {
    unknown_vhost(&core, &vhost)?;
    core.router()
        .delete_queue(&vhost, &name, params.if_unused, params.if_empty, None)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn purge_queue(
    Admin(core): Admin,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    unknown_vhost(&core, &vhost)?;
    let purged = core.router().purge_queue(&vhost, &name)?;
    Ok(Json(json!({ "purged": purged })).into_response())
}

fn exchange_view(e: &crate::broker::exchange::Exchange) -> ExchangeView {
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
}

async fn get_exchange(
    Admin(core): Admin,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    unknown_vhost(&core, &vhost)?;
    let ex = core
        .router()
        .exchange(&vhost, &name)
        .ok_or(RoutingError::NotFound {
            kind: "exchange",
            vhost,
            name,
        })?;
    Ok(Json(exchange_view(&ex)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutExchange {
    /// `direct`, `fanout`, `topic` or `headers`.
    #[serde(rename = "type")]
    kind: String,
    #[serde(default = "yes")]
    durable: bool,
    #[serde(default)]
    auto_delete: bool,
    #[serde(default)]
    internal: bool,
    #[serde(default = "empty_object")]
    arguments: serde_json::Value,
}

/// Declares an exchange like AMQP exchange.declare: 201 created, 200 equivalent exists,
/// 409 a different one exists, 403 reserved names.
async fn put_exchange(
    Admin(core): Admin,
    Path((vhost, name)): Path<(String, String)>,
    body: Result<Json<PutExchange>, JsonRejection>,
) -> Result<Response, ApiError> {
    let req = json_body(body)?;
    unknown_vhost(&core, &vhost)?;
    if crate::broker::exchange::ExchangeKind::parse(&req.kind).is_none() {
        return Err(bad_request(format!(
            "unknown exchange type '{}' (use direct, fanout, topic or headers)",
            req.kind
        )));
    }
    if !req.arguments.is_object() {
        return Err(bad_request("`arguments` must be a JSON object"));
    }
    let existed = core.router().exchange(&vhost, &name).is_some();
    let ex = core
        .router()
        .declare_exchange(
            ExchangeDef {
                vhost,
                name,
                kind: req.kind,
                durable: req.durable,
                auto_delete: req.auto_delete,
                internal: req.internal,
                arguments: req.arguments,
            },
            false,
        )
        .await?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(exchange_view(&ex))).into_response())
}

#[derive(Deserialize)]
struct DeleteExchangeParams {
    #[serde(default)]
    if_unused: bool,
}

async fn delete_exchange(
    Admin(core): Admin,
    Path((vhost, name)): Path<(String, String)>,
    Query(params): Query<DeleteExchangeParams>,
) -> Result<Response, ApiError> {
    unknown_vhost(&core, &vhost)?;
    // AMQP's delete of a missing exchange succeeds; an admin wants to know.
    if !name.is_empty() && core.router().exchange(&vhost, &name).is_none() {
        return Err(RoutingError::NotFound {
            kind: "exchange",
            vhost,
            name,
        }
        .into());
    }
    core.router()
        .delete_exchange(&vhost, &name, params.if_unused)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn slash() -> String {
    "/".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BindingRequest {
    #[serde(default = "slash")]
    vhost: String,
    source: String,
    destination: String,
    /// `queue` (default) or `exchange`.
    #[serde(default)]
    destination_type: Option<DestinationKind>,
    #[serde(default)]
    routing_key: String,
    #[serde(default = "empty_object")]
    arguments: serde_json::Value,
}

impl BindingRequest {
    fn into_def(self, core: &BrokerCore) -> Result<BindingDef, ApiError> {
        unknown_vhost(core, &self.vhost)?;
        Ok(BindingDef {
            vhost: self.vhost,
            source: self.source,
            destination_kind: self.destination_type.unwrap_or(DestinationKind::Queue),
            destination: self.destination,
            routing_key: self.routing_key,
            arguments: self.arguments,
        })
    }
}

async fn create_binding(
    Admin(core): Admin,
    body: Result<Json<BindingRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let def = json_body(body)?.into_def(&core)?;
    core.router().bind(def.clone()).await?;
    Ok((StatusCode::CREATED, Json(def)).into_response())
}

async fn delete_binding(
    Admin(core): Admin,
    body: Result<Json<BindingRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let def = json_body(body)?.into_def(&core)?;
    let ex = core
        .router()
        .exchange(&def.vhost, &def.source)
        .ok_or_else(|| RoutingError::NotFound {
            kind: "exchange",
            vhost: def.vhost.clone(),
            name: def.source.clone(),
        })?;
    if !ex.bindings().iter().any(|b| b == &def) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no binding from '{}' to {} '{}' with routing key '{}' and those arguments",
                def.source,
                match def.destination_kind {
                    DestinationKind::Queue => "queue",
                    DestinationKind::Exchange => "exchange",
                },
                def.destination,
                def.routing_key
            ),
        ));
    }
    core.router().unbind(def).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// --- dead-letter queues: browse and replay ------------------------------------------------------

/// Most messages one browse returns.
const MAX_BROWSE: usize = 10_000;
/// Messages a replay claims at a time.
const REPLAY_CHUNK: usize = 100;

#[derive(Serialize)]
struct MessageView {
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
    /// The AMQP `headers` table, if any.
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

/// A record's death history (newest first), empty when it never died.
fn deaths_of(record: &SimpleRecord) -> Vec<serde_json::Value> {
    header_text(record, DEATH_HEADER)
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// The AMQP headers of a record as JSON, as an AMQP consumer gets them: the typed
/// `amqp.headers` table (records of every release) merged with the application headers stored
/// as plain record headers (for display and headers-exchange routing).
fn amqp_headers_of(record: &SimpleRecord) -> Option<serde_json::Map<String, serde_json::Value>> {
    crate::protocol::amqp::convert::record_headers_json(record)
}

fn message_view(offset: i64, record: &SimpleRecord) -> MessageView {
    let body = record.value.clone().unwrap_or_default();
    let (payload, payload_encoding) = match std::str::from_utf8(&body) {
        Ok(t) => (t.to_string(), "string"),
        Err(_) => (base64_encode(&body), "base64"),
    };
    let headers = record
        .headers
        .iter()
        .filter(|(k, _)| k != DEATH_HEADER && k != EXCHANGE_HEADER && k != "amqp.headers")
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
        death: deaths_of(record),
    }
}

#[derive(Deserialize)]
struct BrowseParams {
    /// How many ready messages to show (default 10, at most 10000).
    count: Option<usize>,
}

/// The queue's ready messages, read from its log without consuming them.
async fn browse_queue(
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
struct ReplayRequest {
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

#[derive(Serialize)]
struct ReplayReport {
    replayed: u64,
    /// Messages left in the dead-letter queue because they could not be moved.
    failed: u64,
    /// Why, for the first few failures.
    errors: Vec<String>,
    /// Ready messages still in the queue afterwards.
    remaining: u64,
}

/// Where a dead letter came from: the exchange and first routing key of its first death
/// (the entry marked `first`, else the oldest).
fn origin_of(deaths: &[serde_json::Value]) -> Option<(String, String)> {
    let first = deaths
        .iter()
        .find(|d| d.get("first").and_then(serde_json::Value::as_bool) == Some(true))
        .or_else(|| deaths.last())?;
    let exchange = first.get("exchange")?.as_str()?.to_string();
    let key = first
        .get("routing-keys")
        .and_then(|k| k.get(0))
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_string();
    Some((exchange, key))
}

/// Moves dead letters back: each message is republished (to its origin or the requested
/// target) and settled in this queue only once every copy is durable, so a failure leaves it
/// here (at-least-once: a crash between the two may leave a copy in both places, never none).
///
/// The death history is dropped from the republished copy: the message starts a fresh life,
/// and with the history it would be dropped by the dead-letter cycle rule in the very queue it
/// died in (an expired or overflowed message). Its timestamp is reset for the same reason,
/// or `x-message-ttl` would expire it again at once.
async fn replay_queue(
    Admin(core): Admin,
    Path((vhost, name)): Path<(String, String)>,
    body: Option<Json<ReplayRequest>>,
) -> Result<Response, ApiError> {
    let req = body.map(|Json(r)| r).unwrap_or_default();
    let q = queue_of(&core, &vhost, &name)?;
    if req.routing_key.is_some() && req.exchange.is_none() {
        return Err(bad_request(
            "routing_key needs exchange (use \"\" for the default exchange)",
        ));
    }
    if let Some(ex) = req.exchange.as_deref() {
        if !ex.is_empty() && core.router().exchange(&vhost, ex).is_none() {
            return Err(RoutingError::NotFound {
                kind: "exchange",
                vhost,
                name: ex.to_string(),
            }
            .into());
        }
    }
    // Bounded by what is ready now: a target that routes back into this queue must not
    // make the replay chase its own tail.
    let limit = req.count.unwrap_or(u64::MAX).min(q.message_count());
    let mut report = ReplayReport {
        replayed: 0,
        failed: 0,
        errors: Vec::new(),
        remaining: 0,
    };
    let router = core.router().clone();
    'chunks: while report.replayed < limit {
        let want = (limit - report.replayed).min(REPLAY_CHUNK as u64) as usize;
        let claimed = q.take(want, false)?;
        if claimed.is_empty() {
            break;
        }
        let mut waiting = Vec::with_capacity(claimed.len());
        let mut give_back = Vec::new();
        for m in claimed {
            let target = match req.exchange.clone() {
                Some(ex) => {
                    let key = req
                        .routing_key
                        .clone()
                        .or_else(|| origin_of(&deaths_of(&m.record)).map(|(_, k)| k));
                    let key = key.or_else(|| {
                        m.record
                            .key
                            .as_ref()
                            .map(|k| String::from_utf8_lossy(k).into_owned())
                    });
                    Some((ex, key.unwrap_or_default()))
                }
                None => origin_of(&deaths_of(&m.record)),
            };
            let Some((exchange, key)) = target else {
                report.failed += 1;
                give_back.push(m.offset);
                if report.errors.len() < 10 {
                    report.errors.push(format!(
                        "message at offset {} has no x-death entry; give an exchange to replay it to",
                        m.offset
                    ));
                }
                continue;
            };
            let mut record = m.record;
            record.headers.retain(|(k, _)| k != DEATH_HEADER);
            record.key = Some(bytes::Bytes::from(key.clone().into_bytes()));
            record.timestamp = core.clock().now_ms();
            let headers = amqp_headers_of(&record);
            let outcome = router
                .publish(&vhost, &exchange, headers.as_ref(), record)
                .await;
            let why = match outcome {
                Ok(p) if p.rejected => {
                    Some("a target queue is full (x-overflow reject-publish)".to_string())
                }
                Ok(p) if !p.routed => Some(format!(
                    "exchange '{exchange}' routes key '{key}' to no queue"
                )),
                Ok(p) => {
                    waiting.push((m.offset, p.pending));
                    None
                }
                Err(e) => Some(e.to_string()),
            };
            if let Some(why) = why {
                report.failed += 1;
                give_back.push(m.offset);
                if report.errors.len() < 10 {
                    report.errors.push(format!("offset {}: {why}", m.offset));
                }
            }
        }
        let mut settled = Vec::with_capacity(waiting.len());
        for (offset, pending) in waiting {
            let mut durable = true;
            for p in pending {
                if let Err(e) = p.wait().await {
                    durable = false;
                    if report.errors.len() < 10 {
                        report
                            .errors
                            .push(format!("offset {offset}: append failed: {e}"));
                    }
                }
            }
            if durable {
                settled.push(offset);
                report.replayed += 1;
            } else {
                report.failed += 1;
                give_back.push(offset);
            }
        }
        // One settle (and one persisted state) per chunk rather than per message.
        q.ack(&settled);
        if !give_back.is_empty() {
            // Back to ready without counting a delivery; and stop, or the next claim would
            // pick the same messages again.
            q.restore(&give_back);
            break 'chunks;
        }
    }
    report.remaining = q.message_count();
    Ok(Json(report).into_response())
}

// --- consumer group offset reset ----------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetOffsets {
    /// Topic to reset; default: every topic the group has committed offsets for.
    #[serde(default)]
    topic: Option<String>,
    /// Partitions of `topic`; default all.
    #[serde(default)]
    partitions: Option<Vec<i32>>,
    /// `earliest`, `latest`, `offset` (with `offset`) or `timestamp` (with `timestamp`, ms).
    to: String,
    #[serde(default)]
    offset: Option<i64>,
    #[serde(default)]
    timestamp: Option<i64>,
    /// Compute and return the new offsets without committing them.
    #[serde(default)]
    dry_run: bool,
}

#[derive(Serialize)]
struct ResetView {
    topic: String,
    partition: i32,
    previous_offset: Option<i64>,
    new_offset: i64,
}

/// Commits new offsets for an *empty* group, as Kafka's `kafka-consumer-groups
/// --reset-offsets` does: a group with members would overwrite them at its next commit.
async fn reset_offsets(
    Admin(core): Admin,
    Path(id): Path<String>,
    body: Result<Json<ResetOffsets>, JsonRejection>,
) -> Result<Response, ApiError> {
    let req = json_body(body)?;
    #[derive(Clone, Copy)]
    enum Target {
        Earliest,
        Latest,
        Offset(i64),
        Timestamp(i64),
    }
    let target = match (req.to.as_str(), req.offset, req.timestamp) {
        ("earliest", None, None) => Target::Earliest,
        ("latest", None, None) => Target::Latest,
        ("offset", Some(o), None) => Target::Offset(o),
        ("timestamp", None, Some(t)) => Target::Timestamp(t),
        ("offset", None, _) => return Err(bad_request("to=offset needs \"offset\": N")),
        ("timestamp", _, None) => {
            return Err(bad_request(
                "to=timestamp needs \"timestamp\": MS_SINCE_EPOCH",
            ))
        }
        ("earliest" | "latest" | "offset" | "timestamp", _, _) => {
            return Err(bad_request(
                "give `offset` only with to=offset and `timestamp` only with to=timestamp",
            ))
        }
        (other, _, _) => {
            return Err(bad_request(format!(
                "unknown reset target '{other}' (use earliest, latest, offset or timestamp)"
            )))
        }
    };
    let d = core.groups().describe_group(&id);
    if !d.members.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "group '{id}' has {} active member(s) (state {}): offsets can be reset only while the group is empty; stop its consumers first",
                d.members.len(),
                d.state.as_str()
            ),
        ));
    }
    let committed = core.groups().fetch_offsets(&id, None)?;
    let mut partitions: Vec<(String, i32)> = match &req.topic {
        Some(t) => {
            let topic = core
                .topic(t)
                .ok_or_else(|| BrokerError::UnknownTopic(t.clone()))?;
            match &req.partitions {
                Some(ps) => {
                    for p in ps {
                        if topic.partition(*p).is_none() {
                            return Err(BrokerError::UnknownPartition {
                                topic: t.clone(),
                                partition: *p,
                            }
                            .into());
                        }
                    }
                    ps.iter().map(|p| (t.clone(), *p)).collect()
                }
                None => (0..topic.partition_count() as i32)
                    .map(|p| (t.clone(), p))
                    .collect(),
            }
        }
        None => {
            if req.partitions.is_some() {
                return Err(bad_request("partitions needs topic"));
            }
            committed
                .iter()
                .map(|o| (o.topic.clone(), o.partition))
                .collect()
        }
    };
    partitions.sort();
    partitions.dedup();
    if partitions.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("group '{id}' has no committed offsets; name a topic to reset"),
        ));
    }
    let mut views = Vec::with_capacity(partitions.len());
    let mut offsets = Vec::with_capacity(partitions.len());
    for (topic, p) in partitions {
        // A topic deleted since the commit has nothing to reset to.
        let Ok(h) = core.partition(&topic, p) else {
            continue;
        };
        let (start, end) = (h.log_start_offset(), h.high_watermark());
        let new_offset = match target {
            Target::Earliest => start,
            Target::Latest => end,
            // Out of range is clamped, as Kafka's tool does.
            Target::Offset(o) => o.clamp(start, end),
            Target::Timestamp(ts) => h.offset_for_timestamp(ts)?.map_or(end, |(o, _)| o),
        };
        views.push(ResetView {
            previous_offset: committed
                .iter()
                .find(|c| c.topic == topic && c.partition == p)
                .map(|c| c.offset),
            topic: topic.clone(),
            partition: p,
            new_offset,
        });
        offsets.push(CommittedOffset {
            topic,
            partition: p,
            offset: new_offset,
            leader_epoch: -1,
            metadata: None,
            commit_ms: 0,
        });
    }
    if !req.dry_run {
        let groups_core = core.clone();
        let gid = id.clone();
        // A simple (generation -1) commit is refused if a member joined meanwhile.
        tokio::task::spawn_blocking(move || {
            groups_core
                .groups()
                .commit_offsets(&gid, -1, "", None, offsets)
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| match e {
            GroupError::UnknownMemberId => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!(
                    "group '{id}' gained a member during the reset; stop its consumers and retry"
                ),
            ),
            other => other.into(),
        })?;
    }
    Ok(Json(json!({"group_id": id, "dry_run": req.dry_run, "offsets": views})).into_response())
}

/// Standard base64 with padding (for bodies that are not UTF-8).
pub(crate) fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
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
    fn base64_round_trips() {
        for s in [&b""[..], b"a", b"ab", b"abc", b"abcd", b"\xff\x00\x10"] {
            assert_eq!(base64_decode(&base64_encode(s)), Some(s.to_vec()));
        }
        assert_eq!(base64_encode(b"admin:admin"), "YWRtaW46YWRtaW4=");
    }

    #[test]
    fn origin_is_the_first_death() {
        let deaths = vec![
            json!({"queue": "b", "reason": "expired", "exchange": "dlx", "routing-keys": ["k2"]}),
            json!({"queue": "a", "reason": "rejected", "exchange": "orders", "routing-keys": ["new"], "first": true}),
        ];
        assert_eq!(origin_of(&deaths), Some(("orders".into(), "new".into())));
        assert_eq!(origin_of(&deaths[..1]), Some(("dlx".into(), "k2".into())));
        assert_eq!(origin_of(&[]), None);
    }

    #[test]
    fn comparison_needs_equal_length_and_bytes() {
        assert!(constant_time_eq(b"admin", b"admin"));
        assert!(!constant_time_eq(b"admin", b"admim"));
        assert!(!constant_time_eq(b"admin", b"admin1"));
    }
}
