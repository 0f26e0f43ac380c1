//! Event-store persistent subscriptions (`crate::es::persistent`): creating, updating,
//! deleting and listing groups, replaying parked events (one answer each), and
//! `SubscribePersistent`, whose stream carries `PersistentEvent`s to the client and
//! `PersistentSettle`s back. When that stream ends, however it ends, the consumer is dropped
//! and the group retries its unsettled events; when the group is deleted the stream ends with
//! `Done`.

use crate::proto::stream::{RecvStream, SendStream};
use tokio::sync::mpsc;

use super::super::connection::Ctx;
use super::super::convert::NativeError;
use super::es::recorded;
use super::es_subscribe::filter;
use crate::es::persistent::{
    GroupInfo, PersistentDelivery, Settings, SettleAction, Source, StartFrom, Strategy,
};
use crate::es::EventStore;
use crate::proto::framed::{self, FrameReader};
use crate::proto::v1::{
    self,
    create_persistent_subscription::Source as WireSource,
    persistent_settle::Action,
    persistent_subscription_settings::{StartFrom as WireStart, Strategy as WireStrategy},
    request, response, ErrorCode,
};

fn settings(wire: Option<v1::PersistentSubscriptionSettings>) -> Settings {
    let defaults = Settings::default();
    let Some(w) = wire else {
        return defaults;
    };
    let or = |v: u32, d: u32| if v == 0 { d } else { v };
    Settings {
        start_from: match w.start_from {
            Some(WireStart::Start(_)) => StartFrom::Start,
            None | Some(WireStart::End(_)) => StartFrom::End,
            Some(WireStart::Position(p)) => StartFrom::Position(p),
        },
        max_retry_count: or(w.max_retry_count, defaults.max_retry_count),
        message_timeout: if w.message_timeout_ms == 0 {
            defaults.message_timeout
        } else {
            std::time::Duration::from_millis(u64::from(w.message_timeout_ms))
        },
        buffer_size: or(w.buffer_size, defaults.buffer_size),
        checkpoint_after: or(w.checkpoint_after, defaults.checkpoint_after),
        // An unknown strategy number is refused by `strategy` below before this is used.
        strategy: match WireStrategy::try_from(w.strategy) {
            Ok(WireStrategy::Pinned) => Strategy::Pinned,
            Ok(WireStrategy::PinnedByCorrelation) => Strategy::PinnedByCorrelation,
            _ => Strategy::RoundRobin,
        },
    }
}

fn check_settings(wire: &Option<v1::PersistentSubscriptionSettings>) -> Result<(), NativeError> {
    if let Some(w) = wire {
        if WireStrategy::try_from(w.strategy).is_err() {
            return Err(NativeError::new(
                ErrorCode::InvalidArgument,
                format!("unknown consumer strategy {}", w.strategy),
            ));
        }
    }
    Ok(())
}

fn settings_to_wire(s: &Settings) -> v1::PersistentSubscriptionSettings {
    v1::PersistentSubscriptionSettings {
        start_from: Some(match s.start_from {
            StartFrom::Start => WireStart::Start(true),
            StartFrom::End => WireStart::End(true),
            StartFrom::Position(p) => WireStart::Position(p),
        }),
        max_retry_count: s.max_retry_count,
        message_timeout_ms: u32::try_from(s.message_timeout.as_millis()).unwrap_or(u32::MAX),
        buffer_size: s.buffer_size,
        checkpoint_after: s.checkpoint_after,
        strategy: match s.strategy {
            Strategy::RoundRobin => WireStrategy::RoundRobin,
            Strategy::Pinned => WireStrategy::Pinned,
            Strategy::PinnedByCorrelation => WireStrategy::PinnedByCorrelation,
        } as i32,
    }
}

pub(crate) async fn create(
    ctx: &Ctx,
    c: v1::CreatePersistentSubscription,
) -> Result<(), NativeError> {
    check_settings(&c.settings)?;
    let source = match c.source {
        Some(WireSource::Stream(s)) => Source::Stream(s),
        Some(WireSource::Category(prefix)) => Source::Category(prefix),
        Some(WireSource::All(f)) => Source::All(filter(Some(f))?),
        None => {
            return Err(NativeError::new(
                ErrorCode::InvalidArgument,
                "a persistent subscription needs a source (stream, category or all)",
            ))
        }
    };
    EventStore::new(&ctx.core)
        .create_persistent_subscription(&c.topic, &c.group, source, settings(c.settings))
        .await?;
    Ok(())
}

pub(crate) async fn update(
    ctx: &Ctx,
    u: v1::UpdatePersistentSubscription,
) -> Result<(), NativeError> {
    check_settings(&u.settings)?;
    EventStore::new(&ctx.core)
        .update_persistent_subscription(&u.topic, &u.group, settings(u.settings))
        .await?;
    Ok(())
}

