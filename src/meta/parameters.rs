//! Stored runtime parameters: RabbitMQ's `(component, vhost, name) -> JSON value` records
//! (`rabbitmqctl set_parameter`, `PUT /api/parameters/...`). Bridges keep their shovel
//! definitions here (component `shovel`) so they restart with the broker; the typed logic
//! lives in `broker::parameters`, this file is only their storage.

use serde::{Deserialize, Serialize};

use super::{keys, Meta, MetaError};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParameterRecord {
    pub component: String,
    pub vhost: String,
    pub name: String,
    /// The definition as the user gave it (after the component's validation).
    pub value: serde_json::Value,
}

impl Meta {
    pub fn put_parameter(&self, p: &ParameterRecord) -> Result<(), MetaError> {
        self.put(keys::parameter(&p.component, &p.vhost, &p.name), p)?;
        self.store.flush()
    }

    pub fn delete_parameter(
        &self,
        component: &str,
        vhost: &str,
        name: &str,
    ) -> Result<(), MetaError> {
        self.store
            .delete(&keys::parameter(component, vhost, name))?;
        self.store.flush()
    }

    pub fn parameters(&self) -> Result<Vec<ParameterRecord>, MetaError> {
        self.scan(&keys::parameters())
    }
}
