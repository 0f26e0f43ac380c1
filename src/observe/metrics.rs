//! The Prometheus recorder behind `/metrics`.
//!
//! `metrics` has one global recorder per process, so the first broker that starts installs it
//! and every broker in the process (several `TestBroker`s in one test binary) renders the same
//! registry; per-object labels (topic, partition, queue) keep their series apart. If the host
//! application installed its own recorder first, Ferry leaves it alone and `/metrics` says so.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::broker::BrokerCore;

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
        "ferry_kafka_fetch_bytes_total",
        Unit::Bytes,
        "Record bytes served to Kafka fetches, by path: sendfile (zero copy from the segment file) or copy (read into memory, e.g. over TLS)"
    );
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
    describe_gauge!(
        "ferry_log_start_offset",
        "First offset kept per partition log"
    );
    describe_gauge!(
        "ferry_log_end_offset",
        "Next offset to be written per partition log"
    );
    describe_counter!(
        "ferry_log_recovery_repairs_total",
        "Repairs made by log recovery at startup"
    );
    describe_gauge!(
        "ferry_ready",
        "1 once recovery finished and every listener accepts"
    );

    // Connections, channels, bytes and request latency, per protocol.
    describe_gauge!("ferry_connections", "Open client connections, by protocol");
    describe_gauge!("ferry_channels", "Open AMQP channels");
    describe_counter!(
        "ferry_bytes_received_total",
        Unit::Bytes,
        "Bytes read from client connections, by protocol"
    );
    describe_counter!(
        "ferry_bytes_sent_total",
        Unit::Bytes,
        "Bytes written to client connections, by protocol"
    );
    describe_histogram!(
        "ferry_kafka_request_seconds",
        Unit::Seconds,
        "Kafka request latency from decode to response, by API"
    );
    describe_histogram!(
        "ferry_amqp_method_seconds",
        Unit::Seconds,
        "AMQP method handling latency, by method class (connection, channel, exchange, queue, basic, confirm, tx)"
    );

    // AMQP message flow, named after rabbitmq_prometheus' global counters.
    describe_counter!(
        "ferry_messages_published_total",
        "Messages AMQP publishers sent to an exchange"
    );
    describe_counter!(
        "ferry_messages_confirmed_total",
        "Messages confirmed to AMQP publishers in confirm mode (basic.ack)"
    );
    describe_counter!(
        "ferry_messages_routed_total",
        "Published messages that reached at least one queue"
    );
    describe_counter!(
        "ferry_messages_unroutable_returned_total",
        "Unroutable mandatory messages returned to the publisher (basic.return)"
    );
    describe_counter!(
        "ferry_messages_unroutable_dropped_total",
        "Unroutable messages dropped (not mandatory)"
    );
    describe_counter!(
        "ferry_messages_delivered_total",
        "Messages delivered to AMQP consumers (basic.deliver and basic.get-ok)"
    );
    describe_counter!(
        "ferry_messages_redelivered_total",
        "Deliveries with the redelivered flag set"
    );
    describe_counter!(
        "ferry_messages_acknowledged_total",
        "Deliveries acknowledged by AMQP consumers (basic.ack)"
    );
    describe_counter!(
        "ferry_messages_dead_lettered_total",
        "Messages moved to a dead-letter exchange, by reason (rejected, expired, maxlen, delivery_limit)"
    );

    // Queue depths, partition offsets and group lag are rendered at scrape time, with their
    // help text, by `render_scrape_gauges`.
    describe_counter!(
        "ferry_group_rebalances_total",
        "Consumer group rebalances started"
    );
    describe_counter!(
        "ferry_group_members_removed_total",
        "Group members removed by the coordinator, by reason"
    );
    describe_counter!(
        "ferry_group_offset_commits_total",
        "Partition offsets committed by consumer groups"
    );
    describe_rest();
}

