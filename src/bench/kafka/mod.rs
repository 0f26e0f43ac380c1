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
//!    does, or `--fetch-in-flight N` pipelined at the offsets the previous answer predicts (see
//!    [`consume`]). Records are counted from batch headers (no per-record
//!    decoding, no CRC check): the client proves the bytes arrived framed as whole batches with
//!    the right offsets, and spends its CPU receiving them rather than on decoding.
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
//!
//! `--schema avro` measures validation on publish: see [`schema`].

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
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreateTopicsRequest, DeleteTopicsRequest, FetchRequest, FetchResponse,
    MetadataRequest, MetadataResponse, ProduceResponse, TopicName,
};
use kafka_protocol::records::RecordBatchDecoder;
use kafka_protocol::ResponseError;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::KafkaBenchSettings;
use super::{
    cores, group, random_suffix, size_label, BenchError, CpuMeter, CpuShare, Latency, Progress,
};
use crate::client::kafka::{
    kafka_error, list_offset, produce_request, retriable, topic_metadata_request, topic_name,
    Connection, KafkaSecurity, Pending,
};
use crate::client::ClientError;
use crate::log::batch::{try_encode_batch, BatchHeader, BatchIter, EncodeOptions, SimpleRecord};

/// Version ranges this client can speak (names, not topic ids, identify topics in all of them).
mod consume;
mod e2e;
mod output;
mod produce;
mod schema;
mod topics;

use self::consume::*;
use self::e2e::*;
use self::output::case_line;
pub use self::output::render_table;
use self::produce::*;
pub use self::schema::SchemaBench;
use self::schema::{CaseValue, FRAMED_STAMP_AT};
use self::topics::*;

const PRODUCE: (i16, i16) = (3, 12);
const FETCH: (i16, i16) = (4, 12);
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
    /// Kafka's name for the connections' protection: PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL.
    pub security_protocol: &'static str,
    /// The SASL mechanism, when `security_protocol` is SASL_*.
    pub sasl_mechanism: Option<&'static str>,
    pub acks: i16,
    pub in_flight_per_connection: usize,
    pub batch_bytes: usize,
    pub fetch_bytes: usize,
    /// Consume phase: fetches in flight per partition connection.
    pub fetch_in_flight: usize,
    pub latency_rate: u64,
    pub latency_secs: f64,
    pub replication_factor: i16,
    /// `avro` with `--schema avro` (validated topics, framed Avro values), else absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<&'static str>,
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
    /// The broker process's user + system CPU time over wall time, in percent of one core;
    /// only for a broker on this machine (the owner of the bootstrap port).
    pub broker_cpu_percent: Option<f64>,
    /// The broker's CPU seconds per GB (10^9 bytes) of record values moved in the phase.
    pub broker_cpu_secs_per_gb: Option<f64>,
    /// produce: acks=all ack latency under full load; e2e: produce send → fetched.
    pub latency: Option<Latency>,
    /// e2e only: ack latency at the e2e rate.
    pub ack_latency: Option<Latency>,
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
            broker_cpu_percent: cpu
                .broker
                .filter(|_| seconds > 0.0)
                .map(|d| 100.0 * d.as_secs_f64() / seconds),
            broker_cpu_secs_per_gb: cpu
                .broker
                .filter(|_| value_bytes > 0)
                .map(|d| d.as_secs_f64() * 1e9 / value_bytes as f64),
            latency: None,
            ack_latency: None,
        }
    }
}

/// What every case shares.
struct Ctx {
    args: KafkaBenchSettings,
    admin: Connection,
    timeout: Duration,
    /// TLS and SASL for every connection, from the flags.
    security: KafkaSecurity,
    produce_v: i16,
    fetch_v: i16,
    /// Zero of the e2e time stamps.
    epoch: Instant,
    /// The topic of the running case, deleted on Ctrl-C.
    active: Arc<Mutex<Option<String>>>,
    progress: bool,
    /// The broker process when it runs here (owner of the bootstrap port), for its CPU.
    broker: Option<super::broker_cpu::BrokerProcess>,
}

