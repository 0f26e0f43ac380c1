//! The records inside an uncompressed record batch v2, encoded and decoded directly between
//! [`SimpleRecord`]s and bytes.
//!
//! Every AMQP publish becomes a one-record batch and every AMQP delivery reads one back, so this
//! is on the broker's hot path. Going through the `kafka-protocol` crate's `Record` cost an
//! `IndexMap` and a `StrBytes` per header and a `Record` per record in each direction (about 6%
//! of the broker's CPU per AMQP message in perf); here records are written straight into the
//! batch buffer and read straight out of it. Compressed batches (only Kafka producers write
//! them) still go through the crate's decoder, which knows the codecs.
//!
//! The layout is Kafka's (`DefaultRecord`): length, attributes, timestamp delta, offset delta,
//! key, value and headers, with zig-zag varints, inside the 61-byte batch header whose CRC-32C
//! covers everything from the attributes on. Header order and repeated header names are kept
//! as given (Kafka allows both). Decoding checks the CRC and every length against the bytes
//! actually present, so a damaged batch is an error, never a panic or an oversized allocation.

use bytes::{BufMut, Bytes, BytesMut};

use super::batch::{
    BatchHeader, EncodeOptions, SimpleRecord, StoredRecord, CRC_START, HEADER_LEN, LOG_OVERHEAD,
    MAGIC_V2,
};
use super::LogError;

const ATTR_TRANSACTIONAL: i16 = 1 << 4;
const ATTR_CONTROL: i16 = 1 << 5;

fn put_varint(buf: &mut BytesMut, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        buf.put_u8((z as u8) | 0x80);
        z >>= 7;
    }
    buf.put_u8(z as u8);
}

fn varint_len(v: i64) -> usize {
    let z = ((v << 1) ^ (v >> 63)) as u64;
    (64 - z.max(1).leading_zeros() as usize).div_ceil(7)
}

fn bytes_len(b: Option<&[u8]>) -> usize {
    match b {
        Some(b) => varint_len(b.len() as i64) + b.len(),
        None => varint_len(-1),
    }
}

fn put_bytes(buf: &mut BytesMut, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            put_varint(buf, b.len() as i64);
            buf.put_slice(b);
        }
        None => put_varint(buf, -1),
    }
}

/// One uncompressed batch of `records` (at least one) with the batch fields of `options`.
pub(super) fn encode(
    records: &[SimpleRecord],
    options: &EncodeOptions,
) -> Result<BytesMut, LogError> {
    let too_large = || LogError::InvalidBatch("cannot encode batch: larger than 2 GiB".into());
    let (Some(min_ts), Some(max_ts)) = (
        records.iter().map(|r| r.timestamp).min(),
        records.iter().map(|r| r.timestamp).max(),
    ) else {
        return Err(LogError::InvalidBatch(
            "a batch needs at least one record".into(),
        ));
    };
    let count = i32::try_from(records.len()).map_err(|_| too_large())?;
    // Each record's body length first, so the buffer is allocated once.
    let bodies: Vec<usize> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            1 + varint_len(r.timestamp.wrapping_sub(min_ts))
                + varint_len(i as i64)
                + bytes_len(r.key.as_deref())
                + bytes_len(r.value.as_deref())
                + varint_len(r.headers.len() as i64)
                + r.headers
                    .iter()
                    .map(|(k, v)| bytes_len(Some(k.as_bytes())) + bytes_len(v.as_deref()))
                    .sum::<usize>()
        })
        .collect();
    let total: usize = HEADER_LEN
        + bodies
            .iter()
            .map(|b| varint_len(*b as i64) + b)
            .sum::<usize>();
    let batch_length = i32::try_from(total - LOG_OVERHEAD).map_err(|_| too_large())?;
    let mut buf = BytesMut::with_capacity(total);
    buf.put_i64(options.base_offset);
    buf.put_i32(batch_length);
    buf.put_i32(options.partition_leader_epoch);
    buf.put_i8(MAGIC_V2);
    buf.put_u32(0); // CRC, filled in below
    let mut attributes = 0;
    if options.transactional {
        attributes |= ATTR_TRANSACTIONAL;
    }
    if options.control {
        attributes |= ATTR_CONTROL;
    }
    buf.put_i16(attributes);
    buf.put_i32(count - 1);
    buf.put_i64(min_ts);
    buf.put_i64(max_ts);
    buf.put_i64(options.producer_id);
    buf.put_i16(options.producer_epoch);
    buf.put_i32(options.base_sequence);
    buf.put_i32(count);
    for (i, (r, body)) in records.iter().zip(&bodies).enumerate() {
        put_varint(&mut buf, *body as i64);
        buf.put_u8(0);
        put_varint(&mut buf, r.timestamp.wrapping_sub(min_ts));
        put_varint(&mut buf, i as i64);
        put_bytes(&mut buf, r.key.as_deref());
        put_bytes(&mut buf, r.value.as_deref());
        put_varint(&mut buf, r.headers.len() as i64);
        for (k, v) in &r.headers {
            put_bytes(&mut buf, Some(k.as_bytes()));
            put_bytes(&mut buf, v.as_deref());
        }
    }
    debug_assert_eq!(buf.len(), total);
    let crc = crc32c::crc32c(&buf[CRC_START..]);
    buf[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok(buf)
}

