//! Persistent subscriptions in the SDK (see `crate::es::persistent` and docs/event-store.md):
//! [`EventStoreClient`] creates, updates, deletes and lists groups and replays parked events;
//! [`EventStoreClient::subscribe_persistent`] joins a group as one consumer and yields
//! [`PersistentEvent`]s, each settled with [`PersistentEvent::ack`] or
//! [`PersistentEvent::nack`] (park, retry or skip). The broker keeps the group's position, so
//! unlike a catch-up subscription the application keeps no checkpoint; a consumer that goes
//! away (closed, dropped, connection lost) has its unsettled events retried by the others.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use super::connection::NativeClientError;
use super::es::{unexpected, EventStoreClient, RecordedEvent, SubscriptionFilter};
use crate::proto::framed::{self, FrameReader};
use crate::proto::v1::{
    self, create_persistent_subscription::Source as WireSource, persistent_settle::Action,
    persistent_subscription_settings::StartFrom as WireStart,
    persistent_subscription_settings::Strategy as WireStrategy, request::Op, response,
};

/// What a group reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PersistentSource {
    Stream(String),
    /// Every stream whose name starts with this prefix (`order-`).
    Category(String),
    /// Every stream (`$all`), optionally filtered as a catch-up `$all` subscription.
    All(Option<SubscriptionFilter>),
}

/// Where a new group starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    Start,
    /// Only events appended after the group is created.
    End,
    /// This log position, in every partition the group reads.
    Position(i64),
}

/// Which consumer of a group gets an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerStrategy {
    RoundRobin,
    /// Events of one stream go to one consumer while it stays connected.
    Pinned,
    /// Events with one correlation id (else one stream) go to one consumer.
    PinnedByCorrelation,
}

/// A group's settings (KurrentDB's names); `Default` is the broker's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistentSubscriptionSettings {
    pub start_from: StartFrom,
    /// Retries before an event is parked.
    pub max_retry_count: u32,
    /// An event unsettled this long is retried.
    pub message_timeout: Duration,
    /// Unsettled events one consumer holds at most.
    pub buffer_size: u32,
    /// The broker stores the group's checkpoint after this many settled events.
    pub checkpoint_after: u32,
    pub strategy: ConsumerStrategy,
}

impl Default for PersistentSubscriptionSettings {
    fn default() -> Self {
        Self {
            start_from: StartFrom::End,
            max_retry_count: 10,
            message_timeout: Duration::from_secs(30),
            buffer_size: 10,
            checkpoint_after: 10,
            strategy: ConsumerStrategy::RoundRobin,
        }
    }
}

impl PersistentSubscriptionSettings {
    fn to_wire(&self) -> v1::PersistentSubscriptionSettings {
        v1::PersistentSubscriptionSettings {
            start_from: Some(match self.start_from {
                StartFrom::Start => WireStart::Start(true),
                StartFrom::End => WireStart::End(true),
                StartFrom::Position(p) => WireStart::Position(p),
            }),
            max_retry_count: self.max_retry_count,
            message_timeout_ms: u32::try_from(self.message_timeout.as_millis())
                .unwrap_or(u32::MAX)
                .max(1),
            buffer_size: self.buffer_size,
            checkpoint_after: self.checkpoint_after,
            strategy: match self.strategy {
                ConsumerStrategy::RoundRobin => WireStrategy::RoundRobin,
                ConsumerStrategy::Pinned => WireStrategy::Pinned,
                ConsumerStrategy::PinnedByCorrelation => WireStrategy::PinnedByCorrelation,
            } as i32,
        }
    }

    fn from_wire(w: v1::PersistentSubscriptionSettings) -> Self {
        Self {
            start_from: match w.start_from {
                Some(WireStart::Start(_)) => StartFrom::Start,
                None | Some(WireStart::End(_)) => StartFrom::End,
                Some(WireStart::Position(p)) => StartFrom::Position(p),
            },
            max_retry_count: w.max_retry_count,
            message_timeout: Duration::from_millis(u64::from(w.message_timeout_ms)),
            buffer_size: w.buffer_size,
            checkpoint_after: w.checkpoint_after,
            strategy: match WireStrategy::try_from(w.strategy) {
                Ok(WireStrategy::Pinned) => ConsumerStrategy::Pinned,
                Ok(WireStrategy::PinnedByCorrelation) => ConsumerStrategy::PinnedByCorrelation,
                _ => ConsumerStrategy::RoundRobin,
            },
        }
    }
}

