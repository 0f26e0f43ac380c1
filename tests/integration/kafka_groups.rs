//! Consumer groups end to end through librdkafka (the `rdkafka` crate), plus a hand-driven member
//! on the raw Kafka protocol where librdkafka cannot be made to misbehave: partitions split over
//! several members and every record delivered once; rebalances on join and leave (eager and
//! cooperative-sticky) and when a subscribed topic grows; commit and resume, also across a
//! broker restart, with a consumer that stays up through the restart (dynamic and static); a
//! silent member expiring; static membership; and the admin views (ListGroups, DescribeGroups,
//! DeleteGroups).
//!
//! librdkafka calls block their thread, so each group member here runs its poll loop on a thread
//! of its own ([`Member`]) and records what it sees; single-consumer steps run in
//! `spawn_blocking`. The test bodies stay async and wait with bounded deadlines, so the broker
//! keeps both runtime workers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::{
    ApiKey, ConsumerProtocolAssignment, ConsumerProtocolSubscription, DescribeGroupsRequest,
    DescribeGroupsResponse, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest,
    SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use ferry::testing::TestBroker;

use crate::common;
use common::kafka_raw::RawKafka;

/// Upper bound for any single thing a test waits for.
const WAIT: Duration = Duration::from_secs(15);

// Kafka error codes the tests expect.
const UNKNOWN_MEMBER_ID: i16 = 25;
const MEMBER_ID_REQUIRED: i16 = 79;

/// A broker that accepts session timeouts down to 1 s, so expiry tests stay short.
async fn start_broker() -> TestBroker {
    TestBroker::with(|b| b.configure(|c| c.kafka.group_min_session_timeout_ms = 1000))
        .await
        .unwrap()
}

async fn create_topic(broker: &TestBroker, topic: &str, partitions: u32) {
    broker
        .core()
        .create_topic(topic, partitions, BTreeMap::new())
        .await
        .unwrap();
}

/// Produces `m{i}` for each `i` in `range` to partition `i % partitions`, waiting for every ack.
async fn produce(bootstrap: &str, topic: &str, partitions: i32, range: std::ops::Range<usize>) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.timeout.ms", "15000")
        .set("linger.ms", "2")
        .create()
        .expect("producer");
    let mut acks = Vec::new();
    for i in range {
        let payload = format!("m{i}");
        let record = FutureRecord::<(), _>::to(topic)
            .payload(&payload)
            .partition(i as i32 % partitions);
        acks.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for ack in acks {
        ack.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

/// The consumer settings every group member here shares: manual commits, from the earliest
/// offset, short heartbeats so rebalances are noticed within ~100 ms.
fn group_config(bootstrap: &str, group: &str, client_id: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("client.id", client_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "100")
        .set("max.poll.interval.ms", "10000");
    cfg
}

/// Polls `check` every 20 ms until it holds; panics with `what` after `limit`.
async fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs blocking librdkafka code off the runtime workers; a panic inside fails the test.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// A delivered record: (partition, offset, payload).
type Record = (i32, i64, String);

fn all_partitions(n: i32) -> BTreeSet<i32> {
    (0..n).collect()
}

// --- a group member on its own thread -------------------------------------------------------------

/// What one member has seen so far.
#[derive(Clone, Debug, Default)]
struct Seen {
    /// Partitions assigned after the latest rebalance callback.
    assignment: BTreeSet<i32>,
    /// Every record delivered: (partition, offset, payload).
    records: Vec<Record>,
    /// Rebalance callbacks: assignments and revocations.
    assigns: usize,
    revokes: usize,
    /// Consumer and rebalance errors.
    errors: Vec<String>,
}

struct Recorder {
    seen: Arc<Mutex<Seen>>,
}

impl ClientContext for Recorder {}

impl ConsumerContext for Recorder {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // The event names what changed: with the eager protocol everything is revoked and the
        // whole new assignment assigned; with the cooperative one only the partitions that
        // move. (Asking the consumer for its assignment here can deadlock while it closes.)
        let partitions =
            |tpl: &TopicPartitionList| tpl.elements().iter().map(|e| e.partition()).collect();
        let mut seen = self.seen.lock().unwrap();
        match rebalance {
            Rebalance::Assign(tpl) => {
                seen.assigns += 1;
                let added: BTreeSet<i32> = partitions(tpl);
                seen.assignment.extend(added);
            }
            Rebalance::Revoke(tpl) => {
                seen.revokes += 1;
                let removed: BTreeSet<i32> = partitions(tpl);
                seen.assignment.retain(|p| !removed.contains(p));
            }
            Rebalance::Error(e) => seen.errors.push(format!("rebalance: {e}")),
        }
    }
}

/// A subscribed consumer whose poll loop runs on its own thread until [`Member::close`].
struct Member {
    name: String,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    done: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Member {
    fn start(cfg: ClientConfig, topic: &str, name: &str) -> Member {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let consumer: BaseConsumer<Recorder> = cfg
            .create_with_context(Recorder { seen: seen.clone() })
            .expect("consumer");
        consumer.subscribe(&[topic]).unwrap();
        let (thread_seen, thread_stop) = (seen.clone(), stop.clone());
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                while !thread_stop.load(Ordering::Acquire) {
                    match consumer.poll(Duration::from_millis(50)) {
                        None => {}
                        Some(Ok(m)) => {
                            let payload = String::from_utf8_lossy(m.payload().unwrap_or_default());
                            thread_seen.lock().unwrap().records.push((
                                m.partition(),
                                m.offset(),
                                payload.into_owned(),
                            ));
                        }
                        Some(Err(e)) => thread_seen.lock().unwrap().errors.push(e.to_string()),
                    }
                }
                // Dropping closes the consumer: revoke, then LeaveGroup (dynamic members only).
                drop(consumer);
                let _ = done_tx.send(());
            })
            .unwrap();
        Member {
            name: name.to_string(),
            seen,
            stop,
            done: Some(done),
        }
    }

    fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }

    fn assignment(&self) -> BTreeSet<i32> {
        self.seen.lock().unwrap().assignment.clone()
    }

    /// Stops the poll loop and closes the consumer; fails if closing takes longer than [`WAIT`].
    async fn close(mut self) {
        self.stop.store(true, Ordering::Release);
        let done = self.done.take().unwrap();
        tokio::time::timeout(WAIT, done)
            .await
            .unwrap_or_else(|_| panic!("{} did not close in time", self.name))
            .unwrap();
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        // A test that failed midway: let the thread close its consumer on its own.
        self.stop.store(true, Ordering::Release);
    }
}

