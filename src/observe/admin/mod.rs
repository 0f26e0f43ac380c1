//! The admin HTTP API under `/api/`: topics, queues, exchanges, bindings and consumer groups as
//! JSON, described in `docs/admin-api.yaml`.
//!
//! Every route needs HTTP basic auth of a user in the core's user store whose RabbitMQ tags
//! allow the request (see [`auth`]; the default `admin`/`admin` works from loopback only;
//! `observe.admin_user` and `observe.admin_password` both empty turn the API off). Errors are `{"error", "message"}`
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
//!
//! One file per resource: [`topics`], [`queues`], [`exchanges`], [`bindings`], [`groups`],
//! [`users`] (users, permissions, vhosts), live [`connections`] (with their channels and
//! consumers), the [`overview`] and node view, the dead-letter tools in [`dlq`], the rate and
//! length [`history`] behind `?lengths_age=`, and the [`kafka_views`]; [`auth`]
//! checks credentials (and slows password guessing
//! through the core's login guard); this file holds the routes and the one error shape.

mod acls;
mod auth;
mod bindings;
mod bridges;
mod catalog;
mod connections;
mod dlq;
mod exchanges;
mod groups;
pub(crate) mod history;
mod kafka_views;
mod messages;
mod overview;
mod queues;
mod schema_registry;
mod scope;
mod topics;
mod users;

use axum::extract::rejection::JsonRejection;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::http::AppState;
use crate::broker::routing::RoutingError;
use crate::broker::{BrokerError, GroupError};

pub use auth::Admin;
pub use history::History;

/// Starts the history sampler for `state` (see [`history`]): the overview's message counters
/// come from the metrics recorder, zeros when metrics are off.
pub(super) fn start_history(state: &AppState) {
    let prometheus = state.prometheus.clone();
    history::spawn_sampler(
        std::sync::Arc::downgrade(&state.history),
        std::sync::Arc::downgrade(&state.health),
        move || overview::message_counter_totals(prometheus.as_ref()),
    );
}

/// The `/api/...` routes, to be merged into the HTTP router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/topics",
            get(topics::list_topics).post(topics::create_topic),
        )
        .route(
            "/api/topics/{name}",
            get(topics::get_topic).delete(topics::delete_topic),
        )
        .route("/api/topics/{name}/partitions", post(topics::grow_topic))
        .route(
            "/api/topics/{name}/configs",
            axum::routing::patch(topics::alter_topic_configs),
        )
        .route("/api/kafka/clients", get(kafka_views::list_clients))
        .route("/api/kafka/producers", get(kafka_views::list_producers))
        .route("/api/topics/{name}/records", get(messages::browse_topic))
        .route(
            "/api/exchanges/{vhost}/{name}/publish",
            post(messages::publish),
        )
        .route("/api/whoami", get(messages::whoami))
        .route("/api/queues", get(queues::list_queues))
        .route(
            "/api/queues/{vhost}/{name}",
            get(queues::get_queue)
                .put(queues::put_queue)
                .delete(queues::delete_queue),
        )
        .route(
            "/api/queues/{vhost}/{name}/contents",
            axum::routing::delete(queues::purge_queue),
        )
        .route(
            "/api/queues/{vhost}/{name}/purge",
            post(queues::purge_queue),
        )
        .route(
            "/api/queues/{vhost}/{name}/messages",
            get(dlq::browse_queue),
        )
        .route("/api/queues/{vhost}/{name}/replay", post(dlq::replay_queue))
        .route("/api/exchanges", get(exchanges::list_exchanges))
        .route(
            "/api/exchanges/{vhost}/{name}",
            get(exchanges::get_exchange)
                .put(exchanges::put_exchange)
                .delete(exchanges::delete_exchange),
        )
        .route(
            "/api/bindings",
            get(bindings::list_bindings)
                .post(bindings::create_binding)
                .delete(bindings::delete_binding),
        )
        .route("/api/groups", get(groups::list_groups))
        .route(
            "/api/groups/{id}",
            get(groups::get_group).delete(groups::delete_group),
        )
        .route(
            "/api/groups/{id}/reset-offsets",
            post(groups::reset_offsets),
        )
        .route("/api/users", get(users::list_users))
        .route(
            "/api/users/{name}",
            get(users::get_user)
                .put(users::put_user)
                .delete(users::delete_user),
        )
        .route(
            "/api/users/{name}/permissions",
            get(users::user_permissions),
        )
        .route("/api/permissions", get(users::list_permissions))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(users::get_permission)
                .put(users::put_permission)
                .delete(users::delete_permission),
        )
        .route(
            "/api/acls",
            get(acls::list_acls)
                .post(acls::create_acl)
                .delete(acls::delete_acls),
        )
        .route("/api/vhosts", get(users::list_vhosts))
        .route(
            "/api/vhosts/{name}",
            get(users::get_vhost)
                .put(users::put_vhost)
                .delete(users::delete_vhost),
        )
        .route("/api/catalog", get(catalog::catalog))
        .route("/api/overview", get(overview::overview))
        .route("/api/nodes", get(overview::nodes))
        .route("/api/alerts", get(overview::alerts))
        .route("/api/connections", get(connections::list_connections))
        .route(
            "/api/connections/{name}",
            get(connections::get_connection).delete(connections::close_connection),
        )
        .route("/api/channels", get(connections::list_channels))
        .route("/api/consumers", get(connections::list_consumers))
        .merge(bridge_routes())
        .merge(super::http::health_check_routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn(errors_as_json))
        // After the layer: registry errors keep Confluent's own shape.
        .merge(schema_registry::routes())
}

