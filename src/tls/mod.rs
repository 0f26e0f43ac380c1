//! TLS for every listener (Kafka SSL, AMQPS, HTTPS) with rustls: loading the PEM files, the
//! handshake, the client certificate's principal, and reloading certificates at run time.
//!
//! One [`TlsAcceptor`] serves every TLS listener, built from `[tls]`: the server certificate
//! chain and key, and optionally a CA whose client certificates are verified (mTLS). Its rustls
//! configuration sits behind a lock and is swapped whole by [`TlsAcceptor::reload`]; a
//! handshake takes the configuration current when it starts, so a reload never disturbs open
//! connections. A reload that fails (a missing file, a key that does not match the certificate)
//! keeps the configuration that works and says why in the log.
//!
//! The handshake runs in the connection's own task, bounded by `tls.handshake_timeout_ms`;
//! failures (wrong CA, plaintext on a TLS port, a peer that stalls) are counted in
//! `ferry_tls_handshake_failures_total{protocol}` and logged at most once per
//! [`FAILURE_LOG_INTERVAL`] with the number left unlogged, since a scanner can cause thousands.
//!
//! What the connection learns is a [`ConnSecurity`]: whether it is TLS and, for a verified
//! client certificate, its [`Principal`] (the subject in RFC 2253 form and the user name
//! `tls.principal_mapping_rules` maps it to, which Kafka and AMQP EXTERNAL both use). [`Transport`] lets the protocol loops be
//! generic over plaintext and TLS streams while keeping tokio's lock-free split for TCP.

pub mod generate;
mod principal;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Mutex, RwLock};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub use principal::{Principal, PrincipalMapping};

/// A TLS stream as the listeners produce it.
pub type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// How often a failed handshake is logged at most (all are counted).
pub const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// `[tls]`: the certificate and key every TLS listener presents, and client certificates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM file with the server certificate, then any intermediates. Needed by every TLS
    /// listener. Default empty.
    pub cert_file: String,
    /// PEM file with the server certificate's private key (PKCS#8, PKCS#1 or SEC1).
    /// Default empty.
    pub key_file: String,
    /// PEM file with the CA certificates that client certificates are verified against
    /// (mTLS). Default empty: client certificates are not asked for.
    pub ca_file: String,
    /// With `ca_file`: `"requested"` (default, RabbitMQ's `verify_peer` without
    /// `fail_if_no_peer_cert`: a client may connect without a certificate, but one it sends
    /// must verify) or `"required"` (Kafka's `ssl.client.auth=required`).
    pub client_auth: String,
    /// Milliseconds a client gets to finish the TLS handshake. Default 10000.
    pub handshake_timeout_ms: u64,
    /// How often the certificate, key and CA files are checked for changes, which reloads
    /// them (SIGHUP reloads at once). 0 = only on SIGHUP. Default 10000.
    pub reload_check_interval_ms: u64,
    /// How a verified client certificate's subject becomes a user name, for Kafka (principal
    /// `User:<name>`) and AMQP EXTERNAL alike: Kafka's `ssl.principal.mapping.rules` syntax,
    /// e.g. `"RULE:^CN=([^,]*).*$/$1/,DEFAULT"` for the common name. Default `"DEFAULT"`:
    /// the whole subject in RFC 2253 form (`CN=app,O=corp`).
    pub principal_mapping_rules: String,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            cert_file: String::new(),
            key_file: String::new(),
            ca_file: String::new(),
            client_auth: "requested".into(),
            handshake_timeout_ms: 10_000,
            reload_check_interval_ms: 10_000,
            principal_mapping_rules: "DEFAULT".into(),
        }
    }
}

