//! Protobuf schemas for real (issue 18): a `.proto` source schema registered over the REST
//! API is compiled and compared (a BACKWARD-incompatible text change gets 409, a compatible
//! one a new version), and a Kafka produce to a validating topic has its Protobuf payload
//! decoded as the schema's message: a wire-type mismatch or a truncated nested message gets
//! INVALID_RECORD, a valid record is accepted. Payloads are encoded with prost here and
//! framed by hand (magic 0, schema id, message-index array `[0]`).

use std::collections::BTreeMap;
use std::time::Duration;

use ferry::testing::TestBroker;
use prost::Message;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, FutureRecord};
use reqwest::Client;
use serde_json::{json, Value};

const ORDER_V1: &str = r#"
syntax = "proto3";
package shop;
import "google/protobuf/timestamp.proto";

message Order {
  int32 id = 1;
  string note = 2;
  Line line = 3;
  google.protobuf.Timestamp placed_at = 4;
  message Line { string sku = 1; int32 quantity = 2; }
}
"#;

/// What the schema says, as the producer's code would have it.
#[derive(Clone, PartialEq, prost::Message)]
struct Order {
    #[prost(int32, tag = "1")]
    id: i32,
    #[prost(string, tag = "2")]
    note: String,
    #[prost(message, optional, tag = "3")]
    line: Option<Line>,
    #[prost(message, optional, tag = "4")]
    placed_at: Option<prost_types::Timestamp>,
    /// Not in the schema: unknown fields are allowed.
    #[prost(string, tag = "9")]
    extra: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Line {
    #[prost(string, tag = "1")]
    sku: String,
    #[prost(int32, tag = "2")]
    quantity: i32,
}

/// A producer that disagrees with the schema: a string where `int32 id` is declared.
#[derive(Clone, PartialEq, prost::Message)]
struct StringId {
    #[prost(string, tag = "1")]
    id: String,
}

async fn register(broker: &TestBroker, subject: &str, schema: &str) -> (u16, Value) {
    let response = Client::new()
        .post(format!("{}/subjects/{subject}/versions", broker.http_url()))
        .basic_auth("admin", Some("admin"))
        .header("content-type", "application/vnd.schemaregistry.v1+json")
        .body(json!({"schemaType": "PROTOBUF", "schema": schema}).to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Confluent's Protobuf framing: magic 0, the schema id, the index array `[0]` (a lone 0).
fn framed(id: u32, message: &impl Message) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&id.to_be_bytes());
    out.push(0);
    out.extend_from_slice(&message.encode_to_vec());
    out
}

async fn send(producer: &FutureProducer, value: &[u8]) -> Result<i64, RDKafkaErrorCode> {
    let record: FutureRecord<str, [u8]> = FutureRecord::to("orders").partition(0).payload(value);
    producer
        .send(record, Duration::from_secs(20))
        .await
        .map(|delivery| delivery.offset)
        .map_err(|(e, _)| e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail))
}

#[tokio::test]
async fn proto_source_schemas_are_compared_and_payloads_decoded_against_them() {
    let broker = TestBroker::start().await.unwrap();

    let (status, body) = register(&broker, "orders-value", ORDER_V1).await;
    assert_eq!(status, 200, "{body}");
    let id = u32::try_from(body["id"].as_u64().unwrap()).unwrap();

    // `id` from int32 (varint) to string (length-delimited): old data cannot be read.
    let incompatible = ORDER_V1.replace("int32 id = 1;", "string id = 1;");
    let (status, body) = register(&broker, "orders-value", &incompatible).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error_code"], 409, "{body}");
    // The nested message removed (and the field using it): incompatible too.
    let removed = ORDER_V1
        .replace(
            "  message Line { string sku = 1; int32 quantity = 2; }\n",
            "",
        )
        .replace("  Line line = 3;\n", "");
    let (status, body) = register(&broker, "orders-value", &removed).await;
    assert_eq!(status, 409, "{body}");
    // A field added and one renamed: compatible, a new version.
    let compatible = ORDER_V1.replace(
        "string note = 2;",
        "string comment = 2;\n  int64 total_cents = 5;",
    );
    let (status, body) = register(&broker, "orders-value", &compatible).await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(body["id"].as_u64().unwrap(), u64::from(id));
    // Source that does not compile is not a schema.
    let (status, body) = register(
        &broker,
        "broken-value",
        "syntax = \"proto3\"; message A { int32 x = 1 }",
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error_code"], 42201, "{body}");

    let configs = BTreeMap::from([("ferry.schema.validation".to_string(), "true".to_string())]);
    broker
        .core()
        .create_topic("orders", 1, configs)
        .await
        .unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.kafka_bootstrap())
        .set("message.timeout.ms", "20000")
        .set("linger.ms", "0")
        .create()
        .unwrap();

    let valid = Order {
        id: 7,
        note: "two please".into(),
        line: Some(Line {
            sku: "tea".into(),
            quantity: 2,
        }),
        placed_at: Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        }),
        extra: "unknown to the schema".into(),
    };
    assert_eq!(send(&producer, &framed(id, &valid)).await, Ok(0));

    let string_id = StringId { id: "seven".into() };
    assert_eq!(
        send(&producer, &framed(id, &string_id)).await,
        Err(RDKafkaErrorCode::InvalidRecord)
    );

    // `line` whose body claims a 5-byte sku but holds one byte: the outer length is right,
    // so only decoding the nested message finds it.
    let mut truncated = framed(id, &Order::default());
    truncated.extend_from_slice(&[0x1a, 0x03, 0x0a, 0x05, b't']);
    assert_eq!(
        send(&producer, &truncated).await,
        Err(RDKafkaErrorCode::InvalidRecord)
    );

    // A message index past the file's one top-level message.
    let mut bad_index = framed(id, &valid);
    bad_index[5] = 0x02;
    bad_index.insert(6, 0x02);
    assert_eq!(
        send(&producer, &bad_index).await,
        Err(RDKafkaErrorCode::InvalidRecord)
    );

    // The second version's payloads pass too (a field it added, by its number).
    let v2_id = u32::try_from(body_id(&broker, "orders-value", 2).await).unwrap();
    let mut v2 = framed(v2_id, &valid);
    v2.extend_from_slice(&[0x28, 0x90, 0x03]);
    assert_eq!(send(&producer, &v2).await, Ok(1));
}

/// The schema id of `subject`'s `version`.
async fn body_id(broker: &TestBroker, subject: &str, version: i32) -> u64 {
    let body: Value = Client::new()
        .get(format!(
            "{}/subjects/{subject}/versions/{version}",
            broker.http_url()
        ))
        .basic_auth("admin", Some("admin"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["id"].as_u64().unwrap()
}
