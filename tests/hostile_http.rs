//! Hostile HTTP clients against the health/metrics/admin listener (issue 12): clients that send
//! half their headers and never finish (slowloris), and keep-alive connections left idle. The
//! listener must close them after `observe.http.header_read_timeout_ms` /
//! `observe.http.idle_timeout_ms`, never hold more than `observe.http.max_connections` sockets,
//! keep `/readyz` answering during the attack, and give its file descriptors and memory back
//! afterwards.
//!
//! The broker runs in this process, so the open file descriptors and `VmRSS` counted here are
//! the broker's plus the test's own client sockets; the tests take one lock so that neither
//! measurement sees another test's sockets, and the fd bounds account for the client side.

use std::net::SocketAddr;
use std::time::Duration;

use ferry::testing::TestBroker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// One test at a time: file descriptors and memory are counted per process.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const HEADER_TIMEOUT_MS: u64 = 1_000;
const IDLE_TIMEOUT_MS: u64 = 2_500;
const CAP: usize = 32;
const ATTACKERS: usize = 300;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line");
    kb / 1024.0
}

async fn limited_broker() -> TestBroker {
    TestBroker::with(|b| {
        b.configure(|c| {
            c.observe.http.header_read_timeout_ms = HEADER_TIMEOUT_MS;
            c.observe.http.idle_timeout_ms = IDLE_TIMEOUT_MS;
            c.observe.http.max_connections = CAP;
        })
    })
    .await
    .expect("broker")
}

fn http_addr(broker: &TestBroker) -> SocketAddr {
    broker.http_addr()
}

/// Whether the server closed `s` (EOF or reset) within `within`; bytes it sends first (an
/// error response) are read past.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

