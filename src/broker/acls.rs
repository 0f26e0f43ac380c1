//! Kafka ACLs: the model of Kafka's `AclAuthorizer` (`StandardAuthorizer` in KRaft), its
//! matching rules, and the bindings stored in metadata and mirrored in memory.
//!
//! A binding says that a principal (`User:name`, or `User:*` for everyone) from a host (`*` or
//! an IP) is allowed or denied an operation on resources of one type whose name matches a
//! pattern (literal, `*` meaning every name, or a prefix). A request is decided as Kafka
//! decides it ([`AclStore::authorize`]): super users pass; a resource no binding covers is
//! allowed only with `allow.everyone.if.no.acl.found`; a matching DENY wins over any ALLOW;
//! otherwise a matching ALLOW is needed. DESCRIBE is implied by READ, WRITE, DELETE and ALTER,
//! DESCRIBE_CONFIGS by ALTER_CONFIGS, and ALL covers every operation (implication applies to
//! ALLOW bindings only, as in Kafka: denying READ does not deny DESCRIBE).
//!
//! Whether ACLs are enforced at all is `kafka.acl_enabled`, set once at start
//! ([`AclStore::set_enforcement`]) so that the Kafka adapter and the AMQP adapter (for a
//! topic's exchange face) read the same switch. The Kafka adapter does not cache decisions (a
//! check is a scan of the bindings under a read lock); the AMQP adapter caches per connection
//! and drops its cache when [`AclStore::generation`] moves.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

use crate::meta::{AclRecord, Meta, MetaError};

/// Kafka's `ResourceType` codes.
pub mod resource {
    pub const ANY: i8 = 1;
    pub const TOPIC: i8 = 2;
    pub const GROUP: i8 = 3;
    pub const CLUSTER: i8 = 4;
    pub const TRANSACTIONAL_ID: i8 = 5;
}

/// Kafka's `PatternType` codes.
pub mod pattern {
    pub const ANY: i8 = 1;
    pub const MATCH: i8 = 2;
    pub const LITERAL: i8 = 3;
    pub const PREFIXED: i8 = 4;
}

/// Kafka's `AclOperation` codes.
pub mod operation {
    pub const ANY: i8 = 1;
    pub const ALL: i8 = 2;
    pub const READ: i8 = 3;
    pub const WRITE: i8 = 4;
    pub const CREATE: i8 = 5;
    pub const DELETE: i8 = 6;
    pub const ALTER: i8 = 7;
    pub const DESCRIBE: i8 = 8;
    pub const CLUSTER_ACTION: i8 = 9;
    pub const DESCRIBE_CONFIGS: i8 = 10;
    pub const ALTER_CONFIGS: i8 = 11;
    pub const IDEMPOTENT_WRITE: i8 = 12;
}

/// Kafka's `AclPermissionType` codes.
pub mod permission {
    pub const ANY: i8 = 1;
    pub const DENY: i8 = 2;
    pub const ALLOW: i8 = 3;
}

/// The one name of the cluster resource.
pub const CLUSTER_NAME: &str = "kafka-cluster";
/// The literal resource name that matches every name of its type.
pub const WILDCARD: &str = "*";
/// The principal of a client that neither used SASL nor sent a client certificate.
pub const ANONYMOUS: &str = "User:ANONYMOUS";

/// How the adapter enforces ACLs (Kafka's `super.users` and `allow.everyone.if.no.acl.found`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AclPolicy {
    pub super_users: Vec<String>,
    pub allow_everyone_if_no_acl_found: bool,
}

/// A DescribeAcls / DeleteAcls filter; `None` fields match anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AclFilter {
    pub resource_type: i8,
    pub resource_name: Option<String>,
    pub pattern_type: i8,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: i8,
    pub permission: i8,
}

