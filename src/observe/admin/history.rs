//! Rate and length history kept in memory for the management API and the console: the last 10
//! minutes at 5 s and the last 24 hours at 1 minute, for the overview and for every queue,
//! topic and consumer group, returned RabbitMQ-style when a request asks with
//! `?lengths_age=600&lengths_incr=5` (and `msg_rates_age`/`msg_rates_incr` for counters; without
//! them counters follow the `lengths_*` pair).
//!
//! A sampler task ([`spawn_sampler`]) reads the core every [`FINE_EVERY_SECS`]: the overview's
//! message counters and queue totals, each queue's ready/unacked/consumer counts and the end of
//! its log (messages published into it), each topic's summed end offsets and size, each group's
//! total lag and summed committed offsets (consumed records). Gauges are kept as read; counters
//! are kept as cumulative totals, so a sample list reads like RabbitMQ's (`{sample, timestamp}`,
//! newest first) and a rate is the growth between two samples. Every minute the fine sample is
//! also appended to the coarse ring.
//!
//! Memory is bounded: each series holds at most [`FINE_KEEP`] + [`COARSE_KEEP`] samples of a
//! 4-byte time and 8 bytes per field (the overview has 14 fields, an object at most 4, so about
//! 56 KB per object at full length), and at most [`MAX_OBJECT_SERIES`] objects are tracked at a
//! time (about 17 MB in all); objects past the cap are listed without history, and a deleted
//! object's series goes at the next tick, freeing its slot.

use std::collections::{HashMap, VecDeque};
use std::sync::Weak;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{bad_request, ApiError};
use crate::broker::BrokerCore;
use crate::observe::http::Health;

/// Seconds between fine samples.
pub const FINE_EVERY_SECS: u32 = 5;
/// Fine samples kept: 10 minutes.
pub const FINE_KEEP: usize = 120;
/// Seconds between coarse samples.
pub const COARSE_EVERY_SECS: u32 = 60;
/// Coarse samples kept: 24 hours.
pub const COARSE_KEEP: usize = 1440;
/// Queues, topics and groups tracked at once.
pub const MAX_OBJECT_SERIES: usize = 300;

/// How a field's samples read: a level, or a cumulative count whose growth is a rate.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Gauge,
    Counter,
}

pub type Fields = &'static [(&'static str, Kind)];

/// The overview: RabbitMQ's `message_stats` counters, then the queue totals and connections.
pub const OVERVIEW_FIELDS: Fields = &[
    ("publish", Kind::Counter),
    ("confirm", Kind::Counter),
    ("deliver_get", Kind::Counter),
    ("redeliver", Kind::Counter),
    ("ack", Kind::Counter),
    ("return_unroutable", Kind::Counter),
    ("drop_unroutable", Kind::Counter),
    ("dead_lettered", Kind::Counter),
    ("log_appended_records", Kind::Counter),
    ("recv_oct", Kind::Counter),
    ("send_oct", Kind::Counter),
    ("messages_ready", Kind::Gauge),
    ("messages_unacknowledged", Kind::Gauge),
    ("connections", Kind::Gauge),
];
pub const QUEUE_FIELDS: Fields = &[
    ("messages_ready", Kind::Gauge),
    ("messages_unacknowledged", Kind::Gauge),
    ("consumers", Kind::Gauge),
    ("publish", Kind::Counter),
];
pub const TOPIC_FIELDS: Fields = &[("messages_in", Kind::Counter), ("size_bytes", Kind::Gauge)];
pub const GROUP_FIELDS: Fields = &[("lag", Kind::Gauge), ("consumed", Kind::Counter)];

/// What a series describes.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum SeriesKey {
    Overview,
    Queue { vhost: String, name: String },
    Topic(String),
    Group(String),
}

impl SeriesKey {
    pub fn fields(&self) -> Fields {
        match self {
            SeriesKey::Overview => OVERVIEW_FIELDS,
            SeriesKey::Queue { .. } => QUEUE_FIELDS,
            SeriesKey::Topic(_) => TOPIC_FIELDS,
            SeriesKey::Group(_) => GROUP_FIELDS,
        }
    }
}

/// Samples at one spacing, oldest first; `values` holds `width` numbers per time.
#[derive(Debug)]
struct Ring {
    keep: usize,
    times: VecDeque<u32>,
    values: VecDeque<f64>,
}

