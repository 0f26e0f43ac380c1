//! `amqps://` remotes: AMQP 0-9-1 over TLS for the bridge's lapin connections.
//!
//! lapin is built without its TLS features: they bring a second TLS stack (aws-lc or a
//! platform verifier through `rustls-connector`) next to the rustls + ring one Ferry's
//! listeners use, and no way to turn verification off or choose the SNI name. So the bridge
//! opens the stream itself, TCP then a tokio-rustls handshake with ring, and hands it to
//! lapin's `Connection::connector`. lapin wants the stream type of its runtime kit, so
//! [`TlsKit`] is tokio's kit (executor, timers) with a stream type that is either of ours.
//!
//! The URI takes the TLS query parameters of RabbitMQ's shovel and Erlang client URIs:
//! `cacertfile` (PEM CA certificates to trust; default: the system CA bundle), `certfile` +
//! `keyfile` (a client certificate, PEM), `verify` (`verify_peer`, the default, or
//! `verify_none`, which still checks handshake signatures but accepts any certificate), and
//! `server_name_indication` (the name sent and verified instead of the URI's host, or
//! `disable` to send none and verify the host). Files are read at each connect, so renewed
//! certificates are picked up at the next reconnect, and a missing one shows as the bridge's
//! blocked reason.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_rs::traits::{Executor, Reactor, RuntimeKit};
use async_rs::util::Task;
use lapin::tcp::AsyncTcpStream;
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead as TokioRead, AsyncWrite as TokioWrite, ReadBuf};

/// Longest TCP connect plus TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The system CA bundles tried when no `cacertfile` is given (Debian, RHEL, others).
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The TLS settings of one `amqps://` URI.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TlsParams {
    pub cacertfile: Option<String>,
    pub certfile: Option<String>,
    pub keyfile: Option<String>,
    pub verify_peer: bool,
    /// `None`: the URI's host; `Some(None)`: SNI disabled; `Some(Some(name))`: that name.
    pub server_name: Option<Option<String>>,
}

/// An `amqps://` URI split into what lapin parses (TLS parameters removed) and the TLS
/// settings, plus the host and port to dial.
#[derive(Clone, Debug)]
pub struct AmqpsUri {
    pub lapin_uri: String,
    pub host: String,
    pub port: u16,
    pub tls: TlsParams,
}

const TLS_KEYS: &[&str] = &[
    "cacertfile",
    "certfile",
    "keyfile",
    "verify",
    "server_name_indication",
    "fail_if_no_peer_cert",
    "depth",
];

/// Parses an `amqps://` URI; the error names what is wrong (never the password).
pub fn parse(uri: &str) -> Result<AmqpsUri, String> {
    let rest = uri
        .strip_prefix("amqps://")
        .ok_or_else(|| "not an amqps:// URI".to_string())?;
    let (base, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut tls = TlsParams {
        verify_peer: true,
        ..TlsParams::default()
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if !TLS_KEYS.contains(&k) {
            kept.push(pair);
            continue;
        }
        let v = super::definition::percent_decode(v)
            .ok_or_else(|| format!("query parameter {k}: bad %-escape"))?;
        match k {
            "cacertfile" => tls.cacertfile = Some(v),
            "certfile" => tls.certfile = Some(v),
            "keyfile" => tls.keyfile = Some(v),
            "verify" => {
                tls.verify_peer = match v.as_str() {
                    "verify_peer" => true,
                    "verify_none" => false,
                    other => {
                        return Err(format!("verify={other} is not verify_peer or verify_none"))
                    }
                }
            }
            "server_name_indication" => {
                tls.server_name = Some(if v == "disable" { None } else { Some(v) })
            }
            // Accepted for compatibility: a client always needs the server's certificate,
            // and rustls bounds the chain itself.
            _ => {}
        }
    }
    if tls.certfile.is_some() != tls.keyfile.is_some() {
        return Err("certfile and keyfile go together".into());
    }
    let authority = base.split(['/']).next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let port_of = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("port '{p}' is not a number"))
    };
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        let (h, after) = bracketed
            .split_once(']')
            .ok_or("an IPv6 host needs its closing ]")?;
        match after.strip_prefix(':') {
            Some(p) => (h, port_of(p)?),
            None => (h, 5671),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, port_of(p)?),
            None => (hostport, 5671),
        }
    };
    if host.is_empty() {
        return Err("amqps:// needs a host".into());
    }
    let lapin_uri = if kept.is_empty() {
        format!("amqps://{base}")
    } else {
        format!("amqps://{base}?{}", kept.join("&"))
    };
    lapin_uri
        .parse::<AMQPUri>()
        .map_err(|e| format!("does not parse: {e}"))?;
    Ok(AmqpsUri {
        lapin_uri,
        host: host.to_string(),
        port,
        tls,
    })
}

