//! The group's deadlines: which one is next, and what happens when it fires (rebalance, sync and session timeouts).
//! Part of the pure state machine of [`Group`]: no I/O, no awaits.

use super::*;

impl Group {
    /// The earliest instant at which [`Group::fire_timers`] has something to do.
    pub(in crate::broker::group) fn next_deadline(&self) -> Option<Instant> {
        if self.state == GroupState::Dead {
            return None;
        }
        let members = self.members.iter().filter_map(Member::expiry);
        let pending = self.pending.values().copied();
        let join = self
            .join_timer
            .filter(|_| self.state == GroupState::PreparingRebalance)
            .map(|t| t.deadline());
        let consumer = self.consumer.as_ref().and_then(|c| c.next_deadline());
        members
            .chain(pending)
            .chain(join)
            .chain(self.sync_deadline)
            .chain(consumer)
            .min()
    }

    /// Applies every deadline that has passed: expired MEMBER_ID_REQUIRED ids and sessions, the
    /// rebalance deadline (or initial delay) and the SyncGroup deadline.
    pub(in crate::broker::group) fn fire_timers(&mut self, now: Instant, settings: &GroupSettings) {
        if self.state == GroupState::Dead {
            return;
        }
        if let Some(c) = &mut self.consumer {
            c.fire_timers(now);
        }
        let before = self.pending.len();
        self.pending.retain(|_, deadline| *deadline > now);
        if self.pending.len() != before {
            tracing::debug!(group = %self.id, expired = before - self.pending.len(),
                "pending member ids expired");
            self.try_complete_join(now);
        }

        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.expiry().is_some_and(|d| d <= now))
            .map(|m| m.id.clone())
            .collect();
        for id in expired {
            metrics::counter!("ferry_group_members_removed_total", "reason" => "session_timeout")
                .increment(1);
            self.remove_member_and_update(&id, now, settings, "session timeout");
        }

        if self.state == GroupState::PreparingRebalance {
            match self.join_timer {
                Some(JoinTimer::Initial {
                    deadline,
                    delay,
                    remaining,
                }) if deadline <= now => {
                    if self.new_member_added && !remaining.is_zero() {
                        // Kafka's InitialDelayedJoin: members are still arriving; wait again.
                        self.new_member_added = false;
                        let next = settings.initial_rebalance_delay.min(remaining);
                        self.join_timer = Some(JoinTimer::Initial {
                            deadline: now + next,
                            delay: next,
                            remaining: remaining.saturating_sub(delay),
                        });
                    } else {
                        self.complete_join(now);
                    }
                }
                Some(JoinTimer::Rebalance { deadline }) if deadline <= now => {
                    self.complete_join(now)
                }
                _ => {}
            }
        }

        if self.sync_deadline.is_some_and(|d| d <= now) {
            self.sync_deadline = None;
            if matches!(
                self.state,
                GroupState::CompletingRebalance | GroupState::Stable
            ) && !self.pending_sync.is_empty()
            {
                // Members that got this generation's JoinGroup answer but never asked for their
                // assignment: without this a leader that vanished after joining (while its
                // session is refreshed by nothing but a zombie heartbeat thread) stalls everyone.
                let laggards: Vec<String> = self.pending_sync.drain().collect();
                for id in &laggards {
                    self.detach_member(id);
                    metrics::counter!("ferry_group_members_removed_total", "reason" => "sync_timeout")
                        .increment(1);
                }
                tracing::info!(group = %self.id, members = ?laggards,
                    "members did not sync in time; removed");
                self.prepare_rebalance(now, settings, "members did not sync in time");
            }
        }
    }
}
