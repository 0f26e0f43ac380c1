//! Wire clients: the small clients Ferry itself uses to talk to brokers and to its own admin
//! API, in one place so `ferry bench`, the admin CLI (`ferry produce|consume`, `ferry topic
//! ...`) and, later, bridges and the SDK share them instead of each growing its own.
//!
//! One module per protocol: [`kafka`] (a pipelined Kafka connection on the `kafka-protocol`
//! crate, no librdkafka), [`amqp`] (a pipelined AMQP 0-9-1 session on `amq-protocol`'s frame
//! codec, no lapin) and [`http`] (a one-request-per-connection HTTP/1.1 JSON client, also used by
//! the alert webhooks). They take plain values (addresses, URLs, timeouts), never command-line
//! types, and sit beside the protocol adapters in the layers: they import only `log::batch` and
//! `util`, and nothing below them imports them back except `observe` for webhooks.

pub mod amqp;
pub mod http;
pub mod kafka;
pub mod native;
pub mod sasl;
mod transport;

use std::time::Duration;

use tokio::net::{TcpStream, ToSocketAddrs};

/// Opens a TCP connection within `timeout`, with Nagle off (the clients batch their own
/// writes). The error is the reason as a user should read it; each client names the address.
async fn tcp_connect(addr: impl ToSocketAddrs, timeout: Duration) -> Result<TcpStream, String> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => Err(format!("no answer within {} s", timeout.as_secs())),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Err("connection refused".into())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
    }
}

/// Why a wire client could not do its job. Every message says what to try next: the clients
/// serve `ferry bench` and `ferry produce|consume`, so the hints name their flags.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to {addr}: {reason} — is a broker running? start one with \
         `ferry serve` (or pass -b/--bootstrap HOST:PORT, or set FERRY_BOOTSTRAP)"
    )]
    Connect { addr: String, reason: String },
    #[error(
        "cannot connect to {addr}: {reason} — is a broker running? start one with \
         `ferry serve` (or pass --url amqp://USER:PASS@HOST:PORT/VHOST)"
    )]
    AmqpConnect { addr: String, reason: String },
    #[error("cannot resolve {addr}: {reason} — check the host name in --bootstrap")]
    Resolve { addr: String, reason: String },
    #[error(
        "{addr} closed the connection while {api} was in flight ({reason}) — check the broker's \
         log"
    )]
    Closed {
        addr: String,
        api: String,
        reason: String,
    },
    #[error(
        "no answer from {addr} to {api} within {secs} s — the broker is stuck or overloaded; \
         check its log, or retry with a smaller --in-flight / --batch-bytes or a larger --timeout"
    )]
    Timeout {
        addr: String,
        api: String,
        secs: u64,
    },
    #[error(
        "{addr} does not serve {api} v{want_min}–v{want_max} (it offers {offered}); ferry bench \
         needs a broker compatible with Kafka 2.1 or newer"
    )]
    Unsupported {
        addr: String,
        api: String,
        want_min: i16,
        want_max: i16,
        offered: String,
    },
    #[error("{api} failed{what}: {error} (Kafka error {code}){message}{hint}")]
    Kafka {
        api: String,
        /// " for topic T partition P", or empty.
        what: String,
        code: i16,
        error: String,
        /// ": the broker's error message", or empty.
        message: String,
        /// " — what to do", or empty.
        hint: String,
    },
    #[error("malformed {api} answer from {addr}: {detail}")]
    Protocol {
        addr: String,
        api: String,
        detail: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Failed(String),
}
