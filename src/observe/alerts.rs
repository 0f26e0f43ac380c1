//! Alerts: rules from the config file, evaluated against the live broker once a second.
//!
//! A rule *fires* when its condition has held continuously for `for_secs`, and *resolves* as
//! soon as it no longer holds. Each transition is
//! - logged (WARN when firing, INFO when resolved),
//! - exported as `ferry_alert_firing{rule}` (1 while firing, 0 otherwise),
//! - published as an event (JSON body, CloudEvents headers `ce_type` =
//!   `io.ferry.alert.firing` / `io.ferry.alert.resolved`) to the configured exchange of vhost
//!   `/` — a topic name works too, since a topic is an exchange — so alerts are events that any
//!   Kafka or AMQP consumer can subscribe to,
//! - and POSTed as the same JSON to the webhook URL, if one is configured, retried with
//!   exponential backoff (0.5 s doubling, `webhook_attempts` tries) from a task of its own, so
//!   a slow receiver never delays evaluation. Only `http://` URLs are supported (no TLS
//!   client is linked in); put a local relay in front of an HTTPS receiver.
//!
//! Conditions (`kind`): `queue_depth` (ready messages of `queue` above `threshold`),
//! `no_consumers` (`queue` has none), `consumer_lag` (group `group`'s total lag on `topic`
//! above `threshold`), `dead_letter_rate` (messages dead-lettered in the last minute above
//! `threshold`), `resource_alarm` (the disk or memory alarm is on), `circuit_open` (a consumer
//! circuit breaker of `queue`, or of any queue when `queue` is empty, is open), `bridge_down`
//! (bridge `bridge` in `vhost`, or any bridge when `bridge` is empty, is not running).
//!
//! The latest transitions are also kept in memory ([`AlertHistory`]) for `GET /api/alerts`.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::alert_history::{AlertHistory, AlertTransition};
use crate::broker::BrokerCore;
use crate::log::SimpleRecord;

/// `[alerts]` in the config file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertSettings {
    /// Exchange (or topic) in vhost `/` that receives an event per transition; empty: none.
    pub exchange: String,
    /// Routing key of those events; empty: `alert.<rule name>`.
    pub routing_key: String,
    /// `http://host:port/path` that receives a POST per transition; empty: none.
    pub webhook_url: String,
    /// Tries per webhook notification (default 5).
    pub webhook_attempts: u32,
    /// `[[alerts.rules]]`.
    pub rules: Vec<AlertRule>,
}

impl Default for AlertSettings {
    fn default() -> Self {
        AlertSettings {
            exchange: String::new(),
            routing_key: String::new(),
            webhook_url: String::new(),
            webhook_attempts: 5,
            rules: Vec::new(),
        }
    }
}

/// One `[[alerts.rules]]` entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertRule {
    /// Names the rule in logs, metrics and events.
    pub name: String,
    /// `queue_depth`, `no_consumers`, `consumer_lag`, `dead_letter_rate`, `resource_alarm`,
    /// `circuit_open`, `bridge_down`.
    pub kind: String,
    /// The vhost of `queue` (default `/`).
    pub vhost: String,
    pub queue: String,
    pub group: String,
    pub topic: String,
    /// The bridge (shovel) name of `bridge_down`; empty: any bridge.
    pub bridge: String,
    /// Fires above this value (depth, lag, dead letters per minute).
    pub threshold: u64,
    /// How long the condition must hold before the rule fires.
    pub for_secs: u64,
}

impl AlertSettings {
    /// Checks every rule names what its kind needs; the error names the rule.
    pub fn validate(&self) -> Result<(), String> {
        let mut names = std::collections::HashSet::new();
        for r in &self.rules {
            if r.name.is_empty() {
                return Err("an alert rule has no `name`".into());
            }
            if !names.insert(r.name.as_str()) {
                return Err(format!("two alert rules are named `{}`", r.name));
            }
            let needs = |field: &str, v: &str| {
                if v.is_empty() {
                    Err(format!(
                        "alert rule `{}` ({}) needs `{field}`",
                        r.name, r.kind
                    ))
                } else {
                    Ok(())
                }
            };
            match r.kind.as_str() {
                "queue_depth" | "no_consumers" => needs("queue", &r.queue)?,
                "consumer_lag" => {
                    needs("group", &r.group)?;
                    needs("topic", &r.topic)?;
                }
                "dead_letter_rate" | "resource_alarm" | "circuit_open" | "bridge_down" => {}
                other => {
                    return Err(format!(
                        "alert rule `{}` has unknown kind `{other}` (use queue_depth, \
                         no_consumers, consumer_lag, dead_letter_rate, resource_alarm, \
                         circuit_open or bridge_down)",
                        r.name
                    ))
                }
            }
        }
        if !self.webhook_url.is_empty() {
            webhook_client(&self.webhook_url)?;
        }
        Ok(())
    }
}

