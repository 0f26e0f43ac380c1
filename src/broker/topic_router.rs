//! Topics as exchanges (ARCHITECTURE rule 6): the partitioner for publishes to a topic's
//! exchange face, and the per-partition router tasks that feed bound queues from the topic log.
//!
//! **Publish.** A message published over AMQP to exchange `T` (topic `T` exists) is appended
//! to topic `T`, on the partition Kafka's default partitioner picks for its routing key:
//! `toPositive(murmur2(key)) % partitions`, the Java client's rule and librdkafka's
//! `murmur2_random`, so AMQP and Kafka producers with the same key meet on one partition. (A
//! librdkafka producer must set `partitioner=murmur2_random`; its own default is
//! `consistent_random`, a CRC-32.) An empty routing key counts as no key and goes round-robin
//! over the partitions, as librdkafka's random rule and Java's sticky rule spread null keys.
//! The publish is confirmed once the topic append is durable.
//!
//! **Route.** One task per topic partition with records to route (started by the log's
//! high-watermark hook, ended after a few idle seconds) tails the log and copies
//! each new record (from either protocol) into every queue whose binding to exchange `T`
//! matches the record key (topic patterns: `*` one word, `#` any). The topic log stays the one
//! source of truth: nothing is routed at publish time, so a Kafka-produced and an
//! AMQP-published record take the same path. Each copy carries `ferry.exchange = T` (so AMQP
//! consumers see exchange `T` and the key as routing key) and `ferry.source =
//! T/<partition>/<offset>`.
//!
//! **Exactly once into each queue.** The task keeps, per partition, a cursor in meta
//! ([`crate::meta::TopicRouteState`], key `topic_route`): every record below `next` is routed.
//! Before it submits the queue appends of a batch it makes durable an `in_flight` note: the
//! batch's end and, for each target queue, the queue log's end offset at that moment. Once
//! the appends are durable it advances `next` (no flush needed). At start-up an `in_flight`
//! note means a batch may have been cut short: the task scans each noted queue from the noted
//! offset for copies whose `ferry.source` lies in the batch and does not route those again.
//! Remaining window: a copy that was delivered, acked, and whose whole queue segment was
//! deleted between the crash point and the restart cannot be seen and would be routed again
//! (queue segments are 64 MiB, so this needs a queue that rolled and drained a segment
//! within one routing batch).
//!
//! Records appended before a queue was bound are not routed to it (as in RabbitMQ), except the
//! ones the router had not reached yet when the binding was made. A topic that existed before
//! this feature starts routing at its high watermark.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};

use bytes::Buf;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::dedup::{self, DedupCache, DedupPolicy};
use super::queue::{Queue, Submitted};
use super::routing::{
    Durable, RoutingError, TopicSink, TopicSubmit, DEFAULT_VHOST, EXCHANGE_HEADER,
};
use super::{BrokerCore, CoreInner};
use crate::log::txn_index::is_aborted;
use crate::log::{batch, PartitionHandle, SimpleRecord};
use crate::meta::{RouteInFlight, RouteMark, TopicRouteState};

/// Bytes of topic log read per routing step.
const ROUTE_CHUNK: usize = 1024 * 1024;
/// How long a router that has caught up waits for new records before it ends. The partition's
/// high-watermark hook starts it again when records arrive, so an idle partition costs no
/// task (issue 12: 100,000 mostly idle partitions).
const ROUTER_IDLE_RETIRE: std::time::Duration = std::time::Duration::from_secs(5);
/// How often a router whose records route nowhere stores its cursor. Storing it per step cost
/// a sled batch per high-watermark change (each seals and writes one of sled's log buffers on
/// its I/O threads: ~300 µs of broker CPU per one-record append to a topic nothing is bound
/// to). A cursor stored late only makes a restart re-scan those records, which route nowhere
/// unless a queue was bound to the topic in the same interval before a crash.
const UNROUTED_CURSOR_STORE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), seed `0x9747b28c`.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = 0x9747_b28c ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Kafka's default partition for a non-null key: `toPositive(murmur2(key)) % partitions`.
pub fn partition_for_key(key: &[u8], partitions: usize) -> i32 {
    let positive = (murmur2(key) & 0x7fff_ffff) as u32;
    (positive % (partitions.max(1) as u32)) as i32
}

