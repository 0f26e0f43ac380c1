//! Kafka ACLs (issue 13, step 4): CreateAcls / DescribeAcls / DeleteAcls on the wire, and
//! enforcement seen by real clients over SASL/PLAIN: rdkafka producers and consumers of an
//! allowed user get through, a denied one gets TOPIC_AUTHORIZATION_FAILED or
//! GROUP_AUTHORIZATION_FAILED; a super user bypasses ACLs; DENY beats ALLOW; prefixed
//! patterns; Metadata lists only what a principal may DESCRIBE; an idempotent producer needs
//! IDEMPOTENT_WRITE or WRITE on some topic; bindings survive a restart. The ACL admin calls go
//! through a raw client that signs in with SASL/PLAIN (rust-rdkafka has no ACL admin API; the
//! Python interop suite drives confluent-kafka's).

use std::time::Duration;

use ferry::testing::TestBroker;
use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::common;
use common::kafka_raw::RawKafka;

const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
const GROUP_AUTHORIZATION_FAILED: i16 = 30;
const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
const INVALID_REQUEST: i16 = 42;

// Kafka's codes.
const TOPIC: i8 = 2;
const GROUP: i8 = 3;
const LITERAL: i8 = 3;
const PREFIXED: i8 = 4;
const ANY: i8 = 1;
const MATCH: i8 = 2;
const READ: i8 = 3;
const WRITE: i8 = 4;
const DENY: i8 = 2;
const ALLOW: i8 = 3;

/// Users `admin` (a super user), `alice`, `bob` and `carol` (password `<name>-secret`), ACLs
/// on, SASL required even from loopback; `data_dir` to reopen the same metadata.
async fn acl_broker(data_dir: Option<&std::path::Path>) -> TestBroker {
    let dir = data_dir.map(std::path::Path::to_path_buf);
    TestBroker::with(move |b| {
        let b = match dir {
            Some(dir) => b.data_dir(dir),
            None => b,
        };
        b.configure(move |c| {
            c.kafka.allow_anonymous = ferry::config::AnonymousAccess::Never;
            c.kafka.acl_enabled = true;
            c.kafka.super_users = vec!["User:admin".into()];
            c.users = ["admin", "alice", "bob", "carol"]
                .into_iter()
                .map(|name| ferry::config::UserSettings {
                    name: name.into(),
                    password: format!("{name}-secret"),
                    password_hash: String::new(),
                    tags: vec![],
                })
                .collect();
        })
    })
    .await
    .unwrap()
}

fn rdkafka_config(broker: &TestBroker, user: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", broker.kafka_bootstrap())
        .set("security.protocol", "SASL_PLAINTEXT")
        .set("sasl.mechanisms", "PLAIN")
        .set("sasl.username", user)
        .set("sasl.password", format!("{user}-secret"))
        .set("message.timeout.ms", "5000");
    c
}

/// A raw client signed in as `user` with SASL/PLAIN (handshake v1, authenticate v2).
async fn signed_in(broker: &TestBroker, user: &str) -> RawKafka {
    let mut client = RawKafka::connect(broker.kafka_addr()).await;
    let hs: SaslHandshakeResponse = client
        .call(
            ApiKey::SaslHandshake,
            1,
            &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
        )
        .await;
    assert_eq!(hs.error_code, 0);
    let auth: SaslAuthenticateResponse = client
        .call(
            ApiKey::SaslAuthenticate,
            2,
            &SaslAuthenticateRequest::default()
                .with_auth_bytes(format!("\0{user}\0{user}-secret").into_bytes().into()),
        )
        .await;
    assert_eq!(auth.error_code, 0, "{user} signs in");
    client
}

fn binding(rt: i8, pattern: i8, name: &str, principal: &str, op: i8, perm: i8) -> AclCreation {
    AclCreation::default()
        .with_resource_type(rt)
        .with_resource_name(StrBytes::from_string(name.into()))
        .with_resource_pattern_type(pattern)
        .with_principal(StrBytes::from_string(principal.into()))
        .with_host(StrBytes::from_static_str("*"))
        .with_operation(op)
        .with_permission_type(perm)
}

async fn create_acls(client: &mut RawKafka, creations: Vec<AclCreation>) -> Vec<i16> {
    let created: CreateAclsResponse = client
        .call(
            ApiKey::CreateAcls,
            3,
            &CreateAclsRequest::default().with_creations(creations),
        )
        .await;
    created.results.iter().map(|r| r.error_code).collect()
}

