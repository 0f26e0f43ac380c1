//! Dispatch: hands ready events (retries first, then fresh ones, each queue in order) to
//! consumers with a free buffer slot, by the group's [`Strategy`]: RoundRobin takes the next
//! consumer after the last one served; Pinned and PinnedByCorrelation keep a key (the stream,
//! or the correlation id with the stream as fallback) on the consumer that got it first while
//! that consumer stays connected, and let an event wait when its consumer is busy rather than
//! hand it to another (which would break the per-key order the pin exists for).

use std::collections::VecDeque;
use std::time::Instant;

use super::state::{State, Status};
use super::{PersistentDelivery, Settings, Strategy};
use crate::log::SimpleRecord;

impl State {
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

    pub(super) fn dispatch(&mut self, settings: &Settings, now: Instant) {
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
}

pub(super) fn header<'a>(record: &'a SimpleRecord, name: &str) -> Option<&'a [u8]> {
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
