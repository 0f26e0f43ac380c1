//! Reconciliation: moving one member from its current assignment towards its target, one
//! safe step per heartbeat (Kafka's `CurrentAssignmentBuilder`).
//!
//! The invariant it keeps: a partition is owned by at most one member at a time. A member
//! that must give partitions up keeps its epoch and is told to revoke them (state
//! `UnrevokedPartitions`); only when a heartbeat's owned partitions no longer include them is it
//! given its new partitions and the target epoch. A partition still held (assigned or being
//! revoked) by another member is withheld (state `UnreleasedPartitions`) and handed over at a
//! later heartbeat once it is free.

use std::collections::BTreeSet;

use super::{Assignment, ConsumerMember, MemberState, TopicId};

/// What the member reported owning in its heartbeat: `None` when the request did not say.
pub(super) type Owned<'a> = Option<&'a [(TopicId, Vec<i32>)]>;

/// Advances `member` towards `target` (of epoch `target_epoch`). `subscribed` is the set of
/// topic ids the member currently subscribes to; `held_by_other(topic, partition)` tells
/// whether another member still owns a partition.
pub(super) fn reconcile(
    member: &mut ConsumerMember,
    target_epoch: i32,
    target: &Assignment,
    subscribed: &BTreeSet<TopicId>,
    owned: Owned<'_>,
    held_by_other: impl Fn(&TopicId, i32) -> bool,
) {
    match member.state {
        MemberState::Stable if member.epoch == target_epoch => {}
        MemberState::UnrevokedPartitions if owns_any(owned, &member.pending_revocation) => {}
        _ => next_assignment(
            member,
            target_epoch,
            target,
            subscribed,
            owned,
            held_by_other,
        ),
    }
}

/// Whether the reported owned partitions still include any of `revoking`. Not knowing (no
/// owned partitions in the request) counts as still owning them.
fn owns_any(owned: Owned<'_>, revoking: &Assignment) -> bool {
    let Some(owned) = owned else { return true };
    owned.iter().any(|(topic, partitions)| {
        revoking
            .get(topic)
            .is_some_and(|r| partitions.iter().any(|p| r.contains(p)))
    })
}

fn next_assignment(
    member: &mut ConsumerMember,
    target_epoch: i32,
    target: &Assignment,
    subscribed: &BTreeSet<TopicId>,
    owned: Owned<'_>,
    held_by_other: impl Fn(&TopicId, i32) -> bool,
) {
    let topics: BTreeSet<TopicId> = target
        .keys()
        .chain(member.assigned.keys())
        .copied()
        .collect();
    let mut kept = Assignment::new();
    let mut revoking = Assignment::new();
    let mut adding = Assignment::new();
    let mut unreleased = false;
    let empty = BTreeSet::new();
    for topic in topics {
        let wanted = if subscribed.contains(&topic) {
            target.get(&topic).unwrap_or(&empty)
        } else {
            &empty
        };
        let current = member.assigned.get(&topic).unwrap_or(&empty);
        let keep: BTreeSet<i32> = current.intersection(wanted).copied().collect();
        let revoke: BTreeSet<i32> = current.difference(&keep).copied().collect();
        let mut add: BTreeSet<i32> = wanted.difference(&keep).copied().collect();
        let before = add.len();
        add.retain(|p| {
            // A partition this member is itself revoking is not held by anyone else.
            let own_revoking = member
                .pending_revocation
                .get(&topic)
                .is_some_and(|r| r.contains(p));
            own_revoking || !held_by_other(&topic, *p)
        });
        unreleased |= add.len() != before;
        if !keep.is_empty() {
            kept.insert(topic, keep);
        }
        if !revoke.is_empty() {
            revoking.insert(topic, revoke);
        }
        if !add.is_empty() {
            adding.insert(topic, add);
        }
    }

    if !revoking.is_empty() && owns_any(owned, &revoking) {
        // Revoke first, at the current epoch; the new partitions come once that is done.
        member.state = MemberState::UnrevokedPartitions;
        member.assigned = kept;
        member.pending_revocation = revoking;
        return;
    }
    for (topic, partitions) in adding {
        kept.entry(topic).or_default().extend(partitions);
    }
    member.state = if unreleased {
        MemberState::UnreleasedPartitions
    } else {
        MemberState::Stable
    };
    if member.epoch != target_epoch {
        member.previous_epoch = member.epoch;
        member.epoch = target_epoch;
    }
    member.assigned = kept;
    member.pending_revocation = Assignment::new();
}
