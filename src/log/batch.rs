//! Record batch v2: a read-only view of the 61-byte header, validation, and the two in-place
//! patches a broker is allowed to make. Pure functions over bytes; no I/O.
//!
//! Ferry never decodes or re-encodes stored batches (compressed ones stay compressed, producer
//! CRCs stay valid), so everything here works on the header alone plus one CRC-32C pass. The
//! base offset lies outside the CRC (the broker assigns it); the max timestamp and attributes lie
//! inside, so stamping `LogAppendTime` recomputes the CRC, exactly as Kafka's
//! `DefaultRecordBatch.setMaxTimestamp` does.
//!
//! [`BatchIter`] walks a buffer of concatenated batches and stops at the first one that is
//! incomplete, zero-filled (preallocated space) or invalid, reporting why in [`BatchStop`]; append
//! validation treats any stop as an error, recovery treats it as the end of the valid log.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::records::RecordBatchDecoder;

use super::LogError;

/// Size of the fixed batch header; the first record starts here.
pub const HEADER_LEN: usize = 61;
/// baseOffset + batchLength: the bytes not counted by `batchLength`.
pub const LOG_OVERHEAD: usize = 12;
/// The only batch format Ferry stores.
pub const MAGIC_V2: i8 = 2;
/// Start of the CRC-covered region (the attributes field).
pub const CRC_START: usize = 21;

const LENGTH_OFFSET: usize = 8;
const MAGIC_OFFSET: usize = 16;
const CRC_OFFSET: usize = 17;
const ATTRIBUTES_OFFSET: usize = 21;
const MAX_TIMESTAMP_OFFSET: usize = 35;
/// Bit 3 of the attributes: the timestamps are the broker's append time.
pub const ATTR_LOG_APPEND_TIME: i16 = 1 << 3;
const ATTR_COMPRESSION_MASK: i16 = 0x07;
const ATTR_TRANSACTIONAL: i16 = 1 << 4;
const ATTR_CONTROL: i16 = 1 << 5;

/// The fixed header of a record batch v2, field by field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record (assigned by the broker).
    pub base_offset: i64,
    /// Bytes after this field: total size minus 12.
    pub batch_length: i32,
    /// Leader epoch at append time (-1 if unknown).
    pub partition_leader_epoch: i32,
    /// Format version; always 2 here.
    pub magic: i8,
    /// CRC-32C of bytes `[21, end)`.
    pub crc: u32,
    /// Compression (bits 0-2), timestamp type (3), transactional (4), control (5).
    pub attributes: i16,
    /// Offset of the last record relative to `base_offset`.
    pub last_offset_delta: i32,
    /// Timestamp of the first record.
    pub base_timestamp: i64,
    /// Largest timestamp in the batch (the append time for `LogAppendTime`).
    pub max_timestamp: i64,
    /// Idempotent/transactional producer id, or -1.
    pub producer_id: i64,
    /// Producer epoch, or -1.
    pub producer_epoch: i16,
    /// Sequence of the first record, or -1.
    pub base_sequence: i32,
    /// Number of records as stated by the producer.
    pub records_count: i32,
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    i32::from_be_bytes(a)
}
fn be_u32(b: &[u8], at: usize) -> u32 {
    be_i32(b, at) as u32
}
fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

