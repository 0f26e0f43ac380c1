//! The versioned key schema of the metadata store.
//!
//! Every key starts with the schema generation (`v1/`) and its kind, so a later release can add
//! `v2/` keys, migrate, and drop the old ones without guessing what a key means. Name parts are
//! joined with a NUL byte, which neither Kafka topic names nor AMQP names in practice contain
//! (the broker rejects names with NUL), so prefix scans by an owner never leak into a sibling
//! (`group "a"` cannot match `group "ab"`). Numbers are zero-padded decimal, so byte order is numeric order and no number contains the separator.

/// The schema generation this build writes and understands.
pub const SCHEMA_VERSION: u32 = 1;
/// Holds the schema generation of the data directory, as a decimal string.
pub const SCHEMA_KEY: &[u8] = b"schema_version";

const SEP: u8 = 0;

fn key(kind: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = format!("v{SCHEMA_VERSION}/{kind}/").into_bytes();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(SEP);
        }
        k.extend_from_slice(p);
    }
    k
}

/// Prefix of every key of `kind` owned by `parts` (with a trailing separator when `parts` is
/// non-empty, so the owner's name must match whole).
fn prefix(kind: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = key(kind, parts);
    if !parts.is_empty() {
        k.push(SEP);
    }
    k
}

pub fn topic(name: &str) -> Vec<u8> {
    key("topic", &[name.as_bytes()])
}
pub fn topics() -> Vec<u8> {
    prefix("topic", &[])
}

pub fn exchange(vhost: &str, name: &str) -> Vec<u8> {
    key("exchange", &[vhost.as_bytes(), name.as_bytes()])
}
pub fn exchanges() -> Vec<u8> {
    prefix("exchange", &[])
}

pub fn queue(vhost: &str, name: &str) -> Vec<u8> {
    key("queue", &[vhost.as_bytes(), name.as_bytes()])
}
pub fn queues() -> Vec<u8> {
    prefix("queue", &[])
}

/// A binding is identified by everything RabbitMQ uses to tell bindings apart.
pub fn binding(
    vhost: &str,
    source: &str,
    destination_kind: &str,
    destination: &str,
    routing_key: &str,
    arguments_json: &str,
) -> Vec<u8> {
    key(
        "binding",
        &[
            vhost.as_bytes(),
            source.as_bytes(),
            destination_kind.as_bytes(),
            destination.as_bytes(),
            routing_key.as_bytes(),
            arguments_json.as_bytes(),
        ],
    )
}
pub fn bindings() -> Vec<u8> {
    prefix("binding", &[])
}

pub fn group_offset(group: &str, topic: &str, partition: i32) -> Vec<u8> {
    key(
        "group_offset",
        &[
            group.as_bytes(),
            topic.as_bytes(),
            format!("{partition:010}").as_bytes(),
        ],
    )
}
pub fn group_offsets(group: &str) -> Vec<u8> {
    prefix("group_offset", &[group.as_bytes()])
}
pub fn all_group_offsets() -> Vec<u8> {
    prefix("group_offset", &[])
}

pub fn group(group: &str) -> Vec<u8> {
    key("group", &[group.as_bytes()])
}
pub fn groups() -> Vec<u8> {
    prefix("group", &[])
}

pub fn cluster_id() -> Vec<u8> {
    key("cluster", &[b"id"])
}

pub fn producer_id_counter() -> Vec<u8> {
    key("counter", &[b"producer_id"])
}

pub fn producer(producer_id: i64) -> Vec<u8> {
    key("producer", &[format!("{producer_id:020}").as_bytes()])
}
pub fn producers() -> Vec<u8> {
    prefix("producer", &[])
}

/// How far the topic router has routed partition `partition` of `topic` into bound queues
/// (the next offset to route).
pub fn topic_route(topic: &str, partition: i32) -> Vec<u8> {
    key(
        "topic_route",
        &[topic.as_bytes(), format!("{partition:010}").as_bytes()],
    )
}
pub fn topic_routes(topic: &str) -> Vec<u8> {
    prefix("topic_route", &[topic.as_bytes()])
}

pub fn queue_state(vhost: &str, name: &str) -> Vec<u8> {
    key("queue_state", &[vhost.as_bytes(), name.as_bytes()])
}

/// Splits the name parts back out of a key produced by this module.
pub fn parts(key: &[u8]) -> Vec<&[u8]> {
    let body = key
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'/')
        .nth(1)
        .map(|(i, _)| &key[i + 1..])
        .unwrap_or(&[]);
    body.split(|b| *b == SEP).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_prefix_matches_whole_names_only() {
        let a = group_offset("a", "t", 0);
        let ab = group_offset("ab", "t", 0);
        assert!(a.starts_with(&group_offsets("a")));
        assert!(!ab.starts_with(&group_offsets("a")));
    }

    #[test]
    fn keys_are_versioned_and_split_back() {
        let k = queue("/", "orders");
        assert!(k.starts_with(b"v1/queue/"));
        assert_eq!(parts(&k), vec![b"/".as_slice(), b"orders".as_slice()]);
        let k = group_offset("g", "t", 7);
        assert_eq!(parts(&k)[2], b"0000000007");
    }
}
