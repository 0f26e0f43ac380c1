//! Bridges (RabbitMQ's shovels): move messages from one source to one destination, where
//! each side is this broker or a remote RabbitMQ/AMQP 0-9-1 broker or Kafka cluster.
//!
//! Definitions are RabbitMQ dynamic shovel values ([`definition`]) stored as the core's
//! runtime parameters of component `shovel` (`PUT /api/parameters/shovel/{vhost}/{name}`,
//! `[[bridges]]` in the config file, `ferry bridge create`), so they are persisted in `meta`
//! and restart with the broker. This module registers the component's validator and status
//! reporter with the core, then follows the parameters' change counter and reconciles: one
//! task per definition ([`runner`]), restarted when its definition or generation changes,
//! stopped when it is deleted. The core never calls in here; the admin API and the runner
//! meet only in the core's parameter store.
//!
//! The Ferry side goes through the core ([`ferry`]); the remote sides use lapin ([`amqp`],
//! over TLS for `amqps://` through [`amqps`]) and rdkafka ([`kafka`]). [`status`] holds what
//! `GET /api/shovels` and the `ferry_bridge_*` metrics report.

pub mod amqp;
pub mod amqps;
pub mod definition;
pub mod ferry;
pub mod kafka;
pub mod runner;
pub mod status;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::broker::parameters::ParameterError;
use crate::broker::BrokerCore;
pub use definition::Definition;
use status::BridgeStatus;

/// The runtime parameter component of bridge definitions (RabbitMQ's name).
pub const COMPONENT: &str = "shovel";

/// A bridge from the config file: its name, vhost and the shovel keys (kebab-case, as in
/// the JSON definition).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BridgeSettings {
    pub name: String,
    #[serde(default = "default_vhost")]
    pub vhost: String,
    #[serde(flatten)]
    pub value: serde_json::Map<String, Value>,
}

fn default_vhost() -> String {
    crate::broker::routing::DEFAULT_VHOST.to_string()
}

struct Running {
    generation: u64,
    /// The vhost of the exchange queue this bridge owns (a Ferry exchange source), deleted
    /// with the bridge.
    owns_queue: Option<String>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

type Statuses = Arc<Mutex<HashMap<(String, String), BridgeStatus>>>;

/// Registers the `shovel` component with the core and stores the configured bridges (an
/// invalid one fails the start, naming it). Returns the reconciler to spawn.
pub fn start(
    core: &BrokerCore,
    configured: &[BridgeSettings],
    shutdown: watch::Receiver<bool>,
) -> Result<impl std::future::Future<Output = ()> + Send + 'static, ParameterError> {
    let statuses: Statuses = Arc::default();
    let view = statuses.clone();
    core.parameters().register(
        COMPONENT,
        Arc::new(|vhost: &str, name: &str, value: &Value| {
            Definition::parse(vhost, name, value)?;
            Ok(value.clone())
        }),
        Arc::new(move |defined: &[crate::broker::parameters::Parameter]| {
            let live = view.lock();
            let mut all: Vec<_> = live.values().map(BridgeStatus::view).collect();
            // The reconciler starts a definition a moment after it is stored; until then it
            // shows as `starting` (RabbitMQ's word for it) rather than missing, so a GET right
            // after the PUT finds it.
            for p in defined {
                if !live.contains_key(&(p.vhost.clone(), p.name.clone())) {
                    all.push(BridgeStatus::not_started(&p.vhost, &p.name, &p.value).view());
                }
            }
            drop(live);
            all.sort_by(|a, b| {
                (a["vhost"].as_str(), a["name"].as_str())
                    .cmp(&(b["vhost"].as_str(), b["name"].as_str()))
            });
            all
        }),
    );
    for b in configured {
        core.parameters()
            .set(
                COMPONENT,
                &b.vhost,
                &b.name,
                &Value::Object(b.value.clone()),
            )
            .map_err(|e| match e {
                ParameterError::Invalid(m) => {
                    ParameterError::Invalid(format!("bridges '{}': {m}", b.name))
                }
                other => other,
            })?;
    }
    Ok(reconcile(core.clone(), statuses, shutdown))
}

async fn reconcile(core: BrokerCore, statuses: Statuses, mut shutdown: watch::Receiver<bool>) {
    let mut changes = core.parameters().subscribe();
    let mut running: HashMap<(String, String), Running> = HashMap::new();
    loop {
        changes.borrow_and_update();
        let wanted = core.parameters().list(Some(COMPONENT));
        let mut keep = std::collections::HashSet::new();
        for p in wanted {
            let key = (p.vhost.clone(), p.name.clone());
            keep.insert(key.clone());
            if running
                .get(&key)
                .is_some_and(|r| r.generation == p.generation)
            {
                continue;
            }
            let parsed = Definition::parse(&p.vhost, &p.name, &p.value);
            if let Some(old) = running.remove(&key) {
                let owned = old.owns_queue.clone();
                stop(old).await;
                let still = parsed.as_ref().ok().and_then(owned_queue);
                if let Some(vhost) = owned.filter(|v| still.as_ref() != Some(v)) {
                    ferry::delete_exchange_queue(&core, &vhost, &p.name).await;
                }
            }
            let def = match parsed {
                Ok(d) => d,
                Err(e) => {
                    // Stored by an older build that accepted it: shown, not run.
                    tracing::error!(bridge = %p.name, vhost = %p.vhost, error = %e, "stored bridge definition is invalid");
                    continue;
                }
            };
            let status = BridgeStatus::new(&def);
            statuses.lock().insert(key.clone(), status.clone());
            let (stop_tx, stop_rx) = watch::channel(false);
            let owns_queue = owned_queue(&def);
            let task = tokio::spawn(runner::run(core.clone(), def, status, stop_rx));
            running.insert(
                key,
                Running {
                    generation: p.generation,
                    owns_queue,
                    stop: stop_tx,
                    task,
                },
            );
        }
        let gone: Vec<_> = running
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(old) = running.remove(&key) {
                let owned = old.owns_queue.clone();
                stop(old).await;
                if let Some(vhost) = owned {
                    ferry::delete_exchange_queue(&core, &vhost, &key.1).await;
                }
            }
            statuses.lock().remove(&key);
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { break },
            _ = shutdown.changed() => break,
        }
    }
    // All at once: the server gives its tasks 10 s in all to stop.
    futures::future::join_all(running.into_values().map(stop)).await;
}

/// The vhost of the queue a bridge owns: a Ferry exchange source's bound queue.
fn owned_queue(def: &Definition) -> Option<String> {
    match (&def.src, &def.source) {
        (definition::Endpoint::Ferry { vhost }, definition::SourceSpec::Exchange { .. }) => {
            Some(vhost.clone())
        }
        _ => None,
    }
}

/// Asks a runner to stop and waits for it to return its unsettled messages; a runner stuck
/// in a remote call is aborted after a few seconds (its source then requeues on close).
async fn stop(r: Running) {
    let _ = r.stop.send(true);
    let mut task = r.task;
    if tokio::time::timeout(Duration::from_secs(5), &mut task)
        .await
        .is_err()
    {
        task.abort();
    }
}
