//! Persistent subscriptions (KurrentDB's model): server-side consumer groups over one stream,
//! a category (stream-name prefix) or every stream (`$all`, optionally filtered) of an
//! event-store topic. The broker reads the source, hands each event to one connected consumer
//! of the group (RoundRobin, Pinned by stream, or PinnedByCorrelation), and waits for a
//! settle: ack, skip, retry (delivered again with retry count + 1, parked once the count
//! reached `max_retry_count`) or park. An unsettled event whose message timeout passes, or
//! whose consumer goes away, is retried the same way.
//!
//! **Parking** writes a *link* (KurrentDB's `$>` event: value `<revision>@<stream>`, plus the
//! original's partition and position in `ferry.es.parked.*` headers) to the stream
//! [`parked_stream_name`] = `$persistentsubscription-<group>-parked` of the same topic, and
//! settles the event. `ReplayParked` reads the links written since the last replay, resolves
//! each to its event in the log and delivers it again with retry count 0. Persistent
//! subscriptions skip streams whose name starts with `$`, so a group never reads parked links
//! (catch-up `$all` subscriptions do see them, as KurrentDB's do without a filter).
//!
//! **Why not the queue machinery** (`broker::queue`): a queue owns its own log and its
//! delivery state is offsets in that log. A group reads someone else's log (one stream's
//! partition, or every partition of a store for a category or `$all`) through a filter, so
//! making it a queue would mean copying every matching event into a queue log first (a second
//! write of the whole store) and mapping offsets back to streams. The state a group needs is
//! small and the same shape as a queue's: per partition a read cursor plus the set of
//! unsettled positions; the low-water mark is the checkpoint. This module keeps that state in
//! memory and persists only the checkpoint (`meta::es_persistent`): per partition the lowest
//! unsettled position (or the cursor when nothing is unsettled), written after every
//! `checkpoint_after` settled events and when a group is deleted. A restarted broker resumes
//! every group from its stored checkpoint, so events settled after the last checkpoint are
//! delivered again (at-least-once; retry counts restart at 0), and none is lost.
//!
//! One task per group (the pump) reads the source while fewer than [`READ_AHEAD`] events wait,
//! expires message timeouts, dispatches to consumers with free buffer, writes parked links and
//! checkpoints. Consumers and settles only change the state under its lock and wake the pump.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

use super::catchup::{CatchUp, CatchUpMessage, EventFilter, Selection};
use super::read::RecordedEvent;
use super::records::NewEvent;
use super::{EsError, EventStore, ExpectedRevision, ReadFrom};
use crate::broker::topic_router::partition_for_key;
use crate::broker::WeakBrokerCore;
use crate::log::SimpleRecord;
use crate::meta::es_persistent::{PersistentCheckpoint, PersistentGroupRecord};

/// Events read ahead of the consumers (waiting for a free buffer slot) at most.
pub const READ_AHEAD: usize = 512;
/// Records read from one partition per poll.
const READ_BATCH: usize = 256;
/// The pump looks at the clock (timeouts, a deleted topic) at least this often.
const RECHECK: Duration = Duration::from_secs(1);
/// Longest group name, in bytes.
pub const MAX_GROUP_NAME_BYTES: usize = 256;
/// Parked links read per page by a replay.
const REPLAY_PAGE: usize = 1_000;
/// The CloudEvents type of a parked link (KurrentDB's link event type).
pub const LINK_EVENT_TYPE: &str = "$>";
/// Headers of a parked link: where the original event is, why it was parked, by which group.
pub const PARKED_PARTITION_HEADER: &str = "ferry.es.parked.partition";
pub const PARKED_POSITION_HEADER: &str = "ferry.es.parked.position";
pub const PARKED_REASON_HEADER: &str = "ferry.es.parked.reason";
pub const PARKED_GROUP_HEADER: &str = "ferry.es.parked.group";

/// The stream a group's parked links are written to (in the group's topic).
pub fn parked_stream_name(group: &str) -> String {
    format!("$persistentsubscription-{group}-parked")
}

/// What a group reads.
#[derive(Debug, Clone)]
pub enum Source {
    Stream(String),
    /// Every stream whose name starts with this prefix.
    Category(String),
    /// Every stream, or those the filter takes.
    All(Option<EventFilter>),
}

/// Where a new group starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    Start,
    End,
    Position(i64),
}

/// Which consumer gets an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    RoundRobin,
    /// Same stream, same consumer (while it stays connected).
    Pinned,
    /// Same correlation id (or, without one, same stream), same consumer.
    PinnedByCorrelation,
}

/// A group's settings (KurrentDB's names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub start_from: StartFrom,
    pub max_retry_count: u32,
    pub message_timeout: Duration,
    pub buffer_size: u32,
    pub checkpoint_after: u32,
    pub strategy: Strategy,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            start_from: StartFrom::End,
            max_retry_count: 10,
            message_timeout: Duration::from_secs(30),
            buffer_size: 10,
            checkpoint_after: 10,
            strategy: Strategy::RoundRobin,
        }
    }
}

