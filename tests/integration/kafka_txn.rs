//! Kafka transactions (issue 17) through librdkafka: a transactional producer's committed
//! records reach `read_committed` consumers and aborted ones never do (while
//! `read_uncommitted` sees both), a second producer with the same `transactional.id` fences
//! the first and aborts what it left open, offsets sent with a transaction count only if it
//! commits, an abandoned transaction is aborted at its timeout, an AMQP queue bound to the
//! topic gets only committed records, and a kill -9 in the middle of a transaction exposes
//! none of it.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use ferry::testing::TestBroker;

use crate::common;
use common::serve::ServeChild;

const TIMEOUT: Duration = Duration::from_secs(20);

async fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin");
    let made = admin
        .create_topics(
            [&NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create topics");
    assert!(made[0].is_ok(), "{made:?}");
}

fn txn_producer(bootstrap: &str, transactional_id: &str, timeout_ms: u32) -> BaseProducer {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", transactional_id)
        .set("transaction.timeout.ms", timeout_ms.to_string())
        .set("linger.ms", "0")
        .create()
        .expect("transactional producer");
    p.init_transactions(TIMEOUT).expect("init_transactions");
    p
}

fn plain_producer(bootstrap: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "0")
        .create()
        .expect("producer")
}

/// Sends `values` to `topic`/`partition` and waits until every one is acknowledged.
fn send_all(p: &BaseProducer, topic: &str, partition: i32, values: &[&str]) {
    for v in values {
        p.send(
            BaseRecord::<str, str>::to(topic)
                .partition(partition)
                .key(v)
                .payload(v),
        )
        .map_err(|(e, _)| e)
        .expect("enqueue");
    }
    p.flush(TIMEOUT).expect("every record acknowledged");
}

fn consumer(bootstrap: &str, group: &str, isolation: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer")
}

/// Values of `topic`/`partition` from offset 0 as a consumer with `isolation` sees them, up to
/// and including the first one equal to `until` (records are delivered in offset order, so
/// anything a reader should not see but did, it saw before that).
fn read_until(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    isolation: &str,
    until: &str,
) -> Vec<String> {
    let c = consumer(bootstrap, "txn-reader", isolation);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let mut out = Vec::new();
    while out.last().is_none_or(|v| v != until) {
        assert!(Instant::now() < deadline, "read so far: {out:?}");
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                out.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
            }
            Some(Err(e)) => panic!("consume: {e}"),
            None => {}
        }
    }
    out
}

/// (read_committed end, read_uncommitted end) of a partition, as ListOffsets answers them.
fn ends(bootstrap: &str, topic: &str, partition: i32) -> (i64, i64) {
    let committed = consumer(bootstrap, "txn-ends", "read_committed")
        .fetch_watermarks(topic, partition, TIMEOUT)
        .expect("watermarks")
        .1;
    let uncommitted = consumer(bootstrap, "txn-ends", "read_uncommitted")
        .fetch_watermarks(topic, partition, TIMEOUT)
        .expect("watermarks")
        .1;
    (committed, uncommitted)
}

fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    tokio::task::spawn_blocking(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_records_are_visible_and_aborted_ones_only_to_read_uncommitted() {
    let broker = TestBroker::start().await.expect("broker");
    let bootstrap = broker.kafka_bootstrap();
    create_topic(&bootstrap, "txn", 2).await;
    blocking(move || {
        let p = txn_producer(&bootstrap, "txn-basic", 60_000);
        p.begin_transaction().unwrap();
        send_all(&p, "txn", 0, &["c1", "c2"]);
        send_all(&p, "txn", 1, &["c3"]);
        p.commit_transaction(TIMEOUT).unwrap();

        p.begin_transaction().unwrap();
        send_all(&p, "txn", 0, &["a1", "a2", "a3"]);
        send_all(&p, "txn", 1, &["a4"]);
        // While the transaction is open, read_committed ends at its first record.
        let (committed, uncommitted) = ends(&bootstrap, "txn", 0);
        assert_eq!(
            (committed, uncommitted),
            (3, 6),
            "last stable offset before the abort"
        );
        p.abort_transaction(TIMEOUT).unwrap();

        p.begin_transaction().unwrap();
        send_all(&p, "txn", 0, &["c4"]);
        send_all(&p, "txn", 1, &["c5"]);
        p.commit_transaction(TIMEOUT).unwrap();
        // Every transaction is complete: both isolation levels end at the same place.
        let (committed, uncommitted) = ends(&bootstrap, "txn", 0);
        assert_eq!(committed, uncommitted);

        assert_eq!(
            read_until(&bootstrap, "txn", 0, "read_committed", "c4"),
            ["c1", "c2", "c4"]
        );
        assert_eq!(
            read_until(&bootstrap, "txn", 1, "read_committed", "c5"),
            ["c3", "c5"]
        );
        assert_eq!(
            read_until(&bootstrap, "txn", 0, "read_uncommitted", "c4"),
            ["c1", "c2", "a1", "a2", "a3", "c4"]
        );
        assert_eq!(
            read_until(&bootstrap, "txn", 1, "read_uncommitted", "c5"),
            ["c3", "a4", "c5"]
        );
    })
    .await
    .unwrap();
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_producer_with_the_same_id_fences_the_first_and_aborts_its_transaction() {
    let broker = TestBroker::start().await.expect("broker");
    let bootstrap = broker.kafka_bootstrap();
    create_topic(&bootstrap, "fence", 1).await;
    blocking(move || {
        let zombie = txn_producer(&bootstrap, "txn-fence", 60_000);
        zombie.begin_transaction().unwrap();
        send_all(&zombie, "fence", 0, &["zombie"]);

        // The successor's registration aborts what the zombie left open.
        let successor = txn_producer(&bootstrap, "txn-fence", 60_000);
        let (committed, uncommitted) = ends(&bootstrap, "fence", 0);
        assert_eq!(
            committed, uncommitted,
            "the zombie's transaction was aborted"
        );

        let refused = zombie.commit_transaction(TIMEOUT);
        match refused {
            Err(KafkaError::Transaction(e)) => {
                assert!(e.is_fatal(), "a fenced producer's error is fatal: {e}")
            }
            other => panic!("the fenced producer committed: {other:?}"),
        }

        successor.begin_transaction().unwrap();
        send_all(&successor, "fence", 0, &["successor"]);
        successor.commit_transaction(TIMEOUT).unwrap();
        assert_eq!(
            read_until(&bootstrap, "fence", 0, "read_committed", "successor"),
            ["successor"]
        );
    })
    .await
    .unwrap();
    broker.stop().await;
}

/// Consume-transform-produce: offsets sent with an aborted transaction are not committed;
/// with a committed one they are, together with the output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_sent_with_a_transaction_count_only_when_it_commits() {
    let broker = TestBroker::start().await.expect("broker");
    let bootstrap = broker.kafka_bootstrap();
    create_topic(&bootstrap, "ctp-in", 1).await;
    create_topic(&bootstrap, "ctp-out", 1).await;
    blocking(move || {
        send_all(
            &plain_producer(&bootstrap),
            "ctp-in",
            0,
            &["x0", "x1", "x2", "x3"],
        );
        let input = consumer(&bootstrap, "ctp", "read_committed");
        input.subscribe(&["ctp-in"]).unwrap();
        let mut seen = Vec::new();
        let deadline = Instant::now() + TIMEOUT;
        while seen.len() < 4 {
            assert!(Instant::now() < deadline, "consumed {seen:?}");
            if let Some(m) = input.poll(Duration::from_millis(100)) {
                let m = m.expect("consume");
                seen.push(String::from_utf8_lossy(m.payload().unwrap()).into_owned());
            }
        }
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset("ctp-in", 0, Offset::Offset(4))
            .unwrap();
        let metadata = input.group_metadata().expect("group metadata");
        let p = txn_producer(&bootstrap, "txn-ctp", 60_000);

        p.begin_transaction().unwrap();
        send_all(&p, "ctp-out", 0, &["ABORTED"]);
        p.send_offsets_to_transaction(&offsets, &metadata, TIMEOUT)
            .unwrap();
        p.abort_transaction(TIMEOUT).unwrap();
        let committed = input.committed(TIMEOUT).expect("committed offsets");
        assert_eq!(
            committed.find_partition("ctp-in", 0).map(|e| e.offset()),
            Some(Offset::Invalid),
            "an aborted transaction's offsets are not committed"
        );

        p.begin_transaction().unwrap();
        let upper: Vec<String> = seen.iter().map(|v| v.to_uppercase()).collect();
        let upper: Vec<&str> = upper.iter().map(String::as_str).collect();
        send_all(&p, "ctp-out", 0, &upper);
        p.send_offsets_to_transaction(&offsets, &metadata, TIMEOUT)
            .unwrap();
        p.commit_transaction(TIMEOUT).unwrap();
        let committed = input.committed(TIMEOUT).expect("committed offsets");
        assert_eq!(
            committed.find_partition("ctp-in", 0).map(|e| e.offset()),
            Some(Offset::Offset(4))
        );
        assert_eq!(
            read_until(&bootstrap, "ctp-out", 0, "read_committed", "X3"),
            ["X0", "X1", "X2", "X3"]
        );
    })
    .await
    .unwrap();
    broker.stop().await;
}

/// `transaction.timeout.ms`: a transaction its producer abandons is aborted by the broker, so
/// read_committed readers are not held up forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_transaction_is_aborted_at_its_timeout() {
    let broker = TestBroker::start().await.expect("broker");
    let bootstrap = broker.kafka_bootstrap();
    create_topic(&bootstrap, "stale", 1).await;
    blocking(move || {
        let p = txn_producer(&bootstrap, "txn-stale", 1_000);
        p.begin_transaction().unwrap();
        send_all(&p, "stale", 0, &["abandoned"]);
        assert_eq!(ends(&bootstrap, "stale", 0), (0, 1));
        let deadline = Instant::now() + TIMEOUT;
        while ends(&bootstrap, "stale", 0).0 == 0 {
            assert!(
                Instant::now() < deadline,
                "the transaction was never aborted"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        send_all(&plain_producer(&bootstrap), "stale", 0, &["after"]);
        assert_eq!(
            read_until(&bootstrap, "stale", 0, "read_committed", "after"),
            ["after"]
        );
        assert_eq!(
            read_until(&bootstrap, "stale", 0, "read_uncommitted", "after"),
            ["abandoned", "after"]
        );
    })
    .await
    .unwrap();
    broker.stop().await;
}

/// A queue bound to the topic (the topic is also an exchange) receives a transaction's
/// records when it commits and never those of an aborted one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_bound_to_the_topic_gets_only_committed_records() {
    let broker = TestBroker::start().await.expect("broker");
    let bootstrap = broker.kafka_bootstrap();
    create_topic(&bootstrap, "txn-amqp", 1).await;
    let conn = common::amqp::connect(&broker).await;
    let ch = common::amqp::channel(&conn).await;
    common::amqp::declare(&ch, "txn-worker").await;
    common::amqp::bind(&ch, "txn-worker", "txn-amqp", "#").await;
    blocking(move || {
        let p = txn_producer(&bootstrap, "txn-amqp", 60_000);
        p.begin_transaction().unwrap();
        send_all(&p, "txn-amqp", 0, &["aborted"]);
        p.abort_transaction(TIMEOUT).unwrap();
        p.begin_transaction().unwrap();
        send_all(&p, "txn-amqp", 0, &["committed"]);
        p.commit_transaction(TIMEOUT).unwrap();
    })
    .await
    .unwrap();
    // Routing keeps log order, so an aborted record that got through would come first.
    let deadline = Instant::now() + TIMEOUT;
    let first = loop {
        if let Some(m) = common::amqp::get(&ch, "txn-worker", true).await {
            break m;
        }
        assert!(Instant::now() < deadline, "nothing routed to the queue");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(first.delivery.data, b"committed");
    broker.stop().await;
}

/// With ACLs on, a transactional producer needs WRITE (and, to find its coordinator,
/// DESCRIBE) on its transactional id besides WRITE on the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transactional_id_acl_is_enforced() {
    use ferry::broker::acls::{operation, resource};
    use ferry::meta::AclRecord;

    let broker = TestBroker::with(|b| {
        b.configure(|c| {
            c.kafka.allow_anonymous = ferry::config::AnonymousAccess::Never;
            c.kafka.acl_enabled = true;
            c.kafka.super_users = vec!["User:admin".into()];
            c.users = ["admin", "alice"]
                .into_iter()
                .map(|name| ferry::config::UserSettings {
                    name: name.into(),
                    password: format!("{name}-secret"),
                    password_hash: String::new(),
                    tags: vec![],
                })
                .collect();
        })
    })
    .await
    .expect("broker");
    let allow = |resource_type: i8, name: &str, op: i8| AclRecord {
        resource_type,
        resource_name: name.into(),
        pattern_type: 3,
        principal: "User:alice".into(),
        host: "*".into(),
        operation: op,
        permission: 3,
    };
    let acls = broker.core().acls();
    acls.create(&[
        allow(resource::TOPIC, "acl-txn", operation::WRITE),
        allow(resource::TOPIC, "acl-txn", operation::DESCRIBE),
    ])
    .unwrap();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.kafka_bootstrap())
        .set("security.protocol", "SASL_PLAINTEXT")
        .set("sasl.mechanisms", "PLAIN")
        .set("sasl.username", "admin")
        .set("sasl.password", "admin-secret")
        .create()
        .expect("admin");
    let made = admin
        .create_topics(
            [&NewTopic::new("acl-txn", 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create topics");
    assert!(made[0].is_ok(), "{made:?}");
    let bootstrap = broker.kafka_bootstrap();
    let config = move || {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &bootstrap)
            .set("security.protocol", "SASL_PLAINTEXT")
            .set("sasl.mechanisms", "PLAIN")
            .set("sasl.username", "alice")
            .set("sasl.password", "alice-secret")
            .set("transactional.id", "tx-alice");
        c
    };
    let denied_config = config.clone();
    blocking(move || {
        let p: BaseProducer = denied_config().create().unwrap();
        match p.init_transactions(TIMEOUT) {
            Err(KafkaError::Transaction(e)) => assert_eq!(
                e.code(),
                rdkafka::types::RDKafkaErrorCode::TransactionalIdAuthorizationFailed,
                "{e}"
            ),
            other => panic!("registered without the transactional id ACL: {other:?}"),
        }
    })
    .await
    .unwrap();
    acls.create(&[
        allow(resource::TRANSACTIONAL_ID, "tx-alice", operation::WRITE),
        allow(resource::TRANSACTIONAL_ID, "tx-alice", operation::DESCRIBE),
    ])
    .unwrap();
    blocking(move || {
        let p: BaseProducer = config().create().unwrap();
        p.init_transactions(TIMEOUT).expect("allowed now");
        p.begin_transaction().unwrap();
        send_all(&p, "acl-txn", 0, &["granted"]);
        p.commit_transaction(TIMEOUT).unwrap();
    })
    .await
    .unwrap();
    broker.stop().await;
}

/// kill -9 with a transaction open: after the restart its records stay invisible to
/// read_committed readers (the successor's registration aborts it), the transaction
/// committed before the kill is intact, and the id works on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_mid_transaction_exposes_none_of_it_and_keeps_what_was_committed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let child = ServeChild::start(&data, None);
    create_topic(&child.kafka, "crash", 1).await;
    let bootstrap = child.kafka.clone();
    blocking(move || {
        let p = txn_producer(&bootstrap, "txn-crash", 60_000);
        p.begin_transaction().unwrap();
        send_all(&p, "crash", 0, &["before"]);
        p.commit_transaction(TIMEOUT).unwrap();
        p.begin_transaction().unwrap();
        send_all(&p, "crash", 0, &["open-at-kill"]);
        // The producer is leaked, not closed: a closing transactional producer would abort.
        std::mem::forget(p);
    })
    .await
    .unwrap();
    drop(child);

    let child = ServeChild::start(&data, None);
    let bootstrap = child.kafka.clone();
    blocking(move || {
        // Still open after the restart: read_committed stops before it.
        assert_eq!(ends(&bootstrap, "crash", 0), (2, 3));
        let p = txn_producer(&bootstrap, "txn-crash", 60_000);
        p.begin_transaction().unwrap();
        send_all(&p, "crash", 0, &["after"]);
        p.commit_transaction(TIMEOUT).unwrap();
        assert_eq!(
            read_until(&bootstrap, "crash", 0, "read_committed", "after"),
            ["before", "after"]
        );
        assert_eq!(
            read_until(&bootstrap, "crash", 0, "read_uncommitted", "after"),
            ["before", "open-at-kill", "after"]
        );
    })
    .await
    .unwrap();
    drop(child);
}

/// Input records of the crash loop.
const LOOP_INPUTS: usize = 60;

/// One consume-transform-produce run against `bootstrap`: reads `loop-in` from the group's
/// committed offset (read_committed, so OffsetFetch asks for stable offsets), and for every
/// batch of up to 4 records writes `out-<n>` to `loop-out` and commits the input offsets in
/// the same transaction. Stops after `budget` records or when the input has been idle for
/// 3 s. With `leave_open`, it then opens one more transaction (outputs and offsets sent, not
/// committed) and leaks the clients, so the broker can be killed under it. Returns how many
/// records it committed.
fn transform_run(bootstrap: &str, budget: usize, leave_open: bool) -> usize {
    let p = txn_producer(bootstrap, "txn-loop", 60_000);
    let c = consumer(bootstrap, "loop", "read_committed");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset("loop-in", 0, Offset::Stored)
        .unwrap();
    c.assign(&assignment).unwrap();
    let metadata = c.group_metadata().expect("group metadata");
    let next_batch = |limit: usize| -> Vec<(i64, String)> {
        let mut batch = Vec::new();
        let idle_until = Instant::now() + Duration::from_secs(3);
        while batch.len() < limit && Instant::now() < idle_until {
            match c.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => batch.push((
                    m.offset(),
                    String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                )),
                Some(Err(e)) => panic!("consume: {e}"),
                None if !batch.is_empty() => break,
                None => {}
            }
        }
        batch
    };
    let transact = |batch: &[(i64, String)]| {
        p.begin_transaction().unwrap();
        let outputs: Vec<String> = batch
            .iter()
            .map(|(_, v)| v.replace("in-", "out-"))
            .collect();
        let outputs: Vec<&str> = outputs.iter().map(String::as_str).collect();
        send_all(&p, "loop-out", 0, &outputs);
        let mut offsets = TopicPartitionList::new();
        let next = batch.last().map_or(0, |(o, _)| o + 1);
        offsets
            .add_partition_offset("loop-in", 0, Offset::Offset(next))
            .unwrap();
        p.send_offsets_to_transaction(&offsets, &metadata, TIMEOUT)
            .unwrap();
    };
    let mut done = 0;
    while done < budget {
        let batch = next_batch(4.min(budget - done));
        if batch.is_empty() {
            break;
        }
        transact(&batch);
        p.commit_transaction(TIMEOUT).unwrap();
        done += batch.len();
    }
    if leave_open {
        let batch = next_batch(4);
        if !batch.is_empty() {
            transact(&batch);
        }
        // Leaked, not closed: closing would abort the transaction or commit nothing cleanly.
        std::mem::forget(p);
        std::mem::forget(c);
    }
    done
}

