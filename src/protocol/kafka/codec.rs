//! Kafka framing, with no I/O: split a frame into header and body, and frame a response.
//!
//! A request on the wire is `i32 size` then `size` bytes: `i16 api_key`, `i16 api_version`, the
//! rest of the request header (whose version depends on key and version), then the body. The
//! connection reads the size, refuses it if it exceeds the configured maximum *before* reading
//! the body, and hands the frame here. Bodies are decoded by the `kafka-protocol` crate (with
//! Ferry's allocation clamps, see `vendor/README.md`).

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};

/// Why a frame could not be understood. The connection closes on any of these, as Kafka does
/// for requests it cannot parse (it cannot even address an error response without a header).
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is too short for a request header")]
    TooShort(usize),
    #[error("unknown api key {key} (version {version})")]
    UnknownApiKey {
        key: i16,
        version: i16,
        correlation_id: i32,
    },
    #[error("malformed request header: {0}")]
    Header(String),
}

/// A request whose header is parsed and whose body is still bytes.
#[derive(Debug)]
pub struct RawRequest {
    pub api_key: ApiKey,
    pub api_version: i16,
    pub correlation_id: i32,
    pub client_id: Option<String>,
    pub body: Bytes,
}

/// Parses the request header. Never panics on short or garbage input.
pub fn parse_request(mut frame: Bytes) -> Result<RawRequest, FrameError> {
    if frame.len() < 8 {
        return Err(FrameError::TooShort(frame.len()));
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api_key = ApiKey::try_from(key).map_err(|()| FrameError::UnknownApiKey {
        key,
        version,
        correlation_id,
    })?;
    let header = RequestHeader::decode(&mut frame, api_key.request_header_version(version))
        .map_err(|e| FrameError::Header(e.to_string()))?;
    Ok(RawRequest {
        api_key,
        api_version: version,
        correlation_id,
        client_id: header.client_id.map(|s| s.to_string()),
        body: frame,
    })
}

/// Decodes the body of any request this broker serves into its message type and drops it:
/// the whole decode path a peer can reach, as one pure function for fuzzing and property
/// tests. Unsupported keys and versions are errors, as on the wire.
pub fn decode_body(req: &RawRequest) -> Result<(), String> {
    use kafka_protocol::messages::*;
    if !super::versions::is_supported(req.api_key, req.api_version) {
        return Err(format!(
            "{:?} v{} is not served",
            req.api_key, req.api_version
        ));
    }
    fn run<T: Decodable>(body: &Bytes, version: i16) -> Result<(), String> {
        let mut body = body.clone();
        T::decode(&mut body, version)
            .map(drop)
            .map_err(|e| e.to_string())
    }
    let (b, v) = (&req.body, req.api_version);
    match req.api_key {
        // v0-2 are answered by hand after decoding as v3 behind a null transactional id.
        ApiKey::Produce if v < 3 => {
            let mut with_id = BytesMut::with_capacity(b.len() + 2);
            with_id.put_i16(-1);
            with_id.put_slice(b);
            run::<ProduceRequest>(&with_id.freeze(), 3)
        }
        ApiKey::Produce => run::<ProduceRequest>(b, v),
        ApiKey::Fetch => run::<FetchRequest>(b, v),
        ApiKey::ListOffsets => run::<ListOffsetsRequest>(b, v),
        ApiKey::Metadata => run::<MetadataRequest>(b, v),
        ApiKey::ApiVersions => run::<ApiVersionsRequest>(b, v),
        ApiKey::CreateTopics => run::<CreateTopicsRequest>(b, v),
        ApiKey::DeleteTopics => run::<DeleteTopicsRequest>(b, v),
        ApiKey::CreatePartitions => run::<CreatePartitionsRequest>(b, v),
        ApiKey::DescribeConfigs => run::<DescribeConfigsRequest>(b, v),
        ApiKey::AlterConfigs => run::<AlterConfigsRequest>(b, v),
        ApiKey::IncrementalAlterConfigs => run::<IncrementalAlterConfigsRequest>(b, v),
        ApiKey::DescribeCluster => run::<DescribeClusterRequest>(b, v),
        ApiKey::FindCoordinator => run::<FindCoordinatorRequest>(b, v),
        ApiKey::JoinGroup => run::<JoinGroupRequest>(b, v),
        ApiKey::SyncGroup => run::<SyncGroupRequest>(b, v),
        ApiKey::Heartbeat => run::<HeartbeatRequest>(b, v),
        ApiKey::LeaveGroup => run::<LeaveGroupRequest>(b, v),
        ApiKey::OffsetCommit => run::<OffsetCommitRequest>(b, v),
        ApiKey::OffsetFetch => run::<OffsetFetchRequest>(b, v),
        ApiKey::ListGroups => run::<ListGroupsRequest>(b, v),
        ApiKey::DescribeGroups => run::<DescribeGroupsRequest>(b, v),
        ApiKey::DeleteGroups => run::<DeleteGroupsRequest>(b, v),
        ApiKey::OffsetDelete => run::<OffsetDeleteRequest>(b, v),
        ApiKey::InitProducerId => run::<InitProducerIdRequest>(b, v),
        other => Err(format!("{other:?} is not served")),
    }
}

/// Frames a response body: size prefix, response header of the right version, body.
pub fn encode_response<R: Encodable>(
    api_key: ApiKey,
    api_version: i16,
    correlation_id: i32,
    body: &R,
) -> anyhow::Result<Bytes> {
    let header_version = api_key.response_header_version(api_version);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let size = header.compute_size(header_version)? + body.compute_size(api_version)?;
    let mut out = BytesMut::with_capacity(4 + size);
    out.put_i32(i32::try_from(size)?);
    header.encode(&mut out, header_version)?;
    body.encode(&mut out, api_version)?;
    Ok(out.freeze())
}

/// Frames a hand-built response body (for versions the crate cannot encode) behind a v0
/// response header.
pub fn encode_raw_response_v0(correlation_id: i32, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(8 + body.len());
    out.put_i32(4 + body.len() as i32);
    out.put_i32(correlation_id);
    out.put_slice(body);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_garbage_frames_are_errors_not_panics() {
        for len in 0..8 {
            assert!(parse_request(Bytes::from(vec![0u8; len])).is_err());
        }
        let unknown = Bytes::from_static(&[0x7f, 0x00, 0, 1, 0, 0, 0, 9]);
        assert!(matches!(
            parse_request(unknown),
            Err(FrameError::UnknownApiKey {
                correlation_id: 9,
                ..
            })
        ));
        // Metadata v1 header claiming a 32 KiB client id it does not carry.
        let lying = Bytes::from_static(&[0, 3, 0, 1, 0, 0, 0, 1, 0x7f, 0xff]);
        assert!(parse_request(lying).is_err());
    }
}
