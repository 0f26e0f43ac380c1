//! KIP-848 consumer groups end to end through librdkafka 2.12 with `group.protocol=consumer`
//! (ConsumerGroupHeartbeat v1, OffsetCommit/OffsetFetch v9): three consumers join and leave one
//! by one while records keep arriving; after each step every partition is owned by exactly one
//! consumer (as the consumers themselves see it and as ConsumerGroupDescribe's core view says),
//! and across all the rebalances no record is lost or processed twice.
//!
//! "Processed" means consumed and then committed synchronously: a record whose commit fails
//! (its partition moved on) is not counted, and must come again to its next owner from the
//! committed offset. Two owners of one partition at once would both commit it; a partition
//! nobody gets would leave records unprocessed.
//!
//! librdkafka calls block, so the whole scenario runs on one blocking thread that polls the
//! consumers in turn; the broker keeps both runtime workers.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use ferry::broker::GroupState;
use ferry::testing::TestBroker;

const TOPIC: &str = "kip848";
const GROUP: &str = "kip848-group";
const PARTITIONS: i32 = 6;
/// Upper bound for the group to settle after a step.
const SETTLE: Duration = Duration::from_secs(30);

fn consumer(bootstrap: &str, name: &str) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", GROUP)
        .set("group.protocol", "consumer")
        .set("client.id", name)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    c.subscribe(&[TOPIC]).expect("subscribe");
    c
}

