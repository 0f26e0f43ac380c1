//! The remote Kafka side of a bridge, through rdkafka (librdkafka: clusters, leader changes,
//! SASL and TLS come with it; the `kafka://` URI's query pairs are its settings).
//!
//! A destination is an idempotent producer with `acks=all`: a batch is produced in order
//! and, for `on-confirm`, the source settles only after every record's delivery report, so
//! producer retries never duplicate or reorder a record within a session. Delivery reports
//! are counted per batch ([`BatchReports`], shared by the batch's records as librdkafka's
//! per-message opaque) rather than each completing a future of its own: at 100k+ records/s
//! a channel and an allocation per record were a measurable part of the bridge's CPU. A source is a
//! consumer group member on the remote cluster with auto-commit off: offsets are committed
//! only after the batch is settled, i.e. durable at the destination (a Ferry append for
//! Kafka -> Ferry), so a crash at any point redelivers from the last committed offset. At
//! most one commit is outstanding: a batch's commit is sent only once the previous one was
//! accepted, so the group never lags what is durable by more than the pump's window
//! (fire-and-forget commits could queue up behind a slow coordinator, and a crash then
//! redelivered all of them).
//! Records keep their key, value, timestamp and headers, which is all a Kafka record has;
//! Ferry's AMQP properties and CloudEvents attributes travel as those headers.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{DeliveryResult, Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};

use super::definition::DestSpec;
use super::runner::{BridgeError, Confirms, Incoming, Token};
use crate::broker::message::Message;
use crate::log::SimpleRecord;

/// How long one produce may wait in librdkafka's queue before it fails the batch.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting may take: a metadata request must answer within it, so a cluster
/// that is down shows as `blocked` rather than as a running bridge with nothing moving.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Asks the cluster for `topic`'s metadata (librdkafka calls block, so on the blocking pool).
async fn probe<C>(client: std::sync::Arc<C>, topic: String) -> Result<(), String>
where
    C: ProbeClient + Send + Sync + 'static,
{
    tokio::task::spawn_blocking(move || client.probe(&topic))
        .await
        .map_err(|e| e.to_string())?
}

trait ProbeClient {
    fn probe(&self, topic: &str) -> Result<(), String>;
}