/// How a consumer settles a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleAction {
    Ack,
    Park,
    Retry,
    Skip,
}

/// One event handed to a consumer.
#[derive(Debug, Clone)]
pub struct PersistentDelivery {
    pub delivery_id: u64,
    pub retry_count: u32,
    pub event: RecordedEvent,
}

/// A group as listed.
#[derive(Debug, Clone)]
pub struct GroupInfo {
    pub topic: String,
    pub group: String,
    /// `stream:<name>`, `category:<prefix>` or `$all`.
    pub source: String,
    pub settings: Settings,
    /// The stored checkpoint: (partition, position).
    pub checkpoint: Vec<(i32, i64)>,
    pub consumers: u32,
    pub in_flight: u32,
    /// Links in the parked stream.
    pub parked: u64,
    pub parked_stream: String,
}

// ---------------------------------------------------------------------------------------------
// The stored form

fn to_record(topic: &str, group: &str, source: &Source, s: &Settings) -> PersistentGroupRecord {
    let (source_kind, source, filter_kind) = match source {
        Source::Stream(name) => ("stream", name.clone(), ""),
        Source::Category(prefix) => ("category", prefix.clone(), ""),
        Source::All(None) => ("all", String::new(), ""),
        Source::All(Some(f)) => match f {
            EventFilter::StreamPrefix(p) => ("all", p.clone(), "stream_prefix"),
            EventFilter::StreamRegex(r) => ("all", r.as_str().to_string(), "stream_regex"),
            EventFilter::TypePrefix(p) => ("all", p.clone(), "type_prefix"),
            EventFilter::TypeRegex(r) => ("all", r.as_str().to_string(), "type_regex"),
        },
    };
    let (start_from, start_position) = match s.start_from {
        StartFrom::Start => ("start", 0),
        StartFrom::End => ("end", 0),
        StartFrom::Position(p) => ("position", p),
    };
    PersistentGroupRecord {
        topic: topic.to_string(),
        group: group.to_string(),
        source_kind: source_kind.into(),
        source,
        filter_kind: filter_kind.into(),
        start_from: start_from.into(),
        start_position,
        max_retry_count: s.max_retry_count,
        message_timeout_ms: u32::try_from(s.message_timeout.as_millis()).unwrap_or(u32::MAX),
        buffer_size: s.buffer_size,
        checkpoint_after: s.checkpoint_after,
        strategy: match s.strategy {
            Strategy::RoundRobin => "round_robin",
            Strategy::Pinned => "pinned",
            Strategy::PinnedByCorrelation => "pinned_by_correlation",
        }
        .into(),
    }
}

fn corrupt(what: &str) -> EsError {
    EsError::Unavailable(format!("stored persistent subscription: bad {what}"))
}

fn from_record(r: &PersistentGroupRecord) -> Result<(Source, Settings), EsError> {
    let regex = |p: &str| regex::Regex::new(p).map_err(|_| corrupt("filter"));
    let source = match (r.source_kind.as_str(), r.filter_kind.as_str()) {
        ("stream", _) => Source::Stream(r.source.clone()),
        ("category", _) => Source::Category(r.source.clone()),
        ("all", "") => Source::All(None),
        ("all", "stream_prefix") => Source::All(Some(EventFilter::StreamPrefix(r.source.clone()))),
        ("all", "stream_regex") => Source::All(Some(EventFilter::StreamRegex(regex(&r.source)?))),
        ("all", "type_prefix") => Source::All(Some(EventFilter::TypePrefix(r.source.clone()))),
        ("all", "type_regex") => Source::All(Some(EventFilter::TypeRegex(regex(&r.source)?))),
        _ => return Err(corrupt("source")),
    };
    let start_from = match r.start_from.as_str() {
        "start" => StartFrom::Start,
        "end" => StartFrom::End,
        "position" => StartFrom::Position(r.start_position),
        _ => return Err(corrupt("start")),
    };
    let strategy = match r.strategy.as_str() {
        "round_robin" => Strategy::RoundRobin,
        "pinned" => Strategy::Pinned,
        "pinned_by_correlation" => Strategy::PinnedByCorrelation,
        _ => return Err(corrupt("strategy")),
    };
    Ok((
        source,
        Settings {
            start_from,
            max_retry_count: r.max_retry_count,
            message_timeout: Duration::from_millis(u64::from(r.message_timeout_ms)),
            buffer_size: r.buffer_size,
            checkpoint_after: r.checkpoint_after,
            strategy,
        },
    ))
}

