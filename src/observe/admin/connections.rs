//! `/api/connections`, `/api/channels` and `/api/consumers`: the live client connections of
//! every protocol from the core's registry ([`crate::broker::connections`]), shaped like
//! RabbitMQ's management API (its field names where it has one), and closing a connection
//! with a reason (`DELETE /api/connections/{name}` with an `X-Reason` header, as RabbitMQ).

use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::overview::{rates, RateSamples};
use super::scope::{Scope, VhostScope};
use super::{Admin, ApiError};
use crate::broker::connections::{ConnectionSnapshot, Protocol};
use crate::broker::BrokerCore;

/// The reason a connection closed through the API gets when the request names none; RabbitMQ's
/// own default text.
const DEFAULT_CLOSE_REASON: &str = "Closed via management plugin";

/// Longest reason passed on to the client: AMQP's reply-text is a short string (255 bytes),
/// and `CONNECTION_FORCED - ` takes some of it.
const MAX_REASON_BYTES: usize = 200;

pub(super) fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    format!("ferry@{host}")
}

/// Byte totals per connection id, for the `*_oct_details.rate` fields.
static BYTE_SAMPLES: RateSamples = parking_lot::Mutex::new(std::collections::BTreeMap::new());

fn connection_view(c: &ConnectionSnapshot, node: &str) -> Value {
    let totals = [c.recv_oct as f64, c.send_oct as f64];
    let rates = rates(&BYTE_SAMPLES, c.id, &totals, std::time::Instant::now());
    let mut view = json!({
        "name": c.name,
        "node": node,
        "type": "network",
        "state": "running",
        "protocol": c.protocol.as_str(),
        "user": c.user,
        "vhost": c.vhost,
        "peer_host": c.peer.ip().to_string(),
        "peer_port": c.peer.port(),
        "host": c.local.map(|l| l.ip().to_string()),
        "port": c.local.map(|l| l.port()),
        "ssl": c.tls,
        "connected_at": c.connected_at_ms,
        "recv_oct": c.recv_oct,
        "recv_oct_details": { "rate": rates[0] },
        "send_oct": c.send_oct,
        "send_oct_details": { "rate": rates[1] },
        "client_name": c.client_name,
    });
    match c.protocol {
        Protocol::Amqp => {
            view["channels"] = json!(c.channels.len());
            view["client_properties"] = json!({ "connection_name": c.client_name });
        }
        Protocol::Kafka => {
            view["client_id"] = json!(c.client_name);
            // Kafka's principal of a client that did not authenticate (`User:ANONYMOUS`).
            if c.user.is_none() {
                view["user"] = json!("ANONYMOUS");
            }
        }
        Protocol::Native => {}
    }
    view
}

fn channel_name(c: &ConnectionSnapshot, number: u16) -> String {
    format!("{} ({number})", c.name)
}

fn connection_details(c: &ConnectionSnapshot) -> Value {
    json!({
        "name": c.name,
        "peer_host": c.peer.ip().to_string(),
        "peer_port": c.peer.port(),
    })
}

/// The connections `scope` may see (a management user: AMQP connections of its vhosts), by
/// name.
fn sorted_connections(core: &BrokerCore, scope: &VhostScope) -> Vec<ConnectionSnapshot> {
    let mut all = core.connections().list();
    all.retain(|c| scope.allows_opt(c.vhost.as_deref()));
    all.sort_by(|a, b| a.name.cmp(&b.name));
    all
}

pub(super) async fn list_connections(Admin(core): Admin, Scope(scope): Scope) -> Json<Vec<Value>> {
    let node = node_name();
    let connections = sorted_connections(&core, &scope);
    // Samples of closed connections go; ids are never reused. Only a full list can tell.
    if scope == VhostScope::All {
        let live: std::collections::BTreeSet<u64> = connections.iter().map(|c| c.id).collect();
        BYTE_SAMPLES.lock().retain(|id, _| live.contains(id));
    }
    Json(
        connections
            .iter()
            .map(|c| connection_view(c, &node))
            .collect(),
    )
}