impl ProbeClient for ThreadedProducer<Reports> {
    fn probe(&self, topic: &str) -> Result<(), String> {
        self.client()
            .fetch_metadata(Some(topic), CONNECT_TIMEOUT)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

impl ProbeClient for StreamConsumer {
    fn probe(&self, topic: &str) -> Result<(), String> {
        self.fetch_metadata(Some(topic), CONNECT_TIMEOUT)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// How long a new sink waits for its producer id before it starts anyway (librdkafka then
/// holds the first batch until the id arrives).
const PID_WAIT: Duration = Duration::from_secs(1);
/// How often it asks for metadata meanwhile.
const PID_POLL: Duration = Duration::from_millis(5);

/// The longest wait between librdkafka's attempts to reach a broker that went away.
const RECONNECT_BACKOFF_MAX_MS: &str = "1000";

fn config(bootstrap: &str, options: &BTreeMap<String, String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    // librdkafka backs reconnects off up to 10 s; a bridge should resume within a second of
    // its cluster coming back (the URI's query can set it back).
    c.set("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX_MS);
    for (k, v) in options {
        c.set(k, v);
    }
    c
}

/// The delivery reports one published batch still waits for. librdkafka's polling thread
/// counts them down; the bridge's task waits for zero (or the first failure).
pub struct BatchReports {
    left: AtomicUsize,
    failed: parking_lot::Mutex<Option<String>>,
    done: tokio::sync::Notify,
}

impl BatchReports {
    fn new(records: usize) -> Arc<Self> {
        Arc::new(Self {
            left: AtomicUsize::new(records),
            failed: parking_lot::Mutex::new(None),
            done: tokio::sync::Notify::new(),
        })
    }

    fn report(&self, error: Option<String>) {
        if let Some(e) = error {
            self.failed.lock().get_or_insert(e);
            // Fail the batch now rather than after its last report.
            self.done.notify_one();
        }
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_one();
        }
    }

    /// Resolves once every record is delivered; the first failed delivery fails the batch.
    pub async fn wait(&self) -> Result<(), BridgeError> {
        loop {
            if let Some(e) = self.failed.lock().clone() {
                return Err(BridgeError::Destination(e));
            }
            if self.left.load(Ordering::Acquire) == 0 {
                return Ok(());
            }
            // `notify_one` keeps a permit when nobody waits yet, so a report landing
            // between the checks above and this await is not missed.
            self.done.notified().await;
        }
    }
}

/// The producer's context: routes each delivery report to its batch, and notes when the
/// idempotent producer has its producer id (librdkafka tells that only in its `eos` debug
/// log, which the sink turns on: a handful of lines per connection).
#[derive(Default)]
pub struct Reports {
    has_pid: AtomicBool,
}

impl ClientContext for Reports {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if fac == "GETPID" && message.contains("Acquired PID") {
            self.has_pid.store(true, Ordering::Release);
        }
        // As rdkafka's default: librdkafka's levels onto ours.
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
        }
    }
}

impl ProducerContext for Reports {
    type DeliveryOpaque = Arc<BatchReports>;

    fn delivery(&self, result: &DeliveryResult<'_>, batch: Arc<BatchReports>) {
        batch.report(result.as_ref().err().map(|(e, _)| e.to_string()));
    }
}

pub struct KafkaSink {
    producer: Arc<ThreadedProducer<Reports>>,
    topic: String,
}

impl KafkaSink {
    pub async fn open(
        bootstrap: &str,
        options: &BTreeMap<String, String>,
        dest: &DestSpec,
    ) -> Result<Self, BridgeError> {
        let DestSpec::Topic(topic) = dest else {
            return Err(BridgeError::Destination(
                "a Kafka destination takes dest-topic".into(),
            ));
        };
        let mut c = config(bootstrap, options);
        c.set("enable.idempotence", "true").set("acks", "all").set(
            "message.timeout.ms",
            DELIVERY_TIMEOUT.as_millis().to_string(),
        );
        // The producer id wait (below) needs the `eos` debug lines and a connection to a
        // broker the metadata named (bootstrap connections do not count for librdkafka).
        let debug = match options.get("debug") {
            Some(d) if !d.is_empty() => format!("{d},eos"),
            _ => "eos".to_string(),
        };
        c.set("debug", debug).set_log_level(RDKafkaLogLevel::Debug);
        if !options.contains_key("enable.sparse.connections") {
            c.set("enable.sparse.connections", "false");
        }
        let producer: ThreadedProducer<Reports> = c
            .create_with_context(Reports::default())
            .map_err(|e| BridgeError::Destination(e.to_string()))?;
        let producer = Arc::new(producer);
        probe(producer.clone(), topic.clone())
            .await
            .map_err(BridgeError::Destination)?;
        // An idempotent producer sends nothing before it has a producer id. librdkafka asks
        // for one when a metadata answer arrives while a named broker is up, and otherwise
        // retries on a 500 ms timer: right after creation no broker is up yet, so the first
        // batch used to wait half a second. Asking for metadata again every few
        // milliseconds until the id is there gets it within a round trip or two.
        let deadline = tokio::time::Instant::now() + PID_WAIT;
        while !producer.context().has_pid.load(Ordering::Acquire)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(PID_POLL).await;
            probe(producer.clone(), topic.clone())
                .await
                .map_err(BridgeError::Destination)?;
        }
        Ok(Self {
            producer,
            topic: topic.clone(),
        })
    }

    /// Produces the batch in order; with `confirm`, what lands with every delivery report.
    pub fn publish(&mut self, batch: Vec<Message>, confirm: bool) -> Result<Confirms, BridgeError> {
        let reports = BatchReports::new(batch.len());
        for message in batch {
            let record = message.into_record();
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (k, v) in &record.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: v.as_deref(),
                });
            }
            let mut out = BaseRecord::with_opaque_to(&self.topic, reports.clone())
                .headers(headers)
                .timestamp(record.timestamp);
            if let Some(k) = &record.key {
                out = out.key(&k[..]);
            }
            if let Some(v) = &record.value {
                out = out.payload(&v[..]);
            }
            // A refused record (queue full, say) fails the run; the batch's count then never
            // reaches zero, but nobody waits for it: the pump drops the batch unsettled.
            self.producer
                .send(out)
                .map_err(|(e, _)| BridgeError::Destination(e.to_string()))?;
        }
        Ok(if confirm {
            Confirms::Kafka(reports)
        } else {
            Confirms::None
        })
    }
}

