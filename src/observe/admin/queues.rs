//! `/api/queues`: list, describe, declare, delete and purge AMQP queues. A declaration follows
//! the same rules as AMQP's queue.declare ([`crate::broker::names`], [`QueueLimits`]).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::history::{queue_sections, with_history, SeriesKey, Window, WindowParams};
use super::scope::Scope;
use super::{bad_request, empty_object, json_body, yes, Admin, ApiError};
use crate::broker::names;
use crate::broker::queue::QueueLimits;
use crate::broker::routing::QueueSpec;
use crate::broker::BrokerCore;
use crate::observe::http::AppState;

#[derive(Serialize)]
pub(super) struct QueueView {
    vhost: String,
    name: String,
    durable: bool,
    auto_delete: bool,
    exclusive: bool,
    arguments: serde_json::Value,
    ready: u64,
    unacked: u64,
    consumers: u32,
    /// RabbitMQ's names for the counts above (ready + unacked, ready, unacked).
    messages: u64,
    messages_ready: u64,
    messages_unacknowledged: u64,
}

/// The queues the caller may see (a `management` user: those of its vhosts), with the current
/// rates from the history (and samples when `lengths_age` asks).
pub(super) async fn list_queues(
    Admin(core): Admin,
    Scope(scope): Scope,
    State(state): State<AppState>,
    Query(params): Query<WindowParams>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    let window = params.window()?;
    let mut queues: Vec<QueueView> = core
        .router()
        .queues()
        .iter()
        .filter(|q| scope.allows(&q.def().vhost))
        .map(|q| queue_view(q))
        .collect();
    queues.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
    Ok(Json(
        queues
            .into_iter()
            .map(|q| with_queue_history(&state, &window, q))
            .collect(),
    ))
}

fn with_queue_history(state: &AppState, window: &Window, q: QueueView) -> serde_json::Value {
    let key = SeriesKey::Queue {
        vhost: q.vhost.clone(),
        name: q.name.clone(),
    };
    with_history(&state.history, &key, window, q, queue_sections)
}

pub(super) fn unknown_vhost(core: &BrokerCore, vhost: &str) -> Result<(), ApiError> {
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

pub(super) fn queue_of(
    core: &BrokerCore,
    vhost: &str,
    name: &str,
) -> Result<std::sync::Arc<crate::broker::queue::Queue>, ApiError> {
    unknown_vhost(core, vhost)?;
    Ok(core.router().existing_queue(vhost, name)?)
}

pub(super) fn queue_view(q: &crate::broker::queue::Queue) -> QueueView {
    let (ready, unacked) = (q.message_count(), q.unacked_count());
    QueueView {
        vhost: q.vhost().to_string(),
        name: q.name().to_string(),
        durable: q.durable(),
        auto_delete: q.auto_delete(),
        exclusive: q.exclusive_owner().is_some(),
        arguments: q.def().arguments.clone(),
        ready,
        unacked,
        consumers: q.consumer_count(),
        messages: ready + unacked,
        messages_ready: ready,
        messages_unacknowledged: unacked,
    }
}

pub(super) async fn get_queue(
    Admin(core): Admin,
    State(state): State<AppState>,
    Path((vhost, name)): Path<(String, String)>,
    Query(params): Query<WindowParams>,
) -> Result<Response, ApiError> {
    let window = params.window()?;
    let q = queue_of(&core, &vhost, &name)?;
    Ok(Json(with_queue_history(&state, &window, queue_view(&q))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PutQueue {
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
pub(super) async fn put_queue(
    Admin(core): Admin,
    Path((vhost, name)): Path<(String, String)>,
    body: Result<Json<PutQueue>, JsonRejection>,
) -> Result<Response, ApiError> {
    let req = json_body(body)?;
    unknown_vhost(&core, &vhost)?;
    if name.is_empty() {
        return Err(bad_request("a queue needs a name"));
    }
    names::check_name("queue", &name)?;
    names::check_arguments(&req.arguments)?;
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
            server_named: false,
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
pub(super) struct DeleteQueueParams {
    #[serde(default)]
    if_unused: bool,
    #[serde(default)]
    if_empty: bool,
}

pub(super) async fn delete_queue(
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

pub(super) async fn purge_queue(
    Admin(core): Admin,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    unknown_vhost(&core, &vhost)?;
    let purged = core.router().purge_queue(&vhost, &name)?;
    Ok(Json(json!({ "purged": purged })).into_response())
}
