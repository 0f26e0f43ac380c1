//! `ferry bench kafka`: a load generator for any Kafka-compatible broker.
//!
//! For every record size × partition count ("case") it creates a fresh topic
//! `ferry-bench-<size>-<partitions>-<random>` with CreateTopics, waits for its leaders in
//! Metadata, and runs three phases, each over one connection per partition to that partition's
//! leader:
//!
//! 1. **produce** — acks=all (-1), `--in-flight` requests pipelined per connection, one record
//!    batch of about `--batch-bytes` per request. The batches are encoded once per case with
//!    [`try_encode_batch`] and re-sent (as `kafka-producer-perf-test` re-sends one payload), so the
//!    client spends its CPU on the network, not on re-encoding; the broker still receives,
//!    CRC-checks and stores every byte. Latency here is the *ack latency* (request sent → its
//!    response read) under full load.
//! 2. **consume** — ListOffsets for the range just written, then a Fetch loop per partition from
//!    the earliest offset to the end, one fetch in flight per connection as a Kafka consumer
//!    does. Records are counted from batch headers (no per-record decoding, no CRC check).
//! 3. **e2e** — end-to-end latency at a moderate fixed rate (`--latency-rate`, default 10,000
//!    records/s across partitions): producers stamp the send time into the first 8 bytes of each
//!    value right before sending, concurrent long-polling consumers on their own connections
//!    read the records back, and the latency of a record is the time from its produce request
//!    being sent to the fetch response holding it being read. The produce ack latency at that
//!    rate is reported beside it.
//!
//! Each phase records this process's CPU time (`/proc/self/stat` utime + stime) before and
//! after, divided by wall time × cores, so the output shows whether the client limited the run.
//! The topic is deleted at the end of the case (and on Ctrl-C) unless `--keep`.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreateTopicsRequest, DeleteTopicsRequest, FetchRequest, FetchResponse,
    ListOffsetsRequest, MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::RecordBatchDecoder;
use kafka_protocol::ResponseError;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::kafka_client::{kafka_error, retriable, Connection, Pending};
use super::{
    cores, group, percentiles, random_suffix, size_label, BenchError, CpuMeter, CpuShare, Progress,
};
use crate::cli::KafkaBenchArgs;
use crate::log::batch::{try_encode_batch, BatchHeader, BatchIter, EncodeOptions, SimpleRecord};

/// Version ranges this client can speak (names, not topic ids, identify topics in all of them).
const PRODUCE: (i16, i16) = (3, 12);
const FETCH: (i16, i16) = (4, 12);
const LIST_OFFSETS: (i16, i16) = (1, 7);
const METADATA: (i16, i16) = (1, 12);
const CREATE_TOPICS: (i16, i16) = (2, 7);
const DELETE_TOPICS: (i16, i16) = (1, 6);

/// Bytes at the start of each value that carry the send time in the e2e phase.
const STAMP_LEN: usize = 8;
/// Per-record framing inside a batch (length, attributes, deltas, key and value lengths, header
/// count), for sizing batches to `--batch-bytes`.
const RECORD_OVERHEAD: usize = 10;
/// Batch header size.
const BATCH_HEADER: usize = 61;
/// Data volume per case when neither `--records` nor `--duration` is given: small enough that
/// the default four cases finish in well under a minute on a laptop (2 GiB each, the old
/// default, wrote 8 GiB); pass --records or --duration for runs that leave the page cache.
const DEFAULT_CASE_BYTES: u64 = 64 << 20;
/// Broker-side timeout put in produce and topic admin requests.
const BROKER_TIMEOUT_MS: i32 = 30_000;
/// How often a produce batch that got a retriable error is re-sent before giving up.
const PRODUCE_RETRIES: u32 = 10;
/// How long the e2e consumers may lag behind the end of the e2e produce phase.
const DRAIN_GRACE: Duration = Duration::from_secs(30);

/// Everything one run measured; `--json` prints exactly this.
#[derive(Debug, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub version: &'static str,
    pub bootstrap: String,
    pub brokers: usize,
    pub client_cores: usize,
    pub settings: Settings,
    pub api_versions: ApiVersionsUsed,
    pub cases: Vec<CaseReport>,
}

#[derive(Debug, Serialize)]
pub struct Settings {
    pub acks: i16,
    pub in_flight_per_connection: usize,
    pub batch_bytes: usize,
    pub fetch_bytes: usize,
    pub latency_rate: u64,
    pub latency_secs: f64,
    pub replication_factor: i16,
}

