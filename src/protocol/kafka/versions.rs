//! The API versions Ferry advertises, and so accepts.
//!
//! Ranges follow a real Kafka 3.x broker where we implement the whole range (kafka-python infers
//! the broker version from these maxima; librdkafka and the Java client pick the highest common
//! version), clipped to what the `kafka-protocol` crate can decode. Produce advertises minimum 0
//! as Kafka 3.x does (old librdkafka misbehaves otherwise, KAFKA-18659) but v0–2 can only carry
//! the old message formats, which are answered with UNSUPPORTED_VERSION. The transaction APIs
//! stop below the versions whose semantics Ferry lacks: AddPartitionsToTxn v4+ (broker-to-broker
//! verification), and the KIP-890 part 2 versions (EndTxn v4+, TxnOffsetCommit v4+,
//! AddOffsetsToTxn v4+, InitProducerId v5: TRANSACTION_ABORTABLE and per-transaction epoch
//! bumps), ListTransactions v2 (a regex filter). ConsumerGroupHeartbeat goes to v1 because
//! librdkafka 2.12 asks for exactly v1 (`group.protocol=consumer`), and with it OffsetCommit v9
//! and OffsetFetch v9 (the member-epoch versions KIP-848 clients require).

use kafka_protocol::messages::ApiKey;

/// `(api, min, max)` for every API this broker serves.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 0, 9),
    (ApiKey::Fetch, 4, 13),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::ConsumerGroupHeartbeat, 0, 1),
    (ApiKey::ConsumerGroupDescribe, 0, 1),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::AddPartitionsToTxn, 0, 3),
    (ApiKey::AddOffsetsToTxn, 0, 3),
    (ApiKey::EndTxn, 0, 3),
    (ApiKey::TxnOffsetCommit, 0, 3),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::ListTransactions, 0, 1),
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::DescribeUserScramCredentials, 0, 0),
    (ApiKey::AlterUserScramCredentials, 0, 0),
    (ApiKey::CreateAcls, 1, 3),
    (ApiKey::DescribeAcls, 1, 3),
    (ApiKey::DeleteAcls, 1, 3),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DescribeLogDirs, 1, 4),
    (ApiKey::DescribeProducers, 0, 0),
];

/// The advertised range for `api`, if it is served at all.
pub fn range(api: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == api)
        .map(|(_, min, max)| (*min, *max))
}