fn describe(source: &Source) -> String {
    match source {
        Source::Stream(s) => format!("stream:{s}"),
        Source::Category(c) => format!("category:{c}"),
        Source::All(_) => "$all".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// The delivery state (pure, under the group's lock)

/// Where an entry came from: the source's log, or a replayed parked link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Log { partition: i32, position: i64 },
    Parked { revision: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ready,
    InFlight {
        consumer: u64,
        delivery_id: u64,
        deadline: Instant,
    },
    /// Its link is being written.
    Parking,
}

#[derive(Debug)]
struct Entry {
    origin: Origin,
    event: RecordedEvent,
    retry_count: u32,
    status: Status,
}

struct Slot {
    tx: mpsc::UnboundedSender<PersistentDelivery>,
    buffer: usize,
    in_flight: usize,
}

#[derive(Default)]
struct State {
    entries: HashMap<u64, Entry>,
    next_entry: u64,
    next_delivery: u64,
    /// Retried and replayed events, served before fresh ones.
    retries: VecDeque<u64>,
    fresh: VecDeque<u64>,
    in_flight: HashMap<u64, u64>,
    /// Unsettled log positions and parked revisions (their minimum is the checkpoint).
    unsettled: BTreeSet<(i32, i64)>,
    unsettled_parked: BTreeSet<u64>,
    /// Per partition, the position the source's cursor has read up to.
    read_upto: BTreeMap<i32, i64>,
    replay_read_upto: u64,
    consumers: BTreeMap<u64, Slot>,
    next_consumer: u64,
    last_consumer: u64,
    pins: HashMap<String, u64>,
    to_park: Vec<(u64, String)>,
    settled_since_checkpoint: u32,
    stored: PersistentCheckpoint,
    parked: u64,
}

impl State {
    fn add(&mut self, origin: Origin, event: RecordedEvent, retry: bool) {
        let id = self.next_entry;
        self.next_entry += 1;
        match origin {
            Origin::Log {
                partition,
                position,
            } => {
                self.unsettled.insert((partition, position));
            }
            Origin::Parked { revision } => {
                self.unsettled_parked.insert(revision);
            }
        }
        self.entries.insert(
            id,
            Entry {
                origin,
                event,
                retry_count: 0,
                status: Status::Ready,
            },
        );
        if retry {
            self.retries.push_back(id);
        } else {
            self.fresh.push_back(id);
        }
    }

    fn settle(&mut self, id: u64) {
        if let Some(entry) = self.entries.remove(&id) {
            match entry.origin {
                Origin::Log {
                    partition,
                    position,
                } => {
                    self.unsettled.remove(&(partition, position));
                }
                Origin::Parked { revision } => {
                    self.unsettled_parked.remove(&revision);
                }
            }
            self.settled_since_checkpoint = self.settled_since_checkpoint.saturating_add(1);
        }
    }

    /// An in-flight or ready entry goes back for another delivery, or to the parked stream
    /// once its retries are used up.
    fn retry(&mut self, id: u64, max_retry_count: u32, why: &str) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        if entry.retry_count >= max_retry_count {
            entry.status = Status::Parking;
            self.to_park.push((
                id,
                format!("{why}; max retry count {max_retry_count} reached"),
            ));
        } else {
            entry.retry_count += 1;
            entry.status = Status::Ready;
            self.retries.push_back(id);
        }
    }

    /// Takes delivery `delivery_id` back from `consumer` (None: whoever holds it).
    fn take_in_flight(&mut self, delivery_id: u64, consumer: Option<u64>) -> Option<u64> {
        let id = *self.in_flight.get(&delivery_id)?;
        let holder = match self.entries.get(&id).map(|e| e.status) {
            Some(Status::InFlight { consumer: c, .. }) => c,
            _ => return None,
        };
        if consumer.is_some_and(|c| c != holder) {
            return None;
        }
        self.in_flight.remove(&delivery_id);
        if let Some(slot) = self.consumers.get_mut(&holder) {
            slot.in_flight = slot.in_flight.saturating_sub(1);
        }
        Some(id)
    }

    fn settle_deliveries(
        &mut self,
        consumer: u64,
        ids: &[u64],
        action: SettleAction,
        reason: &str,
        max_retry_count: u32,
    ) {
        for &delivery_id in ids {
            // An unknown id (settled already, or retried after its timeout) is ignored, as
            // KurrentDB does: the event was or will be delivered again.
            let Some(id) = self.take_in_flight(delivery_id, Some(consumer)) else {
                continue;
            };
            match action {
                SettleAction::Ack | SettleAction::Skip => self.settle(id),
                SettleAction::Retry => self.retry(id, max_retry_count, "nacked with retry"),
                SettleAction::Park => {
                    if let Some(e) = self.entries.get_mut(&id) {
                        e.status = Status::Parking;
                    }
                    let reason = if reason.is_empty() {
                        "nacked with park"
                    } else {
                        reason
                    };
                    self.to_park.push((id, reason.to_string()));
                }
            }
        }
    }

    fn disconnect(&mut self, consumer: u64, max_retry_count: u32) {
        self.consumers.remove(&consumer);
        self.pins.retain(|_, c| *c != consumer);
        let mine: Vec<u64> = self
            .entries
            .values()
            .filter_map(|e| match e.status {
                Status::InFlight {
                    consumer: c,
                    delivery_id,
                    ..
                } if c == consumer => Some(delivery_id),
                _ => None,
            })
            .collect();
        for delivery_id in mine {
            if let Some(id) = self.take_in_flight(delivery_id, None) {
                self.retry(id, max_retry_count, "its consumer went away");
            }
        }
    }

    /// Retries every delivery whose timeout passed; returns the next deadline.
    fn expire(&mut self, now: Instant, max_retry_count: u32) -> Option<Instant> {
        let mut next = None::<Instant>;
        let mut expired = Vec::new();
        for (&delivery_id, id) in &self.in_flight {
            if let Some(Status::InFlight { deadline, .. }) = self.entries.get(id).map(|e| e.status)
            {
                if deadline <= now {
                    expired.push(delivery_id);
                } else {
                    next = Some(next.map_or(deadline, |n| n.min(deadline)));
                }
            }
        }
        for delivery_id in expired {
            if let Some(id) = self.take_in_flight(delivery_id, None) {
                self.retry(id, max_retry_count, "message timeout");
            }
        }
        next
    }

    fn free(&self) -> bool {
        self.consumers.values().any(|s| s.in_flight < s.buffer)
    }

    /// The next consumer after the last one served that has a free slot.
    fn round_robin(&self) -> Option<u64> {
        let after = self
            .consumers
            .range(self.last_consumer + 1..)
            .chain(self.consumers.range(..=self.last_consumer));
        for (&id, slot) in after {
            if slot.in_flight < slot.buffer {
                return Some(id);
            }
        }
        None
    }

    fn dispatch(&mut self, settings: &Settings, now: Instant) {
        for retries in [true, false] {
            let mut queue = std::mem::take(if retries {
                &mut self.retries
            } else {
                &mut self.fresh
            });
            let mut waiting = VecDeque::new();
            while let Some(id) = queue.pop_front() {
                if !self.free() {
                    waiting.push_back(id);
                    break;
                }
                let Some(entry) = self.entries.get(&id) else {
                    continue;
                };
                if entry.status != Status::Ready {
                    continue;
                }
                let pin_key = match settings.strategy {
                    Strategy::RoundRobin => None,
                    Strategy::Pinned => Some(entry.event.stream.clone()),
                    Strategy::PinnedByCorrelation => Some(
                        correlation_id(&entry.event.record)
                            .unwrap_or_else(|| entry.event.stream.clone()),
                    ),
                };
                let delivery = PersistentDelivery {
                    delivery_id: self.next_delivery,
                    retry_count: entry.retry_count,
                    event: entry.event.clone(),
                };
                let target = match &pin_key {
                    None => self.round_robin(),
                    Some(key) => match self.pins.get(key) {
                        Some(c) if self.consumers.contains_key(c) => {
                            let full = self
                                .consumers
                                .get(c)
                                .is_some_and(|s| s.in_flight >= s.buffer);
                            // Its consumer is busy: the event waits, the others go on.
                            if full {
                                waiting.push_back(id);
                                continue;
                            }
                            Some(*c)
                        }
                        _ => self.round_robin(),
                    },
                };
                let Some(consumer) = target else {
                    waiting.push_back(id);
                    continue;
                };
                let delivery_id = delivery.delivery_id;
                self.next_delivery += 1;
                let sent = self
                    .consumers
                    .get(&consumer)
                    .is_some_and(|s| s.tx.send(delivery).is_ok());
                if !sent {
                    // Its receiver is gone; its Drop disconnects it shortly.
                    self.consumers.remove(&consumer);
                    waiting.push_back(id);
                    continue;
                }
                if let Some(key) = pin_key {
                    self.pins.insert(key, consumer);
                }
                if let Some(slot) = self.consumers.get_mut(&consumer) {
                    slot.in_flight += 1;
                }
                self.last_consumer = consumer;
                if let Some(e) = self.entries.get_mut(&id) {
                    e.status = Status::InFlight {
                        consumer,
                        delivery_id,
                        deadline: now + settings.message_timeout,
                    };
                }
                self.in_flight.insert(delivery_id, id);
            }
            waiting.extend(queue);
            if retries {
                self.retries = waiting;
            } else {
                self.fresh = waiting;
            }
        }
    }

    fn checkpoint(&self) -> PersistentCheckpoint {
        let positions = self
            .read_upto
            .iter()
            .map(|(&p, &upto)| {
                let lowest = self
                    .unsettled
                    .range((p, i64::MIN)..=(p, i64::MAX))
                    .next()
                    .map_or(upto, |&(_, position)| position.min(upto));
                (p, lowest)
            })
            .collect();
        let parked_replayed_upto = self
            .unsettled_parked
            .first()
            .map_or(self.replay_read_upto, |&r| r.min(self.replay_read_upto));
        PersistentCheckpoint {
            positions,
            parked_replayed_upto,
        }
    }
}

fn header<'a>(record: &'a SimpleRecord, name: &str) -> Option<&'a [u8]> {
    record
        .headers
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.as_deref())
}

