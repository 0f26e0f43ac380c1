//! Protocol selection, sync timeouts, request validation and shutdown.

use super::*;

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
