//! `/api/overview` and `/api/nodes`: the broker at a glance, shaped like RabbitMQ's management
//! API (`object_totals`, `queue_totals`, `message_stats` with `*_details.rate`, `listeners`;
//! per node `mem_used`, `fd_used`, `disk_free`, `uptime`, `proc_used`).
//!
//! Message totals are the process's own counters (the `ferry_messages_*_total` families of
//! `/metrics`), so they need metrics on (`observe.metrics`, the default); without them
//! `message_stats` is empty, as RabbitMQ's is without stats. The overview's rates and samples
//! come from the 5-second [`super::history`]. A connection's `*_oct_details.rate` is the growth
//! since a sample kept from an earlier request, divided by the time since it; the sample is
//! replaced once it is [`RATE_WINDOW`] old, so a client polling every few seconds sees the rate
//! over the last few seconds, and the first request reports 0 (see [`rates`]; one sample per
//! live connection).
//! Node figures come from `/proc` (Linux) and `statvfs`; a figure the platform cannot give is
//! `null`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::Json;
use metrics_exporter_prometheus::PrometheusHandle;
use parking_lot::Mutex;
use serde_json::{json, Map, Value};

use super::connections::node_name;
use super::history::{self, SeriesKey, WindowParams};
use super::{Admin, ApiError};
use crate::observe::alarms;
use crate::observe::http::AppState;

/// Shortest span a rate is computed over.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// `message_stats` keys (RabbitMQ's names, plus Ferry's log appends) and the counter behind
/// each.
const MESSAGE_COUNTERS: &[(&str, &str)] = &[
    ("publish", "ferry_messages_published_total"),
    ("confirm", "ferry_messages_confirmed_total"),
    ("deliver_get", "ferry_messages_delivered_total"),
    ("redeliver", "ferry_messages_redelivered_total"),
    ("ack", "ferry_messages_acknowledged_total"),
    (
        "return_unroutable",
        "ferry_messages_unroutable_returned_total",
    ),
    ("drop_unroutable", "ferry_messages_unroutable_dropped_total"),
    ("dead_lettered", "ferry_messages_dead_lettered_total"),
    ("log_appended_records", "ferry_log_appended_records_total"),
    ("recv_oct", "ferry_bytes_received_total"),
    ("send_oct", "ferry_bytes_sent_total"),
];

/// Earlier totals, by key, that rates are computed against.
pub(super) type RateSamples = Mutex<BTreeMap<u64, (Instant, Vec<f64>)>>;

/// Per-second rates of the growing `totals` of `key`, against the sample kept for it from an
/// earlier request; the sample is replaced once it is [`RATE_WINDOW`] old. 0 without a sample
/// or when the sample is too recent to divide by.
pub(super) fn rates(samples: &RateSamples, key: u64, totals: &[f64], now: Instant) -> Vec<f64> {
    let mut kept = samples.lock();
    let previous = kept.get(&key).cloned();
    if previous
        .as_ref()
        .is_none_or(|(at, _)| now.duration_since(*at) >= RATE_WINDOW)
    {
        kept.insert(key, (now, totals.to_vec()));
    }
    drop(kept);
    totals
        .iter()
        .enumerate()
        .map(|(i, total)| match &previous {
            Some((at, before)) if now.duration_since(*at) >= Duration::from_millis(100) => {
                let delta = (total - before.get(i).copied().unwrap_or(0.0)).max(0.0);
                (delta / now.duration_since(*at).as_secs_f64() * 10.0).round() / 10.0
            }
            _ => 0.0,
        })
        .collect()
}

/// Sums every series of each counter in a Prometheus text rendering.
fn counter_totals(rendered: &str) -> BTreeMap<&'static str, f64> {
    let mut totals = BTreeMap::new();
    for line in rendered.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let family = series.split('{').next().unwrap_or(series);
        let Some((key, _)) = MESSAGE_COUNTERS.iter().find(|(_, f)| *f == family) else {
            continue;
        };
        if let Ok(v) = value.parse::<f64>() {
            *totals.entry(*key).or_insert(0.0) += v;
        }
    }
    totals
}

