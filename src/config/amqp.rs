//! `[amqp]`: the AMQP 0-9-1 listener's settings, with RabbitMQ's names and defaults (moved out
//! of `config.rs`, which only assembles the tree). Users and permissions given here seed the one
//! user store (`[[users]]` is the newer spelling).

use serde::{Deserialize, Serialize};

/// One AMQP user (PLAIN / AMQPLAIN credentials).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpUser {
    pub name: String,
    pub password: String,
}

/// Which vhosts one user may open (RabbitMQ's per-vhost permissions, without the
/// configure/write/read patterns).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpPermission {
    pub user: String,
    pub vhosts: Vec<String>,
}

/// `[amqp]`: AMQP 0-9-1 behaviour, with RabbitMQ's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpSettings {
    /// Legacy: users allowed to connect, now folded into `[[users]]` (still accepted). Default
    /// one user `guest` with password `guest`, created loopback-only on the first start.
    pub users: Vec<AmqpUser>,
    /// Users who may connect only from a loopback address (RabbitMQ's `loopback_users`).
    /// Default `["guest"]`.
    pub loopback_users: Vec<String>,
    /// Largest frame the server offers in connection.tune, in bytes (min 4096). Default 131072.
    pub frame_max: u32,
    /// Most channels per connection offered in connection.tune. Default 2047.
    pub channel_max: u16,
    /// Heartbeat interval offered in connection.tune, in seconds; 0 disables. Default 60.
    pub heartbeat: u16,
    /// Free space below which the data directory's disk raises the resource alarm, blocking
    /// publishing connections with connection.blocked until it recovers (RabbitMQ's
    /// `disk_free_limit`); 0 disables the check. Default 50000000 (50 MB).
    pub disk_free_limit_bytes: u64,
    /// Resident memory, as a fraction of the RAM available to the process (physical memory or
    /// a smaller cgroup limit), above which the resource alarm blocks publishing connections
    /// (RabbitMQ's `vm_memory_high_watermark.relative`; above 1 counts as 1, 0 blocks all
    /// publishing). Default 0.6.
    pub vm_memory_high_watermark: f64,
    /// The same limit in bytes; when non-zero it replaces the fraction (RabbitMQ's
    /// `vm_memory_high_watermark.absolute`). Default 0 (use the fraction).
    pub vm_memory_high_watermark_absolute: u64,
    /// Virtual hosts clients may open; objects (exchanges, queues, bindings) in one are
    /// invisible from the others, and each has its own `amq.*` exchanges. Opening any other
    /// vhost gets connection.close 530. Default `["/"]`.
    pub vhosts: Vec<String>,
    /// Users limited to some vhosts; opening another one gets connection.close 530. A user
    /// without an entry may open every vhost. Default none.
    pub permissions: Vec<AmqpPermission>,
    /// Most open AMQP connections (RabbitMQ's `connection_max`); the protocol header of a
    /// connection beyond it is answered with connection.close 530. 0 = no limit. Default 10000.
    pub max_connections: usize,
    /// Milliseconds a client gets from accept to connection.open-ok (protocol header, start-ok,
    /// tune-ok, open); slower ones are dropped (RabbitMQ's `handshake_timeout`). Default 10000.
    pub handshake_timeout_ms: u64,

    // --- resource limits (issue 12; see `broker::limits`) ---------------------------------
    /// Most queues over all vhosts (RabbitMQ's `cluster_queue_limit`); a declare beyond it gets
    /// channel.close 406 "queue limit in cluster (N) is reached". 0 = no limit. Default 10000.
    pub max_queues: usize,
}

impl Default for AmqpSettings {
    fn default() -> Self {
        Self {
            users: vec![AmqpUser {
                name: "guest".into(),
                password: "guest".into(),
            }],
            loopback_users: vec!["guest".into()],
            frame_max: 131_072,
            channel_max: 2047,
            heartbeat: 60,
            disk_free_limit_bytes: 50_000_000,
            vm_memory_high_watermark: 0.6,
            vm_memory_high_watermark_absolute: 0,
            vhosts: vec!["/".into()],
            permissions: Vec::new(),
            max_connections: 10_000,
            handshake_timeout_ms: 10_000,
            max_queues: crate::broker::ResourceLimits::DEFAULT_MAX_QUEUES,
        }
    }
}

// --- observe (H3): the `[observe]` settings live with the subsystem -------------------------------
