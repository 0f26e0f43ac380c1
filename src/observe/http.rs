//! The HTTP side channel: `/healthz`, `/readyz`, `/metrics` and the admin API under `/api/`
//! ([`super::admin`]).
//!
//! It starts before recovery so an orchestrator can tell "alive but still recovering" (healthz
//! 200, readyz 503) from "dead". Readiness is a [`Health`] value the server flips once every
//! listener accepts, and loses again if a partition fail-stops.
//!
//! RabbitMQ-style checks under `/api/health/checks/` (alarms, port and protocol listeners,
//! fail-stopped partitions, …) sit behind the admin credentials like the rest of `/api/`, and
//! answer 200 `{"status":"ok"}` or 503 `{"status":"failed","reason"}` so scripts and probes
//! can branch on the status alone. Listener checks connect to the listener, so a listener
//! whose accept loop died fails even though its address is known.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::{FromRequestParts, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use parking_lot::Mutex;
use serde_json::json;

use super::admin::Admin;
use super::settings::ObserveSettings;
use crate::broker::BrokerCore;
use crate::schema::SchemaRegistry;

/// What `/readyz` and the health checks report.
#[derive(Default)]
pub struct Health {
    ready: AtomicBool,
    phase: Mutex<String>,
    core: OnceLock<BrokerCore>,
    /// The schema registry, opened with the core.
    schemas: OnceLock<Arc<SchemaRegistry>>,
    /// Bound listeners by protocol (`kafka`, `amqp`, `http`), for the listener checks.
    listeners: Mutex<Vec<(&'static str, SocketAddr)>>,
    /// Recent alert transitions, recorded by the alert task, read by `GET /api/alerts`.
    alert_history: Arc<super::alert_history::AlertHistory>,
}

impl Health {
    pub fn new() -> Arc<Self> {
        let h = Self::default();
        *h.phase.lock() = "starting".into();
        Arc::new(h)
    }

    pub fn set_phase(&self, phase: &str) {
        *self.phase.lock() = phase.to_string();
    }

    pub fn set_core(&self, core: BrokerCore) {
        let _ = self.core.set(core);
    }

    pub fn alert_history(&self) -> &Arc<super::alert_history::AlertHistory> {
        &self.alert_history
    }

    pub fn set_schemas(&self, registry: Arc<SchemaRegistry>) {
        let _ = self.schemas.set(registry);
    }

    /// The schema registry, once recovery has opened the core.
    pub fn schemas(&self) -> Option<&Arc<SchemaRegistry>> {
        self.schemas.get()
    }

    /// The core, once recovery has opened it.
    pub fn core(&self) -> Option<&BrokerCore> {
        self.core.get()
    }

    /// Records a bound listener (`protocol` is `kafka`, `amqp` or `http`).
    pub fn set_listener(&self, protocol: &'static str, addr: SocketAddr) {
        let mut l = self.listeners.lock();
        l.retain(|(p, _)| *p != protocol);
        l.push((protocol, addr));
    }

    pub(crate) fn listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        self.listeners.lock().clone()
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
        metrics::gauge!("ferry_ready").set(if ready { 1.0 } else { 0.0 });
    }

