//! KIP-848 consumer groups end to end through librdkafka 2.12 with `group.protocol=consumer`
//! (ConsumerGroupHeartbeat v1, OffsetCommit/OffsetFetch v9): three consumers join and leave one
//! by one while records keep arriving; after each step every partition is owned by exactly one
//! consumer (as the consumers themselves see it and as ConsumerGroupDescribe's core view says),
//! and across all the rebalances no record is lost or processed twice.
//!
//! "Processed" means consumed and then committed synchronously: a record whose commit fails is
//! not counted, and must come again, to the same consumer (which seeks back to it) or to the
//! partition's next owner from the committed offset. Two owners of one partition at once would both commit it; a partition
//! nobody gets would leave records unprocessed.
//!
//! librdkafka calls block, so the whole scenario runs on one blocking thread that polls the
//! consumers in turn; the broker keeps both runtime workers.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::Offset;

use ferry::broker::GroupState;
use ferry::testing::TestBroker;

const TOPIC: &str = "kip848";
const GROUP: &str = "kip848-group";
const PARTITIONS: i32 = 6;
/// Upper bound for the group to settle after a step.
const SETTLE: Duration = Duration::from_secs(30);

fn consumer(bootstrap: &str, name: &str) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", GROUP)
        .set("group.protocol", "consumer")
        .set("client.id", name)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    c.subscribe(&[TOPIC]).expect("subscribe");
    c
}