/// A group as listed.
#[derive(Debug, Clone)]
pub struct PersistentSubscriptionInfo {
    pub topic: String,
    pub group: String,
    /// `stream:<name>`, `category:<prefix>` or `$all`.
    pub source: String,
    pub settings: PersistentSubscriptionSettings,
    /// The stored checkpoint per partition.
    pub checkpoint: BTreeMap<i32, i64>,
    pub consumers: u32,
    pub in_flight: u32,
    /// Links in the parked stream.
    pub parked: u64,
    /// `$persistentsubscription-<group>-parked`.
    pub parked_stream: String,
}

/// What to do with an event a consumer could not process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackAction {
    /// Write it to the parked stream now.
    Park,
    /// Deliver it again (parked once its retries are used up).
    Retry,
    /// Settle it without processing.
    Skip,
}

type Sender = Arc<Mutex<crate::proto::stream::SendStream>>;

/// One consumer's membership of a group; read it with [`next`](Self::next). Closing or
/// dropping it hands its unsettled events back to the group.
pub struct PersistentSubscription {
    send: Sender,
    reader: FrameReader<crate::proto::stream::RecvStream>,
}

/// An event delivered by a group, to be settled once.
#[derive(Debug)]
pub struct PersistentEvent {
    pub event: RecordedEvent,
    /// How often it was retried before this delivery.
    pub retry_count: u32,
    pub delivery_id: u64,
    send: Sender,
}

async fn settle(
    send: &Sender,
    ids: Vec<u64>,
    action: Action,
    reason: &str,
) -> Result<(), NativeClientError> {
    let request = v1::Request {
        op: Some(Op::PersistentSettle(v1::PersistentSettle {
            delivery_ids: ids,
            action: action as i32,
            reason: reason.into(),
        })),
    };
    framed::write(&mut *send.lock().await, &request)
        .await
        .map_err(NativeClientError::connection)
}

impl PersistentEvent {
    /// Processed: the group never delivers it again (short of a restart before its
    /// checkpoint).
    pub async fn ack(&self) -> Result<(), NativeClientError> {
        settle(&self.send, vec![self.delivery_id], Action::Ack, "").await
    }

    /// Not processed: park, retry or skip it; `reason` goes with a parked event.
    pub async fn nack(&self, action: NackAction, reason: &str) -> Result<(), NativeClientError> {
        let action = match action {
            NackAction::Park => Action::Park,
            NackAction::Retry => Action::Retry,
            NackAction::Skip => Action::Skip,
        };
        settle(&self.send, vec![self.delivery_id], action, reason).await
    }
}

impl PersistentSubscription {
    /// The next event; `None` once the broker ended the subscription (the group was deleted).
    pub async fn next(&mut self) -> Result<Option<PersistentEvent>, NativeClientError> {
        match super::connection::read_result(&mut self.reader).await {
            Ok(response::Result::PersistentEvent(e)) => {
                let event = e.event.ok_or_else(|| {
                    NativeClientError::Codec("a delivery without its event".into())
                })?;
                Ok(Some(PersistentEvent {
                    event: RecordedEvent::from_wire(event),
                    retry_count: e.retry_count,
                    delivery_id: e.delivery_id,
                    send: self.send.clone(),
                }))
            }
            Ok(response::Result::Done(_)) => Ok(None),
            Ok(other) => Err(unexpected(&other)),
            Err(e) => Err(e),
        }
    }

    /// Leaves the group; its unsettled events go to the other consumers.
    pub async fn close(self) {
        let _ = self.send.lock().await.finish();
    }
}

