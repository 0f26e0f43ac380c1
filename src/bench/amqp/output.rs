//! The human-readable report of `ferry bench amqp`: one table row per size and phase, then what
//! the columns mean. `--json` prints the [`Report`](super::Report) itself instead.

use super::*;

pub(super) fn ms(l: &Option<Latency>, f: fn(&Latency) -> f64) -> String {
    match l {
        Some(l) => format!("{:.2}", f(l)),
        None => "-".into(),
    }
}

pub(super) fn pct(c: Option<f64>) -> String {
    c.map(|c| format!("{c:.0}%"))
        .unwrap_or_else(|| "n/a".into())
}

/// One line per finished case on stderr, so a long run shows its results as it goes.
pub(super) fn case_line(case: &CaseReport) -> String {
    let mut line = format!(
        "  {}: published+confirmed {} msg/s",
        case.case,
        group(case.publish.messages_per_sec as u64),
    );
    if let Some(c) = &case.consume {
        let _ = write!(
            line,
            ", consumed {} msg/s, e2e p50 {} ms p99 {} ms p999 {} ms",
            group(c.messages_per_sec as u64),
            ms(&c.latency, |l| l.p50_ms),
            ms(&c.latency, |l| l.p99_ms),
            ms(&c.latency, |l| l.p999_ms),
        );
    }
    let _ = write!(line, " (client CPU {}", pct(case.client_cpu_percent));
    if let Some(us) = case.broker_cpu_us_per_message {
        let _ = write!(line, ", broker CPU {us:.2} µs/msg");
    }
    line.push(')');
    line
}

/// The summary table printed on stdout.
pub fn render_table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nferry bench amqp: {} ({}) — one {} queue, {} messages, publisher confirms \
         (window {}), {}",
        report.url,
        report.server,
        if report.settings.durable_queue {
            "durable"
        } else {
            "non-durable"
        },
        if report.settings.delivery_mode == 2 {
            "persistent"
        } else {
            "transient"
        },
        report.settings.confirm_window,
        if report.settings.consumer {
            format!(
                "one consumer (prefetch {}, manual acks with `multiple`)",
                report.settings.prefetch
            )
        } else {
            "no consumer".to_string()
        }
    );
    match &report.broker_process {
        Some(b) => {
            let _ = writeln!(out, "broker process: {} (pid {})", b.name, b.pid);
        }
        None => {
            let _ = writeln!(
                out,
                "broker process: unknown (not local, or give --broker-pid), so no broker CPU"
            );
        }
    }
    if let Some(rate) = report.settings.rate {
        let _ = writeln!(out, "publish rate limited to {} messages/s", group(rate));
    }
    let _ = writeln!(
        out,
        "\n{:<6} {:<8} {:>10} {:>11} {:>8} {:>8} {:>8} {:>9} {:>8} {:>11} {:>8} {:>11} {:>14}",
        "size",
        "phase",
        "messages",
        "msg/s",
        "MB/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "client CPU",
        "µs/msg",
        "machine CPU",
        "broker µs/msg"
    );
    for case in &report.cases {
        let phases = [
            ("publish", Some(&case.publish)),
            ("consume", case.consume.as_ref()),
        ];
        for (name, phase) in phases {
            let Some(p) = phase else { continue };
            let _ = writeln!(
                out,
                "{:<6} {:<8} {:>10} {:>11} {:>8.1} {:>8} {:>8} {:>9} {:>8} {:>11} {:>8} {:>11} {:>14}",
                case.case,
                name,
                group(p.messages),
                group(p.messages_per_sec as u64),
                p.mb_per_sec,
                ms(&p.latency, |l| l.p50_ms),
                ms(&p.latency, |l| l.p99_ms),
                ms(&p.latency, |l| l.p999_ms),
                ms(&p.latency, |l| l.max_ms),
                pct(case.client_cpu_percent),
                case.client_cpu_us_per_message
                    .map(|u| format!("{u:.2}"))
                    .unwrap_or_else(|| "n/a".into()),
                pct(case.machine_cpu_percent),
                case.broker_cpu_us_per_message
                    .map(|u| format!("{u:.2}"))
                    .unwrap_or_else(|| "n/a".into()),
            );
        }
        if case.nacked > 0 {
            let _ = writeln!(
                out,
                "{:<6} {} messages nacked by the broker",
                case.case, case.nacked
            );
        }
        if !case.queue_deleted {
            let _ = writeln!(out, "{:<6} kept queue {}", case.case, case.queue);
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "publish: messages published and confirmed per second; latency = written → confirmed."
    );
    if report.settings.consumer {
        let _ = writeln!(
            out,
            "consume: messages delivered and acked per second, publisher and consumer running \
             together; latency = written by the publisher → delivered to the consumer (one clock, \
             one process)."
        );
    }
    let _ = writeln!(
        out,
        "client CPU: this process's user+system CPU / (wall time × {} cores) over the whole run; \
         µs/msg: that CPU time per confirmed message (publishing and consuming it). machine CPU: \
         all cores' busy time (client + a local broker + anything else). broker µs/msg: the \
         broker process's user+system CPU time (from /proc) per confirmed message, storing, \
         confirming, delivering and settling it.",
        report.client_cores
    );
    out
}
