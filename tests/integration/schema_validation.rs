//! Validation on publish beyond Kafka produce (issue 18): native SDK publishes to a validating
//! topic, exchange and queue are refused with the typed `SchemaRejected` error (a batch whole);
//! a queue declared with `x-schema-validation` nacks (lapin, confirm mode) or dead-letters
//! with reason `schema`; AMQP publishes to a validating topic's own exchange face are checked
//! too, and a Kafka consumer reads only the valid ones. Refusals count in
//! `ferry_schema_rejections_total`. Names are unique per test: the metrics registry is
//! process-wide.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry::client::native::{EventMetadata, EventPublisher, NativeClientError, PublishConfig};
use ferry::testing::TestBroker;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use reqwest::Client;
use serde_json::json;

use crate::common;

/// `{"id": integer}` with `id` required.
const ORDER_SCHEMA: &str =
    r#"{"type":"object","properties":{"id":{"type":"integer"}},"required":["id"]}"#;

/// Registers a JSON schema under `subject`; returns its id.
async fn register_json(broker: &TestBroker, subject: &str, schema: &str) -> u32 {
    let response = Client::new()
        .post(format!("{}/subjects/{subject}/versions", broker.http_url()))
        .basic_auth("admin", Some("admin"))
        .header("content-type", "application/vnd.schemaregistry.v1+json")
        .body(json!({"schemaType": "JSON", "schema": schema}).to_string())
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let body: serde_json::Value = response.json().await.unwrap();
    u32::try_from(body["id"].as_u64().unwrap()).unwrap()
}

async fn validating_topic(broker: &TestBroker, name: &str) {
    let configs = BTreeMap::from([("ferry.schema.validation".to_string(), "true".to_string())]);
    broker.core().create_topic(name, 1, configs).await.unwrap();
}

