//! A circuit breaker per consumer: stop feeding a consumer whose dependency is down.
//!
//! Without it, a consumer whose database is unreachable nacks every message it gets, and each
//! message burns through its delivery limit and lands in the dead-letter queue within seconds,
//! although nothing is wrong with the messages. The breaker watches the consumer's outcomes
//! instead of the messages':
//!
//! ```text
//!            N failures in a row                 cool-down over
//!  Closed ----------------------------> Open ---------------------> HalfOpen
//!    ^                                   ^                             |
//!    |            probe acked            |        probe failed         |
//!    +-----------------------------------+-----------------------------+
//! ```
//!
//! - **Closed**: normal flow. An ack resets the failure count; a nack/reject adds one.
//! - **Open**: the consumer gets nothing for the cool-down; messages stay ready for other
//!   consumers (or wait), their delivery counts untouched.
//! - **HalfOpen**: one message (the probe) is delivered. Its ack closes the breaker; its failure
//!   opens it again for another cool-down.
//!
//! Arguments (queue arguments apply to every consumer; the same names as consumer arguments
//! of basic.consume override them for one consumer): `x-circuit-breaker-failures` (N, >= 1)
//! enables it, `x-circuit-breaker-cooldown` (ms, default 30000). Each state change is logged
//! and exported as `ferry_circuit_breaker_state{vhost,queue,consumer}` (0 closed, 1 open,
//! 2 half-open) and counted in `ferry_circuit_breaker_transitions_total{vhost,queue,to}`.

use serde_json::Value;

/// Cool-down when `x-circuit-breaker-cooldown` is not given.
pub const DEFAULT_COOLDOWN_MS: i64 = 30_000;

/// When a consumer's breaker opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Failures in a row that open the breaker.
    pub failures: u32,
    pub cooldown_ms: i64,
}

impl BreakerPolicy {
    /// Parses `x-circuit-breaker-failures` / `-cooldown`; `Ok(None)` when not enabled.
    pub fn from_arguments(
        map: &serde_json::Map<String, Value>,
    ) -> Result<Option<BreakerPolicy>, String> {
        let failures = match map.get("x-circuit-breaker-failures") {
            None => None,
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 => Some(u32::try_from(n).unwrap_or(u32::MAX)),
                _ => {
                    return Err(format!(
                        "invalid arg 'x-circuit-breaker-failures': {v} (must be an integer >= 1)"
                    ))
                }
            },
        };
        let cooldown = match map.get("x-circuit-breaker-cooldown") {
            None => None,
            Some(v) => match v.as_i64() {
                Some(n) if n >= 1 => Some(n),
                _ => {
                    return Err(format!(
                        "invalid arg 'x-circuit-breaker-cooldown': {v} (must be a positive \
                         number of milliseconds)"
                    ))
                }
            },
        };
        match (failures, cooldown) {
            (Some(failures), c) => Ok(Some(BreakerPolicy {
                failures,
                cooldown_ms: c.unwrap_or(DEFAULT_COOLDOWN_MS),
            })),
            (None, Some(_)) => Err(
                "invalid arg 'x-circuit-breaker-cooldown': needs x-circuit-breaker-failures".into(),
            ),
            (None, None) => Ok(None),
        }
    }
}

/// The breaker's state, as exported (the gauge's value is [`BreakerState::gauge`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    /// Until this time (ms since the epoch).
    Open {
        until_ms: i64,
    },
    /// `probe_out`: the probe is delivered and its outcome not known yet.
    HalfOpen {
        probe_out: bool,
    },
}

impl BreakerState {
    pub fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::Open { .. } => 1.0,
            BreakerState::HalfOpen { .. } => 2.0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen { .. } => "half_open",
        }
    }
}

/// One consumer's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    policy: BreakerPolicy,
    state: BreakerState,
    failures_in_a_row: u32,
}