/// Why a binding cannot be created (Kafka answers INVALID_REQUEST with the message).
pub fn validate(acl: &AclRecord) -> Result<(), String> {
    if !(resource::TOPIC..=resource::TRANSACTIONAL_ID).contains(&acl.resource_type) {
        return Err(format!(
            "resource type {} is not supported",
            acl.resource_type
        ));
    }
    if acl.pattern_type != pattern::LITERAL && acl.pattern_type != pattern::PREFIXED {
        return Err("pattern type must be LITERAL or PREFIXED".into());
    }
    if acl.resource_name.is_empty() {
        return Err("resource name must not be empty".into());
    }
    if acl.resource_type == resource::CLUSTER
        && (acl.resource_name != CLUSTER_NAME || acl.pattern_type != pattern::LITERAL)
    {
        return Err(format!(
            "the cluster resource is the literal name '{CLUSTER_NAME}'"
        ));
    }
    match acl.principal.split_once(':') {
        Some((kind, name)) if !kind.is_empty() && !name.is_empty() => {}
        _ => return Err(format!("principal '{}' is not Type:name", acl.principal)),
    }
    if acl.host != WILDCARD && acl.host.parse::<IpAddr>().is_err() {
        return Err(format!(
            "host '{}' is neither '*' nor an IP address",
            acl.host
        ));
    }
    if !(operation::ALL..=operation::IDEMPOTENT_WRITE).contains(&acl.operation) {
        return Err(format!("operation {} is not supported", acl.operation));
    }
    if acl.permission != permission::ALLOW && acl.permission != permission::DENY {
        return Err("permission type must be ALLOW or DENY".into());
    }
    Ok(())
}

/// Does a binding's resource pattern cover the resource `name`?
fn pattern_covers(acl: &AclRecord, name: &str) -> bool {
    match acl.pattern_type {
        pattern::LITERAL => acl.resource_name == name || acl.resource_name == WILDCARD,
        pattern::PREFIXED => name.starts_with(acl.resource_name.as_str()),
        _ => false,
    }
}

/// Does a binding with operation `granted` match a request for `wanted`?
fn operation_matches(granted: i8, wanted: i8, perm: i8) -> bool {
    if granted == wanted || granted == operation::ALL {
        return true;
    }
    if perm != permission::ALLOW {
        return false;
    }
    match wanted {
        operation::DESCRIBE => matches!(
            granted,
            operation::READ | operation::WRITE | operation::DELETE | operation::ALTER
        ),
        operation::DESCRIBE_CONFIGS => granted == operation::ALTER_CONFIGS,
        _ => false,
    }
}

impl AclFilter {
    /// Kafka's `AclBindingFilter.matches`.
    pub fn matches(&self, acl: &AclRecord) -> bool {
        if self.resource_type != resource::ANY && self.resource_type != acl.resource_type {
            return false;
        }
        let name_ok = match (&self.resource_name, self.pattern_type) {
            (None, pattern::ANY | pattern::MATCH) => true,
            (None, p) => p == acl.pattern_type,
            (Some(name), pattern::ANY) => &acl.resource_name == name,
            (Some(name), pattern::MATCH) => pattern_covers(acl, name),
            (Some(name), p) => p == acl.pattern_type && &acl.resource_name == name,
        };
        name_ok
            && self.principal.as_ref().is_none_or(|p| p == &acl.principal)
            && self.host.as_ref().is_none_or(|h| h == &acl.host)
            && (self.operation == operation::ANY || self.operation == acl.operation)
            && (self.permission == permission::ANY || self.permission == acl.permission)
    }
}

/// The Kafka ACL bindings of one broker (see the module doc).
pub struct AclStore {
    meta: Meta,
    bindings: RwLock<Vec<AclRecord>>,
    /// `Some` while ACLs are enforced (`kafka.acl_enabled`).
    enforcement: RwLock<Option<AclPolicy>>,
    generation: AtomicU64,
}

impl AclStore {
    pub fn open(meta: Meta) -> Result<Self, MetaError> {
        let mut bindings = Vec::new();
        for acl in meta.acls()? {
            match validate(&acl) {
                Ok(()) => bindings.push(acl),
                Err(e) => tracing::error!(?acl, error = %e, "stored Kafka ACL ignored"),
            }
        }
        Ok(Self {
            meta,
            bindings: RwLock::new(bindings),
            enforcement: RwLock::new(None),
            generation: AtomicU64::new(0),
        })
    }

