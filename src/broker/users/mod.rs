//! The one user store of every protocol and the admin API.
//!
//! Users, their RabbitMQ-style per-vhost permissions and the vhosts created at run time live in
//! metadata (`meta::users`), mirrored here in memory so a login or a permission check costs no
//! I/O. Every protocol checks a password through [`UserStore::check_password`] (or the async
//! [`crate::broker::BrokerCore::login`], which adds the login guard's accounting): AMQP PLAIN and
//! AMQPLAIN, HTTP basic auth on the admin API, Kafka SASL/PLAIN and the native protocol.
//!
//! Every change bumps a generation number, so a connection that caches permission decisions
//! (AMQP publishes check the write permission per message) notices a revoke at its next use,
//! as RabbitMQ does.
//!
//! Users come from the configuration ([`Seed`], written at every start: the configuration is
//! authoritative for the users it names) and from the admin API at run time. On the first start
//! of a data directory, the default users the configuration leaves in place (`guest`/`guest`,
//! and the admin API's `admin`/`admin`) are created, marked loopback-only: they work from the
//! same machine only, as RabbitMQ's `guest` does, until their password is changed.

mod anonymous;
pub mod credentials;
pub mod permissions;
pub mod scram;
mod vhosts;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::meta::{Meta, MetaError, PermissionRecord, ScramRecord, UserRecord};
pub use anonymous::AnonymousAccess;
pub use credentials::ScramMechanism;
pub use permissions::{Access, Permission, Resource};

/// A user the admin API, the configuration or a protocol may create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Password {
    /// A clear password: hashed (and SCRAM credentials derived) before it is stored.
    Clear(String),
    /// RabbitMQ's SHA-256 password hash; SASL/SCRAM needs credentials set separately.
    Hash(String),
    /// No password: the user can only log in with a client certificate (EXTERNAL, mTLS).
    None,
}

/// One user the configuration names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfiguredUser {
    pub name: String,
    pub password: Password,
    pub tags: Vec<String>,
    /// Vhosts this user gets full permissions on; `None`: every configured vhost.
    pub vhosts: Option<Vec<String>>,
}

/// What the configuration says about users, applied at start by [`UserStore::seed`].
#[derive(Clone, Debug, Default)]
pub struct Seed {
    /// Written at every start (create or update).
    pub users: Vec<ConfiguredUser>,
    /// Created, loopback-only, on the first start of a data directory, each unless `users`
    /// names it.
    pub defaults: Vec<ConfiguredUser>,
    /// The configured vhosts (`amqp.vhosts`).
    pub vhosts: Vec<String>,
    /// Names that may log in from loopback addresses only (`amqp.loopback_users`).
    pub loopback_users: Vec<String>,
}

/// An authenticated user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub tags: Vec<String>,
}

impl UserInfo {
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
}

/// Why a login was refused. Callers tell the client only that it failed (and log the rest).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LoginRefused {
    #[error("unknown user or wrong password")]
    BadCredentials,
    #[error("user '{0}' may only connect from a loopback address")]
    LoopbackOnly(String),
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error(transparent)]
    Meta(#[from] MetaError),
}

#[derive(Default)]
struct State {
    users: HashMap<String, UserRecord>,
    permissions: HashMap<(String, String), Arc<Permission>>,
    loopback_users: HashSet<String>,
}

/// Users and permissions of one broker (see the module doc).
pub struct UserStore {
    meta: Meta,
    state: RwLock<State>,
    generation: AtomicU64,
    configured_vhosts: RwLock<Vec<String>>,
}

impl UserStore {
    /// Loads every stored user and permission.
    pub fn open(meta: Meta) -> Result<Self, MetaError> {
        let mut state = State::default();
        for u in meta.users()? {
            state.users.insert(u.name.clone(), u);
        }
        for p in meta.permissions()? {
            match Permission::compile(p.clone()) {
                Ok(compiled) => {
                    state
                        .permissions
                        .insert((p.vhost.clone(), p.user.clone()), Arc::new(compiled));
                }
                // Patterns are checked before they are stored; one that no longer compiles
                // (a newer regex crate is stricter) grants nothing rather than stopping start.
                Err(e) => {
                    tracing::error!(vhost = %p.vhost, user = %p.user, error = %e, "stored permission ignored")
                }
            }
        }
        Ok(Self {
            meta,
            state: RwLock::new(state),
            generation: AtomicU64::new(0),
            configured_vhosts: RwLock::new(Vec::new()),
        })
    }

