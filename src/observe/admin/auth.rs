//! Who may use the admin API: HTTP basic auth against the core's user store, with RabbitMQ's
//! management tags deciding what a user may do:
//!
//! - `administrator`: everything, including users, permissions and vhosts;
//! - `management`: read and change topics, queues, exchanges, bindings and groups, of the
//!   vhosts it has permissions in only (see [`super::scope`]);
//! - `monitoring`: read only (GET and HEAD);
//! - no management tag: refused (401, as RabbitMQ answers "not authorised").
//!
//! Failed attempts go through the core's login guard (counted as
//! `ferry_auth_failures_total{protocol="http"}`, logged at WARN with the peer address,
//! answered after a per-peer delay) like failed AMQP logins.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode};

use super::scope::VhostScope;
use super::ApiError;
use crate::broker::users::UserInfo;
use crate::broker::BrokerCore;
use crate::observe::http::AppState;
use crate::util::base64_decode;

/// An authenticated admin request allowed by its user's tags, with the core once recovery has
/// finished.
pub struct Admin(pub(crate) BrokerCore);

/// A request of an `administrator` (users, permissions, vhosts), with who made it.
pub struct Administrator(pub(crate) BrokerCore, pub(crate) UserInfo);

/// Any authenticated user with a management tag, whatever the method: who is asking
/// (`/api/whoami`).
pub struct Caller(pub(crate) UserInfo);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let (_, user) = authenticate(parts, state).await?;
        if !MANAGEMENT_TAGS.iter().any(|t| user.has_tag(t)) {
            return Err(not_authorised(&user, true));
        }
        Ok(Caller(user))
    }
}

/// The tags that open the admin API at all.
const MANAGEMENT_TAGS: &[&str] = &["administrator", "management", "monitoring"];

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let (core, user) = authenticate(parts, state).await?;
        let read_only = matches!(parts.method, Method::GET | Method::HEAD);
        let allowed = if read_only {
            MANAGEMENT_TAGS.iter().any(|t| user.has_tag(t))
        } else {
            user.has_tag("administrator") || user.has_tag("management")
        };
        if !allowed {
            return Err(not_authorised(&user, read_only));
        }
        let scope = VhostScope::of(&core, &user);
        super::scope::check_path(parts, state, &scope, &user).await?;
        parts.extensions.insert(scope);
        Ok(Admin(core))
    }
}

impl FromRequestParts<AppState> for Administrator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let (core, user) = authenticate(parts, state).await?;
        if !user.has_tag("administrator") {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "not_authorised",
                format!(
                    "user '{}' is not an administrator (users, permissions and vhosts need the \
                     administrator tag)",
                    user.name
                ),
            ));
        }
        Ok(Administrator(core, user))
    }
}

fn not_authorised(user: &UserInfo, read_only: bool) -> ApiError {
    let needs = if read_only {
        "the administrator, management or monitoring tag"
    } else {
        "the administrator or management tag (monitoring is read-only)"
    };
    let status = if MANAGEMENT_TAGS.iter().any(|t| user.has_tag(t)) {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::UNAUTHORIZED
    };
    ApiError::new(
        status,
        "not_authorised",
        format!("user '{}' needs {needs}", user.name),
    )
}

/// Checks the basic-auth credentials of a request against the user store.
async fn authenticate(parts: &Parts, state: &AppState) -> Result<(BrokerCore, UserInfo), ApiError> {
    if !state.admin_enabled {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "disabled",
            "the admin API is disabled (observe.admin_user and observe.admin_password are empty)",
        ));
    }
    let peer: Option<IpAddr> = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let Some(core) = state.health.core().cloned() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the broker is still recovering its data directory",
        ));
    };
    let guard = core.login_guard();
    if guard.busy(peer) {
        // Refused unchecked, and not waited out: waiting here would hold one more
        // connection for a guesser who is already waiting out many.
        let _ = guard.failed("http", peer, "");
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "too many failed logins from this address are waiting; retry later",
        ));
    }
    let given = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_basic);
    // An unknown peer (a router served without the listener's ConnectInfo) is not loopback.
    let peer = Some(peer.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)));
    let Some((user, password)) = given else {
        if peer.is_some_and(|ip| state.allow_anonymous.allows(ip)) {
            return Ok((core, anonymous()));
        }
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the admin API needs HTTP basic auth of a user tagged administrator, management or monitoring",
        ));
    };
    match core.login("http", peer, &user, &password).await {
        Ok(info) => Ok((core, info)),
        Err(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "wrong user or password (or this user may only log in from the broker's own machine)",
        )),
    }
}

/// Who a request without credentials acts as when `observe.allow_anonymous` lets it in: an
/// administrator, as an anonymous Kafka client may do everything while ACLs are off.
fn anonymous() -> UserInfo {
    UserInfo {
        name: "anonymous".into(),
        tags: vec!["administrator".into()],
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
    }
}
