//! The SDK's connection: one QUIC connection, or one TLS-over-TCP connection multiplexing
//! streams ([`crate::proto::mux`]) for networks that block UDP ([`Transport::Tcp`]),
//! re-established with backoff when it drops, over which every call opens its own stream
//! (publishes share one: [`super::pipe`]).
//! Everything above this file sees [`SendStream`] / [`RecvStream`] and works the same over
//! both.
//!
//! The server certificate is checked against a pinned SHA-256 fingerprint (what the broker
//! logs for its self-signed certificate), or against CA certificates in a PEM file. A client
//! certificate (mTLS) is presented when [`ConnectOptions::client_certificate`] names one; with
//! [`Mechanism::External`] it is also the login (the user is its CN).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::sync::Mutex;

use super::pipe::PublishPipe;
use crate::proto::framed::{self, FrameReader};
use crate::proto::mux;
pub use crate::proto::stream::{RecvStream, SendStream};
use crate::proto::v1::{self, request, response, ErrorCode};

/// How often an idle connection pings the broker, so its idle timeout never closes it (QUIC's
/// keep-alive and the TCP mux's PING frame alike).
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// Which transport carries the native protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// QUIC over UDP (`native_listen`, 7447 by default).
    #[default]
    Quic,
    /// TLS over TCP with streams multiplexed by id (`native_tcp_listen`, 7448 by convention),
    /// for networks that block UDP.
    Tcp,
}

impl Transport {
    /// Splits an address with an optional scheme: `quic://HOST:PORT` or `tcp://HOST:PORT`
    /// (`ferry://` and `ferry+tcp://` are accepted as the same); no scheme means QUIC.
    pub fn split_url(url: &str) -> Result<(Transport, &str), NativeClientError> {
        match url.split_once("://") {
            None => Ok((Transport::Quic, url)),
            Some(("quic" | "ferry", rest)) => Ok((Transport::Quic, rest.trim_end_matches('/'))),
            Some(("tcp" | "ferry+tcp", rest)) => Ok((Transport::Tcp, rest.trim_end_matches('/'))),
            Some((scheme, _)) => Err(NativeClientError::Config(format!(
                "unknown scheme `{scheme}://` (quic:// or tcp://)"
            ))),
        }
    }
}

impl std::str::FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "quic" => Ok(Transport::Quic),
            "tcp" => Ok(Transport::Tcp),
            other => Err(format!("unknown transport `{other}` (quic or tcp)")),
        }
    }
}

/// How the client decides to trust the broker's certificate.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The SHA-256 fingerprint the broker logs (`AB:CD:...`, case and colons optional).
    Fingerprint(String),
    /// CA certificates (PEM) the broker's certificate must chain to.
    CaFile(PathBuf),
    /// Pin the (first) certificate in this PEM file, e.g. the broker's self-signed
    /// `<data_dir>/native/cert.pem`.
    CertFile(PathBuf),
}

/// Backoff between connection attempts: `initial`, doubling up to `max`, `attempts` in all.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            attempts: 10,
        }
    }
}

impl Backoff {
    /// The wait before attempt `n` (1 = the first retry).
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 2_u32.saturating_pow(n.saturating_sub(1).min(16));
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub addr: SocketAddr,
    /// The name the certificate must carry (checked with [`Trust::CaFile`]). Default `localhost`.
    pub server_name: String,
    pub trust: Trust,
    pub user: String,
    pub password: String,
    /// Shown in the broker's logs.
    pub client_name: String,
    pub backoff: Backoff,
    /// Per attempt. Default 5 s.
    pub connect_timeout: Duration,
    pub max_frame_bytes: usize,
    /// A client certificate to present (PEM certificate chain file, PEM key file), for a
    /// broker that verifies them (`tls.ca_file`). Default none.
    pub client_certificate: Option<(PathBuf, PathBuf)>,
    /// How to log in. Default [`Mechanism::Plain`] with `user` and `password`.
    pub mechanism: Mechanism,
    /// QUIC (default) or TCP; `addr` must be the matching listener.
    pub transport: Transport,
}

/// The login mechanism of the connection's `Authenticate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mechanism {
    /// `user` and `password` against the broker's user store.
    #[default]
    Plain,
    /// The verified client certificate is the credential; the user is its CN (RabbitMQ's
    /// EXTERNAL). Needs [`ConnectOptions::client_certificate`].
    External,
}

impl Mechanism {
    fn wire_name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::External => "EXTERNAL",
        }
    }
}

