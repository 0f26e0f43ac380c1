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

use crate::common;
use common::admin::admin_call as call;

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

/// Polls `path` until it answers `want` (bounded), returning the last body.
async fn wait_status(broker: &TestBroker, path: &str, want: StatusCode) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(broker, path).await;
        if status == want {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never answered {want}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn health_checks_answer_ok_or_503_with_a_reason() {
    let broker = TestBroker::start().await.unwrap();
    for path in [
        "/api/health/checks/alarms".to_string(),
        "/api/health/checks/local-alarms".to_string(),
        "/api/health/checks/protocol-listener/amqp".to_string(),
        "/api/health/checks/protocol-listener/kafka".to_string(),
        "/api/health/checks/virtual-hosts".to_string(),
        "/api/health/checks/node-is-quorum-critical".to_string(),
        "/api/health/checks/partitions".to_string(),
        "/api/health/checks/ready".to_string(),
        format!(
            "/api/health/checks/port-listener/{}",
            broker.amqp_addr().port()
        ),
        format!(
            "/api/health/checks/port-listener/{}",
            broker.kafka_addr().port()
        ),
    ] {
        let (status, body) = get(&broker, &path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(body, json!({"status": "ok"}), "{path}");
    }
    // A port nothing of ours listens on.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (status, body) = get(&broker, &format!("/api/health/checks/port-listener/{free}")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["status"], "failed");
    assert!(
        body["reason"].as_str().unwrap().contains("no listener"),
        "{body}"
    );
    let (status, _) = get(&broker, "/api/health/checks/protocol-listener/stomp").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Like every /api/ route, the checks need the admin credentials.
    let resp = Client::new()
        .get(format!("{}/api/health/checks/alarms", broker.http_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    broker.stop().await;
}

#[tokio::test]
async fn the_alarm_check_fails_when_the_disk_limit_is_above_the_free_space() {
    // No disk has u64::MAX bytes free, so the disk alarm must go off.
    let broker = TestBroker::with(|b| b.configure(|c| c.amqp.disk_free_limit_bytes = u64::MAX))
        .await
        .unwrap();
    let body = wait_status(
        &broker,
        "/api/health/checks/alarms",
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    assert_eq!(body["status"], "failed");
    assert!(body["reason"].as_str().unwrap().contains("disk"), "{body}");
    // Clearing the alarm turns the check back to ok.
    broker.core().router().set_resource_alarm(None);
    let (status, _) = get(&broker, "/api/health/checks/alarms").await;
    assert_eq!(status, StatusCode::OK);
    broker.stop().await;
}

#[tokio::test]
async fn queues_exchanges_and_bindings_are_created_and_deleted() {
    let broker = TestBroker::start().await.unwrap();
    let put = |path: &'static str, body: Value| {
        let broker = &broker;
        async move { call(broker, Method::PUT, path, Some(body)).await }
    };
    let (s, ex) = put("/api/exchanges/%2F/events", json!({"type": "topic"})).await;
    assert_eq!(s, StatusCode::CREATED, "{ex}");
    assert_eq!(ex["type"], "topic");
    assert_eq!(ex["durable"], true);
    // The same again is fine (an idempotent declare); another type conflicts.
    let (s, _) = put("/api/exchanges/%2F/events", json!({"type": "topic"})).await;
    assert_eq!(s, StatusCode::OK);
    let (s, err) = put("/api/exchanges/%2F/events", json!({"type": "fanout"})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{err}");
    assert_eq!(err["error"], "conflict");
    let (s, err) = put("/api/exchanges/%2F/x", json!({"type": "nonsense"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{err}");
    let (s, _) = put("/api/exchanges/%2F/amq.mine", json!({"type": "direct"})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = put("/api/exchanges/other/events", json!({"type": "direct"})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let (s, q) = put(
        "/api/queues/%2F/audit",
        json!({"arguments": {"x-max-length": 2}}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{q}");
    let (s, err) = put(
        "/api/queues/%2F/bad",
        json!({"arguments": {"x-max-length": "lots"}}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{err}");
    let (s, err) = put("/api/queues/%2F/audit", json!({"durable": false})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{err}");

    let binding = json!({"source": "events", "destination": "audit", "routing_key": "order.*"});
    let (s, b) = call(
        &broker,
        Method::POST,
        "/api/bindings",
        Some(binding.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, _) = call(
        &broker,
        Method::POST,
        "/api/bindings",
        Some(json!({"source": "events", "destination": "nowhere"})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // What the admin API declared routes real AMQP traffic.
    let conn = Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for key in ["order.created", "user.created", "order.paid"] {
        ch.basic_publish(
            "events".into(),
            key.into(),
            BasicPublishOptions::default(),
            key.as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let (_, q) = get(&broker, "/api/queues/%2F/audit").await;
    assert_eq!(q["ready"], 2, "{q}");

    // Browsing shows both, oldest first, and consumes nothing.
    let (s, msgs) = get(&broker, "/api/queues/%2F/audit/messages?count=10").await;
    assert_eq!(s, StatusCode::OK, "{msgs}");
    let bodies: Vec<&str> = msgs
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["payload"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["order.created", "order.paid"]);
    assert_eq!(msgs[0]["routing_key"], "order.created");
    assert_eq!(msgs[0]["exchange"], "events");
    let got = ch
        .basic_get("audit".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("browsing left the message in the queue");
    assert_eq!(got.delivery.data, b"order.created");

    let (s, _) = call(
        &broker,
        Method::DELETE,
        "/api/bindings",
        Some(binding.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = call(&broker, Method::DELETE, "/api/bindings", Some(binding)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, purged) = call(
        &broker,
        Method::DELETE,
        "/api/queues/%2F/audit/contents",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(purged["purged"], 1);
    let (s, _) = call(&broker, Method::DELETE, "/api/exchanges/%2F/events", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = call(&broker, Method::DELETE, "/api/exchanges/%2F/events", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = call(&broker, Method::DELETE, "/api/queues/%2F/audit", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(broker.core().router().queue("/", "audit").is_none());
    conn.close(200, "bye".into()).await.unwrap();
    broker.stop().await;
}

#[tokio::test]
async fn replay_to_an_unroutable_target_keeps_the_messages() {
    let broker = TestBroker::start().await.unwrap();
    for (path, body) in [
        ("/api/exchanges/%2F/sink", json!({"type": "direct"})),
        ("/api/queues/%2F/parking", json!({})),
        ("/api/queues/%2F/retry", json!({})),
    ] {
        let (s, b) = call(&broker, Method::PUT, path, Some(body)).await;
        assert_eq!(s, StatusCode::CREATED, "{path}: {b}");
    }
    let conn = Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for i in 0..4 {
        ch.basic_publish(
            "".into(),
            "parking".into(),
            BasicPublishOptions::default(),
            format!("m{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    // No death history and no target: nothing moves.
    let (s, r) = call(
        &broker,
        Method::POST,
        "/api/queues/%2F/parking/replay",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["replayed"], 0);
    assert_eq!(r["remaining"], 4);
    // An exchange that routes nowhere: nothing moves either, and the reason says so.
    let (_, r) = call(
        &broker,
        Method::POST,
        "/api/queues/%2F/parking/replay",
        Some(json!({"exchange": "sink", "routing_key": "x"})),
    )
    .await;
    assert_eq!(r["replayed"], 0, "{r}");
    assert!(r["errors"][0].as_str().unwrap().contains("no queue"), "{r}");
    assert_eq!(r["remaining"], 4);
    // The default exchange to `retry`: two of them move, in order.
    let (_, r) = call(
        &broker,
        Method::POST,
        "/api/queues/%2F/parking/replay",
        Some(json!({"exchange": "", "routing_key": "retry", "count": 2})),
    )
    .await;
    assert_eq!(r["replayed"], 2, "{r}");
    assert_eq!(r["remaining"], 2);
    let (_, msgs) = get(&broker, "/api/queues/%2F/retry/messages?count=10").await;
    let bodies: Vec<&str> = msgs
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["payload"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["m0", "m1"]);
    let (s, _) = call(
        &broker,
        Method::POST,
        "/api/queues/%2F/parking/replay",
        Some(json!({"exchange": "missing"})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    conn.close(200, "bye".into()).await.unwrap();
    broker.stop().await;
}

#[tokio::test]
async fn the_alarm_check_fails_on_the_memory_alarm_too() {
    let broker = TestBroker::start().await.unwrap();
    let (status, _) = get(&broker, "/api/health/checks/alarms").await;
    assert_eq!(status, StatusCode::OK);
    // A watermark of 0 raises the memory alarm at once (RabbitMQ's way to stop publishing).
    broker.set_memory_high_watermark(ferry::observe::alarms::Watermark::Relative(0.0));
    let body = wait_status(
        &broker,
        "/api/health/checks/local-alarms",
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    assert!(
        body["reason"].as_str().unwrap().contains("memory"),
        "{body}"
    );
    broker.stop().await;
}

/// Issue 12: the admin API accepts nothing an AMQP client could not have declared.
#[tokio::test]
async fn declarations_follow_the_protocol_limits() {
    let broker = TestBroker::start().await.unwrap();
    let long = "e".repeat(300);
    let (status, err) = call(
        &broker,
        Method::PUT,
        &format!("/api/exchanges/%2F/{long}"),
        Some(json!({"type": "direct"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["error"], "bad_request");
    assert!(
        err["message"].as_str().unwrap().contains("too long"),
        "{err}"
    );
    assert!(broker.core().router().exchange("/", &long).is_none());

    let (status, err) = call(
        &broker,
        Method::PUT,
        &format!("/api/queues/%2F/{}", "q".repeat(256)),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");

    // 255 bytes is the limit, not one less.
    let (status, _) = call(
        &broker,
        Method::PUT,
        &format!("/api/queues/%2F/{}", "q".repeat(255)),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);

    let big = "a".repeat(1_500_000);
    let (status, err) = call(
        &broker,
        Method::PUT,
        "/api/queues/%2F/big-args",
        Some(json!({"arguments": {"x-note": big}})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["error"], "bad_request");
    assert!(broker.core().router().queue("/", "big-args").is_none());

    let (status, _) = call(
        &broker,
        Method::PUT,
        "/api/queues/%2F/target",
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, err) = call(
        &broker,
        Method::POST,
        "/api/bindings",
        Some(json!({"source": "amq.direct", "destination": "target", "routing_key": "k", "arguments": [1]})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["error"], "bad_request");
    let (_, bindings) = get(&broker, "/api/bindings").await;
    assert!(
        !bindings
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["destination"] == "target"),
        "{bindings}"
    );
    let (status, err) = call(
        &broker,
        Method::POST,
        "/api/bindings",
        Some(json!({"source": "amq.direct", "destination": "target", "routing_key": "k".repeat(256)})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    broker.stop().await;
}

/// Issue 12: errors axum makes before a handler runs answer JSON like every other error.
#[tokio::test]
async fn method_and_query_errors_answer_json() {
    let broker = TestBroker::start().await.unwrap();
    let (status, err) = call(&broker, Method::PATCH, "/api/topics", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{err}");
    assert_eq!(err["error"], "method_not_allowed");
    assert!(err["message"].is_string());

    let (status, _) = call(&broker, Method::PUT, "/api/queues/%2F/dlq", Some(json!({}))).await;
    assert_eq!(status, StatusCode::CREATED);
    for path in [
        "/api/queues/%2F/dlq/messages?count=many",
        "/api/queues/%2F/dlq?if_empty=maybe",
    ] {
        let method = if path.contains("messages") {
            Method::GET
        } else {
            Method::DELETE
        };
        let (status, err) = call(&broker, method, path, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {err}");
        assert_eq!(err["error"], "bad_request", "{path}");
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{path}: {err}"
        );
    }
    assert!(broker.core().router().queue("/", "dlq").is_some());
    broker.stop().await;
}
