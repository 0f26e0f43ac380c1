//! `ferry produce` and `ferry consume`: a kcat-like client over the Kafka protocol, on the
//! pipelined Kafka client `ferry bench` uses (`client::kafka`; no librdkafka).
//!
//! Produce reads lines (stdin or `-f FILE`), optionally splits a key off each at `-K SEP`,
//! picks the partition as Kafka's default partitioner does (murmur2 of the key; keyless
//! records go in batches that rotate over the partitions) and sends acks=all produce requests,
//! several in flight. Lines are batched while input is waiting and flushed as soon as it is
//! not, so an interactive stdin sends each line at once and a file goes in large batches.
//!
//! Consume fetches from one or all partitions starting at `-o beginning|end|N|-N`, prints the
//! value per line (or `key SEP value`, or one JSON object per message) and stops after `-c`
//! messages or, with `-e`, at the end of the partitions. `-o -N` reads like `tail -n N`: the
//! last N messages, then it stops at the end (`--follow` keeps waiting, like `tail -f`), so
//! `-o -10 -c 10` never hangs on a partition that holds fewer than ten.

use std::collections::VecDeque;
use std::io::{BufRead, IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, BrokerId, FetchRequest, ProduceResponse, TopicName};
use kafka_protocol::records::RecordBatchDecoder;
use serde_json::{json, Map, Value};

use super::commands::{ConsumeArgs, ProduceArgs};
use super::CliError;
use crate::bench::Progress;
use crate::client::kafka::{
    kafka_error, produce_request, topic_metadata_request, topic_name, Connection, Pending,
};
use crate::client::ClientError;
use crate::log::batch::{try_encode_batch, BatchIter, EncodeOptions, SimpleRecord};

const PRODUCE: (i16, i16) = (3, 12);
const FETCH: (i16, i16) = (4, 12);
const METADATA: (i16, i16) = (1, 12);
/// How long to wait for any one answer.
const TIMEOUT: Duration = Duration::from_secs(30);
/// A batch is sent at this many records or bytes, whichever comes first.
const BATCH_RECORDS: usize = 1000;
const BATCH_BYTES: usize = 512 * 1024;
/// Produce requests in flight before waiting for the oldest.
const IN_FLIGHT: usize = 8;
/// Bytes one fetch may return per partition.
const FETCH_BYTES: i32 = 4 * 1024 * 1024;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Runs produce or consume on a runtime of its own (multi-threaded: input is read on a
/// blocking thread while answers arrive).
pub fn run_blocking<F>(f: F) -> Result<(), CliError>
where
    F: std::future::Future<Output = Result<(), CliError>>,
{
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::Io(format!("cannot start the async runtime: {e}")))?
        .block_on(f)
}

/// The topic's partition count, or an error saying how to create it.
async fn partition_count(conn: &Connection, topic: &str) -> Result<i32, CliError> {
    let v = conn.version(ApiKey::Metadata, METADATA)?;
    let request = topic_metadata_request(topic, v);
    let md = conn.call(v, &request).await?;
    let t = md
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
        .ok_or_else(|| missing_topic(topic))?;
    if t.error_code == 3 {
        return Err(missing_topic(topic));
    }
    if t.error_code != 0 {
        return Err(kafka_error(
            "Metadata",
            format!(" for topic {topic}"),
            t.error_code,
            None,
        )
        .into());
    }
    Ok(t.partitions.len() as i32)
}

fn missing_topic(topic: &str) -> CliError {
    CliError::Usage(format!(
        "topic `{topic}` does not exist — create it with `ferry topic create {topic}`"
    ))
}

fn check_partition(p: i32, count: i32, topic: &str) -> Result<(), CliError> {
    if p < 0 || p >= count {
        return Err(CliError::Usage(format!(
            "topic `{topic}` has partitions 0..{} (asked for {p})",
            count - 1
        )));
    }
    Ok(())
}

// --- produce ------------------------------------------------------------------------------------

struct Producer {
    conn: Connection,
    version: i16,
    topic: TopicName,
    topic_str: String,
    in_flight: VecDeque<(i32, u64, Pending<ProduceResponse>)>,
    acked: u64,
}