/// The router tasks of every topic partition.
#[derive(Default)]
pub(crate) struct TopicRouters {
    tasks: Mutex<HashMap<(String, i32), RouterTask>>,
    /// Topics whose routers were stopped for good (deleted): a record arriving during the
    /// deletion must not start one again.
    stopped: Mutex<HashSet<String>>,
    /// Round-robin counter for publishes without a key.
    round_robin: AtomicU32,
}

struct RouterTask {
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

impl TopicRouters {
    /// Starts routing partition `partition` of `topic` (no-op if it already runs).
    pub(crate) fn start(
        &self,
        core: &BrokerCore,
        topic: &str,
        partition: i32,
        log: PartitionHandle,
    ) {
        let mut tasks = self.tasks.lock();
        let k = (topic.to_string(), partition);
        if tasks.get(&k).is_some_and(|t| !t.handle.is_finished())
            || self.stopped.lock().contains(topic)
        {
            return;
        }
        let (stop, stop_rx) = watch::channel(false);
        let handle = tokio::spawn(route_partition(
            Arc::downgrade(&core.inner),
            topic.to_string(),
            partition,
            log,
            stop_rx,
        ));
        tasks.insert(k, RouterTask { stop, handle });
    }

    /// Routes partition `partition` of `topic` from now on: starts its router if it has
    /// records to route (or an interrupted batch to repair), and makes the log start it
    /// whenever records arrive later.
    pub(crate) fn attach(
        &self,
        core: &BrokerCore,
        topic: &str,
        partition: i32,
        log: PartitionHandle,
    ) {
        self.stopped.lock().remove(topic);
        let weak = Arc::downgrade(&core.inner);
        let name = topic.to_string();
        log.on_high_watermark_advance(Box::new(move |_| {
            let Some(inner) = weak.upgrade() else { return };
            if inner.shutting_down.load(Ordering::Acquire) {
                return;
            }
            let core = BrokerCore { inner };
            if let Ok(log) = core.partition(&name, partition) {
                core.inner.topic_routers.start(&core, &name, partition, log);
            }
        }));
        let idle = matches!(
            core.inner.meta.topic_route(topic, partition),
            Ok(Some(state)) if state.in_flight.is_none() && state.next >= log.high_watermark()
        );
        if !idle {
            self.start(core, topic, partition, log);
        }
    }

    /// Ends the router of a partition that has routed everything below `cursor`, unless
    /// records arrived meanwhile (checked under the lock the high-watermark hook takes to
    /// start a router, so none is missed). Returns whether it ended.
    fn retire(&self, topic: &str, partition: i32, log: &PartitionHandle, cursor: i64) -> bool {
        let mut tasks = self.tasks.lock();
        if log.high_watermark() > cursor {
            return false;
        }
        tasks.remove(&(topic.to_string(), partition));
        true
    }

    /// The topic's routers were stopped because it is being deleted.
    fn is_deleting(&self, topic: &str) -> bool {
        self.stopped.lock().contains(topic)
    }

    /// Stops the tasks of `topic` (every topic with `None`), waiting for the batch in hand.
    pub(crate) async fn stop(&self, topic: Option<&str>) {
        let stopped: Vec<RouterTask> = {
            let mut tasks = self.tasks.lock();
            if let Some(topic) = topic {
                self.stopped.lock().insert(topic.to_string());
            }
            let keys: Vec<_> = tasks
                .keys()
                .filter(|(t, _)| topic.is_none_or(|want| want == t))
                .cloned()
                .collect();
            keys.into_iter().filter_map(|k| tasks.remove(&k)).collect()
        };
        for t in &stopped {
            t.stop.send_replace(true);
        }
        for t in stopped {
            let _ = t.handle.await;
        }
    }

