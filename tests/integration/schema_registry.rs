//! The schema registry's REST API (Confluent's paths, shapes and codes) against a broker with a
//! data directory: schemas, ids, versions and settings survive a restart, ids are never
//! reused, and the registry asks for the admin API's credentials.

use ferry::testing::TestBroker;
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

async fn call(
    broker: &TestBroker,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = Client::new()
        .request(method, format!("{}{path}", broker.http_url()))
        .basic_auth("admin", Some("admin"));
    if let Some(body) = body {
        request = request
            .header("content-type", CONTENT_TYPE)
            .body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(content_type.as_deref(), Some(CONTENT_TYPE), "{path}");
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn avro(name: &str) -> Value {
    json!({"schema": json!({"type": "record", "name": name, "fields": [{"name": "a", "type": "int"}]}).to_string()})
}

#[tokio::test]
async fn schemas_ids_and_settings_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let broker = TestBroker::with(|b| b.data_dir(&path)).await.unwrap();
    let (status, first) = call(
        &broker,
        Method::POST,
        "/subjects/orders-value/versions",
        Some(avro("Order")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let json_schema = json!({"schemaType": "JSON", "schema": r#"{"type":"object"}"#});
    let (_, second) = call(
        &broker,
        Method::POST,
        "/subjects/events-value/versions",
        Some(json_schema.clone()),
    )
    .await;
    let (status, _) = call(
        &broker,
        Method::PUT,
        "/config/events-value",
        Some(json!({"compatibility": "FULL"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(
        &broker,
        Method::DELETE,
        "/subjects/orders-value/versions/1",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    broker.stop().await;

    let broker = TestBroker::with(|b| b.data_dir(&path)).await.unwrap();
    let (status, by_id) = call(
        &broker,
        Method::GET,
        &format!("/schemas/ids/{}", first["id"]),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{by_id}");
    assert_eq!(by_id["schema"], avro("Order")["schema"]);
    assert!(
        by_id.get("schemaType").is_none(),
        "AVRO is implied: {by_id}"
    );
    let (_, by_id) = call(
        &broker,
        Method::GET,
        &format!("/schemas/ids/{}", second["id"]),
        None,
    )
    .await;
    assert_eq!(by_id["schemaType"], "JSON");
    let (_, subjects) = call(&broker, Method::GET, "/subjects", None).await;
    assert_eq!(subjects, json!(["events-value"]));
    let (_, subjects) = call(&broker, Method::GET, "/subjects?deleted=true", None).await;
    assert_eq!(subjects, json!(["events-value", "orders-value"]));
    let (_, config) = call(&broker, Method::GET, "/config/events-value", None).await;
    assert_eq!(config, json!({"compatibilityLevel": "FULL"}));
    // The same schema registered again keeps its id; a new one never takes an old id.
    let (_, again) = call(
        &broker,
        Method::POST,
        "/subjects/events-value/versions",
        Some(json_schema),
    )
    .await;
    assert_eq!(again["id"], second["id"]);
    assert_eq!(again["version"], 1);
    let (_, third) = call(
        &broker,
        Method::POST,
        "/subjects/orders-value/versions",
        Some(avro("Other")),
    )
    .await;
    assert!(
        third["id"].as_i64().unwrap() > second["id"].as_i64().unwrap(),
        "{third}"
    );
    assert_eq!(third["version"], 2, "versions continue after a soft delete");
    broker.stop().await;
}

#[tokio::test]
async fn the_registry_asks_for_admin_credentials_and_answers_in_its_own_shape() {
    let broker = TestBroker::start().await.unwrap();
    let response = Client::new()
        .get(format!("{}/subjects", broker.http_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers().contains_key("www-authenticate"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error_code"], 401, "{body}");

    let (status, body) = call(&broker, Method::GET, "/subjects/nope/versions/latest", None).await;
    assert_eq!(
        (status, body["error_code"].clone()),
        (StatusCode::NOT_FOUND, json!(40401))
    );
    let (status, body) = call(&broker, Method::GET, "/subjects/nope/versions/zero", None).await;
    assert_eq!(
        (status, body["error_code"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!(42202))
    );
    let (status, body) = call(
        &broker,
        Method::POST,
        "/subjects/s/versions",
        Some(json!({"schema": "{", "schemaType": "AVRO"})),
    )
    .await;
    assert_eq!(
        (status, body["error_code"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!(42201))
    );
    let (status, body) = call(
        &broker,
        Method::POST,
        "/subjects/s/versions",
        Some(json!({"schema": "x", "schemaType": "XML"})),
    )
    .await;
    assert_eq!(
        (status, body["error_code"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!(42201))
    );
    let (_, types) = call(&broker, Method::GET, "/schemas/types", None).await;
    assert_eq!(types, json!(["JSON", "PROTOBUF", "AVRO"]));
    broker.stop().await;
}
