//! Resource alarms: the memory high watermark and the free-disk limit, RabbitMQ's two reasons to
//! block publishers.
//!
//! One monitor task per broker samples the process's resident memory (`/proc/self/statm`) and
//! the free space of the data directory's file system (`statvfs`) every second, and raises or
//! clears the core's single resource alarm (the router's `set_resource_alarm`); the protocol
//! adapters react to that alarm (AMQP sends connection.blocked and stops reading
//! publishing connections). Both resources feed one decision so that clearing one never clears
//! an alarm the other still holds. The monitor is edge-triggered: it only touches the alarm when
//! its own verdict changes, so an alarm raised by someone else (an operator, a test) stays put
//! while the resources do not move.
//!
//! The memory limit follows RabbitMQ's `vm_memory_high_watermark`: a fraction of the RAM
//! available to the process (physical memory, or a smaller cgroup v2 `memory.max`), or an
//! absolute byte count; a fraction of 0 raises the alarm at once (RabbitMQ's way to stop all
//! publishing). It can be changed at run time through [`Limits`] (see
//! `Broker::set_memory_high_watermark`), which the monitor applies immediately. Off Linux the
//! resident size is unknown and only the disk alarm works.

use std::path::Path;
use std::time::Duration;

use tokio::sync::watch;

use crate::broker::BrokerCore;

/// How often resources are sampled.
const INTERVAL: Duration = Duration::from_secs(1);

/// The blocked reasons RabbitMQ sends in connection.blocked.
pub const LOW_ON_MEMORY: &str = "low on memory";
pub const LOW_ON_DISK: &str = "low on disk";

/// Where the memory alarm goes off.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Watermark {
    /// A fraction of the memory available to the process (values above 1 count as 1, as in
    /// RabbitMQ).
    Relative(f64),
    /// Bytes of resident memory (capped at the memory available, as in RabbitMQ).
    Absolute(u64),
}

impl Watermark {
    /// The configured watermark (`amqp.vm_memory_high_watermark` and
    /// `amqp.vm_memory_high_watermark_absolute`): the absolute one when set (non-zero bytes),
    /// else the fraction.
    pub fn configured(fraction: f64, absolute_bytes: u64) -> Self {
        if absolute_bytes > 0 {
            Watermark::Absolute(absolute_bytes)
        } else {
            Watermark::Relative(fraction)
        }
    }

    /// The limit in bytes, given the memory available (`None` when unknown: a fraction of an
    /// unknown total is no limit at all).
    pub fn limit(self, available: Option<u64>) -> Option<u64> {
        match self {
            Watermark::Absolute(b) => Some(available.map_or(b, |t| b.min(t))),
            Watermark::Relative(f) => {
                let f = if f.is_finite() {
                    f.clamp(0.0, 1.0)
                } else {
                    1.0
                };
                available.map(|t| (t as f64 * f) as u64)
            }
        }
    }
}

/// What the monitor checks against; changed at run time through a `watch` channel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    pub memory: Watermark,
    /// Free bytes below which the disk alarm goes off; 0 disables the disk check.
    pub disk_free_limit: u64,
}

impl Limits {
    /// The limits as configured: the memory watermark as a fraction of the memory available
    /// or in bytes (non-zero bytes win), and the free-disk floor in bytes.
    pub fn configured(memory_fraction: f64, memory_bytes: u64, disk_free_limit: u64) -> Self {
        Limits {
            memory: Watermark::configured(memory_fraction, memory_bytes),
            disk_free_limit,
        }
    }
}

/// The monitor's verdict from one sample.
fn verdict(rss: Option<u64>, memory_limit: Option<u64>, disk_low: bool) -> Option<String> {
    let memory_high = matches!((rss, memory_limit), (Some(r), Some(l)) if r > l);
    match (memory_high, disk_low) {
        (true, _) => Some(LOW_ON_MEMORY.into()),
        (false, true) => Some(LOW_ON_DISK.into()),
        (false, false) => None,
    }
}

