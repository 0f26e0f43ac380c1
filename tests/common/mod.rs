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
