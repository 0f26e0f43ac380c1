//! The registry's state machine: subjects, versions and schema ids, loaded from `meta` at
//! open and kept in memory behind one lock (registrations are rare next to reads, and a read
//! is a map lookup). Every change is written durably to `meta` before memory changes, so a
//! crash leaves the stored side ahead and the next open reads it back.
//!
//! The same schema (same type, canonical text and references) gets the same id under every
//! subject, as in Confluent's registry, and ids are never reused: a schema record outlives the
//! versions pointing at it, so an id a consumer cached always names the same schema.

use std::collections::{BTreeMap, HashMap};

use parking_lot::Mutex;

use super::compat::{self, ResolvedReference};
use super::parse;
use super::types::{Compatibility, Mode, RegistryError, SchemaType};
use crate::meta::{
    Meta, MetaError, SchemaRecord, SchemaReference, SchemaScopeConfig, SubjectVersionRecord,
};

/// A schema as a client submits it for registration, lookup or a compatibility test.
#[derive(Clone, Debug)]
pub struct NewSchema {
    pub schema_type: SchemaType,
    pub schema: String,
    pub references: Vec<SchemaReference>,
}

/// A schema the registry holds.
#[derive(Clone, Debug)]
pub struct StoredSchema {
    pub record: SchemaRecord,
    pub schema_type: SchemaType,
    pub canonical: String,
}

/// One version of a subject, with its schema.
#[derive(Clone, Debug)]
pub struct SubjectVersion {
    pub subject: String,
    pub version: i32,
    pub deleted: bool,
    pub schema: StoredSchema,
}

/// `latest` (or `-1`) or a version number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionRef {
    Latest,
    Number(i32),
}

impl VersionRef {
    pub fn parse(text: &str) -> Result<Self, RegistryError> {
        if text.eq_ignore_ascii_case("latest") || text == "-1" {
            return Ok(VersionRef::Latest);
        }
        match text.parse::<i32>() {
            Ok(n) if n >= 1 => Ok(VersionRef::Number(n)),
            _ => Err(RegistryError::InvalidVersion(text.to_string())),
        }
    }
}

type ContentKey = (SchemaType, String, Vec<SchemaReference>);

#[derive(Default)]
struct State {
    schemas: BTreeMap<i32, StoredSchema>,
    by_content: HashMap<ContentKey, i32>,
    /// Versions of each subject in ascending order, soft-deleted ones included.
    subjects: BTreeMap<String, Vec<SubjectVersionRecord>>,
    global: SchemaScopeConfig,
    subject_configs: HashMap<String, SchemaScopeConfig>,
}

/// The schema registry (Confluent Schema Registry's model) over the broker's metadata store.
pub struct SchemaRegistry {
    meta: Meta,
    state: Mutex<State>,
    /// Parsed schemas for validation on publish, by id.
    pub(super) prepared: super::validate::PreparedCache,
}

impl SchemaRegistry {
    /// Loads every stored schema, version and setting.
    pub fn open(meta: Meta) -> Result<Self, MetaError> {
        let mut state = State::default();
        for record in meta.schemas()? {
            // A record this build cannot read is kept on disk and skipped, not fatal: the
            // rest of the registry still serves.
            let Ok(schema_type) = SchemaType::parse(Some(&record.schema_type)) else {
                tracing::warn!(id = record.id, "stored schema of an unknown type skipped");
                continue;
            };
            let canonical = parse::canonical(schema_type, &record.schema)
                .unwrap_or_else(|_| record.schema.clone());
            state.by_content.insert(
                (schema_type, canonical.clone(), record.references.clone()),
                record.id,
            );
            state.schemas.insert(
                record.id,
                StoredSchema {
                    record,
                    schema_type,
                    canonical,
                },
            );
        }
        for version in meta.subject_versions()? {
            state
                .subjects
                .entry(version.subject.clone())
                .or_default()
                .push(version);
        }
        for versions in state.subjects.values_mut() {
            versions.sort_by_key(|v| v.version);
        }
        state.global = meta.schema_config(None)?;
        state.subject_configs = meta.subject_schema_configs()?.into_iter().collect();
        Ok(Self {
            meta,
            state: Mutex::new(state),
            prepared: Default::default(),
        })
    }