/// Every binding as `(resource type, name, pattern, principal, operation, permission)`.
async fn describe_all(client: &mut RawKafka) -> (i16, Vec<(i8, String, i8, String, i8, i8)>) {
    let described: DescribeAclsResponse = client
        .call(
            ApiKey::DescribeAcls,
            3,
            // kafka-protocol's defaults for nullable strings are empty strings, not null.
            &DescribeAclsRequest::default()
                .with_resource_name_filter(None)
                .with_principal_filter(None)
                .with_host_filter(None)
                .with_resource_type_filter(ANY)
                .with_pattern_type_filter(ANY)
                .with_operation(ANY)
                .with_permission_type(ANY),
        )
        .await;
    let mut rows = Vec::new();
    for r in &described.resources {
        for a in &r.acls {
            rows.push((
                r.resource_type,
                r.resource_name.to_string(),
                r.pattern_type,
                a.principal.to_string(),
                a.operation,
                a.permission_type,
            ));
        }
    }
    rows.sort();
    (described.error_code, rows)
}

async fn produce(broker: &TestBroker, user: &str, topic: &str) -> Result<(), RDKafkaErrorCode> {
    let producer: FutureProducer = rdkafka_config(broker, user).create().unwrap();
    let sent = producer
        .send(
            FutureRecord::to(topic).key("k").payload(user),
            Duration::from_secs(10),
        )
        .await;
    match sent {
        Ok(_) => Ok(()),
        Err((KafkaError::MessageProduction(code), _)) => Err(code),
        Err((other, _)) => panic!("unexpected produce error: {other}"),
    }
}

/// Commits offset 0 of `topic` partition 0 for `group` outside any generation (as an admin
/// tool does); returns the partition's error code.
async fn commit_offset_zero(client: &mut RawKafka, group: &str, topic: &str) -> i16 {
    let committed: OffsetCommitResponse = client
        .call(
            ApiKey::OffsetCommit,
            7,
            &OffsetCommitRequest::default()
                .with_group_id(GroupId(StrBytes::from_string(group.into())))
                .with_generation_id_or_member_epoch(-1)
                .with_topics(vec![
                    offset_commit_request::OffsetCommitRequestTopic::default()
                        .with_name(TopicName(StrBytes::from_string(topic.into())))
                        .with_partitions(vec![
                            offset_commit_request::OffsetCommitRequestPartition::default()
                                .with_partition_index(0)
                                .with_committed_offset(0),
                        ]),
                ]),
        )
        .await;
    committed.topics[0].partitions[0].error_code
}

