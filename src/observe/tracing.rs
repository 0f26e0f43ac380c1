//! Log output for the `ferry` binary: text or JSON lines, filtered by `RUST_LOG` or the
//! configured level. Only the CLI calls this; an embedding application keeps its own subscriber.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG`, when the CLI passes it, wins over `level`.
/// `color` turns on ANSI colors; the CLI passes whether stderr is a terminal (and `NO_COLOR` is
/// unset), so log files and pipes get plain text.
pub fn init(level: &str, format: &str, rust_log: Option<String>, color: bool) {
    let filter = rust_log
        .and_then(|s| EnvFilter::try_new(s).ok())
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(color);
    let result = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    if let Err(e) = result {
        eprintln!("ferry: logging already initialised: {e}");
    }
}
