//! The [`EventStore`] face of persistent subscriptions: create, update, delete and list
//! groups, connect consumers, replay parked events; and, for the pump, starting a group from
//! the meta store ([`EventStore::group`]: its cursors at the stored checkpoint) and writing a
//! parked link.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

use super::dispatch::header;
use super::group::{
    blocking, check_group_name, group_not_found, Group, PersistentConsumer, Registry,
};
use super::state::{Origin, Slot, State};
use super::stored::{describe, from_record, to_record};
use super::{
    parked_stream_name, GroupInfo, Settings, Source, StartFrom, LINK_EVENT_TYPE,
    PARKED_GROUP_HEADER, PARKED_PARTITION_HEADER, PARKED_POSITION_HEADER, PARKED_REASON_HEADER,
    REPLAY_PAGE,
};
use crate::broker::topic_router::partition_for_key;
use crate::es::catchup::{CatchUp, EventFilter, Selection};
use crate::es::read::RecordedEvent;
use crate::es::records::NewEvent;
use crate::es::{EsError, EventStore, ExpectedRevision, ReadFrom};
use crate::log::SimpleRecord;
use crate::meta::es_persistent::PersistentCheckpoint;

impl EventStore {
    pub(super) fn registry(&self) -> Arc<Registry> {
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
            crate::es::check_stream_name(s)?;
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
        tokio::spawn(super::pump::pump(
            self.core.downgrade(),
            running.clone(),
            cursors,
        ));
        Ok(running)
    }

    /// Writes the parked link of `event`.
    pub(super) async fn park(
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
            crate::es::AppendOutcome::Success(_) => Ok(()),
            crate::es::AppendOutcome::WrongExpectedVersion { .. } => {
                Err(EsError::Unavailable("writing a parked link failed".into()))
            }
        }
    }
}