/// Whether `version` of `api` is served.
pub fn is_supported(api: ApiKey, version: i16) -> bool {
    range(api).is_some_and(|(min, max)| (min..=max).contains(&version))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::Message;

    /// Every advertised version (above the hand-handled Produce v0–2) must be decodable and
    /// encodable by the crate, or a client choosing it would get a closed connection.
    #[test]
    fn advertised_ranges_are_within_the_codec() {
        fn within<Req: Message, Resp: Message>(min: i16, max: i16) {
            assert!(Req::VERSIONS.min <= min && max <= Req::VERSIONS.max);
            assert!(Resp::VERSIONS.min <= min && max <= Resp::VERSIONS.max);
        }
        for (api, min, max) in SUPPORTED {
            let (min, max) = (*min, *max);
            match api {
                ApiKey::Produce => within::<ProduceRequest, ProduceResponse>(3, max),
                ApiKey::Fetch => within::<FetchRequest, FetchResponse>(min, max),
                ApiKey::ListOffsets => within::<ListOffsetsRequest, ListOffsetsResponse>(min, max),
                ApiKey::Metadata => within::<MetadataRequest, MetadataResponse>(min, max),
                ApiKey::ApiVersions => within::<ApiVersionsRequest, ApiVersionsResponse>(min, max),
                ApiKey::CreateTopics => {
                    within::<CreateTopicsRequest, CreateTopicsResponse>(min, max)
                }
                ApiKey::DeleteTopics => {
                    within::<DeleteTopicsRequest, DeleteTopicsResponse>(min, max)
                }
                ApiKey::CreatePartitions => {
                    within::<CreatePartitionsRequest, CreatePartitionsResponse>(min, max)
                }
                ApiKey::DescribeConfigs => {
                    within::<DescribeConfigsRequest, DescribeConfigsResponse>(min, max)
                }
                ApiKey::AlterConfigs => {
                    within::<AlterConfigsRequest, AlterConfigsResponse>(min, max)
                }
                ApiKey::IncrementalAlterConfigs => within::<
                    IncrementalAlterConfigsRequest,
                    IncrementalAlterConfigsResponse,
                >(min, max),
                ApiKey::DescribeCluster => {
                    within::<DescribeClusterRequest, DescribeClusterResponse>(min, max)
                }
                ApiKey::FindCoordinator => {
                    within::<FindCoordinatorRequest, FindCoordinatorResponse>(min, max)
                }
                ApiKey::JoinGroup => within::<JoinGroupRequest, JoinGroupResponse>(min, max),
                ApiKey::SyncGroup => within::<SyncGroupRequest, SyncGroupResponse>(min, max),
                ApiKey::Heartbeat => within::<HeartbeatRequest, HeartbeatResponse>(min, max),
                ApiKey::LeaveGroup => within::<LeaveGroupRequest, LeaveGroupResponse>(min, max),
                ApiKey::OffsetCommit => {
                    within::<OffsetCommitRequest, OffsetCommitResponse>(min, max)
                }
                ApiKey::OffsetFetch => within::<OffsetFetchRequest, OffsetFetchResponse>(min, max),
                ApiKey::ListGroups => within::<ListGroupsRequest, ListGroupsResponse>(min, max),
                ApiKey::DescribeGroups => {
                    within::<DescribeGroupsRequest, DescribeGroupsResponse>(min, max)
                }
                ApiKey::DeleteGroups => {
                    within::<DeleteGroupsRequest, DeleteGroupsResponse>(min, max)
                }
                ApiKey::OffsetDelete => {
                    within::<OffsetDeleteRequest, OffsetDeleteResponse>(min, max)
                }
                ApiKey::ConsumerGroupHeartbeat => within::<
                    ConsumerGroupHeartbeatRequest,
                    ConsumerGroupHeartbeatResponse,
                >(min, max),
                ApiKey::ConsumerGroupDescribe => {
                    within::<ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse>(min, max)
                }
                ApiKey::InitProducerId => {
                    within::<InitProducerIdRequest, InitProducerIdResponse>(min, max)
                }
                ApiKey::AddPartitionsToTxn => {
                    within::<AddPartitionsToTxnRequest, AddPartitionsToTxnResponse>(min, max)
                }
                ApiKey::AddOffsetsToTxn => {
                    within::<AddOffsetsToTxnRequest, AddOffsetsToTxnResponse>(min, max)
                }
                ApiKey::EndTxn => within::<EndTxnRequest, EndTxnResponse>(min, max),
                ApiKey::TxnOffsetCommit => {
                    within::<TxnOffsetCommitRequest, TxnOffsetCommitResponse>(min, max)
                }
                ApiKey::DescribeTransactions => {
                    within::<DescribeTransactionsRequest, DescribeTransactionsResponse>(min, max)
                }
                ApiKey::ListTransactions => {
                    within::<ListTransactionsRequest, ListTransactionsResponse>(min, max)
                }
                ApiKey::SaslHandshake => {
                    within::<SaslHandshakeRequest, SaslHandshakeResponse>(min, max)
                }
                ApiKey::SaslAuthenticate => {
                    within::<SaslAuthenticateRequest, SaslAuthenticateResponse>(min, max)
                }
                ApiKey::DescribeUserScramCredentials => within::<
                    DescribeUserScramCredentialsRequest,
                    DescribeUserScramCredentialsResponse,
                >(min, max),
                ApiKey::AlterUserScramCredentials => within::<
                    AlterUserScramCredentialsRequest,
                    AlterUserScramCredentialsResponse,
                >(min, max),
                ApiKey::CreateAcls => within::<CreateAclsRequest, CreateAclsResponse>(min, max),
                ApiKey::DescribeAcls => {
                    within::<DescribeAclsRequest, DescribeAclsResponse>(min, max)
                }
                ApiKey::DeleteAcls => within::<DeleteAclsRequest, DeleteAclsResponse>(min, max),
                ApiKey::OffsetForLeaderEpoch => {
                    within::<OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse>(min, max)
                }
                ApiKey::DescribeLogDirs => {
                    within::<DescribeLogDirsRequest, DescribeLogDirsResponse>(min, max)
                }
                ApiKey::DescribeProducers => {
                    within::<DescribeProducersRequest, DescribeProducersResponse>(min, max)
                }
                other => panic!("no codec check for {other:?}"),
            }
        }
    }
}
