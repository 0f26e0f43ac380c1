//! Reading and writing length-delimited frames on an async byte stream (one QUIC stream).

use bytes::BytesMut;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::codec::{self, FrameError};

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("stream ended inside a frame")]
    Truncated,
    #[error("stream read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Frames read off one stream, with the bytes read past the last frame kept for the next.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, max_frame_bytes: usize) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(4096),
            max: max_frame_bytes,
        }
    }

    /// The length of the next frame, reading only as far as its prefix (so a reader can
    /// reserve memory for the frame before it arrives); `Ok(None)` when the stream ended
    /// cleanly between frames. A length past the limit is an error.
    pub async fn next_len(&mut self) -> Result<Option<usize>, ReadError> {
        loop {
            if let Some((len, _)) = codec::peek_length(&self.buf)? {
                if len > self.max as u64 {
                    return Err(FrameError::TooLarge { len, max: self.max }.into());
                }
                // `len <= max` fits in usize.
                return Ok(Some(len as usize));
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::Truncated)
                };
            }
        }
    }

    /// The next frame if it is already buffered, without reading: a reader that answers frames
    /// can gather its answers while more are waiting and write them once.
    pub fn buffered<M: Message + Default>(&mut self) -> Result<Option<M>, ReadError> {
        Ok(codec::decode(&mut self.buf, self.max)?)
    }

    /// The next frame; `Ok(None)` when the stream ended cleanly between frames.
    pub async fn next<M: Message + Default>(&mut self) -> Result<Option<M>, ReadError> {
        loop {
            if let Some(msg) = codec::decode(&mut self.buf, self.max)? {
                return Ok(Some(msg));
            }
            self.buf.reserve(4096);
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::Truncated)
                };
            }
        }
    }
}

/// Writes one frame.
pub async fn write<W: AsyncWrite + Unpin, M: Message>(w: &mut W, msg: &M) -> std::io::Result<()> {
    w.write_all(&codec::encode(msg)).await
}
