//! Any bytes as what an AMQP client sends after the protocol header: frames are decoded one
//! after another through Ferry's codec (frame header, size check against `frame_max`, the
//! nesting pre-check, then `amq-protocol`'s method and content-header parsers, field tables
//! included) until the input runs out or a frame is refused. Every method or content header
//! that decodes must also survive the way back: re-encoded by the codec, it decodes again, and
//! encoding that yields the same bytes.
#![no_main]

use bytes::BytesMut;
use ferry::protocol::amqp::codec::{decode_frame, encode_content, encode_method, Incoming};
use libfuzzer_sys::fuzz_target;

const FRAME_MAX: usize = 131_072;

/// Encodes a decoded method or content header back into a frame; `None` for other frames.
fn encode(frame: &Incoming) -> Option<BytesMut> {
    let mut out = BytesMut::new();
    match frame {
        Incoming::Method(ch, m) => encode_method(*ch, (**m).clone(), &mut out),
        Incoming::Header(ch, h) => encode_content(*ch, h.properties.clone(), &[], FRAME_MAX, &mut out),
        _ => return None,
    }
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = decode_frame(&mut buf, FRAME_MAX) {
        let Some(first) = encode(&frame) else { continue };
        let mut again = first.clone();
        let decoded = decode_frame(&mut again, FRAME_MAX)
            .expect("a re-encoded frame decodes")
            .expect("a re-encoded frame is whole");
        let second = encode(&decoded).expect("same kind of frame");
        assert_eq!(first, second, "encoding is stable across a round trip");
    }
});
