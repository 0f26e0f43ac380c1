//! The management API (`/api/overview`, `/api/nodes`, `/api/connections`, `/api/channels`,
//! `/api/consumers`) against a `TestBroker` with real clients: lapin and rdkafka connections
//! are listed with their protocol, user and client name, AMQP channels and consumers with their
//! prefetch, and closing a connection reaches the client (AMQP: 320 CONNECTION_FORCED with the
//! reason; Kafka: the socket drops).

use std::time::Duration;

use ferry::testing::TestBroker;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use reqwest::{Client, Method, StatusCode};
use serde_json::Value;

use crate::common;
use common::admin::admin_call as call;
use common::amqp::{amqp_code, declare, publish};

async fn get(broker: &TestBroker, path: &str) -> Value {
    let (status, body) = call(broker, Method::GET, path, None).await;
    assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
    body
}

fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn close(broker: &TestBroker, name: &str, reason: Option<&str>) -> StatusCode {
    let mut req = Client::new()
        .delete(format!(
            "{}/api/connections/{}",
            broker.http_url(),
            encode(name)
        ))
        .basic_auth("admin", Some("admin"));
    if let Some(r) = reason {
        req = req.header("X-Reason", r);
    }
    req.send().await.expect("DELETE connection").status()
}

/// Polls `GET path` every 20 ms for up to 10 s until `cond` holds; returns the last body.
async fn wait_for(broker: &TestBroker, path: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let body = get(broker, path).await;
        if cond(&body) || tokio::time::Instant::now() >= deadline {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn of_protocol<'a>(list: &'a Value, protocol: &str) -> Vec<&'a Value> {
    list.as_array()
        .expect("a JSON array")
        .iter()
        .filter(|c| c["protocol"] == protocol)
        .collect()
}

