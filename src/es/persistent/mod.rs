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
//!
//! Layout: this module holds the public types; [`stored`] converts a group's definition to and
//! from its meta-store record; [`state`] is a group's delivery state (entries, unsettled
//! positions, consumers, retries, the checkpoint), pure and under the group's lock;
//! [`dispatch`] hands ready events to consumers by the group's [`Strategy`]; [`group`] is a
//! running group, the per-core registry of groups and a connected [`PersistentConsumer`];
//! [`api`] is the [`EventStore`](super::EventStore) face (create, update, delete, list,
//! connect, replay parked, park); [`pump`] is the group's task.

mod api;
mod dispatch;
mod group;
mod pump;
mod state;
mod stored;

use std::time::Duration;

use super::catchup::EventFilter;
use super::read::RecordedEvent;
pub use group::PersistentConsumer;

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