impl ConnectOptions {
    pub fn new(addr: SocketAddr, trust: Trust, user: &str, password: &str) -> Self {
        Self {
            addr,
            server_name: "localhost".into(),
            trust,
            user: user.into(),
            password: password.into(),
            client_name: "ferry-sdk".into(),
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(5),
            max_frame_bytes: crate::proto::DEFAULT_MAX_FRAME_BYTES,
            client_certificate: None,
            mechanism: Mechanism::Plain,
            transport: Transport::Quic,
        }
    }

    /// Options for `url`: `quic://HOST:PORT`, `tcp://HOST:PORT` or a bare `HOST:PORT` (QUIC).
    /// A host name is resolved now (the first address); the certificate is checked against
    /// it with [`Trust::CaFile`].
    pub fn from_url(
        url: &str,
        trust: Trust,
        user: &str,
        password: &str,
    ) -> Result<Self, NativeClientError> {
        use std::net::ToSocketAddrs;
        let (transport, hostport) = Transport::split_url(url)?;
        let addr = hostport
            .to_socket_addrs()
            .map_err(|e| NativeClientError::Config(format!("{hostport}: {e}")))?
            .next()
            .ok_or_else(|| NativeClientError::Config(format!("{hostport}: no address")))?;
        let host = crate::client::transport::host_of(hostport)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let mut options = Self::new(addr, trust, user, password);
        options.transport = transport;
        if host.parse::<std::net::IpAddr>().is_err() {
            options.server_name = host.to_string();
        }
        Ok(options)
    }

    /// The same options on another transport (and its listener's address).
    pub fn with_transport(mut self, transport: Transport, addr: SocketAddr) -> Self {
        self.transport = transport;
        self.addr = addr;
        self
    }
}

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NativeClientError {
    /// The broker answered with an error.
    #[error("{code:?}: {message}")]
    Server { code: ErrorCode, message: String },
    /// The broker refused the message because it does not match its schema
    /// (`SCHEMA_REJECTED`: the destination validates, see docs/schemas.md). `reason` is one of
    /// `wire_format`, `unknown_schema`, `wrong_subject`, `decode`, `content_type`,
    /// `no_registry`; `index` is the refused message's position in a batch (0 otherwise).
    /// Not retried: the same message would be refused again.
    #[error("schema rejected ({reason}): {message}")]
    SchemaRejected {
        reason: String,
        message: String,
        index: u32,
    },
    /// The connection or stream failed; the call may or may not have reached the broker.
    #[error("connection: {0}")]
    Connection(String),
    /// No reply within the time asked for.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The event could not be encoded or decoded.
    #[error("codec: {0}")]
    Codec(String),
    /// The client's own settings are unusable (certificate file, fingerprint).
    #[error("configuration: {0}")]
    Config(String),
}

impl NativeClientError {
    /// The broker's error code, if it answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Server { code, .. } => Some(*code),
            Self::SchemaRejected { .. } => Some(ErrorCode::SchemaRejected),
            _ => None,
        }
    }

    pub(super) fn connection(e: impl std::fmt::Display) -> Self {
        Self::Connection(e.to_string())
    }
}

/// A connection to a broker's native listener; cheap to clone and share.
#[derive(Clone)]
pub struct NativeConnection {
    inner: Arc<Inner>,
}

struct Inner {
    options: ConnectOptions,
    /// QUIC only; `None` over TCP.
    endpoint: Option<quinn::Endpoint>,
    /// TCP only: the TLS configuration of every attempt.
    tcp_tls: Option<Arc<rustls::ClientConfig>>,
    conn: Mutex<Option<Conn>>,
    /// The publish stream and the connection it runs on. A sync lock: taken per publish, never
    /// held across an await (a tokio mutex here made every publish queue behind the last).
    pipe: parking_lot::Mutex<Option<(Conn, PublishPipe)>>,
    /// Held while a publish stream is being opened, so concurrent publishes open one.
    pipe_opening: Mutex<()>,
}

/// One established connection of either transport.
#[derive(Clone)]
enum Conn {
    Quic(quinn::Connection),
    Tcp(mux::Session),
}

impl Conn {
    fn is_open(&self) -> bool {
        match self {
            Conn::Quic(c) => c.close_reason().is_none(),
            Conn::Tcp(s) => s.close_reason().is_none(),
        }
    }

    async fn open_bi(&self) -> Result<(SendStream, RecvStream), NativeClientError> {
        match self {
            Conn::Quic(c) => c
                .open_bi()
                .await
                .map(|(s, r)| (s.into(), r.into()))
                .map_err(NativeClientError::connection),
            Conn::Tcp(s) => s
                .open()
                .await
                .map(|(s, r)| (s.into(), r.into()))
                .map_err(NativeClientError::connection),
        }
    }

