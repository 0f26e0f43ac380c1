//! AMQP 0-9-1 framing: pure functions over bytes, no I/O (ARCHITECTURE rule 1).
//!
//! [`decode_frame`] looks at the 7-byte frame header first and refuses a frame larger than the
//! negotiated `frame_max` *before* waiting for (or allocating) its payload, then checks the
//! frame-end octet, and only then hands the exact frame to `amq-protocol`'s parser. Body frames
//! are not parsed at all: their payload is sliced out of the read buffer without copying.
//! Encoding uses `amq-protocol`'s generator for methods and content headers; body frames are
//! written by hand so a large body is copied once, into the output buffer.

use amq_protocol::frame::{gen_frame, parse_frame, AMQPContentHeader, AMQPFrame, WriteContext};
use amq_protocol::protocol::{basic::AMQPProperties, AMQPClass};
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// What a client must send first, and what a server answers a wrong header with.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;
/// Type (1) + channel (2) + size (4).
const FRAME_HEADER_LEN: usize = 7;
/// Header plus the frame-end octet: what a frame costs beyond its payload.
pub const FRAME_OVERHEAD: usize = FRAME_HEADER_LEN + 1;

/// One decoded incoming frame.
#[derive(Debug)]
pub enum Incoming {
    Method(u16, Box<AMQPClass>),
    Header(u16, Box<AMQPContentHeader>),
    Body(u16, Bytes),
    Heartbeat(u16),
}

/// A framing problem; every one is a connection error.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {size} bytes exceeds frame_max {max}")]
    TooLarge { size: usize, max: usize },
    #[error("frame does not end with 0xCE")]
    BadFrameEnd,
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    #[error("malformed {0} frame")]
    Malformed(&'static str),
}

impl CodecError {
    /// The AMQP reply code to close the connection with.
    pub fn reply_code(&self) -> u16 {
        match self {
            CodecError::Malformed("method") => 502, // SYNTAX_ERROR
            _ => 501,                               // FRAME_ERROR
        }
    }
}

/// Takes one whole frame off the front of `buf`. `Ok(None)` means more bytes are needed (and
/// the frame's size was already checked against `frame_max`).
pub fn decode_frame(buf: &mut BytesMut, frame_max: usize) -> Result<Option<Incoming>, CodecError> {
    if buf.len() < FRAME_HEADER_LEN {
        return Ok(None);
    }
    let kind = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    if !matches!(
        kind,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    ) {
        return Err(CodecError::UnknownType(kind));
    }
    let total = size.saturating_add(FRAME_OVERHEAD);
    if total > frame_max {
        return Err(CodecError::TooLarge {
            size: total,
            max: frame_max,
        });
    }
    if buf.len() < total {
        return Ok(None);
    }
    if buf[total - 1] != FRAME_END {
        return Err(CodecError::BadFrameEnd);
    }
    let frame = buf.split_to(total).freeze();
    match kind {
        FRAME_BODY => Ok(Some(Incoming::Body(
            channel,
            frame.slice(FRAME_HEADER_LEN..total - 1),
        ))),
        FRAME_HEARTBEAT => Ok(Some(Incoming::Heartbeat(channel))),
        FRAME_METHOD if !nesting_ok(&frame[FRAME_HEADER_LEN..total - 1], true) => {
            Err(CodecError::Malformed("method"))
        }
        FRAME_HEADER if !nesting_ok(&frame[FRAME_HEADER_LEN..total - 1], false) => {
            Err(CodecError::Malformed("content header"))
        }
        FRAME_METHOD => match parse_frame(&frame[..]) {
            Ok((&[], AMQPFrame::Method(ch, class))) => {
                Ok(Some(Incoming::Method(ch, Box::new(class))))
            }
            _ => Err(CodecError::Malformed("method")),
        },
        _ => match parse_frame(&frame[..]) {
            Ok((&[], AMQPFrame::Header(ch, header))) => {
                Ok(Some(Incoming::Header(ch, Box::new(header))))
            }
            _ => Err(CodecError::Malformed("content header")),
        },
    }
}

/// Deepest table/array nesting accepted. `amq-protocol` parses nested field tables
/// recursively, so a frame of nothing but nested tables (about 7 bytes per level) would
/// overflow the stack long before it reached `frame_max`; RabbitMQ clients never nest deeply.
const MAX_NESTING: usize = 64;

