//! Topic administration for the bench: CreateTopics for each case's fresh topic, waiting until
//! Metadata shows a leader for every partition, ListOffsets, and DeleteTopics at the end (or on
//! Ctrl-C). Errors keep the broker's own error names so a refusal is easy to look up.

use super::*;

pub(super) async fn create_topic(
    ctx: &Ctx,
    topic: &str,
    partitions: i32,
) -> Result<(), BenchError> {
    let v = ctx.admin.version(ApiKey::CreateTopics, CREATE_TOPICS)?;
    // -1 ("broker default", KIP-464) needs v4; older brokers get an explicit 1.
    let rf = match ctx.args.replication_factor {
        -1 if v < 4 => 1,
        rf => rf,
    };
    // `--schema avro`: the topic refuses records that do not match their schema.
    let configs = match ctx.args.schema {
        Some(_) => vec![
            kafka_protocol::messages::create_topics_request::CreatableTopicConfig::default()
                .with_name(kafka_protocol::protocol::StrBytes::from_static_str(
                    "ferry.schema.validation",
                ))
                .with_value(Some(kafka_protocol::protocol::StrBytes::from_static_str(
                    "true",
                ))),
        ],
        None => Vec::new(),
    };
    let request = CreateTopicsRequest::default()
        .with_topics(vec![CreatableTopic::default()
            .with_name(topic_name(topic))
            .with_num_partitions(partitions)
            .with_replication_factor(rf)
            .with_configs(configs)])
        .with_timeout_ms(BROKER_TIMEOUT_MS);
    let response = ctx.admin.call(v, &request).await?;
    let Some(result) = response.topics.iter().find(|t| t.name.as_str() == topic) else {
        return Err(BenchError::from(ClientError::Protocol {
            addr: ctx.admin.addr().to_string(),
            api: "CreateTopics".into(),
            detail: format!("no result for topic {topic}"),
        }));
    };
    if result.error_code != 0 {
        return Err(BenchError::from(kafka_error(
            "CreateTopics",
            format!(" for topic {topic}"),
            result.error_code,
            result.error_message.as_deref(),
        )));
    }
    Ok(())
}

/// Polls Metadata until every partition of `topic` has a leader; returns each partition's
/// leader address.
pub(super) async fn wait_for_leaders(
    ctx: &Ctx,
    topic: &str,
    partitions: i32,
) -> Result<Vec<String>, BenchError> {
    let v = ctx.admin.version(ApiKey::Metadata, METADATA)?;
    let request = topic_metadata_request(topic, v);
    let deadline = Instant::now() + ctx.timeout;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        let md = ctx.admin.call(v, &request).await?;
        match leaders_of(&md, topic, partitions) {
            Ok(addrs) => return Ok(addrs),
            Err(why) => last = why,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(BenchError::Failed(format!(
        "topic {topic} has no leader for every partition after {} s ({last}) — check the \
         broker's log",
        ctx.timeout.as_secs()
    )))
}

pub(super) fn leaders_of(
    md: &MetadataResponse,
    topic: &str,
    partitions: i32,
) -> Result<Vec<String>, String> {
    let t = md
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.as_str() == topic))
        .ok_or("topic not in metadata yet")?;
    if t.error_code != 0 {
        return Err(format!("topic error {}", t.error_code));
    }
    let mut addrs = vec![String::new(); partitions as usize];
    for p in &t.partitions {
        let Some(slot) = usize::try_from(p.partition_index)
            .ok()
            .and_then(|i| addrs.get_mut(i))
        else {
            continue;
        };
        if p.error_code != 0 || p.leader_id.0 < 0 {
            return Err(format!("partition {} has no leader", p.partition_index));
        }
        let broker = md
            .brokers
            .iter()
            .find(|b| b.node_id == p.leader_id)
            .ok_or_else(|| format!("leader {} is not in the broker list", p.leader_id.0))?;
        let host = broker.host.as_str();
        *slot = if host.contains(':') {
            format!("[{host}]:{}", broker.port)
        } else {
            format!("{host}:{}", broker.port)
        };
    }
    if let Some(missing) = addrs.iter().position(String::is_empty) {
        return Err(format!("partition {missing} is missing"));
    }
    Ok(addrs)
}

pub(super) async fn delete_topic(admin: &Connection, topic: &str) -> Result<(), BenchError> {
    let v = admin.version(ApiKey::DeleteTopics, DELETE_TOPICS)?;
    let mut request = DeleteTopicsRequest::default().with_timeout_ms(BROKER_TIMEOUT_MS);
    request = if v >= 6 {
        request.with_topics(vec![
            DeleteTopicState::default().with_name(Some(topic_name(topic)))
        ])
    } else {
        request.with_topic_names(vec![topic_name(topic)])
    };
    let response = admin.call(v, &request).await?;
    for r in &response.responses {
        let unknown = ResponseError::UnknownTopicOrPartition.code();
        if r.error_code != 0 && r.error_code != unknown {
            return Err(BenchError::from(kafka_error(
                "DeleteTopics",
                format!(" for topic {topic}"),
                r.error_code,
                r.error_message.as_deref(),
            )));
        }
    }
    Ok(())
}
