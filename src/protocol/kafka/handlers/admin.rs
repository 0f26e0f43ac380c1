//! Topic administration: CreateTopics, DeleteTopics, CreatePartitions, DescribeConfigs,
//! AlterConfigs, IncrementalAlterConfigs, DescribeCluster.
//!
//! Ferry is one node, so replication factor 1 (or -1, "broker default") is the only valid one;
//! topic configs use Kafka's names and are enforced by the log.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{
    alter_configs_response::AlterConfigsResourceResponse,
    incremental_alter_configs_response::AlterConfigsResourceResponse as IncrementalResourceResponse,
    AlterConfigsRequest, AlterConfigsResponse, ApiKey, BrokerId, CreatePartitionsRequest,
    CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest,
    DeleteTopicsResponse, DescribeClusterResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::{decode, respond, Outcome};
use crate::broker::{validate_topic_name, BrokerError};
use crate::log::LogConfig;
use crate::protocol::kafka::authz::{operation, resource};
use crate::protocol::kafka::codec::RawRequest;
use crate::protocol::kafka::connection::ConnInfo;
use crate::protocol::kafka::convert::{broker_error_code, NONE};
use crate::protocol::kafka::{KafkaContext, NODE_ID};

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// DescribeConfigs config sources.
const SOURCE_DYNAMIC_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

fn topic_name(s: &str) -> TopicName {
    TopicName(str_bytes(s))
}

