//! `/api/topics`: list, describe, create, delete and grow topics, through the same core calls
//! (and name rules) as Kafka's CreateTopics, DeleteTopics and CreatePartitions.

use std::collections::BTreeMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::history::{top_level, with_history, SeriesKey, Window, WindowParams};
use super::{json_body, Admin, ApiError};
use crate::broker::{BrokerError, Topic};
use crate::observe::http::AppState;
use serde_json::Value;

#[derive(Serialize)]
pub(super) struct PartitionView {
    partition: i32,
    start_offset: i64,
    end_offset: i64,
    size_bytes: u64,
    segments: usize,
}

#[derive(Serialize)]
pub(super) struct TopicView {
    name: String,
    partition_count: usize,
    /// Sum over partitions.
    size_bytes: u64,
    /// Topic-level config overrides (Kafka names).
    configs: BTreeMap<String, String>,
    partitions: Vec<PartitionView>,
}

pub(super) fn topic_view(t: &Topic) -> TopicView {
    let partitions: Vec<PartitionView> = t
        .partitions()
        .iter()
        .enumerate()
        .map(|(p, h)| PartitionView {
            partition: p as i32,
            start_offset: h.log_start_offset(),
            end_offset: h.high_watermark(),
            size_bytes: h.size_bytes(),
            segments: h.segment_count(),
        })
        .collect();
    TopicView {
        name: t.name().to_string(),
        partition_count: partitions.len(),
        size_bytes: partitions.iter().map(|p| p.size_bytes).sum(),
        configs: t.config_overrides().clone(),
        partitions,
    }
}

/// Every topic, with `messages_in_details` and `size_bytes_details` from the history.
pub(super) async fn list_topics(
    Admin(core): Admin,
    State(state): State<AppState>,
    Query(params): Query<WindowParams>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let window = params.window()?;
    Ok(Json(
        core.topics()
            .iter()
            .map(|t| with_topic_history(&state, &window, topic_view(t)))
            .collect(),
    ))
}

fn with_topic_history(state: &AppState, window: &Window, t: TopicView) -> Value {
    let key = SeriesKey::Topic(t.name.clone());
    with_history(&state.history, &key, window, t, top_level)
}

pub(super) async fn get_topic(
    Admin(core): Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(params): Query<WindowParams>,
) -> Result<Response, ApiError> {
    let window = params.window()?;
    let topic = core.topic(&name).ok_or(BrokerError::UnknownTopic(name))?;
    Ok(Json(with_topic_history(&state, &window, topic_view(&topic))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateTopic {
    name: String,
    #[serde(default = "one")]
    partitions: u32,
    #[serde(default)]
    configs: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

pub(super) async fn create_topic(
    Admin(core): Admin,
    body: Result<Json<CreateTopic>, JsonRejection>,
) -> Result<Response, ApiError> {
    let req = json_body(body)?;
    let topic = core
        .create_topic(&req.name, req.partitions, req.configs)
        .await?;
    Ok((StatusCode::CREATED, Json(topic_view(&topic))).into_response())
}

pub(super) async fn delete_topic(
    Admin(core): Admin,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    core.delete_topic(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// --- topic growth -------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GrowTopic {
    /// The new total partition count (Kafka's CreatePartitions: only ever larger).
    count: u32,
}

pub(super) async fn grow_topic(
    Admin(core): Admin,
    Path(name): Path<String>,
    body: Result<Json<GrowTopic>, JsonRejection>,
) -> Result<Response, ApiError> {
    let req = json_body(body)?;
    let topic = core.create_partitions(&name, req.count).await?;
    Ok(Json(topic_view(&topic)).into_response())
}

// --- topic config changes -----------------------------------------------------------------------

/// Kafka's IncrementalAlterConfigs on one topic: `set` overrides keys, `delete` returns keys to
/// the broker default; the keys not named keep their override.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AlterTopicConfigs {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    delete: Vec<String>,
}

pub(super) async fn alter_topic_configs(
    Admin(core): Admin,
    Path(name): Path<String>,
    body: Result<Json<AlterTopicConfigs>, JsonRejection>,
) -> Result<Response, ApiError> {
    let req = json_body(body)?;
    if let Some(both) = req.delete.iter().find(|k| req.set.contains_key(*k)) {
        return Err(super::bad_request(format!(
            "`{both}` is both set and deleted"
        )));
    }
    let topic = core
        .topic(&name)
        .ok_or_else(|| BrokerError::UnknownTopic(name.clone()))?;
    let mut configs = topic.config_overrides().clone();
    for key in &req.delete {
        configs.remove(key);
    }
    configs.extend(req.set);
    let altered = core.set_topic_configs(&name, configs).await?;
    Ok(Json(topic_view(&altered)).into_response())
}