    /// `Ok(())` when ready, else every reason it is not.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let mut reasons = Vec::new();
        if !self.ready.load(Ordering::Acquire) {
            reasons.push(format!("not ready: {}", self.phase.lock()));
        }
        if let Some(core) = self.core.get() {
            for (topic, partition) in core.failed_partitions() {
                reasons.push(format!(
                    "partition {topic}-{partition} stopped after a disk error (fail-stop)"
                ));
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub(super) health: Arc<Health>,
    pub(super) prometheus: Option<PrometheusHandle>,
    per_object_metrics: bool,
    /// False when `observe.admin_user` and `admin_password` are both empty (API off).
    pub(super) admin_enabled: bool,
    /// `observe.metrics_auth`: `/metrics` needs a monitoring user.
    metrics_auth: bool,
    /// `observe.allow_anonymous`: who may use the admin API without basic auth.
    pub(super) allow_anonymous: crate::broker::users::AnonymousAccess,
    /// Rate and length samples for the admin API (`?lengths_age=`).
    pub(super) history: Arc<super::admin::History>,
}

/// `/healthz`, `/readyz` and `/metrics` (open) plus the admin API under `/api/` (basic auth
/// with `observe.admin_user`/`observe.admin_password`).
pub fn router(
    health: Arc<Health>,
    prometheus: Option<PrometheusHandle>,
    settings: &ObserveSettings,
) -> Router {
    let state = AppState {
        health,
        prometheus,
        per_object_metrics: settings.per_object_metrics,
        admin_enabled: !(settings.admin_user.is_empty() && settings.admin_password.is_empty()),
        metrics_auth: settings.metrics_auth,
        allow_anonymous: settings.allow_anonymous,
        history: Arc::default(),
    };
    super::admin::start_history(&state);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .merge(super::admin::routes())
        .merge(super::console::routes())
        .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.health.readiness() {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ready"}))).into_response(),
        Err(reasons) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "reasons": reasons})),
        )
            .into_response(),
    }
}

async fn metrics_text(State(state): State<AppState>, request: axum::extract::Request) -> Response {
    if state.metrics_auth {
        let (mut parts, _) = request.into_parts();
        // Any management tag may scrape; a plain AMQP user may not.
        if let Err(e) = Admin::from_request_parts(&mut parts, &state).await {
            return e.into_response();
        }
    }
    match &state.prometheus {
        Some(handle) => {
            let mut text = handle.render();
            if let Some(core) = state.health.core() {
                text.push_str(&super::metrics::render_scrape_gauges(
                    core,
                    state.per_object_metrics,
                ));
            }
            (
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                text,
            )
                .into_response()
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics are disabled (observe.metrics = false, or the embedding application installed its own recorder)\n",
        )
            .into_response(),
    }
}

// --- RabbitMQ-style health checks ---------------------------------------------------------------

/// `/api/health/checks/...`, as RabbitMQ's management API names them (admin auth, like every
/// `/api/` route): each answers 200 `{"status":"ok"}` or 503 `{"status":"failed","reason"}`.
pub(super) fn health_check_routes() -> Router<AppState> {
    Router::new()
        .route("/api/health/checks/alarms", get(check_alarms))
        .route("/api/health/checks/local-alarms", get(check_alarms))
        .route(
            "/api/health/checks/port-listener/{port}",
            get(check_port_listener),
        )
        .route(
            "/api/health/checks/protocol-listener/{protocol}",
            get(check_protocol_listener),
        )
        .route("/api/health/checks/virtual-hosts", get(check_virtual_hosts))
        .route(
            "/api/health/checks/node-is-quorum-critical",
            get(check_quorum_critical),
        )
        .route("/api/health/checks/partitions", get(check_partitions))
        .route("/api/health/checks/ready", get(check_ready))
}

fn check_ok() -> Response {
    (StatusCode::OK, Json(json!({"status": "ok"}))).into_response()
}

fn check_failed(reason: impl Into<String>) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": "failed", "reason": reason.into()})),
    )
        .into_response()
}

/// The resource alarm ([`super::alarms`]: memory above the high watermark, disk free below
/// `amqp.disk_free_limit_bytes`, or an alarm raised by hand): while it is set publishers are
/// blocked.
async fn check_alarms(Admin(core): Admin) -> Response {
    let alarm = core.router().subscribe_alarm().borrow().clone();
    match alarm {
        None => check_ok(),
        Some(reason) => check_failed(format!(
            "resource alarm in effect: {reason} (publishers are blocked)"
        )),
    }
}