impl Ring {
    fn new(keep: usize) -> Self {
        Self {
            keep,
            times: VecDeque::new(),
            values: VecDeque::new(),
        }
    }

    fn push(&mut self, at: u32, values: &[f64]) {
        if self.times.len() == self.keep {
            self.times.pop_front();
            for _ in values {
                self.values.pop_front();
            }
        }
        self.times.push_back(at);
        self.values.extend(values.iter().copied());
    }

    fn sample(&self, index: usize, width: usize) -> (u32, Vec<f64>) {
        let values = (0..width).map(|f| self.values[index * width + f]).collect();
        (self.times[index], values)
    }
}

#[derive(Debug)]
struct Series {
    width: usize,
    fine: Ring,
    coarse: Ring,
}

/// One sample: seconds since the epoch and the series' fields in order.
pub type Sample = (u32, Vec<f64>);

/// Every series, behind one lock held only for a tick's appends or a request's copy.
#[derive(Default)]
pub struct History {
    series: Mutex<HashMap<SeriesKey, Series>>,
}

impl History {
    /// Appends one tick's readings at `now` (epoch seconds): `readings` must hold the overview
    /// and every live object, since objects absent from it are dropped.
    pub fn record(&self, now: u32, readings: Vec<(SeriesKey, Vec<f64>)>) {
        let mut series = self.series.lock();
        // Deleted objects go first, so their slots serve new ones this very tick.
        let live: std::collections::HashSet<&SeriesKey> = readings.iter().map(|(k, _)| k).collect();
        series.retain(|k, _| live.contains(k));
        drop(live);
        let mut objects = series.keys().filter(|k| **k != SeriesKey::Overview).count();
        for (key, values) in readings {
            let tracked = series.contains_key(&key);
            if !tracked && key != SeriesKey::Overview && objects >= MAX_OBJECT_SERIES {
                continue;
            }
            if !tracked && key != SeriesKey::Overview {
                objects += 1;
            }
            let s = series.entry(key).or_insert_with(|| Series {
                width: values.len(),
                fine: Ring::new(FINE_KEEP),
                coarse: Ring::new(COARSE_KEEP),
            });
            if s.width != values.len() {
                continue;
            }
            s.fine.push(now, &values);
            let minute = now / COARSE_EVERY_SECS;
            if s.coarse
                .times
                .back()
                .is_none_or(|t| t / COARSE_EVERY_SECS != minute)
            {
                s.coarse.push(now, &values);
            }
        }
    }

    /// Samples of `key` no older than `age` seconds before `now`, at least `incr` seconds apart,
    /// newest first: from the fine ring when it covers the request (age up to 10 minutes, incr
    /// under a minute), else from the coarse one.
    pub fn samples(&self, key: &SeriesKey, now: u32, age: u32, incr: u32) -> Vec<Sample> {
        let series = self.series.lock();
        let Some(s) = series.get(key) else {
            return Vec::new();
        };
        let fine_span = FINE_EVERY_SECS * FINE_KEEP as u32;
        let ring = if age <= fine_span && incr < COARSE_EVERY_SECS {
            &s.fine
        } else {
            &s.coarse
        };
        let oldest = now.saturating_sub(age);
        // A tick lands a little late now and then; half a spacing of slack keeps a 5 s request
        // from skipping every other 5 s sample.
        let slack = if std::ptr::eq(ring, &s.fine) {
            FINE_EVERY_SECS / 2
        } else {
            COARSE_EVERY_SECS / 2
        };
        let mut picked: Vec<Sample> = Vec::new();
        for i in (0..ring.times.len()).rev() {
            let at = ring.times[i];
            if at < oldest {
                break;
            }
            if picked
                .last()
                .is_none_or(|(newer, _)| newer - at + slack >= incr)
            {
                picked.push(ring.sample(i, s.width));
            }
        }
        picked
    }

    /// The newest two fine samples of `key` (newest first), for a current rate.
    fn latest_two(&self, key: &SeriesKey) -> Vec<Sample> {
        let series = self.series.lock();
        let Some(s) = series.get(key) else {
            return Vec::new();
        };
        let n = s.fine.times.len();
        (n.saturating_sub(2)..n)
            .rev()
            .map(|i| s.fine.sample(i, s.width))
            .collect()
    }

