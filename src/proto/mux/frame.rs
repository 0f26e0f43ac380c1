//! The TCP multiplexing frame codec: pure functions over bytes, no I/O.
//!
//! A frame is `uvarint(length) uvarint(stream_id) u8(type) body`, where `length` counts the
//! bytes after itself (see docs/native-protocol.md, "Over TCP"). The length is checked against
//! [`MAX_FRAME`] before anything is buffered for the body, so a hostile length costs nothing.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Largest DATA payload in one frame. A protocol message larger than this spans frames.
pub const MAX_DATA: usize = 64 * 1024;

/// Largest frame body (everything after the length prefix): a full DATA payload, its stream
/// id and type, with room to spare; a CLOSE reason is cut to fit.
pub const MAX_FRAME: usize = MAX_DATA + 32;

/// Bytes each side may send on one stream before the receiver returns credit with WINDOW.
pub const INITIAL_WINDOW: u64 = 256 * 1024;

/// Frame types (the byte after the stream id).
pub mod kind {
    pub const DATA: u8 = 0x00;
    pub const FIN: u8 = 0x01;
    pub const STOP: u8 = 0x02;
    pub const WINDOW: u8 = 0x03;
    pub const MAX_STREAMS: u8 = 0x10;
    pub const PING: u8 = 0x11;
    pub const CLOSE: u8 = 0x12;
}

/// CLOSE codes.
pub mod code {
    /// Orderly close: the client is done, or the broker is shutting down.
    pub const NORMAL: u64 = 0;
    /// The peer broke the framing rules (bad length, unknown type, window exceeded...).
    pub const PROTOCOL: u64 = 1;
    /// Nothing arrived for the idle timeout.
    pub const IDLE: u64 = 2;
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data { stream: u64, payload: Bytes },
    Fin { stream: u64 },
    Stop { stream: u64, code: u64 },
    Window { stream: u64, increment: u64 },
    MaxStreams { max: u64 },
    Ping,
    Close { code: u64, reason: String },
}

/// Why bytes are not a frame. Every one closes the connection with code [`code::PROTOCOL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge { len: u64 },
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
}

/// Decodes the next whole frame off the front of `buf`, or `Ok(None)` if it is not all there.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    let Some((len, prefix)) = peek_varint(buf)? else {
        return Ok(None);
    };
    if len > MAX_FRAME as u64 {
        return Err(FrameError::TooLarge { len });
    }
    let len = len as usize;
    if buf.len() < prefix + len {
        return Ok(None);
    }
    buf.advance(prefix);
    let mut body = buf.split_to(len).freeze();
    let stream = varint(&mut body)?;
    if !body.has_remaining() {
        return Err(FrameError::Malformed("no frame type"));
    }
    let t = body.get_u8();
    let per_stream = |s: u64| {
        if s == 0 {
            Err(FrameError::Malformed("a stream frame on stream 0"))
        } else {
            Ok(s)
        }
    };
    let connection_level = |s: u64| {
        if s != 0 {
            Err(FrameError::Malformed("a connection frame on a stream"))
        } else {
            Ok(())
        }
    };
    let frame = match t {
        kind::DATA => {
            if body.is_empty() {
                return Err(FrameError::Malformed("an empty DATA frame"));
            }
            if body.len() > MAX_DATA {
                return Err(FrameError::Malformed("a DATA payload over 65536 bytes"));
            }
            Frame::Data {
                stream: per_stream(stream)?,
                payload: body,
            }
        }
        kind::FIN => {
            empty(&body)?;
            Frame::Fin {
                stream: per_stream(stream)?,
            }
        }
        kind::STOP => {
            let code = varint(&mut body)?;
            empty(&body)?;
            Frame::Stop {
                stream: per_stream(stream)?,
                code,
            }
        }
        kind::WINDOW => {
            let increment = varint(&mut body)?;
            empty(&body)?;
            Frame::Window {
                stream: per_stream(stream)?,
                increment,
            }
        }
        kind::MAX_STREAMS => {
            connection_level(stream)?;
            let max = varint(&mut body)?;
            empty(&body)?;
            Frame::MaxStreams { max }
        }
        kind::PING => {
            connection_level(stream)?;
            empty(&body)?;
            Frame::Ping
        }
        kind::CLOSE => {
            connection_level(stream)?;
            let code = varint(&mut body)?;
            Frame::Close {
                code,
                reason: String::from_utf8_lossy(&body).into_owned(),
            }
        }
        other => return Err(FrameError::UnknownType(other)),
    };
    Ok(Some(frame))
}

fn empty(body: &Bytes) -> Result<(), FrameError> {
    if body.is_empty() {
        Ok(())
    } else {
        Err(FrameError::Malformed("trailing bytes in a frame"))
    }
}

