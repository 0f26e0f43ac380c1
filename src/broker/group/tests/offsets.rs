//! Offset commits, fetches and group deletion.

use super::*;

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
            state: GroupState::Empty,
            group_type: GroupType::Classic,
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
