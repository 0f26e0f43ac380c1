//! Log output for the `ferry` binary: text or JSON lines, filtered by `RUST_LOG` or the
//! configured level. Only the CLI calls this; an embedding application keeps its own subscriber.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Installs the global subscriber. `RUST_LOG`, when the CLI passes it, wins over `level`.
/// `color` turns on ANSI colors; the CLI passes whether stderr is a terminal (and `NO_COLOR` is
/// unset), so log files and pipes get plain text.
pub fn init(level: &str, format: &str, rust_log: Option<String>, color: bool) {
    init_with_otlp(level, format, rust_log, color, "");
}

/// [`init`], plus span export to an OTLP collector when `otlp_endpoint` is not empty (see
/// [`super::otlp`]). The exported spans get the log filter with `ferry::protocol=debug` added
/// (unless the filter already names that target), so the message spans reach the collector
/// without DEBUG log lines.
pub fn init_with_otlp(
    level: &str,
    format: &str,
    rust_log: Option<String>,
    color: bool,
    otlp_endpoint: &str,
) {
    let directives = rust_log
        .filter(|s| EnvFilter::try_new(s).is_ok())
        .or_else(|| EnvFilter::try_new(level).ok().map(|_| level.to_string()))
        .unwrap_or_else(|| "info".to_string());
    let filter = |d: &str| EnvFilter::try_new(d).unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(color);
    let fmt: super::otlp::BoxedLayer = if format == "json" {
        fmt.json().with_filter(filter(&directives)).boxed()
    } else {
        fmt.with_filter(filter(&directives)).boxed()
    };
    let mut layers = vec![fmt];
    let mut otlp_error = None;
    if !otlp_endpoint.is_empty() {
        match super::otlp::layer(otlp_endpoint) {
            Ok(layer) => {
                let spans = if directives.contains("ferry::protocol") {
                    directives.clone()
                } else {
                    format!("{directives},ferry::protocol=debug")
                };
                layers.push(layer.with_filter(filter(&spans)).boxed());
            }
            Err(e) => otlp_error = Some(e),
        }
    }
    if let Err(e) = tracing_subscriber::registry().with(layers).try_init() {
        eprintln!("ferry: logging already initialised: {e}");
    }
    if let Some(e) = otlp_error {
        tracing::error!("{e}");
    }
}
