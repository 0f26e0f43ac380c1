//! Static membership (KIP-345) and what survives a restart.

use super::*;

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