fn produce(bootstrap: &str, range: std::ops::Range<usize>) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "1")
        .create()
        .expect("producer");
    for i in range {
        let payload = format!("r{i}");
        let partition = (i % PARTITIONS as usize) as i32;
        loop {
            let record = BaseRecord::<(), _>::to(TOPIC)
                .payload(&payload)
                .partition(partition);
            match producer.send(record) {
                Ok(()) => break,
                Err(_) => {
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(15)).expect("flush");
}

/// What the consumers processed: payload -> how many times it was consumed and committed.
#[derive(Default)]
struct Ledger {
    processed: BTreeMap<String, usize>,
}

impl Ledger {
    /// One poll round over every consumer: each record is committed synchronously and counted
    /// only if the commit succeeded.
    fn pump(&mut self, consumers: &[(&str, &BaseConsumer)]) {
        for (_, c) in consumers {
            for _ in 0..20 {
                let Some(polled) = c.poll(Duration::from_millis(5)) else {
                    break;
                };
                let Ok(msg) = polled else { continue };
                let payload =
                    String::from_utf8_lossy(msg.payload().unwrap_or_default()).into_owned();
                if c.commit_message(&msg, CommitMode::Sync).is_ok() {
                    *self.processed.entry(payload).or_default() += 1;
                } else {
                    // A commit refused while the partition stays ours (a STALE_MEMBER_EPOCH in
                    // the middle of a rebalance) must not let the next record's commit cover
                    // this one: go back and process it again, as an application would. If the
                    // partition has moved on the seek fails and its next owner starts here.
                    let _ = c.seek(
                        msg.topic(),
                        msg.partition(),
                        Offset::Offset(msg.offset()),
                        Duration::from_secs(1),
                    );
                    break;
                }
            }
        }
    }
}

/// The partitions each consumer owns, if together they own every partition exactly once.
fn exact_ownership(consumers: &[(&str, &BaseConsumer)]) -> Option<BTreeMap<String, BTreeSet<i32>>> {
    let mut seen = BTreeSet::new();
    let mut owned = BTreeMap::new();
    for (name, c) in consumers {
        let mine: BTreeSet<i32> = c
            .assignment()
            .ok()?
            .elements()
            .iter()
            .map(|e| e.partition())
            .collect();
        for p in &mine {
            if !seen.insert(*p) {
                return None;
            }
        }
        owned.insert(name.to_string(), mine);
    }
    (seen.len() == PARTITIONS as usize).then_some(owned)
}

/// Polls until every partition has exactly one owner among `consumers`, the broker's view
/// agrees (Stable, one member per consumer, the same split) and stays so for a few polls.
fn settle(
    broker: &TestBroker,
    ledger: &mut Ledger,
    consumers: &[(&str, &BaseConsumer)],
    step: &str,
) {
    let deadline = Instant::now() + SETTLE;
    let mut stable_rounds = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "{step}: the group did not settle"
        );
        ledger.pump(consumers);
        let clients = exact_ownership(consumers);
        let view = broker.core().groups().consumer_describe(GROUP).ok();
        let agrees = match (&clients, &view) {
            (Some(clients), Some(view)) => {
                let mut server: Vec<BTreeSet<i32>> = view
                    .members
                    .iter()
                    .map(|m| m.assignment.values().flatten().copied().collect())
                    .collect();
                let mut client: Vec<BTreeSet<i32>> = clients.values().cloned().collect();
                server.sort();
                client.sort();
                view.state == GroupState::Stable
                    && view.members.len() == consumers.len()
                    && server == client
            }
            _ => false,
        };
        stable_rounds = if agrees { stable_rounds + 1 } else { 0 };
        if stable_rounds >= 5 {
            let owned = clients.unwrap_or_default();
            let sizes: Vec<usize> = owned.values().map(BTreeSet::len).collect();
            let (min, max) = (sizes.iter().min().copied(), sizes.iter().max().copied());
            assert!(
                max.unwrap_or(0) - min.unwrap_or(0) <= 1,
                "{step}: uniform assignor left the split unbalanced: {owned:?}"
            );
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_consumers_join_and_leave_without_losing_or_repeating_a_record() {
    let broker =
        TestBroker::with(|b| b.configure(|c| c.kafka.group_consumer_heartbeat_interval_ms = 200))
            .await
            .unwrap();
    broker
        .core()
        .create_topic(TOPIC, PARTITIONS as u32, BTreeMap::new())
        .await
        .unwrap();
    let bootstrap = broker.kafka_bootstrap();
    let broker = std::sync::Arc::new(broker);
    let b = broker.clone();
    tokio::task::spawn_blocking(move || {
        let broker = &*b;
        let mut ledger = Ledger::default();
        let mut produced = 0;
        let batch = |produced: &mut usize| {
            produce(&bootstrap, *produced..*produced + 120);
            *produced += 120;
        };

        batch(&mut produced);
        let c1 = consumer(&bootstrap, "c1");
        settle(broker, &mut ledger, &[("c1", &c1)], "c1 joins");

        batch(&mut produced);
        let c2 = consumer(&bootstrap, "c2");
        settle(broker, &mut ledger, &[("c1", &c1), ("c2", &c2)], "c2 joins");

        batch(&mut produced);
        let c3 = consumer(&bootstrap, "c3");
        settle(
            broker,
            &mut ledger,
            &[("c1", &c1), ("c2", &c2), ("c3", &c3)],
            "c3 joins",
        );

        batch(&mut produced);
        drop(c1);
        settle(
            broker,
            &mut ledger,
            &[("c2", &c2), ("c3", &c3)],
            "c1 leaves",
        );

        batch(&mut produced);
        drop(c2);
        settle(broker, &mut ledger, &[("c3", &c3)], "c2 leaves");

        // The last member drains whatever is left.
        batch(&mut produced);
        let deadline = Instant::now() + SETTLE;
        while ledger.processed.len() < produced && Instant::now() < deadline {
            ledger.pump(&[("c3", &c3)]);
        }
        let twice: Vec<_> = ledger.processed.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "processed more than once: {twice:?}");
        let missing: Vec<String> = (0..produced)
            .map(|i| format!("r{i}"))
            .filter(|r| !ledger.processed.contains_key(r))
            .collect();
        assert!(missing.is_empty(), "never processed: {missing:?}");
        drop(c3);
    })
    .await
    .unwrap();

    // The last member left: the group is empty, its offsets stay (one per partition, at the end).
    let view = broker.core().groups().consumer_describe(GROUP).unwrap();
    assert_eq!(view.state, GroupState::Empty);
    let committed = broker.core().groups().fetch_offsets(GROUP, None).unwrap();
    assert_eq!(committed.len(), PARTITIONS as usize);
    let total: i64 = committed.iter().map(|c| c.offset).sum();
    assert_eq!(total, 720);
}

/// The wire side, hand-driven: what the adapter encodes for each outcome of the KIP-848 APIs
/// and of the v9 offset APIs, and how a consumer group and a classic one share the id space.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_group_apis_on_the_wire() {
    use kafka_protocol::messages::consumer_group_heartbeat_request::TopicPartitions;
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;

    use crate::common::kafka_raw::RawKafka;

    let broker = TestBroker::start().await.unwrap();
    broker
        .core()
        .create_topic("wire", 3, BTreeMap::new())
        .await
        .unwrap();
    let topic_id = uuid::Uuid::from_bytes(broker.core().topic("wire").unwrap().topic_id());
    let mut raw = RawKafka::connect(broker.kafka_addr()).await;
    let s = |v: &str| StrBytes::from_string(v.to_string());
    let group = || GroupId(StrBytes::from_static_str("wire-group"));

    let versions: ApiVersionsResponse = raw
        .call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default())
        .await;
    let range = |key: ApiKey| {
        versions
            .api_keys
            .iter()
            .find(|k| k.api_key == key as i16)
            .map(|k| (k.min_version, k.max_version))
    };
    assert_eq!(range(ApiKey::ConsumerGroupHeartbeat), Some((0, 1)));
    assert_eq!(range(ApiKey::ConsumerGroupDescribe), Some((0, 1)));
    assert_eq!(range(ApiKey::OffsetCommit).map(|r| r.1), Some(9));

    let join = ConsumerGroupHeartbeatRequest::default()
        .with_group_id(group())
        .with_member_id(s("m1"))
        .with_member_epoch(0)
        .with_rebalance_timeout_ms(30_000)
        .with_subscribed_topic_names(Some(vec![TopicName(s("wire"))]))
        .with_topic_partitions(Some(Vec::new()));
    let bad_assignor: ConsumerGroupHeartbeatResponse = raw
        .call(
            ApiKey::ConsumerGroupHeartbeat,
            1,
            &join.clone().with_server_assignor(Some(s("sticky"))),
        )
        .await;
    assert_eq!(bad_assignor.error_code, 112, "UNSUPPORTED_ASSIGNOR");

    let joined: ConsumerGroupHeartbeatResponse =
        raw.call(ApiKey::ConsumerGroupHeartbeat, 1, &join).await;
    assert_eq!(joined.error_code, 0, "{:?}", joined.error_message);
    assert_eq!(joined.member_id.as_deref(), Some("m1"));
    assert_eq!(joined.member_epoch, 1);
    assert_eq!(joined.heartbeat_interval_ms, 5000);
    let assignment = joined.assignment.expect("assignment on join");
    assert_eq!(assignment.topic_partitions.len(), 1);
    assert_eq!(assignment.topic_partitions[0].topic_id, topic_id);
    assert_eq!(assignment.topic_partitions[0].partitions, vec![0, 1, 2]);

    // An epoch the group never gave: fenced.
    let ahead: ConsumerGroupHeartbeatResponse = raw
        .call(
            ApiKey::ConsumerGroupHeartbeat,
            1,
            &ConsumerGroupHeartbeatRequest::default()
                .with_group_id(group())
                .with_member_id(s("m1"))
                .with_member_epoch(7)
                .with_rebalance_timeout_ms(-1)
                .with_topic_partitions(Some(vec![TopicPartitions::default()
                    .with_topic_id(topic_id)
                    .with_partitions(vec![0, 1, 2])])),
        )
        .await;
    assert_eq!(ahead.error_code, 110, "FENCED_MEMBER_EPOCH");

    // OffsetCommit v9 at a stale and at the current member epoch.
    let commit = |epoch: i32| {
        OffsetCommitRequest::default()
            .with_group_id(group())
            .with_generation_id_or_member_epoch(epoch)
            .with_member_id(s("m1"))
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(s("wire")))
                .with_partitions(vec![OffsetCommitRequestPartition::default()
                    .with_partition_index(1)
                    .with_committed_offset(17)])])
    };
    let stale: OffsetCommitResponse = raw.call(ApiKey::OffsetCommit, 9, &commit(0)).await;
    assert_eq!(
        stale.topics[0].partitions[0].error_code, 113,
        "STALE_MEMBER_EPOCH"
    );
    let ok: OffsetCommitResponse = raw.call(ApiKey::OffsetCommit, 9, &commit(1)).await;
    assert_eq!(ok.topics[0].partitions[0].error_code, 0);

    // OffsetFetch v9 names the member and its epoch.
    let fetch = |epoch: i32| {
        OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default()
            .with_group_id(group())
            .with_member_id(Some(s("m1")))
            .with_member_epoch(epoch)
            .with_topics(None)])
    };
    let stale: OffsetFetchResponse = raw.call(ApiKey::OffsetFetch, 9, &fetch(0)).await;
    assert_eq!(stale.groups[0].error_code, 113);
    let fetched: OffsetFetchResponse = raw.call(ApiKey::OffsetFetch, 9, &fetch(1)).await;
    assert_eq!(fetched.groups[0].error_code, 0);
    assert_eq!(
        fetched.groups[0].topics[0].partitions[0].committed_offset,
        17
    );

    // A classic member cannot join while the consumer member is in.
    let classic: JoinGroupResponse = raw
        .call(
            ApiKey::JoinGroup,
            5,
            &JoinGroupRequest::default()
                .with_group_id(group())
                .with_session_timeout_ms(10_000)
                .with_rebalance_timeout_ms(10_000)
                .with_member_id(s(""))
                .with_protocol_type(s("consumer"))
                .with_protocols(vec![JoinGroupRequestProtocol::default()
                    .with_name(s("range"))
                    .with_metadata(bytes::Bytes::from_static(b"x"))]),
        )
        .await;
    assert_eq!(classic.error_code, 23, "INCONSISTENT_GROUP_PROTOCOL");

    // ListGroups v5 shows (and filters by) the type.
    let listed: ListGroupsResponse = raw
        .call(
            ApiKey::ListGroups,
            5,
            &ListGroupsRequest::default().with_types_filter(vec![s("consumer")]),
        )
        .await;
    let rows: Vec<(&str, &str, &str)> = listed
        .groups
        .iter()
        .map(|g| {
            (
                g.group_id.as_str(),
                g.group_type.as_str(),
                g.group_state.as_str(),
            )
        })
        .collect();
    assert_eq!(rows, vec![("wire-group", "consumer", "Stable")]);
    let classic_only: ListGroupsResponse = raw
        .call(
            ApiKey::ListGroups,
            5,
            &ListGroupsRequest::default().with_types_filter(vec![s("classic")]),
        )
        .await;
    assert!(classic_only.groups.is_empty());

    // ConsumerGroupDescribe: epochs, assignor, the member with topic names; unknown groups.
    let described: ConsumerGroupDescribeResponse = raw
        .call(
            ApiKey::ConsumerGroupDescribe,
            1,
            &ConsumerGroupDescribeRequest::default()
                .with_group_ids(vec![group(), GroupId(s("nobody"))]),
        )
        .await;
    let g = &described.groups[0];
    assert_eq!(g.error_code, 0);
    assert_eq!(g.group_state.as_str(), "Stable");
    assert_eq!((g.group_epoch, g.assignment_epoch), (1, 1));
    assert_eq!(g.assignor_name.as_str(), "uniform");
    assert_eq!(g.members.len(), 1);
    let m = &g.members[0];
    assert_eq!(
        (m.member_id.as_str(), m.member_epoch, m.member_type),
        ("m1", 1, 1)
    );
    assert_eq!(m.assignment.topic_partitions[0].topic_name.as_str(), "wire");
    assert_eq!(
        m.target_assignment.topic_partitions[0].partitions,
        vec![0, 1, 2]
    );
    assert_eq!(described.groups[1].error_code, 69, "GROUP_ID_NOT_FOUND");

    // Leaving (epoch -1) empties the group; a classic member may then take the id over.
    let left: ConsumerGroupHeartbeatResponse = raw
        .call(
            ApiKey::ConsumerGroupHeartbeat,
            1,
            &ConsumerGroupHeartbeatRequest::default()
                .with_group_id(group())
                .with_member_id(s("m1"))
                .with_member_epoch(-1)
                .with_rebalance_timeout_ms(-1),
        )
        .await;
    assert_eq!((left.error_code, left.member_epoch), (0, -1));
    assert_eq!(
        broker
            .core()
            .groups()
            .consumer_describe("wire-group")
            .unwrap()
            .state,
        GroupState::Empty
    );
}