    /// Turns enforcement on with `policy`, or off with `None`.
    pub fn set_enforcement(&self, policy: Option<AclPolicy>) {
        *self.enforcement.write() = policy;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The policy while ACLs are enforced.
    pub fn enforcement(&self) -> Option<AclPolicy> {
        self.enforcement.read().clone()
    }

    /// Moves on every change of bindings or enforcement.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Stores the bindings (each already validated); one already present stays once.
    pub fn create(&self, acls: &[AclRecord]) -> Result<(), MetaError> {
        let mut bindings = self.bindings.write();
        let new: Vec<AclRecord> = acls
            .iter()
            .filter(|a| !bindings.contains(a))
            .cloned()
            .collect();
        self.meta.put_acls(&new)?;
        for acl in new {
            if !bindings.contains(&acl) {
                bindings.push(acl);
            }
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    pub fn describe(&self, filter: &AclFilter) -> Vec<AclRecord> {
        self.bindings
            .read()
            .iter()
            .filter(|a| filter.matches(a))
            .cloned()
            .collect()
    }

    /// Deletes and returns the bindings the filter matches.
    pub fn delete(&self, filter: &AclFilter) -> Result<Vec<AclRecord>, MetaError> {
        let mut bindings = self.bindings.write();
        let (gone, kept): (Vec<AclRecord>, Vec<AclRecord>) =
            bindings.iter().cloned().partition(|a| filter.matches(a));
        if gone.is_empty() {
            return Ok(gone);
        }
        self.meta.delete_acls(&gone)?;
        *bindings = kept;
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(gone)
    }

    /// Kafka's authorization decision for `principal` from `host` doing `op` on the resource
    /// `(resource_type, name)` (see the module doc).
    pub fn authorize(
        &self,
        policy: &AclPolicy,
        principal: &str,
        host: IpAddr,
        op: i8,
        resource_type: i8,
        name: &str,
    ) -> bool {
        if policy.super_users.iter().any(|s| s == principal) {
            return true;
        }
        let bindings = self.bindings.read();
        let mut covered = false;
        let mut allowed = false;
        for acl in bindings
            .iter()
            .filter(|a| a.resource_type == resource_type && pattern_covers(a, name))
        {
            covered = true;
            let applies = (acl.principal == principal || acl.principal == "User:*")
                && (acl.host == WILDCARD || acl.host.parse::<IpAddr>().ok() == Some(host))
                && operation_matches(acl.operation, op, acl.permission);
            if !applies {
                continue;
            }
            if acl.permission == permission::DENY {
                return false;
            }
            allowed = true;
        }
        if !covered {
            return policy.allow_everyone_if_no_acl_found;
        }
        allowed
    }

    /// Whether `principal` may do `op` on at least one resource of `resource_type` (Kafka's
    /// `authorizeByResourceType`, used for idempotent producers: WRITE on any topic). Any
    /// ALLOW binding of the principal that no literal-wildcard DENY overrides counts.
    pub fn authorize_any(
        &self,
        policy: &AclPolicy,
        principal: &str,
        host: IpAddr,
        op: i8,
        resource_type: i8,
    ) -> bool {
        if policy.super_users.iter().any(|s| s == principal) {
            return true;
        }
        let bindings = self.bindings.read();
        let applies = |a: &&AclRecord| {
            a.resource_type == resource_type
                && (a.principal == principal || a.principal == "User:*")
                && (a.host == WILDCARD || a.host.parse::<IpAddr>().ok() == Some(host))
                && operation_matches(a.operation, op, a.permission)
        };
        let denied_everywhere = bindings.iter().filter(applies).any(|a| {
            a.permission == permission::DENY
                && a.pattern_type == pattern::LITERAL
                && a.resource_name == WILDCARD
        });
        if denied_everywhere {
            return false;
        }
        if bindings
            .iter()
            .filter(applies)
            .any(|a| a.permission == permission::ALLOW)
        {
            return true;
        }
        policy.allow_everyone_if_no_acl_found
            && !bindings.iter().any(|a| a.resource_type == resource_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta::in_memory()
    }

    fn acl(rt: i8, pt: i8, name: &str, principal: &str, op: i8, perm: i8) -> AclRecord {
        AclRecord {
            resource_type: rt,
            resource_name: name.into(),
            pattern_type: pt,
            principal: principal.into(),
            host: "*".into(),
            operation: op,
            permission: perm,
        }
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn allowed(store: &AclStore, policy: &AclPolicy, who: &str, op: i8, topic: &str) -> bool {
        store.authorize(policy, who, LOCAL, op, resource::TOPIC, topic)
    }

    #[test]
    fn literal_prefixed_and_wildcard_patterns_cover_the_right_names() {
        let store = AclStore::open(meta()).unwrap();
        store
            .create(&[
                acl(
                    resource::TOPIC,
                    pattern::LITERAL,
                    "orders",
                    "User:alice",
                    operation::READ,
                    permission::ALLOW,
                ),
                acl(
                    resource::TOPIC,
                    pattern::PREFIXED,
                    "logs.",
                    "User:alice",
                    operation::WRITE,
                    permission::ALLOW,
                ),
                acl(
                    resource::TOPIC,
                    pattern::LITERAL,
                    "*",
                    "User:bob",
                    operation::ALL,
                    permission::ALLOW,
                ),
            ])
            .unwrap();
        let p = AclPolicy::default();
        assert!(allowed(&store, &p, "User:alice", operation::READ, "orders"));
        assert!(!allowed(
            &store,
            &p,
            "User:alice",
            operation::READ,
            "orders2"
        ));
        assert!(allowed(
            &store,
            &p,
            "User:alice",
            operation::WRITE,
            "logs.app"
        ));
        assert!(!allowed(&store, &p, "User:alice", operation::WRITE, "logs"));
        assert!(allowed(
            &store,
            &p,
            "User:bob",
            operation::DELETE,
            "anything"
        ));
        assert!(!allowed(
            &store,
            &p,
            "User:carol",
            operation::READ,
            "orders"
        ));
    }

    #[test]
    fn deny_wins_and_implications_apply_to_allow_only() {
        let store = AclStore::open(meta()).unwrap();
        store
            .create(&[
                acl(
                    resource::TOPIC,
                    pattern::LITERAL,
                    "*",
                    "User:*",
                    operation::READ,
                    permission::ALLOW,
                ),
                acl(
                    resource::TOPIC,
                    pattern::PREFIXED,
                    "secret",
                    "User:eve",
                    operation::READ,
                    permission::DENY,
                ),
                acl(
                    resource::TOPIC,
                    pattern::LITERAL,
                    "cfg",
                    "User:ops",
                    operation::ALTER_CONFIGS,
                    permission::ALLOW,
                ),
            ])
            .unwrap();
        let p = AclPolicy::default();
        assert!(allowed(&store, &p, "User:eve", operation::READ, "public"));
        assert!(!allowed(
            &store,
            &p,
            "User:eve",
            operation::READ,
            "secret.pay"
        ));
        // READ implies DESCRIBE; a DENY of READ does not deny DESCRIBE.
        assert!(allowed(
            &store,
            &p,
            "User:eve",
            operation::DESCRIBE,
            "secret.pay"
        ));
        assert!(!allowed(&store, &p, "User:eve", operation::WRITE, "public"));
        assert!(allowed(
            &store,
            &p,
            "User:ops",
            operation::DESCRIBE_CONFIGS,
            "cfg"
        ));
        assert!(!allowed(&store, &p, "User:ops", operation::ALTER, "cfg"));
    }

    #[test]
    fn super_users_hosts_and_uncovered_resources() {
        let store = AclStore::open(meta()).unwrap();
        let mut only_one_host = acl(
            resource::GROUP,
            pattern::LITERAL,
            "g",
            "User:a",
            operation::READ,
            permission::ALLOW,
        );
        only_one_host.host = "10.0.0.1".into();
        store.create(&[only_one_host]).unwrap();
        let strict = AclPolicy::default();
        let open = AclPolicy {
            super_users: vec!["User:root".into()],
            allow_everyone_if_no_acl_found: true,
        };
        let g = |p: &AclPolicy, who: &str, host: IpAddr, name: &str| {
            store.authorize(p, who, host, operation::READ, resource::GROUP, name)
        };
        assert!(!g(&strict, "User:a", LOCAL, "g"));
        assert!(g(&strict, "User:a", "10.0.0.1".parse().unwrap(), "g"));
        assert!(!g(&strict, "User:a", LOCAL, "other"));
        assert!(g(&open, "User:a", LOCAL, "other"));
        assert!(
            !g(&open, "User:b", LOCAL, "g"),
            "a covered resource ignores the fallback"
        );
        assert!(g(&open, "User:root", LOCAL, "g"));
    }

    #[test]
    fn filters_match_as_kafka_describes_them_and_delete_persists() {
        let m = meta();
        let store = AclStore::open(m.clone()).unwrap();
        let lit = acl(
            resource::TOPIC,
            pattern::LITERAL,
            "orders",
            "User:a",
            operation::READ,
            permission::ALLOW,
        );
        let pre = acl(
            resource::TOPIC,
            pattern::PREFIXED,
            "ord",
            "User:b",
            operation::WRITE,
            permission::ALLOW,
        );
        let grp = acl(
            resource::GROUP,
            pattern::LITERAL,
            "orders",
            "User:a",
            operation::READ,
            permission::ALLOW,
        );
        store
            .create(&[lit.clone(), pre.clone(), grp.clone(), lit.clone()])
            .unwrap();
        let any = AclFilter {
            resource_type: resource::ANY,
            resource_name: None,
            pattern_type: pattern::ANY,
            principal: None,
            host: None,
            operation: operation::ANY,
            permission: permission::ANY,
        };
        assert_eq!(
            store.describe(&any).len(),
            3,
            "a repeated binding is stored once"
        );
        let matching = AclFilter {
            resource_type: resource::TOPIC,
            resource_name: Some("orders".into()),
            pattern_type: pattern::MATCH,
            ..any.clone()
        };
        assert_eq!(store.describe(&matching), vec![lit.clone(), pre.clone()]);
        let exact = AclFilter {
            pattern_type: pattern::ANY,
            ..matching.clone()
        };
        assert_eq!(store.describe(&exact), vec![lit.clone()]);
        let by_user = AclFilter {
            principal: Some("User:a".into()),
            ..any.clone()
        };
        assert_eq!(store.delete(&by_user).unwrap(), vec![lit, grp]);
        let reopened = AclStore::open(m).unwrap();
        assert_eq!(reopened.describe(&any), vec![pre]);
    }

    #[test]
    fn invalid_bindings_are_refused() {
        let ok = acl(
            resource::TOPIC,
            pattern::LITERAL,
            "t",
            "User:a",
            operation::READ,
            permission::ALLOW,
        );
        assert!(validate(&ok).is_ok());
        assert!(validate(&AclRecord {
            principal: "alice".into(),
            ..ok.clone()
        })
        .is_err());
        assert!(validate(&AclRecord {
            host: "somewhere".into(),
            ..ok.clone()
        })
        .is_err());
        assert!(validate(&AclRecord {
            pattern_type: pattern::MATCH,
            ..ok.clone()
        })
        .is_err());
        assert!(validate(&AclRecord {
            operation: operation::ANY,
            ..ok.clone()
        })
        .is_err());
        assert!(validate(&AclRecord {
            resource_type: resource::CLUSTER,
            ..ok.clone()
        })
        .is_err());
        assert!(validate(&AclRecord {
            resource_type: resource::CLUSTER,
            resource_name: CLUSTER_NAME.into(),
            ..ok
        })
        .is_ok());
    }

    #[test]
    fn idempotent_write_falls_back_to_write_on_any_topic() {
        let store = AclStore::open(meta()).unwrap();
        store
            .create(&[acl(
                resource::TOPIC,
                pattern::PREFIXED,
                "app.",
                "User:a",
                operation::WRITE,
                permission::ALLOW,
            )])
            .unwrap();
        let p = AclPolicy::default();
        assert!(store.authorize_any(&p, "User:a", LOCAL, operation::WRITE, resource::TOPIC));
        assert!(!store.authorize_any(&p, "User:b", LOCAL, operation::WRITE, resource::TOPIC));
    }
}