    /// The schema with this id, if any subject version (soft-deleted included) still names it.
    pub fn schema_by_id(&self, id: i32) -> Result<StoredSchema, RegistryError> {
        let state = self.state.lock();
        let named = state.subjects.values().flatten().any(|v| v.id == id);
        match state.schemas.get(&id) {
            Some(s) if named => Ok(s.clone()),
            _ => Err(RegistryError::SchemaNotFound(id.to_string())),
        }
    }

    /// The text of the schema a reference names.
    pub fn reference_schema(&self, reference: &SchemaReference) -> Option<ResolvedReference> {
        self.state.lock().reference_schema(reference)
    }

    /// Every (subject, version) naming schema `id`.
    pub fn versions_of_id(
        &self,
        id: i32,
        deleted: bool,
    ) -> Result<Vec<(String, i32)>, RegistryError> {
        let state = self.state.lock();
        if !state.schemas.contains_key(&id) {
            return Err(RegistryError::SchemaNotFound(id.to_string()));
        }
        let found: Vec<(String, i32)> = state
            .subjects
            .values()
            .flatten()
            .filter(|v| v.id == id && (deleted || !v.deleted))
            .map(|v| (v.subject.clone(), v.version))
            .collect();
        if found.is_empty() && !deleted {
            return Err(RegistryError::SchemaNotFound(id.to_string()));
        }
        Ok(found)
    }