/// Runs every case and prints the results.
pub async fn run(args: KafkaBenchSettings) -> Result<(), BenchError> {
    validate(&args)?;
    let timeout = Duration::from_secs(args.timeout.max(1));
    let security = security(&args)?;
    let admin = Connection::connect_with(&args.bootstrap, timeout, &security).await?;
    let active = Arc::new(Mutex::new(None::<String>));
    let keep = args.keep;
    let work = run_cases(args, admin.clone(), security, active.clone());
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

fn validate(args: &KafkaBenchSettings) -> Result<(), BenchError> {
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
    if args.fetch_in_flight == 0 {
        return bad("--fetch-in-flight must be at least 1".into());
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
    let smallest = schema::smallest_order();
    if let Some(s) = args.sizes.iter().find(|s| **s < smallest) {
        if args.schema.is_some() {
            return bad(format!(
                "--sizes {s}: --schema avro needs records of at least {smallest} bytes (the \
                 wire-format header and an order with no items)"
            ));
        }
    }
    Ok(())
}

async fn run_cases(
    args: KafkaBenchSettings,
    admin: Connection,
    security: KafkaSecurity,
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
    // The first bootstrap address, when it is this machine's, names the broker whose CPU
    // each phase reports.
    let broker = args
        .bootstrap
        .split(',')
        .next()
        .and_then(|first| first.trim().rsplit_once(':'))
        .and_then(|(host, port)| {
            super::broker_cpu::BrokerProcess::listening_on(host, port.parse().ok()?)
        });
    let ctx = Ctx {
        broker,
        progress: !args.json,
        args,
        admin,
        timeout,
        security,
        produce_v,
        fetch_v,
        epoch: Instant::now(),
        active,
    };
    if !ctx.args.json {
        eprintln!(
            "ferry bench kafka → {} ({}; {} broker{}; Produce v{produce_v}, Fetch v{fetch_v}); \
             client on {} cores",
            ctx.args.bootstrap,
            security_protocol(&ctx.security),
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
            security_protocol: security_protocol(&ctx.security),
            sasl_mechanism: ctx.security.sasl.as_ref().map(|l| l.mechanism.name()),
            acks: -1,
            in_flight_per_connection: ctx.args.in_flight,
            batch_bytes: ctx.args.batch_bytes,
            fetch_bytes: ctx.args.fetch_bytes,
            fetch_in_flight: ctx.args.fetch_in_flight,
            latency_rate: ctx.args.latency_rate,
            latency_secs: ctx.args.latency_secs,
            replication_factor: ctx.args.replication_factor,
            schema: ctx.args.schema.as_ref().map(|_| "avro"),
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

/// One batch of `n` records with the same value.
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

async fn run_case(ctx: &Ctx, size: usize, partitions: i32) -> Result<CaseReport, BenchError> {
    let label = format!("{}/{}p", size_label(size), partitions);
    let topic = format!("ferry-bench-{size}-{partitions}-{}", random_suffix());
    create_topic(ctx, &topic, partitions).await?;
    *ctx.active.lock() = Some(topic.clone());
    let result = match &ctx.args.schema {
        None => Ok(CaseValue::plain(size)),
        Some(s) => schema::register(s, &topic).await.and_then(|id| {
            let value = schema::framed_order(id, size).ok_or_else(|| {
                BenchError::Invalid(format!("--sizes {size} is too small for --schema avro"))
            })?;
            Ok(CaseValue {
                template: Bytes::from(value),
                stamp_at: FRAMED_STAMP_AT,
            })
        }),
    };
    let result = match result {
        Ok(value) => run_phases(ctx, &label, &topic, &value, partitions).await,
        Err(e) => Err(e),
    };
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
    value: &CaseValue,
    partitions: i32,
) -> Result<Phases, BenchError> {
    let size = value.template.len();
    let leaders = wait_for_leaders(ctx, topic, partitions).await?;
    let conns = connect_all(&leaders, ctx.timeout, &ctx.security).await?;
    let per_batch = ((ctx.args.batch_bytes.saturating_sub(BATCH_HEADER)) / (size + RECORD_OVERHEAD))
        .max(1) as u64;

    // Offsets before anything was written (0 on a fresh topic).
    let mut starts = Vec::with_capacity(conns.len());
    for (p, conn) in conns.iter().enumerate() {
        starts.push(list_offset(conn, topic, p as i32, -2).await?);
    }

    let produce = produce_phase(ctx, label, &conns, topic, &value.template, per_batch).await?;

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
        Some(e2e_phase(ctx, label, &conns, &leaders, topic, value, &ends, per_batch).await?)
    } else {
        None
    };
    Ok((per_batch, produce, consume, e2e))
}

async fn connect_all(
    addrs: &[String],
    timeout: Duration,
    security: &KafkaSecurity,
) -> Result<Vec<Connection>, BenchError> {
    let mut conns = Vec::with_capacity(addrs.len());
    for addr in addrs {
        conns.push(Connection::connect_with(addr, timeout, security).await?);
    }
    Ok(conns)
}

/// Kafka's `security.protocol` name for `security`.
fn security_protocol(security: &KafkaSecurity) -> &'static str {
    match (security.tls.is_some(), security.sasl.is_some()) {
        (false, false) => "PLAINTEXT",
        (true, false) => "SSL",
        (false, true) => "SASL_PLAINTEXT",
        (true, true) => "SASL_SSL",
    }
}

/// TLS and SASL as the flags ask for them.
fn security(args: &KafkaBenchSettings) -> Result<KafkaSecurity, BenchError> {
    if args.cacert.is_some() && !args.tls {
        return Err(BenchError::Invalid(
            "--cacert is for TLS connections: add --tls".into(),
        ));
    }
    let tls = if args.tls {
        Some(
            crate::tls::client_config(args.cacert.as_deref())
                .map_err(|e| BenchError::Invalid(e.to_string()))?,
        )
    } else {
        None
    };
    Ok(KafkaSecurity {
        tls,
        sasl: args.sasl.clone(),
    })
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
        let stamped = stamped_batch(&filler(size), 3, Instant::now(), 0).unwrap();
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