/// The rustls client configuration and the server name for one URI (files read now).
fn client_config(u: &AmqpsUri) -> Result<(Arc<rustls::ClientConfig>, ServerName<'static>), String> {
    let provider = crate::proto::crypto_provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if u.tls.verify_peer {
        let path = match &u.tls.cacertfile {
            Some(p) => p.clone(),
            None => SYSTEM_CA_BUNDLES
                .iter()
                .find(|p| std::path::Path::new(p).exists())
                .map(|p| p.to_string())
                .ok_or("no cacertfile given and no system CA bundle found")?,
        };
        let mut roots = rustls::RootCertStore::empty();
        let certs =
            CertificateDer::pem_file_iter(&path).map_err(|e| format!("cacertfile {path}: {e}"))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("cacertfile {path}: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("cacertfile {path}: {e}"))?;
        }
        if roots.is_empty() {
            return Err(format!("cacertfile {path} holds no certificate"));
        }
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate { provider }))
    };
    let mut config = match (&u.tls.certfile, &u.tls.keyfile) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| format!("certfile {cert}: {e}"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("certfile {cert}: {e}"))?;
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| format!("keyfile {key}: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    let name = match &u.tls.server_name {
        Some(Some(name)) => name.clone(),
        Some(None) => {
            config.enable_sni = false;
            u.host.clone()
        }
        None => u.host.clone(),
    };
    let name = ServerName::try_from(name.clone())
        .map_err(|_| format!("'{name}' is not a server name TLS can check"))?;
    Ok((Arc::new(config), name))
}

/// Connects to an `amqps://` URI (already checked by [`parse`]).
pub async fn connect(uri: &str, properties: ConnectionProperties) -> Result<Connection, String> {
    let u = parse(uri)?;
    let (config, name) = client_config(&u)?;
    let lapin_uri = u
        .lapin_uri
        .parse::<AMQPUri>()
        .map_err(|e| format!("does not parse: {e}"))?;
    let (host, port) = (u.host.clone(), u.port);
    let dial = move |_uri: AMQPUri, _runtime: async_rs::Runtime<TlsKit>| {
        let (config, name, host) = (config.clone(), name.clone(), host.clone());
        async move {
            let handshake = async {
                let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                tcp.set_nodelay(true)?;
                tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
            };
            let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                })??;
            Ok(AsyncTcpStream::Plain(Stream::Tls(Box::new(tls))))
        }
    };
    let runtime = async_rs::Runtime::new(TlsKit(async_rs::Tokio::current()));
    Connection::connector(lapin_uri, runtime, dial, properties)
        .await
        .map_err(|e| e.to_string())
}

/// Accepts any server certificate (`verify=verify_none`); handshake signatures are still
/// checked, so the session is at least with the holder of the presented key.
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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

/// tokio's runtime kit with [`Stream`] as its TCP stream type, so lapin accepts our TLS
/// stream from the connector.
#[derive(Clone, Debug)]
pub struct TlsKit(async_rs::Tokio);

impl RuntimeKit for TlsKit {}

impl Executor for TlsKit {
    type Task<T: Send + 'static> = <async_rs::Tokio as Executor>::Task<T>;

    fn block_on<T, F: Future<Output = T>>(&self, f: F) -> T {
        self.0.block_on(f)
    }