    fn close(&self, reason: &str) {
        match self {
            Conn::Quic(c) => c.close(0_u32.into(), reason.as_bytes()),
            Conn::Tcp(s) => s.close(mux::frame::code::NORMAL, reason),
        }
    }
}

/// Connects and authenticates, retrying per `options.backoff`.
pub async fn connect(options: ConnectOptions) -> Result<NativeConnection, NativeClientError> {
    let (endpoint, tcp_tls) = match options.transport {
        Transport::Quic => (Some(client_endpoint(&options)?.0), None),
        Transport::Tcp => (None, Some(Arc::new(rustls_config(&options)?))),
    };
    let c = NativeConnection {
        inner: Arc::new(Inner {
            options,
            endpoint,
            tcp_tls,
            conn: Mutex::new(None),
            pipe: parking_lot::Mutex::new(None),
            pipe_opening: Mutex::new(()),
        }),
    };
    c.connection().await?;
    Ok(c)
}

/// A QUIC connection to the native listener that has not authenticated, for tools and tests
/// that speak the protocol frame by frame (one attempt, no retry).
pub async fn open_raw(options: &ConnectOptions) -> Result<quinn::Connection, NativeClientError> {
    let (endpoint, _) = client_endpoint(options)?;
    let connecting = endpoint
        .connect(options.addr, &options.server_name)
        .map_err(NativeClientError::connection)?;
    tokio::time::timeout(options.connect_timeout, connecting)
        .await
        .map_err(|_| NativeClientError::Timeout(options.connect_timeout))?
        .map_err(NativeClientError::connection)
}

/// A TLS connection to the native TCP listener (ALPN `ferry/1` negotiated) with no stream
/// multiplexing started, for tests that speak the TCP framing byte by byte (one attempt).
pub async fn open_raw_tcp(
    options: &ConnectOptions,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, NativeClientError> {
    tcp_handshake(options, Arc::new(rustls_config(options)?)).await
}

async fn tcp_handshake(
    o: &ConnectOptions,
    tls: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, NativeClientError> {
    let tcp = crate::client::tcp_connect(o.addr, o.connect_timeout)
        .await
        .map_err(NativeClientError::Connection)?;
    let name = ServerName::try_from(o.server_name.clone())
        .map_err(|_| NativeClientError::Config(format!("bad server name {}", o.server_name)))?;
    let handshake = tokio_rustls::TlsConnector::from(tls).connect(name, tcp);
    let stream = tokio::time::timeout(o.connect_timeout, handshake)
        .await
        .map_err(|_| NativeClientError::Timeout(o.connect_timeout))?
        .map_err(NativeClientError::connection)?;
    if stream.get_ref().1.alpn_protocol() != Some(crate::proto::ALPN) {
        return Err(NativeClientError::Connection(
            "the server did not negotiate ALPN ferry/1: is this a native_tcp_listen port?".into(),
        ));
    }
    Ok(stream)
}

fn client_endpoint(
    options: &ConnectOptions,
) -> Result<(quinn::Endpoint, quinn::ClientConfig), NativeClientError> {
    let client = client_config(options)?;
    let bind: SocketAddr = if options.addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0_u16; 8], 0))
    };
    let mut endpoint = crate::proto::endpoint(bind, None).map_err(NativeClientError::connection)?;
    endpoint.set_default_client_config(client.clone());
    Ok((endpoint, client))
}

