//! Helpers shared by the integration-test binary (`tests/integration`) and the two hostile-input binaries, which include them with `#[path]`/`mod common;`.
#![allow(dead_code)]

pub mod admin;
pub mod amqp;
pub mod kafka;
pub mod kafka_raw;
pub mod native;
pub mod serve;

/// A non-loopback address of this machine, if it has one.
pub fn external_ip() -> Option<std::net::IpAddr> {
    // Connecting a UDP socket sends nothing; it only picks the outgoing interface.
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// Starts a broker that must listen on a port it held before (a restart on the same address).
/// Between the stop and the start, another test's client socket can be given that port as its
/// ephemeral local port for a moment, which fails the bind; so a bind conflict is retried for a
/// few seconds, and any other error is returned at once.
pub async fn restart_on_same_port(
    configure: impl Fn(ferry::BrokerBuilder) -> ferry::BrokerBuilder,
) -> Result<ferry::testing::TestBroker, ferry::StartError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match ferry::testing::TestBroker::with(&configure).await {
            Err(ferry::StartError::Bind { .. } | ferry::StartError::Listen(_))
                if std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}
