//! The `[observe]` settings: logging, metrics, the admin API's credentials and the HTTP
//! listener's limits. They live with the subsystem that reads them; `config.rs` only assembles
//! them into the one `Config` tree, so nothing here imports the config module.

use serde::{Deserialize, Serialize};

pub use super::http_listener::HttpSettings;
use crate::broker::users::AnonymousAccess;

/// `[observe]`: logs, metrics, the admin API and the HTTP listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObserveSettings {
    /// Log filter in `RUST_LOG` syntax; `RUST_LOG` overrides it. Default `info`.
    pub log_level: String,
    /// `"text"` (default) or `"json"` log lines.
    pub log_format: String,
    /// Install the Prometheus recorder and serve `/metrics`. Default true.
    pub metrics: bool,
    /// Label queue gauges by `queue` and partition/lag gauges by `partition`. Default true;
    /// false sums them per vhost / per topic, for brokers with very many objects.
    pub per_object_metrics: bool,
    /// Legacy: an `administrator` user of the admin API, now one user of the user store
    /// (`[[users]]`). Default `admin`, which with the default password is created once as a
    /// loopback-only default user.
    pub admin_user: String,
    /// Its password. Default `admin`; empty user and password turn the admin API off.
    pub admin_password: String,
    /// `/metrics` needs HTTP basic auth of a user tagged `monitoring`, `management` or
    /// `administrator`. Default false (Prometheus scrapes without credentials by convention).
    pub metrics_auth: bool,
    /// Admin API requests without basic auth act as an `administrator`: `false` (default: every
    /// request names a user), `"loopback"` (from this machine only) or `true` (from anywhere;
    /// logged as a WARN line per HTTP listener reachable from other machines). The admin API's
    /// counterpart of `kafka.allow_anonymous`.
    pub allow_anonymous: AnonymousAccess,
    /// OTLP/HTTP collector to export tracing spans to (`http://collector:4318`; a URL without a
    /// path gets `/v1/traces`). Needs a ferry built with the `otlp` cargo feature. Default empty:
    /// no export.
    pub otlp_endpoint: String,
    /// Keep and show one example payload per event type in the event catalog (`/api/catalog`,
    /// `ferry catalog`). Default true; false redacts them (payloads may hold personal data).
    pub catalog_examples: bool,
    /// `[observe.http]`: timeouts and the connection cap of the HTTP listener.
    pub http: HttpSettings,
}

impl Default for ObserveSettings {
    fn default() -> Self {
        Self {
            log_level: "info".into(),
            log_format: "text".into(),
            metrics: true,
            per_object_metrics: true,
            admin_user: "admin".into(),
            admin_password: "admin".into(),
            metrics_auth: false,
            allow_anonymous: AnonymousAccess::Never,
            otlp_endpoint: String::new(),
            catalog_examples: true,
            http: HttpSettings::default(),
        }
    }
}