pub(crate) async fn delete(
    ctx: &Ctx,
    d: v1::DeletePersistentSubscription,
) -> Result<(), NativeError> {
    EventStore::new(&ctx.core)
        .delete_persistent_subscription(&d.topic, &d.group)
        .await?;
    Ok(())
}

fn info_to_wire(g: GroupInfo) -> v1::PersistentSubscriptionInfo {
    v1::PersistentSubscriptionInfo {
        settings: Some(settings_to_wire(&g.settings)),
        topic: g.topic,
        group: g.group,
        source: g.source,
        checkpoint: g.checkpoint.into_iter().collect(),
        consumers: g.consumers,
        in_flight: g.in_flight,
        parked: g.parked,
        parked_stream: g.parked_stream,
    }
}

pub(crate) async fn list(
    ctx: &Ctx,
    l: v1::ListPersistentSubscriptions,
) -> Result<v1::PersistentSubscriptions, NativeError> {
    let topic = (!l.topic.is_empty()).then_some(l.topic.as_str());
    let groups = EventStore::new(&ctx.core)
        .list_persistent_subscriptions(topic)
        .await?;
    Ok(v1::PersistentSubscriptions {
        subscriptions: groups.into_iter().map(info_to_wire).collect(),
    })
}

pub(crate) async fn replay(
    ctx: &Ctx,
    r: v1::ReplayParked,
) -> Result<v1::ParkedReplayed, NativeError> {
    let count = EventStore::new(&ctx.core)
        .replay_parked(&r.topic, &r.group, r.stop_at)
        .await?;
    Ok(v1::ParkedReplayed { count })
}

type Settles = mpsc::Receiver<Result<v1::PersistentSettle, NativeError>>;

/// Reads the client's settles off the stream until it ends; any other request is an error,
/// which ends the subscription.
fn settle_reader(mut reader: FrameReader<RecvStream>) -> Settles {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        loop {
            let item = match reader.next::<v1::Request>().await {
                Ok(Some(v1::Request {
                    op: Some(request::Op::PersistentSettle(s)),
                })) => Ok(s),
                Ok(Some(_)) => Err(NativeError::malformed(
                    "only persistent settles may follow a subscribe on its stream",
                )),
                Ok(None) => return,
                Err(crate::proto::framed::ReadError::Frame(e)) => Err(e.into()),
                Err(_) => return,
            };
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                return;
            }
        }
    });
    rx
}

async fn write(send: &mut SendStream, r: &v1::Response) -> Result<(), NativeError> {
    framed::write(send, r)
        .await
        .map_err(|e| NativeError::new(ErrorCode::Unavailable, format!("stream closed: {e}")))
}

fn event_to_wire(d: PersistentDelivery) -> v1::Response {
    v1::Response {
        result: Some(response::Result::PersistentEvent(v1::PersistentEvent {
            delivery_id: d.delivery_id,
            retry_count: d.retry_count,
            event: Some(recorded(d.event)),
        })),
    }
}

pub(crate) async fn subscribe(
    ctx: &Ctx,
    s: v1::SubscribePersistent,
    send: &mut SendStream,
    reader: FrameReader<RecvStream>,
) -> Result<(), NativeError> {
    let mut consumer =
        EventStore::new(&ctx.core).connect_persistent(&s.topic, &s.group, s.buffer_size)?;
    let subscribed = v1::Response {
        result: Some(response::Result::Subscribed(v1::Subscribed {
            name: s.group.clone(),
        })),
    };
    write(send, &subscribed).await?;
    let mut settles = settle_reader(reader);
    loop {
        tokio::select! {
            delivery = consumer.recv() => match delivery {
                Some(d) => write(send, &event_to_wire(d)).await?,
                // The group was deleted.
                None => return Ok(()),
            },
            settle = settles.recv() => match settle {
                Some(Ok(settle)) => {
                    let action = match Action::try_from(settle.action) {
                        Ok(Action::Ack) => SettleAction::Ack,
                        Ok(Action::Park) => SettleAction::Park,
                        Ok(Action::Retry) => SettleAction::Retry,
                        Ok(Action::Skip) => SettleAction::Skip,
                        Err(_) => {
                            return Err(NativeError::new(
                                ErrorCode::InvalidArgument,
                                format!("unknown settle action {}", settle.action),
                            ))
                        }
                    };
                    consumer.settle(&settle.delivery_ids, action, &settle.reason);
                }
                Some(Err(e)) => return Err(e),
                // The client finished or lost its side: the consumer leaves the group.
                None => return Ok(()),
            },
        }
    }
}
