//! Bridges (shovels) between two Ferry nodes in one process: node A runs the bridge, node B
//! plays the remote RabbitMQ (AMQP 0-9-1 through lapin) or the remote Kafka cluster (through
//! rdkafka). Messages are published and read with real clients (lapin, rdkafka) and the
//! bridges are defined and watched through the admin API, as an operator would.

use std::time::Duration;

use ferry::testing::TestBroker;
use futures::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common;
use common::admin::admin_call;
use common::amqp::{channel, connect, count, declare_durable, exchange};

/// Longest wait for any one condition.
const WAIT: Duration = Duration::from_secs(30);

async fn define(broker: &TestBroker, name: &str, value: Value) {
    let (status, body) = admin_call(
        broker,
        Method::PUT,
        &format!("/api/parameters/shovel/%2F/{name}"),
        Some(json!({ "value": value })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

async fn shovel(broker: &TestBroker, name: &str) -> Value {
    let (status, body) = admin_call(
        broker,
        Method::GET,
        &format!("/api/shovels/vhost/%2F/{name}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Polls the bridge's status until `done` holds (the status is the explicit signal).
async fn wait_for(broker: &TestBroker, name: &str, what: &str, done: impl Fn(&Value) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = shovel(broker, name).await;
        if done(&s) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bridge {name} never reached {what}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn publish_confirmed(ch: &lapin::Channel, exchange: &str, key: &str, bodies: &[String]) {
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let mut confirms = Vec::new();
    for b in bodies {
        confirms.push(
            ch.basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions::default(),
                b.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish"),
        );
    }
    for c in confirms {
        assert!(c.await.expect("confirm").is_ack());
    }
}

/// Consumes `n` messages from `queue` (acking each) and returns their bodies in order.
async fn consume(ch: &lapin::Channel, queue: &str, n: usize) -> Vec<String> {
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut out = Vec::new();
    while out.len() < n {
        let d = tokio::time::timeout(WAIT, consumer.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} arrived", out.len()))
            .expect("stream open")
            .expect("delivery");
        out.push(String::from_utf8(d.data.clone()).unwrap());
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    out
}

fn bodies(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("m-{i}")).collect()
}

#[tokio::test]
async fn definitions_are_validated_listed_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let a = TestBroker::with(|b| b.data_dir(dir.path())).await.unwrap();
    let (status, body) = admin_call(
        &a,
        Method::PUT,
        "/api/parameters/shovel/%2F/bad",
        Some(json!({"value": {"src-queue": "q", "dest-queue": "r", "ack-mode": "maybe"}})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["message"].as_str().unwrap().contains("ack-mode"),
        "{body}"
    );
    let (status, _) = admin_call(
        &a,
        Method::PUT,
        "/api/parameters/federation/%2F/x",
        Some(json!({"value": {}})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    define(
        &a,
        "local-move",
        json!({"src-queue": "from", "dest-queue": "to"}),
    )
    .await;
    let (status, _) = admin_call(
        &a,
        Method::PUT,
        "/api/parameters/shovel/%2F/local-move",
        Some(json!({"value": {"src-queue": "from", "dest-queue": "to"}})),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NO_CONTENT,
        "the same value again is no change"
    );
    wait_for(&a, "local-move", "running", |s| s["state"] == "running").await;
    let (_, list) = admin_call(&a, Method::GET, "/api/parameters/shovel", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["value"]["dest-queue"], "to");
    let (status, _) = admin_call(&a, Method::GET, "/api/health/checks/bridges", None).await;
    assert_eq!(status, StatusCode::OK);
    a.stop().await;

    let a = TestBroker::with(|b| b.data_dir(dir.path())).await.unwrap();
    wait_for(&a, "local-move", "running after a restart", |s| {
        s["state"] == "running"
    })
    .await;
    let conn = connect(&a).await;
    let ch = channel(&conn).await;
    publish_confirmed(&ch, "", "from", &bodies(0..3)).await;
    assert_eq!(consume(&ch, "to", 3).await, bodies(0..3));
    let (status, _) = admin_call(
        &a,
        Method::DELETE,
        "/api/parameters/shovel/%2F/local-move",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, list) = admin_call(&a, Method::GET, "/api/shovels", None).await;
    assert_eq!(list, json!([]));
    a.stop().await;
}

#[tokio::test]
async fn ferry_queue_to_remote_amqp_stores_while_the_destination_is_down_and_forwards_in_order() {
    let b_dir = tempfile::tempdir().unwrap();
    let b = TestBroker::with(|c| c.data_dir(b_dir.path()))
        .await
        .unwrap();
    let b_addr = b.amqp_addr();
    let a = TestBroker::start().await.unwrap();
    define(
        &a,
        "to-b",
        json!({"src-queue": "outbox", "dest-uri": format!("amqp://guest:guest@{b_addr}/%2f"),
               "dest-queue": "inbox", "reconnect-delay": 0.1, "src-prefetch-count": 50}),
    )
    .await;
    wait_for(&a, "to-b", "running", |s| s["state"] == "running").await;
    let a_conn = connect(&a).await;
    let a_ch = channel(&a_conn).await;
    publish_confirmed(&a_ch, "", "outbox", &bodies(0..200)).await;
    wait_for(&a, "to-b", "200 forwarded", |s| {
        s["messages_forwarded"] == 200
    })
    .await;

    // The destination goes away: the bridge blocks and the queue keeps what arrives.
    b.stop().await;
    publish_confirmed(&a_ch, "", "outbox", &bodies(200..500)).await;
    wait_for(&a, "to-b", "blocked", |s| s["state"] == "blocked").await;
    let (status, check) = admin_call(&a, Method::GET, "/api/health/checks/bridges", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{check}");
    let metrics = reqwest::get(format!("{}/metrics", a.http_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("ferry_bridge_reconnects_total{bridge=\"to-b\""),
        "{metrics}"
    );

    // It comes back on the same address: everything is forwarded, once, in order.
    let b = TestBroker::with(|c| c.data_dir(b_dir.path()).amqp_listen(b_addr.to_string()))
        .await
        .unwrap();
    wait_for(&a, "to-b", "500 forwarded", |s| {
        s["messages_forwarded"] == 500 && s["state"] == "running"
    })
    .await;
    let b_conn = connect(&b).await;
    let b_ch = channel(&b_conn).await;
    let got = consume(&b_ch, "inbox", 500).await;
    assert_eq!(got, bodies(0..500));
    assert_eq!(
        count(&b_ch, "inbox").await,
        0,
        "no duplicates were delivered"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn remote_amqp_queue_to_a_ferry_exchange_keeps_properties_and_provenance() {
    let b = TestBroker::start().await.unwrap();
    let a = TestBroker::start().await.unwrap();
    let a_conn = connect(&a).await;
    let a_ch = channel(&a_conn).await;
    exchange(
        &a_ch,
        "orders",
        lapin::ExchangeKind::Topic,
        FieldTable::default(),
    )
    .await;
    declare_durable(&a_ch, "orders.eu", FieldTable::default()).await;
    a_ch.queue_bind(
        "orders.eu".into(),
        "orders".into(),
        "eu.#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    define(
        &a,
        "from-b",
        json!({"src-uri": ["amqp://guest:guest@127.0.0.1:1/%2f", b.amqp_url()],
               "src-queue": "remote.orders", "dest-exchange": "orders",
               "dest-exchange-key": "eu.orders", "dest-add-forward-headers": true,
               "reconnect-delay": 0.1}),
    )
    .await;
    wait_for(&a, "from-b", "running (through the second URI)", |s| {
        s["state"] == "running"
    })
    .await;
    let b_conn = connect(&b).await;
    let b_ch = channel(&b_conn).await;
    b_ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let mut headers = FieldTable::default();
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString(traceparent.into()),
    );
    headers.insert("attempt".into(), AMQPValue::LongInt(3));
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_correlation_id("c-8".into())
        .with_message_id("m-8".into())
        .with_priority(3)
        .with_headers(headers);
    b_ch.basic_publish(
        "".into(),
        "remote.orders".into(),
        BasicPublishOptions::default(),
        b"{\"id\":8}",
        props,
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let mut consumer = a_ch
        .basic_consume(
            "orders.eu".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let d = tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("forwarded message")
        .unwrap()
        .unwrap();
    assert_eq!(d.data, b"{\"id\":8}");
    assert_eq!(d.exchange.as_str(), "orders");
    assert_eq!(d.routing_key.as_str(), "eu.orders");
    assert_eq!(
        d.properties.correlation_id().as_ref().map(|s| s.as_str()),
        Some("c-8")
    );
    assert_eq!(
        d.properties.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(
        d.properties.message_id().as_ref().map(|s| s.as_str()),
        Some("m-8")
    );
    assert_eq!(*d.properties.priority(), Some(3));
    let h = d.properties.headers().as_ref().expect("headers");
    assert_eq!(h.inner().get("attempt"), Some(&AMQPValue::LongInt(3)));
    assert!(
        matches!(h.inner().get("traceparent"), Some(AMQPValue::LongString(s)) if s.to_string() == traceparent)
    );
    let bridged = h.inner().get("x-ferry-bridged").expect("provenance");
    assert!(
        matches!(bridged, AMQPValue::LongString(s) if s.to_string() == "//from-b"),
        "{bridged:?}"
    );
    assert!(h.inner().contains_key("x-shovelled"), "{h:?}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn two_nodes_bridged_both_ways_do_not_loop() {
    let a = TestBroker::start().await.unwrap();
    let b = TestBroker::start().await.unwrap();
    // On each node: fanout exchange "events" -> "local" (the application) and "outbox"
    // (what the bridge sends to the other node's "events").
    for node in [&a, &b] {
        let conn = connect(node).await;
        let ch = channel(&conn).await;
        exchange(
            &ch,
            "events",
            lapin::ExchangeKind::Fanout,
            FieldTable::default(),
        )
        .await;
        for q in ["local", "outbox"] {
            declare_durable(&ch, q, FieldTable::default()).await;
            ch.queue_bind(
                q.into(),
                "events".into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        }
        conn.close(200, "ok".into()).await.unwrap();
    }
    define(
        &a,
        "a-to-b",
        json!({"src-queue": "outbox", "dest-uri": b.amqp_url(), "dest-exchange": "events"}),
    )
    .await;
    define(
        &b,
        "b-to-a",
        json!({"src-queue": "outbox", "dest-uri": a.amqp_url(), "dest-exchange": "events"}),
    )
    .await;
    let a_conn = connect(&a).await;
    let a_ch = channel(&a_conn).await;
    publish_confirmed(&a_ch, "events", "", &bodies(0..5)).await;
    // B's bridge sees each message come back from A's bridge and skips it: that count is
    // the signal the echo was cut.
    wait_for(&b, "b-to-a", "5 skipped", |s| s["messages_skipped"] == 5).await;
    assert_eq!(shovel(&b, "b-to-a").await["messages_forwarded"], 0);
    assert_eq!(shovel(&a, "a-to-b").await["messages_forwarded"], 5);
    let b_conn = connect(&b).await;
    let b_ch = channel(&b_conn).await;
    assert_eq!(consume(&b_ch, "local", 5).await, bodies(0..5));
    assert_eq!(consume(&a_ch, "local", 5).await, bodies(0..5));
    for (ch, name) in [
        (&a_ch, "local"),
        (&b_ch, "local"),
        (&a_ch, "outbox"),
        (&b_ch, "outbox"),
    ] {
        assert_eq!(count(ch, name).await, 0, "{name}: no copy came round again");
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn remote_queue_is_not_consumed_while_the_ferry_destination_refuses() {
    // Remote -> Ferry with the destination failing: a Ferry queue that rejects publishes
    // when full. The remote messages stay remote and arrive once room is made.
    let b = TestBroker::start().await.unwrap();
    let a = TestBroker::start().await.unwrap();
    let a_conn = connect(&a).await;
    let a_ch = channel(&a_conn).await;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(10));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    declare_durable(&a_ch, "landing", args).await;
    let b_conn = connect(&b).await;
    let b_ch = channel(&b_conn).await;
    declare_durable(&b_ch, "src", FieldTable::default()).await;
    publish_confirmed(&b_ch, "", "src", &bodies(0..30)).await;
    define(
        &a,
        "pull",
        json!({"src-uri": b.amqp_url(), "src-queue": "src", "dest-queue": "landing",
               "src-prefetch-count": 5, "reconnect-delay": 0.05}),
    )
    .await;
    // Connections work but every publish is refused: the breaker opens (failures without
    // progress count), and nothing more is taken from the remote queue.
    wait_for(&a, "pull", "blocked with the breaker open", |s| {
        s["state"] == "blocked"
            && s["circuit_breaker"] == "open"
            && s["reason"].as_str().is_some_and(|r| r.contains("full"))
    })
    .await;
    // Room is made: everything arrives. A batch refused part-way is sent again whole, so a
    // message may repeat (the at-least-once window); none is lost and first copies are in
    // order.
    let (all, firsts) = consume_distinct(&a_ch, "landing", 30).await;
    assert_eq!(firsts, bodies(0..30));
    assert!(all.len() - 30 <= 5 * 20, "{} duplicates", all.len() - 30);
    a.stop().await;
    b.stop().await;
}

/// Consumes from `queue` until `n` distinct bodies arrived: every delivery, and the first
/// copy of each in arrival order.
async fn consume_distinct(
    ch: &lapin::Channel,
    queue: &str,
    n: usize,
) -> (Vec<String>, Vec<String>) {
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let mut all = Vec::new();
    let mut firsts: Vec<String> = Vec::new();
    while firsts.len() < n {
        let d = tokio::time::timeout(WAIT, consumer.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} distinct arrived", firsts.len()))
            .expect("stream open")
            .expect("delivery");
        let body = String::from_utf8(d.data.clone()).unwrap();
        if !firsts.contains(&body) {
            firsts.push(body.clone());
        }
        all.push(body);
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    (all, firsts)
}

// ---- Kafka: node B plays the remote Kafka cluster ----

/// Every record of partition 0 of `topic` on `bootstrap`, as (payload, headers).
async fn read_topic(bootstrap: &str, topic: &str) -> Vec<(String, Vec<(String, Vec<u8>)>)> {
    let bootstrap = bootstrap.to_string();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "bridge-test-reader")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let (_, high) = c
            .fetch_watermarks(&topic, 0, Duration::from_secs(10))
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, rdkafka::Offset::Beginning)
            .unwrap();
        c.assign(&tpl).unwrap();
        common::kafka::poll_records(&c, high as usize)
            .into_iter()
            .map(|r| (String::from_utf8(r.payload).unwrap(), r.headers))
            .collect()
    })
    .await
    .unwrap()
}

fn firsts(all: &[String]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    all.iter().filter(|m| seen.insert(*m)).cloned().collect()
}

#[tokio::test]
async fn ferry_queue_to_remote_kafka_survives_a_kafka_outage_in_order() {
    let b_dir = tempfile::tempdir().unwrap();
    let b = TestBroker::with(|c| c.data_dir(b_dir.path()))
        .await
        .unwrap();
    let b_kafka = b.kafka_bootstrap();
    let a = TestBroker::start().await.unwrap();
    define(
        &a,
        "to-kafka",
        json!({"src-queue": "outbox", "dest-uri": format!("kafka://{b_kafka}"),
               "dest-topic": "events", "src-prefetch-count": 100, "reconnect-delay": 0.1}),
    )
    .await;
    let a_conn = connect(&a).await;
    let a_ch = channel(&a_conn).await;
    publish_confirmed(&a_ch, "", "outbox", &bodies(0..300)).await;
    wait_for(&a, "to-kafka", "300 forwarded", |s| {
        s["messages_forwarded"] == 300
    })
    .await;
    b.stop().await;
    publish_confirmed(&a_ch, "", "outbox", &bodies(300..600)).await;
    let b = TestBroker::with(|c| c.data_dir(b_dir.path()).kafka_listen(b_kafka.clone()))
        .await
        .unwrap();
    wait_for(&a, "to-kafka", "600 forwarded", |s| {
        s["messages_forwarded"].as_u64() >= Some(600)
    })
    .await;
    let records = read_topic(&b.kafka_bootstrap(), "events").await;
    let all: Vec<String> = records.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(firsts(&all), bodies(0..600));
    assert!(all.len() - 600 <= 100, "{} duplicates", all.len() - 600);
    let (_, headers) = &records[0];
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "x-ferry-bridged" && v == b"//to-kafka"),
        "{headers:?}"
    );
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "amqp.delivery-mode" && v == b"2"),
        "AMQP properties travel as record headers: {headers:?}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn remote_kafka_to_ferry_commits_offsets_only_after_the_records_are_durable() {
    let b = TestBroker::start().await.unwrap();
    let a = TestBroker::start().await.unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", b.kafka_bootstrap())
        .create()
        .unwrap();
    for (i, body) in bodies(0..300).iter().enumerate() {
        producer
            .send(
                FutureRecord::to("src")
                    .key(&format!("k{}", i % 7))
                    .payload(body)
                    .headers(rdkafka::message::OwnedHeaders::new().insert(
                        rdkafka::message::Header {
                            key: "ce_type",
                            value: Some("order.placed"),
                        },
                    )),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    define(
        &a,
        "pull",
        json!({"src-uri": format!("kafka://{}", b.kafka_bootstrap()), "src-topic": "src",
               "src-group": "edge-pull", "dest-queue": "landing", "reconnect-delay": 0.1}),
    )
    .await;
    let a_conn = connect(&a).await;
    let a_ch = channel(&a_conn).await;
    let mut consumer = a_ch
        .basic_consume(
            "landing".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 300 {
        let d = tokio::time::timeout(WAIT, consumer.next())
            .await
            .expect("records arrive")
            .unwrap()
            .unwrap();
        if got.is_empty() {
            let h = d.properties.headers().as_ref().expect("headers");
            // The Kafka binding's ce_type reaches an AMQP consumer as the AMQP binding's
            // cloudEvents:type (the CloudEvents mapping of the one log).
            assert!(
                matches!(h.inner().get("cloudEvents:type"),
                         Some(AMQPValue::LongString(s)) if s.to_string() == "order.placed"),
                "{h:?}"
            );
        }
        got.push(String::from_utf8(d.data.clone()).unwrap());
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert_eq!(got, bodies(0..300));
    // The group's committed offset on the remote side reaches the end: the explicit signal
    // that the bridge committed after forwarding.
    let bootstrap = b.kafka_bootstrap();
    let committed = tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "edge-pull")
            .create()
            .unwrap();
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let mut tpl = rdkafka::TopicPartitionList::new();
            tpl.add_partition("src", 0);
            let offsets = c.committed_offsets(tpl, Duration::from_secs(5)).unwrap();
            let o = offsets.find_partition("src", 0).unwrap().offset();
            if o == rdkafka::Offset::Offset(300) || std::time::Instant::now() > deadline {
                return o;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
    assert_eq!(committed, rdkafka::Offset::Offset(300));
    a.stop().await;
    b.stop().await;
}

// ---- kill -9 of the bridging node ----

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `ferry serve` with the bridge from its config file's `[[bridges]]`.
fn spawn_bridging_node(dir: &std::path::Path, amqp: u16, http: u16) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", "--config"])
        .arg(dir.join("ferry.toml"))
        .args(["--data-dir"])
        .arg(dir.join("data"))
        .args(["--kafka-listen", "127.0.0.1:0"])
        .args(["--amqp-listen", &format!("127.0.0.1:{amqp}")])
        .args(["--native-listen", "127.0.0.1:0"])
        .args(["--http-listen", &format!("127.0.0.1:{http}")])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn ferry")
}

async fn wait_ready(http: u16) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{http}/readyz")).await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const N: usize = 20_000;
/// Messages the kill test's publisher has unconfirmed at once.
const WINDOW: usize = 100;

/// Publishes `m-from..m-N` to `outbox` in confirmed windows; returns how many (from 0) are
/// confirmed when it finishes or the connection fails.
async fn publish_until_error(url: String, from: usize) -> usize {
    let Ok(conn) = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await
    else {
        return from;
    };
    let Ok(ch) = conn.create_channel().await else {
        return from;
    };
    if ch
        .queue_declare(
            "outbox".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .is_err()
        || ch
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .is_err()
    {
        return from;
    }
    let mut confirmed = from;
    while confirmed < N {
        let end = (confirmed + WINDOW).min(N);
        let mut pending = Vec::new();
        for body in bodies(confirmed..end) {
            match ch
                .basic_publish(
                    "".into(),
                    "outbox".into(),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
            {
                Ok(p) => pending.push(p),
                Err(_) => return confirmed,
            }
        }
        for p in pending {
            match p.await {
                Ok(c) if c.is_ack() => {}
                _ => return confirmed,
            }
        }
        confirmed = end;
    }
    confirmed
}

#[tokio::test]
async fn kill_9_of_the_bridging_node_mid_stream_loses_nothing() {
    const PREFETCH: usize = 200;
    let b = TestBroker::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ferry.toml"),
        format!(
            "[[bridges]]\nname = \"to-b\"\nsrc-queue = \"outbox\"\ndest-uri = \"{}\"\n\
             dest-queue = \"inbox\"\nsrc-prefetch-count = {PREFETCH}\nreconnect-delay = 0.1\n",
            b.amqp_url()
        ),
    )
    .unwrap();
    let (amqp, http) = (free_port(), free_port());
    let mut a = spawn_bridging_node(dir.path(), amqp, http);
    wait_ready(http).await;
    let a_url = format!("amqp://guest:guest@127.0.0.1:{amqp}/%2f");
    // The publisher runs while the bridge forwards; A is killed under both.
    let publisher = tokio::spawn(publish_until_error(a_url.clone(), 0));
    let b_conn = connect(&b).await;
    let b_ch = channel(&b_conn).await;
    // Declared here too, so the passive declares below never close the channel with a 404.
    declare_durable(&b_ch, "inbox", FieldTable::default()).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let depth = count(&b_ch, "inbox").await as usize;
        if depth >= N / 5 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bridge never moved"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.kill().unwrap();
    a.wait().unwrap();
    let confirmed = publisher.await.unwrap();
    assert!(
        confirmed < N,
        "killed mid-stream: {confirmed} of {N} published"
    );
    let mut a = spawn_bridging_node(dir.path(), amqp, http);
    wait_ready(http).await;
    // The rest, from the first message not confirmed (a message stored but unconfirmed at
    // the kill is published again: the publisher's own at-least-once window).
    assert_eq!(publish_until_error(a_url, confirmed).await, N);
    let (all, first) = consume_distinct(&b_ch, "inbox", N).await;
    assert_eq!(first, bodies(0..N), "every message, first copies in order");
    assert!(
        all.len() - N <= PREFETCH + WINDOW,
        "{} duplicates: more than the one batch in flight",
        all.len() - N
    );
    a.kill().unwrap();
    a.wait().unwrap();
    b.stop().await;
}