impl Breaker {
    pub fn new(policy: BreakerPolicy) -> Breaker {
        Breaker {
            policy,
            state: BreakerState::Closed,
            failures_in_a_row: 0,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// How many of `want` messages the consumer may take now; moves Open to HalfOpen once the
    /// cool-down is over. Returns the transition, if any, beside the allowance.
    pub fn allowance(&mut self, now_ms: i64, want: usize) -> (usize, Option<BreakerState>) {
        match self.state {
            BreakerState::Closed => (want, None),
            BreakerState::Open { until_ms } if now_ms >= until_ms => {
                self.state = BreakerState::HalfOpen { probe_out: false };
                (want.min(1), Some(self.state))
            }
            BreakerState::Open { .. } => (0, None),
            BreakerState::HalfOpen { probe_out } => (usize::from(!probe_out).min(want), None),
        }
    }

    /// Records that `n` messages were handed to the consumer.
    pub fn delivered(&mut self, n: usize) {
        if n > 0 {
            if let BreakerState::HalfOpen { probe_out } = &mut self.state {
                *probe_out = true;
            }
        }
    }

    /// Records an ack (`success`) or a nack/reject; returns the new state if it changed.
    pub fn outcome(&mut self, success: bool, now_ms: i64) -> Option<BreakerState> {
        let before = self.state;
        if success {
            self.failures_in_a_row = 0;
            self.state = BreakerState::Closed;
        } else {
            self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
            let trips = match self.state {
                BreakerState::HalfOpen { .. } => true,
                BreakerState::Closed => self.failures_in_a_row >= self.policy.failures,
                // Late outcomes of messages delivered before the breaker opened.
                BreakerState::Open { .. } => false,
            };
            if trips {
                self.state = BreakerState::Open {
                    until_ms: now_ms.saturating_add(self.policy.cooldown_ms),
                };
            }
        }
        (self.state != before).then_some(self.state)
    }

    /// When an open breaker may be probed (ms since the epoch).
    pub fn wake_at(&self) -> Option<i64> {
        match self.state {
            BreakerState::Open { until_ms } => Some(until_ms),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn breaker(failures: u32) -> Breaker {
        Breaker::new(BreakerPolicy {
            failures,
            cooldown_ms: 1000,
        })
    }

    #[test]
    fn opens_after_n_failures_in_a_row_and_probes_after_the_cooldown() {
        let mut b = breaker(3);
        assert_eq!(b.outcome(false, 0), None);
        assert_eq!(b.outcome(true, 0), None, "an ack resets the count");
        assert_eq!(b.outcome(false, 0), None);
        assert_eq!(b.outcome(false, 0), None);
        assert_eq!(
            b.outcome(false, 10),
            Some(BreakerState::Open { until_ms: 1010 })
        );
        assert_eq!(b.allowance(1009, 50), (0, None));
        assert_eq!(
            b.allowance(1010, 50),
            (1, Some(BreakerState::HalfOpen { probe_out: false }))
        );
        b.delivered(1);
        assert_eq!(b.allowance(1011, 50), (0, None), "one probe at a time");
        // The probe fails: open again for a full cool-down.
        assert_eq!(
            b.outcome(false, 1500),
            Some(BreakerState::Open { until_ms: 2500 })
        );
        assert_eq!(b.allowance(2500, 50).0, 1);
        b.delivered(1);
        assert_eq!(b.outcome(true, 2600), Some(BreakerState::Closed));
        assert_eq!(b.allowance(2600, 50), (50, None));
    }

    #[test]
    fn arguments() {
        let parse = |v: Value| BreakerPolicy::from_arguments(v.as_object().unwrap());
        assert_eq!(parse(json!({})).unwrap(), None);
        assert_eq!(
            parse(json!({"x-circuit-breaker-failures": 5})).unwrap(),
            Some(BreakerPolicy {
                failures: 5,
                cooldown_ms: DEFAULT_COOLDOWN_MS
            })
        );
        assert!(parse(json!({"x-circuit-breaker-failures": 0})).is_err());
        assert!(parse(json!({"x-circuit-breaker-cooldown": 10})).is_err());
        assert!(
            parse(json!({"x-circuit-breaker-failures": 1, "x-circuit-breaker-cooldown": -1}))
                .is_err()
        );
    }
}