/// Reads varints and length-prefixed fields off a batch's record section.
struct Reader {
    buf: Bytes,
    at: usize,
}

impl Reader {
    fn corrupt(what: &str) -> LogError {
        LogError::InvalidBatch(format!("cannot decode record batch: {what}"))
    }

    fn varint(&mut self) -> Result<i64, LogError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let Some(b) = self.buf.get(self.at) else {
                return Err(Self::corrupt("truncated varint"));
            };
            self.at += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(((v >> 1) as i64) ^ -((v & 1) as i64));
            }
        }
        Err(Self::corrupt("varint longer than 10 bytes"))
    }

    fn u8(&mut self) -> Result<u8, LogError> {
        let b = *self
            .buf
            .get(self.at)
            .ok_or_else(|| Self::corrupt("truncated record"))?;
        self.at += 1;
        Ok(b)
    }

    /// A length-prefixed field, `None` for length -1; shares the batch's memory.
    fn bytes(&mut self, what: &str) -> Result<Option<Bytes>, LogError> {
        let len = self.varint()?;
        if len == -1 {
            return Ok(None);
        }
        let len =
            usize::try_from(len).map_err(|_| Self::corrupt(&format!("negative {what} length")))?;
        let end = self
            .at
            .checked_add(len)
            .filter(|end| *end <= self.buf.len())
            .ok_or_else(|| Self::corrupt(&format!("{what} runs past the batch")))?;
        let out = self.buf.slice(self.at..end);
        self.at = end;
        Ok(Some(out))
    }
}

