//! The end-to-end latency phase: producers stamp the send time into each value at a fixed rate
//! while long-polling consumers on their own connections read the records back; a record's
//! latency runs from its produce request being sent to the fetch response holding it.

use super::*;

/// A batch of `n` records whose values carry the send time (ns since `epoch`) at `at`.
pub(super) fn stamped_batch(
    filler: &[u8],
    n: u64,
    epoch: Instant,
    at: usize,
) -> Result<Bytes, BenchError> {
    let stamp = (epoch.elapsed().as_nanos() as u64).to_be_bytes();
    let mut value = BytesMut::from(filler);
    value[at..at + STAMP_LEN].copy_from_slice(&stamp);
    plain_batch(&value.freeze(), n)
}

pub(super) struct E2eProduced {
    pub(super) records: u64,
    pub(super) log_bytes: u64,
    pub(super) acks: Vec<u64>,
}

/// Produces at `rate` records/s for `secs`, one batch per millisecond tick with the records
/// due by then; acks are awaited by a second task so sending keeps its pace.
#[allow(clippy::too_many_arguments)]
pub(super) async fn e2e_produce(
    conn: Connection,
    version: i16,
    topic: TopicName,
    partition: i32,
    value: CaseValue,
    rate: f64,
    secs: f64,
    max_batch: u64,
    window: usize,
    epoch: Instant,
    end_offset: Arc<AtomicI64>,
    done: Arc<AtomicU64>,
) -> Result<E2eProduced, BenchError> {
    let (tx, mut rx) = mpsc::channel::<(Pending<ProduceResponse>, u64, usize)>(window);
    let acker_conn = conn.clone();
    let acker = tokio::spawn(async move {
        let mut out = E2eProduced {
            records: 0,
            log_bytes: 0,
            acks: Vec::new(),
        };
        let mut last = -1i64;
        while let Some((pending, n, bytes)) = rx.recv().await {
            let (response, timing) = pending.wait().await?;
            match produce_outcome(&response, partition, acker_conn.addr())? {
                Ok(base) => {
                    out.records += n;
                    out.log_bytes += bytes as u64;
                    out.acks.push(timing.latency().as_nanos() as u64);
                    last = last.max(base + n as i64 - 1);
                    done.fetch_add(n, Ordering::Relaxed);
                }
                Err((code, message)) => return Err(produce_refused(partition, code, message)),
            }
        }
        end_offset.store(last + 1, Ordering::Release);
        Ok::<_, BenchError>(out)
    });

    let started = Instant::now();
    let stop = started + Duration::from_secs_f64(secs);
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut failure = None;
    while Instant::now() < stop {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        let mut n = due.saturating_sub(sent);
        while n > 0 {
            let take = n.min(max_batch);
            let batch = match stamped_batch(&value.template, take, epoch, value.stamp_at) {
                Ok(b) => b,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            let bytes = batch.len();
            let pending = match conn
                .send(
                    version,
                    &produce_request(&topic, partition, batch, BROKER_TIMEOUT_MS),
                )
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    failure = Some(BenchError::from(e));
                    break;
                }
            };
            if tx.send((pending, take, bytes)).await.is_err() {
                break; // the acker failed; its error is reported below
            }
            sent += take;
            n -= take;
        }
        if failure.is_some() || tx.is_closed() {
            break;
        }
    }
    drop(tx);
    let acked = acker
        .await
        .map_err(|e| BenchError::Failed(format!("ack task failed: {e}")))??;
    match failure {
        Some(e) => Err(e),
        None => Ok(acked),
    }
}

