//! Retry with backoff: how long a message returned to its queue waits before it is ready again.
//!
//! The queue arguments are RabbitMQ 4.3's delayed-retry arguments, so a declaration written for
//! RabbitMQ means the same here:
//!
//! | argument                     | meaning                                                    |
//! |------------------------------|------------------------------------------------------------|
//! | `x-delayed-retry-type`       | which returns are delayed: `failed` (basic.nack/reject     |
//! |                              | with requeue), `returned` (channel closed, basic.recover,  |
//! |                              | consumer cancelled), `all`, or `disabled`                  |
//! | `x-delayed-retry-min`        | delay of the first retry, ms (>= 1); giving it alone       |
//! |                              | enables `failed`                                           |
//! | `x-delayed-retry-max`        | cap on one delay, ms                                       |
//! | `x-delayed-retry-multiplier` | backoff shape (LavinMQ's extension of the same arguments): |
//! |                              | absent = linear as in RabbitMQ (`min x n`), 1 = constant,  |
//! |                              | >= 2 = exponential (`min x multiplier^(n-1)`)              |
//!
//! `n` is the message's delivery count after this return (1 for the first retry). RabbitMQ's
//! formula is linear only; exponential backoff is what most retry libraries default to, and
//! LavinMQ already names it, so we take its name rather than invent one. As in LavinMQ, a queue
//! with retry enabled and no `x-delivery-limit` gets a limit of 20, so a poison message ends
//! in the dead-letter exchange instead of retrying forever.
//!
//! The waiting itself is the queue's job ([`super::queue`]): a delayed message stays unsettled
//! (it counts toward the low-water mark and is persisted with its due time), is not ready, and
//! does not hold back the messages behind it.

use serde_json::Value;

/// Delays are capped at the u32 millisecond range (~49.7 days), as LavinMQ does: a longer
/// delay is almost certainly a unit mistake, and it keeps the arithmetic far from overflow.
const MAX_DELAY_MS: i64 = u32::MAX as i64;

/// Which returns to the queue are delayed (`x-delayed-retry-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    /// A consumer gave the message back: basic.nack or basic.reject with requeue.
    Failed,
    /// The broker gave it back: its channel or connection closed, basic.recover, cancel.
    Returned,
    All,
}

/// Why an unacked message goes back to its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnKind {
    /// basic.nack / basic.reject with requeue: the consumer failed to process it.
    Failed,
    /// Its channel closed, basic.recover, its consumer was cancelled.
    Returned,
}

/// A queue's retry policy, parsed from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub on: RetryOn,
    pub min_ms: i64,
    pub max_ms: Option<i64>,
    /// `None`: linear. `Some(1)`: constant. `Some(m >= 2)`: exponential with base `m`.
    pub multiplier: Option<u32>,
}

impl RetryPolicy {
    /// Parses the `x-delayed-retry-*` arguments; `Ok(None)` when retry is not enabled.
    pub fn from_arguments(
        map: &serde_json::Map<String, Value>,
    ) -> Result<Option<RetryPolicy>, String> {
        let positive_ms = |key: &str| -> Result<Option<i64>, String> {
            match map.get(key) {
                None => Ok(None),
                Some(v) => match v.as_i64() {
                    Some(n) if n >= 1 => Ok(Some(n.min(MAX_DELAY_MS))),
                    _ => Err(format!(
                        "invalid arg '{key}': {v} (must be a positive number of milliseconds)"
                    )),
                },
            }
        };
        let min = positive_ms("x-delayed-retry-min")?;
        let max = positive_ms("x-delayed-retry-max")?;
        let multiplier = match map.get("x-delayed-retry-multiplier") {
            None => None,
            Some(v) => match v.as_u64() {
                Some(m) if m >= 1 => Some(u32::try_from(m).unwrap_or(u32::MAX)),
                _ => {
                    return Err(format!(
                        "invalid arg 'x-delayed-retry-multiplier': {v} (must be an integer >= 1)"
                    ))
                }
            },
        };
        let on = match map.get("x-delayed-retry-type") {
            None if min.is_some() => Some(RetryOn::Failed),
            None => None,
            Some(v) => match v.as_str() {
                Some("disabled") => None,
                Some("failed") => Some(RetryOn::Failed),
                Some("returned") => Some(RetryOn::Returned),
                Some("all") => Some(RetryOn::All),
                _ => {
                    return Err(format!(
                        "invalid arg 'x-delayed-retry-type': {v} (must be disabled, all, \
                         failed or returned)"
                    ))
                }
            },
        };
        let Some(on) = on else {
            return Ok(None);
        };
        let Some(min_ms) = min else {
            return Err("invalid arg 'x-delayed-retry-type': needs x-delayed-retry-min".into());
        };
        if let Some(max) = max {
            if max < min_ms {
                return Err(format!(
                    "invalid arg 'x-delayed-retry-max': {max} is below x-delayed-retry-min \
                     {min_ms}"
                ));
            }
        }
        Ok(Some(RetryPolicy {
            on,
            min_ms,
            max_ms: max,
            multiplier,
        }))
    }