impl BatchHeader {
    /// Parses the header at the start of `buf`. Checks only what is needed to frame the batch:
    /// at least [`HEADER_LEN`] bytes, magic 2, and a length that covers the header.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, LogError> {
        if buf.len() < HEADER_LEN {
            return Err(LogError::InvalidBatch(format!(
                "{} bytes is shorter than a batch header ({HEADER_LEN})",
                buf.len()
            )));
        }
        let h = BatchHeader {
            base_offset: be_i64(buf, 0),
            batch_length: be_i32(buf, LENGTH_OFFSET),
            partition_leader_epoch: be_i32(buf, 12),
            magic: buf[MAGIC_OFFSET] as i8,
            crc: be_u32(buf, CRC_OFFSET),
            attributes: be_i16(buf, ATTRIBUTES_OFFSET),
            last_offset_delta: be_i32(buf, 23),
            base_timestamp: be_i64(buf, 27),
            max_timestamp: be_i64(buf, MAX_TIMESTAMP_OFFSET),
            producer_id: be_i64(buf, 43),
            producer_epoch: be_i16(buf, 51),
            base_sequence: be_i32(buf, 53),
            records_count: be_i32(buf, 57),
        };
        if h.magic != MAGIC_V2 {
            return Err(LogError::InvalidBatch(format!(
                "magic {} (only record batch v2 is supported)",
                h.magic
            )));
        }
        if (h.batch_length as i64) < (HEADER_LEN - LOG_OVERHEAD) as i64 {
            return Err(LogError::InvalidBatch(format!(
                "batch length {} is shorter than the header",
                h.batch_length
            )));
        }
        if h.last_offset_delta < 0 {
            return Err(LogError::InvalidBatch(format!(
                "negative lastOffsetDelta {}",
                h.last_offset_delta
            )));
        }
        Ok(h)
    }

    /// Total bytes of the batch on disk (`batch_length + 12`).
    pub fn total_size(&self) -> usize {
        self.batch_length as usize + LOG_OVERHEAD
    }

    /// Offset of the last record.
    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .saturating_add(self.last_offset_delta as i64)
    }

    /// Offset following the batch.
    pub fn next_offset(&self) -> i64 {
        self.last_offset().saturating_add(1)
    }

    /// Number of offsets the batch occupies (lastOffsetDelta + 1).
    pub fn record_count(&self) -> i64 {
        self.last_offset_delta as i64 + 1
    }

    /// Compression codec id (0 = none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    pub fn compression(&self) -> u8 {
        (self.attributes & ATTR_COMPRESSION_MASK) as u8
    }

    /// Whether the timestamps are the broker's append time.
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & ATTR_LOG_APPEND_TIME != 0
    }

    /// Part of a transaction.
    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }

    /// Holds control records (commit/abort markers).
    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }
}

/// Checks that `buf` is exactly one record batch v2: magic 2, length matching `buf.len()`, and a
/// correct CRC-32C. Returns the parsed header.
pub fn validate_batch(buf: &[u8]) -> Result<BatchHeader, LogError> {
    let h = BatchHeader::parse(buf)?;
    if h.total_size() != buf.len() {
        return Err(LogError::InvalidBatch(format!(
            "batch length field says {} bytes but {} were given",
            h.total_size(),
            buf.len()
        )));
    }
    let crc = crc32c::crc32c(&buf[CRC_START..]);
    if crc != h.crc {
        return Err(LogError::CorruptBatch(format!(
            "CRC-32C mismatch at base offset {}: stored {:#010x}, computed {:#010x}",
            h.base_offset, h.crc, crc
        )));
    }
    Ok(h)
}

/// Overwrites the base offset of the batch at the start of `buf`. The field is outside the CRC,
/// so the batch stays valid. `buf` must be at least 8 bytes (any validated batch is); shorter
/// buffers are left untouched.
pub fn set_base_offset(buf: &mut [u8], base_offset: i64) {
    if let Some(field) = buf.get_mut(0..8) {
        field.copy_from_slice(&base_offset.to_be_bytes());
    }
}

