//! `/api/bindings`: list, create and delete bindings (queue or exchange destinations), under
//! the same rules as AMQP's queue.bind and exchange.bind ([`crate::broker::names`]).

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::queues::unknown_vhost;
use super::scope::Scope;
use super::{empty_object, json_body, Admin, ApiError};
use crate::broker::names;
use crate::broker::BrokerCore;
use crate::meta::{BindingDef, DestinationKind};

pub(super) async fn list_bindings(
    Admin(core): Admin,
    Scope(scope): Scope,
) -> Json<Vec<crate::meta::BindingDef>> {
    let mut bindings: Vec<crate::meta::BindingDef> = core
        .router()
        .exchanges()
        .iter()
        .flat_map(|e| e.bindings())
        .filter(|b| scope.allows(&b.vhost))
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

fn slash() -> String {
    "/".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BindingRequest {
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
        names::check_name("exchange", &self.source)?;
        names::check_name("destination", &self.destination)?;
        names::check_name("routing key", &self.routing_key)?;
        names::check_arguments(&self.arguments)?;
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

pub(super) async fn create_binding(
    Admin(core): Admin,
    body: Result<Json<BindingRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let def = json_body(body)?.into_def(&core)?;
    core.router().bind(def.clone()).await?;
    Ok((StatusCode::CREATED, Json(def)).into_response())
}

pub(super) async fn delete_binding(
    Admin(core): Admin,
    body: Result<Json<BindingRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let def = json_body(body)?.into_def(&core)?;
    let ex = core.router().existing_exchange(&def.vhost, &def.source)?;
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
