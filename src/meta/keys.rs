//! The versioned key schema of the metadata store.
//!
//! Every key starts with the schema generation (`v2/`) and its kind, so a later release can add
//! `v3/` keys, migrate, and drop the old ones without guessing what a key means. Names come from
//! peers and may hold any byte, NUL included, so each name part is *escaped and terminated*
//! (the FoundationDB tuple-layer trick): a NUL inside a name is written `00 FF`, and every part
//! ends with `00 01`. Two consequences the rest of the store relies on:
//!
//! - the encoding is injective: distinct name tuples give distinct keys, and [`parts`] gives the
//!   tuple back;
//! - the key of an owner is a whole-part prefix of the keys it owns and of nothing else:
//!   `group_offsets("a")` matches neither group `"ab"` nor group `"a\0x"`.
//!
//! Numbers are zero-padded decimal, so byte order is numeric order. Generation 1 joined parts
//! with a bare NUL, which made `victim\0x` look like `victim` to a prefix scan; stores written by
//! it are rewritten to this schema once at open (see `super::migrate`).

/// The schema generation this build writes and understands.
pub const SCHEMA_VERSION: u32 = 2;
/// Holds the schema generation of the data directory, as a decimal string.
pub const SCHEMA_KEY: &[u8] = b"schema_version";

const ESCAPE: u8 = 0x00;
/// After [`ESCAPE`]: a NUL byte that belongs to the name.
const ESCAPED_NUL: u8 = 0xFF;
/// After [`ESCAPE`]: the end of a name part.
const TERMINATOR: u8 = 0x01;

fn push_part(key: &mut Vec<u8>, part: &[u8]) {
    for &b in part {
        if b == ESCAPE {
            key.extend_from_slice(&[ESCAPE, ESCAPED_NUL]);
        } else {
            key.push(b);
        }
    }
    key.extend_from_slice(&[ESCAPE, TERMINATOR]);
}

fn kind_prefix(kind: &str) -> Vec<u8> {
    format!("v{SCHEMA_VERSION}/{kind}/").into_bytes()
}

fn key(kind: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = kind_prefix(kind);
    for p in parts {
        push_part(&mut k, p);
    }
    k
}