/// Marks the batch at the start of `buf` as `LogAppendTime` with `timestamp_ms` as its max
/// timestamp, and recomputes the CRC since both fields are covered by it. `buf` must be exactly
/// one validated batch; anything shorter than a header is left untouched.
pub fn set_log_append_time(buf: &mut [u8], timestamp_ms: i64) {
    if buf.len() < HEADER_LEN {
        return;
    }
    let attributes = be_i16(buf, ATTRIBUTES_OFFSET) | ATTR_LOG_APPEND_TIME;
    buf[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&attributes.to_be_bytes());
    buf[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8]
        .copy_from_slice(&timestamp_ms.to_be_bytes());
    let crc = crc32c::crc32c(&buf[CRC_START..]);
    buf[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Why a [`BatchIter`] stopped before the end of its buffer.
#[derive(Debug)]
pub enum BatchStop {
    /// A batch (or its header) starts at `at` but needs `needed` bytes from there; more data may
    /// follow in a file, or the tail was torn.
    Incomplete {
        /// Buffer position where the incomplete batch starts.
        at: usize,
        /// Bytes the batch needs from `at` (the header size if the header itself is cut).
        needed: usize,
    },
    /// The bytes at `at` are zeros (length 0, magic 0): preallocated space, not a batch.
    ZeroFilled {
        /// Buffer position of the zero region.
        at: usize,
    },
    /// The bytes at `at` are not a valid batch (bad framing or CRC).
    Invalid {
        /// Buffer position of the bad batch.
        at: usize,
        /// What is wrong with it.
        error: LogError,
    },
}

impl BatchStop {
    /// Buffer position where the valid region ends.
    pub fn at(&self) -> usize {
        match self {
            BatchStop::Incomplete { at, .. }
            | BatchStop::ZeroFilled { at }
            | BatchStop::Invalid { at, .. } => *at,
        }
    }

    /// Converts the stop into the error an append of this buffer should fail with.
    pub fn into_error(self) -> LogError {
        match self {
            BatchStop::Incomplete { at, needed } => LogError::InvalidBatch(format!(
                "truncated batch at byte {at}: needs {needed} bytes"
            )),
            BatchStop::ZeroFilled { at } => {
                LogError::InvalidBatch(format!("zero bytes instead of a batch at byte {at}"))
            }
            BatchStop::Invalid { error, .. } => error,
        }
    }
}

/// Iterates over the valid batches at the start of a buffer of concatenated batches, yielding each
/// header and its byte range, with the CRC checked. After `None`, [`BatchIter::stop`] says whether
/// the buffer ended cleanly or why the walk stopped.
#[derive(Debug)]
pub struct BatchIter<'a> {
    buf: &'a [u8],
    pos: usize,
    stop: Option<BatchStop>,
    done: bool,
}

impl<'a> BatchIter<'a> {
    /// Starts at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        BatchIter {
            buf,
            pos: 0,
            stop: None,
            done: false,
        }
    }

    /// End of the last valid batch returned so far.
    pub fn valid_len(&self) -> usize {
        self.pos
    }

    /// Why iteration stopped early; `None` while iterating or if the buffer ended exactly at a
    /// batch boundary.
    pub fn stop(&self) -> Option<&BatchStop> {
        self.stop.as_ref()
    }

    /// Takes the stop reason out of the iterator.
    pub fn take_stop(&mut self) -> Option<BatchStop> {
        self.stop.take()
    }

    fn halt(&mut self, stop: BatchStop) -> Option<(BatchHeader, Range<usize>)> {
        self.stop = Some(stop);
        self.done = true;
        None
    }
}

impl Iterator for BatchIter<'_> {
    type Item = (BatchHeader, Range<usize>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let at = self.pos;
        let rest = &self.buf[at..];
        if rest.is_empty() {
            self.done = true;
            return None;
        }
        if rest.len() < HEADER_LEN {
            return self.halt(BatchStop::Incomplete {
                at,
                needed: HEADER_LEN,
            });
        }
        // A real batch never has length 0, and magic 0 is not a v2 batch: this is the zeroed
        // space a preallocating writer keeps ahead of itself.
        if be_i32(rest, LENGTH_OFFSET) == 0 && rest[MAGIC_OFFSET] == 0 {
            return self.halt(BatchStop::ZeroFilled { at });
        }
        let header = match BatchHeader::parse(rest) {
            Ok(h) => h,
            Err(error) => return self.halt(BatchStop::Invalid { at, error }),
        };
        let size = header.total_size();
        if rest.len() < size {
            return self.halt(BatchStop::Incomplete { at, needed: size });
        }
        if let Err(error) = validate_batch(&rest[..size]) {
            return self.halt(BatchStop::Invalid { at, error });
        }
        self.pos = at + size;
        Some((header, at..at + size))
    }
}