/// Long-polls one partition from `start`, recording each record's end-to-end latency, until
/// it has read up to the producer's final offset (`end`, unknown until the producer is done).
#[allow(clippy::too_many_arguments)]
pub(super) async fn e2e_consume(
    conn: Connection,
    version: i16,
    topic: String,
    partition: i32,
    start: i64,
    fetch_bytes: i32,
    epoch: Instant,
    stamp_at: usize,
    end: Arc<AtomicI64>,
) -> Result<Vec<u64>, BenchError> {
    let name = topic_name(&topic);
    let mut offset = start;
    let mut samples = Vec::new();
    let mut drain_deadline: Option<Instant> = None;
    loop {
        let target = end.load(Ordering::Acquire);
        if offset >= target {
            break;
        }
        if target != i64::MAX {
            let deadline = *drain_deadline.get_or_insert_with(|| Instant::now() + DRAIN_GRACE);
            if Instant::now() > deadline {
                return Err(BenchError::Failed(format!(
                    "e2e consumer of {topic} partition {partition} is stuck at offset {offset} \
                     of {target} — the broker did not serve acknowledged records"
                )));
            }
        }
        let request = fetch_request(&name, partition, offset, fetch_bytes, 100);
        let pending = conn.send(version, &request).await?;
        let (response, timing) = pending.wait().await?;
        // When the connection read the response holding the records.
        let arrived = timing.received.saturating_duration_since(epoch).as_nanos() as u64;
        let data = fetched_partition(response, &topic, partition, conn.addr())?;
        let records = data.records.unwrap_or_default();
        let mut batches = BatchIter::new(&records);
        for (header, range) in &mut batches {
            if header.last_offset() < offset {
                continue;
            }
            let mut raw = records.slice(range);
            let set = RecordBatchDecoder::decode(&mut raw).map_err(|e| ClientError::Protocol {
                addr: conn.addr().to_string(),
                api: "Fetch".into(),
                detail: format!("undecodable record batch: {e}"),
            })?;
            for record in set.records {
                if record.offset < offset {
                    continue;
                }
                if let Some(stamp) = record
                    .value
                    .as_ref()
                    .and_then(|v| v.get(stamp_at..stamp_at + STAMP_LEN))
                    .and_then(|s| <[u8; STAMP_LEN]>::try_from(s).ok())
                {
                    samples.push(arrived.saturating_sub(u64::from_be_bytes(stamp)));
                }
            }
            offset = header.last_offset() + 1;
        }
    }
    Ok(samples)
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn e2e_phase(
    ctx: &Ctx,
    label: &str,
    conns: &[Connection],
    leaders: &[String],
    topic: &str,
    value: &CaseValue,
    starts: &[i64],
    max_batch: u64,
) -> Result<Phase, BenchError> {
    let size = value.template.len();
    // Consumers get their own connections: a long-polling fetch would hold up the produce
    // answers queued behind it on a shared one.
    let readers = connect_all(leaders, ctx.timeout, &ctx.security).await?;
    let rate = ctx.args.latency_rate as f64 / conns.len() as f64;
    let secs = ctx.args.latency_secs;
    let total = (ctx.args.latency_rate as f64 * secs) as u64;
    let progress = Progress::start(format!("{label} e2e"), Some(total), ctx.progress);
    let meter = CpuMeter::start().with_broker(ctx.broker.as_ref());
    let mut consumers = JoinSet::new();
    let mut producers = JoinSet::new();
    for (p, (conn, reader)) in conns.iter().zip(&readers).enumerate() {
        let end = Arc::new(AtomicI64::new(i64::MAX));
        consumers.spawn(e2e_consume(
            reader.clone(),
            ctx.fetch_v,
            topic.to_string(),
            p as i32,
            starts[p],
            ctx.args.fetch_bytes as i32,
            ctx.epoch,
            value.stamp_at,
            end.clone(),
        ));
        producers.spawn(e2e_produce(
            conn.clone(),
            ctx.produce_v,
            topic_name(topic),
            p as i32,
            value.clone(),
            rate,
            secs,
            max_batch,
            ctx.args.in_flight,
            ctx.epoch,
            end,
            progress.counter(),
        ));
    }
    let mut records = 0u64;
    let mut log_bytes = 0u64;
    let mut acks = Vec::new();
    let mut failure = None;
    while let Some(joined) = producers.join_next().await {
        match joined {
            Ok(Ok(p)) => {
                records += p.records;
                log_bytes += p.log_bytes;
                acks.extend(p.acks);
            }
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(e) => {
                failure = failure.or(Some(BenchError::Failed(format!(
                    "producer task failed: {e}"
                ))))
            }
        }
    }
    let produce_secs = meter.stop().wall;
    if let Some(e) = failure {
        consumers.abort_all();
        progress.finish().await;
        return Err(e);
    }
    let mut e2e = Vec::new();
    while let Some(joined) = consumers.join_next().await {
        let s = joined.map_err(|e| BenchError::Failed(format!("consumer task failed: {e}")))??;
        e2e.extend(s);
    }
    let cpu = meter.stop();
    progress.finish().await;
    // Rates over the producing time: the drain at the end is not part of the offered load.
    let mut phase = Phase::new(records, records * size as u64, log_bytes, produce_secs, cpu);
    phase.latency = Latency::from("end_to_end", e2e);
    phase.ack_latency = Latency::from("ack", acks);
    Ok(phase)
}
