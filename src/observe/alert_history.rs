//! The recent transitions of the alert rules, for `GET /api/alerts` and the console's alerts
//! page: a bounded ring in memory (the newest [`AlertHistory::CAPACITY`] transitions across
//! all rules), so an operator sees what fired and resolved lately without a metrics backend.
//! It is lost at restart on purpose: the durable record is the alert events the rules publish
//! to their exchange, which any consumer can keep.

use std::collections::VecDeque;

use parking_lot::Mutex;
use serde::Serialize;

/// One rule's change of state.
#[derive(Clone, Debug, Serialize)]
pub struct AlertTransition {
    pub rule: String,
    /// `ok` or `firing`.
    pub from: &'static str,
    /// `firing` or `ok` (a resolve).
    pub to: &'static str,
    /// Milliseconds since the epoch.
    pub at_ms: i64,
    /// The rule's measured value at the transition (depth, lag, count, ...).
    pub value: u64,
    pub message: String,
}

/// Shared by the alert task (which records) and the HTTP API (which reads).
#[derive(Default)]
pub struct AlertHistory {
    ring: Mutex<VecDeque<AlertTransition>>,
}

impl AlertHistory {
    /// Enough for a flapping rule not to push every other rule's last transitions out in a
    /// few minutes, small enough to be nothing in memory (a few KB).
    pub const CAPACITY: usize = 200;

    pub fn record(&self, transition: AlertTransition) {
        let mut ring = self.ring.lock();
        if ring.len() == Self::CAPACITY {
            ring.pop_front();
        }
        ring.push_back(transition);
    }

    /// The transitions of `rule`, newest first.
    pub fn of_rule(&self, rule: &str) -> Vec<AlertTransition> {
        self.ring
            .lock()
            .iter()
            .rev()
            .filter(|t| t.rule == rule)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transition(rule: &str, at_ms: i64) -> AlertTransition {
        AlertTransition {
            rule: rule.into(),
            from: "ok",
            to: "firing",
            at_ms,
            value: 1,
            message: String::new(),
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_transitions_only() {
        let history = AlertHistory::default();
        for at in 0..(AlertHistory::CAPACITY as i64 + 5) {
            history.record(transition("a", at));
        }
        history.record(transition("b", 1_000));
        let a = history.of_rule("a");
        assert_eq!(a.len(), AlertHistory::CAPACITY - 1);
        assert_eq!(
            a[0].at_ms,
            AlertHistory::CAPACITY as i64 + 4,
            "newest first"
        );
        assert_eq!(a.last().map(|t| t.at_ms), Some(6), "the oldest fell out");
        assert_eq!(history.of_rule("b").len(), 1);
    }
}