impl Producer {
    async fn send(&mut self, partition: i32, records: Vec<SimpleRecord>) -> Result<(), CliError> {
        if records.is_empty() {
            return Ok(());
        }
        let n = records.len() as u64;
        let batch: Bytes = try_encode_batch(&records, &EncodeOptions::default())
            .map(BytesMut::freeze)
            .map_err(|e| ClientError::Failed(format!("cannot encode a record batch: {e}")))?;
        let request = produce_request(&self.topic, partition, batch, TIMEOUT.as_millis() as i32);
        while self.in_flight.len() >= IN_FLIGHT {
            self.wait_one().await?;
        }
        let pending = self.conn.send(self.version, &request).await?;
        self.in_flight.push_back((partition, n, pending));
        Ok(())
    }

    async fn wait_one(&mut self) -> Result<(), CliError> {
        let Some((partition, n, pending)) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let (response, _) = pending.wait().await?;
        let found = response
            .responses
            .iter()
            .flat_map(|t| t.partition_responses.iter())
            .find(|p| p.index == partition)
            .ok_or_else(|| {
                CliError::Protocol(format!("no produce answer for partition {partition}"))
            })?;
        if found.error_code != 0 {
            return Err(kafka_error(
                "Produce",
                format!(" for topic {} partition {partition}", self.topic_str),
                found.error_code,
                found.error_message.as_deref(),
            )
            .into());
        }
        self.acked += n;
        Ok(())
    }
}

/// Splits a line into (key, value) at the first `sep`; a line without it has no key.
fn split_line(line: Vec<u8>, sep: Option<&[u8]>) -> (Option<Bytes>, Bytes) {
    if let Some(sep) = sep.filter(|s| !s.is_empty()) {
        if let Some(i) = line.windows(sep.len()).position(|w| w == sep) {
            let value = Bytes::copy_from_slice(&line[i + sep.len()..]);
            return (Some(Bytes::copy_from_slice(&line[..i])), value);
        }
    }
    (None, Bytes::from(line))
}

/// Kafka's default partitioner for a keyed record.
fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    (crate::broker::topic_router::murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

pub async fn produce(a: ProduceArgs) -> Result<(), CliError> {
    let conn = Connection::connect(&a.bootstrap, TIMEOUT).await?;
    let partitions = partition_count(&conn, &a.topic).await?;
    if let Some(p) = a.partition {
        check_partition(p, partitions, &a.topic)?;
    }
    let version = conn.version(ApiKey::Produce, PRODUCE)?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16 * 1024);
    let file = a.file.clone();
    let reader = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let input: Box<dyn BufRead> = match &file {
            Some(path) => Box::new(std::io::BufReader::new(
                std::fs::File::open(path)
                    .map_err(|e| format!("cannot open {}: {e}", path.display()))?,
            )),
            None => Box::new(std::io::stdin().lock()),
        };
        let mut input = input;
        loop {
            let mut line = Vec::new();
            match input.read_until(b'\n', &mut line) {
                Ok(0) => return Ok(()),
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                        if line.last() == Some(&b'\r') {
                            line.pop();
                        }
                    }
                    if tx.blocking_send(line).is_err() {
                        return Ok(());
                    }
                }
                Err(e) => return Err(format!("reading the input failed: {e}")),
            }
        }
    });
    let progress = Progress::start_with_unit(
        format!("producing to {}", a.topic),
        None,
        a.file.is_some() && !a.json,
        "messages",
    );
    let counter = progress.counter();
    let started = Instant::now();
    let mut producer = Producer {
        conn,
        version,
        topic: topic_name(&a.topic),
        topic_str: a.topic.clone(),
        in_flight: VecDeque::new(),
        acked: 0,
    };
    let sep = a.key_delimiter.as_ref().map(|s| s.as_bytes().to_vec());
    let mut buffers: Vec<(Vec<SimpleRecord>, usize)> =
        (0..partitions).map(|_| (Vec::new(), 0)).collect();
    let mut round_robin = 0i32;
    let (mut sent, mut bytes) = (0u64, 0u64);
    let result: Result<(), CliError> = async {
        loop {
            let line = match rx.try_recv() {
                Ok(l) => l,
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                    // Input is not waiting: send what we have so an interactive line goes now.
                    for p in 0..partitions {
                        let (recs, _) = std::mem::take(&mut buffers[p as usize]);
                        producer.send(p, recs).await?;
                    }
                    if a.partition.is_none() {
                        round_robin = (round_robin + 1) % partitions;
                    }
                    match rx.recv().await {
                        Some(l) => l,
                        None => break,
                    }
                }
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => break,
            };
            let (key, value) = split_line(line, sep.as_deref());
            let partition = match (a.partition, &key) {
                (Some(p), _) => p,
                (None, Some(k)) => partition_for_key(k, partitions),
                (None, None) => round_robin,
            };
            let size = value.len() + key.as_ref().map_or(0, Bytes::len);
            bytes += value.len() as u64;
            sent += 1;
            counter.store(producer.acked, Ordering::Relaxed);
            let buf = &mut buffers[partition as usize];
            buf.0.push(SimpleRecord {
                key,
                value: Some(value),
                headers: vec![],
                timestamp: now_ms(),
            });
            buf.1 += size;
            if buf.0.len() >= BATCH_RECORDS || buf.1 >= BATCH_BYTES {
                let (recs, _) = std::mem::take(buf);
                producer.send(partition, recs).await?;
                // Keyless records stick to a partition for a batch, then move on (Kafka's
                // sticky partitioner).
                if a.partition.is_none() && partition == round_robin {
                    round_robin = (round_robin + 1) % partitions;
                }
            }
        }
        for p in 0..partitions {
            let (recs, _) = std::mem::take(&mut buffers[p as usize]);
            producer.send(p, recs).await?;
        }
        while !producer.in_flight.is_empty() {
            producer.wait_one().await?;
            counter.store(producer.acked, Ordering::Relaxed);
        }
        Ok(())
    }
    .await;
    progress.finish().await;
    result?;
    match reader.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(CliError::Io(e)),
        Err(e) => return Err(CliError::Io(format!("the input reader failed: {e}"))),
    }
    let secs = started.elapsed().as_secs_f64();
    let summary = json!({"topic": a.topic, "messages": producer.acked, "bytes": bytes,
        "seconds": (secs * 1000.0).round() / 1000.0});
    debug_assert_eq!(sent, producer.acked);
    if a.json {
        println!("{summary}");
    } else if a.file.is_some() || std::io::stderr().is_terminal() {
        eprintln!(
            "produced {} message(s), {} byte(s), to {} in {:.2} s ({:.0} msg/s)",
            producer.acked,
            bytes,
            a.topic,
            secs,
            producer.acked as f64 / secs.max(1e-9)
        );
    }
    Ok(())
}