fn varint(body: &mut Bytes) -> Result<u64, FrameError> {
    prost::encoding::decode_varint(body).map_err(|_| FrameError::Malformed("bad varint"))
}

/// A varint at the front of `buf` and its size, `Ok(None)` if it is cut short.
fn peek_varint(buf: &[u8]) -> Result<Option<(u64, usize)>, FrameError> {
    let mut value = 0_u64;
    for (i, b) in buf.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 10 {
        return Err(FrameError::Malformed("bad length varint"));
    }
    Ok(None)
}

fn varint_len(v: u64) -> usize {
    prost::encoding::encoded_len_varint(v)
}

/// Appends a frame with `body` (at most [`MAX_DATA`] bytes for DATA) to `out`.
fn put(out: &mut BytesMut, stream: u64, t: u8, head: &[u64], body: &[u8]) {
    let len =
        varint_len(stream) + 1 + head.iter().map(|v| varint_len(*v)).sum::<usize>() + body.len();
    out.reserve(len + 10);
    prost::encoding::encode_varint(len as u64, out);
    prost::encoding::encode_varint(stream, out);
    out.put_u8(t);
    for v in head {
        prost::encoding::encode_varint(*v, out);
    }
    out.put_slice(body);
}

pub fn put_data(out: &mut BytesMut, stream: u64, payload: &[u8]) {
    debug_assert!(!payload.is_empty() && payload.len() <= MAX_DATA);
    put(out, stream, kind::DATA, &[], payload);
}

pub fn put_fin(out: &mut BytesMut, stream: u64) {
    put(out, stream, kind::FIN, &[], &[]);
}

pub fn put_stop(out: &mut BytesMut, stream: u64, code: u64) {
    put(out, stream, kind::STOP, &[code], &[]);
}

pub fn put_window(out: &mut BytesMut, stream: u64, increment: u64) {
    put(out, stream, kind::WINDOW, &[increment], &[]);
}

pub fn put_max_streams(out: &mut BytesMut, max: u64) {
    put(out, 0, kind::MAX_STREAMS, &[max], &[]);
}

pub fn put_ping(out: &mut BytesMut) {
    put(out, 0, kind::PING, &[], &[]);
}

pub fn put_close(out: &mut BytesMut, code: u64, reason: &str) {
    let mut cut = reason.len().min(1024);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    put(out, 0, kind::CLOSE, &[code], &reason.as_bytes()[..cut]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_wait_for_whole_frames() {
        let mut out = BytesMut::new();
        put_data(&mut out, 7, b"hello");
        put_fin(&mut out, 7);
        put_stop(&mut out, 9, 0);
        put_window(&mut out, 7, 1 << 20);
        put_max_streams(&mut out, 4096);
        put_ping(&mut out);
        put_close(&mut out, 320, "bye");
        let whole = out.clone();
        // Fed one byte at a time, every frame comes out once it is whole.
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for b in whole.iter() {
            buf.put_u8(*b);
            while let Some(f) = decode(&mut buf).expect("valid") {
                frames.push(f);
            }
        }
        assert_eq!(
            frames,
            vec![
                Frame::Data {
                    stream: 7,
                    payload: Bytes::from_static(b"hello")
                },
                Frame::Fin { stream: 7 },
                Frame::Stop { stream: 9, code: 0 },
                Frame::Window {
                    stream: 7,
                    increment: 1 << 20
                },
                Frame::MaxStreams { max: 4096 },
                Frame::Ping,
                Frame::Close {
                    code: 320,
                    reason: "bye".into()
                },
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn refuses_hostile_frames() {
        let mut huge = BytesMut::new();
        prost::encoding::encode_varint(1 << 30, &mut huge);
        assert_eq!(
            decode(&mut huge),
            Err(FrameError::TooLarge { len: 1 << 30 })
        );
        let mut bad_varint = BytesMut::from(&[0xff_u8; 11][..]);
        assert!(decode(&mut bad_varint).is_err());
        let mut unknown = BytesMut::from(&[2_u8, 1, 0x7f][..]);
        assert_eq!(decode(&mut unknown), Err(FrameError::UnknownType(0x7f)));
        let mut data_on_zero = BytesMut::from(&[3_u8, 0, 0, b'x'][..]);
        assert!(decode(&mut data_on_zero).is_err());
        let mut empty_data = BytesMut::from(&[2_u8, 1, 0][..]);
        assert!(decode(&mut empty_data).is_err());
        let mut no_type = BytesMut::from(&[1_u8, 1][..]);
        assert!(decode(&mut no_type).is_err());
    }
}