/// Whether something accepts TCP connections at `addr` (a wildcard address is tried on
/// loopback).
async fn accepts(addr: SocketAddr) -> Result<(), String> {
    let mut target = addr;
    if target.ip().is_unspecified() {
        target.set_ip(match target {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    match tokio::time::timeout(
        std::time::Duration::from_secs(2),
        tokio::net::TcpStream::connect(target),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("connecting to {target} failed: {e}")),
        Err(_) => Err(format!("connecting to {target} timed out")),
    }
}

fn describe_listeners(listeners: &[(&'static str, SocketAddr)]) -> String {
    if listeners.is_empty() {
        return "none yet".into();
    }
    listeners
        .iter()
        .map(|(p, a)| format!("{p} on {a}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn check_port_listener(
    State(state): State<AppState>,
    _admin: Admin,
    Path(port): Path<String>,
) -> Response {
    let Ok(port) = port.parse::<u16>() else {
        return super::admin::ApiError::bad_request(format!("`{port}` is not a TCP port"))
            .into_response();
    };
    let listeners = state.health.listeners();
    match listeners.iter().find(|(_, a)| a.port() == port) {
        None => check_failed(format!(
            "no listener on port {port} (listeners: {})",
            describe_listeners(&listeners)
        )),
        Some((_, addr)) => match accepts(*addr).await {
            Ok(()) => check_ok(),
            Err(e) => check_failed(e),
        },
    }
}

async fn check_protocol_listener(
    State(state): State<AppState>,
    _admin: Admin,
    Path(protocol): Path<String>,
) -> Response {
    let wanted = match protocol.to_ascii_lowercase().as_str() {
        "amqp" | "amqp091" | "amqp0-9-1" | "amqp/0-9-1" => "amqp",
        "kafka" => "kafka",
        "http" => "http",
        // The TLS listeners, by RabbitMQ's names (amqp/ssl, https) and Kafka's (SSL).
        "amqps" | "amqp/ssl" => "amqps",
        "kafka-tls" | "kafka_tls" | "kafka/ssl" | "ssl" => "kafka_tls",
        "https" => "https",
        _ => {
            return super::admin::ApiError::bad_request(format!(
                "unknown protocol `{protocol}` (use amqp, kafka, http, amqps, kafka-tls or https)"
            ))
            .into_response()
        }
    };
    let listeners = state.health.listeners();
    match listeners.iter().find(|(p, _)| *p == wanted) {
        None => check_failed(format!(
            "no {wanted} listener (listeners: {})",
            describe_listeners(&listeners)
        )),
        Some((_, addr)) => match accepts(*addr).await {
            Ok(()) => check_ok(),
            Err(e) => check_failed(format!("{wanted} listener on {addr}: {e}")),
        },
    }
}

/// The one vhost (`/`) is served once the core is open (the `Admin` extractor answers 503
/// before that).
async fn check_virtual_hosts(_admin: Admin) -> Response {
    check_ok()
}

/// One node holds every copy, so stopping it never loses a quorum it is part of.
async fn check_quorum_critical(_admin: Admin) -> Response {
    check_ok()
}

/// No partition or queue log stopped after a disk error (fail-stop).
async fn check_partitions(Admin(core): Admin) -> Response {
    let failed = core.failed_partitions();
    if failed.is_empty() {
        return check_ok();
    }
    let names: Vec<String> = failed.iter().map(|(t, p)| format!("{t}-{p}")).collect();
    check_failed(format!(
        "{} log(s) stopped after a disk error (fail-stop): {}; check the disk and the broker log, then restart",
        names.len(),
        names.join(", ")
    ))
}

/// `/readyz` in the health-check format.
async fn check_ready(State(state): State<AppState>, _admin: Admin) -> Response {
    match state.health.readiness() {
        Ok(()) => check_ok(),
        Err(reasons) => check_failed(reasons.join("; ")),
    }
}

/// Serves the router on an already-bound listener until `shutdown` turns true, with the
/// timeouts and connection cap of `observe.http` ([`super::http_listener`]).
pub use super::http_listener::serve;

/// The address to print for a bound listener.
pub fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}