pub async fn create_topics(ctx: Arc<KafkaContext>, conn: ConnInfo, req: RawRequest) -> Outcome {
    let request: CreateTopicsRequest = match decode(&req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    let v = req.api_version;
    let mut results = Vec::with_capacity(request.topics.len());
    let cluster_create = ctx.allowed_on_cluster(&conn, operation::CREATE);
    for topic in request.topics {
        let name = topic.name.as_str().to_string();
        let authorized =
            cluster_create || ctx.allowed(&conn, operation::CREATE, resource::TOPIC, &name);
        let partitions = if !topic.assignments.is_empty() {
            topic.assignments.len() as i32
        } else if topic.num_partitions == -1 {
            ctx.settings.kafka.default_partitions as i32
        } else {
            topic.num_partitions
        };
        let mut configs = BTreeMap::new();
        for c in &topic.configs {
            if let Some(value) = &c.value {
                configs.insert(c.name.to_string(), value.to_string());
            }
        }
        let outcome: Result<(), (i16, String)> = if !authorized {
            Err(denied(&name))
        } else if !matches!(topic.replication_factor, -1 | 1) {
            Err((
                ResponseError::InvalidReplicationFactor.code(),
                format!(
                    "replication factor {} is impossible on a single-node Ferry broker; use 1",
                    topic.replication_factor
                ),
            ))
        } else if partitions <= 0 {
            Err((
                ResponseError::InvalidPartitions.code(),
                format!("partition count {partitions} must be at least 1"),
            ))
        } else if request.validate_only {
            validate_topic_name(&name)
                .and_then(|()| ctx.core.topic_log_config(&configs).map(|_| ()))
                .and_then(|()| {
                    ctx.core
                        .limits()
                        .check_partitions(ctx.core.partition_total(), partitions as usize)
                })
                .and_then(|()| match ctx.core.topic(&name) {
                    Some(_) => Err(BrokerError::TopicExists(name.clone())),
                    None => Ok(()),
                })
                .map_err(|e| (broker_error_code(&e), e.client_message()))
        } else {
            ctx.core
                .create_topic(&name, partitions as u32, configs)
                .await
                .map(|_| ())
                .map_err(|e| (broker_error_code(&e), e.client_message()))
        };
        let mut result = CreatableTopicResult::default().with_name(topic_name(&name));
        match outcome {
            Ok(()) => {
                result = result.with_error_code(NONE);
                if v >= 5 {
                    result = result
                        .with_num_partitions(partitions)
                        .with_replication_factor(1);
                    if let Some(t) = ctx.core.topic(&name) {
                        result = result.with_configs(Some(
                            config_entries(
                                t.log_config(),
                                t.config_overrides(),
                                ctx.core.default_log_config(),
                            )
                            .into_iter()
                            .map(|(name, value, source)| {
                                CreatableTopicConfigs::default()
                                    .with_name(str_bytes(name))
                                    .with_value(Some(str_bytes(value)))
                                    .with_config_source(source)
                            })
                            .collect(),
                        ));
                        if v >= 7 {
                            result = result.with_topic_id(uuid::Uuid::from_bytes(t.topic_id()));
                        }
                    }
                }
            }
            Err((code, message)) => {
                result = result.with_error_code(code);
                if v >= 1 {
                    result = result.with_error_message(Some(str_bytes(message)));
                }
                if v >= 5 {
                    result = result.with_num_partitions(-1).with_replication_factor(-1);
                }
            }
        }
        results.push(result);
    }
    let body = CreateTopicsResponse::default().with_topics(results);
    respond(ApiKey::CreateTopics, v, req.correlation_id, &body)
}

pub async fn delete_topics(ctx: Arc<KafkaContext>, conn: ConnInfo, req: RawRequest) -> Outcome {
    let request: DeleteTopicsRequest = match decode(&req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    let v = req.api_version;
    // v6 names topics (or ids) in `topics`; earlier versions list names in `topic_names`.
    let mut wanted: Vec<(Option<String>, uuid::Uuid)> = request
        .topic_names
        .iter()
        .map(|n| (Some(n.as_str().to_string()), uuid::Uuid::nil()))
        .collect();
    for t in &request.topics {
        wanted.push((t.name.as_ref().map(|n| n.as_str().to_string()), t.topic_id));
    }
    let mut results = Vec::with_capacity(wanted.len());
    for (name, id) in wanted {
        let name = name.or_else(|| {
            ctx.core
                .topics()
                .into_iter()
                .find(|t| t.topic_id() == *id.as_bytes())
                .map(|t| t.name().to_string())
        });
        let mut result = DeletableTopicResult::default();
        match name {
            None => {
                result = result.with_error_code(ResponseError::UnknownTopicId.code());
                if v >= 6 {
                    result = result.with_topic_id(id).with_name(None);
                }
            }
            Some(name) => {
                let topic_id = ctx.core.topic(&name).map(|t| t.topic_id());
                result = result.with_name(Some(topic_name(&name)));
                if v >= 6 {
                    result =
                        result.with_topic_id(uuid::Uuid::from_bytes(topic_id.unwrap_or_default()));
                }
                if !ctx.allowed(&conn, operation::DELETE, resource::TOPIC, &name) {
                    let (code, message) = denied(&name);
                    result = result.with_error_code(code);
                    if v >= 5 {
                        result = result.with_error_message(Some(str_bytes(message)));
                    }
                } else if let Err(e) = ctx.core.delete_topic(&name).await {
                    result = result.with_error_code(broker_error_code(&e));
                    if v >= 5 {
                        result = result.with_error_message(Some(str_bytes(e.client_message())));
                    }
                }
            }
        }
        results.push(result);
    }
    let body = DeleteTopicsResponse::default().with_responses(results);
    respond(ApiKey::DeleteTopics, v, req.correlation_id, &body)
}

pub async fn create_partitions(ctx: Arc<KafkaContext>, conn: ConnInfo, req: RawRequest) -> Outcome {
    let request: CreatePartitionsRequest = match decode(&req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name = topic.name.as_str().to_string();
        if !ctx.allowed(&conn, operation::ALTER, resource::TOPIC, &name) {
            let (code, message) = denied(&name);
            results.push(
                CreatePartitionsTopicResult::default()
                    .with_name(topic_name(&name))
                    .with_error_code(code)
                    .with_error_message(Some(str_bytes(message))),
            );
            continue;
        }
        let outcome = match ctx.core.topic(&name) {
            None => Err(BrokerError::UnknownTopic(name.clone())),
            Some(t) if topic.count <= t.partition_count() as i32 => {
                Err(BrokerError::InvalidPartitions(format!(
                    "topic `{name}` has {} partitions; the new count {} must be larger",
                    t.partition_count(),
                    topic.count
                )))
            }
            Some(_) if request.validate_only => Ok(()),
            Some(_) => ctx
                .core
                .create_partitions(&name, topic.count.max(0) as u32)
                .await
                .map(|_| ()),
        };
        let mut result = CreatePartitionsTopicResult::default().with_name(topic_name(&name));
        if let Err(e) = outcome {
            result = result
                .with_error_code(broker_error_code(&e))
                .with_error_message(Some(str_bytes(e.client_message())));
        }
        results.push(result);
    }
    let body = CreatePartitionsResponse::default().with_results(results);
    respond(
        ApiKey::CreatePartitions,
        req.api_version,
        req.correlation_id,
        &body,
    )
}

/// `(name, value, source)` for every topic config key.
fn config_entries(
    effective: &LogConfig,
    overrides: &BTreeMap<String, String>,
    broker_defaults: &LogConfig,
) -> Vec<(String, String, i8)> {
    let builtin: BTreeMap<String, String> = LogConfig::default()
        .entries()
        .into_iter()
        .map(|e| (e.name, e.value))
        .collect();
    let broker: BTreeMap<String, String> = broker_defaults
        .entries()
        .into_iter()
        .map(|e| (e.name, e.value))
        .collect();
    effective
        .entries()
        .into_iter()
        .map(|e| {
            let source = if overrides.contains_key(&e.name) {
                SOURCE_DYNAMIC_TOPIC
            } else if broker.get(&e.name) != builtin.get(&e.name) {
                SOURCE_STATIC_BROKER
            } else {
                SOURCE_DEFAULT
            };
            (e.name, e.value, source)
        })
        .collect()
}

pub fn describe_configs(ctx: &Arc<KafkaContext>, conn: &ConnInfo, req: &RawRequest) -> Outcome {
    let request: DescribeConfigsRequest = match decode(req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    let v = req.api_version;
    let results = request
        .resources
        .iter()
        .map(|res| {
            let mut result = DescribeConfigsResult::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone());
            let authorized = match res.resource_type {
                RESOURCE_TOPIC => ctx.allowed(
                    conn,
                    operation::DESCRIBE_CONFIGS,
                    resource::TOPIC,
                    res.resource_name.as_str(),
                ),
                RESOURCE_BROKER => ctx.allowed_on_cluster(conn, operation::DESCRIBE_CONFIGS),
                _ => true,
            };
            if !authorized {
                let (code, message) = config_denied(res.resource_type, res.resource_name.as_str());
                return result
                    .with_error_code(code)
                    .with_error_message(Some(str_bytes(message)));
            }
            let entries = match res.resource_type {
                RESOURCE_TOPIC => match ctx.core.topic(res.resource_name.as_str()) {
                    Some(t) => config_entries(
                        t.log_config(),
                        t.config_overrides(),
                        ctx.core.default_log_config(),
                    ),
                    None => {
                        return result
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                            .with_error_message(Some(str_bytes(format!(
                                "unknown topic `{}`",
                                res.resource_name.as_str()
                            ))))
                    }
                },
                RESOURCE_BROKER => {
                    let defaults = ctx.core.default_log_config();
                    config_entries(defaults, &BTreeMap::new(), defaults)
                        .into_iter()
                        .map(|(name, value, source)| {
                            (format!("log.{}", broker_key(&name)), value, source)
                        })
                        .collect()
                }
                other => {
                    return result
                        .with_error_code(ResponseError::InvalidRequest.code())
                        .with_error_message(Some(str_bytes(format!(
                            "resource type {other} is not supported"
                        ))))
                }
            };
            let configs = entries
                .into_iter()
                .filter(|(name, _, _)| {
                    res.configuration_keys
                        .as_ref()
                        .is_none_or(|keys| keys.iter().any(|k| k.as_str() == name))
                })
                .map(|(name, value, source)| {
                    DescribeConfigsResourceResult::default()
                        .with_name(str_bytes(name))
                        .with_value(Some(str_bytes(value)))
                        .with_read_only(res.resource_type == RESOURCE_BROKER)
                        .with_config_source(source)
                })
                .collect();
            result = result.with_configs(configs);
            result
        })
        .collect();
    let body = DescribeConfigsResponse::default().with_results(results);
    respond(ApiKey::DescribeConfigs, v, req.correlation_id, &body)
}

/// Kafka's broker-level names for topic settings (`segment.bytes` -> `log.segment.bytes`).
fn broker_key(topic_key: &str) -> &str {
    match topic_key {
        "cleanup.policy" => "cleanup.policy",
        "max.message.bytes" => "message.max.bytes",
        other => other,
    }
}

pub async fn alter_configs(ctx: Arc<KafkaContext>, conn: ConnInfo, req: RawRequest) -> Outcome {
    let request: AlterConfigsRequest = match decode(&req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    let mut responses = Vec::with_capacity(request.resources.len());
    for res in request.resources {
        let name = res.resource_name.to_string();
        // AlterConfigs replaces the whole override set with what the request lists.
        let configs: BTreeMap<String, String> = res
            .configs
            .iter()
            .filter_map(|c| {
                c.value
                    .as_ref()
                    .map(|v| (c.name.to_string(), v.to_string()))
            })
            .collect();
        let outcome = alter_topic(
            &ctx,
            &conn,
            res.resource_type,
            &name,
            request.validate_only,
            configs,
        )
        .await;
        let (code, message) = error_fields(outcome);
        responses.push(
            AlterConfigsResourceResponse::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone())
                .with_error_code(code)
                .with_error_message(message),
        );
    }
    let body = AlterConfigsResponse::default().with_responses(responses);
    respond(
        ApiKey::AlterConfigs,
        req.api_version,
        req.correlation_id,
        &body,
    )
}

pub async fn incremental_alter_configs(
    ctx: Arc<KafkaContext>,
    conn: ConnInfo,
    req: RawRequest,
) -> Outcome {
    let request: IncrementalAlterConfigsRequest = match decode(&req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    const SET: i8 = 0;
    const DELETE: i8 = 1;
    let mut responses = Vec::with_capacity(request.resources.len());
    for res in request.resources {
        let name = res.resource_name.to_string();
        let mut configs = ctx
            .core
            .topic(&name)
            .map(|t| t.config_overrides().clone())
            .unwrap_or_default();
        let mut bad = None;
        for c in &res.configs {
            match (c.config_operation, &c.value) {
                (SET, Some(v)) => {
                    configs.insert(c.name.to_string(), v.to_string());
                }
                (DELETE, _) => {
                    configs.remove(c.name.as_str());
                }
                (op, _) => {
                    bad = Some(format!(
                    "operation {op} on `{}` is not supported (only SET with a value and DELETE)",
                    c.name.as_str()
                ))
                }
            }
        }
        let outcome = match bad {
            Some(message) => Err((ResponseError::InvalidRequest.code(), message)),
            None => {
                alter_topic(
                    &ctx,
                    &conn,
                    res.resource_type,
                    &name,
                    request.validate_only,
                    configs,
                )
                .await
            }
        };
        let (code, message) = error_fields(outcome);
        responses.push(
            IncrementalResourceResponse::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone())
                .with_error_code(code)
                .with_error_message(message),
        );
    }
    let body = IncrementalAlterConfigsResponse::default().with_responses(responses);
    respond(
        ApiKey::IncrementalAlterConfigs,
        req.api_version,
        req.correlation_id,
        &body,
    )
}

/// A config change's outcome as the error code and message of its resource in the answer
/// (0 and none when it succeeded), shared by AlterConfigs and IncrementalAlterConfigs.
fn error_fields(outcome: Result<(), (i16, String)>) -> (i16, Option<StrBytes>) {
    match outcome {
        Ok(()) => (0, None),
        Err((code, message)) => (code, Some(str_bytes(message))),
    }
}

async fn alter_topic(
    ctx: &Arc<KafkaContext>,
    conn: &ConnInfo,
    resource_type: i8,
    name: &str,
    validate_only: bool,
    configs: BTreeMap<String, String>,
) -> Result<(), (i16, String)> {
    if resource_type != RESOURCE_TOPIC {
        return Err((
            ResponseError::InvalidRequest.code(),
            "only topic configs can be altered; broker settings live in the config file".into(),
        ));
    }
    if !ctx.allowed(conn, operation::ALTER_CONFIGS, resource::TOPIC, name) {
        return Err(config_denied(resource_type, name));
    }
    let to_kafka = |e: BrokerError| (broker_error_code(&e), e.client_message());
    if ctx.core.topic(name).is_none() {
        return Err(to_kafka(BrokerError::UnknownTopic(name.to_string())));
    }
    if validate_only {
        return ctx
            .core
            .topic_log_config(&configs)
            .map(|_| ())
            .map_err(to_kafka);
    }
    ctx.core
        .set_topic_configs(name, configs)
        .await
        .map(|_| ())
        .map_err(to_kafka)
}

/// TOPIC_AUTHORIZATION_FAILED for a topic the principal may not use.
fn denied(topic: &str) -> (i16, String) {
    (
        ResponseError::TopicAuthorizationFailed.code(),
        format!("not authorized to access topic `{topic}`"),
    )
}

/// The refusal of a config request: per topic, or CLUSTER_AUTHORIZATION_FAILED for the broker.
fn config_denied(resource_type: i8, name: &str) -> (i16, String) {
    if resource_type == RESOURCE_TOPIC {
        denied(name)
    } else {
        (
            ResponseError::ClusterAuthorizationFailed.code(),
            "not authorized to access the cluster's configs".into(),
        )
    }
}

pub fn describe_cluster(ctx: &Arc<KafkaContext>, conn: &ConnInfo, req: &RawRequest) -> Outcome {
    if let Err(close) = decode::<kafka_protocol::messages::DescribeClusterRequest>(req) {
        return close;
    }
    let (host, port) = ctx.advertised_endpoint(conn);
    let body = DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(ctx.cluster_id.clone()))
        .with_controller_id(BrokerId(NODE_ID))
        .with_brokers(vec![DescribeClusterBroker::default()
            .with_broker_id(BrokerId(NODE_ID))
            .with_host(str_bytes(host))
            .with_port(port)]);
    respond(
        ApiKey::DescribeCluster,
        req.api_version,
        req.correlation_id,
        &body,
    )
}