/// kill -9 in a loop under a consume-transform-produce service (`FERRY_TXN_CRASH_CYCLES`
/// cycles, default 3, at most 59): odd cycles kill with a transaction open (outputs written, offsets sent,
/// no commit), even ones right after a commit. After the last restart the service finishes
/// the input, and a read_committed reader of the output sees every input transformed exactly
/// once, in order: nothing of an interrupted transaction, nothing committed lost, and no input
/// processed twice (its offset moved in the same transaction as its output).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_transform_produce_is_exactly_once_through_kill_9_loops() {
    let cycles: usize = std::env::var("FERRY_TXN_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let child = ServeChild::start(&data, None);
    create_topic(&child.kafka, "loop-in", 1).await;
    create_topic(&child.kafka, "loop-out", 1).await;
    let bootstrap = child.kafka.clone();
    blocking(move || {
        let inputs: Vec<String> = (0..LOOP_INPUTS).map(|i| format!("in-{i:03}")).collect();
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        send_all(&plain_producer(&bootstrap), "loop-in", 0, &inputs);
    })
    .await
    .unwrap();
    drop(child);

    // Each interrupted run commits at most this much, so the last run has work left.
    let budget = (LOOP_INPUTS / (cycles + 1)).max(1);
    let mut committed = 0;
    for cycle in 1..=cycles {
        let child = ServeChild::start(&data, None);
        let bootstrap = child.kafka.clone();
        let leave_open = cycle % 2 == 1;
        committed += blocking(move || transform_run(&bootstrap, budget, leave_open))
            .await
            .unwrap();
        // SIGKILL: mid-transaction on odd cycles, just after a commit on even ones.
        child.kill();
    }
    assert!(
        committed < LOOP_INPUTS,
        "the loop must leave work for the end"
    );

    let child = ServeChild::start(&data, None);
    let bootstrap = child.kafka.clone();
    blocking(move || {
        let rest = transform_run(&bootstrap, usize::MAX, false);
        assert_eq!(committed + rest, LOOP_INPUTS, "every input committed once");
        let last = format!("out-{:03}", LOOP_INPUTS - 1);
        let expected: Vec<String> = (0..LOOP_INPUTS).map(|i| format!("out-{i:03}")).collect();
        assert_eq!(
            read_until(&bootstrap, "loop-out", 0, "read_committed", &last),
            expected
        );
    })
    .await
    .unwrap();
    drop(child);
}

