//! Kafka's "consumer" protocol formats for group members: the subscription a member joins with
//! and the assignment the leader hands out (ConsumerProtocolSubscription / Assignment, each a
//! big-endian i16 version, then the body). Version 0 is written, which every Kafka client
//! reads; any version is read through the v0 prefix all versions share. Pure functions, shared
//! by the Kafka adapter (OffsetDelete reads members' subscriptions) and native group members.

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::broker::group::JoinedMember;

/// The member metadata of a subscription to `topic`.
pub(crate) fn subscription(topic: &str) -> Bytes {
    let body = ConsumerProtocolSubscription::default()
        .with_topics(vec![StrBytes::from_string(topic.to_string())]);
    versioned(|buf| body.encode(buf, 0))
}

/// The topics a member subscribes to; `None` for metadata that is not a subscription.
pub(crate) fn subscribed_topics(metadata: &[u8]) -> Option<Vec<String>> {
    let mut buf = Bytes::copy_from_slice(metadata);
    if buf.remaining() < 2 {
        return None;
    }
    let _version = buf.get_i16();
    ConsumerProtocolSubscription::decode(&mut buf, 0)
        .ok()
        .map(|s| s.topics.iter().map(|t| t.to_string()).collect())
}

/// The partitions of `topic` in an assignment (sorted); none when it cannot be read.
pub(crate) fn partitions_of(assignment: &[u8], topic: &str) -> Vec<i32> {
    let mut buf = Bytes::copy_from_slice(assignment);
    if buf.remaining() < 2 {
        return Vec::new();
    }
    let _version = buf.get_i16();
    let Ok(a) = ConsumerProtocolAssignment::decode(&mut buf, 0) else {
        tracing::warn!(
            topic,
            "the group leader's assignment could not be read; reading nothing"
        );
        return Vec::new();
    };
    let mut partitions: Vec<i32> = a
        .assigned_partitions
        .into_iter()
        .filter(|tp| tp.topic.0.as_str() == topic)
        .flat_map(|tp| tp.partitions)
        .collect();
    partitions.sort_unstable();
    partitions.dedup();
    partitions
}

/// Kafka's range assignor over `members`: per topic, its subscribers in member-id order take
/// consecutive ranges of partitions, the first `partitions % subscribers` one more. Every member
/// gets an assignment, maybe empty. `partition_count` gives a topic's partitions (`None`: the
/// topic does not exist, and nobody gets any of it).
pub(crate) fn assign_ranges(
    members: &[JoinedMember],
    partition_count: impl Fn(&str) -> Option<usize>,
) -> Vec<(String, Bytes)> {
    let mut subscribers: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for m in members {
        for topic in subscribed_topics(&m.metadata).unwrap_or_default() {
            subscribers.entry(topic).or_default().push(&m.member_id);
        }
    }
    let mut assigned: BTreeMap<&str, Vec<TopicPartition>> = members
        .iter()
        .map(|m| (m.member_id.as_str(), Vec::new()))
        .collect();
    for (topic, mut ids) in subscribers {
        let Some(count) = partition_count(&topic) else {
            continue;
        };
        ids.sort_unstable();
        ids.dedup();
        let (each, extra) = (count / ids.len(), count % ids.len());
        let mut next = 0;
        for (i, id) in ids.into_iter().enumerate() {
            let take = each + usize::from(i < extra);
            if take == 0 {
                continue;
            }
            let partitions = (next..next + take).filter_map(|p| i32::try_from(p).ok());
            if let Some(list) = assigned.get_mut(id) {
                list.push(
                    TopicPartition::default()
                        .with_topic(TopicName(StrBytes::from_string(topic.clone())))
                        .with_partitions(partitions.collect()),
                );
            }
            next += take;
        }
    }
    assigned
        .into_iter()
        .map(|(id, partitions)| {
            let body = ConsumerProtocolAssignment::default().with_assigned_partitions(partitions);
            (id.to_string(), versioned(|buf| body.encode(buf, 0)))
        })
        .collect()
}

/// A version-0 prefix, then the body `encode` writes.
fn versioned(encode: impl FnOnce(&mut BytesMut) -> anyhow::Result<()>) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    // Encoding a v0 body of strings and integers into memory cannot fail.
    if let Err(e) = encode(&mut buf) {
        tracing::error!(error = %e, "encoding a consumer-protocol message failed");
    }
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, topic: &str) -> JoinedMember {
        JoinedMember {
            member_id: id.into(),
            instance_id: None,
            metadata: subscription(topic),
        }
    }

    #[test]
    fn ranges_split_partitions_in_member_order_and_round_trip() {
        let members = [
            member("b", "orders"),
            member("a", "orders"),
            member("c", "other"),
        ];
        let assigned: BTreeMap<String, Bytes> =
            assign_ranges(&members, |t| (t == "orders").then_some(3))
                .into_iter()
                .collect();
        assert_eq!(partitions_of(&assigned["a"], "orders"), vec![0, 1]);
        assert_eq!(partitions_of(&assigned["b"], "orders"), vec![2]);
        assert!(
            partitions_of(&assigned["c"], "other").is_empty(),
            "unknown topic"
        );
        assert_eq!(
            subscribed_topics(&subscription("x")),
            Some(vec!["x".to_string()])
        );
    }
}