async fn create_topic(broker: &TestBroker, name: &str) {
    broker
        .core()
        .create_topic(name, 1, Default::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn acl_apis_create_describe_and_delete_bindings() {
    let broker = acl_broker(None).await;
    let mut admin = signed_in(&broker, "admin").await;
    let codes = create_acls(
        &mut admin,
        vec![
            binding(TOPIC, LITERAL, "orders", "User:alice", READ, ALLOW),
            binding(TOPIC, PREFIXED, "ord", "User:bob", WRITE, DENY),
            binding(GROUP, LITERAL, "orders-app", "User:alice", READ, ALLOW),
            // Not Type:name, and a MATCH pattern, which only filters may use.
            binding(TOPIC, LITERAL, "orders", "alice", READ, ALLOW),
            binding(TOPIC, MATCH, "orders", "User:alice", READ, ALLOW),
        ],
    )
    .await;
    assert_eq!(codes, vec![0, 0, 0, INVALID_REQUEST, INVALID_REQUEST]);
    let (code, rows) = describe_all(&mut admin).await;
    assert_eq!(code, 0);
    assert_eq!(
        rows,
        vec![
            (
                TOPIC,
                "ord".into(),
                PREFIXED,
                "User:bob".into(),
                WRITE,
                DENY
            ),
            (
                TOPIC,
                "orders".into(),
                LITERAL,
                "User:alice".into(),
                READ,
                ALLOW
            ),
            (
                GROUP,
                "orders-app".into(),
                LITERAL,
                "User:alice".into(),
                READ,
                ALLOW
            ),
        ]
    );

    // MATCH finds the bindings that apply to topic "orders": the literal and the prefix.
    let matching: DescribeAclsResponse = admin
        .call(
            ApiKey::DescribeAcls,
            3,
            &DescribeAclsRequest::default()
                .with_resource_type_filter(TOPIC)
                .with_resource_name_filter(Some(StrBytes::from_static_str("orders")))
                .with_principal_filter(None)
                .with_host_filter(None)
                .with_pattern_type_filter(MATCH)
                .with_operation(ANY)
                .with_permission_type(ANY),
        )
        .await;
    assert_eq!(matching.resources.len(), 2);

    // A user who is not allowed to ALTER/DESCRIBE the cluster manages nothing.
    let mut alice = signed_in(&broker, "alice").await;
    let (code, rows) = describe_all(&mut alice).await;
    assert_eq!((code, rows.len()), (CLUSTER_AUTHORIZATION_FAILED, 0));
    let codes = create_acls(
        &mut alice,
        vec![binding(TOPIC, LITERAL, "*", "User:alice", READ, ALLOW)],
    )
    .await;
    assert_eq!(codes, vec![CLUSTER_AUTHORIZATION_FAILED]);

    let deleted: DeleteAclsResponse = admin
        .call(
            ApiKey::DeleteAcls,
            3,
            &DeleteAclsRequest::default().with_filters(vec![
                delete_acls_request::DeleteAclsFilter::default()
                    .with_resource_name_filter(None)
                    .with_host_filter(None)
                    .with_resource_type_filter(ANY)
                    .with_pattern_type_filter(ANY)
                    .with_principal_filter(Some(StrBytes::from_static_str("User:alice")))
                    .with_operation(ANY)
                    .with_permission_type(ANY),
            ]),
        )
        .await;
    assert_eq!(deleted.filter_results.len(), 1);
    assert_eq!(deleted.filter_results[0].error_code, 0);
    assert_eq!(deleted.filter_results[0].matching_acls.len(), 2);
    let (_, rows) = describe_all(&mut admin).await;
    assert_eq!(
        rows,
        vec![(
            TOPIC,
            "ord".into(),
            PREFIXED,
            "User:bob".into(),
            WRITE,
            DENY
        )]
    );
    broker.stop().await;
}

#[tokio::test]
async fn allowed_user_produces_and_consumes_and_others_are_refused() {
    let broker = acl_broker(None).await;
    create_topic(&broker, "orders").await;
    let mut admin = signed_in(&broker, "admin").await;
    let codes = create_acls(
        &mut admin,
        vec![
            binding(TOPIC, LITERAL, "orders", "User:alice", WRITE, ALLOW),
            binding(TOPIC, LITERAL, "orders", "User:alice", READ, ALLOW),
            binding(GROUP, LITERAL, "orders-app", "User:alice", READ, ALLOW),
            // bob may read the topic but not use the group.
            binding(TOPIC, LITERAL, "orders", "User:bob", READ, ALLOW),
        ],
    )
    .await;
    assert_eq!(codes, vec![0; 4]);

    produce(&broker, "alice", "orders").await.unwrap();
    assert_eq!(
        produce(&broker, "bob", "orders").await,
        Err(RDKafkaErrorCode::TopicAuthorizationFailed)
    );

    let consumer: BaseConsumer = rdkafka_config(&broker, "alice")
        .set("group.id", "orders-app")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["orders"]).unwrap();
    let records = tokio::task::spawn_blocking(move || {
        let records = common::kafka::poll_records(&consumer, 1);
        consumer
            .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
            .map(|_| records)
    })
    .await
    .unwrap()
    .expect("alice commits in her group");
    assert_eq!(records[0].payload, b"alice");

    // bob's consumer is refused by the group check, as librdkafka reports it.
    let consumer: BaseConsumer = rdkafka_config(&broker, "bob")
        .set("group.id", "orders-app")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["orders"]).unwrap();
    let error = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Err(e)) => return Some(e),
                Some(Ok(m)) => panic!("bob consumed a record: {m:?}"),
                None => {}
            }
        }
        None
    })
    .await
    .unwrap()
    .expect("bob's consumer reports an error");
    assert_eq!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::GroupAuthorizationFailed),
        "{error}"
    );

    // The same refusals on the wire: JoinGroup and OffsetCommit as bob, Fetch as carol.
    let mut bob = signed_in(&broker, "bob").await;
    let joined: JoinGroupResponse = bob
        .call(
            ApiKey::JoinGroup,
            5,
            &JoinGroupRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("orders-app")))
                .with_session_timeout_ms(10_000)
                .with_rebalance_timeout_ms(10_000)
                .with_protocol_type(StrBytes::from_static_str("consumer")),
        )
        .await;
    assert_eq!(joined.error_code, GROUP_AUTHORIZATION_FAILED);
    assert_eq!(
        commit_offset_zero(&mut bob, "orders-app", "orders").await,
        GROUP_AUTHORIZATION_FAILED
    );
    let mut carol = signed_in(&broker, "carol").await;
    let fetched: FetchResponse = carol
        .call(
            ApiKey::Fetch,
            11,
            &FetchRequest::default()
                .with_max_wait_ms(0)
                .with_max_bytes(1 << 20)
                .with_topics(vec![fetch_request::FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_static_str("orders")))
                    .with_partitions(vec![fetch_request::FetchPartition::default()
                        .with_partition(0)
                        .with_partition_max_bytes(1 << 20)])]),
        )
        .await;
    assert_eq!(
        fetched.responses[0].partitions[0].error_code,
        TOPIC_AUTHORIZATION_FAILED
    );
    assert!(fetched.responses[0].partitions[0]
        .records
        .as_ref()
        .is_none_or(|r| r.is_empty()));
    broker.stop().await;
}