/// True when the members' assignments are disjoint and together cover `0..partitions`.
fn covers_exactly(members: &[&Member], partitions: i32) -> bool {
    let mut union = BTreeSet::new();
    for m in members {
        for p in m.assignment() {
            if !union.insert(p) {
                return false;
            }
        }
    }
    union == all_partitions(partitions)
}

// --- a raw Kafka client (tests/common) for what librdkafka will not do -----------------------

fn subscription_metadata(topic: &str) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    ConsumerProtocolSubscription::default()
        .with_topics(vec![StrBytes::from_string(topic.to_string())])
        .encode(&mut buf, 0)
        .unwrap();
    buf.freeze()
}

/// The partitions of `topic` in a "consumer" protocol assignment (version prefix + body).
fn assigned_partitions(assignment: &[u8], topic: &str) -> BTreeSet<i32> {
    let mut buf = Bytes::copy_from_slice(assignment);
    if buf.remaining() < 2 {
        return BTreeSet::new();
    }
    let version = buf.get_i16();
    let decoded = ConsumerProtocolAssignment::decode(&mut buf, version.min(3)).unwrap();
    decoded
        .assigned_partitions
        .iter()
        .filter(|tp| tp.topic.as_str() == topic)
        .flat_map(|tp| tp.partitions.iter().copied())
        .collect()
}

// --- tests ----------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_split_partitions_and_receive_each_record_once() {
    let broker = start_broker().await;
    let bootstrap = broker.kafka_bootstrap();
    create_topic(&broker, "split", 6).await;

    let members: Vec<Member> = (0..3)
        .map(|i| {
            let name = format!("split-{i}");
            Member::start(group_config(&bootstrap, "g-split", &name), "split", &name)
        })
        .collect();
    let refs: Vec<&Member> = members.iter().collect();
    wait_until("three members to share the six partitions", WAIT, || {
        covers_exactly(&refs, 6) && refs.iter().all(|m| m.assignment().len() == 2)
    })
    .await;
    let rebalances: Vec<usize> = members.iter().map(|m| m.seen().assigns).collect();

    produce(&bootstrap, "split", 6, 0..120).await;
    wait_until("all 120 records to arrive", WAIT, || {
        members
            .iter()
            .map(|m| m.seen().records.len())
            .sum::<usize>()
            >= 120
    })
    .await;
    // Anything delivered twice would show up by now.
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let mut delivered: HashMap<String, usize> = HashMap::new();
    for m in &members {
        let seen = m.seen();
        assert!(seen.errors.is_empty(), "{}: {:?}", m.name, seen.errors);
        for (partition, _, payload) in &seen.records {
            assert!(
                seen.assignment.contains(partition),
                "{} got a record of partition {partition}, which it does not own",
                m.name
            );
            *delivered.entry(payload.clone()).or_default() += 1;
        }
    }
    for i in 0..120 {
        assert_eq!(delivered.get(&format!("m{i}")), Some(&1), "record m{i}");
    }
    assert_eq!(delivered.len(), 120);
    let after: Vec<usize> = members.iter().map(|m| m.seen().assigns).collect();
    assert_eq!(rebalances, after, "no rebalance while consuming");

    for m in members {
        m.close().await;
    }
    broker.stop().await;
}