/// The descriptions of every other series, grouped by the subsystem that records it. An
/// undescribed series is scraped without `# HELP`, which dashboards and `promtool check metrics`
/// flag, so each `counter!`/`gauge!`/`histogram!` name in the tree has its line here.
fn describe_rest() {
    use metrics::{describe_counter, describe_gauge, Unit};
    // Log: cleaner, file handles, refused appends.
    describe_counter!(
        "ferry_log_cleaner_runs_total",
        "Log cleaner passes completed"
    );
    describe_counter!(
        "ferry_log_cleaner_bytes_reclaimed_total",
        Unit::Bytes,
        "Bytes freed by log compaction"
    );
    describe_counter!(
        "ferry_log_cleaner_records_removed_total",
        "Records removed by log compaction (superseded keys and expired tombstones)"
    );
    describe_gauge!(
        "ferry_log_cleaner_dirty_ratio",
        "Share of a compacted partition's bytes not yet cleaned, by topic and partition"
    );
    describe_gauge!(
        "ferry_log_open_files",
        "Segment files the log holds open (bounded by log.max_open_files)"
    );
    describe_counter!(
        "ferry_log_refused_appends_total",
        "Appends refused by a partition writer (disk full, a failed reopen), by topic and partition"
    );

    // Reliability rules in the core.
    describe_counter!(
        "ferry_messages_deduplicated_total",
        "Published messages dropped as duplicates of an earlier message id (x-deduplication-header)"
    );
    describe_counter!(
        "ferry_retries_scheduled_total",
        "Rejected deliveries scheduled for a delayed retry by a queue's retry policy"
    );
    describe_gauge!(
        "ferry_circuit_breaker_state",
        "Consumer circuit breaker per queue consumer: 0 closed, 1 open, 2 half-open"
    );
    describe_counter!(
        "ferry_circuit_breaker_transitions_total",
        "Consumer circuit breaker state changes, by queue and target state"
    );

    // Connections, authentication, TLS, HTTP.
    describe_counter!(
        "ferry_connections_refused_total",
        "Connections refused because a listener's max_connections was reached, by protocol"
    );
    describe_counter!(
        "ferry_connections_idle_closed_total",
        "Connections closed for being idle past connections_max_idle_ms, by protocol"
    );
    describe_counter!(
        "ferry_auth_failures_total",
        "Failed logins (AMQP, Kafka SASL, native, admin API), by protocol"
    );
    describe_counter!(
        "ferry_kafka_acl_denied_total",
        "Kafka requests or resources denied by an ACL"
    );
    describe_counter!(
        "ferry_kafka_txn_completed_total",
        "Kafka transactions completed, by result (commit or abort; timeouts and fencing included)"
    );
    describe_counter!(
        "ferry_kafka_txn_producers_registered_total",
        "Kafka transactional ids registered for the first time"
    );
    describe_gauge!(
        "ferry_kafka_fetch_sessions",
        "Kafka incremental fetch sessions (KIP-227) held in the session cache"
    );
    describe_counter!(
        "ferry_kafka_fetch_sessions_evicted_total",
        "Kafka fetch sessions evicted (least recently used) to make room for a new one"
    );
    describe_counter!(
        "ferry_kafka_reauthentications_total",
        "Kafka SASL re-authentications (KIP-368) on a live connection"
    );
    describe_counter!(
        "ferry_kafka_sessions_expired_total",
        "Kafka connections refused a request because their SASL session expired without re-authentication"
    );
    describe_counter!(
        "ferry_tls_handshakes_total",
        "Completed TLS handshakes, by protocol"
    );
    describe_counter!(
        "ferry_tls_handshake_failures_total",
        "Failed TLS handshakes, by protocol"
    );
    describe_counter!(
        "ferry_tls_reloads_total",
        "Certificate reloads from disk, by result"
    );
    describe_gauge!(
        "ferry_http_connections",
        "Open HTTP (admin API) connections"
    );
    describe_counter!(
        "ferry_http_connections_closed_total",
        "HTTP connections closed by the server, by reason"
    );

    // AMQP adapter back-pressure and limits.
    describe_counter!(
        "ferry_amqp_reader_paused_total",
        "Times an AMQP connection stopped reading because its writer fell behind"
    );
    describe_counter!(
        "ferry_amqp_headers_dropped_total",
        "AMQP headers dropped from a delivery because they would not fit in frame_max"
    );

    // Schemas, bridges.
    describe_counter!(
        "ferry_schema_rejections_total",
        "Messages refused by schema validation, by topic or exchange and reason"
    );
    describe_counter!(
        "ferry_bridge_messages_forwarded_total",
        "Messages a bridge delivered to its destination, by bridge"
    );
    describe_counter!(
        "ferry_bridge_messages_skipped_total",
        "Messages a bridge did not forward because they had already crossed it (loop guard), by bridge"
    );
    describe_counter!(
        "ferry_bridge_reconnects_total",
        "Times a bridge reconnected to its source or destination, by bridge"
    );
    describe_gauge!(
        "ferry_bridge_pending",
        "Messages waiting at a bridge's source, when the source can tell, by bridge"
    );
    describe_gauge!(
        "ferry_bridge_state",
        "A bridge's state: 0 starting, 1 running, 2 blocked, 3 terminated, by bridge"
    );

    // Alerts.
    describe_gauge!("ferry_alert_firing", "1 while an alert rule fires, by rule");
    describe_counter!(
        "ferry_alert_transitions_total",
        "Alert rule state changes, by rule and target state"
    );
}

