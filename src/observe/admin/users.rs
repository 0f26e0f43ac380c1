//! `/api/users`, `/api/permissions` and `/api/vhosts` in RabbitMQ's management API shapes,
//! over the core's one user store. Only `administrator` users reach them (listing vhosts is
//! open to every management tag). Passwords are never returned: a user shows RabbitMQ's `password_hash` and
//! `hashing_algorithm`, as `GET /api/users` does in RabbitMQ.

use axum::extract::rejection::JsonRejection;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::auth::Administrator;
use super::scope::Scope;
use super::{json_body, Admin, ApiError};
use crate::broker::users::{Password, UserError};
use crate::meta::{PermissionRecord, UserRecord};

impl From<UserError> for ApiError {
    fn from(e: UserError) -> Self {
        match e {
            UserError::Invalid(m) => ApiError::bad_request(m),
            UserError::NotFound(what) => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("{what} not found"),
            ),
            UserError::Meta(m) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                m.client_message(),
            ),
        }
    }
}

#[derive(Serialize)]
pub(super) struct UserView {
    name: String,
    password_hash: String,
    hashing_algorithm: &'static str,
    tags: Vec<String>,
    /// Which Kafka SCRAM mechanisms have credentials (Ferry's addition).
    scram_mechanisms: Vec<&'static str>,
    /// A default user that may log in from loopback addresses only (Ferry's addition).
    loopback_only: bool,
}

fn user_view(u: UserRecord) -> UserView {
    let mut scram = Vec::new();
    if u.scram_sha_256.is_some() {
        scram.push("SCRAM-SHA-256");
    }
    if u.scram_sha_512.is_some() {
        scram.push("SCRAM-SHA-512");
    }
    UserView {
        name: u.name,
        password_hash: u.password_hash,
        hashing_algorithm: "rabbit_password_hashing_sha256",
        tags: u.tags,
        scram_mechanisms: scram,
        loopback_only: u.loopback_only,
    }
}

pub(super) async fn list_users(Administrator(core, _): Administrator) -> Json<Vec<UserView>> {
    Json(core.users().users().into_iter().map(user_view).collect())
}

pub(super) async fn get_user(
    Administrator(core, _): Administrator,
    Path(name): Path<String>,
) -> Result<Json<UserView>, ApiError> {
    core.users()
        .user(&name)
        .map(|u| Json(user_view(u)))
        .ok_or_else(|| UserError::NotFound(format!("user '{name}'")).into())
}

/// RabbitMQ accepts tags as a comma-separated string or (3.x later) a list.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum Tags {
    Text(String),
    List(Vec<String>),
}

impl Tags {
    fn into_vec(self) -> Vec<String> {
        match self {
            Tags::Text(t) => t
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect(),
            Tags::List(l) => l,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PutUser {
    password: Option<String>,
    password_hash: Option<String>,
    /// Accepted for RabbitMQ compatibility; only its SHA-256 scheme is supported.
    hashing_algorithm: Option<String>,
    tags: Option<Tags>,
}

pub(super) async fn put_user(
    Administrator(core, _): Administrator,
    Path(name): Path<String>,
    body: Result<Json<PutUser>, JsonRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(body)?;
    if let Some(algorithm) = &body.hashing_algorithm {
        if algorithm != "rabbit_password_hashing_sha256" {
            return Err(ApiError::bad_request(format!(
                "hashing_algorithm {algorithm} is not supported (rabbit_password_hashing_sha256 is)"
            )));
        }
    }
    let password = match (body.password, body.password_hash) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give password or password_hash, not both",
            ))
        }
        (Some(p), None) => Password::Clear(p),
        // RabbitMQ: an empty password_hash makes a user who cannot log in with a password.
        (None, Some(h)) if h.is_empty() => Password::None,
        (None, Some(h)) => Password::Hash(h),
        (None, None) => Password::None,
    };
    let existing = core.users().user(&name);
    if existing.is_none() && password == Password::None && body.tags.is_none() {
        return Err(ApiError::bad_request(
            "a new user needs password (or password_hash) and tags",
        ));
    }
    let tags = match body.tags {
        Some(t) => t.into_vec(),
        None => existing.map(|u| u.tags).unwrap_or_default(),
    };
    let created = core.users().put_user(&name, password, tags)?;
    Ok(created_or_updated(created))
}