/// One member owns everything; a second joins and takes half; the second closes (LeaveGroup)
/// and the first owns everything again, well before the second's session would have expired.
async fn join_then_leave(strategy: &str) {
    let broker = start_broker().await;
    let bootstrap = broker.kafka_bootstrap();
    create_topic(&broker, "moving", 6).await;
    let config = |name: &str| {
        let mut cfg = group_config(&bootstrap, "g-moving", name);
        cfg.set("partition.assignment.strategy", strategy);
        cfg
    };

    let first = Member::start(config("first"), "moving", "first");
    wait_until("the first member to own every partition", WAIT, || {
        first.assignment() == all_partitions(6)
    })
    .await;

    // The second member's session is long: only its LeaveGroup can free its partitions fast.
    let mut cfg = config("second");
    cfg.set("session.timeout.ms", "30000")
        .set("max.poll.interval.ms", "30000");
    let second = Member::start(cfg, "moving", "second");
    wait_until("the partitions to split between two members", WAIT, || {
        covers_exactly(&[&first, &second], 6)
            && first.assignment().len() == 3
            && second.assignment().len() == 3
    })
    .await;
    let split_at = first.seen().assigns;

    let closed = Instant::now();
    second.close().await;
    wait_until(
        "the first member to own every partition again",
        WAIT,
        || first.assignment() == all_partitions(6) && first.seen().assigns > split_at,
    )
    .await;
    assert!(
        closed.elapsed() < Duration::from_secs(10),
        "took {:?}: the leave was not noticed before the 30 s session timeout",
        closed.elapsed()
    );
    // The first member consumes what is now written to every partition.
    produce(&bootstrap, "moving", 6, 0..12).await;
    wait_until("the first member to get all 12 records", WAIT, || {
        first.seen().records.len() >= 12
    })
    .await;
    let partitions: BTreeSet<i32> = first.seen().records.iter().map(|r| r.0).collect();
    assert_eq!(partitions, all_partitions(6));
    assert!(first.seen().errors.is_empty(), "{:?}", first.seen().errors);

    first.close().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_move_when_a_member_joins_and_when_it_leaves() {
    join_then_leave("range").await;
}

/// KIP-429 incremental rebalancing runs over the classic protocol: two rebalances per change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_move_incrementally_with_cooperative_sticky() {
    join_then_leave("cooperative-sticky").await;
}

/// A consumer notices its topic grew (the leader rejoins) and the new partitions get assigned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_partitions_of_a_subscribed_topic_are_assigned() {
    let broker = start_broker().await;
    let bootstrap = broker.kafka_bootstrap();
    create_topic(&broker, "growing", 2).await;
    let config = |name: &str| {
        let mut cfg = group_config(&bootstrap, "g-growing", name);
        cfg.set("topic.metadata.refresh.interval.ms", "200");
        cfg
    };
    let a = Member::start(config("a"), "growing", "a");
    wait_until("a to own both partitions", WAIT, || {
        a.assignment() == all_partitions(2)
    })
    .await;
    let b = Member::start(config("b"), "growing", "b");
    wait_until("a and b to own one partition each", WAIT, || {
        covers_exactly(&[&a, &b], 2) && b.assignment().len() == 1
    })
    .await;

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let grown = admin
        .create_partitions(
            [&NewPartitions::new("growing", 6)],
            &AdminOptions::new().operation_timeout(Some(WAIT)),
        )
        .await
        .unwrap();
    assert!(grown[0].is_ok(), "{grown:?}");
    wait_until(
        "the six partitions to be split three and three",
        WAIT,
        || covers_exactly(&[&a, &b], 6) && a.assignment().len() == 3,
    )
    .await;
    produce(&bootstrap, "growing", 6, 0..30).await;
    wait_until("all 30 records", WAIT, || {
        a.seen().records.len() + b.seen().records.len() >= 30
    })
    .await;
    let mut payloads: Vec<String> = a
        .seen()
        .records
        .into_iter()
        .chain(b.seen().records)
        .map(|r| r.2)
        .collect();
    payloads.sort();
    payloads.dedup();
    assert_eq!(payloads.len(), 30);

    a.close().await;
    b.close().await;
    broker.stop().await;
}

