//! Schemas (issue 18): a registry that speaks Confluent Schema Registry's model, so the
//! serializers teams already use (confluent-kafka's Avro, JSON Schema and Protobuf serdes)
//! register and fetch schemas from Ferry unchanged.
//!
//! [`registry::SchemaRegistry`] holds subjects, versions and ids over the broker's metadata
//! store (durable, ids stable across restarts); [`parse`] checks a schema text and gives its
//! canonical form; [`compat`] decides whether a new version may follow the earlier ones;
//! [`types`] has the vocabulary and the errors with Confluent's codes; [`validate`] makes the
//! registry the core's validator on publish (JSON payloads with jsonschema, [`json_check`] for schemas with references, and
//! [`avro_walk`] for Avro ones). The REST routes live in
//! `observe::admin::schema_registry`, behind the admin API's credentials.
//!
//! The registry sits beside the protocol adapters: it reads the core's metadata store and
//! nothing above it.

pub mod avro_walk;
pub mod compat;
pub mod json_check;
pub mod parse;
pub mod registry;
pub mod types;
pub mod validate;

pub use registry::{NewSchema, SchemaRegistry, StoredSchema, SubjectVersion, VersionRef};
pub use types::{Compatibility, Mode, RegistryError, SchemaType};
