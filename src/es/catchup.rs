//! Catch-up subscriptions: one stream from a revision, or a partition of the store (`$all`)
//! from a position with an optional server-side filter (stream-name or event-type prefix or
//! regex), read from the log and then live, as KurrentDB's.
//!
//! A [`CatchUp`] is a cursor: [`CatchUp::poll`] reads durable records from its position and
//! returns what to send (events, checkpoints, signals); [`CatchUp::wait`] resolves when the
//! high watermark moves. It holds no per-event state, so the client keeps the checkpoint: the
//! position after the last event it processed, or the last [`CatchUpMessage::Checkpoint`]
//! (sent every `checkpoint_interval` records a filter skips, so a subscriber whose filter
//! rarely matches still has a recent place to restart from). [`CatchUpMessage::CaughtUp`] is
//! sent when the subscription reaches the log's end, [`CatchUpMessage::FellBehind`] when,
//! caught up before, it is again more than [`FELL_BEHIND_RECORDS`] behind.

use regex::Regex;
use tokio::sync::watch;

use super::read::{scan_ahead, ReadAhead, RecordedEvent};
use super::records::EsRecord;
use super::EsError;
use crate::log::{PartitionHandle, SimpleRecord};

/// Records behind the log end at which a caught-up subscription says it fell behind.
pub const FELL_BEHIND_RECORDS: i64 = 10_000;
/// Default records a filter may skip between two checkpoints.
pub const DEFAULT_CHECKPOINT_INTERVAL: u64 = 1_000;

/// A server-side filter of an `$all` subscription.
#[derive(Debug, Clone)]
pub enum EventFilter {
    StreamPrefix(String),
    StreamRegex(Regex),
    TypePrefix(String),
    TypeRegex(Regex),
}

impl EventFilter {
    fn matches(&self, stream: &str, record: &SimpleRecord) -> bool {
        let event_type = || {
            record
                .headers
                .iter()
                .find(|(k, _)| k == "ce_type")
                .and_then(|(_, v)| v.as_deref())
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
        };
        match self {
            EventFilter::StreamPrefix(p) => stream.starts_with(p.as_str()),
            EventFilter::StreamRegex(r) => r.is_match(stream),
            EventFilter::TypePrefix(p) => event_type().starts_with(p.as_str()),
            EventFilter::TypeRegex(r) => r.is_match(&event_type()),
        }
    }
}

/// What a subscription sends.
#[derive(Debug, Clone)]
pub enum CatchUpMessage {
    Event(RecordedEvent),
    /// Everything before this position was looked at: restart here.
    Checkpoint(i64),
    /// The subscription reached the log's end at this position; events from now on are live.
    CaughtUp(i64),
    /// The subscription, caught up before, is far behind again at this position.
    FellBehind(i64),
}

/// What a catch-up subscription reads.
#[derive(Debug, Clone)]
pub enum Selection {
    /// One stream, from this revision.
    Stream { stream: String, from_revision: u64 },
    /// Every event of the partition, or those the filter takes.
    All(Option<EventFilter>),
}

pub struct CatchUp {
    handle: PartitionHandle,
    partition: i32,
    position: i64,
    selection: Selection,
    checkpoint_interval: u64,
    skipped_since_checkpoint: u64,
    caught_up: bool,
    watermark: watch::Receiver<i64>,
    /// Log bytes past `position` read by the last poll.
    ahead: ReadAhead,
}

impl CatchUp {
    pub(super) fn new(
        handle: PartitionHandle,
        partition: i32,
        from_position: i64,
        selection: Selection,
        checkpoint_interval: u64,
    ) -> Self {
        let watermark = handle.subscribe_high_watermark();
        Self {
            handle,
            partition,
            position: from_position.max(0),
            selection,
            checkpoint_interval: checkpoint_interval.max(1),
            skipped_since_checkpoint: 0,
            caught_up: false,
            watermark,
            ahead: ReadAhead::default(),
        }
    }

    /// The partition it reads.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The position the next poll reads from.
    pub fn position(&self) -> i64 {
        self.position
    }

    /// Reads what is durable from the position on: up to `max` messages. Empty when there is
    /// nothing new (then [`wait`](Self::wait)).
    pub fn poll(&mut self, max: usize) -> Result<Vec<CatchUpMessage>, EsError> {
        let max = max.max(1);
        let end = self.handle.high_watermark();
        let mut out = Vec::new();
        if self.position >= end {
            if !self.caught_up {
                self.caught_up = true;
                out.push(CatchUpMessage::CaughtUp(self.position));
            }
            return Ok(out);
        }
        if self.caught_up && end - self.position > FELL_BEHIND_RECORDS {
            self.caught_up = false;
            out.push(CatchUpMessage::FellBehind(self.position));
        }
        let partition = self.partition;
        let interval = self.checkpoint_interval;
        let (selection, skipped) = (&self.selection, &mut self.skipped_since_checkpoint);
        let filtering = matches!(selection, Selection::All(Some(_)));
        let next = scan_ahead(
            &self.handle,
            self.position,
            &mut self.ahead,
            |position, es, record| {
                let EsRecord::Event {
                    stream, revision, ..
                } = es
                else {
                    return true;
                };
                let wanted = match selection {
                    Selection::Stream {
                        stream: s,
                        from_revision,
                    } => *s == stream && revision >= *from_revision,
                    Selection::All(None) => true,
                    Selection::All(Some(filter)) => filter.matches(&stream, &record),
                };
                if wanted {
                    out.push(CatchUpMessage::Event(RecordedEvent {
                        stream,
                        revision,
                        partition,
                        position,
                        record,
                    }));
                } else if filtering {
                    *skipped += 1;
                    if *skipped >= interval {
                        *skipped = 0;
                        out.push(CatchUpMessage::Checkpoint(position + 1));
                    }
                }
                out.len() < max
            },
        )?;
        self.position = next.max(self.position);
        Ok(out)
    }

    /// Resolves when the high watermark moves (or the partition closes).
    pub async fn wait(&mut self) {
        let _ = self.watermark.changed().await;
    }
}