// --- consume ------------------------------------------------------------------------------------

/// ListOffsets for one partition (the bench's request, with its errors as the CLI's).
async fn list_offset(
    conn: &Connection,
    topic: &str,
    partition: i32,
    timestamp: i64,
) -> Result<i64, CliError> {
    Ok(crate::client::kafka::list_offset(conn, topic, partition, timestamp).await?)
}

/// Where `-o` says to start in one partition.
async fn start_offset(
    conn: &Connection,
    topic: &str,
    partition: i32,
    spec: &str,
) -> Result<i64, CliError> {
    match spec {
        "beginning" | "earliest" | "start" => list_offset(conn, topic, partition, -2).await,
        "end" | "latest" => list_offset(conn, topic, partition, -1).await,
        n => {
            let n: i64 = n.parse().map_err(|_| {
                CliError::Usage(format!(
                    "-o `{spec}`: use beginning, end, an offset N or -N (N before the end)"
                ))
            })?;
            if n >= 0 {
                return Ok(n);
            }
            let end = list_offset(conn, topic, partition, -1).await?;
            let start = list_offset(conn, topic, partition, -2).await?;
            Ok((end + n).max(start))
        }
    }
}

fn text(b: &Option<Bytes>) -> Value {
    match b {
        Some(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
        None => Value::Null,
    }
}

pub async fn consume(a: ConsumeArgs) -> Result<(), CliError> {
    let conn = Connection::connect(&a.bootstrap, TIMEOUT).await?;
    let partitions = partition_count(&conn, &a.topic).await?;
    let chosen: Vec<i32> = match a.partition {
        Some(p) => {
            check_partition(p, partitions, &a.topic)?;
            vec![p]
        }
        None => (0..partitions).collect(),
    };
    // `-o -N` is "the last N": it ends at the end of the partitions unless told to follow.
    let from_end = a.offset.starts_with('-');
    let stop_at_end = a.exit || (from_end && !a.follow);
    let mut next = Vec::with_capacity(chosen.len());
    for p in &chosen {
        next.push((*p, start_offset(&conn, &a.topic, *p, &a.offset).await?));
    }
    let version = conn.version(ApiKey::Fetch, FETCH)?;
    let topic = topic_name(&a.topic);
    let limit = a.count.unwrap_or(u64::MAX);
    let mut printed = 0u64;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let sep = a.key_delimiter.clone();
    while printed < limit {
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(500)
            .with_min_bytes(1)
            .with_max_bytes(FETCH_BYTES)
            .with_isolation_level(1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic.clone())
                .with_partitions(
                    next.iter()
                        .map(|(p, o)| {
                            FetchPartition::default()
                                .with_partition(*p)
                                .with_fetch_offset(*o)
                                .with_partition_max_bytes(FETCH_BYTES)
                        })
                        .collect(),
                )]);
        let response = conn.call(version, &request).await?;
        if response.error_code != 0 {
            return Err(kafka_error("Fetch", String::new(), response.error_code, None).into());
        }
        let mut at_end = true;
        for data in response.responses.iter().flat_map(|t| t.partitions.iter()) {
            let p = data.partition_index;
            let Some(slot) = next.iter_mut().find(|(q, _)| *q == p) else {
                continue;
            };
            if data.error_code != 0 {
                return Err(kafka_error(
                    "Fetch",
                    format!(" for topic {} partition {p}", a.topic),
                    data.error_code,
                    None,
                )
                .into());
            }
            let raw = data.records.clone().unwrap_or_default();
            let mut moved = false;
            for (_, range) in BatchIter::new(&raw) {
                let mut batch = raw.slice(range);
                let set = RecordBatchDecoder::decode(&mut batch).map_err(|e| {
                    CliError::Protocol(format!("undecodable record batch in partition {p}: {e}"))
                })?;
                for r in set.records {
                    if r.control || r.offset < slot.1 {
                        continue;
                    }
                    slot.1 = r.offset + 1;
                    moved = true;
                    if printed >= limit {
                        break;
                    }
                    printed += 1;
                    let written = if a.json {
                        let headers: Map<String, Value> = r
                            .headers
                            .iter()
                            .map(|(k, v)| (k.to_string(), text(v)))
                            .collect();
                        let line = json!({"topic": a.topic, "partition": p, "offset": r.offset,
                            "timestamp": r.timestamp, "key": text(&r.key), "value": text(&r.value),
                            "headers": headers});
                        writeln!(out, "{line}")
                    } else {
                        let mut line = Vec::new();
                        if let Some(sep) = &sep {
                            line.extend_from_slice(r.key.as_deref().unwrap_or_default());
                            line.extend_from_slice(sep.as_bytes());
                        }
                        line.extend_from_slice(r.value.as_deref().unwrap_or_default());
                        line.push(b'\n');
                        out.write_all(&line)
                    };
                    if written.is_err() {
                        // The reader went away (`| head`): that is a normal end.
                        return Ok(());
                    }
                }
            }
            // A batch ending in control records leaves the offset behind the high watermark
            // with nothing printable: step over it.
            if !moved {
                if let Some(last) = BatchIter::new(&raw).last() {
                    slot.1 = slot.1.max(last.0.last_offset() + 1);
                }
            }
            if slot.1 < data.high_watermark {
                at_end = false;
            }
        }
        if out.flush().is_err() {
            return Ok(());
        }
        if stop_at_end && at_end {
            break;
        }
    }
    let _ = out.flush();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_at_the_first_separator() {
        let (k, v) = split_line(b"k1:a:b".to_vec(), Some(b":"));
        assert_eq!(k.as_deref(), Some(&b"k1"[..]));
        assert_eq!(&v[..], b"a:b");
        let (k, v) = split_line(b"plain".to_vec(), Some(b":"));
        assert!(k.is_none());
        assert_eq!(&v[..], b"plain");
    }

    #[test]
    fn keys_pick_partitions_like_kafka() {
        // Kafka: Utils.toPositive(Utils.murmur2(key)) % partitions, with murmur2("21") =
        // -973932308 (so toPositive = 1173551340) and murmur2("abc") = 479470107.
        assert_eq!(partition_for_key(b"21", 7), 1_173_551_340 % 7);
        assert_eq!(partition_for_key(b"abc", 10), 479_470_107 % 10);
        assert_eq!(partition_for_key(b"abc", 1), 0);
    }
}
