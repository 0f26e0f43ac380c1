//! The admin HTTP API as a test sees it: one request as admin/admin (or another user), answered with the status
//! and the JSON body. A body that is not JSON fails the test: every answer of the API is JSON.

use ferry::testing::TestBroker;
use reqwest::{Client, Method, StatusCode};
use serde_json::Value;

/// Sends an admin request as admin/admin; returns the status and the JSON body (Null if none).
pub async fn admin_call(
    broker: &TestBroker,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    admin_call_as(broker, "admin", "admin", method, path, body).await
}

/// Like [`admin_call`], as `user`/`password`.
pub async fn admin_call_as(
    broker: &TestBroker,
    user: &str,
    password: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Client::new()
        .request(method, format!("{}{path}", broker.http_url()))
        .basic_auth(user, Some(password));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("admin request");
    let status = resp.status();
    let text = resp.text().await.expect("admin body");
    let json = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    (status, json)
}
