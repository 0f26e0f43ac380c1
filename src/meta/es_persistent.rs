//! The event store's persistent subscription groups (see `crate::es::persistent`): each
//! group's definition (source and settings) and its checkpoint (per partition, the log
//! position below which every event the group reads is settled, plus how far the parked
//! stream was replayed). A group restarts from its checkpoint, so an older checkpoint only
//! redelivers, never loses.

use serde::{Deserialize, Serialize};

use super::{keys, Meta, MetaError, MetaOp};

/// A group's definition, as created (settings as last updated).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistentGroupRecord {
    pub topic: String,
    pub group: String,
    /// "stream", "category" or "all".
    pub source_kind: String,
    /// The stream name or category prefix; for "all", the filter's text.
    pub source: String,
    /// For "all": "", "stream_prefix", "stream_regex", "type_prefix" or "type_regex".
    #[serde(default)]
    pub filter_kind: String,
    /// "start", "end" or "position".
    pub start_from: String,
    pub start_position: i64,
    pub max_retry_count: u32,
    pub message_timeout_ms: u32,
    pub buffer_size: u32,
    pub checkpoint_after: u32,
    /// "round_robin", "pinned" or "pinned_by_correlation".
    pub strategy: String,
}

/// A group's stored position.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistentCheckpoint {
    /// (partition, position): every event of the group before `position` is settled.
    pub positions: Vec<(i32, i64)>,
    /// Revisions of the parked stream below this one were replayed (or are being replayed
    /// and settled).
    pub parked_replayed_upto: u64,
}

impl Meta {
    pub fn put_persistent_group(&self, record: &PersistentGroupRecord) -> Result<(), MetaError> {
        self.put(keys::es_psub(&record.topic, &record.group), record)
    }

    pub fn persistent_groups(
        &self,
        topic: Option<&str>,
    ) -> Result<Vec<PersistentGroupRecord>, MetaError> {
        self.scan(&keys::es_psubs(topic))
    }

    pub fn persistent_checkpoint(
        &self,
        topic: &str,
        group: &str,
    ) -> Result<Option<PersistentCheckpoint>, MetaError> {
        self.get(&keys::es_psub_checkpoint(topic, group))
    }

    pub fn put_persistent_checkpoint(
        &self,
        topic: &str,
        group: &str,
        checkpoint: &PersistentCheckpoint,
    ) -> Result<(), MetaError> {
        self.put(keys::es_psub_checkpoint(topic, group), checkpoint)
    }

    /// Deletes a group and its checkpoint in one batch.
    pub fn delete_persistent_group(&self, topic: &str, group: &str) -> Result<(), MetaError> {
        self.store.apply(vec![
            MetaOp::Delete(keys::es_psub(topic, group)),
            MetaOp::Delete(keys::es_psub_checkpoint(topic, group)),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_checkpoints_round_trip_and_delete_together() {
        let meta = Meta::in_memory();
        let record = PersistentGroupRecord {
            topic: "es.t".into(),
            group: "g".into(),
            source_kind: "category".into(),
            source: "order-".into(),
            filter_kind: String::new(),
            start_from: "start".into(),
            start_position: 0,
            max_retry_count: 3,
            message_timeout_ms: 1000,
            buffer_size: 10,
            checkpoint_after: 1,
            strategy: "pinned".into(),
        };
        meta.put_persistent_group(&record).expect("put");
        let cp = PersistentCheckpoint {
            positions: vec![(0, 42)],
            parked_replayed_upto: 3,
        };
        meta.put_persistent_checkpoint("es.t", "g", &cp)
            .expect("put cp");
        // The checkpoint key must not show up as a group.
        assert_eq!(
            meta.persistent_groups(None).expect("scan"),
            vec![record.clone()]
        );
        assert_eq!(
            meta.persistent_groups(Some("es.t")).expect("scan"),
            vec![record]
        );
        assert_eq!(meta.persistent_groups(Some("es.")).expect("scan"), vec![]);
        assert_eq!(
            meta.persistent_checkpoint("es.t", "g").expect("get"),
            Some(cp)
        );
        meta.delete_persistent_group("es.t", "g").expect("delete");
        assert!(meta.persistent_groups(None).expect("scan").is_empty());
        assert_eq!(meta.persistent_checkpoint("es.t", "g").expect("get"), None);
    }
}