fn produce(bootstrap: &str, range: std::ops::Range<usize>) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "1")
        .create()
        .expect("producer");
    for i in range {
        let payload = format!("r{i}");
        let partition = (i % PARTITIONS as usize) as i32;
        loop {
            let record = BaseRecord::<(), _>::to(TOPIC)
                .payload(&payload)
                .partition(partition);
            match producer.send(record) {
                Ok(()) => break,
                Err(_) => {
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(15)).expect("flush");
}

/// What the consumers processed: payload -> how many times it was consumed and committed.
#[derive(Default)]
struct Ledger {
    processed: BTreeMap<String, usize>,
}

impl Ledger {
    /// One poll round over every consumer: each record is committed synchronously and counted
    /// only if the commit succeeded.
    fn pump(&mut self, consumers: &[(&str, &BaseConsumer)]) {
        for (_, c) in consumers {
            for _ in 0..20 {
                let Some(polled) = c.poll(Duration::from_millis(5)) else {
                    break;
                };
                let Ok(msg) = polled else { continue };
                let payload =
                    String::from_utf8_lossy(msg.payload().unwrap_or_default()).into_owned();
                if c.commit_message(&msg, CommitMode::Sync).is_ok() {
                    *self.processed.entry(payload).or_default() += 1;
                }
            }
        }
    }
}

/// The partitions each consumer owns, if together they own every partition exactly once.
fn exact_ownership(consumers: &[(&str, &BaseConsumer)]) -> Option<BTreeMap<String, BTreeSet<i32>>> {
    let mut seen = BTreeSet::new();
    let mut owned = BTreeMap::new();
    for (name, c) in consumers {
        let mine: BTreeSet<i32> = c
            .assignment()
            .ok()?
            .elements()
            .iter()
            .map(|e| e.partition())
            .collect();
        for p in &mine {
            if !seen.insert(*p) {
                return None;
            }
        }
        owned.insert(name.to_string(), mine);
    }
    (seen.len() == PARTITIONS as usize).then_some(owned)
}

/// Polls until every partition has exactly one owner among `consumers`, the broker's view
/// agrees (Stable, one member per consumer, the same split) and stays so for a few polls.
fn settle(
    broker: &TestBroker,
    ledger: &mut Ledger,
    consumers: &[(&str, &BaseConsumer)],
    step: &str,
) {
    let deadline = Instant::now() + SETTLE;
    let mut stable_rounds = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "{step}: the group did not settle"
        );
        ledger.pump(consumers);
        let clients = exact_ownership(consumers);
        let view = broker.core().groups().consumer_describe(GROUP).ok();
        let agrees = match (&clients, &view) {
            (Some(clients), Some(view)) => {
                let mut server: Vec<BTreeSet<i32>> = view
                    .members
                    .iter()
                    .map(|m| m.assignment.values().flatten().copied().collect())
                    .collect();
                let mut client: Vec<BTreeSet<i32>> = clients.values().cloned().collect();
                server.sort();
                client.sort();
                view.state == GroupState::Stable
                    && view.members.len() == consumers.len()
                    && server == client
            }
            _ => false,
        };
        stable_rounds = if agrees { stable_rounds + 1 } else { 0 };
        if stable_rounds >= 5 {
            let owned = clients.unwrap_or_default();
            let sizes: Vec<usize> = owned.values().map(BTreeSet::len).collect();
            let (min, max) = (sizes.iter().min().copied(), sizes.iter().max().copied());
            assert!(
                max.unwrap_or(0) - min.unwrap_or(0) <= 1,
                "{step}: uniform assignor left the split unbalanced: {owned:?}"
            );
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_consumers_join_and_leave_without_losing_or_repeating_a_record() {
    let broker =
        TestBroker::with(|b| b.configure(|c| c.kafka.group_consumer_heartbeat_interval_ms = 200))
            .await
            .unwrap();
    broker
        .core()
        .create_topic(TOPIC, PARTITIONS as u32, BTreeMap::new())
        .await
        .unwrap();
    let bootstrap = broker.kafka_bootstrap();
    let broker = std::sync::Arc::new(broker);
    let b = broker.clone();
    tokio::task::spawn_blocking(move || {
        let broker = &*b;
        let mut ledger = Ledger::default();
        let mut produced = 0;
        let batch = |produced: &mut usize| {
            produce(&bootstrap, *produced..*produced + 120);
            *produced += 120;
        };

        batch(&mut produced);
        let c1 = consumer(&bootstrap, "c1");
        settle(broker, &mut ledger, &[("c1", &c1)], "c1 joins");

        batch(&mut produced);
        let c2 = consumer(&bootstrap, "c2");
        settle(broker, &mut ledger, &[("c1", &c1), ("c2", &c2)], "c2 joins");

        batch(&mut produced);
        let c3 = consumer(&bootstrap, "c3");
        settle(
            broker,
            &mut ledger,
            &[("c1", &c1), ("c2", &c2), ("c3", &c3)],
            "c3 joins",
        );

        batch(&mut produced);
        drop(c1);
        settle(
            broker,
            &mut ledger,
            &[("c2", &c2), ("c3", &c3)],
            "c1 leaves",
        );

        batch(&mut produced);
        drop(c2);
        settle(broker, &mut ledger, &[("c3", &c3)], "c2 leaves");

        // The last member drains whatever is left.
        batch(&mut produced);
        let deadline = Instant::now() + SETTLE;
        while ledger.processed.len() < produced && Instant::now() < deadline {
            ledger.pump(&[("c3", &c3)]);
        }
        let twice: Vec<_> = ledger.processed.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "processed more than once: {twice:?}");
        let missing: Vec<String> = (0..produced)
            .map(|i| format!("r{i}"))
            .filter(|r| !ledger.processed.contains_key(r))
            .collect();
        assert!(missing.is_empty(), "never processed: {missing:?}");
        drop(c3);
    })
    .await
    .unwrap();

    // The last member left: the group is empty, its offsets stay (one per partition, at the end).
    let view = broker.core().groups().consumer_describe(GROUP).unwrap();
    assert_eq!(view.state, GroupState::Empty);
    let committed = broker.core().groups().fetch_offsets(GROUP, None).unwrap();
    assert_eq!(committed.len(), PARTITIONS as usize);
    let total: i64 = committed.iter().map(|c| c.offset).sum();
    assert_eq!(total, 720);
}
