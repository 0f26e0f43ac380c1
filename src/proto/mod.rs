//! The native protocol's message types and framing, shared by the server adapter
//! (`protocol::native`) and the client SDK (`client::native`).
//!
//! `ferry.v1.rs` is prost's output for `proto/ferry.proto`, checked in rather than generated
//! by a build script: `protox` + `prost-build` would add their dependency tree (about a minute
//! of compile on a cold build) to every fresh build for a file that changes rarely. After
//! editing the .proto, regenerate it with `cargo run --manifest-path proto/gen/Cargo.toml --
//! proto src/proto` (pure Rust, no system `protoc`).
//!
//! Framing is protobuf's length-delimited form: a varint byte count, then one message.
//! [`codec`] is pure (no I/O: it checks that a frame is whole and within the size limit before
//! decoding it); [`framed`] reads and writes frames on any async byte stream: a QUIC stream,
//! or a stream of [`mux`], the multiplexing that carries the same streams over one TCP (TLS)
//! connection. [`stream`] is the one stream type both transports' streams become.

pub mod codec;
pub mod framed;
pub mod mux;
pub mod stream;

/// The generated message types of package `ferry.v1`.
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod v1 {
    include!("ferry.v1.rs");
}

/// The ALPN protocol id a native connection negotiates.
pub const ALPN: &[u8] = b"ferry/1";

/// Frame size limit both sides use unless told otherwise (16 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Socket buffer bytes both ends ask for on their UDP socket (the kernel caps it at
/// `net.core.rmem_max` / `wmem_max`). Linux's default, about 200 KiB, fills during a burst
/// whenever the receiving task is not scheduled at once; every datagram dropped then is a QUIC
/// loss that stalls its streams for a retransmission timeout (measured: hundreds of drops per
/// 5 s at 10k msg/s on a loaded machine, p99 latency over 80 ms).
pub const UDP_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// Below this receive buffer a warning names the sysctl to raise.
const UDP_BUFFER_WARN_BYTES: usize = 1024 * 1024;

/// A UDP socket bound to `addr` with [`UDP_BUFFER_BYTES`] buffers (as far as the kernel
/// allows), non-blocking, for a quinn endpoint.
pub fn udp_socket(addr: std::net::SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // A buffer the kernel refuses is not fatal: the socket works, only bursts drop sooner.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_BUFFER_BYTES);
    if let Ok(got) = socket.recv_buffer_size() {
        if got < UDP_BUFFER_WARN_BYTES {
            tracing::warn!(
                bytes = got,
                wanted = UDP_BUFFER_BYTES,
                "the kernel gave the QUIC socket a small receive buffer; bursts will drop \
                 packets and stall native connections (raise net.core.rmem_max)"
            );
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// An endpoint on a [`udp_socket`]: a server when `server` is given, else a client.
pub fn endpoint(
    addr: std::net::SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        udp_socket(addr)?,
        std::sync::Arc::new(quinn::TokioRuntime),
    )
}

/// The rustls crypto provider of both ends: ring, as the TCP listeners use. Its default has no
/// post-quantum key exchange (rustls deprecates it for that); see `tls::provider` for why ring.
#[allow(deprecated)]
pub fn crypto_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
