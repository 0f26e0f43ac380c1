//! `/metrics` after real traffic: lapin and librdkafka drive a `TestBroker`, then the scraped
//! Prometheus text must show exactly that traffic.
//!
//! The metrics registry is process-wide, so every test uses its own topic, queue and group names,
//! and only `amqp_counters_move_by_exactly_the_traffic_sent` sends AMQP traffic in this binary
//! (the AMQP message counters and the connection and channel gauges have no per-object label).
//! That is why this suite is its own test binary and not a module of `tests/integration`: the
//! other suites there send AMQP traffic in the same process at the same time.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry::log::batch::{encode_batch, SimpleRecord};
use ferry::testing::TestBroker;
use futures::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

const WAIT: Duration = Duration::from_secs(10);

async fn scrape(broker: &TestBroker) -> String {
    let resp = reqwest::get(format!("{}/metrics", broker.http_url()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

/// Every `ferry_*` metric family in a scrape has a `# HELP` line: an undescribed one is flagged
/// by `promtool check metrics` and shows as a bare name in Grafana's metric browser.
fn assert_every_family_described(text: &str) {
    let helped: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let bare: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with("ferry_") && !helped.contains(name))
        .collect();
    assert!(bare.is_empty(), "metric families without # HELP: {bare:?}");
}

/// The value of the series `name` whose labels are exactly `labels` (0 when absent, so a
/// counter that never moved reads as 0).
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    find(text, name, labels).unwrap_or(0.0)
}

fn find(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    want.sort();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, v)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, got) = match series.split_once('{') {
            Some((n, rest)) => (n, parse_labels(rest.trim_end_matches('}'))),
            None => (series, Vec::new()),
        };
        if n == name && got == want {
            return v.parse().ok();
        }
    }
    None
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = s
        .split("\",")
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once("=\"")?;
            Some((k.to_string(), v.trim_end_matches('"').to_string()))
        })
        .collect();
    out.sort();
    out
}

/// Series of `name` that carry label `key="val"` (any other labels).
fn series_with(text: &str, name: &str, key: &str, val: &str) -> usize {
    let needle = format!("{key}=\"{val}\"");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&needle))
        .count()
}

const AMQP_COUNTERS: &[&str] = &[
    "ferry_messages_published_total",
    "ferry_messages_confirmed_total",
    "ferry_messages_routed_total",
    "ferry_messages_unroutable_returned_total",
    "ferry_messages_unroutable_dropped_total",
    "ferry_messages_delivered_total",
    "ferry_messages_redelivered_total",
    "ferry_messages_acknowledged_total",
];