/// The measured value of a rule's condition, and whether it holds.
fn evaluate(
    core: &BrokerCore,
    rule: &AlertRule,
    dead_per_minute: u64,
) -> Option<(bool, u64, String)> {
    let vhost = if rule.vhost.is_empty() {
        "/"
    } else {
        &rule.vhost
    };
    let router = core.router();
    Some(match rule.kind.as_str() {
        "queue_depth" => {
            let depth = router.queue(vhost, &rule.queue)?.message_count();
            (
                depth > rule.threshold,
                depth,
                format!(
                    "queue '{}' holds {depth} ready messages (threshold {})",
                    rule.queue, rule.threshold
                ),
            )
        }
        "no_consumers" => {
            let n = router.queue(vhost, &rule.queue)?.consumer_count();
            (
                n == 0,
                u64::from(n),
                format!("queue '{}' has {n} consumers", rule.queue),
            )
        }
        "consumer_lag" => {
            let lag: i64 = crate::observe::metrics::group_lag(core, &rule.group)
                .iter()
                .filter(|l| l.topic == rule.topic)
                .filter_map(|l| l.lag)
                .sum();
            let lag = lag.max(0) as u64;
            (
                lag > rule.threshold,
                lag,
                format!(
                    "group '{}' lags {lag} records behind topic '{}' (threshold {})",
                    rule.group, rule.topic, rule.threshold
                ),
            )
        }
        "dead_letter_rate" => (
            dead_per_minute > rule.threshold,
            dead_per_minute,
            format!(
                "{dead_per_minute} messages dead-lettered in the last minute (threshold {})",
                rule.threshold
            ),
        ),
        "resource_alarm" => {
            let alarm = router.subscribe_alarm().borrow().clone();
            (
                alarm.is_some(),
                u64::from(alarm.is_some()),
                alarm.unwrap_or_else(|| "no resource alarm".into()),
            )
        }
        "bridge_down" => {
            let down: Vec<String> = core
                .parameters()
                .status("shovel")
                .unwrap_or_default()
                .into_iter()
                .filter(|b| rule.bridge.is_empty() || b["name"] == rule.bridge.as_str())
                .filter(|b| rule.bridge.is_empty() || b["vhost"] == vhost)
                .filter(|b| b["state"] != "running")
                .map(|b| {
                    format!(
                        "{} ({})",
                        b["name"].as_str().unwrap_or(""),
                        b["state"].as_str().unwrap_or("")
                    )
                })
                .collect();
            (
                !down.is_empty(),
                down.len() as u64,
                if down.is_empty() {
                    "every bridge is running".to_string()
                } else {
                    format!("bridges not running: {}", down.join(", "))
                },
            )
        }
        "circuit_open" => {
            let open: u64 = router
                .queues()
                .iter()
                .filter(|q| rule.queue.is_empty() || q.name() == rule.queue)
                .map(|q| q.open_breakers() as u64)
                .sum();
            (
                open > 0,
                open,
                format!("{open} consumer circuit breakers open"),
            )
        }
        _ => return None,
    })
}

#[derive(Default)]
struct RuleState {
    /// Since when the condition holds (ms), while it does.
    holding_since: Option<i64>,
    firing: bool,
}

/// Runs the rules until shutdown.
pub async fn run(
    core: BrokerCore,
    settings: AlertSettings,
    history: std::sync::Arc<AlertHistory>,
    mut shutdown: watch::Receiver<bool>,
) {
    if settings.rules.is_empty() {
        return;
    }
    for r in &settings.rules {
        metrics::gauge!("ferry_alert_firing", "rule" => r.name.clone()).set(0.0);
    }
    let mut states: HashMap<String, RuleState> = HashMap::new();
    // Dead-letter totals over the last minute, one sample per tick.
    let mut dead_samples: VecDeque<(i64, u64)> = VecDeque::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::util::stopped(&mut shutdown) => return,
        }
        let now = core.router().now_ms();
        let dead_total = core.router().dead_lettered_total();
        dead_samples.push_back((now, dead_total));
        while dead_samples
            .front()
            .is_some_and(|(at, _)| now.saturating_sub(*at) > 60_000)
        {
            dead_samples.pop_front();
        }
        let dead_per_minute = dead_samples
            .front()
            .map_or(0, |(_, first)| dead_total.saturating_sub(*first));
        for rule in &settings.rules {
            let Some((holds, value, message)) = evaluate(&core, rule, dead_per_minute) else {
                // The queue is gone: the condition cannot hold.
                states.remove(&rule.name);
                continue;
            };
            let state = states.entry(rule.name.clone()).or_default();
            let transition = if holds {
                let since = *state.holding_since.get_or_insert(now);
                let held_ms = now.saturating_sub(since);
                if !state.firing
                    && held_ms
                        >= i64::try_from(rule.for_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
                {
                    state.firing = true;
                    Some("firing")
                } else {
                    None
                }
            } else {
                state.holding_since = None;
                if state.firing {
                    state.firing = false;
                    Some("resolved")
                } else {
                    None
                }
            };
            if let Some(to) = transition {
                history.record(AlertTransition {
                    rule: rule.name.clone(),
                    from: if to == "firing" { "ok" } else { "firing" },
                    to: if to == "firing" { "firing" } else { "ok" },
                    at_ms: now,
                    value,
                    message: message.clone(),
                });
                notify(&core, &settings, rule, to, value, &message, now).await;
            }
        }
    }
}