/// Consumes exactly `count` records as the only member of `group`, commits synchronously and
/// closes. Returns what it consumed and what it committed ((partition) -> next offset).
fn consume_and_commit(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
    count: usize,
) -> (Vec<Record>, BTreeMap<i32, i64>) {
    let consumer: BaseConsumer = group_config(bootstrap, group, "committer")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    while got.len() < count {
        assert!(Instant::now() < deadline, "consumed only {}", got.len());
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => got.push((
                m.partition(),
                m.offset(),
                String::from_utf8_lossy(m.payload().unwrap()).into_owned(),
            )),
            Some(Err(e)) => panic!("consume error: {e}"),
        }
    }
    consumer.commit_consumer_state(CommitMode::Sync).unwrap();
    // Each partition's records arrive in order from the start, so the commit is one past the
    // last record consumed there.
    let mut expected: BTreeMap<i32, i64> = BTreeMap::new();
    for (p, offset, _) in &got {
        let next = expected.entry(*p).or_insert(0);
        assert_eq!(*next, *offset, "partition {p} delivered out of order");
        *next = offset + 1;
    }
    assert_eq!(committed(&consumer, topic, partitions), expected);
    drop(consumer);
    (got, expected)
}

/// The group's committed offsets as OffsetFetch reports them (partitions without one left out).
fn committed<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: i32,
) -> BTreeMap<i32, i64> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let fetched = consumer.committed_offsets(tpl, WAIT).unwrap();
    fetched
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            Offset::Invalid => None,
            other => panic!("partition {}: unexpected offset {other:?}", e.partition()),
        })
        .collect()
}

/// Reads as a new member of `group` until `count` records arrived, then 1 s longer to catch any
/// extra delivery; returns every record.
fn resume(bootstrap: &str, group: &str, topic: &str, count: usize) -> Vec<Record> {
    let consumer: BaseConsumer = group_config(bootstrap, group, "resumer").create().unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    let mut quiet_until: Option<Instant> = None;
    while quiet_until.is_none_or(|q| Instant::now() < q) {
        assert!(
            Instant::now() < deadline,
            "resumed only {} of {count}",
            got.len()
        );
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => got.push((
                m.partition(),
                m.offset(),
                String::from_utf8_lossy(m.payload().unwrap()).into_owned(),
            )),
            Some(Err(e)) => panic!("consume error: {e}"),
        }
        if got.len() >= count && quiet_until.is_none() {
            quiet_until = Some(Instant::now() + Duration::from_secs(1));
        }
    }
    got
}

