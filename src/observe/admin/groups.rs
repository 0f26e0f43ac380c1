//! `/api/groups`: list and describe consumer groups (members, decoded assignments, lag), and
//! reset an empty group's offsets (the rule is the core's: [`crate::broker::offset_reset`]).
//!
//! A group's partitions are those it has committed offsets for plus those its members are
//! assigned, as `kafka-consumer-groups --describe` lists them; an assigned partition without a
//! commit counts its lag from the log start (see [`uncommitted`]), so `total_lag` is the same
//! figure `ferry group describe` prints.

use std::collections::BTreeMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::{Buf, Bytes};
use kafka_protocol::messages::ConsumerProtocolAssignment;
use kafka_protocol::protocol::Decodable;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::history::{top_level, with_history, SeriesKey, WindowParams};
use super::{bad_request, json_body, Admin, ApiError};
use crate::broker::offset_reset::{OffsetResetError, ResetScope, ResetTarget};
use crate::broker::{BrokerCore, GroupState};
use crate::observe::http::AppState;
use crate::observe::metrics::{group_lag, GroupLag};

#[derive(Serialize)]
pub(super) struct GroupSummary {
    group_id: String,
    state: &'static str,
    protocol_type: String,
}

pub(super) async fn list_groups(Admin(core): Admin) -> Json<Vec<GroupSummary>> {
    Json(
        core.groups()
            .list_groups(&[])
            .into_iter()
            .map(|g| GroupSummary {
                group_id: g.group_id,
                state: g.state.as_str(),
                protocol_type: g.protocol_type,
            })
            .collect(),
    )
}

#[derive(Serialize)]
pub(super) struct AssignedPartitions {
    topic: String,
    partitions: Vec<i32>,
}

#[derive(Serialize)]
pub(super) struct MemberView {
    member_id: String,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    /// Decoded "consumer" protocol assignment; `null` when the group is not Stable or the
    /// assignment is not in the consumer protocol's format.
    assignment: Option<Vec<AssignedPartitions>>,
}

/// One partition of a group: committed, assigned to a member, or both.
#[derive(Serialize)]
pub(super) struct OffsetView {
    topic: String,
    partition: i32,
    /// `null` for an assigned partition the group has not committed an offset for.
    committed_offset: Option<i64>,
    /// `null` when the partition no longer exists.
    high_watermark: Option<i64>,
    /// From the committed offset, or from the log start where nothing is committed.
    lag: Option<i64>,
}

#[derive(Serialize)]
pub(super) struct GroupView {
    group_id: String,
    state: &'static str,
    protocol_type: String,
    protocol: String,
    members: Vec<MemberView>,
    offsets: Vec<OffsetView>,
    /// Sum of the partitions' lag, uncommitted assigned partitions included.
    total_lag: i64,
}

/// A "consumer" protocol assignment: a version prefix, then the v0 body every version shares.
fn decode_assignment(bytes: &Bytes) -> Option<Vec<AssignedPartitions>> {
    let mut buf = bytes.clone();
    if buf.remaining() < 2 {
        return None;
    }
    let _version = buf.get_i16();
    let a = ConsumerProtocolAssignment::decode(&mut buf, 0).ok()?;
    Some(
        a.assigned_partitions
            .into_iter()
            .map(|tp| AssignedPartitions {
                topic: tp.topic.to_string(),
                partitions: tp.partitions,
            })
            .collect(),
    )
}

/// Deletes an empty group and its committed offsets (Kafka's DeleteGroups): 204, 404 when
/// there is no such group, 409 while it has members.
pub(super) async fn delete_group(
    Admin(core): Admin,
    Path(id): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let results = core.groups().delete_groups(std::slice::from_ref(&id));
    for (_, result) in results {
        result.map_err(|e| match e {
            crate::broker::GroupError::GroupIdNotFound => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("unknown consumer group `{id}`"),
            ),
            crate::broker::GroupError::NonEmptyGroup => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("consumer group `{id}` has active members; stop its consumers first"),
            ),
            other => other.into(),
        })?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn get_group(
    Admin(core): Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<WindowParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let window = params.window()?;
    let d = core.groups().describe_group(&id);
    let offsets = group_lag(&core, &id);
    if d.state == GroupState::Dead && offsets.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("unknown consumer group `{id}`"),
        ));
    }
    let members: Vec<MemberView> = d
        .members
        .into_iter()
        .map(|m| MemberView {
            assignment: decode_assignment(&m.assignment),
            member_id: m.member_id,
            instance_id: m.instance_id,
            client_id: m.client_id,
            client_host: m.client_host,
        })
        .collect();
    let mut views: BTreeMap<(String, i32), OffsetView> = offsets
        .into_iter()
        .map(|o: GroupLag| {
            let view = OffsetView {
                topic: o.topic,
                partition: o.partition,
                committed_offset: Some(o.committed),
                high_watermark: o.high_watermark,
                lag: o.lag,
            };
            ((view.topic.clone(), view.partition), view)
        })
        .collect();
    for assigned in members.iter().flat_map(|m| m.assignment.iter().flatten()) {
        for &partition in &assigned.partitions {
            views
                .entry((assigned.topic.clone(), partition))
                .or_insert_with(|| uncommitted(&core, &assigned.topic, partition));
        }
    }
    let total_lag = views.values().filter_map(|o| o.lag).sum();
    let offsets = views.into_values().collect();
    let key = SeriesKey::Group(id);
    let view = GroupView {
        group_id: d.group_id,
        state: d.state.as_str(),
        protocol_type: d.protocol_type,
        protocol: d.protocol,
        members,
        offsets,
        total_lag,
    };
    Ok(Json(with_history(
        &state.history,
        &key,
        &window,
        view,
        top_level,
    )))
}

