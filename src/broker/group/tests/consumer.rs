//! KIP-848 consumer groups: epochs, reconciliation (revoke before assign), fencing by session
//! and rebalance timeouts, assignors, and living next to classic groups. Simulated members
//! behave as a client does: they adopt whatever assignment an answer carries and report what
//! they own in every heartbeat.

use std::collections::BTreeSet;

use super::*;
use crate::broker::group::consumer::{Assignment, ConsumerHeartbeat, TopicMeta, TopicSnapshot};

const T: [u8; 16] = [7; 16];

fn topics(partitions: i32) -> TopicSnapshot {
    TopicSnapshot::new([TopicMeta {
        name: "t".into(),
        id: T,
        partitions,
    }])
}

struct Sim {
    id: String,
    epoch: i32,
    owned: Assignment,
}

impl Sim {
    fn new(id: &str) -> Self {
        Sim {
            id: id.into(),
            epoch: 0,
            owned: Assignment::new(),
        }
    }

    fn request(&self, group: &str) -> ConsumerHeartbeat {
        ConsumerHeartbeat {
            group_id: group.into(),
            member_id: self.id.clone(),
            member_epoch: self.epoch,
            rebalance_timeout_ms: if self.epoch == 0 { 30_000 } else { -1 },
            subscribed_topic_names: (self.epoch == 0).then(|| vec!["t".to_string()]),
            owned: Some(
                self.owned
                    .iter()
                    .map(|(t, ps)| (*t, ps.iter().copied().collect()))
                    .collect(),
            ),
            client_id: self.id.clone(),
            client_host: "/127.0.0.1".into(),
            ..ConsumerHeartbeat::default()
        }
    }

    /// One heartbeat; the member takes on the assignment it is given (dropping revoked
    /// partitions at once, as a client's revocation callback completes before its ack).
    fn beat(&mut self, c: &GroupCoordinator, snapshot: &TopicSnapshot) -> Result<(), GroupError> {
        let r = c.consumer_heartbeat(self.request("g"), snapshot)?;
        self.epoch = r.member_epoch;
        if let Some(a) = r.assignment {
            self.owned = a;
        }
        Ok(())
    }

    fn count(&self) -> usize {
        self.owned.values().map(BTreeSet::len).sum()
    }
}

/// No partition owned by two members.
fn assert_disjoint(sims: &[&Sim]) {
    let mut seen = BTreeSet::new();
    for s in sims {
        for (t, ps) in &s.owned {
            for p in ps {
                assert!(seen.insert((*t, *p)), "partition {p} owned twice");
            }
        }
    }
}

/// Heartbeats everyone round-robin until nothing changes; checks the invariant each time.
fn settle(c: &GroupCoordinator, sims: &mut [&mut Sim], snapshot: &TopicSnapshot) {
    for _ in 0..20 {
        let before: Vec<(i32, Assignment)> =
            sims.iter().map(|s| (s.epoch, s.owned.clone())).collect();
        for i in 0..sims.len() {
            sims[i].beat(c, snapshot).unwrap();
            let view: Vec<&Sim> = sims.iter().map(|s| &**s).collect();
            assert_disjoint(&view);
        }
        let after: Vec<(i32, Assignment)> =
            sims.iter().map(|s| (s.epoch, s.owned.clone())).collect();
        if before == after {
            return;
        }
    }
    panic!("the group did not settle");
}

fn all_owned(sims: &[&Sim]) -> usize {
    sims.iter().map(|s| s.count()).sum()
}

#[tokio::test(start_paused = true)]
async fn members_join_and_leave_and_every_partition_keeps_exactly_one_owner() {
    let c = coordinator(&Meta::in_memory());
    let snap = topics(6);
    let (mut a, mut b, mut x) = (Sim::new("a"), Sim::new("b"), Sim::new("c"));

    settle(&c, &mut [&mut a], &snap);
    assert_eq!(a.count(), 6);
    assert_eq!(a.epoch, 1);

    b.beat(&c, &snap).unwrap();
    // b joined while a holds everything: b waits, nothing is taken from a yet.
    assert_eq!(b.count(), 0);
    settle(&c, &mut [&mut a, &mut b], &snap);
    assert_eq!((a.count(), b.count()), (3, 3));
    assert_eq!(a.epoch, b.epoch);

    x.beat(&c, &snap).unwrap();
    settle(&c, &mut [&mut a, &mut b, &mut x], &snap);
    assert_eq!((a.count(), b.count(), x.count()), (2, 2, 2));
    let view = c.consumer_describe("g").unwrap();
    assert_eq!(view.state, GroupState::Stable);
    assert_eq!(view.group_epoch, 3);
    assert_eq!(view.assignment_epoch, 3);

    // a leaves: its partitions are free at once and go to the others.
    let left = c
        .consumer_heartbeat(
            ConsumerHeartbeat {
                member_epoch: -1,
                ..a.request("g")
            },
            &snap,
        )
        .unwrap();
    assert_eq!(left.member_epoch, -1);
    settle(&c, &mut [&mut b, &mut x], &snap);
    assert_eq!((b.count(), x.count()), (3, 3));
    assert_eq!(all_owned(&[&b, &x]), 6);

    // The member that left is unknown now.
    assert_eq!(
        c.consumer_heartbeat(a.request("g"), &snap),
        Err(GroupError::UnknownMemberId)
    );
}

