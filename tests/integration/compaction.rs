//! Log compaction (issue 17) through librdkafka: `cleanup.policy=compact` topics keep the latest
//! value of every key, tombstones until `delete.retention.ms`, refuse keyless records with
//! INVALID_RECORD, come back the same after a restart, and lose nothing to a kill -9 in the
//! middle of a cleaner pass.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use ferry::testing::TestBroker;

use crate::common;
use common::serve::ServeChild;

const TIMEOUT: Duration = Duration::from_secs(20);
const KEYS: usize = 20;
const UPDATES: usize = 30;

async fn start(dir: &Path) -> TestBroker {
    TestBroker::with(|b| {
        b.data_dir(dir)
            .configure(|c| c.log.cleaner_backoff_ms = 100)
    })
    .await
    .expect("broker")
}

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin")
}

fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.timeout.ms", "20000")
        .set("linger.ms", "0")
        .create()
        .expect("producer")
}

async fn send(
    p: &FutureProducer,
    key: Option<&str>,
    value: Option<&str>,
) -> Result<i64, KafkaError> {
    let mut record: FutureRecord<str, str> = FutureRecord::to("table").partition(0);
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Some(v) = value {
        record = record.payload(v);
    }
    p.send(record, Duration::from_secs(20))
        .await
        .map(|delivery| delivery.offset)
        .map_err(|(e, _)| e)
}

/// Every record of `table`/0 from offset 0 up to the high watermark: (offset, key, value).
fn read_all(bootstrap: &str) -> Vec<(i64, String, Option<String>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "compaction-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let (_, high) = consumer
        .fetch_watermarks("table", 0, TIMEOUT)
        .expect("watermarks");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("table", 0, Offset::Offset(0))
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let mut out = Vec::new();
    while high > 0 && out.last().is_none_or(|(o, _, _)| o + 1 < high) {
        assert!(
            Instant::now() < deadline,
            "read {} records, high watermark {high}",
            out.len()
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
                out.push((
                    m.offset(),
                    m.key().map(text).expect("every record has a key"),
                    m.payload().map(text),
                ));
            }
            Some(Err(e)) => panic!("consume: {e}"),
            None => {}
        }
    }
    out
}