#[derive(Debug, Serialize)]
pub struct ApiVersionsUsed {
    pub produce: i16,
    pub fetch: i16,
}

#[derive(Debug, Serialize)]
pub struct CaseReport {
    /// e.g. `100B/1p`.
    pub case: String,
    pub record_bytes: usize,
    pub partitions: i32,
    pub records_per_batch: u64,
    pub topic: String,
    pub topic_deleted: bool,
    pub produce: Phase,
    pub consume: Phase,
    pub e2e: Option<Phase>,
}

#[derive(Debug, Serialize)]
pub struct Phase {
    pub records: u64,
    /// Record value bytes (what the user sent).
    pub value_bytes: u64,
    /// Record batch bytes (what crossed the wire and was stored).
    pub log_bytes: u64,
    pub seconds: f64,
    pub records_per_sec: f64,
    /// `value_bytes` per second, 1 MB = 10^6 bytes.
    pub mb_per_sec: f64,
    /// `log_bytes` per second, 1 MB = 10^6 bytes.
    pub log_mb_per_sec: f64,
    /// This process's user + system CPU time over wall time × cores, in percent.
    pub client_cpu_percent: Option<f64>,
    /// The whole machine's busy CPU over the phase, in percent of all cores (client, broker if
    /// local, and anything else running).
    pub machine_cpu_percent: Option<f64>,
    /// produce: acks=all ack latency under full load; e2e: produce send → fetched.
    pub latency: Option<Latency>,
    /// e2e only: ack latency at the e2e rate.
    pub ack_latency: Option<Latency>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// `ack` (produce request sent → response) or `end_to_end` (produce request sent → fetch
    /// response holding the record read).
    pub kind: &'static str,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub samples: usize,
}

impl Latency {
    fn from(kind: &'static str, mut samples: Vec<u64>) -> Option<Latency> {
        let n = samples.len();
        percentiles(&mut samples).map(|(p50_ms, p99_ms)| Latency {
            kind,
            p50_ms,
            p99_ms,
            samples: n,
        })
    }
}

impl Phase {
    fn new(records: u64, value_bytes: u64, log_bytes: u64, seconds: f64, cpu: CpuShare) -> Phase {
        let per_sec = |n: u64| {
            if seconds > 0.0 {
                n as f64 / seconds
            } else {
                0.0
            }
        };
        Phase {
            records,
            value_bytes,
            log_bytes,
            seconds,
            records_per_sec: per_sec(records),
            mb_per_sec: per_sec(value_bytes) / 1e6,
            log_mb_per_sec: per_sec(log_bytes) / 1e6,
            client_cpu_percent: cpu.client,
            machine_cpu_percent: cpu.machine,
            latency: None,
            ack_latency: None,
        }
    }
}

/// What every case shares.
struct Ctx {
    args: KafkaBenchArgs,
    admin: Connection,
    timeout: Duration,
    produce_v: i16,
    fetch_v: i16,
    /// Zero of the e2e time stamps.
    epoch: Instant,
    /// The topic of the running case, deleted on Ctrl-C.
    active: Arc<Mutex<Option<String>>>,
    progress: bool,
}

/// Runs every case and prints the results.
pub async fn run(args: KafkaBenchArgs) -> Result<(), BenchError> {
    validate(&args)?;
    let timeout = Duration::from_secs(args.timeout.max(1));
    let admin = Connection::connect(&args.bootstrap, timeout).await?;
    let active = Arc::new(Mutex::new(None::<String>));
    let keep = args.keep;
    let work = run_cases(args, admin.clone(), active.clone());
    tokio::select! {
        result = work => result,
        _ = tokio::signal::ctrl_c() => {
            let topic = active.lock().take();
            let note = match topic {
                Some(topic) if !keep => match delete_topic(&admin, &topic).await {
                    Ok(()) => format!(" (deleted topic {topic})"),
                    Err(e) => format!(" (could not delete topic {topic}: {e})"),
                },
                Some(topic) => format!(" (kept topic {topic})"),
                None => String::new(),
            };
            Err(BenchError::Interrupted(note))
        }
    }
}

