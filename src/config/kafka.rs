//! `[kafka]`: the Kafka protocol's settings, with Kafka's names and defaults (moved out of
//! `config.rs`, which only assembles the tree).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{AnonymousAccess, SASL_MECHANISMS};

/// `[kafka]`: Kafka protocol behaviour.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSettings {
    /// Create a topic when a client asks for it in Metadata or produces to it. Default true.
    pub auto_create_topics: bool,
    /// Partitions of an auto-created topic. Default 1.
    pub default_partitions: u32,
    /// Largest request accepted; checked before the body is read. Default 100 MiB (Kafka's
    /// `socket.request.max.bytes`).
    pub max_request_bytes: usize,
    /// `group.initial.rebalance.delay.ms`: how long the first rebalance of an empty group waits
    /// for more members. Default 3000 (Kafka's).
    pub group_initial_rebalance_delay_ms: u64,
    /// `group.min.session.timeout.ms`. Default 6000.
    pub group_min_session_timeout_ms: u64,
    /// `group.max.session.timeout.ms`. Default 1800000.
    pub group_max_session_timeout_ms: u64,
    /// `group.consumer.session.timeout.ms`: a KIP-848 (`group.protocol=consumer`) member that
    /// sends no ConsumerGroupHeartbeat for this long is fenced. Default 45000.
    pub group_consumer_session_timeout_ms: u64,
    /// `group.consumer.heartbeat.interval.ms`: how often KIP-848 members heartbeat; a
    /// rebalance takes a few of these. Default 5000.
    pub group_consumer_heartbeat_interval_ms: u64,
    /// Most open Kafka connections; a connection beyond it is closed as soon as it is
    /// accepted (Kafka's `max.connections`). 0 = no limit. Default 10000.
    pub max_connections: usize,
    /// `connections.max.idle.ms`: a connection that completes no request for this long, with
    /// none in flight, is closed. Also bounds a request that trickles in. Default 600000.
    pub connections_max_idle_ms: u64,
    /// `fetch.max.bytes`: most record bytes one fetch response carries, whatever the client
    /// asks (the first batch still comes whole, so a consumer always progresses). Bounds what
    /// a client that asks for huge fetches and never reads them can make the broker buffer
    /// (32 requests in flight x this). Default 57671680 (55 MiB, Kafka's).
    pub fetch_max_bytes: usize,
    /// Serve fetched record bytes on plaintext listeners with `sendfile(2)` straight from the
    /// segment files (TLS listeners always copy). Off: every fetch reads the bytes into memory
    /// first. Default true.
    pub zero_copy_fetch: bool,
    /// TCP congestion control for Kafka connections from this machine (a loopback peer), set
    /// with `TCP_CONGESTION` when they are accepted. Such a connection has no network to share,
    /// yet a pacing algorithm (BBR, a common system default) still spaces its sends with a kernel
    /// timer: on a 2-core VM that held a zero-copy fetch to ~1.5 GB/s at 0.45 s of broker CPU
    /// per GB, against 2.6–4 GB/s at 0.2 s with `reno` (which every user may set). Empty keeps
    /// the system's choice; remote peers always keep it. Default `"reno"`.
    pub loopback_congestion_control: String,
    /// `max.incremental.fetch.session.cache.slots`: most KIP-227 fetch sessions kept; a new
    /// one evicts the least recently used. 0 disables sessions (clients keep sending full
    /// fetches). Default 1000 (Kafka's).
    pub max_incremental_fetch_session_cache_slots: usize,

    // --- resource limits (issue 12; see `broker::limits`) ---------------------------------
    /// Largest `max.message.bytes` a client may give a topic (CreateTopics, AlterConfigs,
    /// IncrementalAlterConfigs); more is refused with POLICY_VIOLATION. Default 10485760.
    pub max_message_bytes_limit: usize,
    /// Most partitions over all topics; creating more is refused with POLICY_VIOLATION before
    /// anything is written. 0 = no limit. Default 10000.
    pub max_partitions: usize,

    // --- security (issue 13; see `config/security.rs` and docs/security.md) ----------------
    /// `sasl.enabled.mechanisms`: what SaslHandshake accepts, of `PLAIN`, `SCRAM-SHA-256` and
    /// `SCRAM-SHA-512`, on both Kafka listeners (SASL_PLAINTEXT and SASL_SSL). Empty: SASL is
    /// off. Default all three.
    pub sasl_enabled_mechanisms: Vec<String>,
    /// `connections.max.reauth.ms` (KIP-368): a SASL session lasts this long; the client must
    /// re-authenticate on the same connection before it ends, or the connection is closed at
    /// its next request. 0 = sessions never expire. Default 0 (Kafka's).
    pub connections_max_reauth_ms: u64,
    /// Who may use Kafka without SASL (or a verified client certificate): `"loopback"` (peers
    /// on this machine only; default), `true` (everyone) or `false` (nobody).
    pub allow_anonymous: AnonymousAccess,
    /// Enforce Kafka ACLs on every Kafka request (Kafka's `authorizer.class.name` set to its
    /// standard authorizer). Off: every accepted client may do everything and the ACL APIs
    /// answer SECURITY_DISABLED, as Kafka without an authorizer. Default false.
    pub acl_enabled: bool,
    /// `super.users`: principals (`User:admin`) that bypass ACLs; a list or Kafka's
    /// `"User:a;User:b"` string. Default none.
    #[serde(deserialize_with = "super_users")]
    pub super_users: Vec<String>,
    /// `allow.everyone.if.no.acl.found`: with ACLs on, allow a request on a resource no ACL
    /// covers. Default false (Kafka's).
    pub allow_everyone_if_no_acl_found: bool,
}