/// Logs, exports, publishes and POSTs one transition.
async fn notify(
    core: &BrokerCore,
    settings: &AlertSettings,
    rule: &AlertRule,
    state: &'static str,
    value: u64,
    message: &str,
    now_ms: i64,
) {
    if state == "firing" {
        tracing::warn!(rule = %rule.name, kind = %rule.kind, value, "alert firing: {message}");
    } else {
        tracing::info!(rule = %rule.name, kind = %rule.kind, value, "alert resolved: {message}");
    }
    metrics::gauge!("ferry_alert_firing", "rule" => rule.name.clone()).set(if state == "firing" {
        1.0
    } else {
        0.0
    });
    metrics::counter!("ferry_alert_transitions_total", "rule" => rule.name.clone(), "to" => state)
        .increment(1);
    let event = serde_json::json!({
        "rule": rule.name,
        "kind": rule.kind,
        "state": state,
        "value": value,
        "threshold": rule.threshold,
        "message": message,
        "time_ms": now_ms,
    });
    if !settings.exchange.is_empty() {
        let key = if settings.routing_key.is_empty() {
            format!("alert.{}", rule.name)
        } else {
            settings.routing_key.clone()
        };
        let header = |k: &str, v: String| (k.to_string(), Some(bytes::Bytes::from(v)));
        let record = SimpleRecord {
            key: Some(key.into()),
            value: Some(event.to_string().into()),
            headers: vec![
                header("ce_specversion", "1.0".into()),
                header(
                    "ce_id",
                    uuid::Builder::from_random_bytes(crate::util::random_bytes16())
                        .into_uuid()
                        .to_string(),
                ),
                header("ce_source", "ferry".into()),
                header("ce_type", format!("io.ferry.alert.{state}")),
                header("ce_subject", rule.name.clone()),
                header("content-type", "application/json".into()),
            ],
            timestamp: now_ms,
        };
        match core
            .router()
            .publish_now("/", &settings.exchange, record)
            .await
        {
            Ok(p) => {
                for p in p.pending {
                    if let Err(e) = p.wait().await {
                        tracing::warn!(error = %e, "appending an alert event failed");
                    }
                }
            }
            Err(e) => tracing::warn!(exchange = %settings.exchange, error = %e,
                "publishing an alert event failed: does the alerts exchange or topic exist?"),
        }
    }
    if !settings.webhook_url.is_empty() {
        let url = settings.webhook_url.clone();
        let attempts = settings.webhook_attempts.max(1);
        let rule = rule.name.clone();
        let event = event.clone();
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(500);
            for attempt in 1..=attempts {
                match post_json(&url, &event).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(rule = %rule, attempt, error = %e, "alert webhook failed");
                        if attempt < attempts {
                            tokio::time::sleep(wait).await;
                            wait = (wait * 2).min(Duration::from_secs(30));
                        }
                    }
                }
            }
            tracing::error!(rule = %rule, %url, "alert webhook gave up after {attempts} attempts");
        });
    }
}

/// The shared HTTP/1.1 client, without credentials, for the webhook URL.
fn webhook_client(url: &str) -> Result<crate::client::http::Client, String> {
    // The shared client speaks https:// too (for the admin CLI), but webhooks stay http://
    // until their CA setting exists.
    if !url.starts_with("http://") {
        return Err(format!(
            "alerts.webhook_url: `{url}` must start with http://; e.g. http://127.0.0.1:9000/hook"
        ));
    }
    crate::client::http::Client::new(url, "", "").map_err(|e| format!("alerts.webhook_url: {e}"))
}

/// One POST of the event; Ok on a 2xx answer within 10 s.
async fn post_json(url: &str, event: &serde_json::Value) -> Result<(), String> {
    let client = webhook_client(url)?;
    match tokio::time::timeout(
        Duration::from_secs(10),
        client.request("POST", "", Some(event)),
    )
    .await
    {
        Err(_) => Err("timed out after 10 s".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok((status, _))) if (200..300).contains(&status) => Ok(()),
        Ok(Ok((status, _))) => Err(format!("HTTP {status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_rules_are_checked() {
        // URL parsing itself is the shared client's (tested there); only http:// is taken.
        assert!(webhook_client("http://127.0.0.1:9000/hook").is_ok());
        assert!(webhook_client("http://alerts.local").is_ok());
        assert!(webhook_client("https://x").is_err());
        let rule = |kind: &str| AlertRule {
            name: "r".into(),
            kind: kind.into(),
            ..AlertRule::default()
        };
        let settings = |rules| AlertSettings {
            rules,
            ..AlertSettings::default()
        };
        assert!(settings(vec![rule("queue_depth")])
            .validate()
            .unwrap_err()
            .contains("needs `queue`"));
        assert!(settings(vec![rule("weather")])
            .validate()
            .unwrap_err()
            .contains("unknown kind"));
        assert!(
            settings(vec![rule("resource_alarm"), rule("resource_alarm")])
                .validate()
                .is_err()
        );
        assert!(settings(vec![rule("dead_letter_rate")]).validate().is_ok());
    }
}