/// The records of the uncompressed batch `batch` (exactly one whole batch, header `h`),
/// checking its CRC.
pub(super) fn decode_uncompressed(
    batch: Bytes,
    h: &BatchHeader,
) -> Result<Vec<StoredRecord>, LogError> {
    let crc = crc32c::crc32c(&batch[CRC_START..]);
    if crc != h.crc {
        return Err(LogError::InvalidBatch(format!(
            "cannot decode record batch: CRC-32C mismatch (stored {:#010x}, computed {crc:#010x})",
            h.crc
        )));
    }
    let count =
        usize::try_from(h.records_count).map_err(|_| Reader::corrupt("negative record count"))?;
    let is_control = h.is_control();
    let mut r = Reader {
        buf: batch,
        at: HEADER_LEN,
    };
    // Every record takes at least 7 bytes: a count beyond that is a lie, not an allocation.
    let mut out = Vec::with_capacity(count.min((r.buf.len() - HEADER_LEN) / 7 + 1));
    for _ in 0..count {
        let len =
            usize::try_from(r.varint()?).map_err(|_| Reader::corrupt("negative record length"))?;
        let end =
            r.at.checked_add(len)
                .filter(|end| *end <= r.buf.len())
                .ok_or_else(|| Reader::corrupt("record runs past the batch"))?;
        let _attributes = r.u8()?;
        let timestamp = h.base_timestamp.wrapping_add(r.varint()?);
        let offset = h.base_offset.wrapping_add(r.varint()?);
        let key = r.bytes("key")?;
        let value = r.bytes("value")?;
        let n =
            usize::try_from(r.varint()?).map_err(|_| Reader::corrupt("negative header count"))?;
        let mut headers = Vec::with_capacity(n.min(end.saturating_sub(r.at) / 2));
        for _ in 0..n {
            let name = r
                .bytes("header name")?
                .ok_or_else(|| Reader::corrupt("null header name"))?;
            let name = String::from_utf8(name.to_vec())
                .map_err(|_| Reader::corrupt("header name is not UTF-8"))?;
            headers.push((name, r.bytes("header value")?));
        }
        if r.at != end {
            return Err(Reader::corrupt("record length does not match its fields"));
        }
        out.push(StoredRecord {
            offset,
            is_control,
            record: SimpleRecord {
                key,
                value,
                headers,
                timestamp,
            },
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::{RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions};

    fn records() -> Vec<SimpleRecord> {
        (0..5)
            .map(|i| SimpleRecord {
                key: (i != 2).then(|| Bytes::from(format!("key-{i}"))),
                value: (i != 3).then(|| Bytes::from(vec![b'v'; i * 100])),
                headers: vec![
                    ("a".into(), Some(Bytes::from_static(b"1"))),
                    ("null".into(), None),
                    ("a".into(), Some(Bytes::from(vec![7u8; 300]))),
                ],
                // Out of order, so the base timestamp is the smallest, not the first.
                timestamp: 1_000 + 10 * (5 - i as i64),
            })
            .collect()
    }

    #[test]
    fn what_kafka_protocol_decodes_is_what_was_encoded() {
        let options = EncodeOptions {
            base_offset: 40,
            producer_id: 9,
            producer_epoch: 2,
            base_sequence: 100,
            partition_leader_epoch: 3,
            transactional: true,
            control: false,
        };
        let batch = encode(&records(), &options).unwrap();
        let h = super::super::batch::validate_batch(&batch).unwrap();
        assert_eq!((h.records_count, h.last_offset_delta), (5, 4));
        assert_eq!((h.base_timestamp, h.max_timestamp), (1_010, 1_050));
        assert!(h.is_transactional());
        let mut bytes = batch.clone().freeze();
        let set = RecordBatchDecoder::decode(&mut bytes).unwrap();
        assert_eq!(set.records.len(), 5);
        for (i, (k, want)) in set.records.iter().zip(records()).enumerate() {
            assert_eq!(k.offset, 40 + i as i64);
            assert_eq!((k.producer_id, k.producer_epoch), (9, 2));
            assert_eq!(k.sequence, 100 + i as i32);
            assert_eq!(
                (&k.key, &k.value, k.timestamp),
                (&want.key, &want.value, want.timestamp)
            );
        }
        // And ours reads back everything, repeated header names included.
        let back = decode_uncompressed(batch.freeze(), &h).unwrap();
        let plain: Vec<SimpleRecord> = back.into_iter().map(|s| s.record).collect();
        assert_eq!(plain, records());
    }

    #[test]
    fn what_kafka_protocol_encodes_decodes_here() {
        let krecords: Vec<kafka_protocol::records::Record> = {
            let mut b = bytes::BytesMut::new();
            // Round trip through our encoder to build the crate's records with unique headers.
            let mut unique = records();
            for r in &mut unique {
                r.headers.truncate(2);
            }
            let batch = encode(&unique, &EncodeOptions::default()).unwrap();
            b.extend_from_slice(&batch);
            RecordBatchDecoder::decode(&mut b.freeze()).unwrap().records
        };
        let mut buf = bytes::BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &krecords,
            &RecordEncodeOptions {
                version: 2,
                compression: kafka_protocol::records::Compression::None,
            },
        )
        .unwrap();
        let h = BatchHeader::parse(&buf).unwrap();
        let back = decode_uncompressed(buf.freeze(), &h).unwrap();
        assert_eq!(back.len(), 5);
        for (s, k) in back.iter().zip(&krecords) {
            assert_eq!(
                (s.offset, &s.record.key, &s.record.value),
                (k.offset, &k.key, &k.value)
            );
            assert_eq!(s.record.headers.len(), k.headers.len());
        }
    }

    #[test]
    fn damaged_batches_are_errors_not_panics() {
        let batch = encode(&records(), &EncodeOptions::default()).unwrap();
        let h = BatchHeader::parse(&batch).unwrap();
        // A flipped byte fails the CRC.
        let mut flipped = batch.clone();
        flipped[HEADER_LEN + 3] ^= 0x40;
        assert!(decode_uncompressed(flipped.freeze(), &h).is_err());
        // Lengths that lie, with a CRC that matches them: every truncation point.
        for cut in HEADER_LEN..batch.len() {
            let mut short = BytesMut::from(&batch[..cut]);
            let crc = crc32c::crc32c(&short[CRC_START..]);
            short[17..21].copy_from_slice(&crc.to_be_bytes());
            let h = BatchHeader { crc, ..h };
            assert!(
                decode_uncompressed(short.freeze(), &h).is_err(),
                "cut at {cut}"
            );
        }
        // A huge record count does not allocate for it.
        let h = BatchHeader {
            records_count: i32::MAX,
            ..h
        };
        assert!(decode_uncompressed(batch.freeze(), &h).is_err());
    }

    #[test]
    fn varint_lengths_match_what_is_written() {
        for v in [
            0i64,
            1,
            -1,
            63,
            64,
            -64,
            -65,
            8191,
            8192,
            i32::MAX as i64,
            i64::MIN,
            i64::MAX,
        ] {
            let mut b = BytesMut::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
            let mut r = Reader {
                buf: b.freeze(),
                at: 0,
            };
            assert_eq!(r.varint().unwrap(), v);
        }
    }
}
