//! Joining, rebalancing, leaving and fencing.

use super::*;

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
            state: GroupState::Empty,
            group_type: GroupType::Classic,
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
