//! Any bytes as a Kafka request frame (after the size prefix): header parse, then the body
//! decode for whatever served API and version the header names.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = ferry::protocol::kafka::codec::parse_request(bytes::Bytes::copy_from_slice(data)) {
        let _ = ferry::protocol::kafka::codec::decode_body(&req);
    }
});