// --- recording helpers for the adapters (one call where the thing happens) ---------------------

/// The per-message AMQP metrics of one connection, looked up in the registry once when the
/// connection opens instead of on every message: each `metrics::counter!` call hashes its name
/// and labels and clones a handle out of the registry, which came to ~3% of the broker's CPU
/// per AMQP message. The process's recorder is installed before any listener accepts, so a
/// connection's handles are the live ones.
#[derive(Clone)]
pub struct AmqpMetrics(std::sync::Arc<AmqpHandles>);

struct AmqpHandles {
    published: metrics::Counter,
    routed: metrics::Counter,
    returned: metrics::Counter,
    dropped: metrics::Counter,
    delivered: metrics::Counter,
    redelivered: metrics::Counter,
    /// `ferry_amqp_method_seconds` by class, in [`AMQP_CLASSES`] order.
    method_seconds: Vec<metrics::Histogram>,
}

/// AMQP class ids and their `class` label; anything else is `other`.
const AMQP_CLASSES: [(u16, &str); 8] = [
    (10, "connection"),
    (20, "channel"),
    (40, "exchange"),
    (50, "queue"),
    (60, "basic"),
    (85, "confirm"),
    (90, "tx"),
    (0, "other"),
];

impl AmqpMetrics {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        AmqpMetrics(std::sync::Arc::new(AmqpHandles {
            published: metrics::counter!("ferry_messages_published_total"),
            routed: metrics::counter!("ferry_messages_routed_total"),
            returned: metrics::counter!("ferry_messages_unroutable_returned_total"),
            dropped: metrics::counter!("ferry_messages_unroutable_dropped_total"),
            delivered: metrics::counter!("ferry_messages_delivered_total"),
            redelivered: metrics::counter!("ferry_messages_redelivered_total"),
            method_seconds: AMQP_CLASSES
                .iter()
                .map(|(_, class)| metrics::histogram!("ferry_amqp_method_seconds", "class" => *class))
                .collect(),
        }))
    }

    /// An AMQP publish the router handled: published, then routed, returned or dropped.
    pub fn publish(&self, routed: bool, mandatory: bool) {
        let h = &self.0;
        h.published.increment(1);
        match (routed, mandatory) {
            (true, _) => h.routed.increment(1),
            (false, true) => h.returned.increment(1),
            (false, false) => h.dropped.increment(1),
        }
    }

    /// Deliveries of queued messages to an AMQP consumer.
    pub fn deliveries(&self, msgs: &[crate::broker::queue::QueuedMessage]) {
        let redelivered = msgs.iter().filter(|m| m.redelivered).count();
        self.0.delivered.increment(msgs.len() as u64);
        if redelivered > 0 {
            self.0.redelivered.increment(redelivered as u64);
        }
    }

    /// Times one method of class `class_id` into `ferry_amqp_method_seconds` until dropped.
    pub fn method_timer(&self, class_id: u16) -> MethodTimer<'_> {
        let i = AMQP_CLASSES
            .iter()
            .position(|(id, _)| *id == class_id)
            .unwrap_or(AMQP_CLASSES.len() - 1);
        MethodTimer {
            histogram: self.0.method_seconds.get(i),
            started: Instant::now(),
        }
    }
}