/// `ferry_schema_rejections_total` for the series whose labels include every one of `labels`.
async fn rejections(broker: &TestBroker, labels: &[&str]) -> f64 {
    let text = reqwest::get(format!("{}/metrics", broker.http_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("ferry_schema_rejections_total{"))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Confluent's wire format: magic 0, the schema id, the payload.
fn framed(id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn schema_rejected(result: Result<impl std::fmt::Debug, NativeClientError>) -> (String, u32) {
    match result {
        Err(NativeClientError::SchemaRejected {
            reason,
            message,
            index,
        }) => {
            assert!(!message.is_empty());
            (reason, index)
        }
        other => panic!("expected SchemaRejected, got {other:?}"),
    }
}

#[tokio::test]
async fn native_publishes_to_validating_destinations_get_a_typed_error() {
    let broker = TestBroker::start().await.unwrap();
    let topic = "native-orders";
    validating_topic(&broker, topic).await;
    let id = register_json(&broker, &format!("{topic}-value"), ORDER_SCHEMA).await;
    let conn = common::native::connect_as(&broker, "guest", "guest").await;
    let publisher = EventPublisher::new(conn);
    let to_topic = PublishConfig::topic(topic);
    let meta = || EventMetadata::new("order.placed", "/shop");

    // Naming the schema version in metadata: the JSON body is checked against it.
    publisher
        .publish(
            &json!({"id": 1}),
            meta().with_schema_version("1"),
            &to_topic,
        )
        .await
        .expect("a valid event is stored");
    let (reason, index) = schema_rejected(
        publisher
            .publish(
                &json!({"name": "x"}),
                meta().with_schema_version("1"),
                &to_topic,
            )
            .await,
    );
    assert_eq!((reason.as_str(), index), ("decode", 0));
    let (reason, _) = schema_rejected(
        publisher
            .publish(
                &json!({"id": 1}),
                meta().with_schema_version("7"),
                &to_topic,
            )
            .await,
    );
    assert_eq!(reason, "unknown_schema");
    // Naming none: Confluent's wire format, as a Kafka record must be.
    let (reason, _) = schema_rejected(
        publisher
            .publish(&json!({"id": 2}), meta(), &to_topic)
            .await,
    );
    assert_eq!(reason, "wire_format");
    publisher
        .publish_bytes(
            framed(id, br#"{"id":3}"#),
            "application/octet-stream",
            meta(),
            &to_topic,
            "",
        )
        .await
        .expect("a framed valid value is stored");

    // A batch with one invalid event is refused whole, naming it.
    let events = vec![
        (br#"{"id":4}"#.to_vec(), meta().with_schema_version("1")),
        (
            br#"{"id":"four"}"#.to_vec(),
            meta().with_schema_version("1"),
        ),
        (br#"{"id":5}"#.to_vec(), meta().with_schema_version("1")),
    ];
    let (reason, index) = schema_rejected(
        publisher
            .publish_batch(events, "application/json", &to_topic)
            .await,
    );
    assert_eq!((reason.as_str(), index), ("decode", 1));
    let stored = broker.core().partition(topic, 0).unwrap().high_watermark();
    assert_eq!(stored, 2, "only the two valid single publishes are stored");

    // An exchange declared with x-schema-validation (subject `<exchange>-value`) and a
    // queue declared with it (subject `<queue>-value`), both behind the native SDK.
    register_json(&broker, "native-payments-value", ORDER_SCHEMA).await;
    register_json(&broker, "native-audit-value", ORDER_SCHEMA).await;
    let amqp = common::amqp::connect(&broker).await;
    let ch = common::amqp::channel(&amqp).await;
    let validating = common::amqp::args(vec![("x-schema-validation", AMQPValue::Boolean(true))]);
    common::amqp::exchange(
        &ch,
        "native-payments",
        ExchangeKind::Fanout,
        validating.clone(),
    )
    .await;
    common::amqp::declare(&ch, "native-ledger").await;
    common::amqp::bind(&ch, "native-ledger", "native-payments", "").await;
    common::amqp::declare_with(&ch, "native-audit", validating).await;

    let to_exchange = PublishConfig::exchange("native-payments", "");
    let receipt = publisher
        .publish(&json!({"id": 1}), meta(), &to_exchange)
        .await
        .expect("valid");
    assert_eq!(receipt.queues, 1);
    let (reason, _) = schema_rejected(
        publisher
            .publish(&json!({"id": []}), meta(), &to_exchange)
            .await,
    );
    assert_eq!(reason, "decode");
    let to_queue = PublishConfig::queue("native-audit");
    publisher
        .publish(&json!({"id": 9}), meta(), &to_queue)
        .await
        .expect("valid");
    let (reason, _) = schema_rejected(publisher.publish(&json!({}), meta(), &to_queue).await);
    assert_eq!(reason, "decode");
    assert_eq!(common::amqp::count(&ch, "native-ledger").await, 1);
    assert_eq!(common::amqp::count(&ch, "native-audit").await, 1);

    let topic_label = format!("topic=\"{topic}\"");
    assert_eq!(
        rejections(&broker, &[&topic_label, "reason=\"decode\""]).await,
        2.0
    );
    assert_eq!(
        rejections(&broker, &[&topic_label, "reason=\"wire_format\""]).await,
        1.0
    );
    assert_eq!(
        rejections(&broker, &["exchange=\"native-payments\""]).await,
        1.0
    );
    assert_eq!(rejections(&broker, &["queue=\"native-audit\""]).await, 1.0);
    broker.stop().await;
}

#[tokio::test]
async fn a_validating_queue_nacks_or_dead_letters_what_its_schema_refuses() {
    let broker = TestBroker::start().await.unwrap();
    register_json(&broker, "q-orders-value", ORDER_SCHEMA).await;
    register_json(&broker, "q-strict-value", ORDER_SCHEMA).await;
    let conn = common::amqp::connect(&broker).await;
    let ch = common::amqp::channel(&conn).await;
    common::amqp::confirm_mode(&ch).await;
    let json_props = || BasicProperties::default().with_content_type("application/json".into());

    // Nack mode, behind a fanout exchange that also feeds a queue without validation: the
    // publisher is nacked, the other queue still takes its copy (as x-overflow reject-publish).
    common::amqp::exchange(&ch, "q-fan", ExchangeKind::Fanout, FieldTable::default()).await;
    common::amqp::declare_with(
        &ch,
        "q-orders",
        common::amqp::args(vec![("x-schema-validation", AMQPValue::Boolean(true))]),
    )
    .await;
    common::amqp::declare(&ch, "q-all").await;
    common::amqp::bind(&ch, "q-orders", "q-fan", "").await;
    common::amqp::bind(&ch, "q-all", "q-fan", "").await;
    assert!(common::amqp::publish_confirmed(&ch, "q-fan", "", br#"{"id":1}"#, json_props()).await);
    assert!(
        !common::amqp::publish_confirmed(&ch, "q-fan", "", br#"{"id":"x"}"#, json_props()).await,
        "an invalid message is nacked"
    );
    assert!(
        !common::amqp::publish_confirmed(
            &ch,
            "q-fan",
            "",
            br#"{"id":2}"#,
            BasicProperties::default().with_content_type("text/plain".into())
        )
        .await,
        "a JSON schema refuses another content type"
    );
    assert_eq!(common::amqp::count(&ch, "q-orders").await, 1);
    assert_eq!(common::amqp::count(&ch, "q-all").await, 3);
    assert_eq!(
        common::amqp::get_body(&ch, "q-orders").await,
        br#"{"id":1}"#
    );

    // Dead-letter mode with the queue's own x-dead-letter-exchange: acked, and the refused
    // message lands in the dead-letter queue with reason `schema`.
    common::amqp::declare(&ch, "q-rejects").await;
    common::amqp::declare_with(
        &ch,
        "q-strict",
        common::amqp::args(vec![
            ("x-schema-validation", common::amqp::long("dead-letter")),
            ("x-dead-letter-exchange", common::amqp::long("")),
            ("x-dead-letter-routing-key", common::amqp::long("q-rejects")),
        ]),
    )
    .await;
    assert!(
        common::amqp::publish_confirmed(&ch, "", "q-strict", br#"{"nope":1}"#, json_props()).await
    );
    assert!(
        common::amqp::publish_confirmed(&ch, "", "q-strict", br#"{"id":5}"#, json_props()).await
    );
    assert_eq!(common::amqp::count(&ch, "q-strict").await, 1);
    let dead = common::amqp::get(&ch, "q-rejects", true)
        .await
        .expect("the refused message is dead-lettered");
    assert_eq!(dead.delivery.data, br#"{"nope":1}"#);
    let header = |k: &str| common::amqp::header(&dead.delivery, k).cloned();
    assert_eq!(
        header("x-first-death-reason"),
        Some(AMQPValue::LongString("schema".into()))
    );
    assert_eq!(
        header("x-first-death-queue"),
        Some(AMQPValue::LongString("q-strict".into()))
    );
    match header("x-schema-error") {
        Some(AMQPValue::LongString(s)) => assert!(s.to_string().contains("q-strict-value"), "{s}"),
        other => panic!("x-schema-error: {other:?}"),
    }

    // An unparsable argument is refused at declaration (406).
    let bad = ch
        .queue_declare(
            "q-bad".into(),
            QueueDeclareOptions::default(),
            common::amqp::args(vec![("x-schema-validation", AMQPValue::LongLongInt(3))]),
        )
        .await
        .expect_err("x-schema-validation must be a boolean or a mode");
    assert_eq!(common::amqp::amqp_code(&bad), Some(406));

    assert_eq!(
        rejections(&broker, &["queue=\"q-orders\"", "reason=\"decode\""]).await,
        1.0
    );
    assert_eq!(
        rejections(&broker, &["queue=\"q-orders\"", "reason=\"content_type\""]).await,
        1.0
    );
    assert_eq!(rejections(&broker, &["queue=\"q-strict\""]).await, 1.0);
    broker.stop().await;
}

#[tokio::test]
async fn amqp_publishes_to_a_validating_topics_exchange_face_are_checked() {
    let broker = TestBroker::start().await.unwrap();
    let topic = "face-orders";
    validating_topic(&broker, topic).await;
    let id = register_json(&broker, &format!("{topic}-value"), ORDER_SCHEMA).await;
    let conn = common::amqp::connect(&broker).await;
    let ch = common::amqp::channel(&conn).await;
    common::amqp::confirm_mode(&ch).await;
    let versioned = |v: &str| {
        let mut headers = FieldTable::default();
        headers.insert("schema-version".into(), common::amqp::long(v));
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_headers(headers)
    };

    assert!(common::amqp::publish_confirmed(&ch, topic, "k", br#"{"id":1}"#, versioned("1")).await);
    assert!(
        !common::amqp::publish_confirmed(&ch, topic, "k", br#"{"id":"one"}"#, versioned("1")).await,
        "an invalid body is nacked"
    );
    assert!(
        !common::amqp::publish_confirmed(
            &ch,
            topic,
            "k",
            br#"{"id":2}"#,
            BasicProperties::default()
        )
        .await,
        "naming no schema, the body must be in the wire format"
    );
    let framed_value = framed(id, br#"{"id":3}"#);
    assert!(
        common::amqp::publish_confirmed(&ch, topic, "k", &framed_value, BasicProperties::default())
            .await
    );

    // A Kafka consumer reads the two valid messages, and nothing else.
    let bootstrap = broker.kafka_bootstrap();
    let topic_name = topic.to_string();
    let values = tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "face-reader")
            .set("enable.partition.eof", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic_name, 0, Offset::Beginning)
            .unwrap();
        c.assign(&tpl).unwrap();
        let records = common::kafka::poll_records(&c, 2);
        // Nothing more arrives.
        let extra = c.poll(Duration::from_millis(500));
        assert!(
            extra.is_none(),
            "a third record: {:?}",
            extra.map(|r| r.is_ok())
        );
        records.into_iter().map(|r| r.payload).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert_eq!(values, vec![br#"{"id":1}"#.to_vec(), framed_value]);

    let label = format!("topic=\"{topic}\"");
    assert_eq!(
        rejections(&broker, &[&label, "reason=\"decode\""]).await,
        1.0
    );
    assert_eq!(
        rejections(&broker, &[&label, "reason=\"wire_format\""]).await,
        1.0
    );
    broker.stop().await;
}
