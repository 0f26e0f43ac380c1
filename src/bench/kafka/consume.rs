//! The consume phase: a Fetch loop per partition from the earliest offset to the end, counting
//! records from batch headers (no per-record decoding) so the client measures the broker, not
//! itself. One fetch is in flight per partition connection by default, as in a Kafka consumer;
//! `--fetch-in-flight` pipelines them at predicted offsets (see [`consume_partition`]) so the
//! broker need not wait for the client between two answers.

use super::*;

pub(super) fn fetch_request(
    topic: &TopicName,
    partition: i32,
    offset: i64,
    max_bytes: i32,
    max_wait_ms: i32,
) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(max_bytes)
        .with_isolation_level(0)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic.clone())
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(max_bytes)])])
}

/// The one partition a fetch asked for, with its error code turned into an error.
pub(super) fn fetched_partition(
    response: FetchResponse,
    topic: &str,
    partition: i32,
    addr: &str,
) -> Result<PartitionData, BenchError> {
    if response.error_code != 0 {
        return Err(BenchError::from(kafka_error(
            "Fetch",
            String::new(),
            response.error_code,
            None,
        )));
    }
    let data = response
        .responses
        .into_iter()
        .flat_map(|t| t.partitions.into_iter())
        .find(|p| p.partition_index == partition)
        .ok_or_else(|| ClientError::Protocol {
            addr: addr.to_string(),
            api: "Fetch".into(),
            detail: format!("no answer for partition {partition}"),
        })?;
    if data.error_code != 0 {
        return Err(BenchError::from(kafka_error(
            "Fetch",
            format!(" for topic {topic} partition {partition}"),
            data.error_code,
            None,
        )));
    }
    Ok(data)
}

/// Walks whole batches by their headers: `(records at or after offset, their batch bytes, next
/// offset)`. A trailing partial batch (cut by the fetch size) is ignored.
pub(super) fn count_batches(records: &[u8], offset: i64) -> (u64, u64, i64) {
    let mut pos = 0usize;
    let mut count = 0u64;
    let mut bytes = 0u64;
    let mut next = offset;
    while let Some(rest) = records.get(pos..) {
        let Ok(h) = BatchHeader::parse(rest) else {
            break;
        };
        let size = h.total_size();
        if rest.len() < size {
            break;
        }
        let last = h.last_offset();
        if last >= next {
            count += if h.base_offset >= next {
                h.record_count().max(0) as u64
            } else {
                (last - next + 1) as u64
            };
            bytes += size as u64;
            next = last + 1;
        }
        pos += size;
    }
    (count, bytes, next)
}

#[derive(Default)]
pub(super) struct ConsumeStats {
    pub(super) records: u64,
    pub(super) log_bytes: u64,
}

/// How one partition is fetched: the per-fetch byte limit and how many fetches may be on the
/// wire at once.
#[derive(Clone, Copy)]
pub(super) struct FetchPlan {
    pub(super) max_bytes: i32,
    pub(super) in_flight: usize,
}

/// Fetches `[start, end)` of one partition, counting records from batch headers.
///
/// A Kafka consumer asks for the next offset only once the previous answer is in, so one
/// partition over one connection waits a round trip per fetch, and the broker's socket runs dry
/// meanwhile. With `plan.in_flight` above 1 the fetches are pipelined on the connection instead:
/// each answer shows how many records a full fetch covers (the *stride*; the bench's batches
/// are all alike, so every full fetch covers the same number), and the next fetches ask for the
/// offsets that stride predicts. An answer is checked against what was counted so far: one that
/// starts at or before the next uncounted offset is counted from there on (overlap is skipped);
/// one that starts past it (a wrong prediction, which would leave a gap) is dropped with every
/// fetch behind it, and fetching resumes from the next uncounted offset. So every record is
/// still counted exactly once, from bytes that arrived, whatever the prediction does.
pub(super) async fn consume_partition(
    conn: Connection,
    version: i16,
    topic: String,
    partition: i32,
    (start, end): (i64, i64),
    plan: FetchPlan,
    done: Arc<AtomicU64>,
) -> Result<ConsumeStats, BenchError> {
    let name = topic_name(&topic);
    let depth = plan.in_flight.max(1);
    let mut stats = ConsumeStats::default();
    // The next record not yet counted.
    let mut offset = start;
    let mut stalls = 0u32;
    // Fetches on the wire, oldest first, with the offset each asked for.
    let mut in_flight: VecDeque<(i64, Pending<FetchResponse>)> = VecDeque::with_capacity(depth);
    // Records one full fetch covers; unknown until a full answer arrived (one fetch at a time
    // until then).
    let mut stride: Option<i64> = None;
    while offset < end {
        let mut ask = match in_flight.back() {
            None => Some(offset),
            Some((last, _)) => stride.map(|s| last + s),
        };
        while let Some(at) = ask.filter(|&at| at < end && in_flight.len() < depth) {
            let request = fetch_request(&name, partition, at, plan.max_bytes, 500);
            in_flight.push_back((at, conn.send(version, &request).await?));
            ask = stride.map(|s| at + s);
        }
        let Some((asked, pending)) = in_flight.pop_front() else {
            break;
        };
        let (response, _) = pending.wait().await?;
        let data = fetched_partition(response, &topic, partition, conn.addr())?;
        if asked > offset {
            // Predicted past where the last answer ended: drop it and everything behind it
            // (their answers are read and discarded by the connection) and ask again.
            in_flight.clear();
            stride = None;
            continue;
        }
        let records = data.records.unwrap_or_default();
        let (count, bytes, next) = count_batches(&records, offset);
        if next == offset {
            in_flight.clear();
            stride = None;
            stalls += 1;
            if stalls >= 20 {
                return Err(BenchError::Failed(format!(
                    "fetching {topic} partition {partition} made no progress at offset {offset} \
                     (high watermark {}, {} bytes returned) — try a larger --fetch-bytes",
                    data.high_watermark,
                    records.len()
                )));
            }
            continue;
        }
        stalls = 0;
        if depth > 1 {
            stride = Some(next - asked);
        }
        stats.records += count;
        stats.log_bytes += bytes;
        done.fetch_add(count, Ordering::Relaxed);
        offset = next;
    }
    Ok(stats)
}