async fn readyz_answers(broker: &TestBroker) -> bool {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("client");
    match client
        .get(format!("{}/readyz", broker.http_url()))
        .send()
        .await
    {
        Ok(r) => r.status() == reqwest::StatusCode::OK,
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_clients_are_capped_and_timed_out_while_readyz_answers() {
    let _serial = SERIAL.lock().await;
    let broker = limited_broker().await;
    let addr = http_addr(&broker);
    assert!(readyz_answers(&broker).await);
    let fds_before = open_fds();
    let rss_before = rss_mb();

    // Each attacker starts a request and never finishes its headers.
    let started = Instant::now();
    let mut attackers = Vec::with_capacity(ATTACKERS);
    for i in 0..ATTACKERS {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("GET /readyz HTTP/1.1\r\nHost: x\r\nX-Slow-{i}: ").as_bytes())
            .await
            .expect("partial headers");
        attackers.push(s);
    }
    // Probes get through while every slot is taken by a slow client.
    for _ in 0..3 {
        assert!(
            readyz_answers(&broker).await,
            "/readyz must answer during the attack"
        );
    }
    // Give the listener a moment to close the connections it evicted.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fds_during = open_fds();
    let rss_during = rss_mb();
    // Our own 300 client sockets, plus at most the cap on the server side (and a little for
    // the probes' pooled connection and the runtime).
    let bound = fds_before + ATTACKERS + CAP + 8;
    assert!(
        fds_during <= bound,
        "the server holds more sockets than its cap: {fds_during} fds open, at most {bound} expected ({fds_before} before the attack)"
    );

    // Every slow client is closed: the oldest evicted at once, the rest after the header
    // timeout (plus the watchdog's tick and scheduling slack).
    let deadline = Duration::from_millis(HEADER_TIMEOUT_MS * 3 + 2_000);
    let mut still_open = 0;
    for s in &mut attackers {
        let left = deadline.saturating_sub(started.elapsed());
        if !closed_within(s, left).await {
            still_open += 1;
        }
    }
    assert_eq!(
        still_open, 0,
        "{still_open} of {ATTACKERS} slow-header connections were still open after {deadline:?}"
    );
    drop(attackers);
    assert!(readyz_answers(&broker).await);

    // The descriptors are back; memory settles near where it started.
    let settle = Instant::now();
    while open_fds() > fds_before + 4 && settle.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fds_after = open_fds();
    let rss_after = rss_mb();
    println!(
        "fds before/during/after: {fds_before}/{fds_during}/{fds_after}; RSS MB before/during/after: {rss_before:.1}/{rss_during:.1}/{rss_after:.1}"
    );
    assert!(
        fds_after <= fds_before + 4,
        "file descriptors not given back: {fds_before} before, {fds_after} after"
    );
    assert!(
        rss_after - rss_before < 32.0,
        "memory did not return near its baseline: {rss_before:.1} MB before, {rss_after:.1} MB after"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let _serial = SERIAL.lock().await;
    let broker = limited_broker().await;
    let mut s = TcpStream::connect(http_addr(&broker))
        .await
        .expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    while !response.windows(4).any(|w| w == b"\r\n\r\n") || !response.ends_with(b"}") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("response in time")
            .expect("read");
        assert!(n > 0, "closed before answering");
        response.extend_from_slice(&buf[..n]);
    }
    assert!(response.starts_with(b"HTTP/1.1 200"));
    let answered = Instant::now();
    assert!(
        closed_within(&mut s, Duration::from_millis(IDLE_TIMEOUT_MS * 2 + 1_000)).await,
        "an idle keep-alive connection stayed open"
    );
    let idle_for = answered.elapsed();
    // Closed by the idle timer, not the (shorter) header timer.
    assert!(
        idle_for >= Duration::from_millis(IDLE_TIMEOUT_MS - 100),
        "closed after {idle_for:?}, before the idle timeout of {IDLE_TIMEOUT_MS} ms"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_connects_and_sends_nothing_is_closed_after_the_header_timeout() {
    let _serial = SERIAL.lock().await;
    let broker = limited_broker().await;
    let mut s = TcpStream::connect(http_addr(&broker))
        .await
        .expect("connect");
    let connected = Instant::now();
    assert!(
        closed_within(&mut s, Duration::from_millis(HEADER_TIMEOUT_MS * 3)).await,
        "a silent connection stayed open"
    );
    assert!(connected.elapsed() >= Duration::from_millis(HEADER_TIMEOUT_MS - 100));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_stalls_is_refused_after_the_header_timeout() {
    let _serial = SERIAL.lock().await;
    let broker = limited_broker().await;
    let mut s = TcpStream::connect(http_addr(&broker))
        .await
        .expect("connect");
    s.write_all(
        b"POST /api/topics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic YWRtaW46YWRtaW4=\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"name\":",
    )
    .await
    .expect("headers and a piece of the body");
    let sent = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = sent + Duration::from_millis(HEADER_TIMEOUT_MS * 3 + 1_000);
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            Ok(_) => break,
            Err(_) => panic!("a stalled body held its connection past {deadline:?}"),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(sent.elapsed() >= Duration::from_millis(HEADER_TIMEOUT_MS - 100));
    assert!(broker.core().topics().is_empty());
    broker.stop().await;
}

/// The AMQP side of the shared login guard: a wrong password counts under
/// `ferry_auth_failures_total{protocol="amqp"}`, a right one does not.
#[tokio::test]
async fn a_wrong_amqp_password_is_counted() {
    let _serial = SERIAL.lock().await;
    let broker = TestBroker::start().await.expect("broker");
    let failures = || async {
        let text = reqwest::get(format!("{}/metrics", broker.http_url()))
            .await
            .expect("scrape")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .find_map(|l| l.strip_prefix("ferry_auth_failures_total{protocol=\"amqp\"} "))
            .map_or(0.0, |v| v.trim().parse::<f64>().expect("counter value"))
    };
    let before = failures().await;
    let url = broker.amqp_url().replace("guest:guest@", "guest:wrong@");
    let refused = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await;
    assert!(refused.is_err(), "a wrong password must be refused");
    assert_eq!(failures().await - before, 1.0);
    let conn =
        lapin::Connection::connect(&broker.amqp_url(), lapin::ConnectionProperties::default())
            .await
            .expect("right password");
    conn.close(200, "bye".into()).await.expect("close");
    assert_eq!(failures().await - before, 1.0);
    broker.stop().await;
}
