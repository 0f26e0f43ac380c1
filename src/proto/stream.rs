//! One native protocol stream, whichever transport carries it: a QUIC stream (quinn) or a
//! stream multiplexed over TCP ([`super::mux`]). The server's handlers and the SDK read and
//! write these, so every request is handled by the same code on both transports; an enum
//! rather than a generic parameter keeps the handlers' futures (and their compile time) single.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::mux;

/// The sending half of a stream.
#[derive(Debug)]
pub enum SendStream {
    Quic(quinn::SendStream),
    Tcp(mux::SendStream),
}

/// The receiving half of a stream.
#[derive(Debug)]
pub enum RecvStream {
    Quic(quinn::RecvStream),
    Tcp(mux::RecvStream),
}

impl SendStream {
    /// Ends the sending side (QUIC's FIN, or the mux's); later writes fail.
    pub fn finish(&mut self) -> io::Result<()> {
        match self {
            SendStream::Quic(s) => s
                .finish()
                .map_err(|e| io::Error::new(io::ErrorKind::NotConnected, e)),
            SendStream::Tcp(s) => s.finish(),
        }
    }
}

impl From<quinn::SendStream> for SendStream {
    fn from(s: quinn::SendStream) -> Self {
        SendStream::Quic(s)
    }
}

impl From<quinn::RecvStream> for RecvStream {
    fn from(s: quinn::RecvStream) -> Self {
        RecvStream::Quic(s)
    }
}

impl From<mux::SendStream> for SendStream {
    fn from(s: mux::SendStream) -> Self {
        SendStream::Tcp(s)
    }
}

impl From<mux::RecvStream> for RecvStream {
    fn from(s: mux::RecvStream) -> Self {
        RecvStream::Tcp(s)
    }
}

impl AsyncRead for RecvStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RecvStream::Quic(s) => Pin::new(s).poll_read(cx, buf),
            RecvStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SendStream::Quic(s) => Pin::new(s).poll_write(cx, buf).map_err(io::Error::from),
            SendStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SendStream::Quic(s) => Pin::new(s).poll_flush(cx),
            SendStream::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SendStream::Quic(s) => Pin::new(s).poll_shutdown(cx),
            SendStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