    fn next_round_robin(&self) -> u32 {
        self.round_robin.fetch_add(1, Ordering::Relaxed)
    }
}

/// Appends publishes to topic exchanges to their topic (the router's [`TopicSink`]), dropping
/// repeats of a message id within the topic's `ferry.dedup.window.ms`.
pub(super) struct CoreTopicSink {
    core: Weak<CoreInner>,
    /// Per topic: the window the cache was built for, and the ids seen.
    dedup: Mutex<HashMap<String, (i64, DedupCache)>>,
}

impl CoreTopicSink {
    pub(super) fn new(core: Weak<CoreInner>) -> Self {
        CoreTopicSink {
            core,
            dedup: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `record` repeats a message id appended to `topic` within `window_ms`. The
    /// first check after a start (or a window change) rebuilds the topic's cache from the
    /// tail of its partitions, so a restart inside the window lets no repeat through.
    fn is_repeat(&self, t: &super::Topic, window_ms: i64, record: &SimpleRecord, now: i64) -> bool {
        let Some(key) = dedup::record_key(record) else {
            return false;
        };
        let mut caches = self.dedup.lock();
        let stale = caches
            .get(t.name())
            .is_none_or(|(window, _)| *window != window_ms);
        if stale {
            let mut cache = DedupCache::new(DedupPolicy {
                window_ms: Some(window_ms),
                max_entries: dedup::DEFAULT_CACHE_SIZE,
            });
            for log in t.partitions() {
                reload_topic_ids(log, &mut cache, now.saturating_sub(window_ms));
            }
            caches.insert(t.name().to_string(), (window_ms, cache));
        }
        match caches.get_mut(t.name()) {
            Some((_, cache)) => !cache.admit(key, now),
            None => false,
        }
    }
}

/// Admits the message ids of one partition's records from `since_ms` on (at most the last
/// [`dedup::DEFAULT_CACHE_SIZE`] records) into `cache`.
fn reload_topic_ids(log: &PartitionHandle, cache: &mut DedupCache, since_ms: i64) {
    let hw = log.high_watermark();
    let mut at = match log.offset_for_timestamp(since_ms) {
        Ok(Some((o, _))) => o,
        _ => return,
    };
    at = at.max(hw.saturating_sub(dedup::DEFAULT_CACHE_SIZE as i64));
    while at < hw {
        let Ok(slice) = log.read(at, 1 << 20) else {
            return;
        };
        if slice.bytes.is_empty() {
            return;
        }
        let mut buf = slice.bytes.clone();
        let mut progressed = false;
        while buf.has_remaining() {
            let Ok(records) = batch::decode_next_batch(&mut buf) else {
                break;
            };
            for r in records {
                if r.offset < at || r.offset >= hw {
                    continue;
                }
                if let Some(key) = dedup::record_key(&r.record) {
                    cache.admit(key, r.record.timestamp);
                }
                at = r.offset + 1;
                progressed = true;
            }
        }
        if !progressed {
            return;
        }
    }
}

impl TopicSink for CoreTopicSink {
    fn submit<'a>(&'a self, topic: &'a str, record: SimpleRecord) -> TopicSubmit<'a> {
        Box::pin(async move {
            let not_found = || RoutingError::not_found("exchange", DEFAULT_VHOST, topic);
            let inner = self.core.upgrade().ok_or_else(not_found)?;
            let core = BrokerCore { inner };
            let t = core.topic(topic).ok_or_else(not_found)?;
            let window = t
                .partition(0)
                .map_or(-1, |log| log.config().dedup_window_ms);
            let n = t.partition_count();
            let keyed = record
                .key
                .as_deref()
                .filter(|k| !k.is_empty())
                .map(|k| partition_for_key(k, n));
            if window > 0 && self.is_repeat(&t, window, &record, core.inner.router.now_ms()) {
                metrics::counter!("ferry_messages_deduplicated_total").increment(1);
                // The original went to the key's partition; without a key, to any of them.
                let logs = match keyed {
                    Some(p) => t.partition(p).cloned().into_iter().collect(),
                    None => t.partitions().to_vec(),
                };
                return Ok(Durable::Repeat(logs));
            }
            let partition = keyed.unwrap_or_else(|| {
                (core.inner.topic_routers.next_round_robin() as usize % n.max(1)) as i32
            });
            let log = t.partition(partition).cloned().ok_or_else(not_found)?;
            // A dead letter or re-publish of a routed copy must not carry its old routing
            // into the topic.
            let mut record = record;
            record
                .headers
                .retain(|(k, _)| k != SOURCE_HEADER && k != EXCHANGE_HEADER);
            let batch = crate::log::try_encode_batch(
                std::slice::from_ref(&record),
                &crate::log::EncodeOptions::default(),
            )?;
            Ok(Durable::Append(log.submit_append(batch).await?))
        })
    }
}

/// Record header on a routed copy naming its source: `<topic>/<partition>/<offset>`. It lets
/// a restart recognise copies that reached a queue before a crash (the AMQP adapter does not
/// deliver `ferry.` headers).
pub const SOURCE_HEADER: &str = "ferry.source";

/// Copies of an interrupted batch that already reached their queues, found at start-up.
#[derive(Default)]
struct Skip {
    /// Offsets at or above this are past the interrupted batch.
    upto: i64,
    /// (vhost, queue, source offset) of every copy found.
    have: HashSet<(String, String, i64)>,
}

/// Tails one topic partition and routes each new record into the queues bound to the topic's
/// exchange. Ends when stopped or when the core is gone.
async fn route_partition(
    core: Weak<CoreInner>,
    topic: String,
    partition: i32,
    log: PartitionHandle,
    mut stop: watch::Receiver<bool>,
) {
    let mut hw = log.subscribe_high_watermark();
    let Some((mut cursor, mut skip)) = load_state(&core, &topic, partition, &log) else {
        return;
    };
    // The cursor past records that route nowhere is stored at most once per interval.
    let mut cursor_stored_at = std::time::Instant::now();
    let mut unstored = false;
    loop {
        if *stop.borrow_and_update() {
            // At shutdown the cursor is stored, so a restart does not route records that were
            // appended before a later binding; a deleted topic's cursor is not written back.
            if let Some(inner) = core.upgrade().filter(|_| unstored) {
                if !inner.topic_routers.is_deleting(&topic) {
                    if let Err(e) = inner.meta.put_topic_route_offset(&topic, partition, cursor) {
                        tracing::warn!(topic, partition, error = %e, "storing the routing cursor failed");
                    }
                }
            }
            return;
        }
        // Bounded by the last stable offset (see `route_step`); a marker that moves it also
        // moves the high watermark, which wakes this loop.
        // Copy the watermark out first: the borrow holds the watch's read lock, and taking
        // it again in `last_stable_offset` while the writer waits to advance the watermark
        // deadlocks both (parking_lot queues new readers behind a waiting writer).
        let high_watermark = *hw.borrow_and_update();
        let end = high_watermark.min(log.last_stable_offset());
        if cursor < end {
            let Some(inner) = core.upgrade() else { return };
            let core_ref = BrokerCore { inner };
            let store_cursor = cursor_stored_at.elapsed() >= UNROUTED_CURSOR_STORE_INTERVAL;
            let step = route_step(
                &core_ref,
                &topic,
                partition,
                &log,
                cursor,
                &mut skip,
                store_cursor,
            )
            .await;
            match step {
                Ok((next, stored)) => {
                    cursor = next;
                    if stored {
                        cursor_stored_at = std::time::Instant::now();
                        unstored = false;
                    } else {
                        unstored = true;
                    }
                    if cursor >= skip.upto {
                        skip.have.clear();
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(topic, partition, cursor, error = %e, "routing topic records failed; retrying");
                    drop(core_ref);
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                        _ = stop.changed() => {}
                    }
                    // Some appends of the failed batch may have landed: find them again.
                    match load_state(&core, &topic, partition, &log) {
                        Some((c, s)) => (cursor, skip) = (c, s),
                        None => return,
                    }
                    continue;
                }
            }
        }
        tokio::select! {
            r = hw.changed() => if r.is_err() { return },
            r = stop.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(ROUTER_IDLE_RETIRE) => {
                let Some(inner) = core.upgrade() else { return };
                if unstored {
                    match inner.meta.put_topic_route_offset(&topic, partition, cursor) {
                        Ok(()) => unstored = false,
                        Err(e) => tracing::warn!(topic, partition, error = %e, "storing the routing cursor failed"),
                    }
                }
                if inner.topic_routers.retire(&topic, partition, &log, cursor) {
                    return;
                }
            }
        }
    }
}

/// Reads the routing cursor (starting at the high watermark when there is none) and finds the
/// copies of an interrupted batch that reached their queues. `None`: the core is gone or the
/// cursor is unreadable.
fn load_state(
    core: &Weak<CoreInner>,
    topic: &str,
    partition: i32,
    log: &PartitionHandle,
) -> Option<(i64, Skip)> {
    let inner = core.upgrade()?;
    let state = match inner.meta.topic_route(topic, partition) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(topic, partition, error = %e, "reading the routing cursor failed; not routing this partition");
            return None;
        }
    };
    let Some(state) = state else {
        let start = log.high_watermark();
        if let Err(e) = inner.meta.put_topic_route_offset(topic, partition, start) {
            tracing::warn!(topic, partition, error = %e, "storing the routing cursor failed");
        }
        return Some((start, Skip::default()));
    };
    let mut skip = Skip::default();
    if let Some(flight) = state.in_flight {
        skip.upto = flight.upto;
        let prefix = format!("{topic}/{partition}/");
        for mark in flight.queues {
            let Some(q) = inner.router.queue(&mark.vhost, &mark.queue) else {
                continue;
            };
            let qlog = q.log();
            let from = mark.from.max(qlog.log_start_offset());
            let end = qlog.high_watermark();
            let result = for_each_record(qlog, from, end, |r| {
                let source = r
                    .record
                    .headers
                    .iter()
                    .find(|(k, _)| k == SOURCE_HEADER)
                    .and_then(|(_, v)| v.as_ref())
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.strip_prefix(prefix.as_str()))
                    .and_then(|o| o.parse::<i64>().ok());
                if let Some(o) = source.filter(|o| (state.next..flight.upto).contains(o)) {
                    skip.have
                        .insert((mark.vhost.clone(), mark.queue.clone(), o));
                }
            });
            if let Err(e) = result {
                tracing::warn!(topic, partition, queue = %mark.queue, error = %e, "scanning a queue for routed copies failed");
            }
        }
        if !skip.have.is_empty() {
            tracing::info!(
                topic,
                partition,
                copies = skip.have.len(),
                "an interrupted routing batch had reached its queues in part; not routing those copies again"
            );
        }
    }
    Some((state.next, skip))
}