    /// Whether a return of this kind waits.
    pub fn applies_to(&self, kind: ReturnKind) -> bool {
        matches!(
            (self.on, kind),
            (RetryOn::All, _)
                | (RetryOn::Failed, ReturnKind::Failed)
                | (RetryOn::Returned, ReturnKind::Returned)
        )
    }

    /// The wait before retry number `attempt` (1 for the first), in ms.
    pub fn delay_ms(&self, attempt: u32) -> i64 {
        let attempt = i64::from(attempt.max(1));
        let raw = match self.multiplier {
            None => self.min_ms.saturating_mul(attempt),
            Some(1) => self.min_ms,
            Some(m) => {
                // m^(attempt-1) overflows quickly; stop multiplying once past the cap.
                let mut d = self.min_ms;
                for _ in 1..attempt {
                    d = d.saturating_mul(i64::from(m));
                    if d >= MAX_DELAY_MS {
                        break;
                    }
                }
                d
            }
        };
        raw.min(self.max_ms.unwrap_or(MAX_DELAY_MS))
            .min(MAX_DELAY_MS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Option<RetryPolicy>, String> {
        RetryPolicy::from_arguments(v.as_object().unwrap())
    }

    #[test]
    fn linear_is_rabbitmqs_formula_capped_by_max() {
        let p = parse(
            json!({"x-delayed-retry-type": "all", "x-delayed-retry-min": 100,
                             "x-delayed-retry-max": 250}),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (1..=4).map(|n| p.delay_ms(n)).collect::<Vec<_>>(),
            [100, 200, 250, 250]
        );
    }

    #[test]
    fn exponential_and_constant_shapes() {
        let p = parse(json!({"x-delayed-retry-min": 100, "x-delayed-retry-multiplier": 2}))
            .unwrap()
            .unwrap();
        assert_eq!(p.on, RetryOn::Failed);
        assert_eq!(
            (1..=5).map(|n| p.delay_ms(n)).collect::<Vec<_>>(),
            [100, 200, 400, 800, 1600]
        );
        // Huge attempt counts saturate at the cap instead of overflowing.
        assert_eq!(p.delay_ms(u32::MAX), MAX_DELAY_MS);
        let c = parse(json!({"x-delayed-retry-min": 50, "x-delayed-retry-multiplier": 1}))
            .unwrap()
            .unwrap();
        assert_eq!(c.delay_ms(7), 50);
    }

    #[test]
    fn bad_arguments_name_the_argument() {
        assert_eq!(parse(json!({})).unwrap(), None);
        assert_eq!(
            parse(json!({"x-delayed-retry-type": "disabled", "x-delayed-retry-min": 5})).unwrap(),
            None
        );
        for (bad, arg) in [
            (json!({"x-delayed-retry-min": 0}), "x-delayed-retry-min"),
            (json!({"x-delayed-retry-min": "5"}), "x-delayed-retry-min"),
            (
                json!({"x-delayed-retry-type": "some"}),
                "x-delayed-retry-type",
            ),
            (
                json!({"x-delayed-retry-type": "all"}),
                "x-delayed-retry-type",
            ),
            (
                json!({"x-delayed-retry-min": 10, "x-delayed-retry-max": 5}),
                "x-delayed-retry-max",
            ),
            (
                json!({"x-delayed-retry-min": 10, "x-delayed-retry-multiplier": 0}),
                "x-delayed-retry-multiplier",
            ),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(arg), "{e}");
        }
    }

    #[test]
    fn which_returns_wait() {
        let p = |on| RetryPolicy {
            on,
            min_ms: 1,
            max_ms: None,
            multiplier: None,
        };
        assert!(p(RetryOn::Failed).applies_to(ReturnKind::Failed));
        assert!(!p(RetryOn::Failed).applies_to(ReturnKind::Returned));
        assert!(p(RetryOn::Returned).applies_to(ReturnKind::Returned));
        assert!(p(RetryOn::All).applies_to(ReturnKind::Failed));
    }
}
