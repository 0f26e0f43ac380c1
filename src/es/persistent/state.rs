//! A group's delivery state: the events read and not yet settled ([`Entry`], by id), the
//! queues of ready ones (retries before fresh ones), what is in flight with which consumer and
//! until when, the consumers' free buffer slots, and the unsettled log positions whose minimum
//! is the checkpoint. It is plain data changed under the group's lock, with no I/O, so every
//! transition (settle, retry, park, a consumer leaving, a timeout) is a method here that the
//! pump, the consumers and the API call; choosing a consumer is in `dispatch`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Instant;

use tokio::sync::mpsc;

use super::{PersistentDelivery, SettleAction};
use crate::es::read::RecordedEvent;
use crate::meta::es_persistent::PersistentCheckpoint;

/// Where an entry came from: the source's log, or a replayed parked link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    Log { partition: i32, position: i64 },
    Parked { revision: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
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
pub(super) struct Entry {
    pub(super) origin: Origin,
    pub(super) event: RecordedEvent,
    pub(super) retry_count: u32,
    pub(super) status: Status,
}

pub(super) struct Slot {
    pub(super) tx: mpsc::UnboundedSender<PersistentDelivery>,
    pub(super) buffer: usize,
    pub(super) in_flight: usize,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) entries: HashMap<u64, Entry>,
    pub(super) next_entry: u64,
    pub(super) next_delivery: u64,
    /// Retried and replayed events, served before fresh ones.
    pub(super) retries: VecDeque<u64>,
    pub(super) fresh: VecDeque<u64>,
    pub(super) in_flight: HashMap<u64, u64>,
    /// Unsettled log positions and parked revisions (their minimum is the checkpoint).
    pub(super) unsettled: BTreeSet<(i32, i64)>,
    pub(super) unsettled_parked: BTreeSet<u64>,
    /// Per partition, the position the source's cursor has read up to.
    pub(super) read_upto: BTreeMap<i32, i64>,
    pub(super) replay_read_upto: u64,
    pub(super) consumers: BTreeMap<u64, Slot>,
    pub(super) next_consumer: u64,
    pub(super) last_consumer: u64,
    pub(super) pins: HashMap<String, u64>,
    pub(super) to_park: Vec<(u64, String)>,
    pub(super) settled_since_checkpoint: u32,
    pub(super) stored: PersistentCheckpoint,
    pub(super) parked: u64,
}

impl State {
    pub(super) fn add(&mut self, origin: Origin, event: RecordedEvent, retry: bool) {
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

    pub(super) fn settle(&mut self, id: u64) {
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
    pub(super) fn retry(&mut self, id: u64, max_retry_count: u32, why: &str) {
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
    pub(super) fn take_in_flight(
        &mut self,
        delivery_id: u64,
        consumer: Option<u64>,
    ) -> Option<u64> {
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

    pub(super) fn settle_deliveries(
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

    pub(super) fn disconnect(&mut self, consumer: u64, max_retry_count: u32) {
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
    pub(super) fn expire(&mut self, now: Instant, max_retry_count: u32) -> Option<Instant> {
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

    pub(super) fn free(&self) -> bool {
        self.consumers.values().any(|s| s.in_flight < s.buffer)
    }
    pub(super) fn checkpoint(&self) -> PersistentCheckpoint {
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
