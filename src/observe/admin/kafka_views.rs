//! Kafka-shaped views: `GET /api/kafka/clients` groups the live Kafka connections by client id
//! (what `kafka-consumer-groups` and Kafka UIs call a client), with their hosts, users, byte
//! totals and the consumer groups whose members use that id, so "who is `billing-worker` and
//! what is it doing" is one request.

use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use serde::Serialize;

use super::Admin;
use crate::broker::connections::Protocol;

#[derive(Serialize, Default)]
pub(super) struct KafkaClient {
    client_id: String,
    connections: Vec<String>,
    hosts: BTreeSet<String>,
    users: BTreeSet<String>,
    recv_oct: u64,
    send_oct: u64,
    /// Groups with a member that joined under this client id.
    groups: BTreeSet<String>,
}

pub(super) async fn list_clients(Admin(core): Admin) -> Json<Vec<KafkaClient>> {
    let mut by_id: BTreeMap<String, KafkaClient> = BTreeMap::new();
    for c in core.connections().list() {
        if c.protocol != Protocol::Kafka {
            continue;
        }
        let id = c.client_name.clone().unwrap_or_default();
        let entry = by_id.entry(id.clone()).or_insert_with(|| KafkaClient {
            client_id: id,
            ..Default::default()
        });
        entry.connections.push(c.name.clone());
        entry.hosts.insert(c.peer.ip().to_string());
        entry
            .users
            .insert(c.user.clone().unwrap_or_else(|| "ANONYMOUS".to_string()));
        entry.recv_oct += c.recv_oct;
        entry.send_oct += c.send_oct;
    }
    for g in core.groups().list_groups(&[]) {
        for m in core.groups().describe_group(&g.group_id).members {
            if let Some(client) = by_id.get_mut(&m.client_id) {
                client.groups.insert(g.group_id.clone());
            }
        }
    }
    Json(by_id.into_values().collect())
}
