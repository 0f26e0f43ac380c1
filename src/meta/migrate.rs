//! One-time rewrite of a generation-1 metadata store into the current key schema.
//!
//! Generation 1 joined name parts with a bare NUL, so a key could not be split back reliably
//! once a name held a NUL (group `victim\0x` read as group `victim`). Rather than trust that
//! split, each old key is re-derived from what its value says: definitions carry their own
//! names, a committed offset carries its topic and partition (so the group is whatever precedes
//! them in the key), a topic route ends with its partition. Only a queue's opaque ack state has
//! no names in its value; it is matched against the old keys of the queue definitions.
//!
//! The rewrite (new keys in, old keys out, schema version bumped) is one atomic batch followed
//! by a flush, so a crash leaves either the old store, which is migrated again at the next
//! start, or the new one.

use std::collections::HashMap;

use serde::de::DeserializeOwned;

use super::store::{MetaOp, MetaStore};
use super::{
    keys, BindingDef, CommittedOffset, ExchangeDef, GroupRecord, MetaError, QueueDef, TopicDef,
};

const V1_PREFIX: &[u8] = b"v1/";
const V1_SEP: u8 = 0;

/// What [`migrate_v1`] did, for the start-up log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MigrationReport {
    pub rewritten: usize,
    /// Old keys that could not be understood; they are left where they are.
    pub kept: usize,
}

/// Rewrites every `v1/` key of `store` into the current schema and records the new schema
/// version, atomically.
pub fn migrate_v1(store: &dyn MetaStore) -> Result<MigrationReport, MetaError> {
    let old = store.scan_prefix(V1_PREFIX)?;
    let queue_state_keys: HashMap<Vec<u8>, Vec<u8>> = old
        .iter()
        .filter(|(k, _)| kind_and_body(k).is_some_and(|(kind, _)| kind == "queue"))
        .filter_map(|(_, v)| serde_json::from_slice::<QueueDef>(v).ok())
        .map(|q| {
            let mut body = q.vhost.as_bytes().to_vec();
            body.push(V1_SEP);
            body.extend_from_slice(q.name.as_bytes());
            (body, keys::queue_state(&q.vhost, &q.name))
        })
        .collect();

    let mut report = MigrationReport::default();
    let mut ops = Vec::with_capacity(old.len() * 2 + 1);
    for (old_key, value) in old {
        match new_key(&old_key, &value, &queue_state_keys) {
            Some(new_key) => {
                ops.push(MetaOp::Put(new_key, value));
                ops.push(MetaOp::Delete(old_key));
                report.rewritten += 1;
            }
            None => {
                tracing::warn!(
                    key = %String::from_utf8_lossy(&old_key).replace('\0', "\\0"),
                    "metadata key of schema v1 not understood; left as it is"
                );
                report.kept += 1;
            }
        }
    }
    ops.push(MetaOp::Put(
        keys::SCHEMA_KEY.to_vec(),
        keys::SCHEMA_VERSION.to_string().into_bytes(),
    ));
    store.apply(ops)?;
    store.flush()?;
    Ok(report)
}

fn kind_and_body(key: &[u8]) -> Option<(&str, &[u8])> {
    let rest = key.strip_prefix(V1_PREFIX)?;
    let slash = rest.iter().position(|b| *b == b'/')?;
    let kind = std::str::from_utf8(&rest[..slash]).ok()?;
    Some((kind, &rest[slash + 1..]))
}

fn value<T: DeserializeOwned>(raw: &[u8]) -> Option<T> {
    serde_json::from_slice(raw).ok()
}

/// `body` without a trailing `\0<partition:010>`, with the partition.
fn split_partition(body: &[u8]) -> Option<(&[u8], i32)> {
    let cut = body.iter().rposition(|b| *b == V1_SEP)?;
    let partition = std::str::from_utf8(&body[cut + 1..]).ok()?.parse().ok()?;
    Some((&body[..cut], partition))
}