impl TlsSettings {
    /// The first problem with these settings, as (key, message); `needed` says whether a TLS
    /// listener is configured (then the certificate and key must be named).
    pub fn problem(&self, needed: bool) -> Option<(&'static str, &'static str)> {
        if !matches!(self.client_auth.as_str(), "requested" | "required") {
            return Some(("tls.client_auth", "must be \"requested\" or \"required\""));
        }
        if PrincipalMapping::parse(&self.principal_mapping_rules).is_err() {
            return Some((
                "tls.principal_mapping_rules",
                "must be Kafka's ssl.principal.mapping.rules syntax: comma-separated \
                 RULE:pattern/replacement/[LU] and DEFAULT",
            ));
        }
        if self.handshake_timeout_ms == 0 {
            return Some(("tls.handshake_timeout_ms", "must be at least 1"));
        }
        if needed && self.cert_file.is_empty() {
            return Some((
                "tls.cert_file",
                "must name a PEM certificate file when a TLS listener is configured \
                 (`ferry cert generate` makes one for development)",
            ));
        }
        if needed && self.key_file.is_empty() {
            return Some((
                "tls.key_file",
                "must name a PEM private key file when a TLS listener is configured",
            ));
        }
        if self.client_auth == "required" && self.ca_file.is_empty() {
            return Some((
                "tls.client_auth",
                "\"required\" needs tls.ca_file (the CA client certificates are checked against)",
            ));
        }
        None
    }
}

/// Why the TLS files could not be used. Paths appear here (operators read it at start-up and
/// in the log), never in anything sent to a client.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key} {path}: {message}")]
    File {
        key: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error(
        "the certificate in tls.cert_file and the key in tls.key_file do not fit together: {0}"
    )]
    Config(String),
    #[error("tls.principal_mapping_rules: {0}")]
    Mapping(String),
}

/// What a connection knows about its transport and its peer's identity.
#[derive(Clone, Debug, Default)]
pub struct ConnSecurity {
    /// The connection came in on a TLS listener.
    pub tls: bool,
    /// The verified client certificate's identity (mTLS), if the client sent one.
    pub client_cert: Option<Arc<Principal>>,
}

/// A stream the protocol loops can serve: split into halves that move into separate tasks.
/// TCP keeps tokio's lock-free owned halves; TLS, whose reads and writes share one session,
/// uses `tokio::io::split`.
pub trait Transport: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    type Read: AsyncRead + Send + Unpin + 'static;
    type Write: AsyncWrite + Send + Unpin + 'static;
    fn split_halves(self) -> (Self::Read, Self::Write);
    /// The plain TCP socket under a write half, for a zero-copy `sendfile(2)`; `None` when
    /// bytes must go through the stream (TLS encrypts them).
    fn plain_socket(_write: &Self::Write) -> Option<&TcpStream> {
        None
    }
}

impl Transport for TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;
    fn split_halves(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
    fn plain_socket(write: &Self::Write) -> Option<&TcpStream> {
        Some(write.as_ref())
    }
}

impl Transport for TlsStream {
    type Read = tokio::io::ReadHalf<TlsStream>;
    type Write = tokio::io::WriteHalf<TlsStream>;
    fn split_halves(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
}

/// The modification times of the files a configuration was loaded from.
type Stamps = Vec<Option<SystemTime>>;

/// The shared TLS server side of every listener; see the module documentation.
pub struct TlsAcceptor {
    settings: TlsSettings,
    /// `settings.principal_mapping_rules`, parsed once.
    mapping: PrincipalMapping,
    current: RwLock<Arc<ServerConfig>>,
    loaded_stamps: Mutex<Stamps>,
    /// Counts successful loads, so tests and operators can tell a reload happened.
    generation: AtomicU64,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("cert_file", &self.settings.cert_file)
            .field("generation", &self.generation())
            .finish()
    }
}

impl TlsAcceptor {
    /// Loads the files named in `settings`; fails with the reason if any is unusable.
    pub fn load(settings: &TlsSettings) -> Result<Arc<Self>, TlsError> {
        let stamps = file_stamps(settings);
        let config = server_config(settings)?;
        let mapping = PrincipalMapping::parse(&settings.principal_mapping_rules)
            .map_err(|e| TlsError::Mapping(e.to_string()))?;
        Ok(Arc::new(Self {
            mapping,
            settings: settings.clone(),
            current: RwLock::new(Arc::new(config)),
            loaded_stamps: Mutex::new(stamps),
            generation: AtomicU64::new(1),
        }))
    }