/// The records a resumed member got are exactly those the first member did not consume.
fn assert_resumed_exactly_after_commit(
    first: &[Record],
    resumed: &[Record],
    committed: &BTreeMap<i32, i64>,
    total: usize,
) {
    let before: BTreeSet<&str> = first.iter().map(|r| r.2.as_str()).collect();
    let mut after: BTreeSet<&str> = BTreeSet::new();
    for (p, offset, payload) in resumed {
        assert!(
            !before.contains(payload.as_str()),
            "{payload} (partition {p} offset {offset}) was delivered again past the commit"
        );
        assert!(
            *offset >= committed.get(p).copied().unwrap_or(0),
            "partition {p} offset {offset} is before the commit"
        );
        assert!(after.insert(payload), "{payload} delivered twice");
    }
    assert_eq!(
        before.len() + after.len(),
        total,
        "records missing after resuming"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_resumes_exactly_after_the_commit() {
    let broker = start_broker().await;
    let bootstrap = broker.kafka_bootstrap();
    create_topic(&broker, "resume", 3).await;
    produce(&bootstrap, "resume", 3, 0..45).await;

    let b = bootstrap.clone();
    let (first, commit) =
        blocking(move || consume_and_commit(&b, "g-resume", "resume", 3, 17)).await;
    assert_eq!(commit.values().sum::<i64>(), 17);

    let b = bootstrap.clone();
    let resumed = blocking(move || resume(&b, "g-resume", "resume", 45 - 17)).await;
    assert_resumed_exactly_after_commit(&first, &resumed, &commit, 45);

    // A group that never committed has nothing to fetch.
    let b = bootstrap.clone();
    let none = blocking(move || {
        let c: BaseConsumer = group_config(&b, "g-never-committed", "x").create().unwrap();
        committed(&c, "resume", 3)
    })
    .await;
    assert!(none.is_empty(), "{none:?}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_member_is_expired_and_its_partitions_reassigned() {
    let broker = start_broker().await;
    let bootstrap = broker.kafka_bootstrap();
    create_topic(&broker, "silent", 6).await;

    let live = Member::start(
        group_config(&bootstrap, "g-silent", "live"),
        "silent",
        "live",
    );
    wait_until("the live member to own every partition", WAIT, || {
        live.assignment() == all_partitions(6)
    })
    .await;

    // A member that joins and syncs by hand, then never speaks again (and never leaves): its
    // connection stays open, so only its 1.5 s session timeout can remove it.
    let mut raw = RawKafka::connect(broker.kafka_addr()).await;
    let join = |member_id: &str| {
        JoinGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("g-silent")))
            .with_session_timeout_ms(1500)
            .with_rebalance_timeout_ms(10_000)
            .with_member_id(StrBytes::from_string(member_id.to_string()))
            .with_protocol_type(StrBytes::from_static_str("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(StrBytes::from_static_str("range"))
                .with_metadata(subscription_metadata("silent"))])
    };
    let first: JoinGroupResponse = raw.call(ApiKey::JoinGroup, 5, &join("")).await;
    assert_eq!(first.error_code, MEMBER_ID_REQUIRED);
    let member_id = first.member_id.to_string();
    // Parked until the live member rejoins the rebalance this join started.
    let joined: JoinGroupResponse = raw.call(ApiKey::JoinGroup, 5, &join(&member_id)).await;
    assert_eq!(joined.error_code, 0);
    assert_ne!(joined.leader.as_str(), member_id, "the live member leads");
    let sync = SyncGroupRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("g-silent")))
        .with_generation_id(joined.generation_id)
        .with_member_id(StrBytes::from_string(member_id.clone()));
    let synced: SyncGroupResponse = raw.call(ApiKey::SyncGroup, 3, &sync).await;
    let silent_since = Instant::now();
    assert_eq!(synced.error_code, 0);
    let mine = assigned_partitions(&synced.assignment, "silent");
    assert_eq!(
        mine.len(),
        3,
        "the leader gave the raw member half: {mine:?}"
    );
    wait_until("the live member to hold the other half", WAIT, || {
        live.assignment() == all_partitions(6).difference(&mine).copied().collect()
    })
    .await;

    wait_until(
        "the live member to own every partition after the expiry",
        Duration::from_millis(1500) + Duration::from_secs(10),
        || live.assignment() == all_partitions(6),
    )
    .await;
    assert!(
        silent_since.elapsed() >= Duration::from_millis(1000),
        "the silent member was dropped after {:?}, before its 1.5 s session ran out",
        silent_since.elapsed()
    );
    // The broker has forgotten it: a late heartbeat is refused.
    let heartbeat = HeartbeatRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("g-silent")))
        .with_generation_id(joined.generation_id)
        .with_member_id(StrBytes::from_string(member_id.clone()));
    let hb: HeartbeatResponse = raw.call(ApiKey::Heartbeat, 3, &heartbeat).await;
    assert_eq!(hb.error_code, UNKNOWN_MEMBER_ID);
    // And so is a late commit from it.
    let commit = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("g-silent")))
        .with_generation_id_or_member_epoch(joined.generation_id)
        .with_member_id(StrBytes::from_string(member_id))
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("silent")))
            .with_partitions(vec![OffsetCommitRequestPartition::default()
                .with_partition_index(*mine.first().unwrap())
                .with_committed_offset(1)])]);
    let committed: OffsetCommitResponse = raw.call(ApiKey::OffsetCommit, 8, &commit).await;
    assert_eq!(
        committed.topics[0].partitions[0].error_code,
        UNKNOWN_MEMBER_ID
    );
    assert!(live.seen().errors.is_empty(), "{:?}", live.seen().errors);

    live.close().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_a_broker_restart() {
    let dir = tempfile::tempdir().unwrap();
    let configure = |b: ferry::BrokerBuilder, dir: &std::path::Path| {
        b.data_dir(dir)
            .configure(|c| c.kafka.group_min_session_timeout_ms = 1000)
    };
    let broker = TestBroker::with(|b| configure(b, dir.path()))
        .await
        .unwrap();
    let bootstrap = broker.kafka_bootstrap();
    create_topic(&broker, "durable", 2).await;
    produce(&bootstrap, "durable", 2, 0..30).await;
    let b = bootstrap.clone();
    let (first, commit) =
        blocking(move || consume_and_commit(&b, "g-durable", "durable", 2, 11)).await;
    broker.stop().await;

    let broker = TestBroker::with(|b| configure(b, dir.path()))
        .await
        .unwrap();
    let bootstrap = broker.kafka_bootstrap();
    let b = bootstrap.clone();
    let after_restart = blocking(move || {
        let c: BaseConsumer = group_config(&b, "g-durable", "x").create().unwrap();
        committed(&c, "durable", 2)
    })
    .await;
    assert_eq!(after_restart, commit, "OffsetFetch after the restart");

    let b = bootstrap.clone();
    let resumed = blocking(move || resume(&b, "g-durable", "durable", 30 - 11)).await;
    assert_resumed_exactly_after_commit(&first, &resumed, &commit, 30);
    broker.stop().await;
}