fn correlation_id(record: &SimpleRecord) -> Option<String> {
    header(record, "correlation-id")
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

// ---------------------------------------------------------------------------------------------
// A running group

struct Group {
    topic: String,
    name: String,
    source: Source,
    settings: parking_lot::Mutex<Settings>,
    state: parking_lot::Mutex<State>,
    wake: Notify,
    stopped: AtomicBool,
    replaying: tokio::sync::Mutex<()>,
}

impl Group {
    fn settings(&self) -> Settings {
        self.settings.lock().clone()
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        // Dropping the senders ends every consumer's stream.
        self.state.lock().consumers.clear();
        self.wake.notify_one();
    }
}

/// The groups of one broker core, started on first use from the meta store.
#[derive(Default)]
pub(super) struct Registry {
    groups: parking_lot::Mutex<HashMap<(String, String), Arc<Group>>>,
    /// Serialises group creation (the existence check and the write).
    create: tokio::sync::Mutex<()>,
}

/// A consumer connected to a group; dropping it retries its unsettled events.
pub struct PersistentConsumer {
    group: Arc<Group>,
    id: u64,
    rx: mpsc::UnboundedReceiver<PersistentDelivery>,
}

impl PersistentConsumer {
    /// The next event; `None` once the group was deleted.
    pub async fn recv(&mut self) -> Option<PersistentDelivery> {
        self.rx.recv().await
    }

    /// Settles deliveries this consumer received.
    pub fn settle(&self, delivery_ids: &[u64], action: SettleAction, reason: &str) {
        let max = self.group.settings.lock().max_retry_count;
        self.group
            .state
            .lock()
            .settle_deliveries(self.id, delivery_ids, action, reason, max);
        self.group.wake.notify_one();
    }
}

impl Drop for PersistentConsumer {
    fn drop(&mut self) {
        let max = self.group.settings.lock().max_retry_count;
        self.group.state.lock().disconnect(self.id, max);
        self.group.wake.notify_one();
    }
}

fn check_group_name(group: &str) -> Result<(), EsError> {
    if group.is_empty() || group.len() > MAX_GROUP_NAME_BYTES {
        return Err(EsError::InvalidArgument(format!(
            "a group name must be 1 to {MAX_GROUP_NAME_BYTES} bytes"
        )));
    }
    Ok(())
}

fn group_not_found(topic: &str, group: &str) -> EsError {
    EsError::GroupNotFound(format!(
        "no persistent subscription group `{group}` on `{topic}`"
    ))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EsError> + Send + 'static,
) -> Result<T, EsError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| EsError::Unavailable("the meta store call failed".into()))?
}