    fn spawn<T: Send + 'static, F: Future<Output = T> + Send + 'static>(
        &self,
        f: F,
    ) -> Task<Self::Task<T>> {
        self.0.spawn(f)
    }

    fn spawn_blocking<T: Send + 'static, F: FnOnce() -> T + Send + 'static>(
        &self,
        f: F,
    ) -> Task<Self::Task<T>> {
        self.0.spawn_blocking(f)
    }
}

impl Reactor for TlsKit {
    type TcpStream = Stream;
    type Sleep = <async_rs::Tokio as Reactor>::Sleep;

    // lapin never registers raw handles; the trait's `AsSysFd` bound cannot even be named
    // outside async-rs, so this looser signature answers with an error instead.
    fn register<H: io::Read + io::Write + Send + 'static>(
        &self,
        socket: H,
    ) -> io::Result<impl futures::io::AsyncRead + futures::io::AsyncWrite + Send + Unpin + 'static>
    {
        drop(socket);
        Err::<Stream, _>(io::Error::other(
            "the bridge's TLS runtime kit registers no raw handles",
        ))
    }

    fn sleep(&self, dur: Duration) -> Self::Sleep {
        self.0.sleep(dur)
    }

    fn interval(
        &self,
        dur: Duration,
    ) -> impl futures::Stream<Item = std::time::Instant> + Send + 'static {
        self.0.interval(dur)
    }

    // The trait wants a `'static` future, which an `async fn` borrowing `self` is not.
    #[allow(clippy::manual_async_fn)]
    fn tcp_connect_addr(
        &self,
        addr: std::net::SocketAddr,
    ) -> impl Future<Output = io::Result<Stream>> + Send + 'static {
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            Ok(Stream::Plain(tcp))
        }
    }
}

type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A connection's byte stream (futures-io, as lapin reads it, over tokio's types).
pub enum Stream {
    Plain(tokio::net::TcpStream),
    Tls(Box<TlsStream>),
}

fn read_into<S: TokioRead + Unpin>(
    s: &mut S,
    cx: &mut Context<'_>,
    buf: &mut [u8],
) -> Poll<io::Result<usize>> {
    let mut rb = ReadBuf::new(buf);
    match Pin::new(s).poll_read(cx, &mut rb) {
        Poll::Ready(Ok(())) => Poll::Ready(Ok(rb.filled().len())),
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

impl futures::io::AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => read_into(s, cx, buf),
            Stream::Tls(s) => read_into(s.as_mut(), cx, buf),
        }
    }
}

impl futures::io::AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rabbitmq_tls_parameters_are_taken_out_of_the_uri() {
        let u = parse(
            "amqps://u:p%40ss@rabbit.example:5676/%2f?heartbeat=10&cacertfile=%2Fetc%2Fca.pem\
             &certfile=/c.pem&keyfile=/k.pem&verify=verify_peer&server_name_indication=rabbit",
        )
        .unwrap();
        assert_eq!(u.host, "rabbit.example");
        assert_eq!(u.port, 5676);
        assert_eq!(
            u.lapin_uri,
            "amqps://u:p%40ss@rabbit.example:5676/%2f?heartbeat=10"
        );
        assert_eq!(u.tls.cacertfile.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(u.tls.keyfile.as_deref(), Some("/k.pem"));
        assert!(u.tls.verify_peer);
        assert_eq!(u.tls.server_name, Some(Some("rabbit".into())));
        let d =
            parse("amqps://127.0.0.1?verify=verify_none&server_name_indication=disable").unwrap();
        assert_eq!((d.host.as_str(), d.port), ("127.0.0.1", 5671));
        assert!(!d.tls.verify_peer);
        assert_eq!(d.tls.server_name, Some(None));
        assert_eq!(parse("amqps://[::1]:5999/").unwrap().host, "::1");
        assert!(parse("amqps://h?verify=maybe")
            .unwrap_err()
            .contains("verify"));
        assert!(parse("amqps://h?certfile=/c.pem")
            .unwrap_err()
            .contains("keyfile"));
    }
}