/// A consumer that stays up while the broker restarts (same port, same data): the restarted
/// broker no longer knows the member, the client rejoins, and it carries on after its
/// auto-committed offsets without losing or repeating a record.
async fn ride_through_a_restart(instance_id: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::with(|b| {
        b.data_dir(dir.path())
            .configure(|c| c.kafka.group_min_session_timeout_ms = 1000)
    })
    .await
    .unwrap();
    let addr = broker.kafka_addr();
    let bootstrap = broker.kafka_bootstrap();
    create_topic(&broker, "restart", 2).await;
    produce(&bootstrap, "restart", 2, 0..10).await;

    let name = if instance_id.is_some() {
        "static-survivor"
    } else {
        "survivor"
    };
    let mut cfg = group_config(&bootstrap, "g-restart", name);
    if let Some(instance) = instance_id {
        cfg.set("group.instance.id", instance);
    }
    cfg.set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "100")
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "500");
    let member = Member::start(cfg, "restart", name);
    wait_until("the first 10 records", WAIT, || {
        member.seen().records.len() >= 10
    })
    .await;
    let groups = broker.core().groups().clone();
    wait_until("the auto-commit of all 10", WAIT, || {
        let committed = groups.fetch_offsets("g-restart", None).unwrap();
        committed.iter().map(|c| c.offset).sum::<i64>() == 10
    })
    .await;
    // (The coordinator handle shares the metadata store, which must close with the broker.)
    drop(groups);
    let assigns_before = member.seen().assigns;
    broker.stop().await;

    let broker = common::restart_on_same_port(|b| {
        b.data_dir(dir.path())
            .kafka_listen(addr.to_string())
            .configure(|c| c.kafka.group_min_session_timeout_ms = 1000)
    })
    .await
    .unwrap();
    produce(&bootstrap, "restart", 2, 10..20).await;
    wait_until("the 10 records produced after the restart", WAIT, || {
        member.seen().records.len() >= 20
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let seen = member.seen();
    let mut payloads: Vec<&str> = seen.records.iter().map(|r| r.2.as_str()).collect();
    payloads.sort_by_key(|p| p[1..].parse::<u32>().unwrap());
    let expected: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    assert_eq!(
        payloads, expected,
        "each record exactly once across the restart"
    );
    assert!(
        seen.assigns > assigns_before,
        "the member was not reassigned after the restart"
    );
    assert_eq!(seen.assignment, all_partitions(2));
    // Losing the connection is expected; anything else (a fatal error, say) is not.
    let unexpected: Vec<&String> = seen
        .errors
        .iter()
        .filter(|e| !e.contains("BrokerTransportFailure") && !e.contains("AllBrokersDown"))
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:?}");

    member.close().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_rejoins_after_a_broker_restart() {
    ride_through_a_restart(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_rejoins_after_a_broker_restart() {
    ride_through_a_restart(Some("survivor-instance")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_that_comes_back_keeps_its_partitions_without_a_rebalance() {
    let broker = start_broker().await;
    let bootstrap = broker.kafka_bootstrap();
    create_topic(&broker, "static", 6).await;
    let static_config = || {
        let mut cfg = group_config(&bootstrap, "g-static", "static-a");
        cfg.set("group.instance.id", "instance-a")
            .set("session.timeout.ms", "10000");
        cfg
    };

    // The static member joins first and leads.
    let a = Member::start(static_config(), "static", "static-a");
    wait_until("the static member to own every partition", WAIT, || {
        a.assignment() == all_partitions(6)
    })
    .await;
    let other = Member::start(
        group_config(&bootstrap, "g-static", "other"),
        "static",
        "other",
    );
    wait_until("the partitions to split", WAIT, || {
        covers_exactly(&[&a, &other], 6) && a.assignment().len() == 3
    })
    .await;
    let a_partitions = a.assignment();
    let other_partitions = other.assignment();
    let other_before = other.seen();

    // A static member sends no LeaveGroup when it closes (KIP-345): the group stays Stable
    // with both members.
    a.close().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = bootstrap.clone();
    let (state, members) = blocking(move || {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &b)
            .create()
            .unwrap();
        let list = admin
            .inner()
            .fetch_group_list(Some("g-static"), WAIT)
            .unwrap();
        let g = &list.groups()[0];
        (g.state().to_string(), g.members().len())
    })
    .await;
    assert_eq!(
        (state.as_str(), members),
        ("Stable", 2),
        "librdkafka sent LeaveGroup for a static member, or the broker dropped it"
    );

    let a2 = Member::start(static_config(), "static", "static-a");
    wait_until("the static member to get its partitions back", WAIT, || {
        a2.assignment() == a_partitions
    })
    .await;
    // Give a rebalance, had one been started, time to reach the other member.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let other_after = other.seen();
    assert_eq!(
        (other_after.assigns, other_after.revokes),
        (other_before.assigns, other_before.revokes),
        "the other member saw a rebalance"
    );
    assert_eq!(other.assignment(), other_partitions);
    assert_eq!(a2.seen().assigns, 1);
    assert!(a2.seen().errors.is_empty(), "{:?}", a2.seen().errors);
    assert!(other_after.errors.is_empty(), "{:?}", other_after.errors);

    // Both still consume their halves.
    produce(&bootstrap, "static", 6, 0..12).await;
    wait_until("both members to get their records", WAIT, || {
        a2.seen().records.len() + other.seen().records.len() >= 12
    })
    .await;
    for (member, owned) in [(&a2, &a_partitions), (&other, &other_partitions)] {
        assert!(member.seen().records.iter().all(|r| owned.contains(&r.0)));
    }

    a2.close().await;
    other.close().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_lists_describes_and_deletes_groups() {
    let broker = start_broker().await;
    let bootstrap = broker.kafka_bootstrap();
    create_topic(&broker, "admin", 4).await;
    produce(&bootstrap, "admin", 4, 0..8).await;

    // An Empty group that only holds committed offsets, and an active one.
    let b = bootstrap.clone();
    blocking(move || consume_and_commit(&b, "g-admin-empty", "admin", 4, 3)).await;
    let active = Member::start(
        group_config(&bootstrap, "g-admin-active", "active-client"),
        "admin",
        "active",
    );
    wait_until("the active member to own every partition", WAIT, || {
        active.assignment() == all_partitions(4)
    })
    .await;

    let b = bootstrap.clone();
    blocking(move || {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &b)
            .create()
            .unwrap();
        // ListGroups, then DescribeGroups for each (librdkafka's rd_kafka_list_groups).
        let list = admin.inner().fetch_group_list(None, WAIT).unwrap();
        let by_name: HashMap<&str, _> = list.groups().iter().map(|g| (g.name(), g)).collect();
        assert_eq!(by_name.len(), 2, "{:?}", by_name.keys());
        let active = by_name["g-admin-active"];
        assert_eq!(active.state(), "Stable");
        assert_eq!(active.protocol_type(), "consumer");
        assert_eq!(active.protocol(), "range");
        assert_eq!(active.members().len(), 1);
        let member = &active.members()[0];
        assert_eq!(member.client_id(), "active-client");
        assert!(member.client_host().contains("127.0.0.1"));
        let assignment = member.assignment().expect("an assignment");
        assert_eq!(assigned_partitions(assignment, "admin"), all_partitions(4));
        let empty = by_name["g-admin-empty"];
        assert_eq!(empty.state(), "Empty");
        assert!(empty.members().is_empty());
        // librdkafka lists before it describes: an unknown group is simply not there.
        let unknown = admin
            .inner()
            .fetch_group_list(Some("g-unknown"), WAIT)
            .unwrap();
        assert!(unknown.groups().is_empty());

        let opts = AdminOptions::new().operation_timeout(Some(WAIT));
        let rt = tokio::runtime::Handle::current();
        let deleted = rt
            .block_on(admin.delete_groups(&["g-admin-empty", "g-admin-active", "g-unknown"], &opts))
            .unwrap();
        assert_eq!(deleted[0], Ok("g-admin-empty".to_string()));
        assert_eq!(
            deleted[1],
            Err((
                "g-admin-active".to_string(),
                RDKafkaErrorCode::NonEmptyGroup
            ))
        );
        assert_eq!(
            deleted[2],
            Err(("g-unknown".to_string(), RDKafkaErrorCode::GroupIdNotFound))
        );
        let names: Vec<String> = admin
            .inner()
            .fetch_group_list(None, WAIT)
            .unwrap()
            .groups()
            .iter()
            .map(|g| g.name().to_string())
            .collect();
        assert_eq!(names, vec!["g-admin-active".to_string()]);
        // The deleted group's offsets went with it.
        let c: BaseConsumer = group_config(&b, "g-admin-empty", "x").create().unwrap();
        assert!(committed(&c, "admin", 4).is_empty());
    })
    .await;

    // ListGroups v4 filters by state; DescribeGroups v5 reports the assignment.
    let mut raw = RawKafka::connect(broker.kafka_addr()).await;
    let stable: ListGroupsResponse = raw
        .call(
            ApiKey::ListGroups,
            4,
            &ListGroupsRequest::default()
                .with_states_filter(vec![StrBytes::from_static_str("stable")]),
        )
        .await;
    let listed: Vec<(&str, &str)> = stable
        .groups
        .iter()
        .map(|g| (g.group_id.as_str(), g.group_state.as_str()))
        .collect();
    assert_eq!(listed, vec![("g-admin-active", "Stable")]);
    let empty: ListGroupsResponse = raw
        .call(
            ApiKey::ListGroups,
            4,
            &ListGroupsRequest::default()
                .with_states_filter(vec![StrBytes::from_static_str("Empty")]),
        )
        .await;
    assert!(empty.groups.is_empty(), "{:?}", empty.groups);
    let described: DescribeGroupsResponse = raw
        .call(
            ApiKey::DescribeGroups,
            5,
            &DescribeGroupsRequest::default()
                .with_groups(vec![GroupId(StrBytes::from_static_str("g-admin-active"))]),
        )
        .await;
    let group = &described.groups[0];
    assert_eq!(group.error_code, 0);
    assert_eq!(group.group_state.as_str(), "Stable");
    assert_eq!(group.protocol_data.as_str(), "range");
    assert_eq!(group.members.len(), 1);
    assert_eq!(
        assigned_partitions(&group.members[0].member_assignment, "admin"),
        all_partitions(4)
    );
    // Before v6 an unknown group is described as Dead with no members, not as an error.
    let described: DescribeGroupsResponse = raw
        .call(
            ApiKey::DescribeGroups,
            5,
            &DescribeGroupsRequest::default()
                .with_groups(vec![GroupId(StrBytes::from_static_str("g-unknown"))]),
        )
        .await;
    let group = &described.groups[0];
    assert_eq!((group.error_code, group.group_state.as_str()), (0, "Dead"));
    assert!(group.members.is_empty());

    // Once its only member leaves, the active group is Empty and can be deleted too.
    active.close().await;
    let b = bootstrap.clone();
    blocking(move || {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &b)
            .create()
            .unwrap();
        let opts = AdminOptions::new().operation_timeout(Some(WAIT));
        let deleted = tokio::runtime::Handle::current()
            .block_on(admin.delete_groups(&["g-admin-active"], &opts))
            .unwrap();
        assert_eq!(deleted[0], Ok("g-admin-active".to_string()));
        assert!(admin
            .inner()
            .fetch_group_list(None, WAIT)
            .unwrap()
            .groups()
            .is_empty());
    })
    .await;
    broker.stop().await;
}

/// Commits `offset` for `group` on partition 0 of `topic` as a simple (memberless) commit.
async fn raw_commit(raw: &mut RawKafka, group: &str, topic: &str, offset: i64) {
    let commit = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![OffsetCommitRequestPartition::default()
                .with_partition_index(0)
                .with_committed_offset(offset)])]);
    let answer: OffsetCommitResponse = raw.call(ApiKey::OffsetCommit, 5, &commit).await;
    assert_eq!(answer.topics[0].partitions[0].error_code, 0, "{group:?}");
}

