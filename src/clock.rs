//! Wall-clock time as the broker sees it.
//!
//! Retention, segment age, TTLs and retry backoff all compare against "now". Reading the system
//! clock directly would make those rules untestable without sleeping, so every component takes a
//! [`Clock`] and tests swap in a manual one they can move forward at will.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of milliseconds since the Unix epoch.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    manual: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The real system clock.
    pub fn system() -> Self {
        Self { manual: None }
    }

    /// A clock that only moves when told to; starts at `start_ms`.
    pub fn manual(start_ms: i64) -> Self {
        Self {
            manual: Some(Arc::new(AtomicI64::new(start_ms))),
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        match &self.manual {
            Some(t) => t.load(Ordering::Relaxed),
            None => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
        }
    }

    /// Moves a manual clock forward; a no-op on the system clock.
    pub fn advance_ms(&self, ms: i64) {
        if let Some(t) = &self.manual {
            t.fetch_add(ms, Ordering::Relaxed);
        }
    }

    /// Sets a manual clock; a no-op on the system clock.
    pub fn set_ms(&self, ms: i64) {
        if let Some(t) = &self.manual {
            t.store(ms, Ordering::Relaxed);
        }
    }
}
