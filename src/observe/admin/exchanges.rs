//! `/api/exchanges`: list, describe, declare and delete AMQP exchanges. A declaration follows
//! the same rules as AMQP's exchange.declare ([`crate::broker::names`]).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::queues::unknown_vhost;
use super::scope::Scope;
use super::{bad_request, empty_object, json_body, yes, Admin, ApiError};
use crate::broker::names;
use crate::broker::routing::RoutingError;
use crate::meta::ExchangeDef;

#[derive(Serialize)]
pub(super) struct ExchangeView {
    vhost: String,
    name: String,
    #[serde(rename = "type")]
    kind: String,
    durable: bool,
    auto_delete: bool,
    internal: bool,
    arguments: serde_json::Value,
}

pub(super) async fn list_exchanges(
    Admin(core): Admin,
    Scope(scope): Scope,
) -> Json<Vec<ExchangeView>> {
    let mut exchanges: Vec<ExchangeView> = core
        .router()
        .exchanges()
        .iter()
        .filter(|e| scope.allows(&e.def().vhost))
        .map(|e| exchange_view(e))
        .collect();
    exchanges.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
    Json(exchanges)
}

pub(super) fn exchange_view(e: &crate::broker::exchange::Exchange) -> ExchangeView {
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

pub(super) async fn get_exchange(
    Admin(core): Admin,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    unknown_vhost(&core, &vhost)?;
    let ex = core.router().existing_exchange(&vhost, &name)?;
    Ok(Json(exchange_view(&ex)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PutExchange {
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
pub(super) async fn put_exchange(
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
    names::check_name("exchange", &name)?;
    names::check_arguments(&req.arguments)?;
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
pub(super) struct DeleteExchangeParams {
    #[serde(default)]
    if_unused: bool,
}

pub(super) async fn delete_exchange(
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
