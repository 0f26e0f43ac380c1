//! Kafka APIs at the wire level, with the kafka-protocol codec over a TCP socket, where no
//! client library exposes the exact request: TxnOffsetCommit v3 checks the consumer's
//! generation, member id and instance id against the classic group (ILLEGAL_GENERATION,
//! UNKNOWN_MEMBER_ID, FENCED_INSTANCE_ID, as Kafka's group coordinator), OffsetFetch with
//! `require_stable` answers UNSTABLE_OFFSET_COMMIT while a transaction holds an offset and the
//! offset once it commits, and OffsetForLeaderEpoch answers where epoch 0 ends (the log end),
//! undefined for other epochs, and the leader-epoch errors for a wrong current epoch.
//! (kafka-python drives DescribeProducers and DescribeLogDirs in tests/interop.)

use bytes::Bytes;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::txn_offset_commit_request::{
    TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use ferry::log::batch::{encode_batch, SimpleRecord};
use ferry::testing::TestBroker;

use crate::common;
use common::kafka_raw::RawKafka;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

const TOPIC: &str = "txo";
const GROUP: &str = "txo-group";
const TXN_ID: &str = "txo-txn";

/// One TxnOffsetCommit v3 of offset `offset` for partition 0, from the given member.
fn txn_commit(
    producer: (i64, i16),
    generation: i32,
    member: &str,
    instance: Option<&str>,
    offset: i64,
) -> TxnOffsetCommitRequest {
    TxnOffsetCommitRequest::default()
        .with_transactional_id(TransactionalId(s(TXN_ID)))
        .with_group_id(GroupId(s(GROUP)))
        .with_producer_id(ProducerId(producer.0))
        .with_producer_epoch(producer.1)
        .with_generation_id(generation)
        .with_member_id(s(member))
        .with_group_instance_id(instance.map(s))
        .with_topics(vec![TxnOffsetCommitRequestTopic::default()
            .with_name(TopicName(s(TOPIC)))
            .with_partitions(vec![TxnOffsetCommitRequestPartition::default()
                .with_partition_index(0)
                .with_committed_offset(offset)
                .with_committed_leader_epoch(-1)])])
}

async fn commit_code(client: &mut RawKafka, version: i16, req: &TxnOffsetCommitRequest) -> i16 {
    let resp: TxnOffsetCommitResponse = client.call(ApiKey::TxnOffsetCommit, version, req).await;
    resp.topics[0].partitions[0].error_code
}

/// (error code, committed offset) of partition 0 from OffsetFetch v7 and v8.
async fn fetched(client: &mut RawKafka, require_stable: bool) -> [(i16, i64); 2] {
    let v7: OffsetFetchResponse = client
        .call(
            ApiKey::OffsetFetch,
            7,
            &OffsetFetchRequest::default()
                .with_group_id(GroupId(s(GROUP)))
                .with_require_stable(require_stable)
                .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                    .with_name(TopicName(s(TOPIC)))
                    .with_partition_indexes(vec![0])])),
        )
        .await;
    let v8: OffsetFetchResponse = client
        .call(
            ApiKey::OffsetFetch,
            8,
            &OffsetFetchRequest::default()
                .with_require_stable(require_stable)
                .with_groups(vec![OffsetFetchRequestGroup::default()
                    .with_group_id(GroupId(s(GROUP)))
                    .with_topics(Some(vec![OffsetFetchRequestTopics::default()
                        .with_name(TopicName(s(TOPIC)))
                        .with_partition_indexes(vec![0])]))]),
        )
        .await;
    let p7 = &v7.topics[0].partitions[0];
    let p8 = &v8.groups[0].topics[0].partitions[0];
    [
        (p7.error_code, p7.committed_offset),
        (p8.error_code, p8.committed_offset),
    ]
}