#[tokio::test(start_paused = true)]
async fn partitions_are_revoked_before_they_are_assigned_elsewhere() {
    let c = coordinator(&Meta::in_memory());
    let snap = topics(4);
    let (mut a, mut b) = (Sim::new("a"), Sim::new("b"));
    settle(&c, &mut [&mut a], &snap);
    let a_epoch = a.epoch;

    b.beat(&c, &snap).unwrap();
    assert_eq!(b.count(), 0);
    // a is told to revoke two partitions, at its current epoch.
    let r = c.consumer_heartbeat(a.request("g"), &snap).unwrap();
    assert_eq!(r.member_epoch, a_epoch);
    let kept = r.assignment.clone().unwrap();
    assert_eq!(kept[&T].len(), 2);
    // While a has not acknowledged, b gets nothing, however often it asks.
    for _ in 0..3 {
        b.beat(&c, &snap).unwrap();
        assert_eq!(b.count(), 0);
    }
    // A heartbeat that still reports the old partitions does not count as the ack.
    let r = c.consumer_heartbeat(a.request("g"), &snap).unwrap();
    assert_eq!(r.member_epoch, a_epoch);
    assert_eq!(
        c.consumer_describe("g").unwrap().state,
        GroupState::Reconciling
    );
    // The ack: a reports only what it kept and moves to the new epoch; then b gets the rest.
    a.owned = kept;
    a.beat(&c, &snap).unwrap();
    assert!(a.epoch > a_epoch);
    b.beat(&c, &snap).unwrap();
    assert_eq!(b.count(), 2);
    assert_disjoint(&[&a, &b]);
}

#[tokio::test(start_paused = true)]
async fn a_silent_member_is_fenced_after_the_session_timeout() {
    let c = coordinator(&Meta::in_memory());
    let snap = topics(4);
    let (mut a, mut b) = (Sim::new("a"), Sim::new("b"));
    settle(&c, &mut [&mut a, &mut b], &snap);
    assert_eq!((a.count(), b.count()), (2, 2));

    // a keeps heartbeating every 5 s; b goes silent.
    for _ in 0..9 {
        sleep(Duration::from_secs(5)).await;
        a.beat(&c, &snap).unwrap();
    }
    sleep(Duration::from_secs(5)).await;
    a.beat(&c, &snap).unwrap();
    assert_eq!(a.count(), 4, "b's partitions went to a");
    assert_eq!(
        c.consumer_heartbeat(b.request("g"), &snap),
        Err(GroupError::UnknownMemberId)
    );
    // b comes back the way a client does: epoch 0, nothing owned.
    b.epoch = 0;
    b.owned.clear();
    settle(&c, &mut [&mut a, &mut b], &snap);
    assert_eq!((a.count(), b.count()), (2, 2));
}

#[tokio::test(start_paused = true)]
async fn a_member_that_does_not_revoke_in_time_is_fenced() {
    let c = coordinator(&Meta::in_memory());
    let snap = topics(4);
    let (mut a, mut b) = (Sim::new("a"), Sim::new("b"));
    settle(&c, &mut [&mut a], &snap);
    b.beat(&c, &snap).unwrap();
    // a keeps heartbeating but never gives anything up (it keeps reporting all four).
    for _ in 0..7 {
        let r = c.consumer_heartbeat(a.request("g"), &snap);
        if r.is_err() {
            break;
        }
        b.beat(&c, &snap).unwrap();
        assert_eq!(b.count(), 0);
        sleep(Duration::from_secs(5)).await;
    }
    // Past its 30 s rebalance timeout a is out, and b gets everything.
    assert_eq!(
        c.consumer_heartbeat(a.request("g"), &snap),
        Err(GroupError::UnknownMemberId)
    );
    settle(&c, &mut [&mut b], &snap);
    assert_eq!(b.count(), 4);
}

