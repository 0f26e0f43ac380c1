//! Publishing into a queue: one record appended through the queue's log, after
//! reject-publish and deduplication had their say.

use super::*;

/// `record` as the one-record batch a queue appends.
pub fn encode_one(record: &SimpleRecord) -> Result<bytes::BytesMut, LogError> {
    crate::log::try_encode_batch(
        std::slice::from_ref(record),
        &crate::log::EncodeOptions::default(),
    )
}

impl Queue {
    /// Queues an append of one message; the returned handle resolves once it is durable.
    pub async fn submit(&self, record: SimpleRecord) -> Result<Submitted, LogError> {
        let batch = encode_one(&record)?;
        self.submit_encoded(&record, batch).await
    }

    /// [`submit`](Self::submit) of a record already encoded as the one-record batch `batch`
    /// (by [`encode_one`]): a publish routed to many queues encodes its message once.
    pub async fn submit_encoded(
        &self,
        record: &SimpleRecord,
        batch: bytes::BytesMut,
    ) -> Result<Submitted, LogError> {
        let size = body_len(record);
        let _order = self.submit_lock.lock().await;
        let Some(dedup_key) = self.admit_dedup(record) else {
            metrics::counter!("ferry_messages_deduplicated_total").increment(1);
            return Ok(Submitted::Duplicate);
        };
        let forget = |key: &Option<bytes::Bytes>| {
            if let (Some(k), Some(cache)) = (key, self.dedup.lock().as_mut()) {
                cache.forget(k);
            }
        };
        {
            let hw = self.log.high_watermark();
            let mut c = self.inner.lock();
            if record.headers.iter().any(|(k, _)| k == TTL_HEADER) {
                c.ttl_seen = true;
            }
            if self.limits.overflow != Overflow::DropHead {
                // Expired messages must not hold the queue full.
                self.enforce_limits(&mut c, hw);
                let (inflight, inflight_bytes, ready_bytes) = match &c.sizes {
                    Some(sz) => (
                        sz.inflight.len() as u64,
                        sz.inflight.iter().map(|n| u64::from(*n)).sum::<u64>(),
                        sz.ready_bytes,
                    ),
                    None => (0, 0, 0),
                };
                let ready =
                    (hw - c.state.next).max(0) as u64 + c.state.requeued.len() as u64 + inflight;
                let full = self.limits.max_length.is_some_and(|m| ready >= m)
                    || self
                        .limits
                        .max_length_bytes
                        .is_some_and(|m| ready_bytes + inflight_bytes + u64::from(size) > m);
                if full {
                    drop(c);
                    forget(&dedup_key);
                    return Ok(Submitted::Full);
                }
            }
            if let Some(sz) = c.sizes.as_mut() {
                sz.inflight.push_back(size);
            }
            if let Some(ix) = c.prio.as_mut() {
                ix.pending.push_back(record_priority(record));
            }
            c.appends_expected += 1;
        }
        match self.log.submit_append(batch).await {
            Ok(p) => Ok(Submitted::Appended(p)),
            Err(e) => {
                forget(&dedup_key);
                let mut c = self.inner.lock();
                if let Some(sz) = c.sizes.as_mut() {
                    sz.inflight.pop_back();
                }
                if let Some(ix) = c.prio.as_mut() {
                    ix.pending.pop_back();
                }
                c.appends_expected -= 1;
                Err(e)
            }
        }
    }

    /// Checks `record` against the deduplication window: `None` when it is a repeat (drop
    /// it), else the key it was admitted under (to forget if the append fails), if any.
    pub(super) fn admit_dedup(&self, record: &SimpleRecord) -> Option<Option<bytes::Bytes>> {
        let mut guard = self.dedup.lock();
        let Some(cache) = guard.as_mut() else {
            return Some(None);
        };
        if !cache.loaded {
            cache.loaded = true;
            self.reload_dedup(cache);
        }
        let Some(key) = crate::broker::dedup::record_key(record) else {
            return Some(None);
        };
        cache
            .admit(key.clone(), self.clock.now_ms())
            .then_some(Some(key))
    }

    /// Refills the deduplication cache from the tail of the log after a restart: the ids of
    /// the last `x-cache-size` records inside the window.
    pub(super) fn reload_dedup(&self, cache: &mut DedupCache) {
        let policy = cache.policy();
        let end = self.log.high_watermark();
        let mut from = self
            .log
            .log_start_offset()
            .max(end.saturating_sub(policy.max_entries as i64));
        if let Some(window) = policy.window_ms {
            let cutoff = self.clock.now_ms().saturating_sub(window);
            match self.log.offset_for_timestamp(cutoff) {
                Ok(Some((o, _))) => from = from.max(o),
                Ok(None) => from = end,
                Err(_) => {}
            }
        }
        let offsets: Vec<i64> = (from..end).collect();
        match self.read_records(&offsets) {
            Ok(records) => {
                let mut by_offset: Vec<_> = records.into_iter().collect();
                by_offset.sort_unstable_by_key(|(o, _)| *o);
                for (_, r) in by_offset {
                    if let Some(key) = crate::broker::dedup::record_key(&r) {
                        cache.admit(key, r.timestamp);
                    }
                }
            }
            Err(e) => {
                // Repeats right after a restart may get through; nothing is lost.
                tracing::warn!(queue = %self.def.name, error = %e, "rebuilding the deduplication cache failed")
            }
        }
    }
}