/// KIP-447's zombie check on the consumer side: offsets sent with group metadata taken before
/// a rebalance (a generation the group has left behind) are refused with ILLEGAL_GENERATION,
/// so a consumer that lost its partitions cannot commit them through a transaction; the
/// transaction must abort. Fresh metadata from the same consumer works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_with_a_stale_generation_are_refused() {
    let broker = TestBroker::start().await.expect("broker");
    let bootstrap = broker.kafka_bootstrap();
    create_topic(&bootstrap, "gen-in", 2).await;
    blocking(move || {
        let subscribed = |c: &BaseConsumer| c.assignment().map(|a| a.count()).unwrap_or(0);
        let a = consumer(&bootstrap, "gen-group", "read_committed");
        a.subscribe(&["gen-in"]).unwrap();
        let deadline = Instant::now() + TIMEOUT;
        while subscribed(&a) < 2 {
            assert!(
                Instant::now() < deadline,
                "the first member never got both partitions"
            );
            let _ = a.poll(Duration::from_millis(100));
        }
        let stale = a.group_metadata().expect("group metadata");

        // A second member joins: a new generation, one partition each.
        let b = consumer(&bootstrap, "gen-group", "read_committed");
        b.subscribe(&["gen-in"]).unwrap();
        let deadline = Instant::now() + TIMEOUT;
        while subscribed(&a) != 1 || subscribed(&b) != 1 {
            assert!(Instant::now() < deadline, "the rebalance never finished");
            let _ = a.poll(Duration::from_millis(50));
            let _ = b.poll(Duration::from_millis(50));
        }

        let p = txn_producer(&bootstrap, "txn-gen", 60_000);
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset("gen-in", 0, Offset::Offset(0))
            .unwrap();
        p.begin_transaction().unwrap();
        match p.send_offsets_to_transaction(&offsets, &stale, TIMEOUT) {
            Err(KafkaError::Transaction(e)) => {
                assert_eq!(
                    e.code(),
                    rdkafka::types::RDKafkaErrorCode::IllegalGeneration,
                    "{e}"
                );
                assert!(e.txn_requires_abort(), "{e}");
            }
            other => panic!("offsets of a stale generation were accepted: {other:?}"),
        }
        p.abort_transaction(TIMEOUT).unwrap();

        let fresh = a.group_metadata().expect("group metadata");
        p.begin_transaction().unwrap();
        p.send_offsets_to_transaction(&offsets, &fresh, TIMEOUT)
            .expect("the current generation's metadata is accepted");
        p.commit_transaction(TIMEOUT).unwrap();
    })
    .await
    .unwrap();
    broker.stop().await;
}