#[tokio::test(start_paused = true)]
async fn epochs_fence_heartbeats_and_commits() {
    let c = coordinator(&Meta::in_memory());
    let snap = topics(2);
    let mut a = Sim::new("a");
    settle(&c, &mut [&mut a], &snap);
    let epoch = a.epoch;

    let ahead = ConsumerHeartbeat {
        member_epoch: epoch + 1,
        ..a.request("g")
    };
    assert_eq!(
        c.consumer_heartbeat(ahead, &snap),
        Err(GroupError::FencedMemberEpoch)
    );

    c.commit_offsets("g", epoch, "a", None, vec![offset("t", 0, 5)])
        .unwrap();
    assert_eq!(
        c.commit_offsets("g", epoch - 1, "a", None, vec![offset("t", 0, 6)]),
        Err(GroupError::StaleMemberEpoch)
    );
    assert_eq!(
        c.commit_offsets("g", epoch, "nobody", None, vec![offset("t", 0, 6)]),
        Err(GroupError::UnknownMemberId)
    );
    // With members, a simple commit (-1) is not allowed.
    assert_eq!(
        c.commit_offsets("g", -1, "", None, vec![offset("t", 0, 6)]),
        Err(GroupError::UnknownMemberId)
    );
    assert_eq!(c.check_offset_fetch("g", "a", epoch), Ok(()));
    assert_eq!(
        c.check_offset_fetch("g", "a", epoch - 1),
        Err(GroupError::StaleMemberEpoch)
    );
    let fetched = c.fetch_offsets("g", None).unwrap();
    assert_eq!(fetched.len(), 1);
    assert_eq!(fetched[0].offset, 5);
}

#[tokio::test(start_paused = true)]
async fn classic_and_consumer_groups_do_not_share_an_id_while_either_has_members() {
    let meta = Meta::in_memory();
    let c = coordinator(&meta);
    let snap = topics(2);

    // A classic group with members refuses consumer-protocol members...
    let joined = form_group(&c, "classic", vec![join_req("classic", "", "a")]).await;
    let mut x = Sim::new("x");
    let refused = c.consumer_heartbeat(x.request("classic"), &snap);
    assert_eq!(refused, Err(GroupError::GroupIdNotFound));

    // ...and a consumer group with members refuses classic ones.
    settle(&c, &mut [&mut x], &snap);
    let classic_join = c.join(join_req("g", "", "late")).await;
    assert_eq!(
        classic_join.map(|_| ()),
        Err(GroupError::InconsistentGroupProtocol)
    );
    let listed = c.list_groups(&[]);
    let g = listed.iter().find(|l| l.group_id == "g").unwrap();
    assert_eq!(g.group_type, GroupType::Consumer);
    assert_eq!(g.state, GroupState::Stable);
    let classic = listed.iter().find(|l| l.group_id == "classic").unwrap();
    assert_eq!(classic.group_type, GroupType::Classic);

    // The classic group empties, keeping its committed offsets; a consumer member may now
    // take the id over, and the offsets stay.
    c.commit_offsets(
        "classic",
        joined[0].generation,
        &joined[0].member_id,
        None,
        vec![offset("t", 1, 42)],
    )
    .unwrap();
    c.leave(
        "classic",
        vec![LeavingMember {
            member_id: joined[0].member_id.clone(),
            instance_id: None,
        }],
    )
    .unwrap();
    let mut y = Sim::new("y");
    let r = c.consumer_heartbeat(y.request("classic"), &snap).unwrap();
    y.epoch = r.member_epoch;
    assert_eq!(
        c.list_groups(&[])
            .iter()
            .find(|l| l.group_id == "classic")
            .unwrap()
            .group_type,
        GroupType::Consumer
    );
    assert_eq!(c.fetch_offsets("classic", None).unwrap()[0].offset, 42);
    // The classic protocol is refused while the consumer member is in.
    assert_eq!(
        c.join(join_req("classic", "", "b")).await.map(|_| ()),
        Err(GroupError::InconsistentGroupProtocol)
    );
}