impl NativeConnection {
    /// The live connection, (re)connecting with backoff if there is none.
    async fn connection(&self) -> Result<Conn, NativeClientError> {
        let mut slot = self.inner.conn.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| c.is_open()) {
            return Ok(c.clone());
        }
        let o = &self.inner.options;
        let mut last = NativeClientError::Connection("not attempted".into());
        for attempt in 0..o.backoff.attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(o.backoff.delay(attempt)).await;
            }
            match self.open().await {
                Ok(c) => {
                    *slot = Some(c.clone());
                    return Ok(c);
                }
                // A refused login does not get better by retrying.
                Err(e @ NativeClientError::Server { .. }) => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn open(&self) -> Result<Conn, NativeClientError> {
        let o = &self.inner.options;
        let conn = match (&self.inner.endpoint, &self.inner.tcp_tls) {
            (Some(endpoint), _) => {
                let connecting = endpoint
                    .connect(o.addr, &o.server_name)
                    .map_err(NativeClientError::connection)?;
                let conn = tokio::time::timeout(o.connect_timeout, connecting)
                    .await
                    .map_err(|_| NativeClientError::Timeout(o.connect_timeout))?
                    .map_err(NativeClientError::connection)?;
                Conn::Quic(conn)
            }
            (None, Some(tls)) => {
                let stream = tcp_handshake(o, tls.clone()).await?;
                Conn::Tcp(mux::Session::client(stream, KEEP_ALIVE))
            }
            (None, None) => {
                return Err(NativeClientError::Config("no transport configured".into()))
            }
        };
        let auth = v1::Request {
            op: Some(request::Op::Authenticate(v1::Authenticate {
                user: o.user.clone(),
                password: o.password.clone(),
                client_name: o.client_name.clone(),
                mechanism: o.mechanism.wire_name().into(),
            })),
        };
        let answer = unary_on(&conn, &auth, o.max_frame_bytes).await;
        match answer {
            Ok(response::Result::Authenticated(_)) => Ok(conn),
            Ok(other) => {
                conn.close("unexpected answer to Authenticate");
                Err(unexpected(&other))
            }
            Err(e) => {
                conn.close("login failed");
                Err(e)
            }
        }
    }

    /// Forgets the current connection (the next call reconnects). For tests of reconnects.
    pub async fn drop_connection(&self) {
        if let Some(c) = self.inner.conn.lock().await.take() {
            c.close("closed by the client");
        }
    }

    /// Closes the live connection under the SDK's feet, as a network failure would (the next
    /// call notices and reconnects), whichever the transport. For tests.
    pub async fn break_connection(&self) {
        if let Some(c) = self.inner.conn.lock().await.as_ref() {
            c.close("broken by a test");
        }
    }

    /// The live QUIC connection, for tests that kill it (`None` over TCP).
    pub async fn quic(&self) -> Option<quinn::Connection> {
        match self.inner.conn.lock().await.as_ref() {
            Some(Conn::Quic(c)) => Some(c.clone()),
            _ => None,
        }
    }

    /// The transport this connection uses.
    pub fn transport(&self) -> Transport {
        self.inner.options.transport
    }

    /// One request, one response. A broker error is [`NativeClientError::Server`].
    pub async fn call(&self, req: &v1::Request) -> Result<response::Result, NativeClientError> {
        let conn = self.connection().await?;
        unary_on(&conn, req, self.inner.options.max_frame_bytes).await
    }

    /// A `Publish` or `PublishBatch` on the connection's publish stream (opened on first use
    /// and again after it failed): answered in order with every other publish of this
    /// connection, without a stream of its own. A broker error is [`NativeClientError::Server`].
    pub async fn call_publish(
        &self,
        req: &v1::Request,
    ) -> Result<response::Result, NativeClientError> {
        let frame = crate::proto::codec::encode(req);
        self.publish_pipe().await?.call(frame).await
    }

    async fn publish_pipe(&self) -> Result<PublishPipe, NativeClientError> {
        let live = || {
            self.inner
                .pipe
                .lock()
                .as_ref()
                .filter(|(conn, pipe)| conn.is_open() && pipe.is_open())
                .map(|(_, pipe)| pipe.clone())
        };
        if let Some(pipe) = live() {
            return Ok(pipe);
        }
        let _opening = self.inner.pipe_opening.lock().await;
        if let Some(pipe) = live() {
            return Ok(pipe);
        }
        let conn = self.connection().await?;
        let (send, recv) = conn.open_bi().await?;
        let pipe = PublishPipe::start(send, recv, self.inner.options.max_frame_bytes);
        *self.inner.pipe.lock() = Some((conn, pipe.clone()));
        Ok(pipe)
    }

    /// Opens a bare stream for a client that writes its own frames (`ferry bench native`
    /// pipelines pre-encoded publishes on one, as a publish stream allows).
    pub async fn open_stream(
        &self,
    ) -> Result<(SendStream, FrameReader<RecvStream>), NativeClientError> {
        let conn = self.connection().await?;
        let (send, recv) = conn.open_bi().await?;
        Ok((
            send,
            FrameReader::new(recv, self.inner.options.max_frame_bytes),
        ))
    }

    /// Opens a subscription stream: sends `req`, waits for `Subscribed`.
    pub async fn open_subscription(
        &self,
        req: &v1::Request,
    ) -> Result<(SendStream, FrameReader<RecvStream>), NativeClientError> {
        let conn = self.connection().await?;
        let (mut send, recv) = conn.open_bi().await?;
        framed::write(&mut send, req)
            .await
            .map_err(NativeClientError::connection)?;
        let mut reader = FrameReader::new(recv, self.inner.options.max_frame_bytes);
        match read_result(&mut reader).await? {
            response::Result::Subscribed(_) => Ok((send, reader)),
            other => Err(unexpected(&other)),
        }
    }

    pub fn options(&self) -> &ConnectOptions {
        &self.inner.options
    }
}

