//! The event catalog (issue 18) after mixed traffic through real clients: rdkafka produces
//! CloudEvents-typed records, lapin publishes typed AMQP messages (to an exchange and to the
//! topic's own exchange face), a consumer group commits and a queue is bound; `/api/catalog`
//! and `ferry catalog --markdown` (the built binary) then list every type with its schema,
//! flows, producers and consumers. Native SDK publishes are catalogued with their client name
//! (or user) as producer.

use std::time::Duration;

use ferry::testing::TestBroker;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use reqwest::Client;
use serde_json::{json, Value};

use crate::common;

async fn get_catalog(broker: &TestBroker) -> Value {
    let response = Client::new()
        .get(format!("{}/api/catalog", broker.http_url()))
        .basic_auth("admin", Some("admin"))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    response.json().await.unwrap()
}

fn event<'a>(catalog: &'a Value, kind: &str) -> &'a Value {
    catalog["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == kind)
        .unwrap_or_else(|| panic!("{kind} is not in the catalog: {catalog}"))
}

#[tokio::test]
async fn the_catalog_lists_types_with_producers_and_consumers_after_mixed_traffic() {
    let broker = TestBroker::start().await.unwrap();
    // A schema under the topic's subject (TopicNameStrategy).
    let registered = Client::new()
        .post(format!(
            "{}/subjects/orders-value/versions",
            broker.http_url()
        ))
        .basic_auth("admin", Some("admin"))
        .header("content-type", "application/vnd.schemaregistry.v1+json")
        .body(json!({"schemaType": "JSON", "schema": r#"{"type":"object"}"#}).to_string())
        .send()
        .await
        .unwrap();
    assert!(registered.status().is_success());

    // Kafka: a CloudEvents binary-mode record from client id shop-service.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.kafka_bootstrap())
        .set("client.id", "shop-service")
        .set("message.timeout.ms", "20000")
        .create()
        .unwrap();
    for i in 0..3 {
        let payload = format!(r#"{{"order":{i},"total":12.5}}"#);
        producer
            .send(
                FutureRecord::<(), _>::to("orders")
                    .partition(0)
                    .payload(&payload)
                    .headers(
                        OwnedHeaders::new()
                            .insert(Header {
                                key: "ce_type",
                                value: Some("order.placed"),
                            })
                            .insert(Header {
                                key: "ce_dataschema",
                                value: Some("1"),
                            }),
                    ),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    // A consumer group reading the topic.
    let bootstrap = broker.kafka_bootstrap();
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "billing")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("orders", 0, Offset::Offset(3))
            .unwrap();
        c.commit(&tpl, CommitMode::Sync).unwrap();
    })
    .await
    .unwrap();

    // AMQP: an exchange with a bound queue, typed messages from app id payments-api.
    let conn = common::amqp::connect(&broker).await;
    let ch = common::amqp::channel(&conn).await;
    common::amqp::exchange(&ch, "payments", ExchangeKind::Topic, FieldTable::default()).await;
    common::amqp::declare(&ch, "ledger").await;
    common::amqp::bind(&ch, "ledger", "payments", "#").await;
    let mut headers = FieldTable::default();
    headers.insert("schema-version".into(), AMQPValue::LongString("2".into()));
    ch.basic_publish(
        "payments".into(),
        "card".into(),
        BasicPublishOptions::default(),
        br#"{"amount":5}"#,
        BasicProperties::default()
            .with_type("payment.captured".into())
            .with_app_id("payments-api".into())
            .with_content_type("application/json".into())
            .with_headers(headers),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    // The same event type from an AMQP publisher, through the topic's exchange face.
    ch.basic_publish(
        "orders".into(),
        "k".into(),
        BasicPublishOptions::default(),
        br#"{"order":9}"#,
        BasicProperties::default()
            .with_type("order.placed".into())
            .with_app_id("legacy-shop".into()),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    let catalog = get_catalog(&broker).await;
    assert_eq!(catalog["examples_redacted"], false);
    let order = event(&catalog, "order.placed");
    assert_eq!(order["topics"], json!(["orders"]), "{order}");
    assert_eq!(order["exchanges"], json!(["orders"]), "{order}");
    assert_eq!(
        order["producers"],
        json!(["amqp:legacy-shop", "kafka:shop-service"]),
        "{order}"
    );
    assert_eq!(order["consumers"]["groups"], json!(["billing"]), "{order}");
    assert_eq!(order["versions"], json!(["1"]));
    assert_eq!(order["schema"]["subject"], "orders-value");
    assert_eq!(order["schema"]["schema_type"], "JSON");
    assert_eq!(order["schema"]["latest_version"], 1);
    assert_eq!(order["example"]["encoding"], "utf8");
    assert_eq!(order["example"]["data"], r#"{"order":0,"total":12.5}"#);
    assert!(
        order["messages_estimated"].as_u64().unwrap() >= 2,
        "{order}"
    );

    let payment = event(&catalog, "payment.captured");
    assert_eq!(payment["exchanges"], json!(["payments"]), "{payment}");
    assert_eq!(payment["topics"], json!([]));
    assert_eq!(payment["producers"], json!(["amqp:payments-api"]));
    assert_eq!(payment["consumers"]["queues"], json!(["ledger"]));
    assert_eq!(payment["versions"], json!(["2"]));
    assert_eq!(payment["content_types"], json!(["application/json"]));
    assert_eq!(payment["schema"], Value::Null);

    // The CLI: a Markdown document with a section per type.
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["catalog", "--markdown"])
            .env("FERRY_ADMIN_URL", broker.http_url())
            .env_remove("FERRY_ADMIN_USER")
            .env_remove("FERRY_ADMIN_PASSWORD")
            .output(),
    )
    .await
    .expect("ferry catalog finished within 60 s")
    .unwrap();
    let markdown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(markdown.starts_with("# Event catalog\n"), "{markdown}");
    assert!(markdown.contains("\n## order.placed\n"), "{markdown}");
    assert!(markdown.contains("\n## payment.captured\n"), "{markdown}");
    assert!(
        markdown.contains("- **Producers**: amqp:legacy-shop, kafka:shop-service\n"),
        "{markdown}"
    );
    assert!(
        markdown.contains("- **Consumers**: queue ledger\n"),
        "{markdown}"
    );
    assert!(
        markdown.contains("- **Schema**: orders-value v1 (JSON)\n"),
        "{markdown}"
    );
    assert!(markdown.contains("\"amount\": 5"), "{markdown}");
    broker.stop().await;
}

#[tokio::test]
async fn native_sdk_publishes_appear_in_the_catalog_with_their_client_name() {
    use ferry::client::native::{connect, EventMetadata, EventPublisher, PublishConfig};

    let broker = TestBroker::start().await.unwrap();
    broker
        .core()
        .create_topic("native-cat-orders", 1, Default::default())
        .await
        .unwrap();
    let conn = common::amqp::connect(&broker).await;
    let ch = common::amqp::channel(&conn).await;
    common::amqp::exchange(
        &ch,
        "native-cat-payments",
        ExchangeKind::Fanout,
        FieldTable::default(),
    )
    .await;
    common::amqp::declare(&ch, "native-cat-ledger").await;
    common::amqp::bind(&ch, "native-cat-ledger", "native-cat-payments", "").await;

    let mut options = common::native::options(&broker, "guest", "guest");
    options.client_name = "checkout-svc".into();
    let publisher = EventPublisher::new(connect(options).await.unwrap());
    publisher
        .publish(
            &json!({"order": 1}),
            EventMetadata::new("native.order.placed", "/checkout").with_schema_version("3"),
            &PublishConfig::topic("native-cat-orders"),
        )
        .await
        .unwrap();
    publisher
        .publish_batch(
            vec![
                (
                    br#"{"amount":1}"#.to_vec(),
                    EventMetadata::new("native.payment.captured", "/checkout"),
                ),
                (
                    br#"{"amount":2}"#.to_vec(),
                    EventMetadata::new("native.payment.captured", "/checkout"),
                ),
            ],
            "application/json",
            &PublishConfig::exchange("native-cat-payments", ""),
        )
        .await
        .unwrap();
    // Without a client name the producer is the connection's user. (Another topic: a flow is
    // sampled at most once a second.)
    broker
        .core()
        .create_topic("native-cat-refunds", 1, Default::default())
        .await
        .unwrap();
    let mut no_name = common::native::options(&broker, "guest", "guest");
    no_name.client_name = String::new();
    let unnamed = EventPublisher::new(connect(no_name).await.unwrap());
    unnamed
        .publish(
            &json!({"order": 2}),
            EventMetadata::new("native.order.cancelled", "/checkout"),
            &PublishConfig::topic("native-cat-refunds"),
        )
        .await
        .unwrap();

    let catalog = get_catalog(&broker).await;
    let placed = event(&catalog, "native.order.placed");
    assert_eq!(placed["topics"], json!(["native-cat-orders"]), "{placed}");
    assert_eq!(
        placed["producers"],
        json!(["native:checkout-svc"]),
        "{placed}"
    );
    assert_eq!(placed["versions"], json!(["3"]), "{placed}");
    assert_eq!(
        placed["content_types"],
        json!(["application/json"]),
        "{placed}"
    );
    assert_eq!(placed["example"]["data"], r#"{"order":1}"#, "{placed}");
    let captured = event(&catalog, "native.payment.captured");
    assert_eq!(
        captured["exchanges"],
        json!(["native-cat-payments"]),
        "{captured}"
    );
    assert_eq!(
        captured["consumers"]["queues"],
        json!(["native-cat-ledger"]),
        "{captured}"
    );
    assert_eq!(
        captured["messages_estimated"].as_u64(),
        Some(2),
        "{captured}"
    );
    let cancelled = event(&catalog, "native.order.cancelled");
    assert_eq!(
        cancelled["producers"],
        json!(["native-user:guest"]),
        "{cancelled}"
    );
    broker.stop().await;
}