/// Prefix of every key of `kind` owned by `parts`. Every part carries its terminator, so the
/// owner's name must match whole.
fn prefix(kind: &str, parts: &[&[u8]]) -> Vec<u8> {
    key(kind, parts)
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

/// A registered schema by its registry id (ids are positive, so they pad to ten digits).
pub fn schema(id: i32) -> Vec<u8> {
    key("schema", &[format!("{id:010}").as_bytes()])
}
pub fn schemas() -> Vec<u8> {
    prefix("schema", &[])
}

/// Version `version` of a schema-registry subject.
pub fn subject_version(subject: &str, version: i32) -> Vec<u8> {
    key(
        "subject_version",
        &[subject.as_bytes(), format!("{version:010}").as_bytes()],
    )
}
pub fn subject_versions() -> Vec<u8> {
    prefix("subject_version", &[])
}

/// The registry's compatibility level and mode: of one subject, or global (`None`).
pub fn schema_config(subject: Option<&str>) -> Vec<u8> {
    match subject {
        Some(s) => key("schema_config", &[s.as_bytes()]),
        None => key("schema_config_global", &[]),
    }
}
pub fn schema_configs() -> Vec<u8> {
    prefix("schema_config", &[])
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

/// A transactional id's coordinator state (see `broker::txn`).
pub fn transaction(transactional_id: &str) -> Vec<u8> {
    key("txn", &[transactional_id.as_bytes()])
}
pub fn transactions() -> Vec<u8> {
    prefix("txn", &[])
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

/// An event id a named idempotent handler completed (see `broker::processed`).
pub fn processed(handler: &str, event_id: &str) -> Vec<u8> {
    key("processed", &[handler.as_bytes(), event_id.as_bytes()])
}
pub fn processed_by(handler: &str) -> Vec<u8> {
    prefix("processed", &[handler.as_bytes()])
}

/// Event store: one stream's index entry in an event-store topic's partition.
pub fn es_stream(topic: &str, partition: i32, stream: &str) -> Vec<u8> {
    key(
        "es_stream",
        &[
            topic.as_bytes(),
            format!("{partition:010}").as_bytes(),
            stream.as_bytes(),
        ],
    )
}
pub fn es_streams(topic: &str, partition: i32) -> Vec<u8> {
    prefix(
        "es_stream",
        &[topic.as_bytes(), format!("{partition:010}").as_bytes()],
    )
}
/// Event store: a sparse revision -> log offset entry of one stream.
pub fn es_revision(topic: &str, partition: i32, stream: &str, revision: u64) -> Vec<u8> {
    key(
        "es_revision",
        &[
            topic.as_bytes(),
            format!("{partition:010}").as_bytes(),
            stream.as_bytes(),
            format!("{revision:020}").as_bytes(),
        ],
    )
}
pub fn es_revisions(topic: &str, partition: i32, stream: &str) -> Vec<u8> {
    prefix(
        "es_revision",
        &[
            topic.as_bytes(),
            format!("{partition:010}").as_bytes(),
            stream.as_bytes(),
        ],
    )
}
/// Event store: the log offset below which a partition's records are in the stored index.
pub fn es_indexed(topic: &str, partition: i32) -> Vec<u8> {
    key(
        "es_indexed",
        &[topic.as_bytes(), format!("{partition:010}").as_bytes()],
    )
}
/// Event store: a persistent subscription group's definition.
pub fn es_psub(topic: &str, group: &str) -> Vec<u8> {
    key("es_psub", &[topic.as_bytes(), group.as_bytes()])
}
/// Every persistent subscription group (of `topic`, or of every topic when `None`).
pub fn es_psubs(topic: Option<&str>) -> Vec<u8> {
    match topic {
        Some(t) => prefix("es_psub", &[t.as_bytes()]),
        None => prefix("es_psub", &[]),
    }
}
/// Event store: a persistent subscription group's checkpoint.
pub fn es_psub_checkpoint(topic: &str, group: &str) -> Vec<u8> {
    key("es_psub_cp", &[topic.as_bytes(), group.as_bytes()])
}
/// Every event-store key of `topic`, by kind (for topic deletion).
pub fn es_topic_prefixes(topic: &str) -> [Vec<u8>; 5] {
    [
        prefix("es_stream", &[topic.as_bytes()]),
        prefix("es_revision", &[topic.as_bytes()]),
        prefix("es_indexed", &[topic.as_bytes()]),
        prefix("es_psub", &[topic.as_bytes()]),
        prefix("es_psub_cp", &[topic.as_bytes()]),
    ]
}

pub fn user(name: &str) -> Vec<u8> {
    key("user", &[name.as_bytes()])
}
pub fn users() -> Vec<u8> {
    prefix("user", &[])
}

/// RabbitMQ's permissions are per (vhost, user).
pub fn permission(vhost: &str, user: &str) -> Vec<u8> {
    key("permission", &[vhost.as_bytes(), user.as_bytes()])
}
pub fn permissions() -> Vec<u8> {
    prefix("permission", &[])
}

pub fn vhost(name: &str) -> Vec<u8> {
    key("vhost", &[name.as_bytes()])
}
pub fn vhosts() -> Vec<u8> {
    prefix("vhost", &[])
}

/// A Kafka ACL binding: every field is part of the key, so a binding is stored once.
pub fn acl(
    resource_type: i8,
    pattern_type: i8,
    resource_name: &str,
    principal: &str,
    host: &str,
    operation: i8,
    permission: i8,
) -> Vec<u8> {
    key(
        "acl",
        &[
            resource_type.to_string().as_bytes(),
            pattern_type.to_string().as_bytes(),
            resource_name.as_bytes(),
            principal.as_bytes(),
            host.as_bytes(),
            operation.to_string().as_bytes(),
            permission.to_string().as_bytes(),
        ],
    )
}
pub fn acls() -> Vec<u8> {
    prefix("acl", &[])
}

/// A runtime parameter (RabbitMQ's `/api/parameters/{component}/{vhost}/{name}`; shovel
/// definitions are component `shovel`).
pub fn parameter(component: &str, vhost: &str, name: &str) -> Vec<u8> {
    key(
        "parameter",
        &[component.as_bytes(), vhost.as_bytes(), name.as_bytes()],
    )
}
pub fn parameters() -> Vec<u8> {
    prefix("parameter", &[])
}

/// Present once the user store was first set up (default users created or configured ones
/// written), so deleting every user does not bring the default ones back at the next start.
pub fn users_initialised() -> Vec<u8> {
    key("setting", &[b"users_initialised"])
}

/// The name parts of a key produced by this module, or `None` if `key` is not one (another
/// generation, or damaged).
pub fn parts(key: &[u8]) -> Option<Vec<Vec<u8>>> {
    let body = key.strip_prefix(format!("v{SCHEMA_VERSION}/").as_bytes())?;
    let slash = body.iter().position(|b| *b == b'/')?;
    let mut rest = &body[slash + 1..];
    let mut parts = Vec::new();
    let mut current = Vec::new();
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        if b != ESCAPE {
            current.push(b);
            continue;
        }
        let (&code, tail) = rest.split_first()?;
        rest = tail;
        match code {
            ESCAPED_NUL => current.push(0),
            TERMINATOR => parts.push(std::mem::take(&mut current)),
            _ => return None,
        }
    }
    // Every part is terminated, so anything left over means the key was cut short.
    current.is_empty().then_some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_prefix_matches_whole_names_only() {
        let a = group_offset("a", "t", 0);
        assert!(a.starts_with(&group_offsets("a")));
        for other in ["ab", "a\0x", "a\0", ""] {
            let k = group_offset(other, "t", 0);
            assert!(!k.starts_with(&group_offsets("a")), "{other:?}");
        }
        // `group` is not a prefix of `group_offset`: kinds end with a slash.
        assert!(!a.starts_with(&groups()));
    }

    #[test]
    fn keys_are_versioned_and_split_back() {
        let k = queue("/", "orders");
        assert!(k.starts_with(b"v2/queue/"));
        assert_eq!(parts(&k).unwrap(), vec![b"/".to_vec(), b"orders".to_vec()]);
        let k = group_offset("\0", "t", 7);
        assert_eq!(
            parts(&k).unwrap(),
            vec![b"\0".to_vec(), b"t".to_vec(), b"0000000007".to_vec()]
        );
        assert_eq!(parts(b"v1/group/g"), None);
        assert_eq!(parts(b"v2/group/g"), None, "unterminated part");
        assert_eq!(parts(b"v2/group/g\0\x07"), None, "unknown escape");
    }
}