    /// Adds `{field}_details` to `view` for each of `key`'s fields: always the current `rate`
    /// (growth per second between the last two samples, for a gauge too, as RabbitMQ), and with
    /// a `window` also `samples`, `avg` and `avg_rate`. `section` names the object inside `view`
    /// a field goes to (RabbitMQ's `message_stats`, `queue_totals`), `None` for the top.
    pub fn decorate(
        &self,
        key: &SeriesKey,
        window: &Window,
        view: &mut Map<String, Value>,
        section: impl Fn(&str, Kind) -> Option<&'static str>,
    ) {
        self.decorate_at(key, window, view, section, epoch_seconds())
    }

    fn decorate_at(
        &self,
        key: &SeriesKey,
        window: &Window,
        view: &mut Map<String, Value>,
        section: impl Fn(&str, Kind) -> Option<&'static str>,
        now: u32,
    ) {
        let latest = self.latest_two(key);
        let fields = key.fields();
        for (i, (name, kind)) in fields.iter().enumerate() {
            let (age, incr) = match kind {
                Kind::Gauge => window.lengths,
                Kind::Counter => window.msg_rates.or(window.lengths),
            }
            .unzip();
            let mut details = Map::new();
            details.insert("rate".into(), json!(rate_between(&latest, i)));
            if let (Some(age), Some(incr)) = (age, incr) {
                let samples = self.samples(key, now, age, incr);
                details.insert(
                    "samples".into(),
                    samples
                        .iter()
                        .map(|(at, v)| json!({"sample": v[i], "timestamp": u64::from(*at) * 1000}))
                        .collect(),
                );
                let avg = if samples.is_empty() {
                    0.0
                } else {
                    samples.iter().map(|(_, v)| v[i]).sum::<f64>() / samples.len() as f64
                };
                details.insert("avg".into(), json!(round(avg)));
                let span = [samples.first(), samples.last()];
                let avg_rate = match span {
                    [Some(newest), Some(oldest)] if newest.0 > oldest.0 => {
                        (newest.1[i] - oldest.1[i]) / f64::from(newest.0 - oldest.0)
                    }
                    _ => 0.0,
                };
                details.insert("avg_rate".into(), json!(round(avg_rate)));
            }
            let target = match section(name, *kind) {
                Some(section) => view
                    .entry(section.to_string())
                    .or_insert_with(|| Value::Object(Map::new()))
                    .as_object_mut(),
                None => Some(&mut *view),
            };
            if let Some(target) = target {
                if !target.contains_key(*name) {
                    if let Some((_, v)) = latest.first() {
                        target.insert((*name).to_string(), json!(v[i]));
                    }
                }
                target.insert(format!("{name}_details"), Value::Object(details));
            }
        }
    }
}

/// Where a queue's fields go: counters in `message_stats`, lengths at the top.
pub fn queue_sections(_: &str, kind: Kind) -> Option<&'static str> {
    (kind == Kind::Counter).then_some("message_stats")
}

/// Where the overview's fields go: counters in `message_stats`, message counts in
/// `queue_totals`, the connection count in `object_totals`.
pub fn overview_sections(name: &str, kind: Kind) -> Option<&'static str> {
    match (name, kind) {
        (_, Kind::Counter) => Some("message_stats"),
        ("connections", _) => Some("object_totals"),
        _ => Some("queue_totals"),
    }
}

/// `view` as JSON with `key`'s history added (see [`History::decorate`]).
pub fn with_history(
    history: &History,
    key: &SeriesKey,
    window: &Window,
    view: impl serde::Serialize,
    section: impl Fn(&str, Kind) -> Option<&'static str>,
) -> Value {
    let mut value = serde_json::to_value(view).unwrap_or(Value::Null);
    if let Some(object) = value.as_object_mut() {
        history.decorate(key, window, object, section);
    }
    value
}

/// Every field at the top of the view.
pub fn top_level(_: &str, _: Kind) -> Option<&'static str> {
    None
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Growth per second of field `i` between the two samples (newest first); 0 without two.
fn rate_between(latest: &[Sample], i: usize) -> f64 {
    match latest {
        [(t1, v1), (t0, v0), ..] if t1 > t0 => round((v1[i] - v0[i]) / f64::from(t1 - t0)),
        _ => 0.0,
    }
}

