//! The produce phase: acks=all requests pipelined per partition connection, each carrying one
//! pre-encoded batch (encoded once per case and re-sent, as kafka-producer-perf-test does), with
//! retriable errors re-sent a bounded number of times and ack latency recorded per request.

use super::*;

/// A partition's refusal of a produce request, with the broker's error name and message.
pub(super) fn produce_refused(partition: i32, code: i16, message: Option<String>) -> BenchError {
    BenchError::from(kafka_error(
        "Produce",
        format!(" for partition {partition}"),
        code,
        message.as_deref(),
    ))
}

/// The outcome of one produce request: `Ok(base offset)` or `Err((code, message))`.
pub(super) fn produce_outcome(
    response: &ProduceResponse,
    partition: i32,
    addr: &str,
) -> Result<Result<i64, (i16, Option<String>)>, BenchError> {
    let found = response
        .responses
        .iter()
        .flat_map(|t| t.partition_responses.iter())
        .find(|p| p.index == partition)
        .ok_or_else(|| ClientError::Protocol {
            addr: addr.to_string(),
            api: "Produce".into(),
            detail: format!("no answer for partition {partition}"),
        })?;
    Ok(if found.error_code == 0 {
        Ok(found.base_offset)
    } else {
        Err((
            found.error_code,
            found.error_message.as_ref().map(|m| m.to_string()),
        ))
    })
}

pub(super) struct Sent {
    pub(super) pending: Pending<ProduceResponse>,
    pub(super) batch: Bytes,
    pub(super) records: u64,
    pub(super) attempts: u32,
}

#[derive(Default)]
pub(super) struct ProduceStats {
    pub(super) records: u64,
    pub(super) log_bytes: u64,
    pub(super) acks: Vec<u64>,
}

/// What one partition producer sends: full batches, then one shorter tail batch.
pub(super) struct ProducePlan {
    pub(super) full: Bytes,
    pub(super) per_batch: u64,
    pub(super) tail: Option<(Bytes, u64)>,
    /// Records to send, or `None` to send until `deadline`.
    pub(super) quota: Option<u64>,
    pub(super) deadline: Option<Instant>,
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn produce_partition(
    conn: Connection,
    version: i16,
    topic: TopicName,
    partition: i32,
    plan: ProducePlan,
    window: usize,
    done: Arc<AtomicU64>,
) -> Result<ProduceStats, BenchError> {
    let mut stats = ProduceStats::default();
    let mut in_flight: VecDeque<Sent> = VecDeque::with_capacity(window);
    let mut retry: VecDeque<(Bytes, u64, u32)> = VecDeque::new();
    let mut queued = 0u64;
    loop {
        while in_flight.len() < window {
            let next = if let Some(r) = retry.pop_front() {
                Some(r)
            } else {
                match (plan.quota, plan.deadline) {
                    (Some(quota), _) if queued < quota => {
                        let left = quota - queued;
                        if left >= plan.per_batch {
                            Some((plan.full.clone(), plan.per_batch, 0))
                        } else {
                            plan.tail.as_ref().map(|(b, n)| (b.clone(), *n, 0))
                        }
                    }
                    (None, Some(deadline)) if Instant::now() < deadline => {
                        Some((plan.full.clone(), plan.per_batch, 0))
                    }
                    _ => None,
                }
            };
            let Some((batch, records, attempts)) = next else {
                break;
            };
            if attempts == 0 {
                queued += records;
            }
            let pending = conn
                .send(
                    version,
                    &produce_request(&topic, partition, batch.clone(), BROKER_TIMEOUT_MS),
                )
                .await?;
            in_flight.push_back(Sent {
                pending,
                batch,
                records,
                attempts,
            });
        }
        let Some(sent) = in_flight.pop_front() else {
            break;
        };
        let (response, timing) = sent.pending.wait().await?;
        match produce_outcome(&response, partition, conn.addr())? {
            Ok(_) => {
                stats.records += sent.records;
                stats.log_bytes += sent.batch.len() as u64;
                stats.acks.push(timing.latency().as_nanos() as u64);
                done.fetch_add(sent.records, Ordering::Relaxed);
            }
            Err((code, _)) if retriable(code) && sent.attempts < PRODUCE_RETRIES => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                retry.push_back((sent.batch, sent.records, sent.attempts + 1));
            }
            Err((code, message)) => return Err(produce_refused(partition, code, message)),
        }
    }
    Ok(stats)
}

pub(super) async fn produce_phase(
    ctx: &Ctx,
    label: &str,
    conns: &[Connection],
    topic: &str,
    value: &Bytes,
    per_batch: u64,
) -> Result<Phase, BenchError> {
    let partitions = conns.len() as u64;
    let size = value.len();
    let full = plain_batch(value, per_batch)?;
    let (total, deadline) = match (ctx.args.records, ctx.args.duration) {
        (Some(n), _) => (Some(n), None),
        (None, Some(secs)) => (None, Some(Duration::from_secs_f64(secs))),
        (None, None) => (Some((DEFAULT_CASE_BYTES / size as u64).max(1)), None),
    };
    let progress = Progress::start(format!("{label} produce"), total, ctx.progress);
    let mut tasks = JoinSet::new();
    let meter = CpuMeter::start().with_broker(ctx.broker.as_ref());
    let deadline = deadline.map(|d| Instant::now() + d);
    for (p, conn) in conns.iter().enumerate() {
        let quota = total.map(|t| t / partitions + u64::from((p as u64) < t % partitions));
        let tail = match quota {
            Some(q) if q % per_batch != 0 => {
                Some((plain_batch(value, q % per_batch)?, q % per_batch))
            }
            _ => None,
        };
        let plan = ProducePlan {
            full: full.clone(),
            per_batch,
            tail,
            quota,
            deadline,
        };
        tasks.spawn(produce_partition(
            conn.clone(),
            ctx.produce_v,
            topic_name(topic),
            p as i32,
            plan,
            ctx.args.in_flight,
            progress.counter(),
        ));
    }
    let mut stats = ProduceStats::default();
    while let Some(joined) = tasks.join_next().await {
        let s = joined.map_err(|e| BenchError::Failed(format!("producer task failed: {e}")))??;
        stats.records += s.records;
        stats.log_bytes += s.log_bytes;
        stats.acks.extend(s.acks);
    }
    let cpu = meter.stop();
    progress.finish().await;
    let mut phase = Phase::new(
        stats.records,
        stats.records * size as u64,
        stats.log_bytes,
        cpu.wall,
        cpu,
    );
    phase.latency = Latency::from("ack", stats.acks);
    Ok(phase)
}
