//! The coordinator's operations on the core: register a transactional producer, add
//! partitions and groups, hold transactional offsets, end (commit or abort) by writing
//! markers, time out abandoned transactions, and finish decided ones after a restart.
//!
//! Every change is made on a copy of the record, persisted (and flushed), and only then
//! installed and published to produce checks, so memory never runs ahead of the disk.

use std::sync::Weak;
use std::time::Duration;

use super::{
    begin, check_producer, complete, decide_end, EndAction, TxnError, MAX_TRANSACTION_TIMEOUT_MS,
};
use crate::broker::producer::ProducerGrant;
use crate::broker::{BrokerCore, CoreInner};
use crate::log::{encode_control_batch, ControlKind};
use crate::meta::{CommittedOffset, MetaError, TxnRecord, TxnStatus};

/// How often abandoned transactions are looked for.
const TIMEOUT_SWEEP: Duration = Duration::from_secs(1);

/// Runs metadata work (which flushes) on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, TxnError> + Send + 'static,
) -> Result<T, TxnError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(TxnError::Meta(MetaError::Backend(format!(
            "transaction state task failed: {e}"
        ))))
    })
}

/// The epoch that fences `epoch` (it stays at the maximum once there; the id is then replaced).
fn fencing_epoch(epoch: i16) -> i16 {
    epoch.saturating_add(1)
}

impl BrokerCore {
    fn txns(&self) -> &super::TxnCoordinator {
        &self.inner.txns
    }

    async fn persist_txn(&self, record: &TxnRecord) -> Result<(), TxnError> {
        let meta = self.meta().clone();
        let record = record.clone();
        blocking(move || {
            meta.put_transaction(&record)?;
            meta.flush()?;
            Ok(())
        })
        .await
    }

    /// InitProducerId with a `transactional.id`: the id's producer id with its epoch bumped
    /// (a fresh producer id the first time, or when the epoch is exhausted). Whatever the
    /// previous instance left open is aborted (a decided end is completed) with the bumped
    /// epoch first, so the previous instance is fenced everywhere before this one starts.
    /// `current` is KIP-360's (producer id, epoch) of a producer re-initialising itself.
    pub async fn init_transactional_producer(
        &self,
        transactional_id: &str,
        timeout_ms: i32,
        current: Option<(i64, i16)>,
    ) -> Result<ProducerGrant, TxnError> {
        if !(1..=MAX_TRANSACTION_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(TxnError::InvalidTransactionTimeout(timeout_ms));
        }
        let entry = self.txns().entry(transactional_id);
        let mut guard = entry.lock().await;
        let now = self.clock().now_ms();
        let Some(existing) = guard.as_ref() else {
            if current.is_some() {
                return Err(TxnError::InvalidProducerIdMapping);
            }
            let meta = self.meta().clone();
            let producer_id = blocking(move || Ok(meta.allocate_producer_id()?)).await?;
            let record = TxnRecord {
                transactional_id: transactional_id.to_string(),
                producer_id,
                epoch: 0,
                timeout_ms,
                status: TxnStatus::Empty,
                partitions: Vec::new(),
                groups: Vec::new(),
                pending_offsets: Vec::new(),
                started_ms: 0,
                updated_ms: now,
            };
            self.persist_txn(&record).await?;
            self.txns().publish(&record);
            *guard = Some(record);
            metrics::counter!("ferry_kafka_txn_producers_registered_total").increment(1);
            return Ok(ProducerGrant {
                producer_id,
                epoch: 0,
            });
        };
        if let Some((producer_id, epoch)) = current {
            check_producer(existing, producer_id, epoch)?;
        }
        let mut next = existing.clone();
        let mut bumped = false;
        if matches!(
            next.status,
            TxnStatus::Ongoing | TxnStatus::PrepareCommit | TxnStatus::PrepareAbort
        ) {
            next.epoch = fencing_epoch(next.epoch);
            bumped = true;
            if next.status == TxnStatus::Ongoing {
                next.status = TxnStatus::PrepareAbort;
                tracing::info!(
                    transactional_id,
                    producer_id = next.producer_id,
                    "aborting the open transaction of a fenced producer instance"
                );
            }
            next.updated_ms = now;
            self.persist_txn(&next).await?;
            self.txns().publish(&next);
            *guard = Some(next.clone());
            self.finish_txn(&mut next).await?;
            *guard = Some(next.clone());
        }
        if next.epoch >= i16::MAX - 1 {
            let meta = self.meta().clone();
            let old = next.producer_id;
            next.producer_id = blocking(move || Ok(meta.allocate_producer_id()?)).await?;
            next.epoch = 0;
            self.txns().unpublish(old);
        } else if !bumped {
            next.epoch += 1;
        }
        next.timeout_ms = timeout_ms;
        next.updated_ms = now;
        self.persist_txn(&next).await?;
        self.txns().publish(&next);
        let grant = ProducerGrant {
            producer_id: next.producer_id,
            epoch: next.epoch,
        };
        *guard = Some(next);
        Ok(grant)
    }