/// Finds the first record of an uncompressed batch whose timestamp is at least `target`,
/// returning its offset and timestamp. `None` if the batch is compressed, has no such record, or
/// its record framing cannot be read (the caller then falls back to the batch's base offset).
pub fn first_record_at_or_after(batch: &[u8], target: i64) -> Option<(i64, i64)> {
    let h = BatchHeader::parse(batch).ok()?;
    if h.compression() != 0 || h.is_log_append_time() {
        return None;
    }
    let mut p = HEADER_LEN;
    let end = batch.len().min(h.total_size());
    for _ in 0..h.records_count.max(0) {
        let (len, n) = read_varint(batch.get(p..end)?)?;
        let body_start = p + n;
        let body_end = body_start.checked_add(usize::try_from(len).ok()?)?;
        let body = batch.get(body_start..body_end.min(end))?;
        // record: attributes i8, timestampDelta varlong, offsetDelta varint, ...
        let (ts_delta, m) = read_varint(body.get(1..)?)?;
        let (off_delta, _) = read_varint(body.get(1 + m..)?)?;
        let ts = h.base_timestamp.wrapping_add(ts_delta);
        if ts >= target {
            return Some((h.base_offset.saturating_add(off_delta), ts));
        }
        p = body_end;
    }
    None
}

/// Zig-zag varint (up to 64 bits) as used inside records; returns value and bytes read.
fn read_varint(buf: &[u8]) -> Option<(i64, usize)> {
    let mut v: u64 = 0;
    for (i, b) in buf.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((((v >> 1) as i64) ^ -((v & 1) as i64), i + 1));
        }
    }
    None
}

/// One record for [`encode_batch`] / [`try_encode_batch`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimpleRecord {
    /// Record key (the AMQP routing key travels here).
    pub key: Option<Bytes>,
    /// Record value.
    pub value: Option<Bytes>,
    /// Headers in order (a name may repeat, as Kafka allows).
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Timestamp in ms since the epoch.
    pub timestamp: i64,
}

/// One record read back from the log: its absolute offset, whether it belongs to a control
/// batch (transaction markers, never application data), and the record itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Absolute offset: the batch's base offset plus the record's delta.
    pub offset: i64,
    /// True for records of control batches, which readers other than Kafka fetch skip.
    pub is_control: bool,
    /// Key, value, headers and timestamp.
    pub record: SimpleRecord,
}

/// Decodes (and decompresses) the record batch at the front of `buf` and advances `buf` past it.
///
/// The one record decoder of the broker: everything above the log that needs records rather
/// than stored batch bytes (queue deliveries, topic routing, streams, tracing) calls this, so no
/// other module depends on the Kafka record format.
pub fn decode_next_batch(buf: &mut Bytes) -> Result<Vec<StoredRecord>, LogError> {
    // Uncompressed batches (every one Ferry writes) are read directly; compressed ones need
    // the codecs of the `kafka-protocol` crate.
    if let Ok(h) = BatchHeader::parse(buf) {
        if h.compression() == 0 && h.total_size() <= buf.len() {
            return super::batch_records::decode_uncompressed(buf.split_to(h.total_size()), &h);
        }
    }
    let set = RecordBatchDecoder::decode(buf)
        .map_err(|e| LogError::InvalidBatch(format!("cannot decode record batch: {e}")))?;
    Ok(set
        .records
        .into_iter()
        .map(|r| StoredRecord {
            offset: r.offset,
            is_control: r.control,
            record: SimpleRecord {
                key: r.key,
                value: r.value,
                headers: r
                    .headers
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
                timestamp: r.timestamp,
            },
        })
        .collect())
}

/// Batch-level fields for [`try_encode_batch`]. The defaults describe a plain, non-idempotent
/// producer batch at base offset 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Base offset written into the batch (the log overwrites it on append).
    pub base_offset: i64,
    /// Producer id, -1 for none.
    pub producer_id: i64,
    /// Producer epoch, -1 for none.
    pub producer_epoch: i16,
    /// Sequence of the first record, -1 for none.
    pub base_sequence: i32,
    /// Partition leader epoch, -1 for unknown.
    pub partition_leader_epoch: i32,
    /// Set the transactional attribute.
    pub transactional: bool,
    /// Set the control attribute (transaction markers; see [`encode_control_batch`]).
    pub control: bool,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            base_offset: 0,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            partition_leader_epoch: -1,
            transactional: false,
            control: false,
        }
    }
}

