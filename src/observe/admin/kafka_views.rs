//! Kafka-shaped views: `GET /api/kafka/clients` groups the live Kafka connections by client id
//! (what `kafka-consumer-groups` and Kafka UIs call a client), with their hosts, users, byte
//! totals and the consumer groups whose members use that id, so "who is `billing-worker` and
//! what is it doing" is one request. `GET /api/kafka/producers` lists the producer ids the
//! partitions remember (idempotent and transactional producers: epoch, last sequence and
//! offset per partition) with their transactional id and transaction state, as
//! `kafka-transactions.sh describe-producers` and `list` show them.

use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use serde::Serialize;

use super::Admin;
use crate::broker::connections::Protocol;
use crate::broker::txn::status_name;

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

#[derive(Serialize)]
pub(super) struct KafkaProducer {
    producer_id: i64,
    /// The newest epoch seen: the coordinator's for a transactional producer, else the
    /// highest among its partitions.
    epoch: i16,
    transactional_id: Option<String>,
    /// Kafka's state name (`Ongoing`, `CompleteCommit`, ...) for a transactional producer.
    transaction_state: Option<&'static str>,
    partitions: Vec<ProducerPartition>,
}

#[derive(Serialize)]
struct ProducerPartition {
    topic: String,
    partition: i32,
    epoch: i16,
    last_sequence: i32,
    last_offset: i64,
}

pub(super) async fn list_producers(Admin(core): Admin) -> Json<Vec<KafkaProducer>> {
    let mut by_id: BTreeMap<i64, KafkaProducer> = BTreeMap::new();
    let entry = |by_id: &mut BTreeMap<i64, KafkaProducer>, producer_id: i64| {
        by_id.entry(producer_id).or_insert_with(|| KafkaProducer {
            producer_id,
            epoch: 0,
            transactional_id: None,
            transaction_state: None,
            partitions: Vec::new(),
        });
    };
    for topic in core.topics() {
        for (index, handle) in topic.partitions().iter().enumerate() {
            for p in handle.producers() {
                entry(&mut by_id, p.producer_id);
                if let Some(producer) = by_id.get_mut(&p.producer_id) {
                    producer.epoch = producer.epoch.max(p.epoch);
                    producer.partitions.push(ProducerPartition {
                        topic: topic.name().to_string(),
                        partition: index as i32,
                        epoch: p.epoch,
                        last_sequence: p.last_sequence,
                        last_offset: p.last_offset,
                    });
                }
            }
        }
    }
    for txn in core.transactions().await {
        entry(&mut by_id, txn.producer_id);
        if let Some(producer) = by_id.get_mut(&txn.producer_id) {
            producer.epoch = txn.epoch;
            producer.transaction_state = Some(status_name(txn.status));
            producer.transactional_id = Some(txn.transactional_id);
        }
    }
    Json(by_id.into_values().collect())
}
