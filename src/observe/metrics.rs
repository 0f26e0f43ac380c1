//! The Prometheus recorder behind `/metrics`.
//!
//! `metrics` has one global recorder per process, so the first broker that starts installs it
//! and every broker in the process (several `TestBroker`s in one test binary) renders the same
//! registry; per-object labels (topic, partition, queue) keep their series apart. If the host
//! application installed its own recorder first, Ferry leaves it alone and `/metrics` says so.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Latency buckets (seconds) from 50 µs to 10 s: fsyncs sit at the bottom, long polls at the top.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Installs the process-wide Prometheus recorder once; later calls return the same handle.
/// Returns `None` when another recorder was installed by the host application.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = match PrometheusBuilder::new().set_buckets(LATENCY_BUCKETS) {
                Ok(b) => b,
                Err(e) => {
                    ::tracing::warn!(error = %e, "invalid histogram buckets; metrics disabled");
                    return None;
                }
            };
            match builder.install_recorder() {
                Ok(handle) => {
                    describe();
                    let upkeep = handle.clone();
                    // Upkeep drains histogram buffers; without it memory grows between scrapes.
                    std::thread::Builder::new()
                        .name("ferry-metrics-upkeep".into())
                        .spawn(move || loop {
                            std::thread::sleep(Duration::from_secs(5));
                            upkeep.run_upkeep();
                        })
                        .ok();
                    Some(handle)
                }
                Err(e) => {
                    ::tracing::warn!(error = %e, "a metrics recorder is already installed; /metrics disabled");
                    None
                }
            }
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "ferry_log_appended_bytes_total",
        Unit::Bytes,
        "Bytes appended to partition logs"
    );
    describe_counter!(
        "ferry_log_appended_records_total",
        "Records appended to partition logs"
    );
    describe_histogram!(
        "ferry_log_fsync_seconds",
        Unit::Seconds,
        "Latency of log fdatasync calls"
    );
    describe_gauge!("ferry_log_segments", "Segment files per partition");
    describe_gauge!(
        "ferry_log_size_bytes",
        Unit::Bytes,
        "Bytes on disk per partition"
    );
    describe_counter!(
        "ferry_log_recovery_repairs_total",
        "Repairs made by log recovery at startup"
    );
    describe_gauge!(
        "ferry_ready",
        "1 once recovery finished and every listener accepts"
    );
}
