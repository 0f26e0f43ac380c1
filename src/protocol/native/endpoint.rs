//! The QUIC endpoint: its certificate and its transport limits.
//!
//! The certificate is the TLS listeners' (`tls.cert_file` / `tls.key_file`) when they are set;
//! otherwise a self-signed one for `localhost` is generated at first start and kept in
//! `<data_dir>/native/` so clients that pinned it keep working across restarts. Its SHA-256
//! fingerprint is logged either way: that is what a client pins.
//!
//! With `tls.cert_file` the QUIC configuration is built from the broker's shared
//! [`TlsAcceptor`](crate::tls::TlsAcceptor) configuration (the one every TLS listener uses, with
//! ALPN `ferry/1` added), so the native listener verifies client certificates against
//! `tls.ca_file` as `tls.client_auth` says, and takes reloaded certificates (SIGHUP, file
//! change) for new connections: [`server_config`] is rebuilt and swapped into the endpoint.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::NativeSettings;
use crate::tls::TlsSettings;

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("native listener certificate: {0}")]
    Certificate(String),
    #[error("native listener: {0}")]
    Config(String),
    #[error("cannot bind native_listen {addr} (UDP): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// [`Identity::origin`] of the certificate named by `tls.cert_file`.
pub const CONFIGURED: &str = "tls.cert_file";

/// A certificate chain and its key, with the leaf's SHA-256 fingerprint (hex, colon-separated).
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub fingerprint: String,
    /// Where it came from, for the log.
    pub origin: &'static str,
}

/// The certificate the native listener presents (see the module docs).
pub fn identity(tls: &TlsSettings, data_dir: &Path) -> Result<Identity, EndpointError> {
    let err = |m: String| EndpointError::Certificate(m);
    let (cert_pem, key_pem, origin) = if !tls.cert_file.is_empty() && !tls.key_file.is_empty() {
        let cert = std::fs::read(&tls.cert_file)
            .map_err(|e| err(format!("reading tls.cert_file: {e}")))?;
        let key =
            std::fs::read(&tls.key_file).map_err(|e| err(format!("reading tls.key_file: {e}")))?;
        (cert, key, CONFIGURED)
    } else {
        let dir = data_dir.join("native");
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        if !cert_path.exists() || !key_path.exists() {
            let generated = rcgen::generate_simple_self_signed(vec![
                "localhost".to_string(),
                "127.0.0.1".to_string(),
                "::1".to_string(),
            ])
            .map_err(|e| err(format!("generating a self-signed certificate: {e}")))?;
            std::fs::create_dir_all(&dir)
                .map_err(|e| err(format!("creating the certificate directory: {e}")))?;
            write_private(&key_path, generated.signing_key.serialize_pem().as_bytes())
                .map_err(|e| err(format!("writing the generated key: {e}")))?;
            std::fs::write(&cert_path, generated.cert.pem())
                .map_err(|e| err(format!("writing the generated certificate: {e}")))?;
        }
        let cert = std::fs::read(&cert_path)
            .map_err(|e| err(format!("reading the generated certificate: {e}")))?;
        let key =
            std::fs::read(&key_path).map_err(|e| err(format!("reading the generated key: {e}")))?;
        (cert, key, "self-signed (data dir)")
    };
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("not a PEM certificate: {e}")))?;
    let leaf = chain
        .first()
        .ok_or_else(|| err("no certificate in the PEM file".into()))?;
    let fingerprint = fingerprint(leaf);
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| err(format!("no usable PEM private key: {e}")))?;
    Ok(Identity {
        chain,
        key,
        fingerprint,
        origin,
    })
}

/// SHA-256 of a DER certificate as colon-separated upper-case hex (what `openssl x509
/// -fingerprint -sha256` prints).
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

/// Transport limits both ends use: many concurrent streams, an idle timeout.
pub fn transport(settings: &NativeSettings) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(settings.max_concurrent_streams.into());
    // Clients never need server-initiated unidirectional streams.
    t.max_concurrent_uni_streams(0_u32.into());
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_millis(settings.idle_timeout_ms))
    {
        t.max_idle_timeout(Some(idle));
    }
    t
}

/// Binds the QUIC endpoint on `addr` with `identity` (no client certificates).
pub fn bind(
    addr: SocketAddr,
    identity: Identity,
    settings: &NativeSettings,
) -> Result<quinn::Endpoint, EndpointError> {
    let provider = crate::proto::crypto_provider();
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| EndpointError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)
        .map_err(|e| EndpointError::Certificate(e.to_string()))?;
    bind_with(addr, &tls, settings)
}

/// Binds the QUIC endpoint on `addr` with a TLS listener's rustls configuration.
pub fn bind_with(
    addr: SocketAddr,
    tls: &rustls::ServerConfig,
    settings: &NativeSettings,
) -> Result<quinn::Endpoint, EndpointError> {
    crate::proto::endpoint(addr, Some(server_config(tls, settings)?))
        .map_err(|source| EndpointError::Bind { addr, source })
}

/// The QUIC server configuration for a rustls configuration: the same certificates and
/// client verification, ALPN `ferry/1` (QUIC negotiates TLS 1.3 only, whatever `tls` allows).
pub fn server_config(
    tls: &rustls::ServerConfig,
    settings: &NativeSettings,
) -> Result<quinn::ServerConfig, EndpointError> {
    let mut tls = tls.clone();
    tls.alpn_protocols = vec![crate::proto::ALPN.to_vec()];
    // QUIC allows no other early-data size than 0 or u32::MAX; 0-RTT is not offered.
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| EndpointError::Config(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport(settings)));
    Ok(server)
}