/// The `lengths_age`/`lengths_incr` and `msg_rates_age`/`msg_rates_incr` query parameters.
#[derive(Deserialize, Default)]
pub struct WindowParams {
    lengths_age: Option<u32>,
    lengths_incr: Option<u32>,
    msg_rates_age: Option<u32>,
    msg_rates_incr: Option<u32>,
}

/// A checked history request: (age, incr) in seconds per kind of field.
#[derive(Default, Debug)]
pub struct Window {
    lengths: Option<(u32, u32)>,
    msg_rates: Option<(u32, u32)>,
}

impl WindowParams {
    pub fn window(&self) -> Result<Window, ApiError> {
        Ok(Window {
            lengths: pair("lengths", self.lengths_age, self.lengths_incr)?,
            msg_rates: pair("msg_rates", self.msg_rates_age, self.msg_rates_incr)?,
        })
    }
}

fn pair(prefix: &str, age: Option<u32>, incr: Option<u32>) -> Result<Option<(u32, u32)>, ApiError> {
    let max_age = COARSE_EVERY_SECS * COARSE_KEEP as u32;
    match (age, incr) {
        (None, None) => Ok(None),
        (Some(age), incr) => {
            let incr = incr.unwrap_or(FINE_EVERY_SECS);
            if age == 0 || age > max_age {
                return Err(bad_request(format!(
                    "{prefix}_age must be 1..={max_age} seconds (history covers 24 hours)"
                )));
            }
            if incr < FINE_EVERY_SECS || incr > age {
                return Err(bad_request(format!(
                    "{prefix}_incr must be at least {FINE_EVERY_SECS} seconds and at most {prefix}_age"
                )));
            }
            Ok(Some((age, incr)))
        }
        (None, Some(_)) => Err(bad_request(format!("{prefix}_incr needs {prefix}_age"))),
    }
}

pub fn epoch_seconds() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

/// One tick's readings of every object of the core, plus the overview's `counters` (the
/// message counters in [`OVERVIEW_FIELDS`] order, from the metrics recorder).
pub fn read_core(core: &BrokerCore, counters: Vec<f64>) -> Vec<(SeriesKey, Vec<f64>)> {
    let queues = core.router().queues();
    let mut readings = Vec::with_capacity(queues.len() + 1);
    let (mut ready, mut unacked) = (0.0, 0.0);
    for q in &queues {
        let (r, u) = (q.message_count() as f64, q.unacked_count() as f64);
        ready += r;
        unacked += u;
        readings.push((
            SeriesKey::Queue {
                vhost: q.vhost().to_string(),
                name: q.name().to_string(),
            },
            vec![
                r,
                u,
                f64::from(q.consumer_count()),
                q.log().high_watermark() as f64,
            ],
        ));
    }
    for t in core.topics() {
        let (messages, size) = t.partitions().iter().fold((0.0, 0.0), |(m, s), h| {
            (m + h.high_watermark() as f64, s + h.size_bytes() as f64)
        });
        readings.push((SeriesKey::Topic(t.name().to_string()), vec![messages, size]));
    }
    for g in core.groups().list_groups(&[]) {
        let lags = crate::observe::metrics::group_lag(core, &g.group_id);
        let lag: i64 = lags.iter().filter_map(|l| l.lag).sum();
        let consumed: i64 = lags.iter().map(|l| l.committed.max(0)).sum();
        readings.push((
            SeriesKey::Group(g.group_id),
            vec![lag as f64, consumed as f64],
        ));
    }
    let mut overview = counters;
    overview.extend([ready, unacked, core.connections().list().len() as f64]);
    readings.push((SeriesKey::Overview, overview));
    readings
}