/// See [`AmqpMetrics::method_timer`].
pub struct MethodTimer<'a> {
    histogram: Option<&'a metrics::Histogram>,
    started: Instant,
}

impl Drop for MethodTimer<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.histogram {
            h.record(self.started.elapsed().as_secs_f64());
        }
    }
}

/// `count` deliveries to AMQP consumers, `redelivered` of them flagged redelivered.
pub fn record_delivered(count: usize, redelivered: usize) {
    metrics::counter!("ferry_messages_delivered_total").increment(count as u64);
    if redelivered > 0 {
        metrics::counter!("ferry_messages_redelivered_total").increment(redelivered as u64);
    }
}

/// `count` deliveries settled by basic.ack (`requeue: None`) or nack/reject.
pub fn record_settled(requeue: Option<bool>, count: usize) {
    if requeue.is_none() {
        metrics::counter!("ferry_messages_acknowledged_total").increment(count as u64);
    }
}

pub fn bytes_received(protocol: &'static str, n: usize) {
    metrics::counter!("ferry_bytes_received_total", "protocol" => protocol).increment(n as u64);
}

/// Record bytes a Kafka fetch served, by how: `sendfile` (zero copy) or `copy`.
pub fn kafka_fetch_bytes(path: &'static str, n: usize) {
    metrics::counter!("ferry_kafka_fetch_bytes_total", "path" => path).increment(n as u64);
}

pub fn bytes_sent(protocol: &'static str, n: usize) {
    metrics::counter!("ferry_bytes_sent_total", "protocol" => protocol).increment(n as u64);
}

/// Counts one open connection of `protocol` in `ferry_connections` while it lives.
pub struct ConnectionGauge(&'static str);

impl ConnectionGauge {
    pub fn new(protocol: &'static str) -> Self {
        metrics::gauge!("ferry_connections", "protocol" => protocol).increment(1.0);
        Self(protocol)
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        metrics::gauge!("ferry_connections", "protocol" => self.0).decrement(1.0);
    }
}

/// Counts one open AMQP channel in `ferry_channels` while it lives.
#[derive(Debug)]
pub struct ChannelGauge(());

impl ChannelGauge {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        metrics::gauge!("ferry_channels").increment(1.0);
        Self(())
    }
}

impl Drop for ChannelGauge {
    fn drop(&mut self) {
        metrics::gauge!("ferry_channels").decrement(1.0);
    }
}

// --- scrape-time gauges -------------------------------------------------------------------------
//
// Queue depths, partition offsets and group lag are read from the broker at scrape time and
// rendered here rather than kept in the global registry: a deleted queue, topic or group then
// disappears from the next scrape instead of leaving its last value behind forever, and each
// broker in a process (several `TestBroker`s) reports only its own objects.