fn created_or_updated(created: bool) -> Response {
    if created {
        StatusCode::CREATED.into_response()
    } else {
        StatusCode::NO_CONTENT.into_response()
    }
}

pub(super) async fn delete_user(
    Administrator(core, _): Administrator,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    core.users().delete_user(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn user_permissions(
    Administrator(core, _): Administrator,
    Path(name): Path<String>,
) -> Result<Json<Vec<PermissionRecord>>, ApiError> {
    if core.users().user(&name).is_none() {
        return Err(UserError::NotFound(format!("user '{name}'")).into());
    }
    Ok(Json(
        core.users()
            .permissions()
            .into_iter()
            .filter(|p| p.user == name)
            .collect(),
    ))
}

pub(super) async fn list_permissions(
    Administrator(core, _): Administrator,
) -> Json<Vec<PermissionRecord>> {
    Json(core.users().permissions())
}

pub(super) async fn get_permission(
    Administrator(core, _): Administrator,
    Path((vhost, user)): Path<(String, String)>,
) -> Result<Json<PermissionRecord>, ApiError> {
    core.users()
        .permission(&vhost, &user)
        .map(|p| Json(p.record.clone()))
        .ok_or_else(|| {
            UserError::NotFound(format!("permissions of user '{user}' in vhost '{vhost}'")).into()
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PutPermission {
    configure: String,
    write: String,
    read: String,
}

pub(super) async fn put_permission(
    Administrator(core, _): Administrator,
    Path((vhost, user)): Path<(String, String)>,
    body: Result<Json<PutPermission>, JsonRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(body)?;
    super::queues::unknown_vhost(&core, &vhost)?;
    let created = core.users().permission(&vhost, &user).is_none();
    core.users().set_permission(PermissionRecord {
        vhost,
        user,
        configure: body.configure,
        write: body.write,
        read: body.read,
    })?;
    Ok(created_or_updated(created))
}

pub(super) async fn delete_permission(
    Administrator(core, _): Administrator,
    Path((vhost, user)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    core.users().clear_permission(&vhost, &user)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
pub(super) struct VhostView {
    name: String,
    description: String,
    /// Listed in `amqp.vhosts` (Ferry's addition): deleted only there.
    configured: bool,
}

pub(super) async fn list_vhosts(
    Admin(core): Admin,
    Scope(scope): Scope,
) -> Result<Json<Vec<VhostView>>, ApiError> {
    Ok(Json(
        core.vhosts()?
            .into_iter()
            .filter(|v| scope.allows(&v.name))
            .map(|v| VhostView {
                name: v.name,
                description: v.description,
                configured: v.configured,
            })
            .collect(),
    ))
}

pub(super) async fn get_vhost(
    Admin(core): Admin,
    Path(name): Path<String>,
) -> Result<Json<VhostView>, ApiError> {
    core.vhosts()?
        .into_iter()
        .find(|v| v.name == name)
        .map(|v| {
            Json(VhostView {
                name: v.name,
                description: v.description,
                configured: v.configured,
            })
        })
        .ok_or_else(|| UserError::NotFound(format!("vhost '{name}'")).into())
}

#[derive(Deserialize, Default)]
pub(super) struct PutVhost {
    #[serde(default)]
    description: String,
    /// RabbitMQ's other vhost fields (tags, default_queue_type, tracing) are accepted and
    /// ignored.
    #[serde(flatten)]
    _rest: serde_json::Map<String, serde_json::Value>,
}

pub(super) async fn put_vhost(
    Administrator(core, user): Administrator,
    Path(name): Path<String>,
    body: Option<Json<PutVhost>>,
) -> Result<Response, ApiError> {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let created = core.add_vhost(&name, &body.description, Some(&user.name))?;
    Ok(created_or_updated(created))
}

pub(super) async fn delete_vhost(
    Administrator(core, _): Administrator,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    core.delete_vhost(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
