//! Runtime parameters: RabbitMQ's per-vhost `(component, name) -> JSON` definitions, the
//! model behind `PUT /api/parameters/{component}/{vhost}/{name}` (dynamic shovels are
//! component `shovel`).
//!
//! The core only stores and announces them. A component (the bridge runner for `shovel`)
//! registers itself with a validator, which checks and normalises a value before it is stored
//! (so a bad definition is refused with a message, never stored), and a status reporter,
//! which the admin API asks for the live state of what the component runs (`GET
//! /api/shovels`). Every change, and every restart request, bumps one watch counter the
//! component follows and reconciles from: the core never calls into the component's runtime,
//! so the layers stay one-way (the admin API and the runner only meet here). Values are
//! persisted in `meta` before they are visible, so a definition survives a restart.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::RwLock;
use serde_json::Value;
use tokio::sync::watch;

use crate::meta::{Meta, MetaError, ParameterRecord};

/// Checks a value for `(vhost, name)` and returns it as it is to be stored.
pub type Validator = Arc<dyn Fn(&str, &str, &Value) -> Result<Value, String> + Send + Sync>;
/// The state of everything defined for a component, one JSON object each, given the stored
/// definitions (so one the component has not picked up yet can be shown too).
pub type StatusReporter = Arc<dyn Fn(&[Parameter]) -> Vec<Value> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ParameterError {
    #[error("{0}")]
    Invalid(String),
    #[error("unknown parameter component '{0}'")]
    UnknownComponent(String),
    #[error("parameter '{name}' of component '{component}' in vhost '{vhost}' not found")]
    NotFound {
        component: String,
        vhost: String,
        name: String,
    },
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// One stored parameter and how many times it was (re)started: a runner restarts the thing
/// when the generation it runs differs from this one.
#[derive(Clone, Debug, PartialEq)]
pub struct Parameter {
    pub component: String,
    pub vhost: String,
    pub name: String,
    pub value: Value,
    pub generation: u64,
}

type Key = (String, String, String);

struct Component {
    validator: Validator,
    status: StatusReporter,
}

pub struct RuntimeParameters {
    meta: Meta,
    entries: RwLock<BTreeMap<Key, Parameter>>,
    components: RwLock<HashMap<String, Component>>,
    changes: watch::Sender<u64>,
    next_generation: std::sync::atomic::AtomicU64,
}

impl RuntimeParameters {
    /// Loads every stored parameter (validated again when its component registers).
    pub fn open(meta: Meta) -> Result<Self, MetaError> {
        let mut entries = BTreeMap::new();
        for r in meta.parameters()? {
            entries.insert(
                (r.component.clone(), r.vhost.clone(), r.name.clone()),
                Parameter {
                    component: r.component,
                    vhost: r.vhost,
                    name: r.name,
                    value: r.value,
                    generation: 1,
                },
            );
        }
        Ok(Self {
            meta,
            entries: RwLock::new(entries),
            components: RwLock::new(HashMap::new()),
            changes: watch::channel(0).0,
            next_generation: 2.into(),
        })
    }

    /// Makes `component` known: values for it are checked by `validator` and its live state
    /// comes from `status`.
    pub fn register(&self, component: &str, validator: Validator, status: StatusReporter) {
        self.components
            .write()
            .insert(component.to_string(), Component { validator, status });
    }

    pub fn is_registered(&self, component: &str) -> bool {
        self.components.read().contains_key(component)
    }

    /// Follows every change (set, delete, restart) of any parameter.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn generation(&self) -> u64 {
        self.next_generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn announce(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Validates and stores a value; `Ok(true)` when it was new. An unchanged value keeps its
    /// generation, so re-applying the same definition does not restart it.
    pub fn set(
        &self,
        component: &str,
        vhost: &str,
        name: &str,
        value: &Value,
    ) -> Result<bool, ParameterError> {
        let validator = self
            .components
            .read()
            .get(component)
            .map(|c| c.validator.clone())
            .ok_or_else(|| ParameterError::UnknownComponent(component.to_string()))?;
        if name.is_empty() {
            return Err(ParameterError::Invalid("the name must not be empty".into()));
        }
        let value = validator(vhost, name, value).map_err(ParameterError::Invalid)?;
        let key = (component.to_string(), vhost.to_string(), name.to_string());
        if let Some(existing) = self.entries.read().get(&key) {
            if existing.value == value {
                return Ok(false);
            }
        }
        self.meta.put_parameter(&ParameterRecord {
            component: component.to_string(),
            vhost: vhost.to_string(),
            name: name.to_string(),
            value: value.clone(),
        })?;
        let generation = self.generation();
        let created = self
            .entries
            .write()
            .insert(
                key,
                Parameter {
                    component: component.to_string(),
                    vhost: vhost.to_string(),
                    name: name.to_string(),
                    value,
                    generation,
                },
            )
            .is_none();
        self.announce();
        Ok(created)
    }

    pub fn get(&self, component: &str, vhost: &str, name: &str) -> Option<Parameter> {
        self.entries
            .read()
            .get(&(component.to_string(), vhost.to_string(), name.to_string()))
            .cloned()
    }

    /// Every parameter of `component` (all components when `None`), in name order.
    pub fn list(&self, component: Option<&str>) -> Vec<Parameter> {
        self.entries
            .read()
            .values()
            .filter(|p| component.is_none_or(|c| p.component == c))
            .cloned()
            .collect()
    }

    pub fn delete(&self, component: &str, vhost: &str, name: &str) -> Result<(), ParameterError> {
        let key = (component.to_string(), vhost.to_string(), name.to_string());
        if !self.entries.read().contains_key(&key) {
            return Err(not_found(component, vhost, name));
        }
        self.meta.delete_parameter(component, vhost, name)?;
        self.entries.write().remove(&key);
        self.announce();
        Ok(())
    }

    /// Asks the component to restart one parameter's runtime (a new generation, same value).
    pub fn restart(&self, component: &str, vhost: &str, name: &str) -> Result<(), ParameterError> {
        let key = (component.to_string(), vhost.to_string(), name.to_string());
        let generation = self.generation();
        match self.entries.write().get_mut(&key) {
            Some(p) => p.generation = generation,
            None => return Err(not_found(component, vhost, name)),
        }
        self.announce();
        Ok(())
    }

    /// The state the component reports for its definitions, or `None` when it is not
    /// registered.
    pub fn status(&self, component: &str) -> Option<Vec<Value>> {
        let status = self.components.read().get(component)?.status.clone();
        Some(status(&self.list(Some(component))))
    }
}

fn not_found(component: &str, vhost: &str, name: &str) -> ParameterError {
    ParameterError::NotFound {
        component: component.to_string(),
        vhost: vhost.to_string(),
        name: name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> RuntimeParameters {
        let p = RuntimeParameters::open(Meta::in_memory()).unwrap();
        p.register(
            "shovel",
            Arc::new(|_, _, v: &Value| {
                if v.get("bad").is_some() {
                    Err("bad key".into())
                } else {
                    Ok(v.clone())
                }
            }),
            Arc::new(|_: &[Parameter]| Vec::new()),
        );
        p
    }

    #[test]
    fn set_validates_persists_and_keeps_the_generation_of_an_unchanged_value() {
        let p = store();
        let mut changes = p.subscribe();
        assert!(p
            .set("shovel", "/", "a", &serde_json::json!({"x": 1}))
            .unwrap());
        assert!(changes.has_changed().unwrap());
        changes.borrow_and_update();
        let g = p.get("shovel", "/", "a").unwrap().generation;
        assert!(!p
            .set("shovel", "/", "a", &serde_json::json!({"x": 1}))
            .unwrap());
        assert!(!changes.has_changed().unwrap());
        assert_eq!(p.get("shovel", "/", "a").unwrap().generation, g);
        assert!(matches!(
            p.set("shovel", "/", "b", &serde_json::json!({"bad": 1})),
            Err(ParameterError::Invalid(_))
        ));
        assert!(matches!(
            p.set("federation", "/", "b", &serde_json::json!({})),
            Err(ParameterError::UnknownComponent(_))
        ));
        let reopened = RuntimeParameters::open(p.meta.clone()).unwrap();
        assert_eq!(reopened.list(Some("shovel")).len(), 1);
    }

    #[test]
    fn restart_bumps_the_generation_and_delete_forgets() {
        let p = store();
        p.set("shovel", "/", "a", &serde_json::json!({})).unwrap();
        let g = p.get("shovel", "/", "a").unwrap().generation;
        p.restart("shovel", "/", "a").unwrap();
        assert!(p.get("shovel", "/", "a").unwrap().generation > g);
        p.delete("shovel", "/", "a").unwrap();
        assert!(p.get("shovel", "/", "a").is_none());
        assert!(matches!(
            p.delete("shovel", "/", "a"),
            Err(ParameterError::NotFound { .. })
        ));
        assert!(RuntimeParameters::open(p.meta.clone())
            .unwrap()
            .list(None)
            .is_empty());
    }
}
