//! `[native]`: settings of the native protocol listeners (their addresses are `native_listen`,
//! QUIC, and `native_tcp_listen`, TCP); both use the same limits.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NativeSettings {
    /// Largest frame (one request or response) accepted, in bytes. Default 16 MiB.
    pub max_frame_bytes: usize,
    /// Bidirectional streams (requests in flight, subscriptions) one connection may have open
    /// at once. Default 4096: a slow subscription must never hold up a publish.
    pub max_concurrent_streams: u32,
    /// A connection with no traffic for this long is closed, in ms. Clients keep idle
    /// connections alive with QUIC pings. Default 30000.
    pub idle_timeout_ms: u64,
    /// Unsettled deliveries per subscription when the client asks for 0. Default 100.
    pub default_prefetch: u32,
    /// Connections served at once (0 = no limit); one more is refused with QUIC's
    /// CONNECTION_REFUSED and counted in `ferry_connections_refused_total`. Default 10000.
    pub max_connections: usize,
    /// The TCP listener (`native_tcp_listen`): a connection must finish its TLS handshake
    /// within this many ms or is dropped. (QUIC bounds its handshake with `idle_timeout_ms`.)
    /// Default 10000.
    pub handshake_timeout_ms: u64,
}

impl NativeSettings {
    /// The first problem with these settings, as (key, message).
    pub fn problem(&self) -> Option<(&'static str, &'static str)> {
        if self.max_frame_bytes < 1024 || self.max_frame_bytes > 1 << 30 {
            return Some((
                "native.max_frame_bytes",
                "must be between 1024 and 1073741824",
            ));
        }
        if self.max_concurrent_streams == 0 {
            return Some(("native.max_concurrent_streams", "must be at least 1"));
        }
        if self.handshake_timeout_ms == 0 {
            return Some(("native.handshake_timeout_ms", "must be at least 1"));
        }
        if self.default_prefetch == 0 || self.default_prefetch > MAX_PREFETCH {
            return Some(("native.default_prefetch", "must be between 1 and 65535"));
        }
        None
    }
}

/// The largest prefetch a subscription gets (AMQP's limit too); a larger ask is clamped.
pub const MAX_PREFETCH: u32 = 65_535;

impl Default for NativeSettings {
    fn default() -> Self {
        Self {
            max_frame_bytes: crate::proto::DEFAULT_MAX_FRAME_BYTES,
            max_concurrent_streams: 4096,
            idle_timeout_ms: 30_000,
            default_prefetch: 100,
            max_connections: 10_000,
            handshake_timeout_ms: 10_000,
        }
    }
}