/// Runtime parameters (shovel definitions) and the shovels' live state ([`bridges`]).
fn bridge_routes() -> Router<AppState> {
    Router::new()
        .route("/api/parameters", get(bridges::list_all))
        .route("/api/parameters/{component}", get(bridges::list_component))
        .route(
            "/api/parameters/{component}/{vhost}",
            get(bridges::list_in_vhost),
        )
        .route(
            "/api/parameters/{component}/{vhost}/{name}",
            get(bridges::get_parameter)
                .put(bridges::put_parameter)
                .delete(bridges::delete_parameter),
        )
        .route("/api/shovels", get(bridges::list_shovels))
        .route("/api/shovels/{vhost}", get(bridges::list_shovels_in_vhost))
        .route(
            "/api/shovels/vhost/{vhost}/{name}",
            get(bridges::get_shovel),
        )
        .route(
            "/api/shovels/vhost/{vhost}/{name}/restart",
            axum::routing::delete(bridges::restart_shovel),
        )
        .route("/api/health/checks/bridges", get(bridges::check_bridges))
}

/// Most bytes of a framework-made error text carried into the JSON message.
const MAX_ERROR_TEXT: usize = 4096;

/// Every error answers `{"error", "message"}`, including those axum makes itself before a
/// handler runs (405 method not allowed, a query string or path segment that does not parse,
/// a body over the size limit): their plain-text message is carried over, and an `Allow`
/// header is kept.
async fn errors_as_json(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    // The console shows its own login page: no browser password dialog on its 401s.
    let from_console = request
        .headers()
        .contains_key(super::console::CONSOLE_HEADER);
    let mut response = next.run(request).await;
    if from_console {
        response.headers_mut().remove(header::WWW_AUTHENTICATE);
    }
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_ERROR_TEXT)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let kind = match status {
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let mut json = ApiError::new(status, kind, message).into_response();
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        json.headers_mut().insert(header::ALLOW, allow.clone());
    }
    json
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

    pub(super) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
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
            | BrokerError::InvalidConfig { .. }
            | BrokerError::PolicyViolation(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            BrokerError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            BrokerError::Log(_) | BrokerError::Meta(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        Self::new(status, kind, e.client_message())
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
        Self::new(status, kind, e.client_message())
    }
}

impl From<GroupError> for ApiError {
    fn from(e: GroupError) -> Self {
        let (status, kind) = match &e {
            GroupError::NonEmptyGroup
            | GroupError::UnknownMemberId
            | GroupError::RebalanceInProgress => (StatusCode::CONFLICT, "conflict"),
            GroupError::InvalidGroupId => (StatusCode::BAD_REQUEST, "bad_request"),
            GroupError::GroupIdNotFound => (StatusCode::NOT_FOUND, "not_found"),
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

pub(super) fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message)
}

/// A JSON body, or a 400 naming what is wrong with it.
pub(super) fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(v)| v)
        .map_err(|e| bad_request(e.body_text()))
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such admin API path")
}

pub(super) fn yes() -> bool {
    true
}

pub(super) fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}