pub struct KafkaSource {
    consumer: std::sync::Arc<StreamConsumer>,
    topic: String,
    /// Per partition, the offset after the last settled record: what the group must reach.
    settled: HashMap<i32, i64>,
    /// The one commit outstanding (a synchronous commit on the blocking pool), if any.
    committing: Option<tokio::task::JoinHandle<rdkafka::error::KafkaResult<()>>>,
    /// The last offsets settled, and how many more times to send them while the source is
    /// idle. librdkafka does not retry a commit the group refused (REBALANCE_IN_PROGRESS
    /// while a killed predecessor's session runs out, say); without a later batch to carry
    /// newer offsets, the group would stay behind what is durable and a restart would bring
    /// that tail again.
    recommit: Option<(TopicPartitionList, u32)>,
}

/// While idle, the last settled offsets are sent again this often...
const RECOMMIT_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// ...this many times (30 s: past a group's session timeout and the rebalance after it).
const RECOMMITS: u32 = 15;
/// How long a batch may wait for the commit before it (the previous one, or retries of a
/// refused one) to be accepted; past it the run fails and reconnects.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);
/// The pause between retries of a refused commit.
const COMMIT_RETRY_EVERY: Duration = Duration::from_millis(100);

impl KafkaSource {
    pub async fn open(
        bootstrap: &str,
        options: &BTreeMap<String, String>,
        topic: &str,
        group: &str,
    ) -> Result<Self, BridgeError> {
        let consumer: StreamConsumer = config(bootstrap, options)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(|e| BridgeError::Source(e.to_string()))?;
        let consumer = std::sync::Arc::new(consumer);
        probe(consumer.clone(), topic.to_string())
            .await
            .map_err(BridgeError::Source)?;
        consumer
            .subscribe(&[topic])
            .map_err(|e| BridgeError::Source(e.to_string()))?;
        Ok(Self {
            consumer,
            topic: topic.to_string(),
            settled: HashMap::new(),
            committing: None,
            recommit: None,
        })
    }

    pub fn pending(&self) -> Option<u64> {
        None
    }

