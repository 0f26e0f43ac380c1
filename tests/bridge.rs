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
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

mod common;
use common::admin::admin_call;
use common::amqp::{channel, connect, declare_durable, exchange};

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
    let q = b_ch
        .queue_declare(
            "inbox".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 0, "no duplicates were delivered");
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
        let q = ch
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        assert_eq!(q.message_count(), 0, "{name}: no copy came round again");
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
    wait_for(&a, "pull", "blocked on the full queue", |s| {
        s["state"] == "blocked" && s["messages_forwarded"] == 10
    })
    .await;
    // A batch refused part-way is sent again whole, so a message may repeat (the
    // at-least-once window, at most one batch); none is lost and first copies are in order.
    let (all, firsts) = consume_distinct(&a_ch, "landing", 30).await;
    assert_eq!(firsts, bodies(0..30));
    assert!(
        all.len() - firsts.len() <= 5 * 20,
        "{} duplicates",
        all.len() - 30
    );
    assert_eq!(all[..10], bodies(0..10)[..]);
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