#[tokio::test]
async fn amqp_connection_channels_and_consumers_are_listed_and_close_reaches_the_client() {
    let broker = TestBroker::start().await.unwrap();
    let conn = Connection::connect(
        &broker.amqp_url(),
        ConnectionProperties::default().with_connection_name("orders-service".into()),
    )
    .await
    .expect("connect");
    let events = conn.events_listener();
    let ch = conn.create_channel().await.expect("channel");
    ch.basic_qos(7, BasicQosOptions::default())
        .await
        .expect("qos");
    declare(&ch, "jobs").await;
    let _consumer = ch
        .basic_consume(
            "jobs".into(),
            "worker-1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");

    let list = get(&broker, "/api/connections").await;
    let amqp = of_protocol(&list, "amqp");
    assert_eq!(amqp.len(), 1, "{list}");
    let c = amqp[0];
    assert_eq!(c["user"], "guest");
    assert_eq!(c["vhost"], "/");
    assert_eq!(c["client_properties"]["connection_name"], "orders-service");
    assert_eq!(c["client_name"], "orders-service");
    assert_eq!(c["ssl"], false);
    assert_eq!(c["channels"], 1);
    assert_eq!(c["peer_host"], "127.0.0.1");
    assert_eq!(c["port"], broker.amqp_addr().port());
    assert!(c["recv_oct"].as_u64().unwrap() > 0, "{c}");
    assert!(c["send_oct"].as_u64().unwrap() > 0, "{c}");
    assert!(c["connected_at"].as_u64().unwrap() > 1_700_000_000_000);
    assert!(c["recv_oct_details"]["rate"].is_number(), "{c}");
    let name = c["name"].as_str().unwrap().to_string();
    assert_eq!(
        name,
        format!("127.0.0.1:{} -> {}", c["peer_port"], broker.amqp_addr())
    );

    let (status, one) = call(
        &broker,
        Method::GET,
        &format!("/api/connections/{}", encode(&name)),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(one["name"], name.as_str());

    let channels = get(&broker, "/api/channels").await;
    assert_eq!(channels.as_array().unwrap().len(), 1, "{channels}");
    let channel = &channels[0];
    assert_eq!(channel["number"], 1);
    assert_eq!(channel["prefetch_count"], 7);
    assert_eq!(channel["consumer_count"], 1);
    assert_eq!(channel["connection_details"]["name"], name.as_str());
    assert_eq!(channel["user"], "guest");

    let consumers = get(&broker, "/api/consumers").await;
    assert_eq!(consumers.as_array().unwrap().len(), 1, "{consumers}");
    let consumer = &consumers[0];
    assert_eq!(consumer["consumer_tag"], "worker-1");
    assert_eq!(consumer["queue"]["name"], "jobs");
    assert_eq!(consumer["queue"]["vhost"], "/");
    assert_eq!(consumer["prefetch_count"], 7);
    assert_eq!(consumer["ack_required"], true);
    assert_eq!(
        consumer["channel_details"]["connection_name"],
        name.as_str()
    );

    // basic.cancel takes the consumer off the list.
    ch.basic_cancel("worker-1".into(), BasicCancelOptions::default())
        .await
        .expect("cancel");
    assert_eq!(get(&broker, "/api/consumers").await, Value::Array(vec![]));

    // A channel leaves the list when it closes.
    let second = conn.create_channel().await.expect("second channel");
    assert_eq!(
        get(&broker, "/api/channels")
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );
    second
        .close(200, "done".into())
        .await
        .expect("channel.close");
    let channels = get(&broker, "/api/channels").await;
    assert_eq!(channels.as_array().unwrap().len(), 1, "{channels}");
    assert_eq!(channels[0]["number"], 1);

    assert_eq!(
        close(&broker, &name, Some("maintenance window")).await,
        StatusCode::NO_CONTENT
    );
    let error = common::amqp::connection_error(events).await;
    assert_eq!(amqp_code(&error), Some(320), "{error}");
    assert!(
        error.to_string().contains("maintenance window"),
        "reason reaches the client: {error}"
    );
    let after = wait_for(&broker, "/api/connections", |l| {
        of_protocol(l, "amqp").is_empty()
    })
    .await;
    assert!(of_protocol(&after, "amqp").is_empty(), "{after}");
    assert_eq!(
        close(&broker, &name, None).await,
        StatusCode::NOT_FOUND,
        "a closed connection is gone"
    );
    let (status, body) = call(&broker, Method::GET, "/api/connections/nobody", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "not_found");
}

#[tokio::test]
async fn kafka_clients_are_listed_by_client_id_and_close_drops_the_socket() {
    let broker = TestBroker::start().await.unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.kafka_bootstrap())
        .set("client.id", "billing-producer")
        .create()
        .expect("producer");
    producer
        .send(
            FutureRecord::<(), _>::to("invoices").payload("x"),
            Duration::from_secs(10),
        )
        .await
        .expect("produce");

    let list = get(&broker, "/api/connections").await;
    let kafka = of_protocol(&list, "kafka");
    assert!(!kafka.is_empty(), "{list}");
    for c in &kafka {
        assert_eq!(c["client_id"], "billing-producer", "{c}");
        assert_eq!(c["user"], "ANONYMOUS");
        assert_eq!(c["ssl"], false);
        assert_eq!(c["port"], broker.kafka_addr().port());
        assert!(c.get("channels").is_none(), "channels are AMQP's");
    }
    let produced_over: Vec<String> = kafka
        .iter()
        .filter(|c| c["recv_oct"].as_u64().unwrap() > 0)
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert!(!produced_over.is_empty(), "{list}");

    for name in &produced_over {
        assert_eq!(close(&broker, name, None).await, StatusCode::NO_CONTENT);
    }
    // The server dropped those sockets: their names (peer ports) leave the list, whatever
    // the client reconnects with.
    let after = wait_for(&broker, "/api/connections", |l| {
        l.as_array()
            .unwrap()
            .iter()
            .all(|c| !produced_over.iter().any(|n| c["name"] == n.as_str()))
    })
    .await;
    for name in &produced_over {
        assert!(
            after
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["name"] != name.as_str()),
            "{name} still listed: {after}"
        );
    }
    // And the client carries on over a new connection.
    producer
        .send(
            FutureRecord::<(), _>::to("invoices").payload("y"),
            Duration::from_secs(10),
        )
        .await
        .expect("produce after the close");
}