fn validate(args: &KafkaBenchArgs) -> Result<(), BenchError> {
    let bad = |m: String| Err(BenchError::Invalid(m));
    if args.sizes.is_empty() || args.partitions.is_empty() {
        return bad("--sizes and --partitions need at least one value each".into());
    }
    if let Some(s) = args.sizes.iter().find(|s| **s < STAMP_LEN) {
        return bad(format!(
            "--sizes {s}: records must be at least {STAMP_LEN} bytes (the e2e phase stamps the \
             send time into the value)"
        ));
    }
    if let Some(p) = args.partitions.iter().find(|p| **p < 1) {
        return bad(format!(
            "--partitions {p}: a topic needs at least 1 partition"
        ));
    }
    if args.in_flight == 0 {
        return bad("--in-flight must be at least 1".into());
    }
    if args.batch_bytes < 1024 {
        return bad("--batch-bytes must be at least 1KiB".into());
    }
    if args.batch_bytes > i32::MAX as usize / 2 || args.fetch_bytes > i32::MAX as usize {
        return bad("--batch-bytes / --fetch-bytes are too large".into());
    }
    if args.fetch_bytes < 1024 {
        return bad("--fetch-bytes must be at least 1KiB".into());
    }
    if args.records == Some(0) {
        return bad("--records must be at least 1".into());
    }
    if let Some(d) = args.duration {
        if !(d.is_finite() && d > 0.0) {
            return bad("--duration must be a positive number of seconds".into());
        }
    }
    if !(args.latency_secs.is_finite() && args.latency_secs >= 0.0) {
        return bad("--latency-secs must be zero or more".into());
    }
    Ok(())
}

async fn run_cases(
    args: KafkaBenchArgs,
    admin: Connection,
    active: Arc<Mutex<Option<String>>>,
) -> Result<(), BenchError> {
    let produce_v = admin.version(ApiKey::Produce, PRODUCE)?;
    let fetch_v = admin.version(ApiKey::Fetch, FETCH)?;
    let metadata_v = admin.version(ApiKey::Metadata, METADATA)?;
    let cluster: MetadataResponse = admin
        .call(
            metadata_v,
            &MetadataRequest::default().with_topics(Some(vec![])),
        )
        .await?;
    let timeout = Duration::from_secs(args.timeout.max(1));
    let ctx = Ctx {
        progress: !args.json,
        args,
        admin,
        timeout,
        produce_v,
        fetch_v,
        epoch: Instant::now(),
        active,
    };
    if !ctx.args.json {
        eprintln!(
            "ferry bench kafka → {} ({} broker{}; Produce v{produce_v}, Fetch v{fetch_v}); \
             client on {} cores",
            ctx.args.bootstrap,
            cluster.brokers.len(),
            if cluster.brokers.len() == 1 { "" } else { "s" },
            cores()
        );
    }
    let mut cases = Vec::new();
    for &size in &ctx.args.sizes {
        for &partitions in &ctx.args.partitions {
            let case = run_case(&ctx, size, partitions).await?;
            if !ctx.args.json {
                eprintln!("{}", case_line(&case));
            }
            cases.push(case);
        }
    }
    let report = Report {
        tool: "ferry bench kafka",
        version: env!("CARGO_PKG_VERSION"),
        bootstrap: ctx.args.bootstrap.clone(),
        brokers: cluster.brokers.len(),
        client_cores: cores(),
        settings: Settings {
            acks: -1,
            in_flight_per_connection: ctx.args.in_flight,
            batch_bytes: ctx.args.batch_bytes,
            fetch_bytes: ctx.args.fetch_bytes,
            latency_rate: ctx.args.latency_rate,
            latency_secs: ctx.args.latency_secs,
            replication_factor: ctx.args.replication_factor,
        },
        api_versions: ApiVersionsUsed {
            produce: produce_v,
            fetch: fetch_v,
        },
        cases,
    };
    if ctx.args.json {
        let json = serde_json::to_string_pretty(&report)
            .map_err(|e| BenchError::Failed(format!("cannot write JSON: {e}")))?;
        println!("{json}");
    } else {
        print!("{}", render_table(&report));
    }
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Deterministic, non-constant filler for record values.
fn filler(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i.wrapping_mul(31) + 7) as u8).collect()
}

fn encode(records: &[SimpleRecord]) -> Result<Bytes, BenchError> {
    try_encode_batch(records, &EncodeOptions::default())
        .map(BytesMut::freeze)
        .map_err(|e| BenchError::Failed(format!("cannot encode a record batch: {e}")))
}

/// One batch of `n` records of `size` bytes each.
fn plain_batch(value: &Bytes, n: u64) -> Result<Bytes, BenchError> {
    let ts = now_ms();
    let records: Vec<SimpleRecord> = (0..n)
        .map(|_| SimpleRecord {
            key: None,
            value: Some(value.clone()),
            headers: vec![],
            timestamp: ts,
        })
        .collect();
    encode(&records)
}

fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

async fn run_case(ctx: &Ctx, size: usize, partitions: i32) -> Result<CaseReport, BenchError> {
    let label = format!("{}/{}p", size_label(size), partitions);
    let topic = format!("ferry-bench-{size}-{partitions}-{}", random_suffix());
    create_topic(ctx, &topic, partitions).await?;
    *ctx.active.lock() = Some(topic.clone());
    let result = run_phases(ctx, &label, &topic, size, partitions).await;
    let deleted = if ctx.args.keep {
        false
    } else {
        match delete_topic(&ctx.admin, &topic).await {
            Ok(()) => true,
            Err(e) => {
                eprintln!(
                    "ferry bench: warning: could not delete topic {topic}: {e} — delete it by \
                     hand (kafka-topics.sh --delete --topic {topic})"
                );
                false
            }
        }
    };
    *ctx.active.lock() = None;
    let (records_per_batch, produce, consume, e2e) = result?;
    Ok(CaseReport {
        case: label,
        record_bytes: size,
        partitions,
        records_per_batch,
        topic,
        topic_deleted: deleted,
        produce,
        consume,
        e2e,
    })
}

type Phases = (u64, Phase, Phase, Option<Phase>);

async fn run_phases(
    ctx: &Ctx,
    label: &str,
    topic: &str,
    size: usize,
    partitions: i32,
) -> Result<Phases, BenchError> {
    let leaders = wait_for_leaders(ctx, topic, partitions).await?;
    let conns = connect_all(&leaders, ctx.timeout).await?;
    let per_batch = ((ctx.args.batch_bytes.saturating_sub(BATCH_HEADER)) / (size + RECORD_OVERHEAD))
        .max(1) as u64;

    // Offsets before anything was written (0 on a fresh topic).
    let mut starts = Vec::with_capacity(conns.len());
    for (p, conn) in conns.iter().enumerate() {
        starts.push(list_offset(conn, topic, p as i32, -2).await?);
    }

    let produce = produce_phase(ctx, label, &conns, topic, size, per_batch).await?;

    let mut ends = Vec::with_capacity(conns.len());
    for (p, conn) in conns.iter().enumerate() {
        ends.push(list_offset(conn, topic, p as i32, -1).await?);
    }
    let written: i64 = ends.iter().zip(&starts).map(|(e, s)| e - s).sum();
    if written != produce.records as i64 {
        return Err(BenchError::Failed(format!(
            "{label}: produced {} records with acks=all but the partitions grew by {written} \
             (ListOffsets) — the broker lost or duplicated records",
            produce.records
        )));
    }

    let consume = consume_phase(ctx, label, &conns, topic, size, &starts, &ends).await?;
    if consume.records != produce.records {
        return Err(BenchError::Failed(format!(
            "{label}: consumed {} records but produced {}",
            consume.records, produce.records
        )));
    }

    let e2e = if ctx.args.latency_rate > 0 && ctx.args.latency_secs > 0.0 {
        Some(e2e_phase(ctx, label, &conns, &leaders, topic, size, &ends, per_batch).await?)
    } else {
        None
    };
    Ok((per_batch, produce, consume, e2e))
}

async fn connect_all(addrs: &[String], timeout: Duration) -> Result<Vec<Connection>, BenchError> {
    let mut conns = Vec::with_capacity(addrs.len());
    for addr in addrs {
        conns.push(Connection::connect(addr, timeout).await?);
    }
    Ok(conns)
}

// ---------------------------------------------------------------------------------------------
// Topic administration

async fn create_topic(ctx: &Ctx, topic: &str, partitions: i32) -> Result<(), BenchError> {
    let v = ctx.admin.version(ApiKey::CreateTopics, CREATE_TOPICS)?;
    // -1 ("broker default", KIP-464) needs v4; older brokers get an explicit 1.
    let rf = match ctx.args.replication_factor {
        -1 if v < 4 => 1,
        rf => rf,
    };
    let request = CreateTopicsRequest::default()
        .with_topics(vec![CreatableTopic::default()
            .with_name(topic_name(topic))
            .with_num_partitions(partitions)
            .with_replication_factor(rf)])
        .with_timeout_ms(BROKER_TIMEOUT_MS);
    let response = ctx.admin.call(v, &request).await?;
    let Some(result) = response.topics.iter().find(|t| t.name.as_str() == topic) else {
        return Err(BenchError::Protocol {
            addr: ctx.admin.addr().to_string(),
            api: "CreateTopics".into(),
            detail: format!("no result for topic {topic}"),
        });
    };
    if result.error_code != 0 {
        return Err(kafka_error(
            "CreateTopics",
            format!(" for topic {topic}"),
            result.error_code,
            result.error_message.as_deref(),
        ));
    }
    Ok(())
}

