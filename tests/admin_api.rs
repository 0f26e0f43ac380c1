//! The admin HTTP API (`/api/...`, `docs/admin-api.yaml`) against a `TestBroker`: topic
//! create/list/describe/delete round trips, AMQP objects and consumer groups after real
//! traffic, errors as `{error, message}` with their status codes, and basic auth.

use std::time::Duration;

use ferry::testing::TestBroker;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

/// Sends an admin request as admin/admin; returns the status and the JSON body (Null if none).
async fn call(
    broker: &TestBroker,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Client::new()
        .request(method, format!("{}{path}", broker.http_url()))
        .basic_auth("admin", Some("admin"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let json = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    (status, json)
}

async fn get(broker: &TestBroker, path: &str) -> (StatusCode, Value) {
    call(broker, Method::GET, path, None).await
}

#[tokio::test]
async fn topics_create_list_describe_delete_round_trip() {
    let broker = TestBroker::start().await.unwrap();
    let (status, created) = call(
        &broker,
        Method::POST,
        "/api/topics",
        Some(json!({"name": "orders", "partitions": 3, "configs": {"retention.ms": "60000"}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["name"], "orders");
    assert_eq!(created["partition_count"], 3);
    assert_eq!(created["configs"]["retention.ms"], "60000");

    // Records appended through the core show in the offsets.
    let records = vec![ferry::log::batch::SimpleRecord {
        key: None,
        value: Some("x".into()),
        headers: vec![],
        timestamp: 1_700_000_000_000,
    }];
    let p1 = broker.core().partition("orders", 1).unwrap();
    p1.append(ferry::log::batch::encode_batch(&records))
        .await
        .unwrap();
    p1.append(ferry::log::batch::encode_batch(&records))
        .await
        .unwrap();

    let (status, list) = get(&broker, "/api/topics").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["orders"]);

    let (status, topic) = get(&broker, "/api/topics/orders").await;
    assert_eq!(status, StatusCode::OK);
    let parts = topic["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[1]["partition"], 1);
    assert_eq!(parts[1]["start_offset"], 0);
    assert_eq!(parts[1]["end_offset"], 2);
    assert_eq!(parts[0]["end_offset"], 0);
    assert!(topic["size_bytes"].as_u64().unwrap() > 0);

    let (status, err) = call(
        &broker,
        Method::POST,
        "/api/topics",
        Some(json!({"name": "orders"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(err["error"], "already_exists");
    assert!(err["message"].as_str().unwrap().contains("orders"));

    let (status, ()) = (
        call(&broker, Method::DELETE, "/api/topics/orders", None)
            .await
            .0,
        (),
    );
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(broker.core().topic("orders").is_none());
    let (status, err) = get(&broker, "/api/topics/orders").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(err["error"], "not_found");
    let (status, _) = call(&broker, Method::DELETE, "/api/topics/orders", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = get(&broker, "/api/topics").await;
    assert_eq!(list, json!([]));
    broker.stop().await;
}

#[tokio::test]
async fn bad_input_is_400_with_a_json_error() {
    let broker = TestBroker::start().await.unwrap();
    for body in [
        json!({"name": "bad name"}),
        json!({"name": "t", "partitions": 0}),
        json!({"name": "t", "configs": {"no.such.config": "1"}}),
        json!({"partitions": 1}),
        json!({"name": "t", "unknown": true}),
        json!("not an object"),
    ] {
        let (status, err) = call(&broker, Method::POST, "/api/topics", Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {err}");
        assert_eq!(err["error"], "bad_request", "{body}");
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Not JSON at all.
    let resp = Client::new()
        .post(format!("{}/api/topics", broker.http_url()))
        .basic_auth("admin", Some("admin"))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"], "bad_request");
    assert!(broker.core().topics().is_empty());

    let (status, err) = get(&broker, "/api/nothing-here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(err["error"], "not_found");
    broker.stop().await;
}

#[tokio::test]
async fn admin_routes_need_credentials_and_probes_do_not() {
    let broker = TestBroker::with(|b| {
        b.configure(|c| {
            c.observe.admin_user = "ops".into();
            c.observe.admin_password = "s3cret".into();
        })
    })
    .await
    .unwrap();
    let url = |p: &str| format!("{}{p}", broker.http_url());
    let client = Client::new();

    let resp = client.get(url("/api/topics")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp
        .headers()
        .get("www-authenticate")
        .is_some_and(|v| v.to_str().unwrap().starts_with("Basic")));
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"], "unauthorized");

    for (user, password) in [("ops", "wrong"), ("admin", "admin"), ("ops", "")] {
        let resp = client
            .get(url("/api/queues"))
            .basic_auth(user, Some(password))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{user}:{password}");
    }
    let resp = client
        .post(url("/api/topics"))
        .json(&json!({"name": "sneaky"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(broker.core().topic("sneaky").is_none());
    let resp = client
        .get(url("/api/topics"))
        .header("authorization", "Basic %%%")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let resp = client
        .get(url("/api/topics"))
        .basic_auth("ops", Some("s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    for open in ["/healthz", "/readyz", "/metrics"] {
        let resp = client.get(url(open)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{open}");
    }
    broker.stop().await;
}

#[tokio::test]
async fn empty_credentials_disable_the_admin_api() {
    let broker = TestBroker::with(|b| {
        b.configure(|c| {
            c.observe.admin_user = String::new();
            c.observe.admin_password = String::new();
        })
    })
    .await
    .unwrap();
    let resp = Client::new()
        .get(format!("{}/api/topics", broker.http_url()))
        .basic_auth("", Some(""))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    broker.stop().await;
}

#[tokio::test]
async fn queues_exchanges_and_bindings_after_amqp_declarations() {
    let broker = TestBroker::start().await.unwrap();
    let conn = Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch.exchange_declare(
        "events".into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), lapin::types::AMQPValue::LongInt(100));
    ch.queue_declare(
        "audit".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
    ch.queue_bind(
        "audit".into(),
        "events".into(),
        "order.*".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    for _ in 0..3 {
        ch.basic_publish(
            "events".into(),
            "order.created".into(),
            BasicPublishOptions::default(),
            b"e",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let consumer_ch = conn.create_channel().await.unwrap();
    let _consumer = consumer_ch
        .basic_consume(
            "audit".into(),
            "watcher".into(),
            BasicConsumeOptions {
                no_ack: false,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    consumer_ch
        .basic_qos(1, BasicQosOptions::default())
        .await
        .unwrap();

    // The consumer takes its deliveries asynchronously; wait for the counts to settle.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let audit = loop {
        let (status, queues) = get(&broker, "/api/queues").await;
        assert_eq!(status, StatusCode::OK);
        let audit = queues
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == "audit")
            .cloned()
            .expect("audit listed");
        if audit["ready"].as_u64().unwrap() + audit["unacked"].as_u64().unwrap() == 3
            && audit["unacked"].as_u64().unwrap() > 0
            || tokio::time::Instant::now() > deadline
        {
            break audit;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(audit["vhost"], "/");
    assert_eq!(audit["durable"], true);
    assert_eq!(audit["consumers"], 1);
    assert_eq!(audit["arguments"]["x-max-length"], 100);
    assert_eq!(
        audit["ready"].as_u64().unwrap() + audit["unacked"].as_u64().unwrap(),
        3
    );

    let (status, exchanges) = get(&broker, "/api/exchanges").await;
    assert_eq!(status, StatusCode::OK);
    let events = exchanges
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "events")
        .expect("events listed");
    assert_eq!(events["type"], "topic");
    assert_eq!(events["durable"], true);
    assert!(exchanges
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "amq.direct"));

    let (status, bindings) = get(&broker, "/api/bindings").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        bindings
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["source"] == "events"
                && b["destination"] == "audit"
                && b["destination_kind"] == "queue"
                && b["routing_key"] == "order.*"),
        "{bindings}"
    );
    conn.close(200, "bye".into()).await.unwrap();
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_show_committed_offsets_and_lag() {
    let broker = TestBroker::start().await.unwrap();
    let (status, _) = call(
        &broker,
        Method::POST,
        "/api/topics",
        Some(json!({"name": "payments", "partitions": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.kafka_bootstrap())
        .set("message.timeout.ms", "20000")
        .create()
        .unwrap();
    for i in 0..10 {
        let payload = format!("p{i}");
        producer
            .send(
                FutureRecord::<(), _>::to("payments")
                    .partition(0)
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let bootstrap = broker.kafka_bootstrap();
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "billing")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("payments", 0, Offset::Offset(6))
            .unwrap();
        c.commit(&tpl, CommitMode::Sync).unwrap();
    })
    .await
    .unwrap();

    let (status, groups) = get(&broker, "/api/groups").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        groups
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["group_id"] == "billing" && g["state"].is_string()),
        "{groups}"
    );
    let (status, group) = get(&broker, "/api/groups/billing").await;
    assert_eq!(status, StatusCode::OK, "{group}");
    assert_eq!(group["group_id"], "billing");
    assert_eq!(group["members"], json!([]));
    assert_eq!(
        group["offsets"],
        json!([{
            "topic": "payments",
            "partition": 0,
            "committed_offset": 6,
            "high_watermark": 10,
            "lag": 4,
        }])
    );
    assert_eq!(group["total_lag"], 4);

    let (status, err) = get(&broker, "/api/groups/nobody").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(err["error"], "not_found");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stable_group_shows_its_members_and_assignment() {
    let broker = TestBroker::start().await.unwrap();
    broker
        .core()
        .create_topic("shipments", 2, Default::default())
        .await
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bootstrap = broker.kafka_bootstrap();
    let stop_member = stop.clone();
    let member = tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "shipping")
            .set("client.id", "ship-1")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        c.subscribe(&["shipments"]).unwrap();
        while !stop_member.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = c.poll(Duration::from_millis(50));
        }
        c.unsubscribe();
    });

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let group = loop {
        let (status, group) = get(&broker, "/api/groups/shipping").await;
        if status == StatusCode::OK && group["state"] == "Stable" {
            break group;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "group never became Stable: {group}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(group["protocol_type"], "consumer");
    let members = group["members"].as_array().unwrap();
    assert_eq!(members.len(), 1, "{group}");
    assert_eq!(members[0]["client_id"], "ship-1");
    assert_eq!(
        members[0]["assignment"],
        json!([{"topic": "shipments", "partitions": [0, 1]}])
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    member.await.unwrap();
    broker.stop().await;
}
