//! Failed logins, the same way for every protocol: counted (`ferry_auth_failures_total
//! {protocol}`), logged at WARN with the peer address (rate-limited, so a password-guessing
//! flood cannot flood the log too), and slowed per peer.
//!
//! Each peer address that fails gets a record of its recent failures. From the
//! [`FREE_FAILURES`]th failure on, every further failure from that address is answered only
//! after a delay that doubles per failure, from [`FIRST_DELAY`] up to [`MAX_DELAY`]; a success
//! clears the record, and a record unused for [`FORGET_AFTER`] starts over. At most
//! [`MAX_PEERS`] records are kept (the stalest go first), so a flood from many addresses costs
//! bounded memory. The delay is the caller's to sleep ([`LoginGuard::failed`] returns it as a
//! [`Penalty`]), so a protocol can hold the answer without holding any lock.
//!
//! A slowed answer holds its connection, so one address could fill a listener's connection cap
//! with slowed attempts. At most [`MAX_WAITING_PER_PEER`] attempts of one address wait at once;
//! [`LoginGuard::busy`] tells a protocol to refuse further ones outright (HTTP 429) without
//! checking their password, so waiting in parallel buys a guesser nothing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// Failures from one address answered at once before slowing down (typos happen).
pub const FREE_FAILURES: u32 = 3;
/// The delay after the first failure beyond the free ones.
pub const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest delay one failure gets.
pub const MAX_DELAY: Duration = Duration::from_secs(2);
/// A peer without failures for this long starts over.
pub const FORGET_AFTER: Duration = Duration::from_secs(300);
/// Most peer addresses remembered at once.
pub const MAX_PEERS: usize = 4096;
/// Attempts of one address waiting out their delay at once.
pub const MAX_WAITING_PER_PEER: u32 = 16;
/// At most one WARN line per this interval; the lines in between are counted in the next one.
const LOG_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Clone, Copy)]
struct PeerFailures {
    count: u32,
    last: Instant,
    /// Attempts now waiting out their delay.
    waiting: u32,
}

#[derive(Default)]
struct State {
    peers: HashMap<IpAddr, PeerFailures>,
    last_log: Option<Instant>,
    unlogged: u64,
}

/// Per-peer failed-login records of one broker (see the module doc).
#[derive(Default)]
pub struct LoginGuard {
    state: Mutex<State>,
}

impl LoginGuard {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `peer` already has [`MAX_WAITING_PER_PEER`] attempts waiting: refuse the next
    /// one without checking it (and record it with [`failed`](Self::failed), not waiting).
    pub fn busy(&self, peer: Option<IpAddr>) -> bool {
        peer.is_some_and(|ip| {
            self.state
                .lock()
                .peers
                .get(&ip)
                .is_some_and(|p| p.waiting >= MAX_WAITING_PER_PEER)
        })
    }

    /// Records a failed login of `user` over `protocol` (`"http"`, `"amqp"`) from `peer`; the
    /// answer should wait out the returned penalty.
    pub fn failed(&self, protocol: &'static str, peer: Option<IpAddr>, user: &str) -> Penalty<'_> {
        let delay = self.record(protocol, peer, user);
        let waiting_peer = peer.filter(|_| !delay.is_zero());
        if let Some(ip) = waiting_peer {
            if let Some(p) = self.state.lock().peers.get_mut(&ip) {
                p.waiting += 1;
            }
        }
        Penalty {
            guard: self,
            peer: waiting_peer,
            delay,
        }
    }

    fn record(&self, protocol: &'static str, peer: Option<IpAddr>, user: &str) -> Duration {
        metrics::counter!("ferry_auth_failures_total", "protocol" => protocol).increment(1);
        let now = Instant::now();
        let mut state = self.state.lock();
        let count = match peer {
            Some(ip) => {
                if !state.peers.contains_key(&ip) && state.peers.len() >= MAX_PEERS {
                    forget_stalest(&mut state.peers, now);
                }
                let entry = state.peers.entry(ip).or_insert(PeerFailures {
                    count: 0,
                    last: now,
                    waiting: 0,
                });
                if now.duration_since(entry.last) > FORGET_AFTER {
                    entry.count = 0;
                }
                entry.count = entry.count.saturating_add(1);
                entry.last = now;
                entry.count
            }
            None => 0,
        };
        let may_log = state
            .last_log
            .is_none_or(|at| now.duration_since(at) >= LOG_INTERVAL);
        if may_log {
            let suppressed = std::mem::take(&mut state.unlogged);
            state.last_log = Some(now);
            drop(state);
            let peer = peer.map_or_else(|| "unknown".to_string(), |ip| ip.to_string());
            tracing::warn!(
                protocol,
                peer,
                user,
                failures_from_peer = count,
                suppressed_since_last_line = suppressed,
                "login failed"
            );
        } else {
            state.unlogged += 1;
        }
        delay_for(count)
    }

    /// A successful login from `peer` clears its failures.
    pub fn succeeded(&self, peer: Option<IpAddr>) {
        if let Some(ip) = peer {
            let mut state = self.state.lock();
            if !state.peers.is_empty() {
                state.peers.remove(&ip);
            }
        }
    }

    /// Peer addresses currently remembered.
    pub fn tracked_peers(&self) -> usize {
        self.state.lock().peers.len()
    }
}

/// A failed attempt's delay; while it is alive the attempt counts as waiting.
#[must_use = "wait() out the penalty before answering"]
pub struct Penalty<'a> {
    guard: &'a LoginGuard,
    peer: Option<IpAddr>,
    delay: Duration,
}

