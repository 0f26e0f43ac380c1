//! Committed offsets: OffsetCommit, OffsetFetch, OffsetDelete and the clean-up when a topic
//! goes away. Commits are written to the metadata store and flushed before they are answered.

use super::*;

impl GroupCoordinator {
    /// OffsetCommit. `generation` -1 with an empty member id is a "simple" commit (admin tools,
    /// `assign()` consumers), allowed only while the group has no members (else
    /// UNKNOWN_MEMBER_ID, as Kafka); otherwise member and generation must be current. Allowed
    /// during PreparingRebalance, REBALANCE_IN_PROGRESS during CompletingRebalance (Kafka's
    /// rules). The offsets are in [`Meta`] and flushed before `Ok`; the commit timestamp is set
    /// from the clock. Blocks on that flush: call it from a blocking-tolerant context.
    pub fn commit_offsets(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        offsets: Vec<CommittedOffset>,
    ) -> Result<(), GroupError> {
        self.check_running()?;
        let Some(entry) = self.group(group_id, generation < 0)? else {
            // A generation for a group we do not know: a commit from an older generation.
            return Err(GroupError::IllegalGeneration);
        };
        let _writer = entry.commit_lock.lock();
        {
            let mut group = entry.state.lock();
            let checked = group.check_commit(generation, member_id, instance_id, Instant::now());
            self.settle(&entry, &mut group);
            checked?;
        }
        self.store_offsets(&entry, group_id, offsets)
    }

    /// Stamps `offsets` with the commit time, writes and flushes them, then updates the cache
    /// (the caller holds the group's commit lock).
    pub(super) fn store_offsets(
        &self,
        entry: &GroupEntry,
        group_id: &str,
        mut offsets: Vec<CommittedOffset>,
    ) -> Result<(), GroupError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let now_ms = self.inner.clock.now_ms();
        for o in &mut offsets {
            o.commit_ms = now_ms;
        }
        self.inner.meta.commit_offsets(group_id, &offsets)?;
        self.inner.meta.flush()?;
        metrics::counter!("ferry_group_offset_commits_total").increment(offsets.len() as u64);
        let mut cache = entry.offsets.lock();
        for o in offsets {
            cache.insert((o.topic.clone(), o.partition), o);
        }
        Ok(())
    }

    /// OffsetFetch: the committed offsets of the given partitions (`None`: all). Partitions
    /// without a committed offset, and unknown groups, are simply absent; the adapter answers
    /// those with offset -1 as Kafka does.
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        partitions: Option<&[(String, i32)]>,
    ) -> Result<Vec<CommittedOffset>, GroupError> {
        self.check_running()?;
        let Some(entry) = self.group(group_id, false)? else {
            return Ok(Vec::new());
        };
        let cache = entry.offsets.lock();
        Ok(match partitions {
            None => cache.values().cloned().collect(),
            Some(wanted) => wanted
                .iter()
                .filter_map(|(t, p)| cache.get(&(t.clone(), *p)).cloned())
                .collect(),
        })
    }

    /// OffsetDelete. An Empty group loses any of the offsets; a consumer group with members
    /// keeps those of topics its members subscribe to (GROUP_SUBSCRIBED_TO_TOPIC per partition);
    /// a group of another protocol type with members refuses (NON_EMPTY_GROUP). Unknown group:
    /// GROUP_ID_NOT_FOUND.
    ///
    /// `subscribed_topics` decodes one member's metadata (for the group's protocol) into the
    /// topics it subscribes to; `None` if it cannot, in which case every topic counts as
    /// subscribed (Kafka's safe default). For protocol type "consumer" the adapter passes a
    /// ConsumerProtocol subscription decoder.
    pub fn delete_offsets(
        &self,
        group_id: &str,
        partitions: &[(String, i32)],
        subscribed_topics: impl Fn(&[u8]) -> Option<Vec<String>>,
    ) -> Result<PartitionResults, GroupError> {
        if group_id.is_empty() {
            return Err(GroupError::InvalidGroupId);
        }
        self.check_running()?;
        let Some(entry) = self.group(group_id, false)? else {
            return Err(GroupError::GroupIdNotFound);
        };
        let _writer = entry.commit_lock.lock();
        // A KIP-848 group knows its members' topics itself; a classic one has them in each
        // member's protocol metadata.
        let mut consumer_topics = None;
        let member_metadata = {
            let group = entry.state.lock();
            match group.effective_state() {
                GroupState::Dead => return Err(GroupError::GroupIdNotFound),
                GroupState::Empty => None,
                _ if group.consumer.is_some() => {
                    consumer_topics = group.consumer.as_ref().map(|c| c.subscribed_topics());
                    None
                }
                _ if group.protocol_type.as_deref() == Some("consumer") => {
                    Some(group.member_protocol_metadata())
                }
                _ => return Err(GroupError::NonEmptyGroup),
            }
        };
        // Decode outside the group lock: the closure is the adapter's code.
        let subscribed: Option<HashSet<String>> = match member_metadata {
            None => Some(consumer_topics.unwrap_or_default().into_iter().collect()),
            Some(None) => None,
            Some(Some(all)) => all
                .iter()
                .map(|m| subscribed_topics(m))
                .collect::<Option<Vec<_>>>()
                .map(|lists| lists.into_iter().flatten().collect()),
        };
        let mut results = Vec::with_capacity(partitions.len());
        let mut eligible = Vec::new();
        for (topic, partition) in partitions {
            let key = (topic.clone(), *partition);
            if subscribed.as_ref().is_none_or(|s| s.contains(topic)) {
                results.push((key, Err(GroupError::GroupSubscribedToTopic)));
            } else {
                eligible.push(key);
            }
        }
        for (topic, partition) in &eligible {
            self.inner
                .meta
                .delete_committed_offset(group_id, topic, *partition)?;
        }
        if !eligible.is_empty() {
            self.inner.meta.flush()?;
        }
        let mut cache = entry.offsets.lock();
        for key in eligible {
            cache.remove(&key);
            results.push((key, Ok(())));
        }
        Ok(results)
    }

    /// Forgets every committed offset of a deleted topic (cache and store; the store side is
    /// usually gone already through `Meta::delete_topic`).
    pub fn remove_topic(&self, topic: &str) {
        for entry in self.all_groups() {
            let _writer = entry.commit_lock.lock();
            let doomed: Vec<PartitionKey> = entry
                .offsets
                .lock()
                .keys()
                .filter(|(t, _)| t == topic)
                .cloned()
                .collect();
            for (t, p) in &doomed {
                if let Err(e) = self.inner.meta.delete_committed_offset(&entry.id, t, *p) {
                    tracing::warn!(group = %entry.id, topic, error = %e, "dropping offset failed");
                }
            }
            let mut cache = entry.offsets.lock();
            for key in doomed {
                cache.remove(&key);
            }
        }
    }
}