impl EventStore {
    fn registry(&self) -> Arc<Registry> {
        self.core.layered(Registry::default)
    }

    /// The partitions `source` reads in `topic`.
    fn source_partitions(&self, topic: &str, source: &Source) -> Result<Vec<i32>, EsError> {
        let t = self.event_store_topic(topic)?;
        Ok(match source {
            Source::Stream(s) => vec![partition_for_key(s.as_bytes(), t.partition_count())],
            _ => (0..t.partition_count() as i32).collect(),
        })
    }

    /// Creates group `group` on `topic` reading `source`.
    pub async fn create_persistent_subscription(
        &self,
        topic: &str,
        group: &str,
        source: Source,
        settings: Settings,
    ) -> Result<(), EsError> {
        check_group_name(group)?;
        if let Source::Stream(s) = &source {
            super::check_stream_name(s)?;
        }
        let t = self.event_store_topic(topic)?;
        let mut positions = Vec::new();
        for p in self.source_partitions(topic, &source)? {
            let handle = t
                .partition(p)
                .ok_or_else(|| EsError::UnknownTopic(topic.to_string()))?;
            let position = match settings.start_from {
                StartFrom::Start => 0,
                StartFrom::End => handle.high_watermark(),
                StartFrom::Position(p) => p.max(0),
            };
            positions.push((p, position));
        }
        let record = to_record(topic, group, &source, &settings);
        let meta = self.core.meta().clone();
        let (t2, g2) = (topic.to_string(), group.to_string());
        let created = blocking(move || {
            if meta
                .persistent_groups(Some(&t2))?
                .iter()
                .any(|r| r.group == g2)
            {
                return Ok(false);
            }
            meta.put_persistent_checkpoint(
                &t2,
                &g2,
                &PersistentCheckpoint {
                    positions,
                    parked_replayed_upto: 0,
                },
            )?;
            meta.put_persistent_group(&record)?;
            Ok(true)
        });
        let registry = self.registry();
        let _one_at_a_time = registry.create.lock().await;
        if !created.await? {
            return Err(EsError::Conflict(format!(
                "persistent subscription group `{group}` on `{topic}` exists"
            )));
        }
        Ok(())
    }