#[tokio::test]
async fn overview_and_nodes_describe_the_broker() {
    let broker = TestBroker::start().await.unwrap();
    let conn = common::amqp::connect(&broker).await;
    let ch = conn.create_channel().await.expect("channel");
    declare(&ch, "backlog").await;
    for i in 0..5 {
        publish(&ch, "", "backlog", format!("m{i}").as_bytes()).await;
    }
    let overview = wait_for(&broker, "/api/overview", |o| {
        o["queue_totals"]["messages_ready"] == 5
    })
    .await;
    assert_eq!(overview["queue_totals"]["messages_ready"], 5, "{overview}");
    assert_eq!(overview["queue_totals"]["messages"], 5);
    assert_eq!(overview["object_totals"]["connections"], 1);
    assert_eq!(overview["object_totals"]["channels"], 1);
    assert_eq!(overview["object_totals"]["queues"], 1);
    assert_eq!(overview["product_name"], "Ferry");
    assert_eq!(overview["alarms"], Value::Array(vec![]));
    let listeners = overview["listeners"].as_array().unwrap();
    for (protocol, addr) in [("amqp", broker.amqp_addr()), ("kafka", broker.kafka_addr())] {
        assert!(
            listeners
                .iter()
                .any(|l| l["protocol"] == protocol && l["port"] == addr.port()),
            "{protocol} listener in {overview}"
        );
    }
    // Counters are process-wide (other tests' brokers publish too): at least ours.
    assert!(
        overview["message_stats"]["publish"].as_u64().unwrap() >= 5,
        "{overview}"
    );
    assert!(overview["message_stats"]["publish_details"]["rate"].is_number());

    let nodes = get(&broker, "/api/nodes").await;
    let node = &nodes.as_array().expect("a list")[0];
    assert_eq!(node["name"], overview["node"]);
    assert!(node["mem_used"].as_u64().unwrap() > 0, "{node}");
    assert!(node["fd_used"].as_u64().unwrap() > 0, "{node}");
    assert!(node["disk_free"].as_u64().unwrap() > 0, "{node}");
    assert!(node["uptime"].as_u64().is_some(), "{node}");
    assert!(node["proc_used"].as_u64().unwrap() > 0, "{node}");
    assert_eq!(node["mem_alarm"], false);
    assert_eq!(node["disk_free_alarm"], false);
}

