//! Who may use the admin API: HTTP basic auth against `observe.admin_user` /
//! `observe.admin_password`, compared in constant time. Failed attempts go through the core's
//! login guard (counted as `ferry_auth_failures_total{protocol="http"}`, logged at WARN with the
//! peer address, answered after a per-peer delay) like failed AMQP logins.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};

use super::ApiError;
use crate::broker::BrokerCore;
use crate::observe::http::AppState;
use crate::util::base64_decode;

/// An authenticated admin request, with the core once recovery has finished.
pub struct Admin(pub(crate) BrokerCore);

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
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        if let Some(core) = state.health.core() {
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
            Some((user, _)) => {
                if let Some(core) = state.health.core() {
                    core.login_guard().failed("http", peer, &user).wait().await;
                }
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "wrong admin user or password",
                ));
            }
            None => return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the admin API needs HTTP basic auth (observe.admin_user / observe.admin_password)",
            )),
        }
        match state.health.core() {
            Some(core) => {
                core.login_guard().succeeded(peer);
                Ok(Admin(core.clone()))
            }
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

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
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

    #[test]
    fn comparison_needs_equal_length_and_bytes() {
        assert!(constant_time_eq(b"admin", b"admin"));
        assert!(!constant_time_eq(b"admin", b"admim"));
        assert!(!constant_time_eq(b"admin", b"admin1"));
    }
}