#[tokio::test]
async fn deny_beats_allow_prefixes_match_and_super_users_bypass() {
    let broker = acl_broker(None).await;
    for topic in ["pub.open", "pub.secret", "private"] {
        create_topic(&broker, topic).await;
    }
    let mut admin = signed_in(&broker, "admin").await;
    let codes = create_acls(
        &mut admin,
        vec![
            binding(TOPIC, PREFIXED, "pub.", "User:*", WRITE, ALLOW),
            binding(TOPIC, LITERAL, "pub.secret", "User:bob", WRITE, DENY),
            // carol may write nowhere, whatever User:* may.
            binding(TOPIC, LITERAL, "*", "User:carol", WRITE, DENY),
        ],
    )
    .await;
    assert_eq!(codes, vec![0, 0, 0]);
    produce(&broker, "bob", "pub.open").await.unwrap();
    produce(&broker, "alice", "pub.secret").await.unwrap();
    assert_eq!(
        produce(&broker, "bob", "pub.secret").await,
        Err(RDKafkaErrorCode::TopicAuthorizationFailed)
    );
    assert_eq!(
        produce(&broker, "alice", "private").await,
        Err(RDKafkaErrorCode::TopicAuthorizationFailed)
    );
    // No ALLOW binding covers "private" for alice; admin is a super user.
    produce(&broker, "admin", "private").await.unwrap();
    let hw = |t: &str| {
        broker
            .core()
            .topic(t)
            .unwrap()
            .partition(0)
            .unwrap()
            .high_watermark()
    };
    assert_eq!((hw("pub.open"), hw("pub.secret"), hw("private")), (1, 1, 1));

    // Metadata lists only what a principal may DESCRIBE (WRITE implies it), and a named
    // topic it may not see answers TOPIC_AUTHORIZATION_FAILED without being created.
    let mut bob = signed_in(&broker, "bob").await;
    let all: MetadataResponse = bob
        .call(
            ApiKey::Metadata,
            9,
            &MetadataRequest::default().with_topics(None),
        )
        .await;
    let mut names: Vec<String> = all
        .topics
        .iter()
        .filter_map(|t| t.name.as_ref().map(|n| n.to_string()))
        .collect();
    names.sort();
    assert_eq!(names, vec!["pub.open", "pub.secret"]);
    let named: MetadataResponse = bob
        .call(
            ApiKey::Metadata,
            9,
            &MetadataRequest::default()
                .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
                )
                .with_name(Some(TopicName(StrBytes::from_static_str("new-topic"))))]))
                .with_allow_auto_topic_creation(true),
        )
        .await;
    assert_eq!(named.topics[0].error_code, TOPIC_AUTHORIZATION_FAILED);
    assert!(broker.core().topic("new-topic").is_none());

    // WRITE without CREATE: producing to a missing topic does not create it.
    let produced: ProduceResponse = bob
        .call(
            ApiKey::Produce,
            8,
            &ProduceRequest::default()
                .with_transactional_id(None)
                .with_acks(-1)
                .with_timeout_ms(5000)
                .with_topic_data(vec![produce_request::TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_static_str("pub.new")))
                    .with_partition_data(vec![
                        produce_request::PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(bytes::Bytes::from_static(b"not read"))),
                    ])]),
        )
        .await;
    assert_eq!(
        produced.responses[0].partition_responses[0].error_code,
        UNKNOWN_TOPIC_OR_PARTITION
    );
    assert!(broker.core().topic("pub.new").is_none());

    // An idempotent producer: bob may WRITE some topic, carol no topic at all.
    let init = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(-1)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let granted: InitProducerIdResponse = bob.call(ApiKey::InitProducerId, 4, &init).await;
    assert_eq!(granted.error_code, 0);
    let mut carol = signed_in(&broker, "carol").await;
    let refused: InitProducerIdResponse = carol.call(ApiKey::InitProducerId, 4, &init).await;
    assert_eq!(refused.error_code, CLUSTER_AUTHORIZATION_FAILED);
    broker.stop().await;
}

