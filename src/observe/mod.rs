//! Observability beside the core: the Prometheus exporter and its scrape-time gauges
//! ([`metrics`]), the memory and disk resource alarms ([`alarms`]), alert rules ([`alerts`]) and their recent transitions ([`alert_history`]), the HTTP endpoints ([`http`]), the admin API under `/api/` ([`admin`],
//! documented in `docs/admin-api.yaml`) and log setup ([`tracing`]).
//!
//! The core only records through the `metrics` and `tracing` facades; this module decides where
//! those go. Nothing here is on a message's path.

pub mod admin;
pub mod alarms;
pub mod alert_history;
pub mod alerts;
pub mod console;
pub mod http;
pub mod http_listener;
pub mod metrics;
pub mod otlp;
pub mod settings;
pub mod tracing;
