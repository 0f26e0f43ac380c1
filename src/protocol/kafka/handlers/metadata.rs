//! Metadata: brokers (just us), topics with their partitions, auto-creation.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{ApiKey, BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{decode, respond, Outcome};
use crate::broker::{BrokerError, Topic};
use crate::protocol::kafka::authz::{operation, resource};
use crate::protocol::kafka::codec::RawRequest;
use crate::protocol::kafka::connection::ConnInfo;
use crate::protocol::kafka::convert::broker_error_code;
use crate::protocol::kafka::{KafkaContext, NODE_ID};

pub async fn handle(ctx: Arc<KafkaContext>, conn: ConnInfo, req: RawRequest) -> Outcome {
    let request: MetadataRequest = match decode(&req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    let v = req.api_version;
    let allow_create =
        ctx.settings.kafka.auto_create_topics && (v < 4 || request.allow_auto_topic_creation);

    // v0: an empty list means all topics; v1+: a null list means all topics.
    let wanted: Option<Vec<_>> = match request.topics {
        None => None,
        Some(list) if v == 0 && list.is_empty() => None,
        Some(list) => Some(list),
    };

    let mut topics = Vec::new();
    match wanted {
        None => {
            // Only the topics the client may DESCRIBE, as Kafka lists them.
            for topic in ctx.core.topics() {
                if ctx.allowed(&conn, operation::DESCRIBE, resource::TOPIC, topic.name()) {
                    topics.push(describe(&topic, v));
                }
            }
        }
        Some(list) => {
            for wanted in list {
                let name = match &wanted.name {
                    Some(n) => n.as_str().to_string(),
                    None => {
                        // v10+: lookup by id.
                        let id = *wanted.topic_id.as_bytes();
                        let visible = ctx.core.topics().into_iter().find(|t| {
                            t.topic_id() == id
                                && ctx.allowed(
                                    &conn,
                                    operation::DESCRIBE,
                                    resource::TOPIC,
                                    t.name(),
                                )
                        });
                        match visible {
                            Some(t) => {
                                topics.push(describe(&t, v));
                            }
                            None => topics.push(
                                MetadataResponseTopic::default()
                                    .with_error_code(ResponseError::UnknownTopicId.code())
                                    .with_name(None)
                                    .with_topic_id(wanted.topic_id),
                            ),
                        }
                        continue;
                    }
                };
                if !ctx.allowed(&conn, operation::DESCRIBE, resource::TOPIC, &name) {
                    topics.push(
                        MetadataResponseTopic::default()
                            .with_error_code(ResponseError::TopicAuthorizationFailed.code())
                            .with_name(Some(TopicName(StrBytes::from_string(name)))),
                    );
                    continue;
                }
                // Auto-creation needs CREATE on the cluster or the topic, as in Kafka.
                let may_create = allow_create && ctx.may_auto_create(&conn, &name);
                let found = match ctx.core.topic(&name) {
                    Some(t) => Ok(t),
                    None if may_create => ctx
                        .core
                        .create_topic(
                            &name,
                            ctx.settings.kafka.default_partitions,
                            BTreeMap::new(),
                        )
                        .await
                        .or_else(|e| match e {
                            // Another connection created it first: fine.
                            BrokerError::TopicExists(_) => ctx
                                .core
                                .topic(&name)
                                .ok_or(BrokerError::UnknownTopic(name.clone())),
                            other => Err(other),
                        }),
                    None => Err(BrokerError::UnknownTopic(name.clone())),
                };
                match found {
                    Ok(t) => topics.push(describe(&t, v)),
                    Err(e) => topics.push(
                        MetadataResponseTopic::default()
                            .with_error_code(broker_error_code(&e))
                            .with_name(Some(TopicName(StrBytes::from_string(name)))),
                    ),
                }
            }
        }
    }

    let (host, port) = ctx.advertised_endpoint(&conn);
    let broker = MetadataResponseBroker::default()
        .with_node_id(BrokerId(NODE_ID))
        .with_host(StrBytes::from_string(host))
        .with_port(port);
    let mut body = MetadataResponse::default()
        .with_brokers(vec![broker])
        .with_topics(topics);
    if v >= 1 {
        body = body.with_controller_id(BrokerId(NODE_ID));
    }
    if v >= 2 {
        body = body.with_cluster_id(Some(StrBytes::from_string(ctx.cluster_id.clone())));
    }
    respond(ApiKey::Metadata, v, req.correlation_id, &body)
}

fn describe(topic: &Topic, version: i16) -> MetadataResponseTopic {
    let partitions = (0..topic.partition_count() as i32)
        .map(|p| {
            let mut part = MetadataResponsePartition::default()
                .with_partition_index(p)
                .with_leader_id(BrokerId(NODE_ID))
                .with_replica_nodes(vec![BrokerId(NODE_ID)])
                .with_isr_nodes(vec![BrokerId(NODE_ID)]);
            if version >= 7 {
                part = part.with_leader_epoch(0);
            }
            part
        })
        .collect();
    let mut t = MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(
            topic.name().to_string(),
        ))))
        .with_partitions(partitions);
    if version >= 10 {
        t = t.with_topic_id(uuid::Uuid::from_bytes(topic.topic_id()));
    }
    t
}