    /// Waits for one record, then takes what librdkafka already holds, up to `max`.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<Incoming>, BridgeError> {
        let mut out = Vec::new();
        loop {
            let next = if out.is_empty() {
                let received = match &mut self.recommit {
                    Some((list, left)) => {
                        match tokio::time::timeout(RECOMMIT_EVERY, self.consumer.recv()).await {
                            Ok(received) => received,
                            Err(_idle) => {
                                // Idempotent: the same offsets again.
                                let _ = self.consumer.commit(list, CommitMode::Async);
                                *left -= 1;
                                if *left == 0 {
                                    self.recommit = None;
                                }
                                continue;
                            }
                        }
                    }
                    None => self.consumer.recv().await,
                };
                Some(received)
            } else {
                futures::FutureExt::now_or_never(self.consumer.recv())
            };
            let Some(next) = next else { return Ok(out) };
            let m = next.map_err(|e| BridgeError::Source(e.to_string()))?;
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.map(Bytes::copy_from_slice)))
                        .collect()
                })
                .unwrap_or_default();
            let record = SimpleRecord {
                key: m.key().map(Bytes::copy_from_slice),
                value: m.payload().map(Bytes::copy_from_slice),
                headers,
                timestamp: m.timestamp().to_millis().unwrap_or(0),
            };
            out.push(Incoming {
                message: Message::from_record(record),
                exchange: self.topic.clone(),
                token: Token::Kafka {
                    partition: m.partition(),
                    offset: m.offset(),
                },
            });
            if out.len() >= max {
                return Ok(out);
            }
        }
    }

    /// Commits, per partition, the offset after the batch's last record, with at most one
    /// commit outstanding: the previous batch's commit must have been accepted before this
    /// one is sent (and so before the pump fetches past the next batch boundary). A refused
    /// commit is retried with the newest offsets until accepted, or the run fails after
    /// [`COMMIT_TIMEOUT`]. That bounds what Ferry holds durably beyond the group's
    /// committed offsets to three batches; see docs/bridges.md.
    pub async fn settle(&mut self, tokens: &[Token]) -> Result<(), BridgeError> {
        let mut changed = false;
        for t in tokens {
            if let Token::Kafka { partition, offset } = t {
                let e = self.settled.entry(*partition).or_insert(offset + 1);
                if *e <= *offset {
                    *e = offset + 1;
                }
                changed = true;
            }
        }
        if !changed {
            return Ok(());
        }
        let accepted = match self.committing.take() {
            None => true,
            Some(previous) => match tokio::time::timeout(COMMIT_TIMEOUT, previous).await {
                Ok(Ok(Ok(()))) => true,
                Ok(Ok(Err(e))) => {
                    tracing::debug!(topic = %self.topic, error = %e, "commit refused; retrying");
                    false
                }
                Ok(Err(e)) => return Err(BridgeError::Local(e.to_string())),
                Err(_) => {
                    return Err(BridgeError::Source(format!(
                        "a commit took longer than {} s",
                        COMMIT_TIMEOUT.as_secs()
                    )))
                }
            },
        };
        let list = self.settled_list()?;
        self.recommit = Some((list.clone(), RECOMMITS));
        if accepted {
            self.committing = Some(self.commit(list));
            return Ok(());
        }
        // The newest offsets cover the refused ones: commit them and wait, so nothing more
        // is forwarded while the group is behind.
        let deadline = tokio::time::Instant::now() + COMMIT_TIMEOUT;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let last = match tokio::time::timeout(remaining, self.commit(list.clone())).await {
                Ok(Ok(Ok(()))) => return Ok(()),
                Ok(Ok(Err(e))) => e.to_string(),
                Ok(Err(e)) => return Err(BridgeError::Local(e.to_string())),
                Err(_) => "timed out".to_string(),
            };
            if tokio::time::Instant::now() + COMMIT_RETRY_EVERY >= deadline {
                return Err(BridgeError::Source(format!(
                    "the group refused commits for {} s: {last}",
                    COMMIT_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(COMMIT_RETRY_EVERY).await;
        }
    }

    fn settled_list(&self) -> Result<TopicPartitionList, BridgeError> {
        let mut list = TopicPartitionList::new();
        for (p, o) in &self.settled {
            list.add_partition_offset(&self.topic, *p, Offset::Offset(*o))
                .map_err(|e| BridgeError::Source(e.to_string()))?;
        }
        Ok(list)
    }

    /// Sends a commit and waits for the group's answer, on the blocking pool (a synchronous
    /// commit answers on a queue of its own, so it needs no poll of the consumer).
    fn commit(
        &self,
        list: TopicPartitionList,
    ) -> tokio::task::JoinHandle<rdkafka::error::KafkaResult<()>> {
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_lands_after_its_last_report_and_fails_at_its_first_failure() {
        let batch = BatchReports::new(3);
        batch.report(None);
        batch.report(None);
        let waiting = tokio::spawn({
            let batch = batch.clone();
            async move { batch.wait().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "one report is still missing");
        batch.report(None);
        assert!(waiting.await.unwrap().is_ok());

        let failing = BatchReports::new(2);
        failing.report(Some("broker: message timed out".into()));
        let e = failing.wait().await.unwrap_err();
        assert!(e.to_string().contains("timed out"), "{e}");
    }
}