/// Polls Metadata until every partition of `topic` has a leader; returns each partition's
/// leader address.
async fn wait_for_leaders(
    ctx: &Ctx,
    topic: &str,
    partitions: i32,
) -> Result<Vec<String>, BenchError> {
    let v = ctx.admin.version(ApiKey::Metadata, METADATA)?;
    let mut request = MetadataRequest::default().with_topics(Some(vec![
        MetadataRequestTopic::default().with_name(Some(topic_name(topic))),
    ]));
    if v >= 4 {
        request = request.with_allow_auto_topic_creation(false);
    }
    let deadline = Instant::now() + ctx.timeout;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        let md = ctx.admin.call(v, &request).await?;
        match leaders_of(&md, topic, partitions) {
            Ok(addrs) => return Ok(addrs),
            Err(why) => last = why,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(BenchError::Failed(format!(
        "topic {topic} has no leader for every partition after {} s ({last}) — check the \
         broker's log",
        ctx.timeout.as_secs()
    )))
}

fn leaders_of(md: &MetadataResponse, topic: &str, partitions: i32) -> Result<Vec<String>, String> {
    let t = md
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.as_str() == topic))
        .ok_or("topic not in metadata yet")?;
    if t.error_code != 0 {
        return Err(format!("topic error {}", t.error_code));
    }
    let mut addrs = vec![String::new(); partitions as usize];
    for p in &t.partitions {
        let Some(slot) = usize::try_from(p.partition_index)
            .ok()
            .and_then(|i| addrs.get_mut(i))
        else {
            continue;
        };
        if p.error_code != 0 || p.leader_id.0 < 0 {
            return Err(format!("partition {} has no leader", p.partition_index));
        }
        let broker = md
            .brokers
            .iter()
            .find(|b| b.node_id == p.leader_id)
            .ok_or_else(|| format!("leader {} is not in the broker list", p.leader_id.0))?;
        let host = broker.host.as_str();
        *slot = if host.contains(':') {
            format!("[{host}]:{}", broker.port)
        } else {
            format!("{host}:{}", broker.port)
        };
    }
    if let Some(missing) = addrs.iter().position(String::is_empty) {
        return Err(format!("partition {missing} is missing"));
    }
    Ok(addrs)
}

async fn delete_topic(admin: &Connection, topic: &str) -> Result<(), BenchError> {
    let v = admin.version(ApiKey::DeleteTopics, DELETE_TOPICS)?;
    let mut request = DeleteTopicsRequest::default().with_timeout_ms(BROKER_TIMEOUT_MS);
    request = if v >= 6 {
        request.with_topics(vec![
            DeleteTopicState::default().with_name(Some(topic_name(topic)))
        ])
    } else {
        request.with_topic_names(vec![topic_name(topic)])
    };
    let response = admin.call(v, &request).await?;
    for r in &response.responses {
        let unknown = ResponseError::UnknownTopicOrPartition.code();
        if r.error_code != 0 && r.error_code != unknown {
            return Err(kafka_error(
                "DeleteTopics",
                format!(" for topic {topic}"),
                r.error_code,
                r.error_message.as_deref(),
            ));
        }
    }
    Ok(())
}

/// ListOffsets for one partition: `-1` latest (the high watermark), `-2` earliest, else the
/// first offset at or after that timestamp. Shared with `ferry consume`.
pub(crate) async fn list_offset(
    conn: &Connection,
    topic: &str,
    partition: i32,
    timestamp: i64,
) -> Result<i64, BenchError> {
    let v = conn.version(ApiKey::ListOffsets, LIST_OFFSETS)?;
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(partition)
                .with_timestamp(timestamp)])]);
    let response = conn.call(v, &request).await?;
    let found = response
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .find(|p| p.partition_index == partition)
        .ok_or_else(|| BenchError::Protocol {
            addr: conn.addr().to_string(),
            api: "ListOffsets".into(),
            detail: format!("no answer for partition {partition}"),
        })?;
    if found.error_code != 0 {
        return Err(kafka_error(
            "ListOffsets",
            format!(" for topic {topic} partition {partition}"),
            found.error_code,
            None,
        ));
    }
    Ok(found.offset)
}

