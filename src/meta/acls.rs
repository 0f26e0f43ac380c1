//! Stored Kafka ACL bindings (issue 13, step 4). One key per binding, made of every field, so
//! creating the same binding twice stores it once (as Kafka's authorizer does) and deleting one
//! is a single key. Fields are Kafka's wire codes, which Kafka keeps stable across releases; the
//! typed model and the matching rules live in `broker::acls`.

use serde::{Deserialize, Serialize};

use super::{keys, Meta, MetaError, MetaOp};

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AclRecord {
    /// Kafka's `ResourceType` code (topic 2, group 3, cluster 4, transactional id 5).
    pub resource_type: i8,
    pub resource_name: String,
    /// Kafka's `PatternType` code (literal 3, prefixed 4).
    pub pattern_type: i8,
    /// `User:name`, `User:*`.
    pub principal: String,
    /// `*` or an IP address.
    pub host: String,
    /// Kafka's `AclOperation` code.
    pub operation: i8,
    /// Kafka's `AclPermissionType` code (deny 2, allow 3).
    pub permission: i8,
}

impl AclRecord {
    fn key(&self) -> Vec<u8> {
        keys::acl(
            self.resource_type,
            self.pattern_type,
            &self.resource_name,
            &self.principal,
            &self.host,
            self.operation,
            self.permission,
        )
    }
}

impl Meta {
    /// Stores every binding in one batch.
    pub fn put_acls(&self, acls: &[AclRecord]) -> Result<(), MetaError> {
        let ops = acls
            .iter()
            .map(|a| MetaOp::Put(a.key(), super::encode(a)))
            .collect();
        self.store.apply(ops)?;
        self.store.flush()
    }
    /// Deletes every binding in one batch.
    pub fn delete_acls(&self, acls: &[AclRecord]) -> Result<(), MetaError> {
        let ops = acls.iter().map(|a| MetaOp::Delete(a.key())).collect();
        self.store.apply(ops)?;
        self.store.flush()
    }
    pub fn acls(&self) -> Result<Vec<AclRecord>, MetaError> {
        self.scan(&keys::acls())
    }
}