fn no_connection(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no connection '{name}'"),
    )
}

pub(super) async fn get_connection(
    Admin(core): Admin,
    Scope(scope): Scope,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let c = core
        .connections()
        .get(&name)
        .filter(|c| scope.allows_opt(c.vhost.as_deref()))
        .ok_or_else(|| no_connection(&name))?;
    Ok(Json(connection_view(&c, &node_name())))
}

/// Closes a connection: an AMQP client gets connection.close 320 (CONNECTION_FORCED) with the
/// `X-Reason` header's text, a Kafka client's socket is dropped. 204 once asked; the
/// connection leaves the list when its task has finished closing.
pub(super) async fn close_connection(
    Admin(core): Admin,
    Scope(scope): Scope,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // A connection outside the user's vhosts does not exist for it.
    let visible = core
        .connections()
        .get(&name)
        .is_some_and(|c| scope.allows_opt(c.vhost.as_deref()));
    if !visible {
        return Err(no_connection(&name));
    }
    let reason = match headers.get("x-reason") {
        None => DEFAULT_CLOSE_REASON.to_string(),
        Some(v) => v
            .to_str()
            .map_err(|_| super::bad_request("X-Reason must be visible ASCII text"))?
            .trim()
            .to_string(),
    };
    let mut reason = if reason.is_empty() {
        DEFAULT_CLOSE_REASON.to_string()
    } else {
        reason
    };
    if reason.len() > MAX_REASON_BYTES {
        // ASCII (checked above), so any byte index is a character boundary.
        reason.truncate(MAX_REASON_BYTES);
    }
    if !core.connections().close(&name, &reason) {
        return Err(no_connection(&name));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn list_channels(Admin(core): Admin, Scope(scope): Scope) -> Json<Vec<Value>> {
    let node = node_name();
    let mut channels = Vec::new();
    for c in sorted_connections(&core, &scope) {
        for (number, ch) in &c.channels {
            channels.push(json!({
                "name": channel_name(&c, *number),
                "node": node,
                "number": number,
                "connection_details": connection_details(&c),
                "user": c.user,
                "vhost": c.vhost,
                "state": "running",
                "prefetch_count": ch.prefetch_count,
                "global_prefetch_count": ch.global_prefetch_count,
                "consumer_count": live_consumers(&core, &c, ch).count(),
            }));
        }
    }
    Json(channels)
}

/// The channel's consumers whose queue still exists: a queue deleted under its consumers
/// cancels them (basic.cancel from the broker) without going through basic.cancel's path.
fn live_consumers<'a>(
    core: &'a BrokerCore,
    c: &'a ConnectionSnapshot,
    ch: &'a crate::broker::connections::ChannelState,
) -> impl Iterator<Item = (&'a String, &'a crate::broker::connections::ConsumerState)> + 'a {
    let vhost = c.vhost.clone().unwrap_or_default();
    ch.consumers.iter().filter(move |(_, consumer)| {
        core.router()
            .existing_queue(&vhost, &consumer.queue)
            .is_ok()
    })
}

pub(super) async fn list_consumers(Admin(core): Admin, Scope(scope): Scope) -> Json<Vec<Value>> {
    let mut consumers = Vec::new();
    for c in sorted_connections(&core, &scope) {
        for (number, ch) in &c.channels {
            for (tag, consumer) in live_consumers(&core, &c, ch) {
                consumers.push(json!({
                    "consumer_tag": tag,
                    "queue": { "name": consumer.queue, "vhost": c.vhost },
                    "channel_details": {
                        "name": channel_name(&c, *number),
                        "number": number,
                        "connection_name": c.name,
                        "peer_host": c.peer.ip().to_string(),
                        "peer_port": c.peer.port(),
                        "user": c.user,
                    },
                    "ack_required": consumer.ack_required,
                    "exclusive": consumer.exclusive,
                    "prefetch_count": consumer.prefetch_count,
                    "active": true,
                    "activity_status": "up",
                }));
            }
        }
    }
    Json(consumers)
}