    /// How many configurations have been loaded (1 after start, +1 per successful reload).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The rustls configuration new handshakes use now (the native listener builds its QUIC
    /// configuration from it, with its own ALPN).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.current.read().clone()
    }

    /// The user a verified client certificate authenticates, by `tls.principal_mapping_rules`
    /// (for listeners that do their own handshake, as QUIC does); fails if no rule applies.
    pub fn principal(
        &self,
        leaf: &rustls::pki_types::CertificateDer<'_>,
    ) -> Result<Principal, String> {
        Principal::from_der(leaf, &self.mapping)
    }

    /// Whether client certificates are verified (a CA is configured).
    pub fn verifies_clients(&self) -> bool {
        !self.settings.ca_file.is_empty()
    }

    /// Re-reads the files. On success new handshakes use them; on failure the configuration
    /// in use stays and the error is returned (and logged) so the operator can fix the files.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamps = file_stamps(&self.settings);
        match server_config(&self.settings) {
            Ok(config) => {
                *self.current.write() = Arc::new(config);
                *self.loaded_stamps.lock() = stamps;
                let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
                metrics::counter!("ferry_tls_reloads_total", "result" => "ok").increment(1);
                tracing::info!(
                    cert_file = %self.settings.cert_file,
                    generation,
                    "TLS certificates reloaded"
                );
                Ok(())
            }
            Err(e) => {
                // Remember the stamps anyway: a broken file is reported once, not every check.
                *self.loaded_stamps.lock() = stamps;
                metrics::counter!("ferry_tls_reloads_total", "result" => "failed").increment(1);
                tracing::error!(error = %e, "TLS certificate reload failed; keeping the certificates in use");
                Err(e)
            }
        }
    }

    /// Reloads if any of the files changed since the last load; returns whether it tried.
    pub fn reload_if_changed(&self) -> bool {
        let stamps = file_stamps(&self.settings);
        if *self.loaded_stamps.lock() == stamps {
            return false;
        }
        let _ = self.reload();
        true
    }

    /// How often [`reload_if_changed`](Self::reload_if_changed) should run, if at all.
    pub fn reload_check_interval(&self) -> Option<Duration> {
        let ms = self.settings.reload_check_interval_ms;
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    /// Runs the server handshake on an accepted connection, within the handshake timeout.
    /// A failure is counted and logged (rate-limited) and gives `None`: the caller drops the
    /// socket.
    pub async fn accept(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        protocol: &'static str,
    ) -> Option<(TlsStream, ConnSecurity)> {
        let config = self.current.read().clone();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let timeout = Duration::from_millis(self.settings.handshake_timeout_ms);
        let stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                handshake_failed(protocol, peer, &e.to_string());
                return None;
            }
            Err(_) => {
                handshake_failed(protocol, peer, "handshake timed out");
                return None;
            }
        };
        let client_cert = match stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
        {
            None => None,
            Some(leaf) => match Principal::from_der(leaf, &self.mapping) {
                Ok(p) => Some(Arc::new(p)),
                Err(e) => {
                    // A verified certificate that names no user (no mapping rule applies, or
                    // our parser cannot read it) is refused, as Kafka refuses it, rather than
                    // let in as anonymous.
                    tracing::warn!(%peer, protocol, error = %e, "client certificate refused");
                    metrics::counter!("ferry_tls_handshake_failures_total", "protocol" => protocol)
                        .increment(1);
                    return None;
                }
            },
        };
        metrics::counter!("ferry_tls_handshakes_total", "protocol" => protocol).increment(1);
        Some((
            stream,
            ConnSecurity {
                tls: true,
                client_cert,
            },
        ))
    }
}

/// Counts a failed handshake and logs it unless one was logged within the last
/// [`FAILURE_LOG_INTERVAL`].
fn handshake_failed(protocol: &'static str, peer: SocketAddr, reason: &str) {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    static LAST_LOGGED_MS: AtomicU64 = AtomicU64::new(0);
    static UNLOGGED: AtomicU64 = AtomicU64::new(0);
    metrics::counter!("ferry_tls_handshake_failures_total", "protocol" => protocol).increment(1);
    // +1 so the first failure (at 0 ms) is logged.
    let now = EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1;
    let last = LAST_LOGGED_MS.load(Ordering::Relaxed);
    let due = last == 0 || now.saturating_sub(last) >= FAILURE_LOG_INTERVAL.as_millis() as u64;
    if due
        && LAST_LOGGED_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let unlogged = UNLOGGED.swap(0, Ordering::Relaxed);
        tracing::warn!(
            protocol,
            %peer,
            reason,
            unlogged_failures = unlogged,
            "TLS handshake failed"
        );
    } else {
        UNLOGGED.fetch_add(1, Ordering::Relaxed);
    }
}

