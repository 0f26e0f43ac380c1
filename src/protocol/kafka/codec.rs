//! Kafka framing, with no I/O: split a frame into header and body, and frame a response.
//!
//! A request on the wire is `i32 size` then `size` bytes: `i16 api_key`, `i16 api_version`, the
//! rest of the request header (whose version depends on key and version), then the body. The
//! connection reads the size, refuses it if it exceeds the configured maximum *before* reading
//! the body, and hands the frame here. Bodies are decoded by the `kafka-protocol` crate (with
//! Ferry's allocation clamps, see `vendor/README.md`).
//!
//! A zero-copy fetch response is encoded with a small placeholder in each partition's records
//! field, then [`splice_records`] cuts the encoded bytes around the placeholders and puts
//! segment-file spans in their place: the connection writes the pieces, handing the spans to
//! `sendfile(2)`. This module only describes the pieces; it never reads a file.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::log::FileSpan;

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

/// One piece of a response that is sent rather than encoded: encoded bytes, or a range of a
/// segment file the connection sends with `sendfile(2)`.
#[derive(Debug, Clone)]
pub enum ResponsePart {
    Bytes(Bytes),
    File(FileSpan),
}

/// A framed response in pieces (see [`splice_records`]).
#[derive(Debug, Clone)]
pub struct SplicedResponse {
    pub parts: Vec<ResponsePart>,
    /// Bytes on the wire, size prefix included.
    pub len: usize,
}

/// Length of a records placeholder: an 8-byte per-process secret, then a 4-byte tag and the
/// 4-byte index of the file spans it stands for.
pub const PLACEHOLDER_LEN: usize = 16;

/// The placeholder that stands for `spans[index]` in [`splice_records`]: encoded where a
/// partition's records bytes would go. The secret makes it unguessable, so no topic name or
/// other peer-chosen field can pass for one.
pub fn records_placeholder(index: u32) -> Bytes {
    let mut out = BytesMut::with_capacity(PLACEHOLDER_LEN);
    out.put_slice(&placeholder_secret());
    out.put_slice(b"FZC1");
    out.put_u32(index);
    out.freeze()
}

fn placeholder_secret() -> [u8; 8] {
    use std::hash::{BuildHasher, Hasher};
    static SECRET: std::sync::OnceLock<[u8; 8]> = std::sync::OnceLock::new();
    *SECRET.get_or_init(|| {
        // std's RandomState is keyed from the OS's randomness.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x4665_7272_795a_4331);
        h.finish().to_be_bytes()
    })
}

/// Turns a framed response (from [`encode_response`]) whose records fields hold
/// [`records_placeholder`]s into pieces: the encoded bytes around each placeholder, the
/// records length prefix rewritten for the real length (`i32` before v12, compact varint
/// after), and the file spans in its place; the frame's size prefix is rewritten to match.
/// Records bytes are never touched: this is how a zero-copy fetch is encoded with no I/O.
/// `None` if a placeholder is not where one should be (the caller then copies instead).
pub fn splice_records(
    framed: Bytes,
    flexible: bool,
    spans: &[Vec<FileSpan>],
) -> Option<SplicedResponse> {
    let secret = placeholder_secret();
    let prefix_len = if flexible { 1 } else { 4 };
    let old_prefix: &[u8] = if flexible {
        &[PLACEHOLDER_LEN as u8 + 1]
    } else {
        &[0, 0, 0, PLACEHOLDER_LEN as u8]
    };
    // (where the prefix starts, which spans)
    let mut found: Vec<(usize, usize)> = Vec::new();
    let mut at = 4;
    while let Some(i) = framed[at..]
        .windows(secret.len())
        .position(|w| w == secret.as_slice())
        .map(|i| i + at)
    {
        let marker = framed.get(i..i + PLACEHOLDER_LEN)?;
        if marker[8..12] != *b"FZC1" || i < 4 + prefix_len {
            return None;
        }
        let index = u32::from_be_bytes([marker[12], marker[13], marker[14], marker[15]]) as usize;
        if index >= spans.len() || framed[i - prefix_len..i] != *old_prefix {
            return None;
        }
        found.push((i - prefix_len, index));
        at = i + PLACEHOLDER_LEN;
    }
    let mut parts = Vec::with_capacity(found.len() * 3 + 1);
    let mut len = 0usize;
    let mut from = 0usize;
    for (start, index) in found {
        parts.push(ResponsePart::Bytes(framed.slice(from..start)));
        len += start - from;
        let records: usize = spans[index].iter().map(|s| s.len).sum();
        let mut prefix = BytesMut::with_capacity(5);
        if flexible {
            put_uvarint(&mut prefix, u32::try_from(records + 1).ok()?);
        } else {
            prefix.put_i32(i32::try_from(records).ok()?);
        }
        len += prefix.len() + records;
        parts.push(ResponsePart::Bytes(prefix.freeze()));
        parts.extend(
            spans[index]
                .iter()
                .filter(|s| s.len > 0)
                .cloned()
                .map(ResponsePart::File),
        );
        from = start + prefix_len + PLACEHOLDER_LEN;
    }
    parts.push(ResponsePart::Bytes(framed.slice(from..)));
    len += framed.len() - from;
    let size = i32::try_from(len - 4).ok()?;
    // The size prefix lives in the first piece, which begins at the frame's start.
    match parts.first_mut() {
        Some(ResponsePart::Bytes(first)) if first.len() >= 4 => {
            let mut head = BytesMut::from(&first[..]);
            head[..4].copy_from_slice(&size.to_be_bytes());
            *first = head.freeze();
        }
        _ => return None,
    }
    Some(SplicedResponse { parts, len })
}

