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

mod common;
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
