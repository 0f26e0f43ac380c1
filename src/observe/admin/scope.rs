//! Which vhosts an admin API user may see, by RabbitMQ's rule for the management tags:
//! `administrator` and `monitoring` see every vhost; a user tagged only `management` sees the
//! vhosts it has permissions in (the ones it could open over AMQP), with their queues,
//! exchanges, bindings, connections, channels and consumers, and nothing of the others.
//!
//! The [`Admin`](super::Admin) extractor works the scope out once per request from the user
//! it authenticated, refuses a path that names a vhost outside it (403), and leaves it in the
//! request's extensions, where list handlers pick it up with the [`Scope`] extractor (listed
//! after `Admin`) to filter what they return. Kafka topics and consumer groups have no vhost:
//! Kafka ACLs govern them, not this scope.

use std::collections::BTreeSet;

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;
use axum::http::StatusCode;

use super::ApiError;
use crate::broker::users::UserInfo;
use crate::broker::BrokerCore;
use crate::observe::http::AppState;

/// The vhosts one request may see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VhostScope {
    All,
    Only(BTreeSet<String>),
}

impl VhostScope {
    /// `user`'s scope, from its tags and its permission entries.
    pub fn of(core: &BrokerCore, user: &UserInfo) -> Self {
        if user.has_tag("administrator") || user.has_tag("monitoring") {
            return VhostScope::All;
        }
        VhostScope::Only(
            core.users()
                .permissions()
                .into_iter()
                .filter(|p| p.user == user.name)
                .map(|p| p.vhost)
                .collect(),
        )
    }

    pub fn allows(&self, vhost: &str) -> bool {
        match self {
            VhostScope::All => true,
            VhostScope::Only(vhosts) => vhosts.contains(vhost),
        }
    }

    /// For objects that may have no vhost (a Kafka connection): only an unscoped user sees
    /// those.
    pub fn allows_opt(&self, vhost: Option<&str>) -> bool {
        match vhost {
            Some(v) => self.allows(v),
            None => *self == VhostScope::All,
        }
    }
}

/// The request's [`VhostScope`]; extract it after [`Admin`](super::Admin), which sets it.
pub struct Scope(pub VhostScope);

impl FromRequestParts<AppState> for Scope {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        // Without Admin before it nothing was authorised: show nothing.
        Ok(Scope(
            parts
                .extensions
                .get::<VhostScope>()
                .cloned()
                .unwrap_or_else(|| VhostScope::Only(BTreeSet::new())),
        ))
    }
}

/// Refuses a request whose path names a vhost outside `scope` (`{vhost}` in the route, or
/// `{name}` under `/api/vhosts/`).
pub(super) async fn check_path(
    parts: &mut Parts,
    state: &AppState,
    scope: &VhostScope,
    user: &UserInfo,
) -> Result<(), ApiError> {
    if *scope == VhostScope::All {
        return Ok(());
    }
    let vhosts_route = parts.uri.path().starts_with("/api/vhosts/");
    let Ok(params) = RawPathParams::from_request_parts(parts, state).await else {
        return Ok(());
    };
    for (key, value) in params.iter() {
        let names_vhost = key == "vhost" || (vhosts_route && key == "name");
        if names_vhost && !scope.allows(value) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "not_authorised",
                format!(
                    "user '{}' (tagged management) may only use the vhosts it has permissions \
                     in, not '{value}'",
                    user.name
                ),
            ));
        }
    }
    Ok(())
}