/// Samples memory and disk until shutdown, raising and clearing the core's resource alarm.
pub async fn monitor(
    core: BrokerCore,
    mut limits: watch::Receiver<Limits>,
    mut shutdown: watch::Receiver<bool>,
) {
    let available = available_memory();
    let mut last: Option<String> = None;
    let mut logged_limit = None;
    loop {
        let now = *limits.borrow_and_update();
        let memory_limit = now.memory.limit(available);
        if logged_limit != Some(memory_limit) {
            tracing::info!(
                limit = memory_limit,
                available,
                watermark = ?now.memory,
                "memory high watermark set"
            );
            logged_limit = Some(memory_limit);
        }
        let disk_low = now.disk_free_limit > 0
            && free_bytes(core.data_dir()).is_some_and(|free| free < now.disk_free_limit);
        let rss = resident_memory_bytes();
        let next = verdict(rss, memory_limit, disk_low);
        if next != last {
            match &next {
                Some(reason) => tracing::warn!(
                    reason,
                    rss,
                    memory_limit,
                    disk_free_limit = now.disk_free_limit,
                    "resource alarm: publishers are blocked"
                ),
                None => tracing::info!(rss, memory_limit, "resource alarm cleared"),
            }
            core.router().set_resource_alarm(next.clone());
            last = next;
        }
        tokio::select! {
            _ = tokio::time::sleep(INTERVAL) => {}
            // A new watermark applies at once (and a dropped sender just leaves the last one).
            r = limits.changed() => if r.is_err() {
                tokio::select! {
                    _ = tokio::time::sleep(INTERVAL) => {}
                    _ = crate::util::stopped(&mut shutdown) => return,
                }
            },
            _ = crate::util::stopped(&mut shutdown) => return,
        }
    }
}

/// Resident set size of this process, from `/proc/self/statm` (pages); `None` off Linux.
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages.saturating_mul(page_size()?))
}

fn page_size() -> Option<u64> {
    // SAFETY: sysconf only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|s| *s > 0)
}

/// Memory the process may use: physical RAM, or the cgroup v2 limit when that is smaller (a
/// container's `memory.max`), since that is where the kernel's OOM killer will act.
pub fn available_memory() -> Option<u64> {
    // SAFETY: sysconf only reads a system constant.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    let physical = u64::try_from(pages)
        .ok()
        .filter(|p| *p > 0)
        .and_then(|p| p.checked_mul(page_size()?));
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    match (physical, cgroup) {
        (Some(p), Some(c)) => Some(p.min(c)),
        (p, c) => p.or(c),
    }
}

/// Bytes available to unprivileged users on the file system holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_limits_follow_rabbitmq() {
        let gib = 1 << 30;
        assert_eq!(
            Watermark::Relative(0.6).limit(Some(10 * gib)),
            Some(6 * gib)
        );
        // Above 1 counts as all memory; an absolute limit above it is capped too.
        assert_eq!(Watermark::Relative(3.0).limit(Some(gib)), Some(gib));
        assert_eq!(Watermark::Absolute(2 * gib).limit(Some(gib)), Some(gib));
        assert_eq!(Watermark::Absolute(5).limit(None), Some(5));
        assert_eq!(Watermark::Relative(0.6).limit(None), None);
        assert_eq!(Watermark::Relative(f64::NAN).limit(Some(gib)), Some(gib));
    }

    #[test]
    fn verdict_prefers_memory_and_needs_both_clear() {
        assert_eq!(
            verdict(Some(10), Some(5), false).as_deref(),
            Some(LOW_ON_MEMORY)
        );
        assert_eq!(
            verdict(Some(10), Some(5), true).as_deref(),
            Some(LOW_ON_MEMORY)
        );
        assert_eq!(
            verdict(Some(1), Some(5), true).as_deref(),
            Some(LOW_ON_DISK)
        );
        assert_eq!(verdict(Some(5), Some(5), false), None);
        // Unknown resident size or limit: no memory alarm.
        assert_eq!(verdict(None, Some(0), false), None);
        assert_eq!(verdict(Some(10), None, false), None);
    }

    #[test]
    fn this_process_has_a_resident_size_below_its_memory() {
        if cfg!(target_os = "linux") {
            let rss = resident_memory_bytes().expect("statm");
            assert!(rss > 0);
            assert!(rss < available_memory().expect("sysconf"));
        }
    }
}