/// The committed offset of `group` on partition 0 of `topic` (-1: none).
async fn raw_fetch(raw: &mut RawKafka, group: &str, topic: &str) -> i64 {
    let fetch = OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_topics(Some(vec![OffsetFetchRequestTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_indexes(vec![0])]));
    let answer: OffsetFetchResponse = raw.call(ApiKey::OffsetFetch, 5, &fetch).await;
    assert_eq!(answer.error_code, 0, "{group:?}");
    answer.topics[0].partitions[0].committed_offset
}

/// Issue 12, bug 3: group ids are any string, NUL included. Under the old key schema group
/// `victim\0x` read back as part of group `victim` after a restart (its offset overwrote
/// victim's), and group `"\0"` came back as `""`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_whose_ids_hold_nul_keep_their_own_offsets_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::with(|b| b.data_dir(dir.path())).await.unwrap();
    create_topic(&broker, "nul-groups", 1).await;
    let mut raw = RawKafka::connect(broker.kafka_addr()).await;
    raw_commit(&mut raw, "victim", "nul-groups", 5).await;
    raw_commit(&mut raw, "victim\0x", "nul-groups", 99).await;
    raw_commit(&mut raw, "\0", "nul-groups", 7).await;
    drop(raw);
    broker.stop().await;

    let broker = TestBroker::with(|b| b.data_dir(dir.path())).await.unwrap();
    let mut raw = RawKafka::connect(broker.kafka_addr()).await;
    assert_eq!(raw_fetch(&mut raw, "victim", "nul-groups").await, 5);
    assert_eq!(raw_fetch(&mut raw, "victim\0x", "nul-groups").await, 99);
    assert_eq!(raw_fetch(&mut raw, "\0", "nul-groups").await, 7);
    assert_eq!(raw_fetch(&mut raw, "", "nul-groups").await, -1);
    let listed: ListGroupsResponse = raw
        .call(ApiKey::ListGroups, 4, &ListGroupsRequest::default())
        .await;
    let mut ids: Vec<&str> = listed.groups.iter().map(|g| g.group_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, vec!["\0", "victim", "victim\0x"]);
    drop(raw);
    broker.stop().await;
}
