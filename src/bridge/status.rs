//! The live state of one bridge: what `GET /api/shovels` shows and the `ferry_bridge_*`
//! metrics say.
//!
//! States are RabbitMQ's shovel states: `starting` (connecting to both sides), `running`,
//! `blocked` (a side failed; waiting to retry, the circuit breaker open after repeated
//! failures) and `terminated` (finished by `src-delete-after`, or stopped). The runner
//! writes here; readers take a snapshot, so a slow reader never stalls forwarding.

use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::{json, Value};

use super::definition::Definition;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Starting,
    Running,
    Blocked,
    Terminated,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Blocked => "blocked",
            State::Terminated => "terminated",
        }
    }

    /// `ferry_bridge_state`: 1 running, 0 starting, 2 blocked, 3 terminated (so an alert can
    /// fire on "not 1").
    fn gauge(self) -> f64 {
        match self {
            State::Starting => 0.0,
            State::Running => 1.0,
            State::Blocked => 2.0,
            State::Terminated => 3.0,
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: State,
    reason: Option<String>,
    since_ms: i64,
    forwarded: u64,
    skipped: u64,
    reconnects: u64,
    pending: Option<u64>,
    breaker_open: bool,
}

/// One bridge's status, shared by its runner and the status reporter.
#[derive(Clone)]
pub struct BridgeStatus {
    vhost: String,
    name: String,
    src: String,
    dest: String,
    inner: Arc<Mutex<Inner>>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl BridgeStatus {
    pub fn new(def: &Definition) -> Self {
        let status = Self::unpublished(
            &def.vhost,
            &def.name,
            (def.src.display(), def.dest.display()),
            (State::Starting, None),
        );
        status.publish_state(State::Starting);
        status
    }

    /// The status of a stored definition the reconciler has not started yet: `starting`, or
    /// `terminated` with the reason when it does not parse (stored by an older build; the
    /// reconciler will not run it). Publishes no metrics.
    pub fn not_started(vhost: &str, name: &str, value: &serde_json::Value) -> Self {
        match Definition::parse(vhost, name, value) {
            Ok(def) => Self::unpublished(
                vhost,
                name,
                (def.src.display(), def.dest.display()),
                (State::Starting, None),
            ),
            Err(e) => Self::unpublished(
                vhost,
                name,
                (String::new(), String::new()),
                (State::Terminated, Some(e)),
            ),
        }
    }

    fn unpublished(
        vhost: &str,
        name: &str,
        (src, dest): (String, String),
        (state, reason): (State, Option<String>),
    ) -> Self {
        Self {
            vhost: vhost.to_string(),
            name: name.to_string(),
            src,
            dest,
            inner: Arc::new(Mutex::new(Inner {
                state,
                reason,
                since_ms: now_ms(),
                forwarded: 0,
                skipped: 0,
                reconnects: 0,
                pending: None,
                breaker_open: false,
            })),
        }
    }

    fn labels(&self) -> [(&'static str, String); 2] {
        [("bridge", self.name.clone()), ("vhost", self.vhost.clone())]
    }

    fn publish_state(&self, state: State) {
        metrics::gauge!("ferry_bridge_state", &self.labels()).set(state.gauge());
    }

    pub fn set_state(&self, state: State, reason: Option<String>) {
        let mut inner = self.inner.lock();
        if inner.state != state {
            inner.since_ms = now_ms();
        }
        inner.state = state;
        inner.reason = reason;
        drop(inner);
        self.publish_state(state);
    }

    pub fn set_breaker(&self, open: bool) {
        self.inner.lock().breaker_open = open;
    }

    pub fn state(&self) -> State {
        self.inner.lock().state
    }

    pub fn forwarded(&self, n: u64) {
        self.inner.lock().forwarded += n;
        metrics::counter!("ferry_bridge_messages_forwarded_total", &self.labels()).increment(n);
    }

    pub fn forwarded_total(&self) -> u64 {
        self.inner.lock().forwarded
    }

    pub fn skipped(&self, n: u64) {
        self.inner.lock().skipped += n;
        metrics::counter!("ferry_bridge_messages_skipped_total", &self.labels()).increment(n);
    }

    pub fn reconnected(&self) {
        self.inner.lock().reconnects += 1;
        metrics::counter!("ferry_bridge_reconnects_total", &self.labels()).increment(1);
    }

    /// Messages waiting at the source, when the source can tell.
    pub fn set_pending(&self, pending: Option<u64>) {
        self.inner.lock().pending = pending;
        if let Some(p) = pending {
            metrics::gauge!("ferry_bridge_pending", &self.labels()).set(p as f64);
        }
    }

    /// The `GET /api/shovels` entry (RabbitMQ's keys plus Ferry's counters).
    pub fn view(&self) -> Value {
        let i = self.inner.lock();
        json!({
            "name": self.name,
            "vhost": self.vhost,
            "type": "dynamic",
            "state": i.state.as_str(),
            "reason": i.reason,
            "since_ms": i.since_ms,
            "src_uri": self.src,
            "dest_uri": self.dest,
            "messages_forwarded": i.forwarded,
            "messages_skipped": i.skipped,
            "reconnects": i.reconnects,
            "pending": i.pending,
            "circuit_breaker": if i.breaker_open { "open" } else { "closed" },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_definition_not_started_yet_shows_as_starting_or_as_terminated_when_invalid() {
        let value = json!({"src-uri": "amqp://", "src-queue": "orders",
                           "dest-uri": "amqp://u:p@rabbit:5672/%2F", "dest-queue": "copy"});
        let view = BridgeStatus::not_started("/", "s1", &value).view();
        assert_eq!(view["name"], "s1");
        assert_eq!(view["vhost"], "/");
        assert_eq!(view["state"], "starting");
        assert_eq!(view["dest_uri"], "amqp://u:***@rabbit:5672/%2F");
        assert_eq!(view["messages_forwarded"], 0);
        assert_eq!(view["circuit_breaker"], "closed");

        let view = BridgeStatus::not_started("/", "bad", &json!({"src-queue": "orders"})).view();
        assert_eq!(view["state"], "terminated");
        assert!(view["reason"].as_str().is_some_and(|r| !r.is_empty()));
    }
}
