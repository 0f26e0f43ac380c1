//! Length-delimited protobuf frames over byte buffers: a varint length, then the message.
//!
//! [`decode`] looks at the length prefix first and refuses a frame past the limit before any
//! allocation for it (mini-redis's `Frame::check`), and returns `Ok(None)` until the whole frame
//! is buffered, so a reader can feed it whatever the transport hands over.

use bytes::{Buf, Bytes, BytesMut};
use prost::Message;

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix says more than the limit allows.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u64, max: usize },
    /// The length prefix is not a valid varint.
    #[error("invalid frame length prefix")]
    BadLength,
    /// The bytes are not a valid message of the expected type.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Encodes `msg` with its length prefix.
pub fn encode<M: Message>(msg: &M) -> Bytes {
    let mut buf = BytesMut::new();
    encode_into(msg, &mut buf);
    buf.freeze()
}

/// Appends `msg` with its length prefix to `buf`: what a writer gathering many frames into one
/// write uses, without a buffer per frame.
pub fn encode_into<M: Message>(msg: &M, buf: &mut BytesMut) {
    buf.reserve(msg.encoded_len() + 10);
    // Writing into a BytesMut grows it as needed; it cannot run out of capacity.
    let _ = msg.encode_length_delimited(buf);
}

/// Takes one whole frame off the front of `buf` and decodes it; `Ok(None)` when more bytes
/// are needed. On error the buffer is left as it was (the stream is unusable after it anyway:
/// the frame boundary is lost).
pub fn decode<M: Message + Default>(
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<M>, FrameError> {
    let Some((len, prefix)) = peek_length(buf)? else {
        return Ok(None);
    };
    if len > max as u64 {
        return Err(FrameError::TooLarge { len, max });
    }
    // `len <= max` fits in usize.
    let len = len as usize;
    if buf.len() < prefix + len {
        return Ok(None);
    }
    buf.advance(prefix);
    let body = buf.split_to(len).freeze();
    M::decode(body)
        .map(Some)
        .map_err(|e| FrameError::Malformed(e.to_string()))
}

/// The frame length and the size of its varint prefix, if the prefix is complete.
pub fn peek_length(buf: &[u8]) -> Result<Option<(u64, usize)>, FrameError> {
    let mut value: u64 = 0;
    for (i, byte) in buf.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 10 {
        return Err(FrameError::BadLength);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::{request, Authenticate, Request};

    fn auth() -> Request {
        Request {
            op: Some(request::Op::Authenticate(Authenticate {
                user: "guest".into(),
                password: "guest".into(),
                client_name: String::new(),
                mechanism: String::new(),
            })),
        }
    }

    #[test]
    fn round_trips_and_waits_for_whole_frames() {
        let frame = encode(&auth());
        let mut buf = BytesMut::new();
        for (i, b) in frame.iter().enumerate() {
            assert_eq!(decode::<Request>(&mut buf, 1024), Ok(None), "byte {i}");
            buf.extend_from_slice(&[*b]);
        }
        assert_eq!(decode::<Request>(&mut buf, 1024), Ok(Some(auth())));
        assert!(buf.is_empty());
    }

    #[test]
    fn refuses_oversized_and_garbage_frames() {
        let frame = encode(&auth());
        let mut buf = BytesMut::from(&frame[..]);
        assert!(matches!(
            decode::<Request>(&mut buf, 3),
            Err(FrameError::TooLarge { max: 3, .. })
        ));
        let mut buf = BytesMut::from(&[0xff_u8; 11][..]);
        assert_eq!(
            decode::<Request>(&mut buf, 1024),
            Err(FrameError::BadLength)
        );
        let mut buf = BytesMut::from(&[3_u8, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            decode::<Request>(&mut buf, 1024),
            Err(FrameError::Malformed(_))
        ));
    }
}
