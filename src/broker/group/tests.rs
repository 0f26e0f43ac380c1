//! Scenario tests: simulated members run as concurrent tasks under paused tokio time, so every
//! session, rebalance and initial-delay timeout elapses instantly and deterministically.

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

#[tokio::test(start_paused = true)]
async fn two_members_starting_together_land_in_one_generation() {
    let c = coordinator(&Meta::in_memory());
    let start = Instant::now();
    let a = spawn_join(&c, join_req("g", "", "a"));
    let b = spawn_join(&c, join_req("g", "", "b"));
    let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
    // Initial delay, extended once because the second member arrived during it.
    assert_eq!(start.elapsed(), INITIAL_DELAY * 2);
    assert_eq!((a.generation, b.generation), (1, 1));
    assert_eq!(a.protocol_name, "range");
    assert_eq!(a.leader_id, b.leader_id);
    let (leader, follower) = if a.member_id == a.leader_id {
        (a, b)
    } else {
        (b, a)
    };
    assert!(leader.member_id.starts_with("a-") || leader.member_id.starts_with("b-"));
    assert_eq!(leader.members.len(), 2);
    assert!(follower.members.is_empty());
    let follower_meta = leader
        .members
        .iter()
        .find(|m| m.member_id == follower.member_id)
        .unwrap();
    assert!(follower_meta.metadata.starts_with(b"sub-"));
    assert_eq!(c.describe_group("g").state, GroupState::CompletingRebalance);

    // The follower's SyncGroup arrives first and waits for the leader's assignment.
    let waiting = spawn_sync(&c, sync_req("g", &follower, None));
    sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished());
    c.sync(sync_req("g", &leader, None)).await.unwrap();
    let got = waiting.await.unwrap().unwrap();
    assert_eq!(
        got.assignment,
        Bytes::from(format!("assigned-to-{}", follower.member_id))
    );
    assert_eq!(got.protocol_name, "range");

    let described = c.describe_group("g");
    assert_eq!(described.state, GroupState::Stable);
    assert_eq!(described.protocol, "range");
    assert_eq!(described.members.len(), 2);
    assert!(described.members.iter().all(|m| !m.assignment.is_empty()));
    c.heartbeat("g", 1, &follower.member_id, None).unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_third_member_triggers_a_rebalance_that_waits_for_everyone() {
    let c = coordinator(&Meta::in_memory());
    let first = form_group(
        &c,
        "g",
        vec![join_req("g", "", "a"), join_req("g", "", "b")],
    )
    .await;
    let leader = first[0].leader_id.clone();

    let third = spawn_join(&c, join_req("g", "", "c"));
    sleep(Duration::from_secs(1)).await;
    assert_eq!(c.describe_group("g").state, GroupState::PreparingRebalance);
    // Joining during a rebalance waits for it: the old members have not rejoined yet.
    assert!(!third.is_finished());
    for j in &first {
        assert_eq!(
            c.heartbeat("g", 1, &j.member_id, None),
            Err(GroupError::RebalanceInProgress)
        );
    }
    let rejoins: Vec<_> = first
        .iter()
        .map(|j| spawn_join(&c, join_req("g", &j.member_id, &j.member_id)))
        .collect();
    let third = third.await.unwrap().unwrap();
    assert_eq!(third.generation, 2);
    assert_eq!(third.leader_id, leader, "the existing leader stays leader");
    for r in rejoins {
        let r = r.await.unwrap().unwrap();
        assert_eq!(r.generation, 2);
        if r.member_id == leader {
            assert_eq!(r.members.len(), 3);
        } else {
            assert!(r.members.is_empty());
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_member_expires_and_the_others_rebalance() {
    let c = coordinator(&Meta::in_memory());
    let joined = form_group(
        &c,
        "g",
        vec![join_req("g", "", "a"), join_req("g", "", "b")],
    )
    .await;
    let (alive, silent) = (&joined[0], &joined[1]);
    let synced_at = Instant::now();
    let (error, at) = heartbeat_until_error(&c, "g", alive).await.unwrap();
    assert_eq!(error, GroupError::RebalanceInProgress);
    // The silent member's session ran out 10 s after its last contact (its SyncGroup).
    assert!(at - synced_at >= SESSION && at - synced_at <= SESSION + Duration::from_secs(3));
    assert_eq!(
        c.heartbeat("g", 1, &silent.member_id, None),
        Err(GroupError::UnknownMemberId)
    );
    let rejoined = c.join(join_req("g", &alive.member_id, "a")).await.unwrap();
    assert_eq!(rejoined.generation, 2);
    assert_eq!(rejoined.leader_id, alive.member_id);
    assert_eq!(rejoined.members.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn members_that_do_not_rejoin_are_dropped_at_the_rebalance_timeout() {
    let c = coordinator(&Meta::in_memory());
    let joined = form_group(
        &c,
        "g",
        vec![join_req("g", "", "a"), join_req("g", "", "b")],
    )
    .await;
    let (leader, laggard) = (&joined[0], &joined[1]);
    assert_eq!(leader.member_id, leader.leader_id);
    // The laggard keeps heartbeating (so its session never expires) but never rejoins.
    let laggard_hb = {
        let (c, id) = (c.clone(), laggard.member_id.clone());
        tokio::spawn(async move {
            loop {
                sleep(Duration::from_secs(3)).await;
                match c.heartbeat("g", 1, &id, None) {
                    Ok(()) | Err(GroupError::RebalanceInProgress) => {}
                    Err(e) => return e,
                }
            }
        })
    };
    let start = Instant::now();
    // A leader rejoining a Stable group forces a rebalance.
    let rejoined = c.join(join_req("g", &leader.member_id, "a")).await.unwrap();
    assert_eq!(start.elapsed(), REBALANCE);
    assert_eq!(rejoined.generation, 2);
    assert_eq!(rejoined.members.len(), 1);
    assert_eq!(laggard_hb.await.unwrap(), GroupError::UnknownMemberId);
}

#[tokio::test(start_paused = true)]
async fn leaving_rebalances_the_rest_and_the_last_one_out_empties_the_group() {
    let c = coordinator(&Meta::in_memory());
    let joined = form_group(
        &c,
        "g",
        vec![join_req("g", "", "a"), join_req("g", "", "b")],
    )
    .await;
    let (a, b) = (&joined[0], &joined[1]);
    let left = c
        .leave(
            "g",
            vec![LeavingMember {
                member_id: b.member_id.clone(),
                instance_id: None,
            }],
        )
        .unwrap();
    assert_eq!(left, vec![Ok(())]);
    assert_eq!(
        c.heartbeat("g", 1, &a.member_id, None),
        Err(GroupError::RebalanceInProgress)
    );
    let again = c.join(join_req("g", &a.member_id, "a")).await.unwrap();
    assert_eq!((again.generation, again.members.len()), (2, 1));

    let left = c
        .leave(
            "g",
            vec![
                LeavingMember {
                    member_id: a.member_id.clone(),
                    instance_id: None,
                },
                LeavingMember {
                    member_id: "nobody".into(),
                    instance_id: None,
                },
            ],
        )
        .unwrap();
    assert_eq!(left, vec![Ok(()), Err(GroupError::UnknownMemberId)]);
    let described = c.describe_group("g");
    assert_eq!(described.state, GroupState::Empty);
    assert!(described.members.is_empty());
    assert_eq!(described.protocol_type, "consumer");
    assert_eq!(
        c.list_groups(&[GroupState::Empty]),
        vec![GroupListing {
            group_id: "g".into(),
            protocol_type: "consumer".into(),
            state: GroupState::Empty
        }]
    );
    assert!(c.list_groups(&[GroupState::Stable]).is_empty());
    assert_eq!(
        c.leave(
            "g",
            vec![LeavingMember {
                member_id: a.member_id.clone(),
                instance_id: None
            }]
        )
        .unwrap(),
        vec![Err(GroupError::UnknownMemberId)]
    );
    assert_eq!(
        c.leave("unknown", vec![LeavingMember::default()]).unwrap(),
        vec![Err(GroupError::UnknownMemberId)]
    );
}

#[tokio::test(start_paused = true)]
async fn member_id_required_round_trip() {
    let c = coordinator(&Meta::in_memory());
    let first = JoinRequest {
        require_known_member_id: true,
        ..join_req("g", "", "client-a")
    };
    let Err(GroupError::MemberIdRequired(id)) = c.join(first.clone()).await else {
        panic!("expected MEMBER_ID_REQUIRED");
    };
    assert!(id.starts_with("client-a-"), "{id}");
    let joined = c
        .join(JoinRequest {
            member_id: id.clone(),
            ..first.clone()
        })
        .await
        .unwrap();
    assert_eq!(joined.member_id, id);
    assert_eq!(joined.generation, 1);
    assert_eq!(joined.leader_id, id);

    // A handed-out id that is not used within the session timeout is forgotten.
    let Err(GroupError::MemberIdRequired(late)) = c.join(first.clone()).await else {
        panic!("expected MEMBER_ID_REQUIRED");
    };
    assert_ne!(late, id);
    sleep(SESSION + Duration::from_secs(1)).await;
    assert_eq!(
        c.join(JoinRequest {
            member_id: late,
            ..first
        })
        .await,
        Err(GroupError::UnknownMemberId)
    );

    // Old clients (JoinGroup < v4) are admitted directly.
    let direct = c.join(join_req("h", "", "old-client")).await.unwrap();
    assert!(direct.member_id.starts_with("old-client-"));
    assert_eq!(direct.generation, 1);
}

#[tokio::test(start_paused = true)]
async fn an_outstanding_member_id_holds_the_rebalance_until_it_joins() {
    let c = coordinator(&Meta::in_memory());
    let joined = form_group(&c, "g", vec![join_req("g", "", "a")]).await;
    let a = &joined[0];
    let new = JoinRequest {
        require_known_member_id: true,
        ..join_req("g", "", "b")
    };
    let Err(GroupError::MemberIdRequired(b_id)) = c.join(new.clone()).await else {
        panic!("expected MEMBER_ID_REQUIRED");
    };
    // The leader's rejoin starts a rebalance that must wait for the pending member.
    let a_rejoin = spawn_join(&c, join_req("g", &a.member_id, "a"));
    sleep(Duration::from_secs(2)).await;
    assert!(!a_rejoin.is_finished());
    let b = c
        .join(JoinRequest {
            member_id: b_id,
            ..new
        })
        .await
        .unwrap();
    let a = a_rejoin.await.unwrap().unwrap();
    assert_eq!((a.generation, b.generation), (2, 2));
    assert_eq!(a.members.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn stale_generations_and_unknown_members_are_fenced() {
    let c = coordinator(&Meta::in_memory());
    let joined = form_group(
        &c,
        "g",
        vec![join_req("g", "", "a"), join_req("g", "", "b")],
    )
    .await;
    let (a, b) = (&joined[0], &joined[1]);
    let ra = spawn_join(&c, join_req("g", &a.member_id, "a"));
    let rb = spawn_join(&c, join_req("g", &b.member_id, "b"));
    let (ra, _rb) = (ra.await.unwrap().unwrap(), rb.await.unwrap().unwrap());
    assert_eq!(ra.generation, 2);

    assert_eq!(
        c.heartbeat("g", 1, &a.member_id, None),
        Err(GroupError::IllegalGeneration)
    );
    let stale = SyncRequest {
        generation: 1,
        ..sync_req("g", &ra, None)
    };
    assert_eq!(c.sync(stale).await, Err(GroupError::IllegalGeneration));
    assert_eq!(
        c.commit_offsets("g", 1, &a.member_id, None, vec![offset("t", 0, 1)]),
        Err(GroupError::IllegalGeneration)
    );
    assert_eq!(
        c.heartbeat("g", 2, "ghost", None),
        Err(GroupError::UnknownMemberId)
    );
    assert_eq!(
        c.sync(SyncRequest {
            member_id: "ghost".into(),
            ..sync_req("g", &ra, None)
        })
        .await,
        Err(GroupError::UnknownMemberId)
    );
    assert_eq!(
        c.join(join_req("g", "ghost", "x")).await,
        Err(GroupError::UnknownMemberId)
    );
    assert_eq!(
        c.join(join_req("nogroup", "ghost", "x")).await,
        Err(GroupError::UnknownMemberId)
    );
    assert_eq!(
        c.heartbeat("nogroup", 1, "ghost", None),
        Err(GroupError::UnknownMemberId)
    );
}

#[tokio::test(start_paused = true)]
async fn a_restarted_static_member_keeps_its_assignment_without_a_rebalance() {
    let c = coordinator(&Meta::in_memory());
    let joined = form_group(
        &c,
        "g",
        vec![static_req("g", "", "inst-a"), join_req("g", "", "b")],
    )
    .await;
    let (old_a, b) = (&joined[0], &joined[1]);
    assert_eq!(old_a.leader_id, old_a.member_id, "the first member leads");
    assert!(old_a.member_id.starts_with("inst-a-"));

    // inst-a restarts: empty member id, same instance id and protocols; answered at once.
    let start = Instant::now();
    let new_a = c.join(static_req("g", "", "inst-a")).await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_ne!(new_a.member_id, old_a.member_id);
    assert_eq!(new_a.generation, 1);
    // Pre-v9 client: told the old leader id so it does not act as leader.
    assert_eq!(new_a.leader_id, old_a.member_id);
    assert!(new_a.members.is_empty() && !new_a.skip_assignment);
    assert_eq!(c.describe_group("g").state, GroupState::Stable);

    let got = c.sync(sync_req("g", &new_a, Some("inst-a"))).await.unwrap();
    assert_eq!(
        got.assignment,
        Bytes::from(format!("assigned-to-{}", old_a.member_id))
    );
    c.heartbeat("g", 1, &b.member_id, None).unwrap();
    c.heartbeat("g", 1, &new_a.member_id, Some("inst-a"))
        .unwrap();

    // The old incarnation is fenced everywhere.
    assert_eq!(
        c.heartbeat("g", 1, &old_a.member_id, Some("inst-a")),
        Err(GroupError::FencedInstanceId)
    );
    assert_eq!(
        c.sync(sync_req("g", old_a, Some("inst-a"))).await,
        Err(GroupError::FencedInstanceId)
    );
    assert_eq!(
        c.commit_offsets(
            "g",
            1,
            &old_a.member_id,
            Some("inst-a"),
            vec![offset("t", 0, 5)]
        ),
        Err(GroupError::FencedInstanceId)
    );
    assert_eq!(
        c.join(static_req("g", &old_a.member_id, "inst-a")).await,
        Err(GroupError::FencedInstanceId)
    );
    assert_eq!(
        c.leave(
            "g",
            vec![LeavingMember {
                member_id: old_a.member_id.clone(),
                instance_id: Some("inst-a".into())
            }]
        )
        .unwrap(),
        vec![Err(GroupError::FencedInstanceId)]
    );
    c.commit_offsets(
        "g",
        1,
        &new_a.member_id,
        Some("inst-a"),
        vec![offset("t", 0, 5)],
    )
    .unwrap();

    // A v9+ client restarting as leader learns it leads but must skip the assignment.
    let v9 = c
        .join(JoinRequest {
            supports_skip_assignment: true,
            ..static_req("g", "", "inst-a")
        })
        .await
        .unwrap();
    assert_eq!(v9.generation, 1);
    assert_eq!(v9.leader_id, v9.member_id);
    assert!(v9.skip_assignment);
    assert_eq!(v9.members.len(), 2);
    assert_eq!(c.describe_group("g").state, GroupState::Stable);

    // Admin removal by instance id.
    let left = c
        .leave(
            "g",
            vec![LeavingMember {
                member_id: String::new(),
                instance_id: Some("inst-a".into()),
            }],
        )
        .unwrap();
    assert_eq!(left, vec![Ok(())]);
    assert_eq!(c.describe_group("g").state, GroupState::PreparingRebalance);
}

#[tokio::test(start_paused = true)]
async fn a_static_member_rejoining_with_new_protocols() {
    let c = coordinator(&Meta::in_memory());
    let joined = form_group(
        &c,
        "g",
        vec![static_req("g", "", "inst-a"), static_req("g", "", "inst-b")],
    )
    .await;
    // Changed metadata under the same protocol: the group's protocol would not change, so (as
    // in Kafka) no rebalance; the member keeps its assignment.
    let same_protocol = JoinRequest {
        protocols: vec![("range".into(), Bytes::from_static(b"changed-subscription"))],
        ..static_req("g", "", "inst-b")
    };
    let replaced = c.join(same_protocol).await.unwrap();
    assert_eq!(replaced.generation, 1);
    assert_ne!(replaced.member_id, joined[1].member_id);
    let got = c
        .sync(sync_req("g", &replaced, Some("inst-b")))
        .await
        .unwrap();
    assert_eq!(
        got.assignment,
        Bytes::from(format!("assigned-to-{}", joined[1].member_id))
    );

    // A restart that changes the protocol the group would select forces a rebalance.
    let form = form_group(&c, "h", vec![static_req("h", "", "inst-x")]).await;
    let switched = JoinRequest {
        protocols: vec![
            ("cooperative-sticky".into(), Bytes::new()),
            ("range".into(), Bytes::from_static(b"sub-inst-x")),
        ],
        ..static_req("h", "", "inst-x")
    };
    let rejoined = c.join(switched).await.unwrap();
    assert_eq!(rejoined.generation, 2);
    assert_eq!(rejoined.protocol_name, "cooperative-sticky");
    assert_eq!(rejoined.leader_id, rejoined.member_id);
    assert_ne!(rejoined.member_id, form[0].member_id);
}

#[tokio::test(start_paused = true)]
async fn static_members_and_offsets_survive_a_restart() {
    let meta = Meta::in_memory();
    let (old_a, b) = {
        let c = coordinator(&meta);
        let joined = form_group(
            &c,
            "g",
            vec![static_req("g", "", "inst-a"), join_req("g", "", "b")],
        )
        .await;
        c.commit_offsets("g", 1, &joined[1].member_id, None, vec![offset("t", 0, 42)])
            .unwrap();
        c.shutdown().await;
        assert_eq!(
            c.heartbeat("g", 1, &joined[1].member_id, None),
            Err(GroupError::CoordinatorNotAvailable)
        );
        (joined[0].clone(), joined[1].clone())
    };

    let c = coordinator(&meta);
    let described = c.describe_group("g");
    assert_eq!(described.state, GroupState::Empty);
    assert_eq!(described.protocol_type, "consumer");
    let fetched = c.fetch_offsets("g", None).unwrap();
    assert_eq!(fetched.len(), 1);
    assert_eq!((fetched[0].offset, fetched[0].commit_ms), (42, 1_000));
    // Live membership does not survive; the instance id still fences a stale incarnation.
    assert_eq!(
        c.heartbeat("g", 1, &b.member_id, None),
        Err(GroupError::UnknownMemberId)
    );
    assert_eq!(
        c.heartbeat("g", 1, &old_a.member_id, Some("inst-a")),
        Err(GroupError::UnknownMemberId)
    );
    assert_eq!(
        c.heartbeat("g", 1, "inst-a-impostor", Some("inst-a")),
        Err(GroupError::FencedInstanceId)
    );
    // Rejoining continues the generation count.
    let a = c.join(static_req("g", "", "inst-a")).await.unwrap();
    assert_eq!(a.generation, 2);
    assert_ne!(a.member_id, old_a.member_id);
}

#[tokio::test(start_paused = true)]
async fn commits_from_the_generation_before_a_restart_are_accepted_until_the_next_one() {
    let meta = Meta::in_memory();
    let (a, b) = {
        let c = coordinator(&meta);
        let joined = form_group(
            &c,
            "g",
            vec![static_req("g", "", "inst-a"), join_req("g", "", "b")],
        )
        .await;
        c.shutdown().await;
        (joined[0].clone(), joined[1].clone())
    };
    assert_eq!(b.generation, 1);

    let c = coordinator(&meta);
    // The members are forgotten, but what they processed since the restart is not lost.
    c.commit_offsets("g", 1, &b.member_id, None, vec![offset("t", 1, 7)])
        .unwrap();
    c.commit_offsets(
        "g",
        1,
        &a.member_id,
        Some("inst-a"),
        vec![offset("t", 0, 5)],
    )
    .unwrap();
    // librdkafka resets its member id after UNKNOWN_MEMBER_ID and commits what it revokes
    // under the empty id, with its instance id if static: not fenced, not refused.
    c.commit_offsets("g", 1, "", Some("inst-a"), vec![offset("t", 0, 6)])
        .unwrap();
    c.commit_offsets("g", 1, "", None, vec![offset("t", 1, 8)])
        .unwrap();
    assert_eq!(c.fetch_offsets("g", None).unwrap().len(), 2);
    // Zombies are still refused: an older generation, a stale static incarnation.
    assert_eq!(
        c.commit_offsets("g", 0, &b.member_id, None, vec![offset("t", 1, 1)]),
        Err(GroupError::UnknownMemberId)
    );
    assert_eq!(
        c.commit_offsets(
            "g",
            1,
            "inst-a-impostor",
            Some("inst-a"),
            vec![offset("t", 0, 1)]
        ),
        Err(GroupError::FencedInstanceId)
    );
    // Once a new generation exists, the old one's commits are refused again.
    let joined = c.join(join_req("g", "", "b")).await.unwrap();
    assert_eq!(joined.generation, 2);
    assert_eq!(
        c.commit_offsets("g", 1, &b.member_id, None, vec![offset("t", 1, 9)]),
        Err(GroupError::UnknownMemberId)
    );
    assert_eq!(
        c.commit_offsets("g", 1, "", None, vec![offset("t", 1, 9)]),
        Err(GroupError::UnknownMemberId)
    );
    let fetched = c.fetch_offsets("g", Some(&[("t".into(), 1)])).unwrap();
    assert_eq!(fetched[0].offset, 8);
}

#[tokio::test(start_paused = true)]
async fn offsets_commit_fetch_delete_and_survive_a_new_coordinator() {
    let meta = Meta::in_memory();
    let c = coordinator(&meta);
    // Simple (admin / assign()) commits create the group.
    c.commit_offsets(
        "simple",
        -1,
        "",
        None,
        vec![offset("t", 0, 10), offset("t", 1, 11), offset("u", 0, 7)],
    )
    .unwrap();
    c.commit_offsets("simple", -1, "", None, vec![offset("t", 0, 12)])
        .unwrap();
    let all = c.fetch_offsets("simple", None).unwrap();
    assert_eq!(all.len(), 3);
    let some = c
        .fetch_offsets("simple", Some(&[("t".into(), 0), ("t".into(), 9)]))
        .unwrap();
    assert_eq!(some.len(), 1);
    assert_eq!((some[0].offset, some[0].commit_ms), (12, 1_000));
    assert!(c.fetch_offsets("nobody", None).unwrap().is_empty());
    // Durable: it is in the store, not just the cache.
    assert_eq!(meta.committed_offsets("simple").unwrap().len(), 3);
    assert_eq!(
        c.list_groups(&[]),
        vec![GroupListing {
            group_id: "simple".into(),
            protocol_type: String::new(),
            state: GroupState::Empty
        }]
    );

    // A new coordinator over the same store sees the group and its offsets.
    let c = coordinator(&meta);
    assert_eq!(c.list_groups(&[]).len(), 1);
    assert_eq!(c.fetch_offsets("simple", None).unwrap().len(), 3);

    let deleted = c
        .delete_offsets("simple", &[("t".into(), 1)], |_| Some(vec![]))
        .unwrap();
    assert_eq!(deleted, vec![(("t".into(), 1), Ok(()))]);
    assert_eq!(c.fetch_offsets("simple", None).unwrap().len(), 2);
    assert_eq!(meta.committed_offsets("simple").unwrap().len(), 2);
    assert_eq!(
        c.delete_offsets("nobody", &[("t".into(), 1)], |_| Some(vec![])),
        Err(GroupError::GroupIdNotFound)
    );

    c.remove_topic("u");
    assert_eq!(c.fetch_offsets("simple", None).unwrap().len(), 1);
    assert_eq!(meta.committed_offsets("simple").unwrap().len(), 1);

    // Commits from a generation of a group that does not exist are stale.
    assert_eq!(
        c.commit_offsets("unknown", 3, "m", None, vec![offset("t", 0, 1)]),
        Err(GroupError::IllegalGeneration)
    );
}

#[tokio::test(start_paused = true)]
async fn commits_in_an_active_group_follow_kafka_rules() {
    let c = coordinator(&Meta::in_memory());
    let joined = form_group(
        &c,
        "g",
        vec![join_req("g", "", "a"), join_req("g", "", "b")],
    )
    .await;
    let (a, b) = (&joined[0], &joined[1]);
    c.commit_offsets("g", 1, &a.member_id, None, vec![offset("t", 0, 1)])
        .unwrap();
    // Only members may commit into a group that has members.
    assert_eq!(
        c.commit_offsets("g", -1, "", None, vec![offset("t", 0, 2)]),
        Err(GroupError::UnknownMemberId)
    );

    // PreparingRebalance: still allowed (the member finds out from its next heartbeat).
    let a_rejoin = spawn_join(&c, join_req("g", &a.member_id, "a"));
    sleep(Duration::from_millis(10)).await;
    assert_eq!(c.describe_group("g").state, GroupState::PreparingRebalance);
    c.commit_offsets("g", 1, &b.member_id, None, vec![offset("t", 1, 3)])
        .unwrap();

    // CompletingRebalance: REBALANCE_IN_PROGRESS.
    let b2 = c.join(join_req("g", &b.member_id, "b")).await.unwrap();
    let a2 = a_rejoin.await.unwrap().unwrap();
    assert_eq!(c.describe_group("g").state, GroupState::CompletingRebalance);
    assert_eq!(
        c.commit_offsets("g", 2, &b2.member_id, None, vec![offset("t", 1, 4)]),
        Err(GroupError::RebalanceInProgress)
    );

    // Consumer groups keep offsets of topics their members subscribe to.
    // Every member subscribes to topic "t" (the adapter would decode the real subscription).
    let subscription = |_metadata: &[u8]| Some(vec!["t".to_string()]);
    let f = spawn_sync(&c, sync_req("g", &b2, None));
    c.sync(sync_req("g", &a2, None)).await.unwrap();
    f.await.unwrap().unwrap();
    c.commit_offsets("g", 2, &a2.member_id, None, vec![offset("other", 0, 9)])
        .unwrap();
    let result = c
        .delete_offsets("g", &[("t".into(), 0), ("other".into(), 0)], subscription)
        .unwrap();
    assert_eq!(
        result,
        vec![
            (("t".into(), 0), Err(GroupError::GroupSubscribedToTopic)),
            (("other".into(), 0), Ok(())),
        ]
    );
    // Undecodable subscriptions protect every topic.
    let result = c.delete_offsets("g", &[("t".into(), 1)], |_| None).unwrap();
    assert_eq!(
        result,
        vec![(("t".into(), 1), Err(GroupError::GroupSubscribedToTopic))]
    );
    assert_eq!(c.fetch_offsets("g", None).unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn delete_group_semantics() {
    let meta = Meta::in_memory();
    let c = coordinator(&meta);
    assert_eq!(
        c.delete_groups(&["nope".into()]),
        vec![("nope".into(), Err(GroupError::GroupIdNotFound))]
    );
    let joined = form_group(&c, "g", vec![join_req("g", "", "a")]).await;
    c.commit_offsets("g", 1, &joined[0].member_id, None, vec![offset("t", 0, 1)])
        .unwrap();
    assert_eq!(
        c.delete_groups(&["g".into()]),
        vec![("g".into(), Err(GroupError::NonEmptyGroup))]
    );
    c.leave(
        "g",
        vec![LeavingMember {
            member_id: joined[0].member_id.clone(),
            instance_id: None,
        }],
    )
    .unwrap();
    assert_eq!(c.describe_group("g").state, GroupState::Empty);
    assert_eq!(c.delete_groups(&["g".into()]), vec![("g".into(), Ok(()))]);
    assert_eq!(c.describe_group("g").state, GroupState::Dead);
    assert!(c.list_groups(&[]).is_empty());
    assert!(meta.committed_offsets("g").unwrap().is_empty());
    assert!(meta.group("g").unwrap().is_none());
    assert_eq!(
        c.delete_groups(&["g".into()]),
        vec![("g".into(), Err(GroupError::GroupIdNotFound))]
    );
    // An offsets-only group is deletable, and gone after a restart too.
    c.commit_offsets("o", -1, "", None, vec![offset("t", 0, 1)])
        .unwrap();
    assert_eq!(c.delete_groups(&["o".into()]), vec![("o".into(), Ok(()))]);
    assert!(coordinator(&meta).list_groups(&[]).is_empty());
    // The id is free for a new group.
    let again = c.join(join_req("g", "", "a")).await.unwrap();
    assert_eq!(again.generation, 1);
}

#[tokio::test(start_paused = true)]
async fn protocol_selection_and_inconsistent_protocols() {
    let c = coordinator(&Meta::in_memory());
    let with = |client: &str, protocols: &[&str]| JoinRequest {
        protocols: protocols
            .iter()
            .map(|p| (p.to_string(), Bytes::from(format!("{client}-{p}"))))
            .collect(),
        ..join_req("g", "", client)
    };
    let a = spawn_join(&c, with("a", &["roundrobin", "range"]));
    let b = spawn_join(&c, with("b", &["range", "roundrobin"]));
    let d = spawn_join(&c, with("d", &["roundrobin", "range", "sticky"]));
    let a = a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
    d.await.unwrap().unwrap();
    assert_eq!(a.protocol_name, "roundrobin", "two of three prefer it");
    let leader = if a.member_id == a.leader_id {
        a
    } else {
        panic!("a joined first")
    };
    assert!(leader
        .members
        .iter()
        .all(|m| m.metadata.ends_with(b"-roundrobin")));

    assert_eq!(
        c.join(with("e", &["sticky"])).await,
        Err(GroupError::InconsistentGroupProtocol)
    );
    assert_eq!(
        c.join(JoinRequest {
            protocol_type: "connect".into(),
            ..with("e", &["range"])
        })
        .await,
        Err(GroupError::InconsistentGroupProtocol)
    );
    assert_eq!(
        c.join(JoinRequest {
            protocols: vec![],
            ..join_req("x", "", "e")
        })
        .await,
        Err(GroupError::InconsistentGroupProtocol)
    );
}

#[tokio::test(start_paused = true)]
async fn a_leader_that_never_syncs_is_timed_out() {
    let c = coordinator(&Meta::in_memory());
    let a = spawn_join(&c, join_req("g", "", "a"));
    let b = spawn_join(&c, join_req("g", "", "b"));
    let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
    let (leader, follower) = if a.member_id == a.leader_id {
        (a, b)
    } else {
        (b, a)
    };
    let start = Instant::now();
    // The follower waits in SyncGroup; the leader neither syncs nor heartbeats.
    let parked = c.sync(sync_req("g", &follower, None)).await;
    assert_eq!(parked, Err(GroupError::RebalanceInProgress));
    assert_eq!(start.elapsed(), SESSION);
    assert_eq!(
        c.heartbeat("g", 1, &leader.member_id, None),
        Err(GroupError::UnknownMemberId)
    );
    let again = c
        .join(join_req("g", &follower.member_id, "f"))
        .await
        .unwrap();
    assert_eq!(again.generation, 2);
    assert_eq!(again.leader_id, follower.member_id);
}

#[tokio::test(start_paused = true)]
async fn a_leader_that_heartbeats_but_never_syncs_is_removed_at_the_rebalance_timeout() {
    let c = coordinator(&Meta::in_memory());
    let a = spawn_join(&c, join_req("g", "", "a"));
    let b = spawn_join(&c, join_req("g", "", "b"));
    let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
    let (leader, follower) = if a.member_id == a.leader_id {
        (a, b)
    } else {
        (b, a)
    };
    let hb = heartbeat_until_error(&c, "g", &leader);
    let start = Instant::now();
    let parked = c.sync(sync_req("g", &follower, None)).await;
    assert_eq!(parked, Err(GroupError::RebalanceInProgress));
    assert_eq!(start.elapsed(), REBALANCE);
    assert_eq!(hb.await.unwrap().0, GroupError::UnknownMemberId);
}

#[tokio::test(start_paused = true)]
async fn request_validation() {
    let c = coordinator_with(
        &Meta::in_memory(),
        GroupSettings {
            max_size: Some(1),
            ..GroupSettings::default()
        },
    );
    assert_eq!(
        c.join(JoinRequest {
            session_timeout: Duration::from_secs(1),
            ..join_req("g", "", "a")
        })
        .await,
        Err(GroupError::InvalidSessionTimeout)
    );
    assert_eq!(
        c.join(join_req("", "", "a")).await,
        Err(GroupError::InvalidGroupId)
    );
    assert_eq!(
        c.heartbeat("", 0, "m", None),
        Err(GroupError::InvalidGroupId)
    );
    c.join(join_req("g", "", "a")).await.unwrap();
    assert_eq!(
        c.join(join_req("g", "", "b")).await,
        Err(GroupError::GroupMaxSizeReached)
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_answers_parked_requests() {
    let c = coordinator(&Meta::in_memory());
    let parked = spawn_join(&c, join_req("g", "", "a"));
    sleep(Duration::from_millis(10)).await;
    c.shutdown().await;
    assert_eq!(
        parked.await.unwrap(),
        Err(GroupError::CoordinatorNotAvailable)
    );
    assert_eq!(
        c.join(join_req("g", "", "a")).await,
        Err(GroupError::CoordinatorNotAvailable)
    );
}

#[test]
fn state_names_match_kafka() {
    assert_eq!(
        GroupState::CompletingRebalance.to_string(),
        "CompletingRebalance"
    );
    assert_eq!(GroupState::parse("stable"), Some(GroupState::Stable));
    assert_eq!(GroupState::parse("AwaitingSync"), None);
}