    /// Replaces the settings of a group (its source and position stay).
    pub async fn update_persistent_subscription(
        &self,
        topic: &str,
        group: &str,
        settings: Settings,
    ) -> Result<(), EsError> {
        let running = self.group(topic, group)?;
        let record = to_record(topic, group, &running.source, &settings);
        let meta = self.core.meta().clone();
        blocking(move || Ok(meta.put_persistent_group(&record)?)).await?;
        *running.settings.lock() = settings;
        running.wake.notify_one();
        Ok(())
    }

    /// Deletes a group and its checkpoint; its consumers' streams end.
    pub async fn delete_persistent_subscription(
        &self,
        topic: &str,
        group: &str,
    ) -> Result<(), EsError> {
        let running = self.group(topic, group)?;
        self.registry()
            .groups
            .lock()
            .remove(&(topic.to_string(), group.to_string()));
        running.stop();
        let meta = self.core.meta().clone();
        let (t, g) = (topic.to_string(), group.to_string());
        blocking(move || Ok(meta.delete_persistent_group(&t, &g)?)).await
    }

    /// The groups of `topic` (every topic when `None`).
    pub async fn list_persistent_subscriptions(
        &self,
        topic: Option<&str>,
    ) -> Result<Vec<GroupInfo>, EsError> {
        let meta = self.core.meta().clone();
        let t = topic.map(String::from);
        let records = blocking(move || {
            let mut out = Vec::new();
            for r in meta.persistent_groups(t.as_deref())? {
                let cp = meta.persistent_checkpoint(&r.topic, &r.group)?;
                out.push((r, cp.unwrap_or_default()));
            }
            Ok(out)
        })
        .await?;
        let mut out = Vec::new();
        for (record, stored) in records {
            let (source, settings) = from_record(&record)?;
            let running = self
                .registry()
                .groups
                .lock()
                .get(&(record.topic.clone(), record.group.clone()))
                .cloned();
            let (checkpoint, consumers, in_flight, parked) = match &running {
                Some(g) => {
                    let st = g.state.lock();
                    (
                        st.stored.positions.clone(),
                        st.consumers.len() as u32,
                        st.in_flight.len() as u32,
                        Some(st.parked),
                    )
                }
                None => (stored.positions, 0, 0, None),
            };
            let parked_stream = parked_stream_name(&record.group);
            let parked = match parked {
                Some(n) => n,
                None => self.parked_count(&record.topic, &parked_stream).await,
            };
            out.push(GroupInfo {
                topic: record.topic.clone(),
                group: record.group.clone(),
                source: describe(&source),
                settings,
                checkpoint,
                consumers,
                in_flight,
                parked,
                parked_stream,
            });
        }
        Ok(out)
    }

    async fn parked_count(&self, topic: &str, parked_stream: &str) -> u64 {
        match self.partition_for(topic, parked_stream).await {
            Ok(p) => p
                .info(parked_stream)
                .await
                .ok()
                .and_then(|s| s.last_revision)
                .map_or(0, |r| r + 1),
            Err(_) => 0,
        }
    }

    /// Connects a consumer to a group, with at most `buffer_size` unsettled events (0 = the
    /// group's setting).
    pub fn connect_persistent(
        &self,
        topic: &str,
        group: &str,
        buffer_size: u32,
    ) -> Result<PersistentConsumer, EsError> {
        let running = self.group(topic, group)?;
        let buffer = match (buffer_size, running.settings.lock().buffer_size) {
            (0, 0) => Settings::default().buffer_size,
            (0, g) => g,
            (c, _) => c,
        } as usize;
        let (tx, rx) = mpsc::unbounded_channel();
        let id = {
            let mut st = running.state.lock();
            st.next_consumer += 1;
            let id = st.next_consumer;
            st.consumers.insert(
                id,
                Slot {
                    tx,
                    buffer,
                    in_flight: 0,
                },
            );
            id
        };
        running.wake.notify_one();
        Ok(PersistentConsumer {
            group: running,
            id,
            rx,
        })
    }

