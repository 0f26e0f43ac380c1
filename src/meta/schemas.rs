//! Stored schema-registry state (issue 18): schemas by id, subject versions, and the
//! compatibility level and mode of each subject and of the registry as a whole.
//!
//! A schema's id is a key of its own, written once and never rewritten, so the id a client
//! cached stays valid for the data directory's life; subjects point at ids by version. A soft
//! delete flips `deleted` on the version record (the registry still serves it to `?deleted=true`
//! and to readers holding the id); a hard delete removes the version record. The typed rules
//! (dedup, compatibility, modes) live in `crate::schema`.

use serde::{Deserialize, Serialize};

use super::{keys, Meta, MetaError, MetaOp};

/// One schema as registered: its text exactly as the first client sent it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaRecord {
    pub id: i32,
    /// `AVRO`, `JSON` or `PROTOBUF`.
    pub schema_type: String,
    pub schema: String,
    #[serde(default)]
    pub references: Vec<SchemaReference>,
}

/// A named dependency of a schema on a version of another subject (Confluent's reference).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SchemaReference {
    pub name: String,
    pub subject: String,
    pub version: i32,
}

/// Version `version` of `subject` is schema `id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectVersionRecord {
    pub subject: String,
    pub version: i32,
    pub id: i32,
    /// Soft-deleted: hidden from listings and lookups unless asked for.
    #[serde(default)]
    pub deleted: bool,
}

/// A subject's (or the registry's) own settings; `None` falls back to the next scope up.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaScopeConfig {
    #[serde(default)]
    pub compatibility: Option<String>,
    #[serde(default)]
    pub mode: Option<String>,
}

impl Meta {
    /// Stores a new subject version, and its schema when the id is new, in one durable batch.
    pub fn put_subject_version(
        &self,
        new_schema: Option<&SchemaRecord>,
        version: &SubjectVersionRecord,
    ) -> Result<(), MetaError> {
        let mut ops = Vec::with_capacity(2);
        if let Some(schema) = new_schema {
            ops.push(MetaOp::Put(keys::schema(schema.id), super::encode(schema)));
        }
        ops.push(MetaOp::Put(
            keys::subject_version(&version.subject, version.version),
            super::encode(version),
        ));
        self.store.apply(ops)?;
        self.store.flush()
    }

    /// Rewrites (soft delete) or removes (hard delete, `remove`) subject versions at once.
    pub fn update_subject_versions(
        &self,
        rewrite: &[SubjectVersionRecord],
        remove: &[(String, i32)],
    ) -> Result<(), MetaError> {
        let mut ops: Vec<MetaOp> = rewrite
            .iter()
            .map(|v| {
                MetaOp::Put(
                    keys::subject_version(&v.subject, v.version),
                    super::encode(v),
                )
            })
            .collect();
        ops.extend(
            remove
                .iter()
                .map(|(s, v)| MetaOp::Delete(keys::subject_version(s, *v))),
        );
        self.store.apply(ops)?;
        self.store.flush()
    }

    pub fn schemas(&self) -> Result<Vec<SchemaRecord>, MetaError> {
        self.scan(&keys::schemas())
    }

    pub fn subject_versions(&self) -> Result<Vec<SubjectVersionRecord>, MetaError> {
        self.scan(&keys::subject_versions())
    }

    /// The global settings (`None`) or one subject's.
    pub fn schema_config(&self, subject: Option<&str>) -> Result<SchemaScopeConfig, MetaError> {
        Ok(self.get(&keys::schema_config(subject))?.unwrap_or_default())
    }

    /// Every subject that has settings of its own, with them.
    pub fn subject_schema_configs(&self) -> Result<Vec<(String, SchemaScopeConfig)>, MetaError> {
        self.store
            .scan_prefix(&keys::schema_configs())?
            .into_iter()
            .map(|(k, v)| {
                let subject = keys::parts(&k)
                    .and_then(|p| p.into_iter().next())
                    .map(|p| String::from_utf8_lossy(&p).into_owned())
                    .unwrap_or_default();
                Ok((subject, super::decode(&k, &v)?))
            })
            .collect()
    }

    /// Stores a scope's settings; an all-`None` value removes the record.
    pub fn put_schema_config(
        &self,
        subject: Option<&str>,
        config: &SchemaScopeConfig,
    ) -> Result<(), MetaError> {
        let key = keys::schema_config(subject);
        let op = if config == &SchemaScopeConfig::default() {
            MetaOp::Delete(key)
        } else {
            MetaOp::Put(key, super::encode(config))
        };
        self.store.apply(vec![op])?;
        self.store.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_versions_and_configs_round_trip() {
        let meta = Meta::in_memory();
        let schema = SchemaRecord {
            id: 1,
            schema_type: "AVRO".into(),
            schema: "\"string\"".into(),
            references: vec![],
        };
        let v1 = SubjectVersionRecord {
            subject: "a\0b".into(),
            version: 1,
            id: 1,
            deleted: false,
        };
        meta.put_subject_version(Some(&schema), &v1).unwrap();
        assert_eq!(meta.schemas().unwrap(), vec![schema]);
        assert_eq!(meta.subject_versions().unwrap(), vec![v1.clone()]);
        meta.update_subject_versions(&[], &[("a\0b".into(), 1)])
            .unwrap();
        assert!(meta.subject_versions().unwrap().is_empty());

        let config = SchemaScopeConfig {
            compatibility: Some("FULL".into()),
            mode: None,
        };
        meta.put_schema_config(Some("a\0b"), &config).unwrap();
        meta.put_schema_config(None, &config).unwrap();
        assert_eq!(
            meta.subject_schema_configs().unwrap(),
            vec![("a\0b".to_string(), config.clone())]
        );
        meta.put_schema_config(Some("a\0b"), &SchemaScopeConfig::default())
            .unwrap();
        assert!(meta.subject_schema_configs().unwrap().is_empty());
        assert_eq!(meta.schema_config(None).unwrap(), config);
    }
}
