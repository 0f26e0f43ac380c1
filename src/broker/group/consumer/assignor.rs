//! The server-side assignors of KIP-848 consumer groups: `uniform` (the default) and `range`.
//!
//! Both are pure functions from the members' subscriptions (topic names, resolved against the
//! group's subscription metadata) and the previous target assignment to the next target
//! assignment. `uniform` is sticky: a partition stays with its previous owner whenever that
//! keeps the counts balanced, so a member joining or leaving moves as few partitions as
//! possible (each move is a revocation the old owner must acknowledge). `range` gives each
//! member a contiguous range of every topic it subscribes to, members sorted by id, as the
//! classic `RangeAssignor` does; co-partitioned topics therefore land together.

use std::collections::{BTreeMap, BTreeSet};

use super::{Assignment, TopicMeta};

/// The assignors a member may name in `group.remote.assignor` (`server_assignor`).
pub const ASSIGNORS: [&str; 2] = ["uniform", "range"];

/// The assignor used when no member names one (Kafka's `group.consumer.assignors` head).
pub const DEFAULT_ASSIGNOR: &str = "uniform";

/// One member as an assignor sees it: its id and the topics (by name) it subscribes to.
pub(super) struct MemberSpec<'a> {
    pub id: &'a str,
    pub topics: &'a BTreeSet<String>,
}