fn file_stamps(settings: &TlsSettings) -> Stamps {
    [&settings.cert_file, &settings.key_file, &settings.ca_file]
        .iter()
        .map(|path| {
            (!path.is_empty())
                .then(|| std::fs::metadata(path).and_then(|m| m.modified()).ok())
                .flatten()
        })
        .collect()
}

fn read(key: &'static str, path: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        key,
        path: PathBuf::from(path),
        message: io_reason(&e),
    })
}

fn certificates(key: &'static str, path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(key, path)?;
    let invalid = |message: String| TlsError::File {
        key,
        path: PathBuf::from(path),
        message,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(
            "holds no PEM certificate (BEGIN CERTIFICATE)".into(),
        ));
    }
    Ok(certs)
}

fn private_key(path: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read("tls.key_file", path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::File {
        key: "tls.key_file",
        path: PathBuf::from(path),
        message: format!("holds no usable PEM private key: {e}"),
    })
}

/// Well-known locations of the system's CA bundle (Debian/Ubuntu, RHEL/Fedora, Alpine).
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// A client configuration trusting the CA certificates in `ca_file` (a PEM file, as curl's
/// `--cacert`), or without one the system's CA bundle, for Ferry's own clients (the admin
/// CLI over https://).
pub fn client_config(
    ca_file: Option<&std::path::Path>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    let (key, path) = match ca_file {
        Some(path) => ("--cacert", path.display().to_string()),
        None => match SYSTEM_CA_BUNDLES
            .iter()
            .find(|p| std::path::Path::new(p).exists())
        {
            Some(path) => ("the system CA bundle", (*path).to_string()),
            None => {
                return Err(TlsError::File {
                    key: "--cacert",
                    path: PathBuf::from("(none given)"),
                    message: "no system CA bundle found; pass the CA certificate with --cacert"
                        .into(),
                })
            }
        },
    };
    let (added, _) = roots.add_parsable_certificates(certificates(key, &path)?);
    if added == 0 {
        return Err(TlsError::File {
            key,
            path: PathBuf::from(path),
            message: "holds no usable CA certificate".into(),
        });
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The ring provider: built with a small C/asm step and no system libraries or cmake.
/// rustls 0.23.48 deprecates it because it lacks post-quantum key exchange (X25519MLKEM768);
/// the classical suites it has are what Kafka and RabbitMQ clients negotiate today, and
/// aws-lc-rs (which has it) costs a far longer native build. Revisit when clients ask for PQ.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(settings: &TlsSettings) -> Result<ServerConfig, TlsError> {
    let chain = certificates("tls.cert_file", &settings.cert_file)?;
    let key = private_key(&settings.key_file)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = if settings.ca_file.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        for ca in certificates("tls.ca_file", &settings.ca_file)? {
            roots.add(ca).map_err(|e| TlsError::File {
                key: "tls.ca_file",
                path: PathBuf::from(&settings.ca_file),
                message: format!("not a usable CA certificate: {e}"),
            })?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
        let verifier = if settings.client_auth == "required" {
            verifier
        } else {
            verifier.allow_unauthenticated()
        };
        let verifier = verifier.build().map_err(|e| TlsError::File {
            key: "tls.ca_file",
            path: PathBuf::from(&settings.ca_file),
            message: e.to_string(),
        })?;
        builder.with_client_cert_verifier(verifier)
    };
    builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))
}

/// An I/O error in words, without Rust's "(os error N)".
fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => {
            let text = e.to_string();
            text.find(" (os error")
                .map_or(text.clone(), |i| text[..i].to_string())
        }
    }
}