impl Penalty<'_> {
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Sleeps out the delay.
    pub async fn wait(self) {
        tokio::time::sleep(self.delay).await;
    }
}

impl Drop for Penalty<'_> {
    fn drop(&mut self) {
        if let Some(ip) = self.peer {
            if let Some(p) = self.guard.state.lock().peers.get_mut(&ip) {
                p.waiting = p.waiting.saturating_sub(1);
            }
        }
    }
}

/// The delay for the `count`th recent failure from one address.
pub fn delay_for(count: u32) -> Duration {
    if count <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (count - FREE_FAILURES - 1).min(16);
    FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
}

/// Drops the expired records, or, when none has expired, the least recently failing eighth.
fn forget_stalest(peers: &mut HashMap<IpAddr, PeerFailures>, now: Instant) {
    peers.retain(|_, p| now.duration_since(p.last) <= FORGET_AFTER);
    if peers.len() < MAX_PEERS {
        return;
    }
    let mut by_age: Vec<(Instant, IpAddr)> = peers.iter().map(|(ip, p)| (p.last, *ip)).collect();
    by_age.sort_unstable();
    for (_, ip) in by_age.into_iter().take(MAX_PEERS / 8) {
        peers.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn a_peer_has_a_bounded_number_of_waiting_attempts() {
        let guard = LoginGuard::new();
        let peer = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
        for _ in 0..FREE_FAILURES {
            let _ = guard.failed("http", peer, "u");
        }
        let waiting: Vec<_> = (0..MAX_WAITING_PER_PEER)
            .map(|_| guard.failed("http", peer, "u"))
            .collect();
        assert!(guard.busy(peer));
        assert!(!guard.busy(Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3)))));
        drop(waiting);
        assert!(!guard.busy(peer));
    }

    #[test]
    fn delay_grows_from_the_free_failures_and_is_bounded() {
        assert_eq!(delay_for(1), Duration::ZERO);
        assert_eq!(delay_for(FREE_FAILURES), Duration::ZERO);
        assert_eq!(delay_for(FREE_FAILURES + 1), FIRST_DELAY);
        assert_eq!(delay_for(FREE_FAILURES + 2), FIRST_DELAY * 2);
        assert_eq!(delay_for(FREE_FAILURES + 3), FIRST_DELAY * 4);
        assert_eq!(delay_for(u32::MAX), MAX_DELAY);
    }

    #[tokio::test]
    async fn success_clears_a_peer_and_peers_are_bounded() {
        let guard = LoginGuard::new();
        let one = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        for _ in 0..FREE_FAILURES {
            assert_eq!(guard.failed("http", one, "u").delay(), Duration::ZERO);
        }
        assert_eq!(guard.failed("http", one, "u").delay(), FIRST_DELAY);
        guard.succeeded(one);
        assert_eq!(guard.failed("http", one, "u").delay(), Duration::ZERO);

        for i in 0..(MAX_PEERS as u32 + 100) {
            let _ = guard.failed("amqp", Some(IpAddr::V4(Ipv4Addr::from(i))), "u");
        }
        assert!(guard.tracked_peers() <= MAX_PEERS);
    }
}
