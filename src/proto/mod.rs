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
//! decoding it); [`framed`] reads and writes frames on any async byte stream (a QUIC stream).

pub mod codec;
pub mod framed;

/// The generated message types of package `ferry.v1`.
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod v1 {
    include!("ferry.v1.rs");
}

/// The ALPN protocol id a native connection negotiates.
pub const ALPN: &[u8] = b"ferry/1";

/// Frame size limit both sides use unless told otherwise (16 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// The rustls crypto provider of both ends: ring, as the TCP listeners use. Its default has no
/// post-quantum key exchange (rustls deprecates it for that); see `tls::provider` for why ring.
#[allow(deprecated)]
pub fn crypto_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