    /// Bumped by every change to users or permissions.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// THE password check of every protocol: the user exists, has a password, the password
    /// matches, and a loopback-only user comes from a loopback address. `peer` is `None` for
    /// in-process callers, which count as loopback.
    pub fn check_password(
        &self,
        name: &str,
        password: &str,
        peer: Option<IpAddr>,
    ) -> Result<UserInfo, LoginRefused> {
        let state = self.state.read();
        let user = state.users.get(name).ok_or(LoginRefused::BadCredentials)?;
        if user.password_hash.is_empty()
            || !credentials::verify_password(&user.password_hash, password)
        {
            return Err(LoginRefused::BadCredentials);
        }
        Self::loopback_check(&state, user, peer)?;
        Ok(UserInfo {
            name: user.name.clone(),
            tags: user.tags.clone(),
        })
    }

    /// A user who proved who they are without a password (a verified client certificate, a
    /// completed SCRAM exchange): it must exist, and loopback rules still apply.
    pub fn check_identity(
        &self,
        name: &str,
        peer: Option<IpAddr>,
    ) -> Result<UserInfo, LoginRefused> {
        let state = self.state.read();
        let user = state.users.get(name).ok_or(LoginRefused::BadCredentials)?;
        Self::loopback_check(&state, user, peer)?;
        Ok(UserInfo {
            name: user.name.clone(),
            tags: user.tags.clone(),
        })
    }

    fn loopback_check(
        state: &State,
        user: &UserRecord,
        peer: Option<IpAddr>,
    ) -> Result<(), LoginRefused> {
        let restricted = user.loopback_only || state.loopback_users.contains(&user.name);
        if restricted && !peer.is_none_or(is_loopback) {
            return Err(LoginRefused::LoopbackOnly(user.name.clone()));
        }
        Ok(())
    }

    pub fn user(&self, name: &str) -> Option<UserRecord> {
        self.state.read().users.get(name).cloned()
    }

    /// Every user, by name.
    pub fn users(&self) -> Vec<UserRecord> {
        let mut users: Vec<UserRecord> = self.state.read().users.values().cloned().collect();
        users.sort_by(|a, b| a.name.cmp(&b.name));
        users
    }

    /// Whether any user would be accepted from a non-loopback address.
    pub fn any_remote_user(&self) -> bool {
        let state = self.state.read();
        state
            .users
            .values()
            .any(|u| !u.loopback_only && !state.loopback_users.contains(&u.name))
    }

    /// Creates or updates a user (RabbitMQ's `PUT /api/users/{name}`); returns whether it was
    /// created. Changing the password of a default user lifts its loopback-only mark.
    pub fn put_user(
        &self,
        name: &str,
        password: Password,
        tags: Vec<String>,
    ) -> Result<bool, UserError> {
        validate_user_name(name)?;
        let existing = self.user(name);
        let mut record = existing.clone().unwrap_or_else(|| UserRecord {
            name: name.to_string(),
            password_hash: String::new(),
            tags: Vec::new(),
            scram_sha_256: None,
            scram_sha_512: None,
            loopback_only: false,
        });
        record.tags = tags;
        match password {
            Password::Clear(p) => {
                let unchanged = !record.password_hash.is_empty()
                    && credentials::verify_password(&record.password_hash, &p)
                    && record.scram_sha_256.is_some()
                    && record.scram_sha_512.is_some();
                if !unchanged {
                    record.password_hash = credentials::hash_password(&p);
                    record.scram_sha_256 = Some(credentials::scram_credential(
                        ScramMechanism::Sha256,
                        &p,
                        credentials::DEFAULT_SCRAM_ITERATIONS,
                    ));
                    record.scram_sha_512 = Some(credentials::scram_credential(
                        ScramMechanism::Sha512,
                        &p,
                        credentials::DEFAULT_SCRAM_ITERATIONS,
                    ));
                    record.loopback_only = false;
                }
            }
            Password::Hash(h) => {
                if !credentials::is_valid_hash(&h) {
                    return Err(UserError::Invalid(
                        "password_hash must be base64 of a 4-byte salt and a SHA-256 digest \
                         (RabbitMQ's rabbit_password_hashing_sha256)"
                            .into(),
                    ));
                }
                if record.password_hash != h {
                    record.password_hash = h;
                    // The SCRAM credentials belonged to the old password.
                    record.scram_sha_256 = None;
                    record.scram_sha_512 = None;
                    record.loopback_only = false;
                }
            }
            Password::None => {
                if existing.is_none() {
                    record.password_hash = String::new();
                }
            }
        }
        self.store_user(record)?;
        Ok(existing.is_none())
    }

    fn store_user(&self, record: UserRecord) -> Result<(), UserError> {
        self.meta.put_user(&record)?;
        self.state.write().users.insert(record.name.clone(), record);
        self.changed();
        Ok(())
    }