fn put_uvarint(out: &mut BytesMut, mut v: u32) {
    while v >= 0x80 {
        out.put_u8((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
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

    /// A response spliced around placeholders, with the spans' bytes put back, is exactly the
    /// response encoded with the records in place: both length-prefix encodings (i32 before
    /// v12, compact varint from v12, including lengths needing 1 to 3 varint bytes), spans
    /// over two files, a partition whose records are copied, and topics reordered.
    #[test]
    fn spliced_fetch_responses_equal_copied_ones() {
        use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
        use kafka_protocol::messages::{FetchResponse, TopicName};
        use kafka_protocol::protocol::StrBytes;
        use std::io::Write;
        use std::os::unix::fs::FileExt;
        use std::sync::Arc;

        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        for (i, len) in [70_000usize, 300].into_iter().enumerate() {
            let path = dir.path().join(format!("{i}.log"));
            let mut f = std::fs::File::create(&path).unwrap();
            f.write_all(&(0..len).map(|b| (b * 7 + i) as u8).collect::<Vec<_>>())
                .unwrap();
            files.push(Arc::new(std::fs::File::open(&path).unwrap()));
        }
        let span = |f: usize, pos: u64, len: usize| FileSpan {
            file: files[f].clone(),
            pos,
            len,
        };
        let spans = vec![
            vec![span(0, 10, 100)],
            vec![span(0, 1000, 60_000), span(1, 0, 300)],
            vec![span(1, 5, 20)],
        ];
        let bytes_of = |s: &[FileSpan]| -> Bytes {
            let mut out = Vec::new();
            for s in s {
                let mut buf = vec![0u8; s.len];
                s.file.read_exact_at(&mut buf, s.pos).unwrap();
                out.extend(buf);
            }
            Bytes::from(out)
        };
        let body = |records: &dyn Fn(usize) -> Bytes| {
            let partition = |i: usize, r: Bytes| {
                PartitionData::default()
                    .with_partition_index(i as i32)
                    .with_high_watermark(1000)
                    .with_records(Some(r))
            };
            let topic = |name: &str| {
                FetchableTopicResponse::default()
                    .with_topic(TopicName(StrBytes::from_string(name.to_string())))
            };
            FetchResponse::default().with_responses(vec![
                topic("b").with_partitions(vec![
                    partition(2, records(2)),
                    partition(7, Bytes::from_static(b"copied")),
                ]),
                topic("a")
                    .with_partitions(vec![partition(0, records(0)), partition(1, records(1))]),
            ])
        };
        for version in [4, 11, 12] {
            let with_placeholders = body(&|i| records_placeholder(i as u32));
            let with_records = body(&|i| bytes_of(&spans[i]));
            let framed = encode_response(ApiKey::Fetch, version, 9, &with_placeholders).unwrap();
            let spliced = splice_records(framed, version >= 12, &spans).unwrap();
            let mut wire = Vec::new();
            for part in &spliced.parts {
                match part {
                    ResponsePart::Bytes(b) => wire.extend_from_slice(b),
                    ResponsePart::File(s) => {
                        wire.extend_from_slice(&bytes_of(std::slice::from_ref(s)))
                    }
                }
            }
            let expected = encode_response(ApiKey::Fetch, version, 9, &with_records).unwrap();
            assert_eq!(spliced.len, expected.len(), "v{version}");
            assert!(wire == expected, "v{version}: spliced bytes differ");
        }
        // A placeholder whose index has no spans is refused, not guessed at.
        let framed = encode_response(
            ApiKey::Fetch,
            12,
            9,
            &body(&|i| records_placeholder(i as u32 + 5)),
        )
        .unwrap();
        assert!(splice_records(framed, true, &spans).is_none());
    }

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