    /// Subjects with at least one live version (or any version, `deleted`).
    pub fn subjects(&self, deleted: bool, prefix: &str) -> Vec<String> {
        let state = self.state.lock();
        state
            .subjects
            .iter()
            .filter(|(name, versions)| {
                name.starts_with(prefix) && versions.iter().any(|v| deleted || !v.deleted)
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    pub fn versions(&self, subject: &str, deleted: bool) -> Result<Vec<i32>, RegistryError> {
        let state = self.state.lock();
        let versions: Vec<i32> = state
            .subjects
            .get(subject)
            .into_iter()
            .flatten()
            .filter(|v| deleted || !v.deleted)
            .map(|v| v.version)
            .collect();
        if versions.is_empty() {
            return Err(RegistryError::SubjectNotFound(subject.to_string()));
        }
        Ok(versions)
    }

    pub fn version(
        &self,
        subject: &str,
        which: VersionRef,
        deleted: bool,
    ) -> Result<SubjectVersion, RegistryError> {
        let state = self.state.lock();
        let record = state.find_version(subject, which, deleted)?;
        state.subject_version(record)
    }

    /// Ids of the schemas whose references name `subject` version `which`.
    pub fn referenced_by(
        &self,
        subject: &str,
        which: VersionRef,
    ) -> Result<Vec<i32>, RegistryError> {
        let state = self.state.lock();
        let version = state.find_version(subject, which, true)?.version;
        Ok(state.referrers(subject, version))
    }

    /// Registers `schema` under `subject`: the existing version when the subject already
    /// holds it, else a new version after the compatibility check. `id` is honoured in
    /// IMPORT mode only.
    pub fn register(
        &self,
        subject: &str,
        schema: NewSchema,
        id: Option<i32>,
    ) -> Result<SubjectVersion, RegistryError> {
        let mut state = self.state.lock();
        let mode = state.mode(subject);
        if mode.read_only() {
            return Err(RegistryError::OperationNotPermitted(format!(
                "Subject {subject} is in read-only mode"
            )));
        }
        if id.is_some() && mode != Mode::Import {
            return Err(RegistryError::OperationNotPermitted(format!(
                "Subject {subject} is not in import mode: a schema id cannot be chosen"
            )));
        }
        let key = state.content_key(&schema)?;
        let existing_id = state.by_content.get(&key).copied();
        if let Some(found) = state.subjects.get(subject).and_then(|versions| {
            versions
                .iter()
                .rev()
                .find(|v| !v.deleted && Some(v.id) == existing_id)
        }) {
            let found = found.clone();
            return state.subject_version(&found);
        }
        if mode != Mode::Import {
            let details = state.compatibility_problems(subject, &key, None)?;
            if !details.is_empty() {
                return Err(RegistryError::Incompatible {
                    subject: subject.to_string(),
                    details,
                });
            }
        }
        let id = match (id, existing_id) {
            (Some(wanted), Some(have)) if wanted != have => {
                return Err(RegistryError::OperationNotPermitted(format!(
                    "this schema already has id {have}; it cannot be imported as {wanted}"
                )))
            }
            (Some(wanted), None) if state.schemas.contains_key(&wanted) => {
                return Err(RegistryError::OperationNotPermitted(format!(
                    "Overwrite new schema with id {wanted} is not permitted."
                )))
            }
            (Some(wanted), _) if wanted < 1 => {
                return Err(RegistryError::BadRequest(format!(
                    "invalid schema id {wanted}"
                )))
            }
            (Some(wanted), _) => wanted,
            (None, Some(have)) => have,
            (None, None) => state.schemas.keys().next_back().map_or(1, |max| max + 1),
        };
        let new_schema = (!state.schemas.contains_key(&id)).then(|| SchemaRecord {
            id,
            schema_type: schema.schema_type.as_str().to_string(),
            schema: schema.schema.clone(),
            references: schema.references.clone(),
        });
        let version = state
            .subjects
            .get(subject)
            .and_then(|v| v.last())
            .map_or(1, |v| v.version + 1);
        let record = SubjectVersionRecord {
            subject: subject.to_string(),
            version,
            id,
            deleted: false,
        };
        self.meta
            .put_subject_version(new_schema.as_ref(), &record)?;
        if let Some(new_schema) = new_schema {
            state.by_content.insert(key.clone(), id);
            state.schemas.insert(
                id,
                StoredSchema {
                    record: new_schema,
                    schema_type: key.0,
                    canonical: key.1,
                },
            );
        }
        state
            .subjects
            .entry(subject.to_string())
            .or_default()
            .push(record.clone());
        state.subject_version(&record)
    }

    /// The version of `subject` holding `schema`, newest first.
    pub fn lookup(
        &self,
        subject: &str,
        schema: &NewSchema,
        deleted: bool,
    ) -> Result<SubjectVersion, RegistryError> {
        let state = self.state.lock();
        let versions = state
            .subjects
            .get(subject)
            .filter(|versions| versions.iter().any(|v| deleted || !v.deleted))
            .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_string()))?;
        let key = state.content_key(schema)?;
        let id = state.by_content.get(&key).copied();
        let found = versions
            .iter()
            .rev()
            .find(|v| (deleted || !v.deleted) && Some(v.id) == id)
            .ok_or_else(|| RegistryError::SchemaNotFound(String::new()))?;
        state.subject_version(found)
    }

    /// Problems that keep `schema` from being registered under `subject` (empty: it may be),
    /// checked against `against` alone or, `None`, against what the subject's level asks for.
    pub fn test_compatibility(
        &self,
        subject: &str,
        schema: &NewSchema,
        against: Option<VersionRef>,
    ) -> Result<Vec<String>, RegistryError> {
        let state = self.state.lock();
        let key = state.content_key(schema)?;
        state.compatibility_problems(subject, &key, against)
    }

    /// Deletes every version of `subject`: softly, or (after a soft delete) for good.
    pub fn delete_subject(
        &self,
        subject: &str,
        permanent: bool,
    ) -> Result<Vec<i32>, RegistryError> {
        let mut state = self.state.lock();
        if state.mode(subject).read_only() {
            return Err(RegistryError::OperationNotPermitted(format!(
                "Subject {subject} is in read-only mode"
            )));
        }
        let versions = state
            .subjects
            .get(subject)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_string()))?;
        let numbers: Vec<i32> = versions.iter().map(|v| v.version).collect();
        if permanent {
            if versions.iter().any(|v| !v.deleted) {
                return Err(RegistryError::SubjectNotSoftDeleted(subject.to_string()));
            }
            for v in &versions {
                state.refuse_if_referenced(subject, v.version)?;
            }
            let remove: Vec<(String, i32)> =
                numbers.iter().map(|n| (subject.to_string(), *n)).collect();
            self.meta.update_subject_versions(&[], &remove)?;
            self.meta
                .put_schema_config(Some(subject), &SchemaScopeConfig::default())?;
            state.subjects.remove(subject);
            state.subject_configs.remove(subject);
            return Ok(numbers);
        }
        let live: Vec<SubjectVersionRecord> =
            versions.iter().filter(|v| !v.deleted).cloned().collect();
        if live.is_empty() {
            return Err(RegistryError::SubjectSoftDeleted(subject.to_string()));
        }
        for v in &live {
            state.refuse_if_referenced(subject, v.version)?;
        }
        let rewrite: Vec<SubjectVersionRecord> = live
            .into_iter()
            .map(|v| SubjectVersionRecord { deleted: true, ..v })
            .collect();
        self.meta.update_subject_versions(&rewrite, &[])?;
        let deleted: Vec<i32> = rewrite.iter().map(|v| v.version).collect();
        if let Some(stored) = state.subjects.get_mut(subject) {
            for v in stored.iter_mut() {
                v.deleted = true;
            }
        }
        Ok(deleted)
    }

    /// Deletes one version: softly, or (after a soft delete) for good.
    pub fn delete_version(
        &self,
        subject: &str,
        which: VersionRef,
        permanent: bool,
    ) -> Result<i32, RegistryError> {
        let mut state = self.state.lock();
        if state.mode(subject).read_only() {
            return Err(RegistryError::OperationNotPermitted(format!(
                "Subject {subject} is in read-only mode"
            )));
        }
        let record = state.find_version(subject, which, permanent)?.clone();
        let version = record.version;
        state.refuse_if_referenced(subject, version)?;
        if permanent {
            if !record.deleted {
                return Err(RegistryError::VersionNotSoftDeleted {
                    subject: subject.to_string(),
                    version,
                });
            }
            self.meta
                .update_subject_versions(&[], &[(subject.to_string(), version)])?;
            if let Some(stored) = state.subjects.get_mut(subject) {
                stored.retain(|v| v.version != version);
                if stored.is_empty() {
                    state.subjects.remove(subject);
                }
            }
            return Ok(version);
        }
        let rewritten = SubjectVersionRecord {
            deleted: true,
            ..record
        };
        self.meta.update_subject_versions(&[rewritten], &[])?;
        if let Some(v) = state
            .subjects
            .get_mut(subject)
            .and_then(|s| s.iter_mut().find(|v| v.version == version))
        {
            v.deleted = true;
        }
        Ok(version)
    }

    /// A scope's own settings: the registry's (`None`) or one subject's.
    pub fn scope_config(&self, subject: Option<&str>) -> SchemaScopeConfig {
        let state = self.state.lock();
        match subject {
            None => state.global.clone(),
            Some(s) => state.subject_configs.get(s).cloned().unwrap_or_default(),
        }
    }

    /// The level that applies to `subject` (its own, else the registry's, else BACKWARD).
    pub fn compatibility(&self, subject: &str) -> Compatibility {
        self.state.lock().compatibility(subject)
    }

    pub fn global_compatibility(&self) -> Compatibility {
        let state = self.state.lock();
        level_of(&state.global)
    }

    pub fn mode(&self, subject: Option<&str>) -> Mode {
        let state = self.state.lock();
        match subject {
            Some(s) => state.mode(s),
            None => mode_of(&state.global).unwrap_or(Mode::ReadWrite),
        }
    }

    /// Changes a scope's settings: `update` edits them, and the result is stored.
    pub fn update_config(
        &self,
        subject: Option<&str>,
        update: impl FnOnce(&mut SchemaScopeConfig),
    ) -> Result<SchemaScopeConfig, RegistryError> {
        let mut state = self.state.lock();
        let mut config = match subject {
            None => state.global.clone(),
            Some(s) => state.subject_configs.get(s).cloned().unwrap_or_default(),
        };
        update(&mut config);
        self.meta.put_schema_config(subject, &config)?;
        match subject {
            None => state.global = config.clone(),
            Some(s) if config == SchemaScopeConfig::default() => {
                state.subject_configs.remove(s);
            }
            Some(s) => {
                state.subject_configs.insert(s.to_string(), config.clone());
            }
        }
        Ok(config)
    }
}