/// Calls `f` with every record of `log` in `[from, to)`, decoding (and decompressing) batches.
fn for_each_record(
    log: &PartitionHandle,
    from: i64,
    to: i64,
    mut f: impl FnMut(batch::StoredRecord),
) -> Result<(), crate::log::LogError> {
    let mut at = from;
    while at < to {
        let slice = log.read(at, ROUTE_CHUNK)?;
        if slice.bytes.is_empty() || slice.next_offset <= at {
            break;
        }
        let mut buf = slice.bytes.clone();
        while buf.has_remaining() {
            let Ok(records) = batch::decode_next_batch(&mut buf) else {
                break;
            };
            for r in records {
                if r.offset >= at && r.offset < to && !r.is_control {
                    f(r);
                }
            }
        }
        at = slice.next_offset;
    }
    Ok(())
}

/// Routes the records from `cursor` on (one read's worth); returns the new cursor and whether
/// it was stored. Before the queue appends of a batch are submitted, the batch and each target
/// queue's log end are made durable in meta (`in_flight`), so a crash mid-batch is repaired
/// exactly at start-up. A step whose records route nowhere stores the cursor only when
/// `store_cursor` says so (see [`UNROUTED_CURSOR_STORE_INTERVAL`]).
async fn route_step(
    core: &BrokerCore,
    topic: &str,
    partition: i32,
    log: &PartitionHandle,
    cursor: i64,
    skip: &mut Skip,
    store_cursor: bool,
) -> Result<(i64, bool), RoutingError> {
    let meta = core.meta();
    let cursor = cursor.max(log.log_start_offset());
    // Queues get a transaction's records only once it commits (never if it aborts): routing
    // stops at the last stable offset and drops aborted transactions' batches.
    let end = log.last_stable_offset();
    if cursor >= end {
        return Ok((cursor, false));
    }
    let store_unrouted = |next: i64| -> Result<(i64, bool), RoutingError> {
        if store_cursor {
            meta.put_topic_route_offset(topic, partition, next)?;
        }
        Ok((next, store_cursor))
    };
    let router = core.router();
    let exchange = router
        .exchange(DEFAULT_VHOST, topic)
        .filter(|e| e.is_topic() && e.has_bindings());
    let Some(exchange) = exchange else {
        // Nothing is bound: skip to the end without reading. The cursor need not be flushed
        // (a lost update re-scans records that route nowhere).
        return store_unrouted(end);
    };
    let (slice, aborted) = log.read_committed(cursor, ROUTE_CHUNK)?;
    if slice.bytes.is_empty() || slice.next_offset <= cursor {
        tracing::warn!(
            topic,
            partition,
            cursor,
            end,
            "nothing readable below the last stable offset; skipping"
        );
        return store_unrouted(end);
    }
    let mut buf = slice.bytes.clone();
    let mut plan: Vec<(SimpleRecord, Vec<Arc<Queue>>)> = Vec::new();
    let mut next = cursor;
    while buf.has_remaining() {
        let header = batch::BatchHeader::parse(&buf).ok();
        let records = match batch::decode_next_batch(&mut buf) {
            Ok(records) => records,
            Err(e) => {
                tracing::warn!(topic, partition, cursor, error = %e, "undecodable batch in topic log; skipping it");
                break;
            }
        };
        if let Some(h) = header.filter(|h| is_aborted(&aborted, h)) {
            next = next.max(h.next_offset());
            continue;
        }
        for batch::StoredRecord {
            offset,
            is_control,
            record: r,
        } in records
        {
            if offset < cursor {
                continue;
            }
            next = next.max(offset + 1);
            if is_control {
                continue;
            }
            let key = r
                .key
                .as_ref()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default();
            let mut queues = router.route_topic_record(&exchange, &key);
            queues.retain(|q| {
                !skip
                    .have
                    .contains(&(q.vhost().to_string(), q.name().to_string(), offset))
            });
            if queues.is_empty() {
                continue;
            }
            let mut headers: Vec<(String, Option<bytes::Bytes>)> =
                Vec::with_capacity(r.headers.len() + 2);
            headers.push((
                EXCHANGE_HEADER.to_string(),
                Some(bytes::Bytes::copy_from_slice(topic.as_bytes())),
            ));
            headers.push((
                SOURCE_HEADER.to_string(),
                Some(bytes::Bytes::from(format!("{topic}/{partition}/{offset}"))),
            ));
            headers.extend(
                r.headers
                    .into_iter()
                    .filter(|(k, _)| k != EXCHANGE_HEADER && k != SOURCE_HEADER),
            );
            let record = SimpleRecord {
                key: r.key,
                value: r.value,
                headers,
                timestamp: r.timestamp,
            };
            plan.push((record, queues));
        }
    }
    // Whole batches were read, so `next` is at a batch boundary; a batch that failed to decode
    // is skipped by its slice end.
    if next == cursor {
        next = slice.next_offset;
    }
    if plan.is_empty() {
        return store_unrouted(next);
    }
    let mut marks: Vec<RouteMark> = Vec::new();
    for (_, queues) in &plan {
        for q in queues {
            if !marks
                .iter()
                .any(|m| m.vhost == q.vhost() && m.queue == q.name())
            {
                marks.push(RouteMark {
                    vhost: q.vhost().to_string(),
                    queue: q.name().to_string(),
                    from: q.log().log_end_offset(),
                });
            }
        }
    }
    meta.put_topic_route(
        topic,
        partition,
        &TopicRouteState {
            next: cursor,
            in_flight: Some(RouteInFlight {
                upto: next,
                queues: marks,
            }),
        },
    )?;
    meta.flush()?;
    let mut pending = Vec::new();
    for (record, queues) in plan {
        for q in queues {
            // A full queue (reject-publish) or a duplicate takes no copy.
            if let Submitted::Appended(p) = q.submit(record.clone()).await? {
                pending.push(p);
            }
        }
    }
    for p in pending {
        p.wait().await?;
    }
    // Not flushed: if this write is lost, start-up finds the copies through `in_flight`.
    meta.put_topic_route_offset(topic, partition, next)?;
    Ok((next, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from Kafka's `UtilsTest.testMurmur2` and librdkafka's `rdmurmur2.c` unit test.
    #[test]
    fn murmur2_matches_kafka() {
        for (key, want) in [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
            ("kafka", 0xd067_cf64_u32 as i32),
        ] {
            assert_eq!(murmur2(key.as_bytes()), want, "murmur2({key:?})");
        }
    }

    #[test]
    fn partition_is_positive_modulo() {
        // toPositive(-973932308) = -973932308 & 0x7fffffff = 1173551340.
        assert_eq!(partition_for_key(b"21", 7), 1_173_551_340 % 7);
        for n in 1..20 {
            let p = partition_for_key(b"foobar", n);
            assert!((0..n as i32).contains(&p));
        }
    }
}
