//! The HTTP side channel: `/healthz`, `/readyz`, `/metrics` and the admin API under `/api/`
//! ([`super::admin`]).
//!
//! It starts before recovery so an orchestrator can tell "alive but still recovering" (healthz
//! 200, readyz 503) from "dead". Readiness is a [`Health`] value the server flips once every
//! listener accepts, and loses again if a partition fail-stops.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use parking_lot::Mutex;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::admin::AdminCredentials;
use crate::broker::BrokerCore;
use crate::config::ObserveSettings;

/// What `/readyz` reports.
#[derive(Default)]
pub struct Health {
    ready: AtomicBool,
    phase: Mutex<String>,
    core: OnceLock<BrokerCore>,
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

    /// The core, once recovery has opened it.
    pub fn core(&self) -> Option<&BrokerCore> {
        self.core.get()
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
    prometheus: Option<PrometheusHandle>,
    per_object_metrics: bool,
    pub(super) admin: AdminCredentials,
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
        admin: AdminCredentials {
            user: settings.admin_user.clone(),
            password: settings.admin_password.clone(),
        },
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .merge(super::admin::routes())
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

async fn metrics_text(State(state): State<AppState>) -> Response {
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

/// Serves the router on an already-bound listener until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
}

/// The address to print for a bound listener.
pub fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}