#[tokio::test]
async fn txn_offset_commit_checks_the_member_and_offset_fetch_waits_for_stability() {
    let broker = TestBroker::start().await.unwrap();
    broker
        .core()
        .create_topic(TOPIC, 1, Default::default())
        .await
        .unwrap();
    let mut client = RawKafka::connect(broker.kafka_addr()).await;

    // A static member forms the group alone: generation 1, it leads.
    let joined: JoinGroupResponse = client
        .call(
            ApiKey::JoinGroup,
            5,
            &JoinGroupRequest::default()
                .with_group_id(GroupId(s(GROUP)))
                .with_session_timeout_ms(30_000)
                .with_rebalance_timeout_ms(30_000)
                .with_group_instance_id(Some(s("static-1")))
                .with_protocol_type(s("txn-test"))
                .with_protocols(vec![JoinGroupRequestProtocol::default()
                    .with_name(s("only"))
                    .with_metadata(Bytes::new())]),
        )
        .await;
    assert_eq!(joined.error_code, 0);
    let (generation, member) = (joined.generation_id, joined.member_id.to_string());
    let synced: SyncGroupResponse = client
        .call(
            ApiKey::SyncGroup,
            3,
            &SyncGroupRequest::default()
                .with_group_id(GroupId(s(GROUP)))
                .with_generation_id(generation)
                .with_member_id(s(&member))
                .with_group_instance_id(Some(s("static-1")))
                .with_assignments(vec![SyncGroupRequestAssignment::default()
                    .with_member_id(s(&member))
                    .with_assignment(Bytes::new())]),
        )
        .await;
    assert_eq!(synced.error_code, 0);

    // A transactional producer that will carry the group's offsets.
    let init: InitProducerIdResponse = client
        .call(
            ApiKey::InitProducerId,
            4,
            &InitProducerIdRequest::default()
                .with_transactional_id(Some(TransactionalId(s(TXN_ID))))
                .with_transaction_timeout_ms(60_000)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        )
        .await;
    assert_eq!(init.error_code, 0);
    let producer = (init.producer_id.0, init.producer_epoch);
    let added: AddOffsetsToTxnResponse = client
        .call(
            ApiKey::AddOffsetsToTxn,
            3,
            &AddOffsetsToTxnRequest::default()
                .with_transactional_id(TransactionalId(s(TXN_ID)))
                .with_producer_id(ProducerId(producer.0))
                .with_producer_epoch(producer.1)
                .with_group_id(GroupId(s(GROUP))),
        )
        .await;
    assert_eq!(added.error_code, 0);

    // Nothing pending yet: a stable read sees "no offset", not an error.
    assert_eq!(fetched(&mut client, true).await, [(0, -1), (0, -1)]);

    let static_id = Some("static-1");
    for (what, req, expected) in [
        (
            "a newer generation",
            txn_commit(producer, generation + 1, &member, static_id, 3),
            ResponseError::IllegalGeneration.code(),
        ),
        (
            "an older generation",
            txn_commit(producer, generation - 1, &member, static_id, 3),
            ResponseError::IllegalGeneration.code(),
        ),
        (
            "a member id the group does not know",
            txn_commit(producer, generation, "ghost", None, 3),
            ResponseError::UnknownMemberId.code(),
        ),
        (
            "another member id under the static instance id",
            txn_commit(producer, generation, "zombie", static_id, 3),
            ResponseError::FencedInstanceId.code(),
        ),
        (
            "an instance id the group does not know",
            txn_commit(producer, generation, &member, Some("static-9"), 3),
            ResponseError::UnknownMemberId.code(),
        ),
    ] {
        assert_eq!(commit_code(&mut client, 3, &req).await, expected, "{what}");
    }
    // Refused commits hold nothing.
    assert_eq!(fetched(&mut client, true).await, [(0, -1), (0, -1)]);

    // The current member, and a commit naming no member (v3 with defaults, or v2), pass.
    assert_eq!(
        commit_code(
            &mut client,
            3,
            &txn_commit(producer, generation, &member, static_id, 5)
        )
        .await,
        0
    );
    assert_eq!(
        commit_code(&mut client, 3, &txn_commit(producer, -1, "", None, 6)).await,
        0
    );
    assert_eq!(
        commit_code(&mut client, 2, &txn_commit(producer, -1, "", None, 7)).await,
        0
    );

    // While the transaction holds offset 7, a stable read is told to retry; a plain read
    // still sees the last committed offset (none).
    let unstable = ResponseError::UnstableOffsetCommit.code();
    assert_eq!(
        fetched(&mut client, true).await,
        [(unstable, -1), (unstable, -1)]
    );
    assert_eq!(fetched(&mut client, false).await, [(0, -1), (0, -1)]);

    let ended: EndTxnResponse = client
        .call(
            ApiKey::EndTxn,
            3,
            &EndTxnRequest::default()
                .with_transactional_id(TransactionalId(s(TXN_ID)))
                .with_producer_id(ProducerId(producer.0))
                .with_producer_epoch(producer.1)
                .with_committed(true),
        )
        .await;
    assert_eq!(ended.error_code, 0);
    assert_eq!(fetched(&mut client, true).await, [(0, 7), (0, 7)]);
    broker.stop().await;
}