impl EventStoreClient {
    async fn call_done(&self, op: Op) -> Result<(), NativeClientError> {
        match self.conn.call(&v1::Request { op: Some(op) }).await? {
            response::Result::Done(_) => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Creates group `group` on event-store topic `topic`, reading `source`.
    pub async fn create_persistent_subscription(
        &self,
        topic: &str,
        group: &str,
        source: PersistentSource,
        settings: &PersistentSubscriptionSettings,
    ) -> Result<(), NativeClientError> {
        use v1::event_filter::Kind as F;
        let source = match source {
            PersistentSource::Stream(s) => WireSource::Stream(s),
            PersistentSource::Category(c) => WireSource::Category(c),
            PersistentSource::All(filter) => WireSource::All(v1::EventFilter {
                kind: filter.map(|f| match f {
                    SubscriptionFilter::StreamPrefix(p) => F::StreamPrefix(p),
                    SubscriptionFilter::StreamRegex(r) => F::StreamRegex(r),
                    SubscriptionFilter::TypePrefix(p) => F::TypePrefix(p),
                    SubscriptionFilter::TypeRegex(r) => F::TypeRegex(r),
                }),
            }),
        };
        self.call_done(Op::CreatePersistentSubscription(
            v1::CreatePersistentSubscription {
                topic: topic.into(),
                group: group.into(),
                source: Some(source),
                settings: Some(settings.to_wire()),
            },
        ))
        .await
    }

    /// Replaces a group's settings (its source and position stay).
    pub async fn update_persistent_subscription(
        &self,
        topic: &str,
        group: &str,
        settings: &PersistentSubscriptionSettings,
    ) -> Result<(), NativeClientError> {
        self.call_done(Op::UpdatePersistentSubscription(
            v1::UpdatePersistentSubscription {
                topic: topic.into(),
                group: group.into(),
                settings: Some(settings.to_wire()),
            },
        ))
        .await
    }

    /// Deletes a group (its parked stream stays); its consumers' subscriptions end.
    pub async fn delete_persistent_subscription(
        &self,
        topic: &str,
        group: &str,
    ) -> Result<(), NativeClientError> {
        self.call_done(Op::DeletePersistentSubscription(
            v1::DeletePersistentSubscription {
                topic: topic.into(),
                group: group.into(),
            },
        ))
        .await
    }

    /// The groups of `topic` (of every event-store topic with `None`).
    pub async fn list_persistent_subscriptions(
        &self,
        topic: Option<&str>,
    ) -> Result<Vec<PersistentSubscriptionInfo>, NativeClientError> {
        let request = v1::Request {
            op: Some(Op::ListPersistentSubscriptions(
                v1::ListPersistentSubscriptions {
                    topic: topic.unwrap_or_default().into(),
                },
            )),
        };
        match self.conn.call(&request).await? {
            response::Result::PersistentSubscriptions(list) => Ok(list
                .subscriptions
                .into_iter()
                .map(|s| PersistentSubscriptionInfo {
                    topic: s.topic,
                    group: s.group,
                    source: s.source,
                    settings: PersistentSubscriptionSettings::from_wire(
                        s.settings.unwrap_or_default(),
                    ),
                    checkpoint: s.checkpoint.into_iter().collect(),
                    consumers: s.consumers,
                    in_flight: s.in_flight,
                    parked: s.parked,
                    parked_stream: s.parked_stream,
                })
                .collect()),
            other => Err(unexpected(&other)),
        }
    }

    /// Delivers the group's parked events (parked since the last replay; at most `stop_at`,
    /// `None` = all) again with retry count 0; returns how many.
    pub async fn replay_parked(
        &self,
        topic: &str,
        group: &str,
        stop_at: Option<u64>,
    ) -> Result<u64, NativeClientError> {
        let request = v1::Request {
            op: Some(Op::ReplayParked(v1::ReplayParked {
                topic: topic.into(),
                group: group.into(),
                stop_at: stop_at.unwrap_or(0),
            })),
        };
        match self.conn.call(&request).await? {
            response::Result::ParkedReplayed(r) => Ok(r.count),
            other => Err(unexpected(&other)),
        }
    }

    /// Joins group `group` as one consumer holding at most `buffer_size` unsettled events
    /// (0 = the group's setting).
    pub async fn subscribe_persistent(
        &self,
        topic: &str,
        group: &str,
        buffer_size: u32,
    ) -> Result<PersistentSubscription, NativeClientError> {
        let request = v1::Request {
            op: Some(Op::SubscribePersistent(v1::SubscribePersistent {
                topic: topic.into(),
                group: group.into(),
                buffer_size,
            })),
        };
        let (send, reader) = self.conn.open_subscription(&request).await?;
        Ok(PersistentSubscription {
            send: Arc::new(Mutex::new(send)),
            reader,
        })
    }
}