#[tokio::test]
async fn acls_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = acl_broker(Some(dir.path())).await;
    create_topic(&broker, "kept").await;
    let mut admin = signed_in(&broker, "admin").await;
    let codes = create_acls(
        &mut admin,
        vec![binding(TOPIC, PREFIXED, "ke", "User:alice", WRITE, ALLOW)],
    )
    .await;
    assert_eq!(codes, vec![0]);
    let (_, before) = describe_all(&mut admin).await;
    assert_eq!(before.len(), 1);
    drop(admin);
    broker.stop().await;

    let broker = acl_broker(Some(dir.path())).await;
    let mut admin = signed_in(&broker, "admin").await;
    assert_eq!(describe_all(&mut admin).await, (0, before));
    produce(&broker, "alice", "kept").await.unwrap();
    assert_eq!(
        produce(&broker, "bob", "kept").await,
        Err(RDKafkaErrorCode::TopicAuthorizationFailed)
    );
    broker.stop().await;
}

/// With ACLs on, a topic's exchange face asks the topic ACL too: alice's AMQP permissions
/// (`.*` on `/`) let her publish to exchange `orders` only once a Kafka ACL allows her WRITE.
#[tokio::test]
async fn a_topics_exchange_face_checks_the_topic_acl() {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    let broker = acl_broker(None).await;
    create_topic(&broker, "orders").await;
    let url = format!("amqp://alice:alice-secret@{}/%2f", broker.amqp_addr());
    let publish = |ch: lapin::Channel| async move {
        match ch
            .basic_publish(
                "orders".into(),
                "k".into(),
                BasicPublishOptions::default(),
                b"over amqp",
                BasicProperties::default(),
            )
            .await
        {
            Ok(pending) => pending.await.map(|c| c.is_ack()),
            Err(e) => Err(e),
        }
    };
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let refused = publish(ch)
        .await
        .expect_err("published without a topic ACL");
    assert!(
        format!("{refused:?} {refused}").contains("ACCESS_REFUSED"),
        "{refused:?}"
    );

    let mut admin = signed_in(&broker, "admin").await;
    let codes = create_acls(
        &mut admin,
        vec![binding(
            TOPIC,
            LITERAL,
            "orders",
            "User:alice",
            WRITE,
            ALLOW,
        )],
    )
    .await;
    assert_eq!(codes, vec![0]);
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    assert!(publish(ch).await.unwrap(), "the publish is confirmed");
    let hw = broker
        .core()
        .topic("orders")
        .unwrap()
        .partition(0)
        .unwrap()
        .high_watermark();
    assert_eq!(hw, 1);
    broker.stop().await;
}

