//! The human-readable report: one table row per case and phase, then what the columns mean.
//! `--json` prints the [`Report`](super::Report) itself instead.

use super::*;

pub(super) fn ms(l: &Option<Latency>, p99: bool) -> String {
    match l {
        Some(l) => format!("{:.2}", if p99 { l.p99_ms } else { l.p50_ms }),
        None => "-".into(),
    }
}

pub(super) fn cpu(c: Option<f64>) -> String {
    c.map(|c| format!("{c:.0}%"))
        .unwrap_or_else(|| "n/a".into())
}

/// A broker's CPU as "45% of a core, 0.31 s/GB".
fn broker(percent: Option<f64>, per_gb: Option<f64>) -> String {
    match (percent, per_gb) {
        (Some(p), Some(g)) => format!("{p:.0}% of a core, {g:.2} s/GB"),
        (Some(p), None) => format!("{p:.0}% of a core"),
        _ => "n/a".into(),
    }
}

/// One line per finished case on stderr, so a long run shows its results as it goes.
pub(super) fn case_line(case: &CaseReport) -> String {
    let mut line = format!(
        "  {}: produce {} records/s {:.1} MB/s (client CPU {}, broker CPU {}), consume {} \
         records/s {:.1} MB/s (client CPU {}, broker CPU {})",
        case.case,
        group(case.produce.records_per_sec as u64),
        case.produce.mb_per_sec,
        cpu(case.produce.client_cpu_percent),
        broker(
            case.produce.broker_cpu_percent,
            case.produce.broker_cpu_secs_per_gb
        ),
        group(case.consume.records_per_sec as u64),
        case.consume.mb_per_sec,
        cpu(case.consume.client_cpu_percent),
        broker(
            case.consume.broker_cpu_percent,
            case.consume.broker_cpu_secs_per_gb
        ),
    );
    if let Some(e2e) = &case.e2e {
        let _ = write!(
            line,
            ", e2e p50 {} ms p99 {} ms",
            ms(&e2e.latency, false),
            ms(&e2e.latency, true)
        );
    }
    line
}

/// The summary table printed on stdout.
pub fn render_table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nferry bench kafka: {} — acks=all, record batches of ~{}, {} produce requests in flight \
         per partition, fetches of up to {} per partition ({} in flight)",
        report.bootstrap,
        size_label(report.settings.batch_bytes),
        report.settings.in_flight_per_connection,
        size_label(report.settings.fetch_bytes),
        report.settings.fetch_in_flight
    );
    let _ = writeln!(
        out,
        "\n{:<10} {:<8} {:>11} {:>12} {:>9} {:>9} {:>9} {:>9} {:>11} {:>11} {:>11} {:>9}",
        "case",
        "phase",
        "records",
        "records/s",
        "MB/s",
        "log MB/s",
        "p50 ms",
        "p99 ms",
        "client CPU",
        "machine CPU",
        "broker CPU",
        "CPU s/GB"
    );
    for case in &report.cases {
        let phases = [
            ("produce", Some(&case.produce)),
            ("consume", Some(&case.consume)),
            ("e2e", case.e2e.as_ref()),
        ];
        for (name, phase) in phases {
            let Some(p) = phase else { continue };
            let _ = writeln!(
                out,
                "{:<10} {:<8} {:>11} {:>12} {:>9.1} {:>9.1} {:>9} {:>9} {:>11} {:>11} {:>11} {:>9}",
                case.case,
                name,
                group(p.records),
                group(p.records_per_sec as u64),
                p.mb_per_sec,
                p.log_mb_per_sec,
                ms(&p.latency, false),
                ms(&p.latency, true),
                cpu(p.client_cpu_percent),
                cpu(p.machine_cpu_percent),
                cpu(p.broker_cpu_percent),
                p.broker_cpu_secs_per_gb
                    .map(|g| format!("{g:.2}"))
                    .unwrap_or_else(|| "n/a".into()),
            );
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "produce p50/p99: ack latency (produce request sent → acks=all response read) at full load."
    );
    if report.cases.iter().any(|c| c.e2e.is_some()) {
        let _ = writeln!(
            out,
            "e2e p50/p99: end-to-end latency (produce request sent → fetch response holding the \
             record read by a concurrent consumer) at {} records/s; produce ack latency at that \
             rate:",
            group(report.settings.latency_rate)
        );
        for case in &report.cases {
            if let Some(e2e) = &case.e2e {
                let _ = writeln!(
                    out,
                    "  {:<10} ack p50 {} ms, p99 {} ms",
                    case.case,
                    ms(&e2e.ack_latency, false),
                    ms(&e2e.ack_latency, true)
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "MB/s counts record values, log MB/s record-batch bytes as sent and stored (1 MB = 10^6 B)."
    );
    let _ = writeln!(
        out,
        "client CPU: this process's user+system CPU time / (wall time × {} cores); near 100% \
         means the client, not the broker, set the pace. machine CPU: all cores' busy time over \
         the phase (client + a local broker + anything else): near 100% with a low client share \
         means the run was CPU-bound elsewhere, possibly by other work on the machine.",
        report.client_cores
    );
    let _ = writeln!(
        out,
        "broker CPU: the broker process's user+system CPU time / wall time, in % of one core, \
         and CPU s/GB its CPU seconds per GB of record values; only when the bootstrap broker \
         runs on this machine (found as the owner of the port), else n/a."
    );
    out
}