/// Polls `GET path` every 250 ms for up to 20 s (history ticks every 5 s) until `cond` holds.
async fn wait_long(broker: &TestBroker, path: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let body = get(broker, path).await;
        if cond(&body) || tokio::time::Instant::now() >= deadline {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn newest_sample(details: &Value) -> Option<f64> {
    details["samples"].as_array()?.first()?["sample"].as_f64()
}

#[tokio::test]
async fn history_samples_follow_a_queue_a_topic_and_the_overview() {
    let broker = TestBroker::start().await.unwrap();
    let conn = common::amqp::connect(&broker).await;
    let ch = conn.create_channel().await.expect("channel");
    declare(&ch, "filling").await;
    for i in 0..3 {
        publish(&ch, "", "filling", format!("m{i}").as_bytes()).await;
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.kafka_bootstrap())
        .create()
        .expect("producer");
    for i in 0..4 {
        producer
            .send(
                FutureRecord::<(), _>::to("clicks").payload(&format!("c{i}")),
                Duration::from_secs(10),
            )
            .await
            .expect("produce");
    }

    let queue_path = "/api/queues/%2F/filling?lengths_age=600&lengths_incr=5";
    let q = wait_long(&broker, queue_path, |q| {
        newest_sample(&q["messages_ready_details"]) == Some(3.0)
    })
    .await;
    assert_eq!(
        newest_sample(&q["messages_ready_details"]),
        Some(3.0),
        "{q}"
    );
    assert_eq!(q["messages_ready"], 3);
    assert_eq!(
        newest_sample(&q["message_stats"]["publish_details"]),
        Some(3.0),
        "{q}"
    );

    // Two more: a later sample holds 5, the earlier one 3, and they are 5 s apart (newest
    // first, milliseconds since the epoch).
    for i in 3..5 {
        publish(&ch, "", "filling", format!("m{i}").as_bytes()).await;
    }
    let q = wait_long(&broker, queue_path, |q| {
        newest_sample(&q["messages_ready_details"]) == Some(5.0)
    })
    .await;
    let samples = q["messages_ready_details"]["samples"].as_array().unwrap();
    assert_eq!(samples[0]["sample"], 5.0, "{q}");
    let three = samples
        .iter()
        .find(|s| s["sample"] == 3.0)
        .unwrap_or_else(|| panic!("the earlier level is kept: {q}"));
    let apart = samples[0]["timestamp"].as_u64().unwrap() - three["timestamp"].as_u64().unwrap();
    assert!(apart >= 5000 && apart % 5000 == 0, "{q}");
    assert!(q["messages_ready_details"]["rate"].is_number());
    assert!(
        q["messages_ready_details"]["avg"].as_f64().unwrap() > 0.0,
        "{q}"
    );

    let t = wait_long(
        &broker,
        "/api/topics/clicks?lengths_age=60&lengths_incr=5",
        |t| newest_sample(&t["messages_in_details"]) == Some(4.0),
    )
    .await;
    assert_eq!(newest_sample(&t["messages_in_details"]), Some(4.0), "{t}");
    assert!(
        newest_sample(&t["size_bytes_details"]).unwrap() > 0.0,
        "{t}"
    );

    let o = get(&broker, "/api/overview?lengths_age=60&lengths_incr=5").await;
    assert!(
        newest_sample(&o["queue_totals"]["messages_ready_details"]).unwrap() >= 5.0,
        "{o}"
    );
    assert!(
        newest_sample(&o["message_stats"]["publish_details"]).unwrap() >= 5.0,
        "{o}"
    );
    assert!(newest_sample(&o["object_totals"]["connections_details"]).unwrap() >= 1.0);
    // Without the parameters only current rates come back.
    let plain = get(&broker, "/api/queues/%2F/filling").await;
    assert!(
        plain["messages_ready_details"]["rate"].is_number(),
        "{plain}"
    );
    assert!(plain["messages_ready_details"].get("samples").is_none());

    for bad in [
        "/api/overview?lengths_age=0",
        "/api/overview?lengths_age=600&lengths_incr=1",
        "/api/overview?lengths_age=90000",
        "/api/queues?lengths_incr=5",
        "/api/topics/clicks?msg_rates_age=10&msg_rates_incr=20",
    ] {
        let (status, body) = call(&broker, Method::GET, bad, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"], "bad_request");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_lag_history_and_kafka_clients_by_client_id() {
    use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
    let broker = TestBroker::start().await.unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.kafka_bootstrap())
        .set("client.id", "ledger-writer")
        .create()
        .expect("producer");
    for i in 0..6 {
        producer
            .send(
                FutureRecord::<(), _>::to("ledger").payload(&format!("r{i}")),
                Duration::from_secs(10),
            )
            .await
            .expect("produce");
    }
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.kafka_bootstrap())
        .set("group.id", "auditors")
        .set("client.id", "ledger-auditor")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&["ledger"]).expect("subscribe");
    // Read two of six and commit: the group lags by four.
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(20), consumer.recv())
            .await
            .expect("a record in time")
            .expect("record");
    }
    consumer
        .commit_consumer_state(CommitMode::Sync)
        .expect("commit");

    let g = wait_long(
        &broker,
        "/api/groups/auditors?lengths_age=60&lengths_incr=5",
        |g| newest_sample(&g["lag_details"]) == Some(4.0),
    )
    .await;
    assert_eq!(newest_sample(&g["lag_details"]), Some(4.0), "{g}");
    assert_eq!(newest_sample(&g["consumed_details"]), Some(2.0), "{g}");
    let member = &g["members"][0];
    assert_eq!(member["client_id"], "ledger-auditor", "{g}");
    assert_eq!(member["assignment"][0]["topic"], "ledger", "{g}");

    let clients = get(&broker, "/api/kafka/clients").await;
    let by_id = |id: &str| {
        clients
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["client_id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} in {clients}"))
    };
    let writer = by_id("ledger-writer");
    assert!(writer["recv_oct"].as_u64().unwrap() > 0, "{writer}");
    assert_eq!(writer["users"], serde_json::json!(["ANONYMOUS"]));
    assert_eq!(writer["groups"], serde_json::json!([]));
    let auditor = by_id("ledger-auditor");
    assert_eq!(
        auditor["groups"],
        serde_json::json!(["auditors"]),
        "{auditor}"
    );
    assert!(!auditor["connections"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn the_console_is_served_at_the_root_with_its_vendored_charts() {
    let broker = TestBroker::start().await.unwrap();
    let http = Client::new();
    let index = http
        .get(broker.http_url() + "/")
        .send()
        .await
        .expect("GET /");
    assert_eq!(index.status(), StatusCode::OK);
    let csp = index.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = index.text().await.unwrap();
    assert!(html.contains("/console/app.js") && html.contains("uPlot.iife.min.js"));
    for (path, kind) in [
        ("/console/app.js", "text/javascript"),
        ("/console/pages.js", "text/javascript"),
        ("/console/app.css", "text/css"),
        ("/console/vendor/uPlot.iife.min.js", "text/javascript"),
        ("/console/vendor/uPlot.min.css", "text/css"),
    ] {
        let r = http.get(broker.http_url() + path).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with(kind));
        assert!(!r.bytes().await.unwrap().is_empty());
    }
    let missing = http
        .get(broker.http_url() + "/console/../secret")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    // A 401 to the console carries no WWW-Authenticate (no browser dialog); to others it does.
    let plain = http
        .get(broker.http_url() + "/api/whoami")
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::UNAUTHORIZED);
    assert!(plain.headers().contains_key("www-authenticate"));
    let console = http
        .get(broker.http_url() + "/api/whoami")
        .header("X-Ferry-Console", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(console.status(), StatusCode::UNAUTHORIZED);
    assert!(!console.headers().contains_key("www-authenticate"));
    let me = get(&broker, "/api/whoami").await;
    assert_eq!(me["name"], "admin");
    assert!(
        me["tags"].as_str().unwrap().contains("administrator"),
        "{me}"
    );
}

#[tokio::test]
async fn topic_records_browse_from_a_timestamp_and_a_test_publish_reaches_the_topic() {
    let broker = TestBroker::start().await.unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.kafka_bootstrap())
        .create()
        .expect("producer");
    for (i, ts) in [1_000_000_000_000i64, 1_000_000_005_000, 1_000_000_010_000]
        .into_iter()
        .enumerate()
    {
        producer
            .send(
                FutureRecord::to("timeline")
                    .key(&format!("k{i}"))
                    .payload(&format!("v{i}"))
                    .timestamp(ts)
                    .headers(rdkafka::message::OwnedHeaders::new().insert(
                        rdkafka::message::Header {
                            key: "origin",
                            value: Some("test"),
                        },
                    )),
                Duration::from_secs(10),
            )
            .await
            .expect("produce");
    }
    let from_time = get(
        &broker,
        "/api/topics/timeline/records?timestamp=1000000004000",
    )
    .await;
    let offsets: Vec<i64> = from_time
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["offset"].as_i64().unwrap())
        .collect();
    assert_eq!(offsets, [1, 2], "{from_time}");
    assert_eq!(from_time[0]["key"], "k1");
    assert_eq!(from_time[0]["payload"], "v1");
    assert_eq!(from_time[0]["headers"]["origin"], "test");
    let last_one = get(&broker, "/api/topics/timeline/records?count=1").await;
    assert_eq!(last_one[0]["offset"], 2, "{last_one}");

    let (status, published) = call(
        &broker,
        Method::POST,
        "/api/exchanges/%2F/timeline/publish",
        Some(
            serde_json::json!({"routing_key": "k3", "payload": "from the console",
                                "properties": {"headers": {"source": "console"}}}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{published}");
    assert_eq!(published["routed"], true);
    let (_, records) = call(
        &broker,
        Method::GET,
        "/api/topics/timeline/records?offset=3",
        None,
    )
    .await;
    assert_eq!(records[0]["key"], "k3", "{records}");
    assert_eq!(records[0]["payload"], "from the console");

    for bad in [
        "/api/topics/timeline/records?count=0",
        "/api/topics/timeline/records?offset=1&timestamp=5",
    ] {
        let (status, _) = call(&broker, Method::GET, bad, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let (status, _) = call(
        &broker,
        Method::GET,
        "/api/topics/timeline/records?partition=7",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Issue 19's Kafka producer view: `/api/kafka/producers` lists an idempotent producer's id
/// with its last sequence and offset per partition, and a transactional producer's id with
/// its transactional id and Kafka's transaction state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_producers_show_sequences_and_transactions() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let broker = TestBroker::start().await.unwrap();
    let idempotent: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.kafka_bootstrap())
        .set("enable.idempotence", "true")
        .create()
        .expect("idempotent producer");
    for i in 0..3 {
        idempotent
            .send(
                FutureRecord::<(), _>::to("payments")
                    .partition(0)
                    .payload(&format!("p{i}")),
                Duration::from_secs(10),
            )
            .await
            .expect("produce");
    }
    let bootstrap = broker.kafka_bootstrap();
    tokio::task::spawn_blocking(move || {
        let timeout = Duration::from_secs(20);
        let p: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("transactional.id", "settle-1")
            .set("linger.ms", "0")
            .create()
            .expect("transactional producer");
        p.init_transactions(timeout).expect("init_transactions");
        p.begin_transaction().expect("begin");
        for v in ["s0", "s1"] {
            p.send(
                BaseRecord::<str, str>::to("settlements")
                    .partition(0)
                    .payload(v),
            )
            .map_err(|(e, _)| e)
            .expect("enqueue");
        }
        p.flush(timeout).expect("flushed");
        p.commit_transaction(timeout).expect("commit");
    })
    .await
    .unwrap();

    let producers = get(&broker, "/api/kafka/producers").await;
    let list = producers.as_array().expect("an array");
    let on = |topic: &str| {
        list.iter()
            .find(|p| {
                p["partitions"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|x| x["topic"] == topic))
            })
            .cloned()
            .unwrap_or_else(|| panic!("a producer on {topic} in {producers}"))
    };
    let plain = on("payments");
    assert_eq!(plain["transactional_id"], Value::Null, "{plain}");
    assert_eq!(plain["partitions"][0]["partition"], 0, "{plain}");
    assert_eq!(plain["partitions"][0]["last_sequence"], 2, "{plain}");
    assert_eq!(plain["partitions"][0]["last_offset"], 2, "{plain}");

    let txn = on("settlements");
    assert_ne!(txn["producer_id"], plain["producer_id"], "{producers}");
    assert_eq!(txn["transactional_id"], "settle-1", "{txn}");
    assert_eq!(txn["transaction_state"], "CompleteCommit", "{txn}");
    assert_eq!(txn["partitions"][0]["last_sequence"], 1, "{txn}");
    assert_eq!(txn["partitions"][0]["last_offset"], 1, "{txn}");
    broker.stop().await;
}