/// `super_users` as a TOML list or Kafka's `;`-separated string (what an environment variable
/// gives).
fn super_users<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        List(Vec<String>),
        Joined(String),
    }
    let list = match Form::deserialize(d)? {
        Form::List(list) => list,
        Form::Joined(joined) => joined.split(';').map(str::to_string).collect(),
    };
    Ok(list
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect())
}

impl KafkaSettings {
    /// The first setting that is out of range: its key and what it must be.
    pub(super) fn problem(&self) -> Option<(&'static str, &'static str)> {
        if self.default_partitions == 0 {
            return Some(("kafka.default_partitions", "must be at least 1"));
        }
        if self.group_min_session_timeout_ms > self.group_max_session_timeout_ms {
            return Some((
                "kafka.group_min_session_timeout_ms",
                "must not exceed kafka.group_max_session_timeout_ms",
            ));
        }
        if self.group_consumer_heartbeat_interval_ms == 0
            || self.group_consumer_heartbeat_interval_ms >= self.group_consumer_session_timeout_ms
        {
            return Some((
                "kafka.group_consumer_heartbeat_interval_ms",
                "must be above 0 and below kafka.group_consumer_session_timeout_ms",
            ));
        }
        let cc = &self.loopback_congestion_control;
        // TCP_CA_NAME_MAX is 16 with the terminating NUL.
        if cc.len() > 15 || !cc.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Some((
                "kafka.loopback_congestion_control",
                "must be empty or a congestion control name such as reno or cubic",
            ));
        }
        if self.fetch_max_bytes < 1024 {
            return Some(("kafka.fetch_max_bytes", "must be at least 1024"));
        }
        if self.max_request_bytes < 1024 {
            return Some(("kafka.max_request_bytes", "must be at least 1024"));
        }
        if self.connections_max_idle_ms == 0 {
            return Some(("kafka.connections_max_idle_ms", "must be at least 1"));
        }
        None
    }

    /// What ACL enforcement needs besides the bindings.
    pub fn acl_policy(&self) -> crate::broker::acls::AclPolicy {
        crate::broker::acls::AclPolicy {
            super_users: self.super_users.clone(),
            allow_everyone_if_no_acl_found: self.allow_everyone_if_no_acl_found,
        }
    }

    pub fn group_settings(&self) -> crate::broker::GroupSettings {
        crate::broker::GroupSettings {
            initial_rebalance_delay: Duration::from_millis(self.group_initial_rebalance_delay_ms),
            min_session_timeout: Duration::from_millis(self.group_min_session_timeout_ms),
            max_session_timeout: Duration::from_millis(self.group_max_session_timeout_ms),
            consumer_session_timeout: Duration::from_millis(self.group_consumer_session_timeout_ms),
            consumer_heartbeat_interval: Duration::from_millis(
                self.group_consumer_heartbeat_interval_ms,
            ),
            ..crate::broker::GroupSettings::default()
        }
    }
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            auto_create_topics: true,
            default_partitions: 1,
            max_request_bytes: 100 * 1024 * 1024,
            group_initial_rebalance_delay_ms: 3000,
            group_min_session_timeout_ms: 6000,
            group_max_session_timeout_ms: 1_800_000,
            group_consumer_session_timeout_ms: 45_000,
            group_consumer_heartbeat_interval_ms: 5_000,
            max_connections: 10_000,
            connections_max_idle_ms: 600_000,
            fetch_max_bytes: 55 * 1024 * 1024,
            zero_copy_fetch: true,
            loopback_congestion_control: "reno".into(),
            max_incremental_fetch_session_cache_slots: 1000,
            max_message_bytes_limit: crate::broker::ResourceLimits::DEFAULT_MAX_MESSAGE_BYTES_LIMIT,
            max_partitions: crate::broker::ResourceLimits::DEFAULT_MAX_PARTITIONS,
            sasl_enabled_mechanisms: SASL_MECHANISMS.iter().map(|m| m.to_string()).collect(),
            connections_max_reauth_ms: 0,
            allow_anonymous: AnonymousAccess::Loopback,
            acl_enabled: false,
            super_users: Vec::new(),
            allow_everyone_if_no_acl_found: false,
        }
    }
}