#[tokio::test]
async fn amqp_counters_move_by_exactly_the_traffic_sent() {
    let broker = TestBroker::start().await.unwrap();
    let before = scrape(&broker).await;
    let rejected_before = value(
        &before,
        "ferry_messages_dead_lettered_total",
        &[("reason", "rejected")],
    );

    let conn = Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch.exchange_declare(
        "obs-dlx".into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        "obs-dead".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "obs-dead".into(),
        "obs-dlx".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("obs-dlx".into()),
    );
    ch.queue_declare("obs-work".into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();

    let publish = |key: &'static str, mandatory: bool| {
        let ch = ch.clone();
        async move {
            ch.basic_publish(
                "".into(),
                key.into(),
                BasicPublishOptions {
                    mandatory,
                    ..Default::default()
                },
                b"m",
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap()
        }
    };
    for _ in 0..5 {
        assert!(publish("obs-work", false).await.is_ack());
    }
    for _ in 0..2 {
        let confirm = publish("obs-nowhere", true).await;
        assert!(confirm.take_message().is_some(), "basic.return expected");
    }
    for _ in 0..3 {
        publish("obs-nowhere", false).await;
    }

    let mid = scrape(&broker).await;
    let queue = [("vhost", "/"), ("queue", "obs-work")];
    assert_eq!(value(&mid, "ferry_queue_messages_ready", &queue), 5.0);
    assert_eq!(value(&mid, "ferry_queue_messages_unacked", &queue), 0.0);
    assert_eq!(value(&mid, "ferry_queue_consumers", &queue), 0.0);
    assert_eq!(
        value(&mid, "ferry_connections", &[("protocol", "amqp")]),
        1.0
    );
    assert_eq!(value(&mid, "ferry_channels", &[]), 1.0);

    // Consume the 5: ack 3, reject 1 (dead-lettered), requeue 1 and ack its redelivery.
    let consumer_ch = conn.create_channel().await.unwrap();
    let mut consumer = consumer_ch
        .basic_consume(
            "obs-work".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..5 {
        let d = next(&mut consumer).await;
        let settled = match i {
            0..=2 => d.ack(BasicAckOptions::default()).await,
            3 => d.reject(BasicRejectOptions { requeue: false }).await,
            _ => {
                d.nack(BasicNackOptions {
                    requeue: true,
                    multiple: false,
                })
                .await
            }
        };
        settled.unwrap();
    }
    let again = next(&mut consumer).await;
    assert!(again.redelivered);
    again.ack(BasicAckOptions::default()).await.unwrap();

    // The dead-lettered copy lands in obs-dead; wait until the gauges show it.
    let deadline = tokio::time::Instant::now() + WAIT;
    let after = loop {
        let text = scrape(&broker).await;
        let dead = value(
            &text,
            "ferry_queue_messages_ready",
            &[("vhost", "/"), ("queue", "obs-dead")],
        );
        let unacked = value(&text, "ferry_queue_messages_unacked", &queue);
        if (dead == 1.0 && unacked == 0.0) || tokio::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let delta = |name: &str| value(&after, name, &[]) - value(&before, name, &[]);
    let expected = [5.0 + 2.0 + 3.0, 10.0, 5.0, 2.0, 3.0, 6.0, 1.0, 4.0];
    for (name, want) in AMQP_COUNTERS.iter().zip(expected) {
        assert_eq!(delta(name), want, "{name}");
    }
    assert_eq!(
        value(
            &after,
            "ferry_messages_dead_lettered_total",
            &[("reason", "rejected")]
        ) - rejected_before,
        1.0
    );
    assert_eq!(
        value(
            &after,
            "ferry_queue_messages_ready",
            &[("vhost", "/"), ("queue", "obs-dead")]
        ),
        1.0
    );
    assert_eq!(value(&after, "ferry_queue_messages_ready", &queue), 0.0);
    assert_eq!(value(&after, "ferry_queue_messages_unacked", &queue), 0.0);
    assert_eq!(value(&after, "ferry_queue_consumers", &queue), 1.0);
    assert_eq!(value(&after, "ferry_channels", &[]), 2.0);
    assert!(
        value(
            &after,
            "ferry_amqp_method_seconds_count",
            &[("class", "basic")]
        ) >= 10.0
    );
    assert!(
        value(
            &after,
            "ferry_amqp_method_seconds_count",
            &[("class", "queue")]
        ) >= 3.0
    );
    assert!(
        value(
            &after,
            "ferry_bytes_received_total",
            &[("protocol", "amqp")]
        ) > 0.0
    );
    assert!(value(&after, "ferry_bytes_sent_total", &[("protocol", "amqp")]) > 0.0);
    assert_every_family_described(&after);

    conn.close(200, "bye".into()).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = scrape(&broker).await;
        let open = value(&text, "ferry_connections", &[("protocol", "amqp")]);
        let channels = value(&text, "ferry_channels", &[]);
        if open == 0.0 && channels == 0.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "connection gauges stuck at {open}/{channels}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    broker.stop().await;
}

async fn next(consumer: &mut lapin::Consumer) -> lapin::message::Delivery {
    tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("delivery in time")
        .expect("stream open")
        .expect("delivery ok")
}

fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.timeout.ms", "20000")
        .set("linger.ms", "0")
        .create()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_offsets_and_lag_equal_produced_minus_committed() {
    let broker = TestBroker::start().await.unwrap();
    let topic = "obs-lag";
    let group = "obs-lag-group";
    broker
        .core()
        .create_topic(topic, 2, BTreeMap::new())
        .await
        .unwrap();
    let before = scrape(&broker).await;
    let p = producer(&broker.kafka_bootstrap());
    for (partition, count) in [(0, 7), (1, 4)] {
        for i in 0..count {
            let payload = format!("v{i}");
            p.send(
                FutureRecord::<(), _>::to(topic)
                    .partition(partition)
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        }
    }
    // Commit 3 on partition 0 and 4 (everything) on partition 1, as a simple (assign-only)
    // consumer would.
    let bootstrap = broker.kafka_bootstrap();
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Offset(3))
            .unwrap();
        tpl.add_partition_offset(topic, 1, Offset::Offset(4))
            .unwrap();
        c.commit(&tpl, CommitMode::Sync).unwrap();
    })
    .await
    .unwrap();

    let text = scrape(&broker).await;
    let part = |p: &'static str| [("topic", topic), ("partition", p)];
    assert_eq!(
        value(&text, "ferry_topic_partition_current_offset", &part("0")),
        7.0
    );
    assert_eq!(
        value(&text, "ferry_topic_partition_current_offset", &part("1")),
        4.0
    );
    assert_eq!(
        value(&text, "ferry_topic_partition_oldest_offset", &part("0")),
        0.0
    );
    let grp = |p: &'static str| [("consumergroup", group), ("topic", topic), ("partition", p)];
    assert_eq!(
        value(&text, "ferry_consumergroup_current_offset", &grp("0")),
        3.0
    );
    assert_eq!(value(&text, "ferry_consumergroup_lag", &grp("0")), 4.0);
    assert_eq!(value(&text, "ferry_consumergroup_lag", &grp("1")), 0.0);
    let produce = [("api", "Produce")];
    assert!(
        value(&text, "ferry_kafka_request_seconds_count", &produce)
            - value(&before, "ferry_kafka_request_seconds_count", &produce)
            >= 11.0
    );
    assert!(
        value(
            &text,
            "ferry_bytes_received_total",
            &[("protocol", "kafka")]
        ) > value(
            &before,
            "ferry_bytes_received_total",
            &[("protocol", "kafka")]
        )
    );
    assert!(
        value(&text, "ferry_bytes_sent_total", &[("protocol", "kafka")])
            > value(&before, "ferry_bytes_sent_total", &[("protocol", "kafka")])
    );

    // Producing more grows the lag at the next scrape, with no new commit.
    p.send(
        FutureRecord::<(), _>::to(topic)
            .partition(1)
            .payload("more"),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let text = scrape(&broker).await;
    assert_eq!(value(&text, "ferry_consumergroup_lag", &grp("1")), 1.0);
    broker.stop().await;
}

#[tokio::test]
async fn per_object_metrics_off_sums_partitions_per_topic() {
    let broker = TestBroker::with(|b| b.configure(|c| c.observe.per_object_metrics = false))
        .await
        .unwrap();
    let topic = "obs-aggregate";
    broker
        .core()
        .create_topic(topic, 3, BTreeMap::new())
        .await
        .unwrap();
    for (partition, n) in [(0, 2), (2, 5)] {
        let records: Vec<SimpleRecord> = (0..n)
            .map(|i| SimpleRecord {
                key: None,
                value: Some(format!("v{i}").into()),
                headers: vec![],
                timestamp: 1_700_000_000_000,
            })
            .collect();
        broker
            .core()
            .partition(topic, partition)
            .unwrap()
            .append(encode_batch(&records))
            .await
            .unwrap();
    }
    let text = scrape(&broker).await;
    assert_eq!(
        value(
            &text,
            "ferry_topic_partition_current_offset",
            &[("topic", topic)]
        ),
        7.0
    );
    assert_eq!(
        series_with(
            &text,
            "ferry_topic_partition_current_offset",
            "topic",
            topic
        ),
        1,
        "no per-partition series when per_object_metrics = false"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_deleted_topic_leaves_no_series_behind() {
    let broker = TestBroker::start().await.unwrap();
    let topic = "obs-doomed";
    broker
        .core()
        .create_topic(topic, 2, BTreeMap::new())
        .await
        .unwrap();
    let text = scrape(&broker).await;
    assert_eq!(
        series_with(
            &text,
            "ferry_topic_partition_current_offset",
            "topic",
            topic
        ),
        2
    );
    assert!(text.contains("# TYPE ferry_topic_partition_current_offset gauge"));
    broker.core().delete_topic(topic).await.unwrap();
    let text = scrape(&broker).await;
    for family in [
        "ferry_topic_partition_current_offset",
        "ferry_topic_partition_oldest_offset",
    ] {
        assert_eq!(series_with(&text, family, "topic", topic), 0, "{family}");
    }
    broker.stop().await;
}

/// Issue 12: wrong admin passwords are counted per protocol and slowed per peer; a right one
/// still answers at once and clears the peer's record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_admin_passwords_are_counted_and_slowed() {
    let broker = TestBroker::start().await.unwrap();
    let failures = |text: &str| value(text, "ferry_auth_failures_total", &[("protocol", "http")]);
    let before = failures(&scrape(&broker).await);
    let client = reqwest::Client::new();
    let url = format!("{}/api/topics", broker.http_url());
    let wrong = |client: reqwest::Client, url: String| async move {
        let resp = client
            .get(url)
            .basic_auth("admin", Some("guess"))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap();
        match status {
            reqwest::StatusCode::UNAUTHORIZED => assert_eq!(body["error"], "unauthorized"),
            // Beyond the attempts one address may have waiting: refused unchecked.
            reqwest::StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(body["error"], "too_many_requests")
            }
            other => panic!("a wrong password answered {other}: {body}"),
        }
        status
    };

    // 300 attempts, 100 at a time (under the listener's connection cap).
    let started = std::time::Instant::now();
    let mut refused_unchecked = 0;
    for _ in 0..3 {
        let wave: Vec<_> = (0..100)
            .map(|_| tokio::spawn(wrong(client.clone(), url.clone())))
            .collect();
        for attempt in wave {
            if attempt.await.unwrap() == reqwest::StatusCode::TOO_MANY_REQUESTS {
                refused_unchecked += 1;
            }
        }
    }
    let flood = started.elapsed();
    let after_flood = scrape(&broker).await;
    assert_eq!(failures(&after_flood) - before, 300.0);
    assert_every_family_described(&after_flood);
    // One address cannot hold more than a few connections waiting out delays.
    let most_waiting = ferry::broker::login_guard::MAX_WAITING_PER_PEER as usize;
    assert!(
        refused_unchecked >= 300 - 3 * (most_waiting + 3 + 10),
        "only {refused_unchecked} of 300 parallel guesses were refused unchecked"
    );
    // All but the first few failures of each wave wait; without slowing, 300 local requests
    // take a few hundred milliseconds.
    assert!(
        flood >= ferry::broker::login_guard::MAX_DELAY * 2,
        "300 wrong passwords took only {flood:?}"
    );

    // The peer is now slowed to the maximum delay.
    let one = std::time::Instant::now();
    assert_eq!(
        wrong(client.clone(), url.clone()).await,
        reqwest::StatusCode::UNAUTHORIZED
    );
    assert!(one.elapsed() >= ferry::broker::login_guard::MAX_DELAY);

    // The right password is not slowed, and clears the record.
    let one = std::time::Instant::now();
    let resp = client
        .get(&url)
        .basic_auth("admin", Some("admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    assert!(one.elapsed() < ferry::broker::login_guard::FIRST_DELAY * 5);
    let one = std::time::Instant::now();
    assert_eq!(
        wrong(client.clone(), url.clone()).await,
        reqwest::StatusCode::UNAUTHORIZED
    );
    assert!(one.elapsed() < ferry::broker::login_guard::FIRST_DELAY);
    assert_eq!(failures(&scrape(&broker).await) - before, 302.0);
    broker.stop().await;
}