#[tokio::test(start_paused = true)]
async fn the_range_assignor_can_be_chosen_and_unknown_ones_are_refused() {
    let c = coordinator(&Meta::in_memory());
    let snap = topics(5);
    let bad = ConsumerHeartbeat {
        server_assignor: Some("sticky".into()),
        ..Sim::new("a").request("g")
    };
    assert!(matches!(
        c.consumer_heartbeat(bad, &snap),
        Err(GroupError::UnsupportedAssignor(_))
    ));

    let mut sims = [Sim::new("b"), Sim::new("a")];
    for s in sims.iter_mut() {
        let req = ConsumerHeartbeat {
            server_assignor: Some("range".into()),
            ..s.request("g")
        };
        let r = c.consumer_heartbeat(req, &snap).unwrap();
        s.epoch = r.member_epoch;
        s.owned = r.assignment.unwrap_or_default();
    }
    let [b, a] = &mut sims;
    settle(&c, &mut [a, b], &snap);
    let view = c.consumer_describe("g").unwrap();
    assert_eq!(view.assignor_name, "range");
    // Range by member id: "a" gets the first three partitions.
    assert_eq!(
        sims[1].owned[&T].iter().copied().collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(
        sims[0].owned[&T].iter().copied().collect::<Vec<_>>(),
        vec![3, 4]
    );
}

#[tokio::test(start_paused = true)]
async fn a_new_partition_or_topic_bumps_the_group_epoch() {
    let c = coordinator(&Meta::in_memory());
    let (mut a, mut b) = (Sim::new("a"), Sim::new("b"));
    settle(&c, &mut [&mut a, &mut b], &topics(2));
    let epoch = c.consumer_describe("g").unwrap().group_epoch;
    // The topic grows to 4 partitions: the next heartbeat sees it and the members split them.
    settle(&c, &mut [&mut a, &mut b], &topics(4));
    assert_eq!(c.consumer_describe("g").unwrap().group_epoch, epoch + 1);
    assert_eq!((a.count(), b.count()), (2, 2));
}

#[tokio::test(start_paused = true)]
async fn regex_subscriptions_match_whole_topic_names() {
    let c = coordinator(&Meta::in_memory());
    let snap = TopicSnapshot::new([
        TopicMeta {
            name: "orders-eu".into(),
            id: [1; 16],
            partitions: 1,
        },
        TopicMeta {
            name: "orders-us".into(),
            id: [2; 16],
            partitions: 1,
        },
        TopicMeta {
            name: "old-orders-eu".into(),
            id: [3; 16],
            partitions: 1,
        },
    ]);
    let req = ConsumerHeartbeat {
        subscribed_topic_names: Some(Vec::new()),
        subscribed_topic_regex: Some("orders-.*".into()),
        ..Sim::new("a").request("g")
    };
    let r = c.consumer_heartbeat(req, &snap).unwrap();
    let got: BTreeSet<[u8; 16]> = r.assignment.unwrap().keys().copied().collect();
    assert_eq!(got, BTreeSet::from([[1; 16], [2; 16]]));

    let bad = ConsumerHeartbeat {
        subscribed_topic_regex: Some("(".into()),
        ..Sim::new("b").request("g")
    };
    assert!(matches!(
        c.consumer_heartbeat(bad, &snap),
        Err(GroupError::InvalidRegularExpression(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_static_member_must_leave_before_its_instance_id_is_reused() {
    let c = coordinator(&Meta::in_memory());
    let snap = topics(2);
    let mut a = Sim::new("a1");
    let with_instance = |s: &Sim| ConsumerHeartbeat {
        instance_id: Some("inst".into()),
        ..s.request("g")
    };
    let r = c.consumer_heartbeat(with_instance(&a), &snap).unwrap();
    a.epoch = r.member_epoch;
    a.owned = r.assignment.unwrap();
    let r = c.consumer_heartbeat(with_instance(&a), &snap).unwrap();
    a.epoch = r.member_epoch;

    let a2 = Sim::new("a2");
    assert_eq!(
        c.consumer_heartbeat(with_instance(&a2), &snap),
        Err(GroupError::UnreleasedInstanceId)
    );
    // A temporary leave (-2) keeps the partitions for the next incarnation.
    let r = c
        .consumer_heartbeat(
            ConsumerHeartbeat {
                member_epoch: -2,
                ..with_instance(&a)
            },
            &snap,
        )
        .unwrap();
    assert_eq!(r.member_epoch, -2);
    let r = c.consumer_heartbeat(with_instance(&a2), &snap).unwrap();
    assert_eq!(r.member_id, "a2");
    assert_eq!(r.assignment.unwrap()[&T].len(), 2);
    // The old incarnation is fenced.
    assert_eq!(
        c.consumer_heartbeat(with_instance(&a), &snap),
        Err(GroupError::FencedInstanceId)
    );
}

#[tokio::test(start_paused = true)]
async fn after_a_restart_members_rejoin_and_committed_offsets_remain() {
    let meta = Meta::in_memory();
    let snap = topics(2);
    let mut a = Sim::new("a");
    {
        let c = coordinator(&meta);
        settle(&c, &mut [&mut a], &snap);
        c.commit_offsets("g", a.epoch, "a", None, vec![offset("t", 0, 9)])
            .unwrap();
        c.shutdown().await;
    }
    // Membership was in memory: the member is unknown and rejoins with epoch 0, as librdkafka
    // does on UNKNOWN_MEMBER_ID; the offsets were durable.
    let c = coordinator(&meta);
    assert_eq!(
        c.consumer_heartbeat(a.request("g"), &snap),
        Err(GroupError::UnknownMemberId)
    );
    a.epoch = 0;
    a.owned.clear();
    settle(&c, &mut [&mut a], &snap);
    assert_eq!(a.count(), 2);
    assert_eq!(c.fetch_offsets("g", None).unwrap()[0].offset, 9);
}