    /// Sets (or with `None`, removes) one SCRAM credential of an existing user (Kafka's
    /// AlterUserScramCredentials).
    pub fn set_scram(
        &self,
        name: &str,
        mechanism: ScramMechanism,
        credential: Option<ScramRecord>,
    ) -> Result<(), UserError> {
        let mut record = self
            .user(name)
            .ok_or_else(|| UserError::NotFound(format!("user '{name}'")))?;
        match mechanism {
            ScramMechanism::Sha256 => record.scram_sha_256 = credential,
            ScramMechanism::Sha512 => record.scram_sha_512 = credential,
        }
        self.store_user(record)
    }

    /// The SCRAM credential of a user, if it has one for `mechanism`.
    pub fn scram(&self, name: &str, mechanism: ScramMechanism) -> Option<ScramRecord> {
        let state = self.state.read();
        let user = state.users.get(name)?;
        match mechanism {
            ScramMechanism::Sha256 => user.scram_sha_256.clone(),
            ScramMechanism::Sha512 => user.scram_sha_512.clone(),
        }
    }

    pub fn delete_user(&self, name: &str) -> Result<(), UserError> {
        if self.user(name).is_none() {
            return Err(UserError::NotFound(format!("user '{name}'")));
        }
        self.meta.delete_user(name)?;
        let mut state = self.state.write();
        state.users.remove(name);
        state.permissions.retain(|(_, user), _| user != name);
        drop(state);
        self.changed();
        Ok(())
    }

    /// Sets a user's permissions on a vhost (RabbitMQ's `PUT /api/permissions/{vhost}/{user}`).
    pub fn set_permission(&self, record: PermissionRecord) -> Result<(), UserError> {
        if self.user(&record.user).is_none() {
            return Err(UserError::NotFound(format!("user '{}'", record.user)));
        }
        let compiled = Permission::compile(record.clone()).map_err(UserError::Invalid)?;
        self.meta.put_permission(&record)?;
        self.state
            .write()
            .permissions
            .insert((record.vhost, record.user), Arc::new(compiled));
        self.changed();
        Ok(())
    }

    pub fn clear_permission(&self, vhost: &str, user: &str) -> Result<(), UserError> {
        let key = (vhost.to_string(), user.to_string());
        if !self.state.read().permissions.contains_key(&key) {
            return Err(UserError::NotFound(format!(
                "permissions of user '{user}' in vhost '{vhost}'"
            )));
        }
        self.meta.delete_permission(vhost, user)?;
        self.state.write().permissions.remove(&key);
        self.changed();
        Ok(())
    }

    /// Every permission, by vhost then user.
    pub fn permissions(&self) -> Vec<PermissionRecord> {
        let mut all: Vec<PermissionRecord> = self
            .state
            .read()
            .permissions
            .values()
            .map(|p| p.record.clone())
            .collect();
        all.sort_by(|a, b| (&a.vhost, &a.user).cmp(&(&b.vhost, &b.user)));
        all
    }

    pub fn permission(&self, vhost: &str, user: &str) -> Option<Arc<Permission>> {
        self.state
            .read()
            .permissions
            .get(&(vhost.to_string(), user.to_string()))
            .cloned()
    }

    /// Whether `user` may open `vhost` at all (RabbitMQ: it has a permission entry there).
    pub fn may_open_vhost(&self, vhost: &str, user: &str) -> bool {
        self.permission(vhost, user).is_some()
    }

    /// Whether `user` may do `access` on the named resource in `vhost`.
    pub fn allowed(
        &self,
        vhost: &str,
        user: &str,
        access: Access,
        resource: Resource,
        name: &str,
    ) -> bool {
        self.permission(vhost, user)
            .is_some_and(|p| p.allows(access, resource, name))
    }

    /// Drops the in-memory permissions of a deleted vhost (metadata already forgot them).
    fn forget_vhost(&self, vhost: &str) {
        self.state
            .write()
            .permissions
            .retain(|(v, _), _| v != vhost);
        self.changed();
    }

    fn grant_all(&self, vhost: &str, user: &str) -> Result<(), UserError> {
        self.set_permission(PermissionRecord {
            vhost: vhost.to_string(),
            user: user.to_string(),
            configure: ".*".into(),
            write: ".*".into(),
            read: ".*".into(),
        })
    }