/// A bounds-checked cursor for [`nesting_ok`].
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<usize> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    fn short_string(&mut self) -> Option<()> {
        let n = self.u8()?;
        self.take(usize::from(n)).map(|_| ())
    }
    fn table(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_NESTING {
            return None;
        }
        let len = self.u32()?;
        let mut inner = Cursor(self.take(len)?);
        while !inner.0.is_empty() {
            inner.short_string()?;
            inner.value(depth)?;
        }
        Some(())
    }
    fn array(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_NESTING {
            return None;
        }
        let len = self.u32()?;
        let mut inner = Cursor(self.take(len)?);
        while !inner.0.is_empty() {
            inner.value(depth)?;
        }
        Some(())
    }
    fn value(&mut self, depth: usize) -> Option<()> {
        let fixed = match self.u8()? {
            b't' | b'b' | b'B' => 1,
            b's' | b'U' | b'u' => 2,
            b'I' | b'i' | b'f' => 4,
            b'L' | b'l' | b'd' | b'T' => 8,
            b'D' => 5,
            b'V' => 0,
            b'S' | b'x' => self.u32()?,
            b'A' => return self.array(depth + 1),
            b'F' => return self.table(depth + 1),
            _ => return None,
        };
        self.take(fixed).map(|_| ())
    }
}

/// Checks, without recursion beyond [`MAX_NESTING`], that the field tables of a method or
/// content-header payload are well-formed and not nested too deeply, so the recursive parser
/// is only ever given input it can handle. Methods without tables pass unexamined.
fn nesting_ok(payload: &[u8], method: bool) -> bool {
    let mut c = Cursor(payload);
    let check = |c: &mut Cursor| -> Option<()> {
        if !method {
            // class, weight, body size, property flags
            let fixed = c.take(14)?;
            let flags = u16::from_be_bytes([fixed[12], fixed[13]]);
            if flags & 0x2000 == 0 {
                return Some(());
            }
            if flags & 0x8000 != 0 {
                c.short_string()?;
            }
            if flags & 0x4000 != 0 {
                c.short_string()?;
            }
            return c.table(1);
        }
        let class = c.u16()?;
        let id = c.u16()?;
        // The fields before each method's table: (reserved shorts, short strings, has bits).
        let (shorts, strings, bits) = match (class, id) {
            (10, 11) => (0, 0, false),           // connection.start-ok
            (40, 10) => (1, 2, true),            // exchange.declare
            (40, 30) | (40, 40) => (1, 3, true), // exchange.bind / unbind
            (50, 10) => (1, 1, true),            // queue.declare
            (50, 20) => (1, 3, true),            // queue.bind
            (50, 50) => (1, 3, false),           // queue.unbind
            (60, 20) => (1, 2, true),            // basic.consume
            _ => return Some(()),
        };
        for _ in 0..shorts {
            c.u16()?;
        }
        for _ in 0..strings {
            c.short_string()?;
        }
        if bits {
            c.u8()?;
        }
        c.table(1)
    };
    check(&mut c).is_some()
}

fn encode_with_generator(frame: &AMQPFrame, out: &mut BytesMut) {
    match gen_frame(frame)(WriteContext::from(Vec::with_capacity(64))) {
        Ok(ctx) => out.extend_from_slice(&ctx.write),
        // Only oversized short strings fail here; the adapter never builds those from peer
        // data it has not already validated, so this is a bug worth a log line, not a panic.
        Err(e) => tracing::error!(error = ?e, "cannot encode AMQP frame"),
    }
}

/// Appends a method frame.
pub fn encode_method(channel: u16, method: AMQPClass, out: &mut BytesMut) {
    encode_with_generator(&AMQPFrame::Method(channel, method), out);
}