    /// Runs `change` on a copy of the id's record after checking the producer, persisting and
    /// installing the copy if `change` says it changed.
    async fn update_txn(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        change: impl FnOnce(&mut TxnRecord, i64) -> Result<bool, TxnError>,
    ) -> Result<(), TxnError> {
        let entry = self
            .txns()
            .existing_entry(transactional_id)
            .ok_or(TxnError::InvalidProducerIdMapping)?;
        let mut guard = entry.lock().await;
        let Some(record) = guard.as_ref() else {
            return Err(TxnError::InvalidProducerIdMapping);
        };
        check_producer(record, producer_id, epoch)?;
        let mut next = record.clone();
        if change(&mut next, self.clock().now_ms())? {
            self.persist_txn(&next).await?;
            self.txns().publish(&next);
            *guard = Some(next);
        }
        Ok(())
    }

    /// AddPartitionsToTxn: opens the transaction if needed and adds `partitions` (which the
    /// caller has checked exist).
    pub async fn add_partitions_to_txn(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, i32)],
    ) -> Result<(), TxnError> {
        self.update_txn(transactional_id, producer_id, epoch, |r, now| {
            let mut changed = begin(r, now)?;
            for p in partitions {
                if !r.partitions.contains(p) {
                    r.partitions.push(p.clone());
                    changed = true;
                }
            }
            r.partitions.sort();
            Ok(changed)
        })
        .await
    }

    /// AddOffsetsToTxn: opens the transaction if needed and adds the consumer group whose
    /// offsets it will carry.
    pub async fn add_offsets_to_txn(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        group_id: &str,
    ) -> Result<(), TxnError> {
        self.update_txn(transactional_id, producer_id, epoch, |r, now| {
            let mut changed = begin(r, now)?;
            if !r.groups.iter().any(|g| g == group_id) {
                r.groups.push(group_id.to_string());
                r.groups.sort();
                changed = true;
            }
            Ok(changed)
        })
        .await
    }

    /// TxnOffsetCommit: holds `offsets` for `group_id` until the transaction ends; they reach
    /// the group only if it commits. `committer` (v3+) must be a current member of the
    /// group's current generation, as Kafka's group coordinator checks.
    pub async fn txn_offset_commit(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        group_id: &str,
        committer: &crate::broker::group::TxnCommitter,
        offsets: Vec<CommittedOffset>,
    ) -> Result<(), TxnError> {
        self.update_txn(transactional_id, producer_id, epoch, |r, _| {
            if r.status != TxnStatus::Ongoing || !r.groups.iter().any(|g| g == group_id) {
                return Err(TxnError::InvalidTxnState(
                    "the group was not added to an open transaction (AddOffsetsToTxn)".into(),
                ));
            }
            self.groups()
                .check_txn_committer(group_id, committer)
                .map_err(TxnError::Member)?;
            for o in offsets {
                r.pending_offsets.retain(|(g, p)| {
                    !(g == group_id && p.topic == o.topic && p.partition == o.partition)
                });
                r.pending_offsets.push((group_id.to_string(), o));
            }
            Ok(true)
        })
        .await
    }

    /// EndTxn: commits or aborts the open transaction. Returns once every marker is written
    /// (durable per the partitions' fsync policy) and, on commit, the offsets are applied.
    pub async fn end_txn(
        &self,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
    ) -> Result<(), TxnError> {
        let entry = self
            .txns()
            .existing_entry(transactional_id)
            .ok_or(TxnError::InvalidProducerIdMapping)?;
        let mut guard = entry.lock().await;
        let Some(record) = guard.as_ref() else {
            return Err(TxnError::InvalidProducerIdMapping);
        };
        check_producer(record, producer_id, epoch)?;
        let mut next = record.clone();
        if decide_end(&mut next, commit, self.clock().now_ms())? == EndAction::AlreadyDone {
            return Ok(());
        }
        self.persist_txn(&next).await?;
        self.txns().publish(&next);
        *guard = Some(next.clone());
        self.finish_txn(&mut next).await?;
        *guard = Some(next);
        Ok(())
    }

    /// Completes a decided (`Prepare*`, persisted) transaction: markers to every partition,
    /// offsets to their groups on commit, then the record is completed and persisted. On error
    /// the record stays decided; the next EndTxn, InitProducerId or start finishes it.
    async fn finish_txn(&self, record: &mut TxnRecord) -> Result<(), TxnError> {
        let commit = record.status == TxnStatus::PrepareCommit;
        let kind = if commit {
            ControlKind::Commit
        } else {
            ControlKind::Abort
        };
        let now = self.clock().now_ms();
        let mut pending = Vec::with_capacity(record.partitions.len());
        for (topic, partition) in &record.partitions {
            // A partition of a deleted topic has nothing left to mark.
            let Ok(handle) = self.partition(topic, *partition) else {
                continue;
            };
            let marker = encode_control_batch(record.producer_id, record.epoch, kind, 0, now);
            let submitted = handle
                .submit_append(marker)
                .await
                .map_err(|e| TxnError::Log(e.client_message()))?;
            pending.push(submitted);
        }
        for submitted in pending {
            submitted
                .wait()
                .await
                .map_err(|e| TxnError::Log(e.client_message()))?;
        }
        if commit {
            let mut by_group: std::collections::BTreeMap<String, Vec<CommittedOffset>> =
                Default::default();
            for (group, offset) in &record.pending_offsets {
                by_group
                    .entry(group.clone())
                    .or_default()
                    .push(offset.clone());
            }
            for (group, offsets) in by_group {
                let groups = self.groups().clone();
                blocking(move || {
                    groups
                        .commit_transactional_offsets(&group, offsets)
                        .map_err(|e| TxnError::Group(e.to_string()))
                })
                .await?;
            }
        }
        let mut done = record.clone();
        complete(&mut done, self.clock().now_ms());
        self.persist_txn(&done).await?;
        self.txns().publish(&done);
        metrics::counter!(
            "ferry_kafka_txn_completed_total",
            "result" => if commit { "commit" } else { "abort" }
        )
        .increment(1);
        *record = done;
        Ok(())
    }

    /// Aborts every open transaction older than its timeout, bumping the epoch so the
    /// producer that abandoned it is fenced (Kafka's `transaction.timeout.ms`).
    pub async fn expire_transactions(&self) -> usize {
        let mut aborted = 0;
        for entry in self.txns().all_entries() {
            let mut guard = entry.lock().await;
            let Some(record) = guard.as_ref() else {
                continue;
            };
            let now = self.clock().now_ms();
            if record.status != TxnStatus::Ongoing
                || now.saturating_sub(record.started_ms) <= i64::from(record.timeout_ms)
            {
                continue;
            }
            let mut next = record.clone();
            next.epoch = fencing_epoch(next.epoch);
            next.status = TxnStatus::PrepareAbort;
            next.updated_ms = now;
            tracing::info!(
                transactional_id = %next.transactional_id,
                producer_id = next.producer_id,
                timeout_ms = next.timeout_ms,
                "aborting a transaction past its timeout"
            );
            if let Err(e) = self.persist_txn(&next).await {
                tracing::warn!(error = %e, "cannot record the abort of a timed-out transaction");
                continue;
            }
            self.txns().publish(&next);
            *guard = Some(next.clone());
            match self.finish_txn(&mut next).await {
                Ok(()) => aborted += 1,
                Err(e) => {
                    tracing::warn!(error = %e, "aborting a timed-out transaction failed; retrying")
                }
            }
            *guard = Some(next);
        }
        aborted
    }

    /// Finishes the transactions a crash left decided but not completed (markers missing
    /// from some partitions), as Kafka's coordinator does when it loads its log.
    pub async fn recover_transactions(&self) {
        for entry in self.txns().all_entries() {
            let mut guard = entry.lock().await;
            let Some(record) = guard.as_ref() else {
                continue;
            };
            if !matches!(
                record.status,
                TxnStatus::PrepareCommit | TxnStatus::PrepareAbort
            ) {
                continue;
            }
            let mut next = record.clone();
            tracing::info!(
                transactional_id = %next.transactional_id,
                status = ?next.status,
                "completing a transaction decided before the restart"
            );
            if let Err(e) = self.finish_txn(&mut next).await {
                tracing::warn!(error = %e, "completing a transaction after restart failed; the next EndTxn or InitProducerId retries");
            }
            *guard = Some(next);
        }
    }

    /// Every registered transactional id's state, sorted by id (ListTransactions,
    /// DescribeTransactions).
    pub async fn transactions(&self) -> Vec<TxnRecord> {
        let mut out = Vec::new();
        for entry in self.txns().all_entries() {
            if let Some(record) = entry.lock().await.as_ref() {
                out.push(record.clone());
            }
        }
        out.sort_by(|a, b| a.transactional_id.cmp(&b.transactional_id));
        out
    }

    /// Does an open transaction hold an offset of `group` for this partition? See
    /// [`super::TxnCoordinator::has_pending_offset`].
    pub fn has_pending_txn_offset(&self, group: &str, topic: &str, partition: i32) -> bool {
        self.txns().has_pending_offset(group, topic, partition)
    }

    /// May this transactional batch be appended? See [`super::TxnCoordinator::check_produce`].
    pub fn check_transactional_produce(
        &self,
        producer_id: i64,
        epoch: i16,
        topic: &str,
        partition: i32,
    ) -> Result<(), TxnError> {
        self.txns()
            .check_produce(producer_id, epoch, topic, partition)
    }
}

/// Starts the task that aborts timed-out transactions; it ends with the core.
pub(in crate::broker) fn spawn_timeout_sweeper(core: Weak<CoreInner>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TIMEOUT_SWEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = core.upgrade() else { return };
            if inner
                .shutting_down
                .load(std::sync::atomic::Ordering::Acquire)
            {
                return;
            }
            BrokerCore { inner }.expire_transactions().await;
        }
    });
}
