//! Alert rules end to end: traffic from lapin makes a rule fire and resolve; the transition is
//! seen in `/metrics`, as an event on the alerts topic (read by rdkafka) and as a webhook POST
//! received by a local HTTP server that fails the first attempt (so the retry is exercised).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferry::observe::alerts::{AlertRule, AlertSettings};
use ferry::testing::TestBroker;
use parking_lot::Mutex;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common;
use common::amqp::*;

/// A webhook receiver: answers 500 to the first request, 200 after; keeps the JSON bodies of
/// the requests it accepted.
async fn webhook() -> (String, Arc<Mutex<Vec<serde_json::Value>>>, Arc<Mutex<u32>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/ferry", listener.local_addr().unwrap());
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let requests = Arc::new(Mutex::new(0u32));
    let (acc, reqs) = (accepted.clone(), requests.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read the head, then Content-Length bytes of body.
            let body = loop {
                let n = s.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).into_owned();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len: usize = text
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        assert!(text.starts_with("POST /hooks/ferry HTTP/1.1"), "{text}");
                        break Some(buf[end + 4..end + 4 + len].to_vec());
                    }
                }
            };
            let n = {
                let mut r = reqs.lock();
                *r += 1;
                *r
            };
            let status = if n == 1 {
                "500 Internal Server Error"
            } else {
                if let Some(b) = body {
                    acc.lock().push(serde_json::from_slice(&b).unwrap());
                }
                "200 OK"
            };
            let _ = s
                .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                .await;
        }
    });
    (url, accepted, requests)
}

async fn metric(broker: &TestBroker, line_start: &str) -> Option<f64> {
    let text = reqwest::get(format!("{}/metrics", broker.http_url()))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn eventually<F: std::future::Future<Output = bool>>(mut check: impl FnMut() -> F) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_depth_rule_fires_and_resolves_everywhere() {
    let (url, hooks, requests) = webhook().await;
    let settings = AlertSettings {
        exchange: "ferry.alerts".into(),
        webhook_url: url,
        webhook_attempts: 3,
        rules: vec![AlertRule {
            name: "jobs-backlog".into(),
            kind: "queue_depth".into(),
            queue: "jobs".into(),
            threshold: 3,
            for_secs: 1,
            ..AlertRule::default()
        }],
        ..AlertSettings::default()
    };
    let broker = TestBroker::with(|b| b.configure(|c| c.alerts = settings))
        .await
        .unwrap();
    broker
        .core()
        .create_topic("ferry.alerts", 1, BTreeMap::new())
        .await
        .unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "jobs").await;
    let rule = "ferry_alert_firing{rule=\"jobs-backlog\"}";
    assert_eq!(metric(&broker, rule).await, Some(0.0));
    for i in 0..5 {
        publish(&ch, "", "jobs", format!("job-{i}").as_bytes()).await;
    }
    assert!(
        eventually(|| async { metric(&broker, rule).await == Some(1.0) }).await,
        "the rule did not fire"
    );
    // Drain the queue: the rule resolves.
    for _ in 0..5 {
        get_body(&ch, "jobs").await;
    }
    assert!(
        eventually(|| async { metric(&broker, rule).await == Some(0.0) }).await,
        "the rule did not resolve"
    );
    // The admin API keeps the firing history: both transitions, newest first, with the value.
    let alerts: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/api/alerts", broker.http_url()))
        .basic_auth("admin", Some("admin"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let history = &alerts[0]["history"];
    assert_eq!(alerts[0]["rule"], "jobs-backlog", "{alerts}");
    assert_eq!(history.as_array().map(Vec::len), Some(2), "{alerts}");
    assert_eq!(
        (&history[0]["from"], &history[0]["to"]),
        (&"firing".into(), &"ok".into())
    );
    assert_eq!(
        (&history[1]["from"], &history[1]["to"], &history[1]["value"]),
        (&"ok".into(), &"firing".into(), &5.into())
    );
    assert!(history[0]["at_ms"].as_i64() >= history[1]["at_ms"].as_i64());
    // The webhook saw both transitions; its first answer (500) was retried.
    assert!(eventually(|| async { hooks.lock().len() == 2 }).await);
    let states: Vec<String> = hooks
        .lock()
        .iter()
        .map(|v| v["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(states, ["firing", "resolved"]);
    assert_eq!(hooks.lock()[0]["rule"], "jobs-backlog");
    assert_eq!(hooks.lock()[0]["value"], 5);
    assert_eq!(
        *requests.lock(),
        3,
        "one failed attempt, then one per transition"
    );

    // The events are on the alerts topic, as CloudEvents a Kafka consumer reads.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.kafka_bootstrap())
        .set("group.id", "alert-readers")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset("ferry.alerts", 0, rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut events = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while events.len() < 2 && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let ce_type = m
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "ce_type"))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned());
            let body: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            events.push((ce_type, body["state"].as_str().unwrap().to_string()));
            assert_eq!(m.key(), Some(&b"alert.jobs-backlog"[..]));
        }
    }
    assert_eq!(
        events,
        [
            (Some("io.ferry.alert.firing".into()), "firing".into()),
            (Some("io.ferry.alert.resolved".into()), "resolved".into())
        ]
    );
    // librdkafka's close takes long once the broker is gone; close it first.
    drop(consumer);
    broker.stop().await;
}

#[tokio::test]
async fn a_rule_missing_what_it_needs_is_refused_at_start() {
    let settings = AlertSettings {
        rules: vec![AlertRule {
            name: "lag".into(),
            kind: "consumer_lag".into(),
            group: "billing".into(),
            ..AlertRule::default()
        }],
        ..AlertSettings::default()
    };
    let err = TestBroker::with(|b| b.configure(|c| c.alerts = settings))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("needs `topic`"), "{err}");
}
