//! Stored users, their per-vhost permissions and the vhosts created at run time.
//!
//! A user record never holds a clear password: it holds RabbitMQ's salted SHA-256 password
//! hash (what PLAIN, AMQPLAIN and HTTP basic auth check) and, when the password was known when
//! the user was written, Kafka's SCRAM credentials for SHA-256 and SHA-512 (salt, iterations,
//! StoredKey, ServerKey), which is all a SCRAM server needs (RFC 5802). The typed logic lives in
//! `broker::users`; this file is only their storage.

use serde::{Deserialize, Serialize};

use super::{keys, Meta, MetaError, MetaOp};

/// One SCRAM credential (RFC 5802 section 3), as Kafka stores it in ZooKeeper/KRaft.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramRecord {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    /// RabbitMQ's `rabbit_password_hashing_sha256` form: base64(salt(4) ++ SHA-256(salt ++
    /// password)). Empty: no password login (certificate-only users, as RabbitMQ allows).
    pub password_hash: String,
    /// RabbitMQ tags: `administrator`, `monitoring`, `management`, or any other word.
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub scram_sha_256: Option<ScramRecord>,
    #[serde(default)]
    pub scram_sha_512: Option<ScramRecord>,
    /// Set on the default users (`guest`, `admin`) while they still have their default
    /// passwords: they may log in from loopback addresses only.
    #[serde(default)]
    pub loopback_only: bool,
}

/// RabbitMQ's three permission regexes of one user in one vhost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermissionRecord {
    pub vhost: String,
    pub user: String,
    pub configure: String,
    pub write: String,
    pub read: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VhostRecord {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

impl Meta {
    pub fn put_user(&self, user: &UserRecord) -> Result<(), MetaError> {
        self.put(keys::user(&user.name), user)?;
        self.store.flush()
    }
    pub fn users(&self) -> Result<Vec<UserRecord>, MetaError> {
        self.scan(&keys::users())
    }
    /// Deletes the user and every permission it holds, in one batch.
    pub fn delete_user(&self, name: &str) -> Result<(), MetaError> {
        let mut ops = vec![MetaOp::Delete(keys::user(name))];
        for p in self.permissions()? {
            if p.user == name {
                ops.push(MetaOp::Delete(keys::permission(&p.vhost, &p.user)));
            }
        }
        self.store.apply(ops)?;
        self.store.flush()
    }

    pub fn put_permission(&self, p: &PermissionRecord) -> Result<(), MetaError> {
        self.put(keys::permission(&p.vhost, &p.user), p)?;
        self.store.flush()
    }
    pub fn delete_permission(&self, vhost: &str, user: &str) -> Result<(), MetaError> {
        self.store.delete(&keys::permission(vhost, user))?;
        self.store.flush()
    }
    pub fn permissions(&self) -> Result<Vec<PermissionRecord>, MetaError> {
        self.scan(&keys::permissions())
    }

    pub fn put_vhost(&self, v: &VhostRecord) -> Result<(), MetaError> {
        self.put(keys::vhost(&v.name), v)?;
        self.store.flush()
    }
    /// Deletes the vhost record and every permission on it.
    pub fn delete_vhost(&self, name: &str) -> Result<(), MetaError> {
        let mut ops = vec![MetaOp::Delete(keys::vhost(name))];
        for p in self.permissions()? {
            if p.vhost == name {
                ops.push(MetaOp::Delete(keys::permission(&p.vhost, &p.user)));
            }
        }
        self.store.apply(ops)?;
        self.store.flush()
    }
    pub fn vhosts(&self) -> Result<Vec<VhostRecord>, MetaError> {
        self.scan(&keys::vhosts())
    }

    pub fn users_initialised(&self) -> Result<bool, MetaError> {
        Ok(self.store.get(&keys::users_initialised())?.is_some())
    }
    pub fn mark_users_initialised(&self) -> Result<(), MetaError> {
        self.store.put(&keys::users_initialised(), b"1")?;
        self.store.flush()
    }
}
