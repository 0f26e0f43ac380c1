//! [`Durable`]: one copy of a published message, resolving once it is durable — what every
//! protocol's confirm waits on.
//!
//! A copy is either an append of its own, or a repeat that deduplication dropped (a queue's
//! `x-message-deduplication`, a topic's `ferry.dedup.window.ms`). A repeat must not be confirmed
//! before the copy it repeats is durable: a publisher that resends after a lost confirm races its
//! original, and confirming the resend at once would let the publisher forget a message that a
//! crash a moment later loses. The deduplicating queue admits ids and queues appends under one
//! lock, so by the time a repeat is dropped the original's append is queued on that log; a
//! writer barrier then resolves after it was committed (and synced per the fsync policy). If the
//! log fail-stopped meanwhile, the original may be lost, so the repeat fails too and the
//! publisher's retry gets a clear error rather than a confirm.

use crate::log::{AppendInfo, LogError, PartitionHandle, PendingAppend};

pub enum Durable {
    /// The message's own append.
    Append(PendingAppend),
    /// A dropped repeat; durable once the appends in flight on these logs (those that may
    /// hold the original) are.
    Repeat(Vec<PartitionHandle>),
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Durable::Append(_) => f.write_str("Durable::Append"),
            Durable::Repeat(logs) => write!(f, "Durable::Repeat({} logs)", logs.len()),
        }
    }
}

impl Durable {
    /// A repeat of a message held by `log`.
    pub fn repeat_in(log: &PartitionHandle) -> Self {
        Durable::Repeat(vec![log.clone()])
    }

    pub fn is_repeat(&self) -> bool {
        matches!(self, Durable::Repeat(_))
    }

    /// Resolves once this copy is durable: its append's result, or `None` for a repeat whose
    /// original is.
    pub async fn wait(self) -> Result<Option<AppendInfo>, LogError> {
        match self {
            Durable::Append(p) => p.wait().await.map(Some),
            Durable::Repeat(logs) => {
                for log in &logs {
                    log.barrier().await;
                    if log.is_failed() {
                        return Err(LogError::FailStopped(
                            "the log holding the original of this repeated message failed".into(),
                        ));
                    }
                }
                Ok(None)
            }
        }
    }
}
