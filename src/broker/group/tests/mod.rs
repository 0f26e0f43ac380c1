//! Scenario tests: simulated members run as concurrent tasks under paused tokio time, so every
//! session, rebalance and initial-delay timeout elapses instantly and deterministically.

mod consumer;
mod offsets;
mod protocol;
mod rebalance;
mod static_members;

use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinHandle;
use tokio::time::{sleep, Instant};

use super::*;
use crate::clock::Clock;
use crate::meta::{CommittedOffset, Meta};

const SESSION: Duration = Duration::from_secs(10);
const REBALANCE: Duration = Duration::from_secs(30);
const INITIAL_DELAY: Duration = Duration::from_secs(3);

fn coordinator(meta: &Meta) -> GroupCoordinator {
    coordinator_with(meta, GroupSettings::default())
}

fn coordinator_with(meta: &Meta, settings: GroupSettings) -> GroupCoordinator {
    GroupCoordinator::new(meta.clone(), Clock::manual(1_000), settings)
}

fn join_req(group: &str, member_id: &str, client: &str) -> JoinRequest {
    JoinRequest {
        group_id: group.into(),
        member_id: member_id.into(),
        protocol_type: "consumer".into(),
        protocols: vec![("range".into(), Bytes::from(format!("sub-{client}")))],
        session_timeout: SESSION,
        rebalance_timeout: REBALANCE,
        client_id: client.into(),
        client_host: "/127.0.0.1".into(),
        ..JoinRequest::default()
    }
}

fn static_req(group: &str, member_id: &str, instance: &str) -> JoinRequest {
    JoinRequest {
        instance_id: Some(instance.into()),
        ..join_req(group, member_id, instance)
    }
}

fn spawn_join(
    c: &GroupCoordinator,
    req: JoinRequest,
) -> JoinHandle<Result<JoinResponse, GroupError>> {
    let c = c.clone();
    tokio::spawn(async move { c.join(req).await })
}

fn sync_req(group: &str, joined: &JoinResponse, instance: Option<&str>) -> SyncRequest {
    SyncRequest {
        group_id: group.into(),
        generation: joined.generation,
        member_id: joined.member_id.clone(),
        instance_id: instance.map(str::to_string),
        protocol_type: Some("consumer".into()),
        protocol_name: Some(joined.protocol_name.clone()),
        // The leader assigns every member "assigned-to-<member id>".
        assignments: joined
            .members
            .iter()
            .map(|m| {
                (
                    m.member_id.clone(),
                    Bytes::from(format!("assigned-to-{}", m.member_id)),
                )
            })
            .collect(),
    }
}

fn spawn_sync(
    c: &GroupCoordinator,
    req: SyncRequest,
) -> JoinHandle<Result<SyncResponse, GroupError>> {
    let c = c.clone();
    tokio::spawn(async move { c.sync(req).await })
}

/// Runs a simulated member's heartbeat thread (every 3 s) until a heartbeat fails; returns the
/// error and when it happened.
fn heartbeat_until_error(
    c: &GroupCoordinator,
    group: &str,
    joined: &JoinResponse,
) -> JoinHandle<(GroupError, Instant)> {
    let (c, group, generation, member) = (
        c.clone(),
        group.to_string(),
        joined.generation,
        joined.member_id.clone(),
    );
    tokio::spawn(async move {
        loop {
            sleep(Duration::from_secs(3)).await;
            if let Err(e) = c.heartbeat(&group, generation, &member, None) {
                return (e, Instant::now());
            }
        }
    })
}

/// Joins `reqs` concurrently, syncs everyone (followers first, so they wait for the leader) and
/// returns the join answers in request order.
async fn form_group(
    c: &GroupCoordinator,
    group: &str,
    reqs: Vec<JoinRequest>,
) -> Vec<JoinResponse> {
    let instances: Vec<Option<String>> = reqs.iter().map(|r| r.instance_id.clone()).collect();
    let handles: Vec<_> = reqs.into_iter().map(|r| spawn_join(c, r)).collect();
    let mut joined = Vec::new();
    for h in handles {
        joined.push(h.await.unwrap().unwrap());
    }
    let mut followers = Vec::new();
    for (j, instance) in joined.iter().zip(&instances) {
        if j.member_id != j.leader_id {
            followers.push(spawn_sync(c, sync_req(group, j, instance.as_deref())));
        }
    }
    tokio::task::yield_now().await;
    for (j, instance) in joined.iter().zip(&instances) {
        if j.member_id == j.leader_id {
            let got = c
                .sync(sync_req(group, j, instance.as_deref()))
                .await
                .unwrap();
            assert_eq!(
                got.assignment,
                Bytes::from(format!("assigned-to-{}", j.member_id))
            );
        }
    }
    for f in followers {
        f.await.unwrap().unwrap();
    }
    assert_eq!(c.describe_group(group).state, GroupState::Stable);
    joined
}

fn offset(topic: &str, partition: i32, offset: i64) -> CommittedOffset {
    CommittedOffset {
        topic: topic.into(),
        partition,
        offset,
        leader_epoch: -1,
        metadata: Some("m".into()),
        commit_ms: 0,
    }
}