/// Appends a heartbeat frame.
pub fn encode_heartbeat(out: &mut BytesMut) {
    out.extend_from_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

/// Appends a content header and the body, split into body frames that fit `frame_max`.
pub fn encode_content(
    channel: u16,
    properties: AMQPProperties,
    body: &[u8],
    frame_max: usize,
    out: &mut BytesMut,
) {
    let start = out.len();
    let header = AMQPFrame::Header(
        channel,
        AMQPContentHeader {
            class_id: 60,
            body_size: body.len() as u64,
            properties,
        },
    );
    encode_with_generator(&header, out);
    // A content header cannot be split across frames: a property set too large for the
    // peer's frame_max is cut down (see `bounded::fit_frame`) rather than sent oversized.
    let encoded_len = out.len() - start;
    if encoded_len > frame_max {
        if let AMQPFrame::Header(channel, mut h) = header {
            out.truncate(start);
            h.properties = super::bounded::fit_frame(h.properties, encoded_len, frame_max);
            encode_with_generator(&AMQPFrame::Header(channel, h), out);
        }
    }
    let chunk = frame_max.saturating_sub(FRAME_OVERHEAD).max(1);
    out.reserve(body.len() + body.len().div_ceil(chunk) * FRAME_OVERHEAD);
    for part in body.chunks(chunk) {
        out.put_u8(FRAME_BODY);
        out.put_u16(channel);
        out.put_u32(part.len() as u32);
        out.extend_from_slice(part);
        out.put_u8(FRAME_END);
    }
}

/// Whether `buf` starts with a full, correct protocol header. `None` while fewer than 8 bytes.
pub fn check_protocol_header(buf: &[u8]) -> Option<bool> {
    if buf.len() < PROTOCOL_HEADER.len() {
        return None;
    }
    Some(buf[..8] == PROTOCOL_HEADER[..])
}

/// Drops `n` bytes from the front of `buf` (after the protocol header was checked).
pub fn consume(buf: &mut BytesMut, n: usize) {
    buf.advance(n.min(buf.len()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::channel;

    #[test]
    fn round_trip_and_partial() {
        let mut out = BytesMut::new();
        encode_method(
            3,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
            &mut out,
        );
        let full = out.clone();
        let mut partial = BytesMut::from(&full[..full.len() - 1]);
        assert!(decode_frame(&mut partial, 4096).unwrap().is_none());
        let mut whole = full.clone();
        match decode_frame(&mut whole, 4096).unwrap() {
            Some(Incoming::Method(3, _)) => {}
            other => panic!("{other:?}"),
        }
        assert!(whole.is_empty());
    }

    #[test]
    fn oversized_frame_is_refused_before_its_payload_arrives() {
        let mut buf = BytesMut::from(&[FRAME_BODY, 0, 1, 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            decode_frame(&mut buf, 131072),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &[9u8, 0, 0, 0, 0, 0, 0, 0xCE][..],
            &[1, 0, 1, 0, 0, 0, 2, 0, 10, 0xCE][..],
            &[1, 0, 1, 0, 0, 0, 1, 0, 0xCD][..],
            &[2, 0, 1, 0, 0, 0, 3, 1, 2, 3, 0xCE][..],
        ] {
            let mut buf = BytesMut::from(bytes);
            assert!(decode_frame(&mut buf, 4096).is_err(), "{bytes:?}");
        }
    }

    #[test]
    fn deeply_nested_tables_are_refused_without_recursing() {
        // queue.declare whose arguments nest tables ~18000 deep in 126 KB: the recursive
        // parser would overflow the stack on this.
        let mut table: Vec<u8> = vec![0, 0, 0, 0];
        for _ in 0..18_000 {
            let mut t = Vec::with_capacity(table.len() + 7);
            t.extend_from_slice(&((3 + table.len()) as u32).to_be_bytes());
            t.extend_from_slice(&[1, b'a', b'F']);
            t.extend_from_slice(&table);
            table = t;
        }
        let mut payload = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0];
        payload.extend_from_slice(&table);
        let mut frame = vec![FRAME_METHOD, 0, 1];
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(&payload);
        frame.push(FRAME_END);
        let mut buf = BytesMut::from(&frame[..]);
        assert!(matches!(
            decode_frame(&mut buf, 1 << 20),
            Err(CodecError::Malformed("method"))
        ));
    }

    #[test]
    fn ordinary_tables_pass_the_nesting_check() {
        use amq_protocol::protocol::queue;
        use amq_protocol::types::{AMQPValue, FieldArray, FieldTable};
        let mut inner = FieldTable::default();
        inner.insert("k".into(), AMQPValue::LongString("v".into()));
        let mut args = FieldTable::default();
        args.insert("t".into(), AMQPValue::FieldTable(inner.clone()));
        args.insert(
            "a".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(inner)])),
        );
        args.insert("n".into(), AMQPValue::LongLongInt(5));
        let mut out = BytesMut::new();
        encode_method(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: "q".into(),
                passive: false,
                durable: true,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: args,
            })),
            &mut out,
        );
        assert!(matches!(
            decode_frame(&mut out, 4096),
            Ok(Some(Incoming::Method(1, _)))
        ));
    }

    #[test]
    fn body_is_split_at_frame_max() {
        let mut out = BytesMut::new();
        encode_content(1, AMQPProperties::default(), &[7u8; 10_000], 4096, &mut out);
        let mut frames = 0;
        let mut body = 0;
        while let Some(f) = decode_frame(&mut out, 4096).unwrap() {
            frames += 1;
            if let Incoming::Body(_, b) = f {
                body += b.len();
            }
        }
        assert_eq!(body, 10_000);
        assert_eq!(frames, 1 + 3);
    }
}