pub(super) async fn consume_phase(
    ctx: &Ctx,
    label: &str,
    conns: &[Connection],
    topic: &str,
    size: usize,
    starts: &[i64],
    ends: &[i64],
) -> Result<Phase, BenchError> {
    let total: i64 = ends.iter().zip(starts).map(|(e, s)| e - s).sum();
    let progress = Progress::start(
        format!("{label} consume"),
        Some(total.max(0) as u64),
        ctx.progress,
    );
    let mut tasks = JoinSet::new();
    let meter = CpuMeter::start().with_broker(ctx.broker.as_ref());
    for (p, conn) in conns.iter().enumerate() {
        tasks.spawn(consume_partition(
            conn.clone(),
            ctx.fetch_v,
            topic.to_string(),
            p as i32,
            (starts[p], ends[p]),
            FetchPlan {
                max_bytes: ctx.args.fetch_bytes as i32,
                in_flight: ctx.args.fetch_in_flight,
            },
            progress.counter(),
        ));
    }
    let mut stats = ConsumeStats::default();
    while let Some(joined) = tasks.join_next().await {
        let s = joined.map_err(|e| BenchError::Failed(format!("consumer task failed: {e}")))??;
        stats.records += s.records;
        stats.log_bytes += s.log_bytes;
    }
    let cpu = meter.stop();
    progress.finish().await;
    Ok(Phase::new(
        stats.records,
        stats.records * size as u64,
        stats.log_bytes,
        cpu.wall,
        cpu,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch::encode_batch;

    /// Batches of 1..=7 records of uneven sizes, so the stride a fetch shows rarely predicts the
    /// next answer's start: the pipelined loop must drop gapped answers, skip overlapping records
    /// and still count each record once.
    #[tokio::test]
    async fn pipelined_fetches_count_every_record_once_when_predictions_miss() {
        let broker = crate::testing::TestBroker::start().await.unwrap();
        broker
            .core()
            .create_topic("pipelined", 1, Default::default())
            .await
            .unwrap();
        let handle = broker.core().partition("pipelined", 0).unwrap();
        let mut total = 0i64;
        let mut bytes = 0u64;
        for b in 0..200usize {
            let records: Vec<_> = (0..1 + b % 7)
                .map(|r| SimpleRecord {
                    value: Some(Bytes::from(vec![r as u8; 100 + (b * 37) % 900])),
                    timestamp: 1_000,
                    ..Default::default()
                })
                .collect();
            let batch = encode_batch(&records);
            bytes += batch.len() as u64;
            total += records.len() as i64;
            handle.append(batch).await.unwrap();
        }
        let conn = Connection::connect(&broker.kafka_bootstrap(), Duration::from_secs(10))
            .await
            .unwrap();
        let version = conn.version(ApiKey::Fetch, FETCH).unwrap();
        for (in_flight, max_bytes) in [(1, 4096), (2, 4096), (4, 3000), (8, 20_000)] {
            let done = Arc::new(AtomicU64::new(0));
            let stats = consume_partition(
                conn.clone(),
                version,
                "pipelined".into(),
                0,
                (0, total),
                FetchPlan {
                    max_bytes,
                    in_flight,
                },
                done.clone(),
            )
            .await
            .unwrap();
            assert_eq!(stats.records, total as u64, "{in_flight} in flight");
            assert_eq!(stats.log_bytes, bytes, "{in_flight} in flight");
            assert_eq!(done.load(Ordering::Relaxed), total as u64);
            // From the middle of a batch: the records before the start are not counted.
            let stats = consume_partition(
                conn.clone(),
                version,
                "pipelined".into(),
                0,
                (5, total),
                FetchPlan {
                    max_bytes,
                    in_flight,
                },
                Arc::new(AtomicU64::new(0)),
            )
            .await
            .unwrap();
            assert_eq!(stats.records, total as u64 - 5, "{in_flight} in flight");
        }
        broker.stop().await;
    }
}