/// Waits until `check` holds on what a consumer from offset 0 reads.
fn wait_for_log(
    bootstrap: &str,
    what: &str,
    check: impl Fn(&[(i64, String, Option<String>)]) -> bool,
) -> Vec<(i64, String, Option<String>)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let records = read_all(bootstrap);
        if check(&records) {
            return records;
        }
        assert!(Instant::now() < deadline, "{what}: {records:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn latest(records: &[(i64, String, Option<String>)]) -> BTreeMap<String, Option<String>> {
    records
        .iter()
        .map(|(_, k, v)| (k.clone(), v.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_topic_keeps_the_latest_value_of_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let bootstrap = broker.kafka_bootstrap();
    let made = admin(&bootstrap)
        .create_topics(
            [&NewTopic::new("table", 1, TopicReplication::Fixed(1))
                .set("cleanup.policy", "compact")
                // Small segments, so most of the log is sealed and cleanable.
                .set("segment.bytes", "2048")
                .set("min.cleanable.dirty.ratio", "0.01")],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(made[0].is_ok(), "{made:?}");

    let p = producer(&bootstrap);
    let mut expected: BTreeMap<String, Option<String>> = BTreeMap::new();
    for round in 0..UPDATES {
        for k in 0..KEYS {
            let (key, value) = (
                format!("key-{k:02}"),
                format!("value {round} of key-{k:02}"),
            );
            send(&p, Some(&key), Some(&value)).await.expect("produce");
            expected.insert(key, Some(value));
        }
    }
    // A tombstone for key-00, then more updates so that it is sealed too.
    send(&p, Some("key-00"), None).await.expect("tombstone");
    expected.insert("key-00".into(), None);
    for k in 1..KEYS {
        let (key, value) = (format!("key-{k:02}"), format!("final value of key-{k:02}"));
        send(&p, Some(&key), Some(&value)).await.expect("produce");
        expected.insert(key, Some(value));
    }
    let produced = KEYS * UPDATES + KEYS;

    // A record without a key has no place in a compacted topic.
    let err = send(&p, None, Some("no key"))
        .await
        .expect_err("keyless refused");
    assert_eq!(
        err.rdkafka_error_code(),
        Some(RDKafkaErrorCode::InvalidRecord),
        "{err}"
    );

    let bootstrap_for_reads = bootstrap.clone();
    let records = tokio::task::spawn_blocking(move || {
        // Until every sealed segment is clean: one record per key there, and at most two
        // more of a key in the active segment (about 22 records).
        wait_for_log(&bootstrap_for_reads, "the cleaner never compacted", |r| {
            let mut seen: HashMap<&str, usize> = HashMap::new();
            for (_, k, _) in r {
                *seen.entry(k).or_default() += 1;
            }
            r.len() < produced / 4 && seen.values().all(|n| *n <= 3)
        })
    })
    .await
    .unwrap();
    assert_eq!(latest(&records), expected, "the latest value of every key");
    let offsets: Vec<i64> = records.iter().map(|r| r.0).collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
    assert_eq!(
        *offsets.last().unwrap(),
        produced as i64 - 1,
        "offsets are kept: the last record is where it was written"
    );
    assert_eq!(
        records.iter().filter(|r| r.2.is_none()).count(),
        1,
        "the tombstone stays"
    );

    // Once delete.retention.ms has passed, the tombstone goes too, and key-00 with it.
    // (AlterConfigs replaces the whole override set.)
    admin(&bootstrap)
        .alter_configs(
            [&AlterConfig::new(ResourceSpecifier::Topic("table"))
                .set("cleanup.policy", "compact")
                .set("segment.bytes", "2048")
                .set("min.cleanable.dirty.ratio", "0.01")
                .set("delete.retention.ms", "0")],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    for k in 1..KEYS {
        let (key, value) = (format!("key-{k:02}"), format!("last word of key-{k:02}"));
        send(&p, Some(&key), Some(&value)).await.expect("produce");
        expected.insert(key, Some(value));
    }
    expected.remove("key-00");
    let bootstrap_for_reads = bootstrap.clone();
    let records = tokio::task::spawn_blocking(move || {
        wait_for_log(
            &bootstrap_for_reads,
            "the tombstone was never removed",
            |r| !r.iter().any(|(_, k, _)| k == "key-00"),
        )
    })
    .await
    .unwrap();
    assert_eq!(latest(&records), expected);

    // A restart finds the cleaned segments and serves the same records.
    broker.stop().await;
    let broker = start(dir.path()).await;
    let bootstrap = broker.kafka_bootstrap();
    let after = tokio::task::spawn_blocking(move || read_all(&bootstrap))
        .await
        .unwrap();
    assert_eq!(latest(&after), expected);
    assert!(
        after.len() <= records.len(),
        "{} then {}",
        records.len(),
        after.len()
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_settings_are_accepted_and_described() {
    let broker = TestBroker::start().await.expect("broker");
    let admin = admin(&broker.kafka_bootstrap());
    let opts = AdminOptions::new();
    let made = admin
        .create_topics(
            [&NewTopic::new("both", 1, TopicReplication::Fixed(1))
                .set("cleanup.policy", "compact,delete")
                .set("delete.retention.ms", "1000")
                .set("min.compaction.lag.ms", "10")
                .set("max.compaction.lag.ms", "3600000")
                .set("min.cleanable.dirty.ratio", "0.2")],
            &opts,
        )
        .await
        .unwrap();
    assert!(made[0].is_ok(), "{made:?}");
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic("both")], &opts)
        .await
        .unwrap();
    let resource = described[0].as_ref().expect("described");
    let value = |k: &str| resource.get(k).and_then(|e| e.value.clone());
    assert_eq!(value("cleanup.policy").as_deref(), Some("compact,delete"));
    assert_eq!(value("delete.retention.ms").as_deref(), Some("1000"));
    assert_eq!(value("min.compaction.lag.ms").as_deref(), Some("10"));
    assert_eq!(value("max.compaction.lag.ms").as_deref(), Some("3600000"));
    assert_eq!(value("min.cleanable.dirty.ratio").as_deref(), Some("0.2"));
    let refused = admin
        .create_topics(
            [&NewTopic::new("bad", 1, TopicReplication::Fixed(1))
                .set("min.cleanable.dirty.ratio", "2")],
            &opts,
        )
        .await
        .unwrap();
    assert!(
        matches!(refused[0], Err((_, RDKafkaErrorCode::InvalidConfig))),
        "{refused:?}"
    );

    // The admin API takes the same settings.
    let (status, body) = common::admin::admin_call(
        &broker,
        reqwest::Method::POST,
        "/api/topics",
        Some(serde_json::json!({
            "name": "via-api",
            "configs": {"cleanup.policy": "compact", "delete.retention.ms": "5000"}
        })),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");
    let topic = broker.core().topic("via-api").expect("created");
    assert!(topic.log_config().cleanup_policy.compacts());
    assert_eq!(topic.log_config().delete_retention_ms, 5000);
    broker.stop().await;
}

/// Whether the partition directory shows a cleaner pass half done: a `.cleaned` file written
/// but not yet renamed, or a segment swapped in whose indexes are not rebuilt yet.
fn mid_pass(partition: &Path) -> bool {
    let names: Vec<String> = std::fs::read_dir(partition)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.iter().any(|n| n.ends_with(".cleaned"))
        || names.iter().any(|n| {
            n.strip_suffix(".log")
                .is_some_and(|stem| !names.contains(&format!("{stem}.index")))
        })
}

/// Issue 17: a kill -9 at any point of a cleaner pass leaves the old segment or the new one,
/// never a lost value. A broker cleaning every 20 ms takes rounds of updates (~1 KiB values,
/// some tombstones) while a watcher SIGKILLs it the moment its partition directory shows a
/// segment half way (a `.cleaned` file not yet renamed, or a `.log` whose indexes are not
/// rebuilt yet); after every restart a consumer from offset 0 reads the latest acknowledged
/// value of every key (the one record in flight at the kill may or may not be there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_cleaning_never_loses_the_latest_value_of_a_key() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    const ROUNDS: usize = 8;
    const KEYS_IN_CRASH_TEST: usize = 50;
    const UPDATES_PER_ROUND: usize = 8;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    std::fs::write(&config, "[log]\ncleaner_backoff_ms = 20\n").unwrap();
    let data = dir.path().join("data");
    let partition = data.join("logs").join("table-0");
    let mut expected: BTreeMap<String, Option<String>> = BTreeMap::new();
    // The one record in flight when the broker died: written or not, either is right.
    let mut in_doubt: Option<(String, Option<String>)> = None;
    let mut interrupted = 0;
    for round in 0..ROUNDS {
        let child = ServeChild::start(&data, Some(&config));
        if round == 0 {
            let made = admin(&child.kafka)
                .create_topics(
                    [&NewTopic::new("table", 1, TopicReplication::Fixed(1))
                        .set("cleanup.policy", "compact")
                        .set("segment.bytes", "131072")
                        .set("min.cleanable.dirty.ratio", "0.01")],
                    &AdminOptions::new(),
                )
                .await
                .unwrap();
            assert!(made[0].is_ok(), "{made:?}");
        }
        // After a restart, the latest acknowledged value of every key is there.
        let bootstrap = child.kafka.clone();
        let records = tokio::task::spawn_blocking(move || read_all(&bootstrap))
            .await
            .unwrap();
        let found = latest(&records);
        if let Some((key, value)) = in_doubt.take() {
            if found.get(&key) == Some(&value) {
                expected.insert(key, value);
            }
        }
        assert_eq!(found, expected, "after the kill of round {round}");

        // A watcher kills the broker the moment a cleaner pass is half way on disk.
        let pid = child.process.id() as i32;
        let caught = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (caught, stop, partition) = (caught.clone(), stop.clone(), partition.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if mid_pass(&partition) {
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                        caught.store(true, Ordering::Relaxed);
                        return;
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
            })
        };
        let p: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &child.kafka)
            .set("message.timeout.ms", "1500")
            .set("linger.ms", "0")
            .create()
            .expect("producer");
        'round: for update in 0..UPDATES_PER_ROUND {
            for k in 0..KEYS_IN_CRASH_TEST {
                let key = format!("key-{k:02}");
                // Values of ~1 KiB make a pass long enough to be caught; some are tombstones.
                let value = ((k + update + round) % 7 != 0).then(|| {
                    format!(
                        "round {round} update {update} of {key} {}",
                        "x".repeat(1000)
                    )
                });
                match send(&p, Some(&key), value.as_deref()).await {
                    Ok(_) => {
                        expected.insert(key, value);
                    }
                    Err(_) if caught.load(Ordering::Relaxed) => {
                        in_doubt = Some((key, value));
                        break 'round;
                    }
                    Err(e) => panic!("produce: {e}"),
                }
            }
        }
        drop(p);
        stop.store(true, Ordering::Relaxed);
        watcher.join().unwrap();
        interrupted += usize::from(caught.load(Ordering::Relaxed));
        child.kill();
    }
    let child = ServeChild::start(&data, Some(&config));
    let bootstrap = child.kafka.clone();
    let records = tokio::task::spawn_blocking(move || read_all(&bootstrap))
        .await
        .unwrap();
    let found = latest(&records);
    if let Some((key, value)) = in_doubt.take() {
        if found.get(&key) == Some(&value) {
            expected.insert(key, value);
        }
    }
    assert_eq!(found, expected, "after the last kill");
    child.kill();
    eprintln!("{interrupted} of {ROUNDS} kills caught a segment half way on disk");
    assert!(
        interrupted > 0,
        "no kill landed with a segment half way on disk"
    );
}
