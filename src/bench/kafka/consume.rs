//! The consume phase: a Fetch loop per partition from the earliest offset to the end, one fetch
//! in flight per connection as a Kafka consumer does, counting records from batch headers
//! (no per-record decoding) so the client measures the broker, not itself.

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

#[allow(clippy::too_many_arguments)]
pub(super) async fn consume_partition(
    conn: Connection,
    version: i16,
    topic: String,
    partition: i32,
    start: i64,
    end: i64,
    fetch_bytes: i32,
    done: Arc<AtomicU64>,
) -> Result<ConsumeStats, BenchError> {
    let name = topic_name(&topic);
    let mut stats = ConsumeStats::default();
    let mut offset = start;
    let mut stalls = 0u32;
    while offset < end {
        let request = fetch_request(&name, partition, offset, fetch_bytes, 500);
        let (response, _) = conn.send(version, &request).await?.wait().await?;
        let data = fetched_partition(response, &topic, partition, conn.addr())?;
        let records = data.records.unwrap_or_default();
        let (count, bytes, next) = count_batches(&records, offset);
        if next == offset {
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
            starts[p],
            ends[p],
            ctx.args.fetch_bytes as i32,
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