/// Starts the sampler on the current runtime (none outside one): a tick now, then every
/// [`FINE_EVERY_SECS`], until the history is dropped with the last router holding it. It holds
/// the broker only weakly and only during a tick: a stopped broker must release its data
/// directory at once, not at the sampler's next tick (a restart on the same directory would
/// find the metadata store still locked).
pub fn spawn_sampler(
    history: Weak<History>,
    health: Weak<Health>,
    counters: impl Fn() -> Vec<f64> + Send + 'static,
) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_secs(u64::from(FINE_EVERY_SECS)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            ticks.tick().await;
            let (Some(history), Some(health)) = (history.upgrade(), health.upgrade()) else {
                return;
            };
            let Some(core) = health.core().cloned() else {
                continue;
            };
            drop(health);
            let counters = counters();
            // Reading every object walks the core's maps; keep it off the async workers.
            let readings = tokio::task::spawn_blocking(move || read_core(&core, counters)).await;
            if let Ok(readings) = readings {
                history.record(epoch_seconds(), readings);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(name: &str) -> SeriesKey {
        SeriesKey::Queue {
            vhost: "/".into(),
            name: name.into(),
        }
    }

    #[test]
    fn fine_samples_are_newest_first_and_spaced_by_the_increment() {
        let h = History::default();
        for i in 0..10u32 {
            h.record(
                1000 + i * 5,
                vec![(queue("q"), vec![f64::from(i), 0.0, 0.0, 0.0])],
            );
        }
        let all = h.samples(&queue("q"), 1045, 60, 5);
        let times: Vec<u32> = all.iter().map(|s| s.0).collect();
        assert_eq!(
            times,
            [1045, 1040, 1035, 1030, 1025, 1020, 1015, 1010, 1005, 1000]
        );
        let tens = h.samples(&queue("q"), 1045, 20, 10);
        let times: Vec<u32> = tens.iter().map(|s| s.0).collect();
        assert_eq!(times, [1045, 1035, 1025]);
        assert_eq!(tens[0].1[0], 9.0);
    }

    #[test]
    fn rings_are_bounded_and_the_coarse_ring_keeps_one_sample_a_minute() {
        let h = History::default();
        let start = 60 * 1000;
        let ticks = (FINE_KEEP as u32) * 3;
        for i in 0..ticks {
            h.record(start + i * 5, vec![(SeriesKey::Overview, vec![0.0; 14])]);
        }
        let now = start + (ticks - 1) * 5;
        let fine = h.samples(&SeriesKey::Overview, now, 600, 5);
        assert_eq!(fine.len(), FINE_KEEP);
        let coarse = h.samples(&SeriesKey::Overview, now, 86_400, 60);
        assert_eq!(coarse.len(), (ticks * 5 / 60) as usize);
    }

    #[test]
    fn objects_past_the_cap_get_no_history_and_deleted_objects_free_their_slot() {
        let h = History::default();
        let many: Vec<_> = (0..MAX_OBJECT_SERIES + 5)
            .map(|i| (SeriesKey::Topic(format!("t{i}")), vec![1.0, 2.0]))
            .collect();
        h.record(100, many);
        let last = SeriesKey::Topic(format!("t{}", MAX_OBJECT_SERIES + 4));
        assert!(h.samples(&last, 100, 60, 5).is_empty());
        // Next tick only the late one is left: the others were deleted, so it gets a slot.
        h.record(105, vec![(last.clone(), vec![3.0, 4.0])]);
        assert_eq!(h.samples(&last, 105, 60, 5).len(), 1);
        assert!(h
            .samples(&SeriesKey::Topic("t0".into()), 105, 60, 5)
            .is_empty());
    }

    #[test]
    fn decorate_puts_rates_and_samples_where_rabbitmq_does() {
        let h = History::default();
        h.record(1000, vec![(queue("q"), vec![4.0, 1.0, 1.0, 10.0])]);
        h.record(1005, vec![(queue("q"), vec![14.0, 1.0, 1.0, 60.0])]);
        let mut view = Map::new();
        let window = WindowParams {
            lengths_age: Some(u32::MAX / 2),
            ..Default::default()
        };
        assert!(window.window().is_err(), "an age past 24 h is refused");
        let window = Window {
            lengths: Some((600, 5)),
            msg_rates: None,
        };
        h.decorate_at(&queue("q"), &window, &mut view, queue_sections, 1005);
        let view = Value::Object(view);
        assert_eq!(view["messages_ready_details"]["rate"], 2.0);
        assert_eq!(view["message_stats"]["publish_details"]["rate"], 10.0);
        assert_eq!(view["message_stats"]["publish"], 60.0);
        let samples = view["messages_ready_details"]["samples"]
            .as_array()
            .unwrap();
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0]["sample"], 14.0);
        assert_eq!(samples[0]["timestamp"], 1_005_000);
    }
}