/// Runs `assignor` (one of [`ASSIGNORS`]; anything else is treated as the default).
pub(super) fn assign(
    assignor: &str,
    members: &[MemberSpec<'_>],
    metadata: &BTreeMap<String, TopicMeta>,
    previous: &BTreeMap<String, Assignment>,
) -> BTreeMap<String, Assignment> {
    match assignor {
        "range" => range(members, metadata),
        _ => uniform(members, metadata, previous),
    }
}

/// Contiguous ranges per topic: with P partitions and M subscribers (sorted by member id), the
/// first P % M members get P / M + 1 partitions, the others P / M.
fn range(
    members: &[MemberSpec<'_>],
    metadata: &BTreeMap<String, TopicMeta>,
) -> BTreeMap<String, Assignment> {
    let mut out: BTreeMap<String, Assignment> = members
        .iter()
        .map(|m| (m.id.to_string(), Assignment::new()))
        .collect();
    for (name, topic) in metadata {
        let mut subscribers: Vec<&str> = members
            .iter()
            .filter(|m| m.topics.contains(name))
            .map(|m| m.id)
            .collect();
        if subscribers.is_empty() || topic.partitions <= 0 {
            continue;
        }
        subscribers.sort_unstable();
        let count = subscribers.len() as i32;
        let (base, extra) = (topic.partitions / count, topic.partitions % count);
        let mut next = 0;
        for (i, id) in subscribers.iter().enumerate() {
            let take = base + i32::from((i as i32) < extra);
            if take > 0 {
                if let Some(a) = out.get_mut(*id) {
                    a.entry(topic.id).or_default().extend(next..next + take);
                }
            }
            next += take;
        }
    }
    out
}

/// Balanced and sticky: keep every previous placement that is still valid, hand the
/// unplaced partitions to the least loaded eligible member, then move partitions from the
/// most to the least loaded eligible member until no move narrows the gap. With identical
/// subscriptions that ends with counts differing by at most one.
fn uniform(
    members: &[MemberSpec<'_>],
    metadata: &BTreeMap<String, TopicMeta>,
    previous: &BTreeMap<String, Assignment>,
) -> BTreeMap<String, Assignment> {
    // Every partition of a subscribed topic, with who may have it.
    let mut eligible: BTreeMap<(String, i32), Vec<&str>> = BTreeMap::new();
    for (name, topic) in metadata {
        let subscribers: Vec<&str> = members
            .iter()
            .filter(|m| m.topics.contains(name))
            .map(|m| m.id)
            .collect();
        if subscribers.is_empty() {
            continue;
        }
        for p in 0..topic.partitions.max(0) {
            eligible.insert((name.clone(), p), subscribers.clone());
        }
    }
    let id_to_name: BTreeMap<[u8; 16], &str> = metadata
        .iter()
        .map(|(name, t)| (t.id, name.as_str()))
        .collect();

    let mut owner: BTreeMap<(String, i32), String> = BTreeMap::new();
    let mut load: BTreeMap<String, usize> = members.iter().map(|m| (m.id.to_string(), 0)).collect();
    for (member, assignment) in previous {
        if !load.contains_key(member) {
            continue;
        }
        for (topic_id, partitions) in assignment {
            let Some(name) = id_to_name.get(topic_id) else {
                continue;
            };
            for p in partitions {
                let key = (name.to_string(), *p);
                let allowed = eligible
                    .get(&key)
                    .is_some_and(|who| who.contains(&member.as_str()));
                if allowed && !owner.contains_key(&key) {
                    owner.insert(key, member.clone());
                    *load.entry(member.clone()).or_default() += 1;
                }
            }
        }
    }
    // Place what is unplaced on the least loaded eligible member (ties: smallest id).
    for (key, who) in &eligible {
        if owner.contains_key(key) {
            continue;
        }
        let best = who
            .iter()
            .min_by_key(|id| (load.get(**id).copied().unwrap_or(0), **id));
        if let Some(best) = best {
            owner.insert(key.clone(), best.to_string());
            *load.entry(best.to_string()).or_default() += 1;
        }
    }
    // Even out: each move lowers the sum of squared loads, so this ends.
    loop {
        let mut moved = false;
        let mut by_load: Vec<(usize, String)> =
            load.iter().map(|(id, n)| (*n, id.clone())).collect();
        by_load.sort_by(|a, b| b.cmp(a));
        'donors: for (donor_load, donor) in &by_load {
            // The donor's partitions, last ones first, so low partitions stay put.
            let mine: Vec<(String, i32)> = owner
                .iter()
                .filter(|(_, o)| *o == donor)
                .map(|(k, _)| k.clone())
                .rev()
                .collect();
            for key in mine {
                let Some(who) = eligible.get(&key) else {
                    continue;
                };
                let target = who
                    .iter()
                    .filter(|id| **id != donor.as_str())
                    .min_by_key(|id| (load.get(**id).copied().unwrap_or(0), **id));
                if let Some(target) = target {
                    let target_load = load.get(*target).copied().unwrap_or(0);
                    if target_load + 1 < *donor_load {
                        owner.insert(key, target.to_string());
                        *load.entry(donor.clone()).or_default() -= 1;
                        *load.entry(target.to_string()).or_default() += 1;
                        moved = true;
                        break 'donors;
                    }
                }
            }
        }
        if !moved {
            break;
        }
    }

    let mut out: BTreeMap<String, Assignment> = members
        .iter()
        .map(|m| (m.id.to_string(), Assignment::new()))
        .collect();
    for ((name, p), member) in owner {
        let Some(topic) = metadata.get(&name) else {
            continue;
        };
        if let Some(a) = out.get_mut(&member) {
            a.entry(topic.id).or_default().insert(p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(topics: &[(&str, u8, i32)]) -> BTreeMap<String, TopicMeta> {
        topics
            .iter()
            .map(|(name, id, partitions)| {
                (
                    name.to_string(),
                    TopicMeta {
                        name: name.to_string(),
                        id: [*id; 16],
                        partitions: *partitions,
                    },
                )
            })
            .collect()
    }

    fn count(a: &Assignment) -> usize {
        a.values().map(BTreeSet::len).sum()
    }

    #[test]
    fn range_gives_contiguous_ranges_by_member_id() {
        let topics: BTreeSet<String> = ["t".to_string()].into();
        let members = [
            MemberSpec {
                id: "b",
                topics: &topics,
            },
            MemberSpec {
                id: "a",
                topics: &topics,
            },
        ];
        let out = assign("range", &members, &meta(&[("t", 1, 5)]), &BTreeMap::new());
        assert_eq!(out["a"][&[1; 16]], BTreeSet::from([0, 1, 2]));
        assert_eq!(out["b"][&[1; 16]], BTreeSet::from([3, 4]));
    }

    #[test]
    fn uniform_is_balanced_and_sticky() {
        let topics: BTreeSet<String> = ["t".to_string(), "u".to_string()].into();
        let two = [
            MemberSpec {
                id: "a",
                topics: &topics,
            },
            MemberSpec {
                id: "b",
                topics: &topics,
            },
        ];
        let metadata = meta(&[("t", 1, 4), ("u", 2, 3)]);
        let first = assign("uniform", &two, &metadata, &BTreeMap::new());
        let (a, b) = (count(&first["a"]), count(&first["b"]));
        assert_eq!(a + b, 7);
        assert!(a.abs_diff(b) <= 1);

        // A third member takes partitions only from the others; nothing else moves.
        let three = [
            MemberSpec {
                id: "a",
                topics: &topics,
            },
            MemberSpec {
                id: "b",
                topics: &topics,
            },
            MemberSpec {
                id: "c",
                topics: &topics,
            },
        ];
        let second = assign("uniform", &three, &metadata, &first);
        let counts: Vec<usize> = ["a", "b", "c"].iter().map(|m| count(&second[*m])).collect();
        assert_eq!(counts.iter().sum::<usize>(), 7);
        assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1);
        for m in ["a", "b"] {
            for (t, ps) in &second[m] {
                assert!(
                    ps.is_subset(&first[m][t]),
                    "{m} gained a partition it did not have"
                );
            }
        }
    }

    #[test]
    fn uniform_respects_subscriptions() {
        let only_t: BTreeSet<String> = ["t".to_string()].into();
        let both: BTreeSet<String> = ["t".to_string(), "u".to_string()].into();
        let members = [
            MemberSpec {
                id: "a",
                topics: &only_t,
            },
            MemberSpec {
                id: "b",
                topics: &both,
            },
        ];
        let out = assign(
            "uniform",
            &members,
            &meta(&[("t", 1, 2), ("u", 2, 2)]),
            &BTreeMap::new(),
        );
        assert!(!out["a"].contains_key(&[2; 16]));
        assert_eq!(out["b"][&[2; 16]].len(), 2);
        assert_eq!(count(&out["a"]) + count(&out["b"]), 4);
    }
}