/// The message counters' totals in [`MESSAGE_COUNTERS`] order (the history's overview
/// counters); zeros without a metrics recorder.
pub(super) fn message_counter_totals(handle: Option<&PrometheusHandle>) -> Vec<f64> {
    let by_key = handle
        .map(|h| counter_totals(&h.render()))
        .unwrap_or_default();
    MESSAGE_COUNTERS
        .iter()
        .map(|(key, _)| by_key.get(key).copied().unwrap_or(0.0))
        .collect()
}

/// Totals now; the `*_details` (rates, samples) are added from the history.
fn message_stats(state: &AppState) -> Value {
    if state.prometheus.is_none() {
        return json!({});
    }
    let totals = message_counter_totals(state.prometheus.as_ref());
    let mut stats = Map::new();
    for ((key, _), total) in MESSAGE_COUNTERS.iter().zip(totals) {
        stats.insert((*key).to_string(), json!(total as u64));
    }
    Value::Object(stats)
}

pub(super) async fn overview(
    Admin(core): Admin,
    State(state): State<AppState>,
    Query(params): Query<WindowParams>,
) -> Result<Json<Value>, ApiError> {
    let window = params.window()?;
    let node = node_name();
    let queues = core.router().queues();
    let ready: u64 = queues.iter().map(|q| q.message_count()).sum();
    let unacked: u64 = queues.iter().map(|q| q.unacked_count()).sum();
    let connections = core.connections().list();
    let channels: usize = connections.iter().map(|c| c.channels.len()).sum();
    let consumers: usize = connections
        .iter()
        .flat_map(|c| c.channels.values())
        .map(|ch| ch.consumers.len())
        .sum();
    let listeners: Vec<Value> = state
        .health
        .listeners()
        .into_iter()
        .map(|(protocol, addr)| {
            json!({"node": node, "protocol": protocol, "ip_address": addr.ip().to_string(), "port": addr.port()})
        })
        .collect();
    let alarms: Vec<String> = core
        .router()
        .subscribe_alarm()
        .borrow()
        .iter()
        .cloned()
        .collect();
    let mut view = json!({
        "product_name": "Ferry",
        "product_version": env!("CARGO_PKG_VERSION"),
        "node": node,
        "cluster_name": node,
        "listeners": listeners,
        "alarms": alarms,
        "alerts": firing_alerts(state.prometheus.as_ref())
            .into_iter()
            .filter(|a| a["firing"] == true)
            .collect::<Vec<_>>(),
        "object_totals": {
            "connections": connections.len(),
            "channels": channels,
            "consumers": consumers,
            "queues": queues.len(),
            "exchanges": core.router().exchanges().len(),
            "topics": core.topics().len(),
            "consumer_groups": core.groups().list_groups(&[]).len(),
        },
        "queue_totals": {
            "messages": ready + unacked,
            "messages_ready": ready,
            "messages_unacknowledged": unacked,
        },
        "message_stats": message_stats(&state),
    });
    if let Some(view) = view.as_object_mut() {
        state.history.decorate(
            &SeriesKey::Overview,
            &window,
            view,
            history::overview_sections,
        );
        // Without a metrics recorder there are no message counters to report.
        if state.prometheus.is_none() {
            view.insert("message_stats".into(), json!({}));
        }
    }
    Ok(Json(view))
}

/// Alert rules from the config, whether each is firing now (the `ferry_alert_firing` gauge
/// the alert task keeps) and its recent transitions; empty without metrics or rules.
pub(super) async fn alerts(_: Admin, State(state): State<AppState>) -> Json<Value> {
    let history = state.health.alert_history();
    let mut rules = firing_alerts(state.prometheus.as_ref());
    for rule in &mut rules {
        // Recent transitions of this rule, newest first (bounded; lost at restart).
        let transitions = rule["rule"].as_str().map(|name| history.of_rule(name));
        rule["history"] = json!(transitions.unwrap_or_default());
    }
    Json(json!(rules))
}

