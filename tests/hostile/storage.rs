//! Issue 12, storage: names whose escaped directory name does not fit the filesystem, storage
//! errors that must not show a client where the data lives, and file descriptors bounded by
//! what is active.

use std::path::Path;

use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

use super::{lapin, SERIAL};
use ferry::testing::TestBroker;

/// Sends an admin API request as admin/admin; the status and the JSON body (Null if none).
async fn admin(
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
    let resp = req.send().await.expect("admin request");
    let status = resp.status();
    let text = resp.text().await.expect("admin body");
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, json)
}

/// Percent-encodes every byte, so any name fits a URL path segment.
fn path_segment(name: &str) -> String {
    name.bytes().map(|b| format!("%{b:02X}")).collect()
}

async fn start_in(dir: &Path) -> TestBroker {
    TestBroker::with(|b| b.data_dir(dir)).await.expect("broker")
}

/// Publishes `body` persistently to `queue` through the default exchange, confirmed.
async fn publish(conn: &lapin::Connection, queue: &str, body: &[u8]) {
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    ch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default().with_delivery_mode(2),
    )
    .await
    .expect("publish")
    .await
    .expect("confirm");
    let _ = ch.close(200, "done".into()).await;
}

async fn get_one(conn: &lapin::Connection, queue: &str) -> Vec<u8> {
    let ch = conn.create_channel().await.expect("channel");
    let got = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
        .expect("a message");
    let _ = ch.close(200, "done".into()).await;
    got.delivery.data
}

/// 127 x `ü` is 254 bytes, a legal AMQP name, but 762 bytes once escaped for a directory; 90 x
/// `%` is 270. Both used to fail with 541 (closing the connection) and the data path in the
/// text. They are ordinary queues now, through AMQP and the admin API, and survive a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_names_too_long_to_escape_into_a_directory_work_and_survive_a_restart() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let umlauts = "ü".repeat(127);
    let percents = "%".repeat(90);
    let via_api = format!("{}-api", "é".repeat(125));
    assert!(umlauts.len() <= 255 && percents.len() <= 255 && via_api.len() <= 255);

    let broker = start_in(dir.path()).await;
    let conn = lapin(&broker).await;
    let ch = conn.create_channel().await.expect("channel");
    for name in [&umlauts, &percents] {
        ch.queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("declare {} bytes: {e}", name.len()));
    }
    let (status, body) = admin(
        &broker,
        Method::PUT,
        &format!("/api/queues/%2F/{}", path_segment(&via_api)),
        Some(json!({"durable": true})),
    )
    .await;
    assert!(status.is_success(), "{status}: {body}");
    for name in [&umlauts, &percents, &via_api] {
        publish(&conn, name, name.as_bytes()).await;
    }
    // A second message in one queue is read before the restart: the rest must come back.
    publish(&conn, &umlauts, b"second").await;
    assert_eq!(get_one(&conn, &umlauts).await, umlauts.as_bytes());
    let (status, body) = admin(
        &broker,
        Method::GET,
        &format!("/api/queues/%2F/{}", path_segment(&percents)),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["name"], json!(percents));
    let _ = conn.close(200, "bye".into()).await;
    broker.stop().await;

    let broker = start_in(dir.path()).await;
    let conn = lapin(&broker).await;
    assert_eq!(get_one(&conn, &umlauts).await, b"second");
    assert_eq!(get_one(&conn, &percents).await, percents.as_bytes());
    assert_eq!(get_one(&conn, &via_api).await, via_api.as_bytes());
    // Deleting one leaves no directory behind and does not touch the others.
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_delete(percents.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("queue.delete");
    publish(&conn, &via_api, b"after delete").await;
    assert_eq!(get_one(&conn, &via_api).await, b"after delete");
    let _ = conn.close(200, "bye".into()).await;
    broker.stop().await;
    let queue_dirs = walk_dirs(&dir.path().join("queues"));
    assert_eq!(queue_dirs, 2, "two queues left, two log directories");
}

/// Directories two levels under `root` (one per queue log).
fn walk_dirs(root: &Path) -> usize {
    std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|vhost| vhost.path().is_dir())
        .flat_map(|vhost| {
            std::fs::read_dir(vhost.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .filter(|q| q.path().is_dir())
        .count()
}

/// A storage failure answers with what failed, never with where the data lives: the path is
/// the operator's business (and in the broker's log), not a peer's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_errors_do_not_show_clients_a_filesystem_path() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = start_in(dir.path()).await;
    // A file where the default vhost's queue directory belongs makes every queue creation in
    // it fail inside the filesystem.
    let vhost_dir = dir.path().join("queues").join("%2F");
    let _ = std::fs::remove_dir_all(&vhost_dir);
    std::fs::write(&vhost_dir, b"in the way").unwrap();
    let data_path = dir.path().to_string_lossy().into_owned();

    let conn = lapin(&broker).await;
    let ch = conn.create_channel().await.expect("channel");
    let err = ch
        .queue_declare(
            "blocked".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("the queue cannot be created");
    let text = format!("{err} {err:?}");
    assert!(text.contains("storage error"), "{text}");
    assert!(!text.contains(&data_path), "{text}");

    let (status, body) = admin(
        &broker,
        Method::PUT,
        "/api/queues/%2F/blocked-api",
        Some(json!({"durable": true})),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    let text = body.to_string();
    assert!(text.contains("storage error"), "{text}");
    assert!(!text.contains(&data_path), "{text}");
    broker.stop().await;
}
