//! The CPU a local broker spends during a bench run, read from `/proc/<pid>/stat`.
//!
//! A bench that only reports throughput hides what the throughput cost: a broker that needs
//! 12 µs of CPU per message saturates a core long before one that needs 4 µs, and the rates of
//! a run on a shared machine say little about that. So `ferry bench amqp` samples the broker
//! process's user + system CPU time before and after each case and reports it per message, beside
//! the client's own share. The broker is the process given with `--broker-pid`, or, when the URL
//! names a loopback address, the process that owns the listening socket of the URL's port (found
//! through `/proc/net/tcp{,6}` and the socket inodes in `/proc/<pid>/fd`; for a QUIC listener,
//! as `ferry bench es` uses, the bound UDP socket in `/proc/net/udp{,6}`; only processes of the
//! same user are visible, which is the usual case for a broker started for a benchmark). Where
//! neither works (another host, another user, not Linux) the figures are simply absent.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

/// A broker process whose CPU time can be read.
#[derive(Debug, Clone)]
pub(crate) struct BrokerProcess {
    pub pid: u32,
    /// Its command name (`/proc/<pid>/comm`), e.g. `ferry` or `beam.smp`.
    pub name: String,
}

impl BrokerProcess {
    /// The process `pid`, if its CPU time is readable.
    pub(crate) fn by_pid(pid: u32) -> Option<BrokerProcess> {
        cpu_time_of(pid)?;
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        Some(BrokerProcess { pid, name })
    }

    /// The process listening on `port`, when `host` is a loopback name or address (a remote
    /// broker's CPU cannot be read, and a local process on the same port would be a wrong guess).
    pub(crate) fn listening_on(host: &str, port: u16) -> Option<BrokerProcess> {
        BrokerProcess::owning(host, port, &TCP_LISTENING)
    }

    /// The process with a UDP socket bound to `port` (a QUIC listener such as the native
    /// protocol's), under the same loopback rule as [`listening_on`](Self::listening_on).
    pub(crate) fn bound_udp(host: &str, port: u16) -> Option<BrokerProcess> {
        BrokerProcess::owning(host, port, &UDP_BOUND)
    }

    fn owning(host: &str, port: u16, sockets: &SocketTables) -> Option<BrokerProcess> {
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return None;
        }
        let inodes = socket_inodes(sockets, port);
        if inodes.is_empty() {
            return None;
        }
        let pid = owner_of(&inodes)?;
        BrokerProcess::by_pid(pid)
    }

    /// The broker a bench reports on: the process `--broker-pid` names (an error if its CPU
    /// cannot be read), else what `local` finds (the owner of a loopback port), else none.
    pub(crate) fn from_flag(
        pid: Option<u32>,
        local: impl FnOnce() -> Option<BrokerProcess>,
    ) -> Result<Option<BrokerProcess>, super::BenchError> {
        match pid {
            Some(pid) => BrokerProcess::by_pid(pid).map(Some).ok_or_else(|| {
                super::BenchError::Invalid(format!(
                    "--broker-pid {pid}: cannot read /proc/{pid}/stat (no such process, or not \
                     Linux)"
                ))
            }),
            None => Ok(local()),
        }
    }

    /// Its user + system CPU time so far.
    pub(crate) fn cpu_time(&self) -> Option<Duration> {
        cpu_time_of(self.pid)
    }
}

/// User + system CPU time of `pid` (all its threads) from `/proc/<pid>/stat`.
pub(crate) fn cpu_time_of(pid: u32) -> Option<Duration> {
    stat_cpu_time(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// User + system CPU time from the text of a `/proc/<pid>/stat` file.
pub(crate) fn stat_cpu_time(stat: &str) -> Option<Duration> {
    // The command name (field 2) is in parentheses and may contain spaces; fields after the
    // last ')' start at field 3 (state). utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions; it reads a constant of the running system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks <= 0 {
        return None;
    }
    let ticks = ticks as u64;
    let total = utime + stime;
    Some(
        Duration::from_secs(total / ticks)
            + Duration::from_nanos((total % ticks) * 1_000_000_000 / ticks),
    )
}

/// Where the kernel lists one kind of socket, and the state a server's socket is in there.
struct SocketTables {
    files: [&'static str; 2],
    /// `0A` (LISTEN) for TCP; `07` (unconnected) for a bound UDP socket.
    state: &'static str,
}

const TCP_LISTENING: SocketTables = SocketTables {
    files: ["/proc/net/tcp", "/proc/net/tcp6"],
    state: "0A",
};

const UDP_BOUND: SocketTables = SocketTables {
    files: ["/proc/net/udp", "/proc/net/udp6"],
    state: "07",
};

/// Inodes of the server sockets on `port` (IPv4 and IPv6).
fn socket_inodes(sockets: &SocketTables, port: u16) -> Vec<u64> {
    sockets
        .files
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|table| in_table(&table, port, sockets.state))
        .collect()
}

/// Inodes of the rows of a `/proc/net/tcp` table in state LISTEN (0A) on local `port`.
#[cfg(test)]
fn listening_in_table(table: &str, port: u16) -> Vec<u64> {
    in_table(table, port, "0A")
}

/// Inodes of the rows of a `/proc/net/{tcp,udp}` table in `state` on local `port` (both
/// tables have the same columns).
fn in_table(table: &str, port: u16, state: &str) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|row| {
            // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
            let cols: Vec<&str> = row.split_whitespace().collect();
            let local_port = cols.get(1)?.rsplit(':').next()?;
            let listening = *cols.get(3)? == state;
            (listening && u16::from_str_radix(local_port, 16).ok()? == port)
                .then(|| cols.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

/// The process holding one of the socket `inodes` open.
fn owner_of(inodes: &[u64]) -> Option<u32> {
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(Path::new("/proc").join(pid.to_string()).join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if wanted.iter().any(|w| target.as_os_str() == w.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_listening_rows_of_a_proc_net_tcp_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:162E 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0 100 0 0 10 0\n\
   1: 0100007F:162E 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1000        0 4343 1 0 20 4 30 10 -1\n\
   2: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1 0 100 0 0 10 0\n";
        assert_eq!(listening_in_table(table, 5678), vec![4242]);
        assert_eq!(listening_in_table(table, 80), vec![99]);
        assert!(listening_in_table(table, 5672).is_empty());
    }

    #[test]
    fn parses_cpu_time_after_a_command_name_with_spaces() {
        // utime 250 and stime 50 ticks, the command name holding spaces and parentheses.
        let stat = "123 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        assert_eq!(
            stat_cpu_time(stat),
            Some(Duration::from_nanos(300 * 1_000_000_000 / ticks))
        );
        assert_eq!(stat_cpu_time("garbage"), None);
    }

    #[test]
    fn finds_the_owner_of_a_listening_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let found = BrokerProcess::listening_on("127.0.0.1", port).unwrap();
        assert_eq!(found.pid, std::process::id());
        assert!(found.cpu_time().is_some());
        assert!(BrokerProcess::listening_on("192.0.2.1", port).is_none());
    }

    #[test]
    fn finds_the_owner_of_a_bound_udp_socket() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        let found = BrokerProcess::bound_udp("127.0.0.1", port).unwrap();
        assert_eq!(found.pid, std::process::id());
    }
}