/// Help text of each scrape-time family, in output order.
const SCRAPE_FAMILIES: &[(&str, &str)] = &[
    (
        "ferry_queue_messages_ready",
        "Messages ready for delivery, by vhost and queue",
    ),
    (
        "ferry_queue_messages_unacked",
        "Messages delivered and not yet settled, by vhost and queue",
    ),
    ("ferry_queue_consumers", "Consumers, by vhost and queue"),
    (
        "ferry_process_resident_memory_bytes",
        "Resident memory of the broker process (what the memory alarm compares)",
    ),
    (
        "ferry_resource_alarm",
        "1 while the resource alarm blocks publishers, by resource (memory, disk)",
    ),
    (
        "ferry_topic_partition_current_offset",
        "High watermark (next offset) of each partition",
    ),
    (
        "ferry_topic_partition_oldest_offset",
        "Oldest offset still kept in each partition",
    ),
    (
        "ferry_consumergroup_current_offset",
        "Committed offset of a consumer group per partition",
    ),
    (
        "ferry_consumergroup_lag",
        "High watermark minus committed offset, per group and partition",
    ),
];

type Series = Vec<(Vec<(&'static str, String)>, f64)>;

/// Renders the scrape-time gauges in the Prometheus text format, to append to the registry's
/// output. With `per_object` false, queue gauges are summed per vhost and partition and group
/// gauges per topic (RabbitMQ's aggregated endpoint, kafka_exporter's `_sum` series).
pub fn render_scrape_gauges(core: &BrokerCore, per_object: bool) -> String {
    let mut families: BTreeMap<&'static str, Series> = BTreeMap::new();
    collect_queues(core, per_object, &mut families);
    collect_partitions(core, per_object, &mut families);
    collect_groups(core, per_object, &mut families);
    collect_resources(core, &mut families);
    let mut out = String::new();
    for (name, help) in SCRAPE_FAMILIES {
        let Some(series) = families.get(name) else {
            continue;
        };
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for (labels, value) in series {
            out.push_str(name);
            if !labels.is_empty() {
                let rendered: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                    .collect();
                out.push('{');
                out.push_str(&rendered.join(","));
                out.push('}');
            }
            out.push_str(&format!(" {value}\n"));
        }
        out.push('\n');
    }
    out
}

/// Process memory and the alarm state, read when scraped like the rest (each broker in a
/// process reports its own alarm; the memory is the process's).
fn collect_resources(core: &BrokerCore, families: &mut BTreeMap<&'static str, Series>) {
    use super::alarms::{resident_memory_bytes, LOW_ON_DISK, LOW_ON_MEMORY};
    if let Some(rss) = resident_memory_bytes() {
        families
            .entry("ferry_process_resident_memory_bytes")
            .or_default()
            .push((Vec::new(), rss as f64));
    }
    let reason = core.router().subscribe_alarm().borrow().clone();
    let alarms = families.entry("ferry_resource_alarm").or_default();
    for (resource, text) in [("memory", LOW_ON_MEMORY), ("disk", LOW_ON_DISK)] {
        let on = reason.as_deref().is_some_and(|r| r.contains(text));
        alarms.push((
            vec![("resource", resource.to_string())],
            f64::from(u8::from(on)),
        ));
    }
}

/// Label value escaping of the Prometheus text format.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn collect_queues(
    core: &BrokerCore,
    per_object: bool,
    families: &mut BTreeMap<&'static str, Series>,
) {
    let mut queues = core.router().queues();
    queues.sort_by(|a, b| (a.vhost(), a.name()).cmp(&(b.vhost(), b.name())));
    let mut per_vhost: BTreeMap<String, [u64; 3]> = BTreeMap::new();
    for q in queues {
        let values = [
            q.message_count(),
            q.unacked_count(),
            u64::from(q.consumer_count()),
        ];
        if per_object {
            let labels = vec![
                ("vhost", q.vhost().to_string()),
                ("queue", q.name().to_string()),
            ];
            push_queue(families, labels, values);
        } else {
            let e = per_vhost.entry(q.vhost().to_string()).or_default();
            for (sum, v) in e.iter_mut().zip(values) {
                *sum += v;
            }
        }
    }
    for (vhost, values) in per_vhost {
        push_queue(families, vec![("vhost", vhost)], values);
    }
}

fn push_queue(
    families: &mut BTreeMap<&'static str, Series>,
    labels: Vec<(&'static str, String)>,
    values: [u64; 3],
) {
    let names = [
        "ferry_queue_messages_ready",
        "ferry_queue_messages_unacked",
        "ferry_queue_consumers",
    ];
    for (name, v) in names.into_iter().zip(values) {
        families
            .entry(name)
            .or_default()
            .push((labels.clone(), v as f64));
    }
}

fn collect_partitions(
    core: &BrokerCore,
    per_object: bool,
    families: &mut BTreeMap<&'static str, Series>,
) {
    const CURRENT: &str = "ferry_topic_partition_current_offset";
    const OLDEST: &str = "ferry_topic_partition_oldest_offset";
    for topic in core.topics() {
        let (mut newest, mut oldest) = (0i64, 0i64);
        for (p, handle) in topic.partitions().iter().enumerate() {
            let (hw, start) = (handle.high_watermark(), handle.log_start_offset());
            if per_object {
                let labels = vec![
                    ("topic", topic.name().to_string()),
                    ("partition", p.to_string()),
                ];
                families
                    .entry(CURRENT)
                    .or_default()
                    .push((labels.clone(), hw as f64));
                families
                    .entry(OLDEST)
                    .or_default()
                    .push((labels, start as f64));
            }
            newest = newest.saturating_add(hw);
            oldest = oldest.saturating_add(start);
        }
        if !per_object {
            let labels = vec![("topic", topic.name().to_string())];
            families
                .entry(CURRENT)
                .or_default()
                .push((labels.clone(), newest as f64));
            families
                .entry(OLDEST)
                .or_default()
                .push((labels, oldest as f64));
        }
    }
}

/// One consumer group's position in one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupLag {
    pub topic: String,
    pub partition: i32,
    pub committed: i64,
    /// The partition's high watermark; `None` if the topic or partition no longer exists.
    pub high_watermark: Option<i64>,
    /// `high_watermark - committed`, never negative; `None` without a high watermark.
    pub lag: Option<i64>,
}

/// A group's committed offsets with their lag, sorted by topic and partition.
pub fn group_lag(core: &BrokerCore, group_id: &str) -> Vec<GroupLag> {
    let mut offsets = core
        .groups()
        .fetch_offsets(group_id, None)
        .unwrap_or_default();
    offsets.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    offsets
        .into_iter()
        .map(|o| {
            let hw = core
                .partition(&o.topic, o.partition)
                .ok()
                .map(|h| h.high_watermark());
            GroupLag {
                lag: hw.map(|hw| (hw - o.offset).max(0)),
                high_watermark: hw,
                topic: o.topic,
                partition: o.partition,
                committed: o.offset,
            }
        })
        .collect()
}

fn collect_groups(
    core: &BrokerCore,
    per_object: bool,
    families: &mut BTreeMap<&'static str, Series>,
) {
    const CURRENT: &str = "ferry_consumergroup_current_offset";
    const LAG: &str = "ferry_consumergroup_lag";
    for group in core.groups().list_groups(&[]) {
        let mut per_topic: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for l in group_lag(core, &group.group_id) {
            // Offsets of a topic that no longer exists have no lag to report.
            let Some(lag) = l.lag else { continue };
            if per_object {
                let labels = vec![
                    ("consumergroup", group.group_id.clone()),
                    ("topic", l.topic.clone()),
                    ("partition", l.partition.to_string()),
                ];
                families
                    .entry(CURRENT)
                    .or_default()
                    .push((labels.clone(), l.committed as f64));
                families.entry(LAG).or_default().push((labels, lag as f64));
            } else {
                let e = per_topic.entry(l.topic).or_default();
                e.0 = e.0.saturating_add(l.committed);
                e.1 = e.1.saturating_add(lag);
            }
        }
        for (topic, (committed, lag)) in per_topic {
            let labels = vec![("consumergroup", group.group_id.clone()), ("topic", topic)];
            families
                .entry(CURRENT)
                .or_default()
                .push((labels.clone(), committed as f64));
            families.entry(LAG).or_default().push((labels, lag as f64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::escape_label;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
    }
}
