//! The byte stream under the Kafka and AMQP wire clients: plain TCP, or TLS over TCP with
//! rustls, split into a read half and a write half that move into separate tasks.
//!
//! Plain TCP keeps tokio's lock-free owned halves, so a plaintext run measures exactly what it
//! did before TLS existed; a TLS session shares one state between reading and writing, so its
//! halves come from `tokio::io::split`. Both sit behind one pair of enums, so the clients'
//! loops are not generic and the benchmark compares the same code with and without TLS.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, ToSocketAddrs};

type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// The read half of a client connection.
pub(crate) enum ReadStream {
    Plain(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<TlsStream>),
}

/// The write half of a client connection.
pub(crate) enum WriteStream {
    Plain(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<TlsStream>),
}

/// Connects to `addr` within `timeout` and, with `tls`, completes a TLS handshake that checks
/// the broker's certificate against `host` (the name the user gave, not the resolved address).
/// The error is the reason as a user should read it; each client names the address.
pub(crate) async fn connect(
    addr: impl ToSocketAddrs,
    host: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<(ReadStream, WriteStream), String> {
    let stream = super::tcp_connect(addr, timeout).await?;
    let Some(config) = tls else {
        let (read, write) = stream.into_split();
        return Ok((ReadStream::Plain(read), WriteStream::Plain(write)));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| format!("`{host}` is not a host name TLS can verify"))?;
    let handshake = tokio_rustls::TlsConnector::from(config.clone()).connect(name, stream);
    match tokio::time::timeout(timeout, handshake).await {
        Err(_) => Err(format!(
            "no TLS handshake within {} s — is this a TLS listener?",
            timeout.as_secs()
        )),
        Ok(Err(e)) => Err(format!(
            "TLS handshake failed: {e} — is this a TLS listener, and does --cacert hold the CA \
             that signed the broker's certificate?"
        )),
        Ok(Ok(stream)) => {
            let (read, write) = tokio::io::split(stream);
            Ok((ReadStream::Tls(read), WriteStream::Tls(write)))
        }
    }
}

/// The host part of `host:port` (brackets kept for IPv6, stripped by [`connect`]).
pub(crate) fn host_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(host, _)| host)
}

impl AsyncRead for ReadStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ReadStream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            WriteStream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            WriteStream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WriteStream::Plain(s) => s.is_write_vectored(),
            WriteStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteStream::Plain(s) => Pin::new(s).poll_flush(cx),
            WriteStream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            WriteStream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