// ---------------------------------------------------------------------------------------------
// Produce

fn produce_request(topic: &TopicName, partition: i32, batch: Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(BROKER_TIMEOUT_MS)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic.clone())
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(batch))])])
}

/// The outcome of one produce request: `Ok(base offset)` or `Err((code, message))`.
fn produce_outcome(
    response: &ProduceResponse,
    partition: i32,
    addr: &str,
) -> Result<Result<i64, (i16, Option<String>)>, BenchError> {
    let found = response
        .responses
        .iter()
        .flat_map(|t| t.partition_responses.iter())
        .find(|p| p.index == partition)
        .ok_or_else(|| BenchError::Protocol {
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

struct Sent {
    pending: Pending<ProduceResponse>,
    batch: Bytes,
    records: u64,
    attempts: u32,
}

#[derive(Default)]
struct ProduceStats {
    records: u64,
    log_bytes: u64,
    acks: Vec<u64>,
}

/// What one partition producer sends: full batches, then one shorter tail batch.
struct ProducePlan {
    full: Bytes,
    per_batch: u64,
    tail: Option<(Bytes, u64)>,
    /// Records to send, or `None` to send until `deadline`.
    quota: Option<u64>,
    deadline: Option<Instant>,
}

#[allow(clippy::too_many_arguments)]
async fn produce_partition(
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
                .send(version, &produce_request(&topic, partition, batch.clone()))
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
            Err((code, message)) => {
                return Err(kafka_error(
                    "Produce",
                    format!(" for partition {partition}"),
                    code,
                    message.as_deref(),
                ))
            }
        }
    }
    Ok(stats)
}

async fn produce_phase(
    ctx: &Ctx,
    label: &str,
    conns: &[Connection],
    topic: &str,
    size: usize,
    per_batch: u64,
) -> Result<Phase, BenchError> {
    let partitions = conns.len() as u64;
    let value = Bytes::from(filler(size));
    let full = plain_batch(&value, per_batch)?;
    let (total, deadline) = match (ctx.args.records, ctx.args.duration) {
        (Some(n), _) => (Some(n), None),
        (None, Some(secs)) => (None, Some(Duration::from_secs_f64(secs))),
        (None, None) => (Some((DEFAULT_CASE_BYTES / size as u64).max(1)), None),
    };
    let progress = Progress::start(format!("{label} produce"), total, ctx.progress);
    let mut tasks = JoinSet::new();
    let meter = CpuMeter::start();
    let deadline = deadline.map(|d| Instant::now() + d);
    for (p, conn) in conns.iter().enumerate() {
        let quota = total.map(|t| t / partitions + u64::from((p as u64) < t % partitions));
        let tail = match quota {
            Some(q) if q % per_batch != 0 => {
                Some((plain_batch(&value, q % per_batch)?, q % per_batch))
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

// ---------------------------------------------------------------------------------------------
// Consume

fn fetch_request(
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
fn fetched_partition(
    response: FetchResponse,
    topic: &str,
    partition: i32,
    addr: &str,
) -> Result<PartitionData, BenchError> {
    if response.error_code != 0 {
        return Err(kafka_error(
            "Fetch",
            String::new(),
            response.error_code,
            None,
        ));
    }
    let data = response
        .responses
        .into_iter()
        .flat_map(|t| t.partitions.into_iter())
        .find(|p| p.partition_index == partition)
        .ok_or_else(|| BenchError::Protocol {
            addr: addr.to_string(),
            api: "Fetch".into(),
            detail: format!("no answer for partition {partition}"),
        })?;
    if data.error_code != 0 {
        return Err(kafka_error(
            "Fetch",
            format!(" for topic {topic} partition {partition}"),
            data.error_code,
            None,
        ));
    }
    Ok(data)
}

/// Walks whole batches by their headers: `(records at or after offset, their batch bytes, next
/// offset)`. A trailing partial batch (cut by the fetch size) is ignored.
fn count_batches(records: &[u8], offset: i64) -> (u64, u64, i64) {
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
struct ConsumeStats {
    records: u64,
    log_bytes: u64,
}

#[allow(clippy::too_many_arguments)]
async fn consume_partition(
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

async fn consume_phase(
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
    let meter = CpuMeter::start();
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

// ---------------------------------------------------------------------------------------------
// End-to-end latency

/// A batch of `n` records whose values start with the send time (ns since `epoch`).
fn stamped_batch(filler: &[u8], n: u64, epoch: Instant) -> Result<Bytes, BenchError> {
    let stamp = (epoch.elapsed().as_nanos() as u64).to_be_bytes();
    let mut value = BytesMut::from(filler);
    value[..STAMP_LEN].copy_from_slice(&stamp);
    let value = value.freeze();
    let ts = now_ms();
    let records: Vec<SimpleRecord> = (0..n)
        .map(|_| SimpleRecord {
            key: None,
            value: Some(value.clone()),
            headers: vec![],
            timestamp: ts,
        })
        .collect();
    encode(&records)
}

struct E2eProduced {
    records: u64,
    log_bytes: u64,
    acks: Vec<u64>,
}

/// Produces at `rate` records/s for `secs`, one batch per millisecond tick with the records
/// due by then; acks are awaited by a second task so sending keeps its pace.
#[allow(clippy::too_many_arguments)]
async fn e2e_produce(
    conn: Connection,
    version: i16,
    topic: TopicName,
    partition: i32,
    size: usize,
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
                Err((code, message)) => {
                    return Err(kafka_error(
                        "Produce",
                        format!(" for partition {partition}"),
                        code,
                        message.as_deref(),
                    ))
                }
            }
        }
        end_offset.store(last + 1, Ordering::Release);
        Ok::<_, BenchError>(out)
    });

    let value = filler(size);
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
            let batch = match stamped_batch(&value, take, epoch) {
                Ok(b) => b,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            let bytes = batch.len();
            let pending = match conn
                .send(version, &produce_request(&topic, partition, batch))
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    failure = Some(e);
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
async fn e2e_consume(
    conn: Connection,
    version: i16,
    topic: String,
    partition: i32,
    start: i64,
    fetch_bytes: i32,
    epoch: Instant,
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
            let set = RecordBatchDecoder::decode(&mut raw).map_err(|e| BenchError::Protocol {
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
                    .and_then(|v| v.get(..STAMP_LEN))
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
async fn e2e_phase(
    ctx: &Ctx,
    label: &str,
    conns: &[Connection],
    leaders: &[String],
    topic: &str,
    size: usize,
    starts: &[i64],
    max_batch: u64,
) -> Result<Phase, BenchError> {
    // Consumers get their own connections: a long-polling fetch would hold up the produce
    // answers queued behind it on a shared one.
    let readers = connect_all(leaders, ctx.timeout).await?;
    let rate = ctx.args.latency_rate as f64 / conns.len() as f64;
    let secs = ctx.args.latency_secs;
    let total = (ctx.args.latency_rate as f64 * secs) as u64;
    let progress = Progress::start(format!("{label} e2e"), Some(total), ctx.progress);
    let meter = CpuMeter::start();
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
            end.clone(),
        ));
        producers.spawn(e2e_produce(
            conn.clone(),
            ctx.produce_v,
            topic_name(topic),
            p as i32,
            size,
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

// ---------------------------------------------------------------------------------------------
// Output

fn ms(l: &Option<Latency>, p99: bool) -> String {
    match l {
        Some(l) => format!("{:.2}", if p99 { l.p99_ms } else { l.p50_ms }),
        None => "-".into(),
    }
}

fn cpu(c: Option<f64>) -> String {
    c.map(|c| format!("{c:.0}%"))
        .unwrap_or_else(|| "n/a".into())
}

/// One line per finished case on stderr, so a long run shows its results as it goes.
fn case_line(case: &CaseReport) -> String {
    let mut line = format!(
        "  {}: produce {} records/s {:.1} MB/s (client CPU {}), consume {} records/s {:.1} MB/s \
         (client CPU {})",
        case.case,
        group(case.produce.records_per_sec as u64),
        case.produce.mb_per_sec,
        cpu(case.produce.client_cpu_percent),
        group(case.consume.records_per_sec as u64),
        case.consume.mb_per_sec,
        cpu(case.consume.client_cpu_percent),
    );
    if let Some(e2e) = &case.e2e {
        let _ = write!(
            line,
            ", e2e p50 {} ms p99 {} ms",
            ms(&e2e.latency, false),
            ms(&e2e.latency, true)
        );
    }
    line
}

/// The summary table printed on stdout.
pub fn render_table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nferry bench kafka: {} — acks=all, record batches of ~{}, {} produce requests in flight \
         per partition, fetches of up to {} per partition",
        report.bootstrap,
        size_label(report.settings.batch_bytes),
        report.settings.in_flight_per_connection,
        size_label(report.settings.fetch_bytes)
    );
    let _ = writeln!(
        out,
        "\n{:<10} {:<8} {:>11} {:>12} {:>9} {:>9} {:>9} {:>9} {:>11} {:>11}",
        "case",
        "phase",
        "records",
        "records/s",
        "MB/s",
        "log MB/s",
        "p50 ms",
        "p99 ms",
        "client CPU",
        "machine CPU"
    );
    for case in &report.cases {
        let phases = [
            ("produce", Some(&case.produce)),
            ("consume", Some(&case.consume)),
            ("e2e", case.e2e.as_ref()),
        ];
        for (name, phase) in phases {
            let Some(p) = phase else { continue };
            let _ = writeln!(
                out,
                "{:<10} {:<8} {:>11} {:>12} {:>9.1} {:>9.1} {:>9} {:>9} {:>11} {:>11}",
                case.case,
                name,
                group(p.records),
                group(p.records_per_sec as u64),
                p.mb_per_sec,
                p.log_mb_per_sec,
                ms(&p.latency, false),
                ms(&p.latency, true),
                cpu(p.client_cpu_percent),
                cpu(p.machine_cpu_percent),
            );
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "produce p50/p99: ack latency (produce request sent → acks=all response read) at full load."
    );
    if report.cases.iter().any(|c| c.e2e.is_some()) {
        let _ = writeln!(
            out,
            "e2e p50/p99: end-to-end latency (produce request sent → fetch response holding the \
             record read by a concurrent consumer) at {} records/s; produce ack latency at that \
             rate:",
            group(report.settings.latency_rate)
        );
        for case in &report.cases {
            if let Some(e2e) = &case.e2e {
                let _ = writeln!(
                    out,
                    "  {:<10} ack p50 {} ms, p99 {} ms",
                    case.case,
                    ms(&e2e.ack_latency, false),
                    ms(&e2e.ack_latency, true)
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "MB/s counts record values, log MB/s record-batch bytes as sent and stored (1 MB = 10^6 B)."
    );
    let _ = writeln!(
        out,
        "client CPU: this process's user+system CPU time / (wall time × {} cores); near 100% \
         means the client, not the broker, set the pace. machine CPU: all cores' busy time over \
         the phase (client + a local broker + anything else): near 100% with a low client share \
         means the run was CPU-bound elsewhere, possibly by other work on the machine.",
        report.client_cores
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch::encode_batch;

    fn rec(ts: i64) -> SimpleRecord {
        SimpleRecord {
            key: None,
            value: Some(Bytes::from_static(b"0123456789")),
            headers: vec![],
            timestamp: ts,
        }
    }

    #[test]
    fn count_batches_skips_records_before_the_offset_and_partial_tails() {
        let mut a = encode_batch(&[rec(1), rec(2), rec(3)]);
        crate::log::batch::set_base_offset(&mut a, 10);
        let mut b = encode_batch(&[rec(4), rec(5)]);
        crate::log::batch::set_base_offset(&mut b, 13);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&a);
        buf.extend_from_slice(&b);
        let whole = buf.len() as u64;
        assert_eq!(count_batches(&buf, 10), (5, whole, 15));
        assert_eq!(count_batches(&buf, 11), (4, whole, 15));
        assert_eq!(count_batches(&buf, 13), (2, b.len() as u64, 15));
        // Cut inside the second batch: only the first counts.
        let cut = &buf[..a.len() + 20];
        assert_eq!(count_batches(cut, 10), (3, a.len() as u64, 13));
        assert_eq!(count_batches(&[], 7), (0, 0, 7));
        assert_eq!(count_batches(&[0u8; 5], 7), (0, 0, 7));
    }

    #[test]
    fn batches_are_sized_to_the_target() {
        let size = 100;
        let per_batch = ((64 * 1024 - BATCH_HEADER) / (size + RECORD_OVERHEAD)) as u64;
        let batch = plain_batch(&Bytes::from(filler(size)), per_batch).unwrap();
        assert!(batch.len() <= 64 * 1024, "{} bytes", batch.len());
        assert!(batch.len() > 60 * 1024, "{} bytes", batch.len());
        let stamped = stamped_batch(&filler(size), 3, Instant::now()).unwrap();
        assert_eq!(BatchIter::new(&stamped).count(), 1);
    }

    #[test]
    fn labels() {
        assert_eq!(size_label(100), "100B");
        assert_eq!(size_label(1024), "1KiB");
        assert_eq!(size_label(1536), "1536B");
        assert_eq!(size_label(1 << 20), "1MiB");
        assert_ne!(random_suffix(), random_suffix());
    }
}
