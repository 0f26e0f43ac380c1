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
    let b =
        common::restart_on_same_port(|c| c.data_dir(b_dir.path()).kafka_listen(b_kafka.clone()))
            .await
            .unwrap();
    // Longer than WAIT: a batch librdkafka held across the outage fails only at the sink's
    // 30 s delivery timeout, and is then sent again.
    let deadline = tokio::time::Instant::now() + 3 * WAIT;
    loop {
        let s = shovel(&a, "to-kafka").await;
        if s["messages_forwarded"].as_u64() >= Some(600) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bridge to-kafka never reached 600 forwarded: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let records = read_topic(&b.kafka_bootstrap(), "events").await;
    let all: Vec<String> = records.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(firsts(&all), bodies(0..600));
    // The documented bound: at most `src-prefetch-count` (100) repeats per failure. The outage
    // is one failure, but a reconnect that meets the restarting node half-ready is another.
    let failures = shovel(&a, "to-kafka").await["reconnects"]
        .as_u64()
        .unwrap_or(0)
        .max(1) as usize;
    assert!(
        all.len() - 600 <= 100 * failures,
        "{} duplicates after {failures} failures",
        all.len() - 600
    );
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
fn spawn_bridging_node(dir: &std::path::Path, amqp: u16, http: u16) -> common::serve::KillOnDrop {
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
        .map(common::serve::KillOnDrop)
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

// ---- exchange and topic sources ----

async fn status_of(broker: &TestBroker, path: &str) -> StatusCode {
    admin_call(broker, Method::GET, path, None).await.0
}

#[tokio::test]
async fn ferry_exchange_source_keeps_what_it_binds_while_the_destination_is_down() {
    let b_dir = tempfile::tempdir().unwrap();
    let b = TestBroker::with(|c| c.data_dir(b_dir.path()))
        .await
        .unwrap();
    let b_addr = b.amqp_addr();
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
    define(
        &a,
        "ex-to-b",
        json!({"src-exchange": "orders", "src-exchange-key": "eu.#",
               "dest-uri": format!("amqp://guest:guest@{b_addr}/%2f"), "dest-queue": "inbox",
               "reconnect-delay": 0.1, "src-prefetch-count": 20}),
    )
    .await;
    wait_for(&a, "ex-to-b", "running", |s| s["state"] == "running").await;
    publish_confirmed(&a_ch, "orders", "eu.fr", &bodies(0..100)).await;
    publish_confirmed(&a_ch, "orders", "us.ny", &bodies(1000..1010)).await;
    wait_for(&a, "ex-to-b", "100 forwarded", |s| {
        s["messages_forwarded"] == 100
    })
    .await;

    // While the destination is down, the bridge's own durable queue keeps what matches (the
    // bridge finds the destination gone when it next publishes, and returns that batch).
    b.stop().await;
    publish_confirmed(&a_ch, "orders", "eu.de", &bodies(100..250)).await;
    wait_for(&a, "ex-to-b", "blocked", |s| s["state"] == "blocked").await;
    assert_eq!(
        status_of(&a, "/api/queues/%2F/amq.ferry.bridge.ex-to-b").await,
        StatusCode::OK
    );
    wait_for(&a, "ex-to-b", "150 pending", |s| s["pending"] == 150).await;
    let b = TestBroker::with(|c| c.data_dir(b_dir.path()).amqp_listen(b_addr.to_string()))
        .await
        .unwrap();
    wait_for(&a, "ex-to-b", "250 forwarded", |s| {
        s["messages_forwarded"] == 250
    })
    .await;
    let b_conn = connect(&b).await;
    let b_ch = channel(&b_conn).await;
    assert_eq!(consume(&b_ch, "inbox", 250).await, bodies(0..250));

    // A new key replaces the binding rather than adding one.
    let (status, body) = admin_call(
        &a,
        Method::PUT,
        "/api/parameters/shovel/%2F/ex-to-b",
        Some(
            json!({"value": {"src-exchange": "orders", "src-exchange-key": "us.#",
               "dest-uri": format!("amqp://guest:guest@{b_addr}/%2f"), "dest-queue": "inbox",
               "reconnect-delay": 0.1}}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "an update: {body}");
    wait_for(&a, "ex-to-b", "running again", |s| {
        s["state"] == "running" && s["messages_forwarded"] == 0
    })
    .await;
    publish_confirmed(&a_ch, "orders", "eu.fr", &bodies(300..305)).await;
    publish_confirmed(&a_ch, "orders", "us.ca", &bodies(400..405)).await;
    wait_for(&a, "ex-to-b", "5 forwarded", |s| {
        s["messages_forwarded"] == 5 && s["pending"] == 0
    })
    .await;
    assert_eq!(consume(&b_ch, "inbox", 5).await, bodies(400..405));
    assert_eq!(count(&b_ch, "inbox").await, 0, "eu.* is no longer bound");

    // The queue goes with the bridge.
    let (status, _) = admin_call(
        &a,
        Method::DELETE,
        "/api/parameters/shovel/%2F/ex-to-b",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let deadline = tokio::time::Instant::now() + WAIT;
    while status_of(&a, "/api/queues/%2F/amq.ferry.bridge.ex-to-b").await != StatusCode::NOT_FOUND {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bridge's queue outlived it"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn remote_amqp_exchange_source_binds_its_own_queue_with_the_key() {
    let b = TestBroker::start().await.unwrap();
    let a = TestBroker::start().await.unwrap();
    let b_conn = connect(&b).await;
    let b_ch = channel(&b_conn).await;
    exchange(
        &b_ch,
        "events",
        lapin::ExchangeKind::Direct,
        FieldTable::default(),
    )
    .await;
    define(
        &a,
        "from-b-ex",
        json!({"src-uri": b.amqp_url(), "src-exchange": "events", "src-exchange-key": "k",
               "dest-queue": "landing", "reconnect-delay": 0.1}),
    )
    .await;
    wait_for(&a, "from-b-ex", "running", |s| s["state"] == "running").await;
    publish_confirmed(&b_ch, "events", "other", &bodies(100..103)).await;
    publish_confirmed(&b_ch, "events", "k", &bodies(0..20)).await;
    let a_conn = connect(&a).await;
    let a_ch = channel(&a_conn).await;
    assert_eq!(consume(&a_ch, "landing", 20).await, bodies(0..20));
    wait_for(&a, "from-b-ex", "20 forwarded", |s| {
        s["messages_forwarded"] == 20
    })
    .await;
    assert_eq!(count(&a_ch, "landing").await, 0, "only key k was bound");
    a.stop().await;
    b.stop().await;
}

async fn produce_keyed(bootstrap: &str, topic: &str, range: std::ops::Range<usize>, keys: usize) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let sends = range.map(|i| {
        let producer = producer.clone();
        async move {
            let key = format!("k{}", i % keys);
            let body = format!("m-{i}");
            producer
                .send(
                    FutureRecord::to(topic).key(&key).payload(&body),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
        }
    });
    // In order per key: a key's records go to one partition, and one producer keeps order.
    for r in futures::future::join_all(sends).await {
        r.expect("produced");
    }
}

/// Sum over partitions of the group's committed offsets on `topic` (Kafka OffsetFetch).
async fn committed_total(bootstrap: String, group: &str, topic: &str, partitions: i32) -> i64 {
    let (group, topic) = (group.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", &group)
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(&topic, p);
        }
        let offsets = c.committed_offsets(tpl, Duration::from_secs(5)).unwrap();
        offsets
            .elements()
            .iter()
            .map(|e| match e.offset() {
                rdkafka::Offset::Offset(o) => o,
                _ => 0,
            })
            .sum()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_topic_source_resumes_from_its_group_after_a_restart() {
    const TOTAL: usize = 3000;
    const PREFETCH: usize = 100;
    let a_dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start().await.unwrap();
    let a = TestBroker::with(|c| c.data_dir(a_dir.path()))
        .await
        .unwrap();
    a.core()
        .create_topic("clicks", 3, Default::default())
        .await
        .unwrap();
    define(
        &a,
        "clicks-out",
        json!({"src-topic": "clicks", "dest-uri": b.amqp_url(), "dest-queue": "inbox",
               "src-prefetch-count": PREFETCH, "reconnect-delay": 0.1}),
    )
    .await;
    wait_for(&a, "clicks-out", "running", |s| s["state"] == "running").await;
    produce_keyed(&a.kafka_bootstrap(), "clicks", 0..TOTAL / 2, 6).await;
    wait_for(&a, "clicks-out", "part forwarded", |s| {
        s["messages_forwarded"].as_u64() >= Some(300)
    })
    .await;
    // The bridging broker restarts mid-stream; its position is the group's committed offsets.
    a.stop().await;
    let a = TestBroker::with(|c| c.data_dir(a_dir.path()))
        .await
        .unwrap();
    produce_keyed(&a.kafka_bootstrap(), "clicks", TOTAL / 2..TOTAL, 6).await;
    let b_conn = connect(&b).await;
    let b_ch = channel(&b_conn).await;
    let (all, first) = consume_distinct(&b_ch, "inbox", TOTAL).await;
    let mut expected = bodies(0..TOTAL);
    expected.sort();
    let mut got = first.clone();
    got.sort();
    assert_eq!(got, expected, "every record, once at least");
    for key in 0..6 {
        let of_key: Vec<usize> = first
            .iter()
            .map(|m| m["m-".len()..].parse::<usize>().unwrap())
            .filter(|i| i % 6 == key)
            .collect();
        assert!(
            of_key.windows(2).all(|w| w[0] < w[1]),
            "key k{key} out of order"
        );
    }
    assert!(
        all.len() - TOTAL <= PREFETCH,
        "{} duplicates: more than the batches in flight at the restart",
        all.len() - TOTAL
    );
    // The position is an ordinary Ferry consumer group, read back with Kafka's OffsetFetch.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let total =
            committed_total(a.kafka_bootstrap(), "ferry-bridge-clicks-out", "clicks", 3).await;
        if total == TOTAL as i64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "committed {total} of {TOTAL}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_ferry_pulling_from_kafka_loses_nothing() {
    const PREFETCH: usize = 200;
    let b = TestBroker::start().await.unwrap();
    produce_keyed(&b.kafka_bootstrap(), "src", 0..N, 1).await;
    let dir = tempfile::tempdir().unwrap();
    // A short session, so the killed node's group member is expired quickly and the restarted
    // one gets the partition (librdkafka's default is 45 s).
    std::fs::write(
        dir.path().join("ferry.toml"),
        format!(
            "[[bridges]]\nname = \"pull\"\nsrc-uri = \"kafka://{}?session.timeout.ms=6000\"\n\
             src-topic = \"src\"\ndest-queue = \"landing\"\nsrc-prefetch-count = {PREFETCH}\n\
             reconnect-delay = 0.1\n",
            b.kafka_bootstrap()
        ),
    )
    .unwrap();
    let (amqp, http) = (free_port(), free_port());
    let mut a = spawn_bridging_node(dir.path(), amqp, http);
    wait_ready(http).await;
    let a_url = format!("amqp://guest:guest@127.0.0.1:{amqp}/%2f");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        // A fresh connection each time: the queue appears only once the bridge connected.
        let conn = common::amqp::connect_url(&a_url).await;
        let ch = channel(&conn).await;
        let depth = match ch
            .queue_declare(
                "landing".into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
        {
            Ok(q) => q.message_count() as usize,
            Err(_) => 0,
        };
        let _ = conn.close(200, "ok".into()).await;
        if depth >= N / 5 {
            assert!(depth < N, "the bridge finished before the kill");
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
    let mut a = spawn_bridging_node(dir.path(), amqp, http);
    wait_ready(http).await;
    let conn = common::amqp::connect_url(&a_url).await;
    let ch = channel(&conn).await;
    let (all, first) = consume_distinct(&ch, "landing", N).await;
    assert_eq!(first, bodies(0..N), "every record, first copies in order");
    // Durable in Ferry but not committed at the kill: at most the batch whose commit was
    // outstanding and the two the pump had in flight (one commit outstanding at a time).
    let duplicates = all.len() - N;
    eprintln!("kill_9_of_the_ferry_pulling_from_kafka: {duplicates} duplicates");
    assert!(
        duplicates <= 3 * PREFETCH.div_ceil(2),
        "{duplicates} duplicates: more than the three batches unsettled at once"
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let total = committed_total(b.kafka_bootstrap(), "ferry-bridge-pull", "src", 1).await;
        if total == N as i64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "committed {total} of {N}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.kill().unwrap();
    a.wait().unwrap();
    b.stop().await;
}

// ---- amqps:// remotes ----

#[tokio::test]
async fn amqps_remote_both_ways_with_client_certificates() {
    use ferry::tls::generate::{generate, CertRequest};
    let dir = tempfile::tempdir().unwrap();
    let g = generate(&CertRequest {
        dns: vec!["localhost".into()],
        ips: vec!["127.0.0.1".parse().unwrap()],
        clients: vec!["edge".into()],
        out: dir.path().to_path_buf(),
        days: 2,
        force: false,
    })
    .unwrap();
    let gc = g.clone();
    let b = TestBroker::with(move |builder| {
        builder.configure(move |c| {
            c.amqp_tls_listen = "127.0.0.1:0".into();
            c.tls.cert_file = gc.server_cert.display().to_string();
            c.tls.key_file = gc.server_key.display().to_string();
            c.tls.ca_file = gc.ca_cert.display().to_string();
            c.tls.client_auth = "required".into();
        })
    })
    .await
    .unwrap();
    let port = b.amqp_tls_addr().unwrap().port();
    let (_, cert, key) = &g.clients[0];
    let enc = |p: &std::path::Path| p.display().to_string().replace('/', "%2F");
    let tls_query = format!(
        "cacertfile={}&certfile={}&keyfile={}&verify=verify_peer",
        enc(&g.ca_cert),
        enc(cert),
        enc(key)
    );
    let a = TestBroker::start().await.unwrap();
    // Out: a Ferry queue to the TLS listener by name; in: the reverse, dialled by address
    // with the certificate's name given as SNI.
    define(
        &a,
        "tls-out",
        json!({"src-queue": "out",
               "dest-uri": format!("amqps://guest:guest@localhost:{port}/%2f?{tls_query}"),
               "dest-queue": "inbox", "reconnect-delay": 0.1}),
    )
    .await;
    define(
        &a,
        "tls-in",
        json!({"src-uri": format!(
                   "amqps://guest:guest@127.0.0.1:{port}/%2f?{tls_query}&server_name_indication=localhost"),
               "src-queue": "remote.src", "dest-queue": "landing", "reconnect-delay": 0.1}),
    )
    .await;
    // Without a client certificate the required-client-auth listener refuses the handshake.
    define(
        &a,
        "tls-no-cert",
        json!({"src-queue": "unused",
               "dest-uri": format!("amqps://guest:guest@localhost:{port}/%2f?cacertfile={}",
                                   enc(&g.ca_cert)),
               "dest-queue": "never", "reconnect-delay": 0.1}),
    )
    .await;
    wait_for(&a, "tls-out", "running", |s| s["state"] == "running").await;
    wait_for(&a, "tls-in", "running", |s| s["state"] == "running").await;
    wait_for(&a, "tls-no-cert", "blocked", |s| s["state"] == "blocked").await;

    let a_conn = connect(&a).await;
    let a_ch = channel(&a_conn).await;
    publish_confirmed(&a_ch, "", "out", &bodies(0..50)).await;
    // B's plain listener is the test's own view of B.
    let b_conn = connect(&b).await;
    let b_ch = channel(&b_conn).await;
    assert_eq!(consume(&b_ch, "inbox", 50).await, bodies(0..50));
    publish_confirmed(&b_ch, "", "remote.src", &bodies(100..150)).await;
    assert_eq!(consume(&a_ch, "landing", 50).await, bodies(100..150));
    let s = shovel(&a, "tls-out").await;
    assert!(
        !s.to_string().contains("keyfile"),
        "the status shows no TLS file paths: {s}"
    );
    a.stop().await;
    b.stop().await;
}