/// An assigned partition without a committed offset, as `kafka-consumer-groups --describe`
/// lists it: its lag counts from the log start, which is what a consumer with
/// `auto.offset.reset=earliest` (the reading that loses nothing) still has to read; with
/// `latest` it would skip those records. Counting them keeps unread records from hiding
/// behind a total lag of 0.
fn uncommitted(core: &BrokerCore, topic: &str, partition: i32) -> OffsetView {
    let log = core.partition(topic, partition).ok();
    OffsetView {
        topic: topic.to_string(),
        partition,
        committed_offset: None,
        high_watermark: log.as_ref().map(|h| h.high_watermark()),
        lag: log.map(|h| (h.high_watermark() - h.log_start_offset()).max(0)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ResetOffsets {
    /// Topic to reset; default: every topic the group has committed offsets for.
    #[serde(default)]
    topic: Option<String>,
    /// Partitions of `topic`; default all.
    #[serde(default)]
    partitions: Option<Vec<i32>>,
    /// `earliest`, `latest`, `offset` (with `offset`) or `timestamp` (with `timestamp`, ms).
    to: String,
    #[serde(default)]
    offset: Option<i64>,
    #[serde(default)]
    timestamp: Option<i64>,
    /// Compute and return the new offsets without committing them.
    #[serde(default)]
    dry_run: bool,
}

/// Commits new offsets for an *empty* group ([`crate::broker::BrokerCore::reset_group_offsets`]).
pub(super) async fn reset_offsets(
    Admin(core): Admin,
    Path(id): Path<String>,
    body: Result<Json<ResetOffsets>, JsonRejection>,
) -> Result<Response, ApiError> {
    let req = json_body(body)?;
    let target = match (req.to.as_str(), req.offset, req.timestamp) {
        ("earliest", None, None) => ResetTarget::Earliest,
        ("latest", None, None) => ResetTarget::Latest,
        ("offset", Some(o), None) => ResetTarget::Offset(o),
        ("timestamp", None, Some(t)) => ResetTarget::Timestamp(t),
        ("offset", None, _) => return Err(bad_request("to=offset needs \"offset\": N")),
        ("timestamp", _, None) => {
            return Err(bad_request(
                "to=timestamp needs \"timestamp\": MS_SINCE_EPOCH",
            ))
        }
        ("earliest" | "latest" | "offset" | "timestamp", _, _) => {
            return Err(bad_request(
                "give `offset` only with to=offset and `timestamp` only with to=timestamp",
            ))
        }
        (other, _, _) => {
            return Err(bad_request(format!(
                "unknown reset target '{other}' (use earliest, latest, offset or timestamp)"
            )))
        }
    };
    let scope = ResetScope {
        topic: req.topic,
        partitions: req.partitions,
    };
    let views = core
        .reset_group_offsets(&id, &scope, target, req.dry_run)
        .await?;
    Ok(Json(json!({"group_id": id, "dry_run": req.dry_run, "offsets": views})).into_response())
}

impl From<OffsetResetError> for ApiError {
    fn from(e: OffsetResetError) -> Self {
        match e {
            OffsetResetError::Broker(e) => e.into(),
            OffsetResetError::Group(e) => e.into(),
            OffsetResetError::GroupNotEmpty { .. } | OffsetResetError::MemberJoined { .. } => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            OffsetResetError::NothingToReset(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            OffsetResetError::PartitionsNeedTopic => bad_request(e.to_string()),
        }
    }
}
