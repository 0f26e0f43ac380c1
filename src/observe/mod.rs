//! Observability beside the core: the Prometheus exporter, the HTTP endpoints and log setup.
//!
//! The core only records through the `metrics` and `tracing` facades; this module decides where
//! those go. Nothing here is on a message's path.

pub mod http;
pub mod metrics;
pub mod tracing;