fn level_of(config: &SchemaScopeConfig) -> Compatibility {
    config
        .compatibility
        .as_deref()
        .and_then(|c| Compatibility::parse(c).ok())
        .unwrap_or(Compatibility::DEFAULT)
}

fn mode_of(config: &SchemaScopeConfig) -> Option<Mode> {
    config.mode.as_deref().and_then(|m| Mode::parse(m).ok())
}

impl State {
    fn compatibility(&self, subject: &str) -> Compatibility {
        match self
            .subject_configs
            .get(subject)
            .and_then(|c| c.compatibility.as_deref())
        {
            Some(level) => Compatibility::parse(level).unwrap_or(Compatibility::DEFAULT),
            None => level_of(&self.global),
        }
    }

    fn mode(&self, subject: &str) -> Mode {
        self.subject_configs
            .get(subject)
            .and_then(mode_of)
            .or_else(|| mode_of(&self.global))
            .unwrap_or(Mode::ReadWrite)
    }

    fn find_version(
        &self,
        subject: &str,
        which: VersionRef,
        deleted: bool,
    ) -> Result<&SubjectVersionRecord, RegistryError> {
        let versions = self
            .subjects
            .get(subject)
            .filter(|versions| versions.iter().any(|v| deleted || !v.deleted))
            .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_string()))?;
        let mut visible = versions.iter().filter(|v| deleted || !v.deleted);
        let found = match which {
            VersionRef::Latest => visible.next_back(),
            VersionRef::Number(n) => visible.find(|v| v.version == n),
        };
        found.ok_or_else(|| {
            RegistryError::VersionNotFound(match which {
                VersionRef::Latest => "latest".into(),
                VersionRef::Number(n) => n.to_string(),
            })
        })
    }

    fn subject_version(
        &self,
        record: &SubjectVersionRecord,
    ) -> Result<SubjectVersion, RegistryError> {
        let schema = self
            .schemas
            .get(&record.id)
            .cloned()
            .ok_or_else(|| RegistryError::SchemaNotFound(record.id.to_string()))?;
        Ok(SubjectVersion {
            subject: record.subject.clone(),
            version: record.version,
            deleted: record.deleted,
            schema,
        })
    }

    /// Checks the references exist and gives the schema's identity.
    fn content_key(&self, schema: &NewSchema) -> Result<ContentKey, RegistryError> {
        for reference in &schema.references {
            let exists = self
                .subjects
                .get(&reference.subject)
                .is_some_and(|versions| versions.iter().any(|v| v.version == reference.version));
            if !exists {
                return Err(RegistryError::InvalidSchema(format!(
                    "reference '{}' names subject '{}' version {}, which does not exist",
                    reference.name, reference.subject, reference.version
                )));
            }
        }
        let canonical = parse::canonical(schema.schema_type, &schema.schema)?;
        compat::validate(
            (schema.schema_type, &schema.schema, &schema.references),
            &|r| self.reference_schema(r),
        )?;
        Ok((schema.schema_type, canonical, schema.references.clone()))
    }

    /// The text of the schema a reference names.
    fn reference_schema(&self, reference: &SchemaReference) -> Option<ResolvedReference> {
        self.subjects
            .get(&reference.subject)
            .and_then(|vs| vs.iter().find(|v| v.version == reference.version))
            .and_then(|v| self.schemas.get(&v.id))
            .map(|s| (s.record.schema.clone(), s.record.references.clone()))
    }

    fn referrers(&self, subject: &str, version: i32) -> Vec<i32> {
        let mut ids: Vec<i32> = self
            .subjects
            .values()
            .flatten()
            .filter(|v| !v.deleted)
            .filter(|v| {
                self.schemas.get(&v.id).is_some_and(|s| {
                    s.record
                        .references
                        .iter()
                        .any(|r| r.subject == subject && r.version == version)
                })
            })
            .map(|v| v.id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    fn refuse_if_referenced(&self, subject: &str, version: i32) -> Result<(), RegistryError> {
        if self.referrers(subject, version).is_empty() {
            Ok(())
        } else {
            Err(RegistryError::ReferenceExists {
                subject: subject.to_string(),
                version,
            })
        }
    }

    /// Why `candidate` may not follow the subject's live versions (or `against` alone).
    fn compatibility_problems(
        &self,
        subject: &str,
        candidate: &ContentKey,
        against: Option<VersionRef>,
    ) -> Result<Vec<String>, RegistryError> {
        let level = self.compatibility(subject);
        let live: Vec<&SubjectVersionRecord> = self
            .subjects
            .get(subject)
            .into_iter()
            .flatten()
            .filter(|v| !v.deleted)
            .collect();
        let previous: Vec<&SubjectVersionRecord> = match against {
            Some(which) => {
                if live.is_empty() {
                    return Err(RegistryError::SubjectNotFound(subject.to_string()));
                }
                vec![self.find_version(subject, which, false)?]
            }
            None if level.transitive() => live,
            None => live.last().copied().into_iter().collect(),
        };
        let mut problems = Vec::new();
        for old in previous {
            let Some(old_schema) = self.schemas.get(&old.id) else {
                continue;
            };
            let resolve = |r: &SchemaReference| self.reference_schema(r);
            for problem in compat::check(
                level,
                (candidate.0, &candidate.1, &candidate.2),
                (
                    old_schema.schema_type,
                    &old_schema.canonical,
                    &old_schema.record.references,
                ),
                &resolve,
            ) {
                problems.push(format!("version {}: {problem}", old.version));
            }
        }
        Ok(problems)
    }
}