    /// Applies the configuration (see [`Seed`] and the module doc).
    pub fn seed(&self, seed: &Seed) -> Result<(), UserError> {
        self.state.write().loopback_users = seed.loopback_users.iter().cloned().collect();
        *self.configured_vhosts.write() = seed.vhosts.clone();
        for u in &seed.users {
            let created = self.put_user(&u.name, u.password.clone(), u.tags.clone())?;
            match &u.vhosts {
                // An explicit list (legacy `amqp.permissions`) is applied at every start.
                Some(vhosts) => {
                    for v in vhosts {
                        self.grant_all(v, &u.name)?;
                    }
                }
                // Otherwise only a new user gets every configured vhost, so permissions changed
                // through the API survive a restart.
                None if created => {
                    for v in &seed.vhosts {
                        self.grant_all(v, &u.name)?;
                    }
                }
                None => {}
            }
        }
        if !self.meta.users_initialised()? {
            for u in &seed.defaults {
                if self.user(&u.name).is_some() || seed.users.iter().any(|c| c.name == u.name) {
                    continue;
                }
                self.put_user(&u.name, u.password.clone(), u.tags.clone())?;
                if let Some(mut record) = self.user(&u.name) {
                    record.loopback_only = true;
                    self.store_user(record)?;
                }
                for v in u.vhosts.as_ref().unwrap_or(&seed.vhosts) {
                    self.grant_all(v, &u.name)?;
                }
            }
        }
        self.meta.mark_users_initialised()?;
        Ok(())
    }
}

/// A loopback peer, including an IPv4 loopback address seen through a dual-stack socket
/// (`::ffff:127.0.0.1`).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

fn validate_user_name(name: &str) -> Result<(), UserError> {
    if name.is_empty() {
        return Err(UserError::Invalid("user names must not be empty".into()));
    }
    if name.len() > 255 {
        return Err(UserError::Invalid(
            "user names are at most 255 bytes".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> UserStore {
        UserStore::open(Meta::in_memory()).unwrap()
    }

    fn configured(name: &str, password: &str) -> ConfiguredUser {
        ConfiguredUser {
            name: name.into(),
            password: Password::Clear(password.into()),
            tags: vec!["administrator".into()],
            vhosts: None,
        }
    }

    #[test]
    fn stored_user_holds_no_clear_password() {
        let users = store();
        users
            .put_user("alice", Password::Clear("wonderland".into()), vec![])
            .unwrap();
        let record = users.user("alice").unwrap();
        let json = serde_json::to_string(&record).unwrap();
        assert!(!json.contains("wonderland"), "{json}");
        assert!(record.scram_sha_256.is_some() && record.scram_sha_512.is_some());
        assert!(users.check_password("alice", "wonderland", None).is_ok());
        assert_eq!(
            users.check_password("alice", "nope", None),
            Err(LoginRefused::BadCredentials)
        );
        assert_eq!(
            users.check_password("bob", "wonderland", None),
            Err(LoginRefused::BadCredentials)
        );
    }

    #[test]
    fn default_users_are_loopback_only_and_created_once() {
        let meta = Meta::in_memory();
        let seed = Seed {
            defaults: vec![configured("guest", "guest")],
            vhosts: vec!["/".into()],
            ..Seed::default()
        };
        let users = UserStore::open(meta.clone()).unwrap();
        users.seed(&seed).unwrap();
        let remote: IpAddr = "10.1.2.3".parse().unwrap();
        let local: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(
            users.check_password("guest", "guest", Some(remote)),
            Err(LoginRefused::LoopbackOnly("guest".into()))
        );
        assert!(users.check_password("guest", "guest", Some(local)).is_ok());
        assert!(users.may_open_vhost("/", "guest"));
        // A new password lifts the restriction.
        users
            .put_user("guest", Password::Clear("long-secret".into()), vec![])
            .unwrap();
        assert!(users
            .check_password("guest", "long-secret", Some(remote))
            .is_ok());
        // Deleted defaults stay deleted at the next start.
        users.delete_user("guest").unwrap();
        let again = UserStore::open(meta).unwrap();
        again.seed(&seed).unwrap();
        assert!(again.user("guest").is_none());
    }

    #[test]
    fn permission_changes_bump_the_generation() {
        let users = store();
        users
            .seed(&Seed {
                users: vec![configured("app", "pw")],
                vhosts: vec!["/".into()],
                ..Seed::default()
            })
            .unwrap();
        assert!(users.allowed("/", "app", Access::Write, Resource::Exchange, "x"));
        let before = users.generation();
        users.clear_permission("/", "app").unwrap();
        assert!(users.generation() > before);
        assert!(!users.allowed("/", "app", Access::Write, Resource::Exchange, "x"));
        assert!(users
            .set_permission(PermissionRecord {
                vhost: "/".into(),
                user: "nobody".into(),
                configure: ".*".into(),
                write: ".*".into(),
                read: ".*".into(),
            })
            .is_err());
    }
}