fn new_key(
    old_key: &[u8],
    raw: &[u8],
    queue_state_keys: &HashMap<Vec<u8>, Vec<u8>>,
) -> Option<Vec<u8>> {
    let (kind, body) = kind_and_body(old_key)?;
    let text = |b: &[u8]| std::str::from_utf8(b).ok().map(str::to_owned);
    match kind {
        "topic" => value::<TopicDef>(raw).map(|d| keys::topic(&d.name)),
        "exchange" => value::<ExchangeDef>(raw).map(|d| keys::exchange(&d.vhost, &d.name)),
        "queue" => value::<QueueDef>(raw).map(|d| keys::queue(&d.vhost, &d.name)),
        "binding" => value::<BindingDef>(raw).map(|d| d.key()),
        "group" => value::<GroupRecord>(raw).map(|g| keys::group(&g.group_id)),
        "group_offset" => {
            let committed = value::<CommittedOffset>(raw)?;
            // The value names the topic and partition, so the group is what precedes them.
            let suffix = format!("\0{}\0{:010}", committed.topic, committed.partition);
            let group = text(body.strip_suffix(suffix.as_bytes())?)?;
            Some(keys::group_offset(
                &group,
                &committed.topic,
                committed.partition,
            ))
        }
        "topic_route" => {
            let (topic, partition) = split_partition(body)?;
            Some(keys::topic_route(&text(topic)?, partition))
        }
        "queue_state" => queue_state_keys.get(body).cloned().or_else(|| {
            // A queue whose definition is gone: vhosts hold no NUL in practice.
            let cut = body.iter().position(|b| *b == V1_SEP)?;
            Some(keys::queue_state(
                &text(&body[..cut])?,
                &text(&body[cut + 1..])?,
            ))
        }),
        "cluster" if body == b"id" => Some(keys::cluster_id()),
        "counter" if body == b"producer_id" => Some(keys::producer_id_counter()),
        "producer" => Some(keys::producer(text(body)?.parse().ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::meta::{DestinationKind, Meta, SledStore};

    /// A key as generation 1 wrote it: parts joined by a bare NUL.
    fn v1_key(kind: &str, parts: &[&str]) -> Vec<u8> {
        let mut k = format!("v1/{kind}/").into_bytes();
        k.extend_from_slice(parts.join("\0").as_bytes());
        k
    }

    fn offset(topic: &str, partition: i32, offset: i64) -> CommittedOffset {
        CommittedOffset {
            topic: topic.into(),
            partition,
            offset,
            leader_epoch: -1,
            metadata: None,
            commit_ms: 1,
        }
    }

    /// Fills `store` the way the previous release left a data directory.
    fn write_v1_store(store: &dyn MetaStore) {
        let json = |v: serde_json::Value| v.to_string().into_bytes();
        let mut ops = vec![MetaOp::Put(keys::SCHEMA_KEY.to_vec(), b"1".to_vec())];
        let mut put = |k: Vec<u8>, v: Vec<u8>| ops.push(MetaOp::Put(k, v));
        put(
            v1_key("topic", &["orders"]),
            json(
                serde_json::json!({"name": "orders", "topic_id": [1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1], "partitions": 2}),
            ),
        );
        for (group, o) in [("victim", 5), ("victim\0x", 99), ("\0", 7)] {
            put(
                v1_key("group_offset", &[group, "orders", "0000000001"]),
                serde_json::to_vec(&offset("orders", 1, o)).unwrap(),
            );
        }
        put(
            v1_key("group", &["victim"]),
            json(serde_json::json!({"group_id": "victim", "generation": 3})),
        );
        put(
            v1_key("queue", &["/", "jobs\0x"]),
            json(
                serde_json::json!({"vhost": "/", "name": "jobs\0x", "durable": true, "auto_delete": false}),
            ),
        );
        put(
            v1_key("queue_state", &["/", "jobs\0x"]),
            b"\x01\x02".to_vec(),
        );
        let binding = BindingDef {
            vhost: "/".into(),
            source: "amq.direct".into(),
            destination_kind: DestinationKind::Queue,
            destination: "jobs\0x".into(),
            routing_key: "k".into(),
            arguments: serde_json::json!({}),
        };
        put(
            v1_key(
                "binding",
                &["/", "amq.direct", "queue", "jobs\0x", "k", "{}"],
            ),
            serde_json::to_vec(&binding).unwrap(),
        );
        put(
            v1_key("exchange", &["/", "ex"]),
            json(
                serde_json::json!({"vhost": "/", "name": "ex", "kind": "topic", "durable": true, "auto_delete": false, "internal": false}),
            ),
        );
        put(v1_key("cluster", &["id"]), json(serde_json::json!("AAAA")));
        put(v1_key("counter", &["producer_id"]), b"12".to_vec());
        put(
            v1_key("producer", &["00000000000000000004"]),
            json(serde_json::json!({"producer_id": 4, "epoch": 2})),
        );
        put(
            v1_key("topic_route", &["orders", "0000000001"]),
            json(serde_json::json!({"next": 40})),
        );
        put(v1_key("mystery", &["x"]), b"?".to_vec());
        store.apply(ops).unwrap();
    }

    fn assert_migrated(meta: &Meta) {
        let offsets = |g: &str| -> Vec<i64> {
            meta.committed_offsets(g)
                .unwrap()
                .iter()
                .map(|o| o.offset)
                .collect()
        };
        assert_eq!(offsets("victim"), vec![5]);
        assert_eq!(offsets("victim\0x"), vec![99]);
        assert_eq!(offsets("\0"), vec![7]);
        assert_eq!(offsets(""), Vec::<i64>::new());
        assert_eq!(
            meta.group_ids().unwrap(),
            vec!["\0".to_string(), "victim".into(), "victim\0x".into()]
        );
        assert_eq!(meta.group("victim").unwrap().unwrap().generation, 3);
        assert_eq!(meta.topic("orders").unwrap().unwrap().partitions, 2);
        assert_eq!(meta.queues().unwrap()[0].name, "jobs\0x");
        assert_eq!(
            meta.queue_state("/", "jobs\0x").unwrap().as_deref(),
            Some(&b"\x01\x02"[..])
        );
        assert_eq!(meta.bindings().unwrap()[0].destination, "jobs\0x");
        assert_eq!(meta.exchanges().unwrap()[0].name, "ex");
        assert_eq!(meta.cluster_id().unwrap(), "AAAA");
        assert_eq!(meta.allocate_producer_id().unwrap(), 12);
        assert_eq!(meta.producer(4).unwrap().unwrap().epoch, 2);
        assert_eq!(meta.topic_route("orders", 1).unwrap().unwrap().next, 40);
    }

    #[test]
    fn a_generation_1_store_opens_with_every_record_under_its_own_name() {
        let store = Arc::new(crate::meta::MemoryStore::new());
        write_v1_store(store.as_ref());
        let meta = Meta::open(store.clone()).unwrap();
        assert_migrated(&meta);
        // What was not understood stays; nothing else of generation 1 is left.
        let left: Vec<_> = store.scan_prefix(V1_PREFIX).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0, v1_key("mystery", &["x"]));
        assert_eq!(
            store.get(keys::SCHEMA_KEY).unwrap().unwrap(),
            keys::SCHEMA_VERSION.to_string().into_bytes()
        );
    }

    #[test]
    fn a_generation_1_sled_directory_migrates_once_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            write_v1_store(&store);
            store.flush().unwrap();
        }
        {
            let meta = Meta::open(Arc::new(SledStore::open(dir.path()).unwrap())).unwrap();
            assert_migrated(&meta);
            meta.flush().unwrap();
        }
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let before = store.scan_prefix(b"").unwrap();
        let meta = Meta::open(store.clone()).unwrap();
        assert_eq!(
            store.scan_prefix(b"").unwrap(),
            before,
            "a second open rewrites nothing"
        );
        assert_eq!(meta.committed_offsets("victim").unwrap()[0].offset, 5);
    }
}
