//! Runtime parameters and shovels in RabbitMQ's management API shapes:
//! `/api/parameters/{component}/{vhost}/{name}` (PUT `{"value": {...}}`, GET, DELETE) over the
//! core's parameter store, and `/api/shovels` with each bridge's live state and counters.
//! A bridge is defined exactly as a RabbitMQ dynamic shovel (component `shovel`); the
//! component validates the value before it is stored, so a bad definition is a 400 naming
//! the key. `DELETE /api/shovels/vhost/{vhost}/{name}/restart` restarts one (RabbitMQ's
//! restart endpoint). The `bridges` health check fails while any bridge is not running.
//! Changing parameters needs the `administrator` tag: a definition holds remote credentials
//! and makes the broker connect out, which RabbitMQ also keeps from plain management users.

use axum::extract::rejection::JsonRejection;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Administrator;
use super::{json_body, Admin, ApiError};
use crate::broker::parameters::{Parameter, ParameterError};

/// The component of shovel definitions.
const SHOVEL: &str = "shovel";

impl From<ParameterError> for ApiError {
    fn from(e: ParameterError) -> Self {
        match e {
            ParameterError::Invalid(m) => ApiError::bad_request(m),
            ParameterError::UnknownComponent(_) | ParameterError::NotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            ParameterError::Meta(m) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                m.client_message(),
            ),
        }
    }
}

fn view(p: Parameter) -> Value {
    json!({"component": p.component, "vhost": p.vhost, "name": p.name, "value": p.value})
}

#[derive(Deserialize)]
pub(super) struct ParameterBody {
    value: Value,
    /// RabbitMQ's body may repeat these; when present they must match the path.
    component: Option<String>,
    vhost: Option<String>,
    name: Option<String>,
}

fn known(core: &crate::broker::BrokerCore, component: &str) -> Result<(), ApiError> {
    if core.parameters().is_registered(component) {
        Ok(())
    } else {
        Err(ParameterError::UnknownComponent(component.to_string()).into())
    }
}

pub(super) async fn list_all(Admin(core): Admin) -> Json<Vec<Value>> {
    Json(core.parameters().list(None).into_iter().map(view).collect())
}

pub(super) async fn list_component(
    Admin(core): Admin,
    Path(component): Path<String>,
) -> Result<Json<Vec<Value>>, ApiError> {
    known(&core, &component)?;
    Ok(Json(
        core.parameters()
            .list(Some(&component))
            .into_iter()
            .map(view)
            .collect(),
    ))
}

pub(super) async fn list_in_vhost(
    Admin(core): Admin,
    Path((component, vhost)): Path<(String, String)>,
) -> Result<Json<Vec<Value>>, ApiError> {
    known(&core, &component)?;
    Ok(Json(
        core.parameters()
            .list(Some(&component))
            .into_iter()
            .filter(|p| p.vhost == vhost)
            .map(view)
            .collect(),
    ))
}

pub(super) async fn get_parameter(
    Admin(core): Admin,
    Path((component, vhost, name)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    known(&core, &component)?;
    core.parameters()
        .get(&component, &vhost, &name)
        .map(|p| Json(view(p)))
        .ok_or_else(|| {
            ParameterError::NotFound {
                component,
                vhost,
                name,
            }
            .into()
        })
}

pub(super) async fn put_parameter(
    Administrator(core, _): Administrator,
    Path((component, vhost, name)): Path<(String, String, String)>,
    body: Result<Json<ParameterBody>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let body = json_body(body)?;
    for (field, given, path) in [
        ("component", &body.component, &component),
        ("vhost", &body.vhost, &vhost),
        ("name", &body.name, &name),
    ] {
        if given.as_ref().is_some_and(|g| g != path) {
            return Err(ApiError::bad_request(format!(
                "the body's {field} does not match the path"
            )));
        }
    }
    if !body.value.is_object() {
        return Err(ApiError::bad_request("value must be a JSON object"));
    }
    if !core.vhosts()?.iter().any(|v| v.name == vhost) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("vhost '{vhost}' not found"),
        ));
    }
    let created = core
        .parameters()
        .set(&component, &vhost, &name, &body.value)?;
    Ok(if created {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    })
}

pub(super) async fn delete_parameter(
    Administrator(core, _): Administrator,
    Path((component, vhost, name)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    known(&core, &component)?;
    core.parameters().delete(&component, &vhost, &name)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every defined shovel's status, as the bridge component reports it (one defined but not yet
/// started shows as `starting`).
fn shovels(core: &crate::broker::BrokerCore) -> Vec<Value> {
    core.parameters().status(SHOVEL).unwrap_or_default()
}

pub(super) async fn list_shovels(Admin(core): Admin) -> Json<Vec<Value>> {
    Json(shovels(&core))
}

pub(super) async fn list_shovels_in_vhost(
    Admin(core): Admin,
    Path(vhost): Path<String>,
) -> Json<Vec<Value>> {
    Json(
        shovels(&core)
            .into_iter()
            .filter(|s| s["vhost"] == vhost.as_str())
            .collect(),
    )
}

pub(super) async fn get_shovel(
    Admin(core): Admin,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    shovels(&core)
        .into_iter()
        .find(|s| s["vhost"] == vhost.as_str() && s["name"] == name.as_str())
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("shovel '{name}' in vhost '{vhost}' not found"),
            )
        })
}

pub(super) async fn restart_shovel(
    Administrator(core, _): Administrator,
    Path((vhost, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    core.parameters().restart(SHOVEL, &vhost, &name)?;
    Ok(StatusCode::NO_CONTENT)
}

/// 200 when every bridge is running (or there are none), 503 naming the ones that are not.
pub(super) async fn check_bridges(Admin(core): Admin) -> Response {
    let down: Vec<String> = shovels(&core)
        .into_iter()
        .filter(|s| s["state"] != "running")
        .map(|s| {
            format!(
                "bridge '{}' in vhost '{}' is {}{}",
                s["name"].as_str().unwrap_or(""),
                s["vhost"].as_str().unwrap_or(""),
                s["state"].as_str().unwrap_or("unknown"),
                s["reason"]
                    .as_str()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            )
        })
        .collect();
    if down.is_empty() {
        (StatusCode::OK, Json(json!({"status": "ok"}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "failed", "reason": down.join("; ")})),
        )
            .into_response()
    }
}