/// Builds one uncompressed record batch v2 at base offset 0 for a plain (non-idempotent)
/// producer (records written by [`super::batch_records`]).
///
/// Infallible by design, for tests, benches and the adapters that wrap non-Kafka messages: an
/// empty `records` — or input the encoder refuses (a batch over 2 GiB) — yields an empty buffer,
/// which [`PartitionLog::append`](super::PartitionLog::append) rejects as `InvalidBatch`. Use
/// [`try_encode_batch`] to set producer fields or to see the encoder's error.
pub fn encode_batch(records: &[SimpleRecord]) -> BytesMut {
    match try_encode_batch(records, &EncodeOptions::default()) {
        Ok(buf) => buf,
        Err(e) => {
            if !records.is_empty() {
                tracing::error!(error = %e, "cannot encode record batch");
            }
            BytesMut::new()
        }
    }
}

/// Builds one uncompressed record batch v2 from `records` with the given batch-level fields.
/// Fails on an empty record list or absurd sizes (> 2 GiB).
pub fn try_encode_batch(
    records: &[SimpleRecord],
    options: &EncodeOptions,
) -> Result<BytesMut, LogError> {
    super::batch_records::encode(records, options)
}

/// Builds a transaction marker: a control batch of producer `producer_id` at `producer_epoch`
/// with one record whose key is (version 0, `kind`) and whose value is (version 0,
/// `coordinator_epoch`), as Kafka's `EndTransactionMarker`. Written by the transaction
/// coordinator to every partition of a transaction when it commits or aborts.
pub fn encode_control_batch(
    producer_id: i64,
    producer_epoch: i16,
    kind: super::txn_index::ControlKind,
    coordinator_epoch: i32,
    timestamp: i64,
) -> BytesMut {
    let mut key = BytesMut::with_capacity(4);
    key.put_i16(0);
    key.put_i16(kind.code());
    let mut value = BytesMut::with_capacity(6);
    value.put_i16(0);
    value.put_i32(coordinator_epoch);
    let record = SimpleRecord {
        key: Some(key.freeze()),
        value: Some(value.freeze()),
        headers: Vec::new(),
        timestamp,
    };
    let options = EncodeOptions {
        producer_id,
        producer_epoch,
        transactional: true,
        control: true,
        ..EncodeOptions::default()
    };
    // One small record cannot exceed the encoder's 2 GiB bound.
    try_encode_batch(std::slice::from_ref(&record), &options).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::RecordBatchDecoder;

    fn rec(i: i64) -> SimpleRecord {
        SimpleRecord {
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(format!("value-{i}"))),
            headers: vec![("h".into(), Some(Bytes::from_static(b"v")))],
            timestamp: 1_000 + i,
        }
    }

    fn batch(n: i64) -> BytesMut {
        let recs: Vec<_> = (0..n).map(rec).collect();
        encode_batch(&recs)
    }

    #[test]
    fn encode_produces_one_valid_batch() {
        let b = batch(5);
        let h = validate_batch(&b).unwrap();
        assert_eq!(h.magic, 2);
        assert_eq!(h.base_offset, 0);
        assert_eq!(h.last_offset_delta, 4);
        assert_eq!(h.records_count, 5);
        assert_eq!(h.base_timestamp, 1_000);
        assert_eq!(h.max_timestamp, 1_004);
        assert_eq!(h.producer_id, -1);
        assert_eq!(h.base_sequence, -1);
        assert_eq!(h.total_size(), b.len());
        assert_eq!(BatchIter::new(&b).count(), 1);
    }

    /// A transaction marker is what Kafka's own decoder takes for one: a control record in a
    /// transactional batch of the producer, key (version 0, type), value (version 0, epoch).
    #[test]
    fn control_batches_decode_as_kafka_markers() {
        let mut b = encode_control_batch(
            42,
            3,
            super::super::txn_index::ControlKind::Commit,
            0,
            1_700_000_000_000,
        );
        let h = validate_batch(&b).unwrap();
        assert!(h.is_control() && h.is_transactional());
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (42, 3, -1)
        );
        let set = RecordBatchDecoder::decode(&mut b).unwrap();
        let r = &set.records[0];
        assert!(r.control && r.transactional);
        assert_eq!(r.key.as_deref(), Some(&[0u8, 0, 0, 1][..]));
        assert_eq!(r.value.as_deref(), Some(&[0u8, 0, 0, 0, 0, 0][..]));
    }

    #[test]
    fn try_encode_sets_producer_fields_and_rejects_empty() {
        let opts = EncodeOptions {
            base_offset: 7,
            producer_id: 42,
            producer_epoch: 3,
            base_sequence: 10,
            partition_leader_epoch: 5,
            transactional: true,
            control: false,
        };
        let recs: Vec<_> = (0..3).map(rec).collect();
        let b = try_encode_batch(&recs, &opts).unwrap();
        let h = validate_batch(&b).unwrap();
        assert_eq!(
            BatchIter::new(&b).count(),
            1,
            "one batch, not one per record"
        );
        assert_eq!(
            (
                h.base_offset,
                h.producer_id,
                h.producer_epoch,
                h.base_sequence
            ),
            (7, 42, 3, 10)
        );
        assert_eq!(h.partition_leader_epoch, 5);
        assert!(h.is_transactional());
        assert!(matches!(
            try_encode_batch(&[], &opts),
            Err(LogError::InvalidBatch(_))
        ));
        assert!(encode_batch(&[]).is_empty());
    }

    #[test]
    fn base_offset_patch_keeps_crc_valid() {
        let mut b = batch(3);
        set_base_offset(&mut b, 42);
        let h = validate_batch(&b).unwrap();
        assert_eq!(h.base_offset, 42);
        assert_eq!(h.last_offset(), 44);
        let mut bytes = b.freeze();
        let set = RecordBatchDecoder::decode(&mut bytes).unwrap();
        let offsets: Vec<_> = set.records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![42, 43, 44]);
    }

    #[test]
    fn log_append_time_recomputes_crc() {
        let mut b = batch(2);
        set_log_append_time(&mut b, 99_999);
        let h = validate_batch(&b).unwrap();
        assert!(h.is_log_append_time());
        assert_eq!(h.max_timestamp, 99_999);
    }

    #[test]
    fn flipped_byte_is_corrupt_and_bad_magic_invalid() {
        let mut b = batch(2);
        let last = b.len() - 1;
        b[last] ^= 0xff;
        assert!(matches!(validate_batch(&b), Err(LogError::CorruptBatch(_))));
        let mut b = batch(2);
        b[16] = 1;
        assert!(matches!(validate_batch(&b), Err(LogError::InvalidBatch(_))));
        let b = batch(2);
        assert!(matches!(
            validate_batch(&b[..b.len() - 1]),
            Err(LogError::InvalidBatch(_))
        ));
        assert!(matches!(
            validate_batch(&b[..10]),
            Err(LogError::InvalidBatch(_))
        ));
    }

    #[test]
    fn iter_reports_torn_zero_and_invalid_tails() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&batch(1));
        buf.extend_from_slice(&batch(2));
        let whole = buf.len();

        let mut it = BatchIter::new(&buf);
        assert_eq!(it.by_ref().count(), 2);
        assert!(it.stop().is_none());
        assert_eq!(it.valid_len(), whole);

        let mut it = BatchIter::new(&buf[..whole - 3]);
        assert_eq!(it.by_ref().count(), 1);
        assert!(matches!(it.stop(), Some(BatchStop::Incomplete { .. })));

        let mut zeroed = buf.clone();
        zeroed.extend_from_slice(&[0u8; 4096]);
        let mut it = BatchIter::new(&zeroed);
        assert_eq!(it.by_ref().count(), 2);
        assert!(matches!(it.stop(), Some(BatchStop::ZeroFilled { at }) if *at == whole));

        let mut bad = buf.clone();
        bad[whole - 1] ^= 1;
        let mut it = BatchIter::new(&bad);
        assert_eq!(it.by_ref().count(), 1);
        let stop = it.take_stop().unwrap();
        assert!(matches!(stop.into_error(), LogError::CorruptBatch(_)));
    }

    #[test]
    fn garbage_never_panics() {
        let mut x: u32 = 12345;
        for len in 0..400 {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            let _ = BatchIter::new(&buf).count();
            let _ = validate_batch(&buf);
            let _ = first_record_at_or_after(&buf, 0);
        }
    }

    #[test]
    fn finds_first_record_by_timestamp() {
        let mut b = batch(5);
        set_base_offset(&mut b, 10);
        assert_eq!(first_record_at_or_after(&b, 1_002), Some((12, 1_002)));
        assert_eq!(first_record_at_or_after(&b, 0), Some((10, 1_000)));
        assert_eq!(first_record_at_or_after(&b, 2_000), None);
    }
}