fn firing_alerts(handle: Option<&PrometheusHandle>) -> Vec<Value> {
    let Some(handle) = handle else {
        return Vec::new();
    };
    let rendered = handle.render();
    let mut out = Vec::new();
    for line in rendered.lines() {
        let Some(rest) = line.strip_prefix("ferry_alert_firing{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Some(rule) = labels
            .split(',')
            .find_map(|l| l.strip_prefix("rule=\""))
            .map(|r| r.trim_end_matches('"').replace("\\\"", "\""))
        else {
            continue;
        };
        out.push(json!({"rule": rule, "firing": value.trim() == "1"}));
    }
    out
}

/// One element: this node.
pub(super) async fn nodes(Admin(core): Admin) -> Json<Value> {
    let alarm = core.router().subscribe_alarm().borrow().clone();
    let mem_used = alarms::resident_memory_bytes();
    let (fd_used, fd_total) = file_descriptors();
    let disk_free = alarms::free_bytes(core.data_dir());
    let proc_used = tokio::runtime::Handle::try_current()
        .ok()
        .map(|h| h.metrics().num_alive_tasks());
    Json(json!([{
        "name": node_name(),
        "type": "disc",
        "running": true,
        "os_pid": std::process::id().to_string(),
        "mem_used": mem_used,
        "mem_limit": alarms::available_memory(),
        "mem_alarm": alarm.as_deref().is_some_and(|a| a.contains("memory")),
        "disk_free": disk_free,
        "disk_free_alarm": alarm.as_deref().is_some_and(|a| a.contains("disk")),
        "fd_used": fd_used,
        "fd_total": fd_total,
        "proc_used": proc_used,
        "uptime": process_uptime_ms(),
        "processors": std::thread::available_parallelism().map(|n| n.get()).ok(),
    }]))
}

/// Open file descriptors (entries of `/proc/self/fd`) and the soft `RLIMIT_NOFILE`.
fn file_descriptors() -> (Option<usize>, Option<u64>) {
    let used = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count());
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own and reads nothing else.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    let total = (rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur);
    (used, total)
}

/// Milliseconds since this process started: the system uptime minus the process's start time
/// (`/proc/self/stat` field 22, in clock ticks since boot).
fn process_uptime_ms() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let after_comm = stat.rsplit_once(')')?.1;
    let start_ticks: f64 = after_comm.split_whitespace().nth(19)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks_per_second <= 0 {
        return None;
    }
    let system_uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let seconds = system_uptime - start_ticks / ticks_per_second as f64;
    Some((seconds.max(0.0) * 1000.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_every_series_of_a_family() {
        let text = "# TYPE ferry_bytes_sent_total counter\n\
                    ferry_bytes_sent_total{protocol=\"amqp\"} 10\n\
                    ferry_bytes_sent_total{protocol=\"kafka\"} 5\n\
                    ferry_messages_published_total 3\n\
                    ferry_messages_published_total_other 99\n";
        let totals = counter_totals(text);
        assert_eq!(totals.get("send_oct"), Some(&15.0));
        assert_eq!(totals.get("publish"), Some(&3.0));
        assert_eq!(totals.len(), 2);
    }

    #[test]
    fn rates_divide_growth_by_the_time_since_the_kept_sample() {
        let samples = RateSamples::default();
        let t0 = Instant::now();
        assert_eq!(rates(&samples, 7, &[100.0, 5.0], t0), [0.0, 0.0]);
        // 2 s later: measured against t0, and t0's sample is kept (younger than the window).
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(rates(&samples, 7, &[300.0, 5.0], t1), [100.0, 0.0]);
        // 6 s after t0: still against t0, which is then replaced by this sample.
        let t2 = t0 + Duration::from_secs(6);
        assert_eq!(rates(&samples, 7, &[700.0, 11.0], t2), [100.0, 1.0]);
        let t3 = t2 + Duration::from_secs(1);
        assert_eq!(rates(&samples, 7, &[750.0, 11.0], t3), [50.0, 0.0]);
        // Another key has its own sample.
        assert_eq!(rates(&samples, 8, &[1.0], t3), [0.0]);
    }

    #[test]
    fn this_process_has_an_uptime_and_descriptors() {
        assert!(process_uptime_ms().is_some());
        let (used, _) = file_descriptors();
        assert!(used.is_some_and(|n| n > 0));
    }
}