/// The APIs the first ACL tests did not reach, each refused with Kafka's code: DeleteTopics and
/// CreatePartitions through rdkafka's AdminClient, OffsetFetch through an rdkafka consumer (per
/// partition: TOPIC_AUTHORIZATION_FAILED for a topic without DESCRIBE, as Kafka answers, not
/// an omission that reads as "no offset"), and on the wire (rust-rdkafka drops the config
/// APIs' per-resource errors) DescribeConfigs (topic and broker), AlterConfigs,
/// IncrementalAlterConfigs, ListOffsets, DescribeGroups and ListGroups.
#[tokio::test]
async fn admin_offset_and_group_view_apis_refuse_without_their_acl() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::{Offset, TopicPartitionList};

    let broker = acl_broker(None).await;
    create_topic(&broker, "ledger").await;
    let mut admin = signed_in(&broker, "admin").await;
    // alice may use the group ledger-app (READ implies DESCRIBE) but has no topic ACL.
    let codes = create_acls(
        &mut admin,
        vec![binding(
            GROUP,
            LITERAL,
            "ledger-app",
            "User:alice",
            READ,
            ALLOW,
        )],
    )
    .await;
    assert_eq!(codes, vec![0]);
    // The super user commits an offset for the group, which alice must not see.
    assert_eq!(
        commit_offset_zero(&mut admin, "ledger-app", "ledger").await,
        0
    );

    let alice_admin: AdminClient<DefaultClientContext> =
        rdkafka_config(&broker, "alice").create().unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let deleted = alice_admin.delete_topics(&["ledger"], &opts).await.unwrap();
    assert_eq!(
        deleted[0],
        Err((
            "ledger".to_string(),
            RDKafkaErrorCode::TopicAuthorizationFailed
        ))
    );
    assert!(broker.core().topic("ledger").is_some());
    let grown = alice_admin
        .create_partitions(&[NewPartitions::new("ledger", 3)], &opts)
        .await
        .unwrap();
    assert_eq!(
        grown[0],
        Err((
            "ledger".to_string(),
            RDKafkaErrorCode::TopicAuthorizationFailed
        ))
    );
    // rust-rdkafka drops per-resource errors of the config APIs, so those go on the wire.
    let mut alice = signed_in(&broker, "alice").await;
    let described: DescribeConfigsResponse = alice
        .call(
            ApiKey::DescribeConfigs,
            4,
            &DescribeConfigsRequest::default().with_resources(vec![
                describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("ledger")),
                describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(4)
                    .with_resource_name(StrBytes::from_static_str("1")),
            ]),
        )
        .await;
    let codes: Vec<i16> = described.results.iter().map(|r| r.error_code).collect();
    assert_eq!(
        codes,
        vec![TOPIC_AUTHORIZATION_FAILED, CLUSTER_AUTHORIZATION_FAILED]
    );
    assert!(described.results.iter().all(|r| r.configs.is_empty()));
    let altered: AlterConfigsResponse = alice
        .call(
            ApiKey::AlterConfigs,
            2,
            &AlterConfigsRequest::default().with_resources(vec![
                alter_configs_request::AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("ledger"))
                    .with_configs(vec![alter_configs_request::AlterableConfig::default()
                        .with_name(StrBytes::from_static_str("retention.ms"))
                        .with_value(Some(StrBytes::from_static_str("1000")))]),
            ]),
        )
        .await;
    assert_eq!(altered.responses[0].error_code, TOPIC_AUTHORIZATION_FAILED);
    let altered: IncrementalAlterConfigsResponse = alice
        .call(
            ApiKey::IncrementalAlterConfigs,
            1,
            &IncrementalAlterConfigsRequest::default().with_resources(vec![
                incremental_alter_configs_request::AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("ledger"))
                    .with_configs(vec![
                        incremental_alter_configs_request::AlterableConfig::default()
                            .with_name(StrBytes::from_static_str("retention.ms"))
                            .with_config_operation(0)
                            .with_value(Some(StrBytes::from_static_str("1000"))),
                    ]),
            ]),
        )
        .await;
    assert_eq!(altered.responses[0].error_code, TOPIC_AUTHORIZATION_FAILED);
    let ledger = broker.core().topic("ledger").unwrap();
    assert!(!ledger.config_overrides().contains_key("retention.ms"));

    let consumer: BaseConsumer = rdkafka_config(&broker, "alice")
        .set("group.id", "ledger-app")
        .create()
        .unwrap();
    let offsets = tokio::task::spawn_blocking(move || {
        let mut wanted = TopicPartitionList::new();
        wanted.add_partition("ledger", 0);
        consumer.committed_offsets(wanted, Duration::from_secs(10))
    })
    .await
    .unwrap()
    .unwrap();
    let element = offsets.find_partition("ledger", 0).unwrap();
    assert_eq!(element.offset(), Offset::Invalid);
    assert!(
        matches!(
            element.error(),
            Err(KafkaError::OffsetFetch(
                RDKafkaErrorCode::TopicAuthorizationFailed
            ))
        ),
        "{:?}",
        element.error()
    );

    let listed: ListOffsetsResponse = alice
        .call(
            ApiKey::ListOffsets,
            5,
            &ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str("ledger")))
                    .with_partitions(vec![
                        list_offsets_request::ListOffsetsPartition::default()
                            .with_partition_index(0)
                            .with_timestamp(-1),
                    ])]),
        )
        .await;
    assert_eq!(
        listed.topics[0].partitions[0].error_code,
        TOPIC_AUTHORIZATION_FAILED
    );
    // carol has nothing: she cannot describe alice's group, nor see it listed.
    let mut carol = signed_in(&broker, "carol").await;
    let groups: DescribeGroupsResponse = carol
        .call(
            ApiKey::DescribeGroups,
            5,
            &DescribeGroupsRequest::default()
                .with_groups(vec![GroupId(StrBytes::from_static_str("ledger-app"))]),
        )
        .await;
    assert_eq!(groups.groups[0].error_code, GROUP_AUTHORIZATION_FAILED);
    let listed: ListGroupsResponse = carol
        .call(ApiKey::ListGroups, 4, &ListGroupsRequest::default())
        .await;
    assert_eq!(listed.error_code, 0);
    assert!(listed.groups.is_empty(), "{:?}", listed.groups);
    let listed: ListGroupsResponse = alice
        .call(ApiKey::ListGroups, 4, &ListGroupsRequest::default())
        .await;
    let names: Vec<&str> = listed.groups.iter().map(|g| g.group_id.as_str()).collect();
    assert_eq!(names, vec!["ledger-app"]);
    broker.stop().await;
}