/// Reads one response; an error response becomes [`NativeClientError::Server`].
pub(crate) async fn read_result(
    reader: &mut FrameReader<RecvStream>,
) -> Result<response::Result, NativeClientError> {
    let response: v1::Response = reader
        .next()
        .await
        .map_err(NativeClientError::connection)?
        .ok_or_else(|| {
            NativeClientError::Connection("the stream ended without an answer".into())
        })?;
    match response.result {
        Some(response::Result::Error(e)) => Err(server_error(e)),
        Some(r) => Ok(r),
        None => Err(NativeClientError::Codec(
            "a response with no result this client knows".into(),
        )),
    }
}

/// A broker's error answer as the SDK's error: schema refusals get their own variant.
fn server_error(e: v1::Error) -> NativeClientError {
    match ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Internal) {
        ErrorCode::SchemaRejected => NativeClientError::SchemaRejected {
            reason: e.schema_reason,
            message: e.message,
            index: e.message_index,
        },
        code => NativeClientError::Server {
            code,
            message: e.message,
        },
    }
}

async fn unary_on(
    conn: &Conn,
    req: &v1::Request,
    max_frame_bytes: usize,
) -> Result<response::Result, NativeClientError> {
    let (mut send, recv) = conn.open_bi().await?;
    framed::write(&mut send, req)
        .await
        .map_err(NativeClientError::connection)?;
    let _ = send.finish();
    read_result(&mut FrameReader::new(recv, max_frame_bytes)).await
}

pub(crate) fn unexpected(r: &response::Result) -> NativeClientError {
    NativeClientError::Codec(format!("unexpected response {r:?}"))
}

/// The rustls configuration both transports use: trust per [`Trust`], the client
/// certificate, TLS 1.3, ALPN `ferry/1`.
fn rustls_config(o: &ConnectOptions) -> Result<rustls::ClientConfig, NativeClientError> {
    let provider = crate::proto::crypto_provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NativeClientError::Config(e.to_string()))?;
    let pinned = match &o.trust {
        Trust::Fingerprint(fp) => Some(normalize(fp)),
        Trust::CertFile(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                NativeClientError::Config(format!("reading {}: {e}", path.display()))
            })?;
            let cert = CertificateDer::pem_slice_iter(&pem)
                .next()
                .ok_or_else(|| {
                    NativeClientError::Config(format!("no certificate in {}", path.display()))
                })?
                .map_err(|e| NativeClientError::Config(e.to_string()))?;
            Some(sha256_hex(&cert))
        }
        Trust::CaFile(_) => None,
    };
    let verifying = match (&o.trust, pinned) {
        (_, Some(fingerprint)) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                fingerprint,
                provider,
            })),
        (Trust::CaFile(path), None) => {
            let pem = std::fs::read(path)
                .map_err(|e| NativeClientError::Config(format!("reading the CA file: {e}")))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| NativeClientError::Config(e.to_string()))?;
                roots
                    .add(cert)
                    .map_err(|e| NativeClientError::Config(e.to_string()))?;
            }
            builder.with_root_certificates(roots)
        }
        (_, None) => {
            return Err(NativeClientError::Config(
                "no way to trust the server".into(),
            ))
        }
    };
    let mut tls = match &o.client_certificate {
        None => verifying.with_no_client_auth(),
        Some((cert_file, key_file)) => {
            let config = |what: &str, e: String| NativeClientError::Config(format!("{what}: {e}"));
            let chain = CertificateDer::pem_file_iter(cert_file)
                .map_err(|e| config("client certificate", e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| config("client certificate", e.to_string()))?;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key_file)
                .map_err(|e| config("client key", e.to_string()))?;
            verifying
                .with_client_auth_cert(chain, key)
                .map_err(|e| config("client certificate", e.to_string()))?
        }
    };
    tls.alpn_protocols = vec![crate::proto::ALPN.to_vec()];
    Ok(tls)
}

fn client_config(o: &ConnectOptions) -> Result<quinn::ClientConfig, NativeClientError> {
    let tls = rustls_config(o)?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| NativeClientError::Config(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// SHA-256 of a DER certificate as upper-case hex without separators.
fn sha256_hex(cert: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    digest.as_ref().iter().map(|b| format!("{b:02X}")).collect()
}

fn normalize(fingerprint: &str) -> String {
    fingerprint
        .chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Accepts exactly the certificate with the pinned fingerprint (signatures still verified).
#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = sha256_hex(end_entity);
        if seen == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "server certificate fingerprint {seen} is not the pinned one"
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
