//! The AMQP 0-9-1 adapter: RabbitMQ clients talk to the core through it, unchanged.
//!
//! Layers, bottom up: [`codec`] (pure framing over bytes, `amq-protocol` for method and header
//! encoding), [`convert`] (the boundary with the core: message <-> record mapping, field tables
//! <-> JSON, core errors -> reply codes), [`handlers`] (exchange and queue methods as calls on
//! the core's router), [`channel`] (publish assembly, consumers, acks, prefetch, confirms) and
//! [`connection`] (handshake, authentication, tuning, heartbeats, the frame loop and the single
//! socket writer, connection.blocked under a resource alarm), plus [`reply_to`] (direct
//! reply-to, which bypasses queues). Exchanges, queues and bindings live in the core (`broker::routing`,
//! `broker::queue`); this module never stores a message itself.

pub mod channel;
pub mod codec;
pub mod connection;
pub mod convert;
pub mod handlers;
pub mod reply_to;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::broker::BrokerCore;
use crate::config::AmqpSettings;

/// Accepts AMQP connections until shutdown.
pub async fn serve(
    listener: TcpListener,
    core: BrokerCore,
    settings: AmqpSettings,
    shutdown: watch::Receiver<bool>,
) {
    let settings = Arc::new(settings);
    if settings.disk_free_limit_bytes > 0 {
        tokio::spawn(disk_monitor(
            core.clone(),
            settings.disk_free_limit_bytes,
            shutdown.clone(),
        ));
    }
    super::accept_loop("amqp", listener, shutdown, move |stream, peer, shutdown| {
        connection::serve(stream, peer, core.clone(), settings.clone(), shutdown)
    })
    .await
}

/// Raises the core's resource alarm while the data directory's disk has less than `limit`
/// bytes free, and clears it when space comes back (checked every second). Edge-triggered, so
/// an alarm raised by someone else is left alone while the disk state does not change.
async fn disk_monitor(core: BrokerCore, limit: u64, mut shutdown: watch::Receiver<bool>) {
    let mut low = false;
    loop {
        match free_bytes(core.data_dir()) {
            Some(free) if (free < limit) != low => {
                low = free < limit;
                if low {
                    tracing::warn!(free, limit, "disk alarm: publishers are blocked");
                    core.router().set_resource_alarm(Some("low on disk".into()));
                } else {
                    tracing::info!(free, limit, "disk alarm cleared");
                    core.router().set_resource_alarm(None);
                }
            }
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = crate::util::stopped(&mut shutdown) => return,
        }
    }
}

/// Bytes available to unprivileged users on the file system holding `path`.
fn free_bytes(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` is writable memory of the right
    // type; statvfs initializes it when it returns 0.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: rc == 0, so statvfs filled the struct.
    let st = unsafe { st.assume_init() };
    // The field types differ between platforms (u32 on some 32-bit targets).
    #[allow(clippy::useless_conversion)]
    let (avail, frsize) = (u64::from(st.f_bavail), u64::from(st.f_frsize));
    Some(avail.saturating_mul(frsize))
}