    /// Delivers the group's parked events (those parked since the last replay, at most
    /// `stop_at` of them, 0 = all) again; returns how many.
    pub async fn replay_parked(
        &self,
        topic: &str,
        group: &str,
        stop_at: u64,
    ) -> Result<u64, EsError> {
        let running = self.group(topic, group)?;
        let _one_at_a_time = running.replaying.lock().await;
        let parked_stream = parked_stream_name(group);
        let mut from = running.state.lock().replay_read_upto;
        let mut replayed = 0u64;
        loop {
            let want = if stop_at == 0 {
                REPLAY_PAGE
            } else {
                (stop_at - replayed).min(REPLAY_PAGE as u64) as usize
            };
            if want == 0 {
                break;
            }
            let links = match self
                .read_stream_unchecked(topic, &parked_stream, ReadFrom::Revision(from), false, want)
                .await
            {
                Ok(links) => links,
                Err(EsError::StreamNotFound(_)) => break,
                Err(e) => return Err(e),
            };
            if links.is_empty() {
                break;
            }
            let mut resolved = Vec::with_capacity(links.len());
            for link in &links {
                if let Some(event) = self.resolve_link(topic, &link.record).await? {
                    resolved.push((link.revision, event));
                }
            }
            let next = links.last().map_or(from, |l| l.revision + 1);
            {
                let mut st = running.state.lock();
                for (revision, event) in resolved {
                    st.add(Origin::Parked { revision }, event, true);
                    replayed += 1;
                }
                st.replay_read_upto = next;
            }
            running.wake.notify_one();
            from = next;
            if links.len() < want {
                break;
            }
        }
        Ok(replayed)
    }

    /// The event a parked link points to, if the log still holds it.
    async fn resolve_link(
        &self,
        topic: &str,
        link: &SimpleRecord,
    ) -> Result<Option<RecordedEvent>, EsError> {
        let number = |name: &str| {
            header(link, name)
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse::<i64>().ok())
        };
        let (Some(partition), Some(position)) = (
            number(PARKED_PARTITION_HEADER),
            number(PARKED_POSITION_HEADER),
        ) else {
            return Ok(None);
        };
        let Ok(partition) = i32::try_from(partition) else {
            return Ok(None);
        };
        let (events, _) = self.read_all(topic, partition, position, 1).await?;
        Ok(events.into_iter().find(|e| e.position == position))
    }

    /// The running group, started from the meta store if it is not yet.
    fn group(&self, topic: &str, group: &str) -> Result<Arc<Group>, EsError> {
        let registry = self.registry();
        let mut groups = registry.groups.lock();
        let key = (topic.to_string(), group.to_string());
        if let Some(g) = groups.get(&key) {
            return Ok(g.clone());
        }
        let meta = self.core.meta();
        let record = meta
            .persistent_groups(Some(topic))?
            .into_iter()
            .find(|r| r.group == group)
            .ok_or_else(|| group_not_found(topic, group))?;
        let stored = meta
            .persistent_checkpoint(topic, group)?
            .unwrap_or_default();
        let (source, settings) = from_record(&record)?;
        let t = self.event_store_topic(topic)?;
        let mut cursors = Vec::new();
        let mut read_upto = BTreeMap::new();
        for p in self.source_partitions(topic, &source)? {
            let handle = t
                .partition(p)
                .cloned()
                .ok_or_else(|| EsError::UnknownTopic(topic.to_string()))?;
            let from = stored
                .positions
                .iter()
                .find(|(sp, _)| *sp == p)
                .map_or(0, |&(_, pos)| pos);
            let selection = match &source {
                Source::Stream(s) => Selection::Stream {
                    stream: s.clone(),
                    from_revision: 0,
                },
                Source::Category(c) => Selection::All(Some(EventFilter::StreamPrefix(c.clone()))),
                Source::All(f) => Selection::All(f.clone()),
            };
            cursors.push(CatchUp::new(handle, p, from, selection, u64::MAX));
            read_upto.insert(p, from);
        }
        let state = State {
            read_upto,
            replay_read_upto: stored.parked_replayed_upto,
            stored,
            ..State::default()
        };
        let running = Arc::new(Group {
            topic: topic.to_string(),
            name: group.to_string(),
            source,
            settings: parking_lot::Mutex::new(settings),
            state: parking_lot::Mutex::new(state),
            wake: Notify::new(),
            stopped: AtomicBool::new(false),
            replaying: tokio::sync::Mutex::new(()),
        });
        groups.insert(key, running.clone());
        tokio::spawn(pump(self.core.downgrade(), running.clone(), cursors));
        Ok(running)
    }

    /// Writes the parked link of `event`.
    async fn park(
        &self,
        group: &Group,
        event: &RecordedEvent,
        reason: &str,
    ) -> Result<(), EsError> {
        let id = uuid::Uuid::now_v7().to_string();
        let text = |s: &str| Some(Bytes::copy_from_slice(s.as_bytes()));
        let record = SimpleRecord {
            key: None,
            value: Some(Bytes::from(format!("{}@{}", event.revision, event.stream))),
            headers: vec![
                ("ce_specversion".into(), text("1.0")),
                ("ce_id".into(), text(&id)),
                ("ce_type".into(), text(LINK_EVENT_TYPE)),
                ("ce_source".into(), text("ferry")),
                (
                    PARKED_PARTITION_HEADER.into(),
                    text(&event.partition.to_string()),
                ),
                (
                    PARKED_POSITION_HEADER.into(),
                    text(&event.position.to_string()),
                ),
                (PARKED_REASON_HEADER.into(), text(reason)),
                (PARKED_GROUP_HEADER.into(), text(&group.name)),
            ],
            timestamp: self.core.clock().now_ms(),
        };
        let stream = parked_stream_name(&group.name);
        let partition = self.partition_for(&group.topic, &stream).await?;
        match partition
            .append(
                &stream,
                ExpectedRevision::Any,
                vec![NewEvent { id, record }],
            )
            .await?
        {
            super::AppendOutcome::Success(_) => Ok(()),
            super::AppendOutcome::WrongExpectedVersion { .. } => {
                Err(EsError::Unavailable("writing a parked link failed".into()))
            }
        }
    }
}