#[tokio::test]
async fn offset_for_leader_epoch_answers_where_epoch_zero_ends() {
    let broker = TestBroker::start().await.unwrap();
    broker
        .core()
        .create_topic("epochs", 2, Default::default())
        .await
        .unwrap();
    let handle = broker.core().partition("epochs", 0).unwrap();
    for i in 0..3 {
        let batch = encode_batch(&[SimpleRecord {
            key: None,
            value: Some(Bytes::from(format!("r{i}"))),
            headers: vec![],
            timestamp: 1,
        }]);
        handle.append(batch).await.unwrap();
    }
    let mut client = RawKafka::connect(broker.kafka_addr()).await;
    let ask = |topic: &str, partitions: &[(i32, i32, i32)]| {
        OffsetForLeaderEpochRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![OffsetForLeaderTopic::default()
                .with_topic(TopicName(s(topic)))
                .with_partitions(
                    partitions
                        .iter()
                        .map(|(p, current, epoch)| {
                            OffsetForLeaderPartition::default()
                                .with_partition(*p)
                                .with_current_leader_epoch(*current)
                                .with_leader_epoch(*epoch)
                        })
                        .collect(),
                )])
    };
    for version in [2, 3, 4] {
        let resp: OffsetForLeaderEpochResponse = client
            .call(
                ApiKey::OffsetForLeaderEpoch,
                version,
                &ask(
                    "epochs",
                    &[(0, 0, 0), (1, -1, 0), (0, -1, 1), (0, 1, 0), (5, -1, 0)],
                ),
            )
            .await;
        let got: Vec<(i32, i16, i32, i64)> = resp.topics[0]
            .partitions
            .iter()
            .map(|p| (p.partition, p.error_code, p.leader_epoch, p.end_offset))
            .collect();
        assert_eq!(
            got,
            vec![
                // Epoch 0 ends at the log end (3 records; the empty partition at 0).
                (0, 0, 0, 3),
                (1, 0, 0, 0),
                // An epoch the partition never had: undefined, no error (Kafka's answer).
                (0, 0, -1, -1),
                // The client believes in a newer leader epoch than ours.
                (0, ResponseError::UnknownLeaderEpoch.code(), -1, -1),
                (5, ResponseError::UnknownTopicOrPartition.code(), -1, -1),
            ],
            "v{version}"
        );
    }
    let unknown: OffsetForLeaderEpochResponse = client
        .call(
            ApiKey::OffsetForLeaderEpoch,
            4,
            &ask("no-such-topic", &[(0, -1, 0)]),
        )
        .await;
    assert_eq!(
        unknown.topics[0].partitions[0].error_code,
        ResponseError::UnknownTopicOrPartition.code()
    );
    broker.stop().await;
}
