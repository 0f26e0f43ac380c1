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

/// Runs `ferry ARGS` against the broker's admin API as `user`/`password` with `stdin` piped
/// in; returns whether it succeeded, its stdout and its stderr.
pub async fn ferry_cli_as(
    broker: &TestBroker,
    user: &str,
    password: &str,
    args: &[&str],
    stdin: &str,
) -> (bool, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .env("FERRY_ADMIN_URL", broker.http_url())
        .env("FERRY_ADMIN_USER", user)
        .env("FERRY_ADMIN_PASSWORD", password)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the ferry binary starts");
    let mut input = child.stdin.take().expect("stdin is piped");
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("ferry finished within 60 s")
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