impl Drop for Registry {
    /// The broker is gone: every pump ends (they hold only a weak reference to the core, so
    /// a stopped broker's meta store and logs close).
    fn drop(&mut self) {
        for group in self.groups.get_mut().values() {
            group.stop();
        }
    }
}

/// Reads the source, dispatches, expires, parks and checkpoints until the group stops or the
/// broker shuts down. It holds the core only while it works, never across a wait.
async fn pump(core: WeakBrokerCore, group: Arc<Group>, mut cursors: Vec<CatchUp>) {
    loop {
        if group.stopped.load(Ordering::SeqCst) {
            return;
        }
        let Some(core) = core.upgrade() else {
            group.stop();
            return;
        };
        let store = EventStore::new(&core);
        if store.core.topic(&group.topic).is_none() {
            group.stop();
            store
                .registry()
                .groups
                .lock()
                .remove(&(group.topic.clone(), group.name.clone()));
            return;
        }
        let settings = group.settings();
        // Read while few events wait.
        let mut progressed = false;
        let room = {
            let st = group.state.lock();
            READ_AHEAD.saturating_sub(st.fresh.len() + st.retries.len())
        };
        if room > 0 {
            for cursor in &mut cursors {
                let before = cursor.position();
                let messages = match cursor.poll(READ_BATCH.min(room)) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(group = %group.name, error = %e, "persistent subscription read failed");
                        continue;
                    }
                };
                let mut st = group.state.lock();
                for m in messages {
                    if let CatchUpMessage::Event(event) = m {
                        if event.stream.starts_with('$') {
                            continue;
                        }
                        let origin = Origin::Log {
                            partition: event.partition,
                            position: event.position,
                        };
                        st.add(origin, event, false);
                    }
                }
                st.read_upto.insert(cursor.partition(), cursor.position());
                progressed |= cursor.position() != before;
            }
        }
        let now = Instant::now();
        let (to_park, deadline, checkpoint) = {
            let mut st = group.state.lock();
            let deadline = st.expire(now, settings.max_retry_count);
            st.dispatch(&settings, now);
            let to_park = std::mem::take(&mut st.to_park);
            let cp = st.checkpoint();
            let due = st.settled_since_checkpoint >= settings.checkpoint_after.max(1);
            let checkpoint = (due && cp != st.stored).then(|| {
                st.settled_since_checkpoint = 0;
                st.stored = cp.clone();
                cp
            });
            let parking: Vec<(u64, RecordedEvent, String)> = to_park
                .into_iter()
                .filter_map(|(id, why)| st.entries.get(&id).map(|e| (id, e.event.clone(), why)))
                .collect();
            (parking, deadline, checkpoint)
        };
        for (id, event, reason) in to_park {
            progressed = true;
            match store.park(&group, &event, &reason).await {
                Ok(()) => {
                    let mut st = group.state.lock();
                    st.settle(id);
                    st.parked += 1;
                }
                Err(e) => {
                    tracing::warn!(group = %group.name, error = %e, "parking an event failed; it is retried");
                    {
                        let mut st = group.state.lock();
                        if let Some(entry) = st.entries.get_mut(&id) {
                            entry.status = Status::Ready;
                        }
                        st.retries.push_back(id);
                    }
                    tokio::time::sleep(RECHECK).await;
                }
            }
        }
        if let Some(cp) = checkpoint {
            let meta = store.core.meta().clone();
            let (t, g) = (group.topic.clone(), group.name.clone());
            let written = blocking(move || Ok(meta.put_persistent_checkpoint(&t, &g, &cp)?)).await;
            if let Err(e) = written {
                tracing::warn!(group = %group.name, error = %e, "storing a checkpoint failed");
            }
        }
        drop((store, core));
        if progressed {
            continue;
        }
        let sleep = deadline
            .map_or(RECHECK, |d| d.saturating_duration_since(Instant::now()))
            .min(RECHECK);
        let watermarks = async {
            if cursors.is_empty() {
                std::future::pending::<()>().await;
            } else {
                futures::future::select_all(cursors.iter_mut().map(|c| Box::pin(c.wait()))).await;
            }
        };
        tokio::select! {
            _ = group.wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
            _ = watermarks => {}
        }
    }
}