/// Runs `ferry ARGS` against the broker's admin API as `user` (password `<user>-secret`).
async fn ferry_cli(broker: &TestBroker, user: &str, args: &[&str]) -> (bool, String, String) {
    common::admin::ferry_cli_as(broker, user, &format!("{user}-secret"), args, "").await
}

/// `ferry acl add|list|delete` over `/api/acls` writes the same bindings the Kafka APIs do:
/// one made from the CLI lets an rdkafka producer in, deleting it shuts the producer out. It
/// works while nobody but an administrator of the admin API could use the Kafka ACL APIs (the
/// admin here is not a Kafka super user), checks names, refuses a filterless delete and
/// non-administrators.
#[tokio::test]
async fn ferry_acl_manages_the_bindings_kafka_enforces() {
    let broker = TestBroker::with(|b| {
        b.configure(|c| {
            c.kafka.allow_anonymous = ferry::config::AnonymousAccess::Never;
            c.kafka.acl_enabled = true;
            c.users = [("admin", "administrator"), ("alice", "")]
                .into_iter()
                .map(|(name, tag)| ferry::config::UserSettings {
                    name: name.into(),
                    password: format!("{name}-secret"),
                    password_hash: String::new(),
                    tags: (!tag.is_empty())
                        .then(|| tag.to_string())
                        .into_iter()
                        .collect(),
                })
                .collect();
        })
    })
    .await
    .unwrap();
    create_topic(&broker, "orders").await;
    assert_eq!(
        produce(&broker, "alice", "orders").await,
        Err(RDKafkaErrorCode::TopicAuthorizationFailed)
    );

    let (ok, out, err) = ferry_cli(
        &broker,
        "admin",
        &[
            "acl",
            "add",
            "--principal",
            "User:alice",
            "--operation",
            "write",
            "--topic",
            "ord",
            "--prefixed",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        out.contains("User:alice allow WRITE on TOPIC ord (PREFIXED)"),
        "{out}"
    );
    produce(&broker, "alice", "orders").await.unwrap();

    let (ok, out, err) = ferry_cli(&broker, "admin", &["acl", "list", "--json"]).await;
    assert!(ok, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        listed,
        serde_json::json!([{
            "resource_type": "TOPIC", "resource_name": "ord", "pattern_type": "PREFIXED",
            "principal": "User:alice", "host": "*", "operation": "WRITE", "permission": "ALLOW"
        }])
    );
    let (ok, out, _) = ferry_cli(&broker, "admin", &["acl", "list"]).await;
    assert!(
        ok && out.starts_with("PRINCIPAL") && out.contains("User:alice"),
        "{out}"
    );

    let (ok, _, err) = ferry_cli(
        &broker,
        "admin",
        &[
            "acl",
            "add",
            "--principal",
            "User:alice",
            "--operation",
            "reed",
            "--topic",
            "x",
        ],
    )
    .await;
    assert!(!ok && err.contains("`reed` is not an operation"), "{err}");
    let (ok, _, err) = ferry_cli(&broker, "admin", &["acl", "delete"]).await;
    assert!(!ok && err.contains("without a filter"), "{err}");
    let (ok, _, err) = ferry_cli(&broker, "alice", &["acl", "list"]).await;
    assert!(!ok && err.contains("403"), "{err}");

    let (ok, out, err) = ferry_cli(
        &broker,
        "admin",
        &["acl", "delete", "--principal", "User:alice", "--json"],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        produce(&broker, "alice", "orders").await,
        Err(RDKafkaErrorCode::TopicAuthorizationFailed)
    );
    broker.stop().await;
}

/// The log tool APIs ask what Kafka asks: DescribeProducers READ on the topic,
/// OffsetForLeaderEpoch DESCRIBE on the topic (or CLUSTER_ACTION on the cluster),
/// DescribeLogDirs DESCRIBE on the cluster.
#[tokio::test]
async fn log_tool_apis_check_their_acls() {
    const CLUSTER: i8 = 4;
    const DESCRIBE: i8 = 8;
    const CLUSTER_ACTION: i8 = 9;
    let broker = acl_broker(None).await;
    create_topic(&broker, "tools").await;

    async fn producers_code(client: &mut RawKafka) -> i16 {
        let resp: DescribeProducersResponse = client
            .call(
                ApiKey::DescribeProducers,
                0,
                &DescribeProducersRequest::default().with_topics(vec![
                    describe_producers_request::TopicRequest::default()
                        .with_name(TopicName(StrBytes::from_static_str("tools")))
                        .with_partition_indexes(vec![0]),
                ]),
            )
            .await;
        resp.topics[0].partitions[0].error_code
    }
    async fn epoch_code(client: &mut RawKafka) -> i16 {
        let resp: OffsetForLeaderEpochResponse = client
            .call(
                ApiKey::OffsetForLeaderEpoch,
                4,
                &OffsetForLeaderEpochRequest::default().with_topics(vec![
                    offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                        .with_topic(TopicName(StrBytes::from_static_str("tools")))
                        .with_partitions(vec![
                            offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
                                .with_partition(0)
                                .with_current_leader_epoch(-1)
                                .with_leader_epoch(0),
                        ]),
                ]),
            )
            .await;
        resp.topics[0].partitions[0].error_code
    }
    /// (top-level error, topics listed) of DescribeLogDirs v4 for every topic.
    async fn log_dirs(client: &mut RawKafka) -> (i16, Vec<String>) {
        let resp: DescribeLogDirsResponse = client
            .call(
                ApiKey::DescribeLogDirs,
                4,
                &DescribeLogDirsRequest::default().with_topics(None),
            )
            .await;
        let topics = resp
            .results
            .iter()
            .flat_map(|r| r.topics.iter().map(|t| t.name.to_string()))
            .collect();
        (resp.error_code, topics)
    }

    // Without any binding everything is refused.
    let mut alice = signed_in(&broker, "alice").await;
    assert_eq!(producers_code(&mut alice).await, TOPIC_AUTHORIZATION_FAILED);
    assert_eq!(epoch_code(&mut alice).await, TOPIC_AUTHORIZATION_FAILED);
    assert_eq!(
        log_dirs(&mut alice).await,
        (CLUSTER_AUTHORIZATION_FAILED, vec![])
    );

    let mut admin = signed_in(&broker, "admin").await;
    let created = create_acls(
        &mut admin,
        vec![
            binding(TOPIC, LITERAL, "tools", "User:alice", READ, ALLOW),
            binding(
                CLUSTER,
                LITERAL,
                "kafka-cluster",
                "User:alice",
                DESCRIBE,
                ALLOW,
            ),
            binding(TOPIC, LITERAL, "tools", "User:bob", DESCRIBE, ALLOW),
            binding(
                CLUSTER,
                LITERAL,
                "kafka-cluster",
                "User:carol",
                CLUSTER_ACTION,
                ALLOW,
            ),
        ],
    )
    .await;
    assert_eq!(created, vec![0, 0, 0, 0]);

    // READ on the topic (which implies DESCRIBE) and DESCRIBE on the cluster: all three.
    assert_eq!(producers_code(&mut alice).await, 0);
    assert_eq!(epoch_code(&mut alice).await, 0);
    assert_eq!(log_dirs(&mut alice).await, (0, vec!["tools".to_string()]));
    // DESCRIBE on the topic is enough for OffsetForLeaderEpoch, not for DescribeProducers.
    let mut bob = signed_in(&broker, "bob").await;
    assert_eq!(producers_code(&mut bob).await, TOPIC_AUTHORIZATION_FAILED);
    assert_eq!(epoch_code(&mut bob).await, 0);
    assert_eq!(log_dirs(&mut bob).await.0, CLUSTER_AUTHORIZATION_FAILED);
    // CLUSTER_ACTION (a broker's right) covers OffsetForLeaderEpoch on every topic.
    let mut carol = signed_in(&broker, "carol").await;
    assert_eq!(epoch_code(&mut carol).await, 0);
    assert_eq!(producers_code(&mut carol).await, TOPIC_AUTHORIZATION_FAILED);
    broker.stop().await;
}
