//! Native topic subscriptions as consumer-group members, sharing a group with a librdkafka
//! consumer: the native member's assignment, offsets committed as deliveries are acked (and
//! never past an unacked one), the rebalance when a Kafka consumer joins (each partition owned
//! by one member, unacked records read again by their next owner, acked ones not), and the
//! partitions moving back when the native subscription ends.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry::client::native::*;
use ferry::proto::framed::FrameReader;
use ferry::proto::v1::{self, request::Op, response::Result as R};
use ferry::testing::TestBroker;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;
use tokio::sync::mpsc;

use crate::common;
use common::native::connect_as;

const WAIT: Duration = Duration::from_secs(30);

async fn next(reader: &mut FrameReader<ferry::client::native::RecvStream>) -> R {
    let r: v1::Response = tokio::time::timeout(WAIT, reader.next())
        .await
        .expect("a response in time")
        .expect("read")
        .expect("a frame");
    r.result.expect("a result")
}

/// The next `Assigned`, skipping deliveries of the previous assignment still in flight.
async fn next_assignment(
    reader: &mut FrameReader<ferry::client::native::RecvStream>,
) -> v1::Assigned {
    loop {
        match next(reader).await {
            R::Assigned(a) => return a,
            R::Delivery(_) => {}
            other => panic!("expected an assignment, got {other:?}"),
        }
    }
}

async fn delivery(reader: &mut FrameReader<ferry::client::native::RecvStream>) -> v1::Delivery {
    match next(reader).await {
        R::Delivery(d) => d,
        other => panic!("expected a delivery, got {other:?}"),
    }
}

async fn ack(send: &mut ferry::client::native::SendStream, tag: u64) {
    let settle = v1::Request {
        op: Some(Op::Settle(v1::Settle {
            delivery_tag: tag,
            ..Default::default()
        })),
    };
    ferry::proto::framed::write(send, &settle)
        .await
        .expect("settle");
}

fn committed(broker: &TestBroker, group: &str) -> Vec<(i32, i64)> {
    let mut c: Vec<(i32, i64)> = broker
        .core()
        .groups()
        .fetch_offsets(group, None)
        .expect("offsets")
        .into_iter()
        .map(|c| (c.partition, c.offset))
        .collect();
    c.sort_unstable();
    c
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a librdkafka consumer in the group sees: its assignment and the records it read.
#[derive(Debug)]
enum KafkaSaw {
    Assigned(BTreeSet<i32>),
    Record(i32, i64),
}

/// Runs a librdkafka consumer of `topic` in `group` on a blocking thread until `stop`,
/// reporting every assignment change and record.
fn kafka_member(
    bootstrap: String,
    group: &str,
    topic: &str,
    stop: Arc<AtomicBool>,
) -> mpsc::UnboundedReceiver<KafkaSaw> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (group, topic) = (group.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "200")
            .create()
            .expect("kafka consumer");
        consumer.subscribe(&[&topic]).expect("subscribe");
        let mut seen = BTreeSet::new();
        while !stop.load(Ordering::Relaxed) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
                let _ = tx.send(KafkaSaw::Record(m.partition(), m.offset()));
            }
            let now: BTreeSet<i32> = consumer
                .assignment()
                .map(|a| a.elements().iter().map(|e| e.partition()).collect())
                .unwrap_or_default();
            if now != seen {
                seen = now.clone();
                let _ = tx.send(KafkaSaw::Assigned(now));
            }
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_member_commits_acked_offsets_and_rebalances_with_a_kafka_consumer() {
    let broker = TestBroker::start().await.expect("broker");
    let conn = connect_as(&broker, "guest", "guest").await;
    conn.call(&v1::Request {
        op: Some(Op::DeclareTopic(v1::DeclareTopic {
            name: "orders".into(),
            partitions: 2,
            ..Default::default()
        })),
    })
    .await
    .expect("declare");
    let publisher = EventPublisher::new(conn.clone());
    for partition in [0, 1] {
        for i in 0..2 {
            let mut config = PublishConfig::topic("orders");
            config.destination = Destination::Topic {
                topic: "orders".into(),
                partition: Some(partition),
                key: None,
            };
            publisher
                .publish(&i, EventMetadata::new("order.placed", "/shop"), &config)
                .await
                .expect("publish");
        }
    }

    // Alone in the group, the native member gets both partitions and reads all four records.
    let subscribe = v1::Request {
        op: Some(Op::SubscribeTopic(v1::SubscribeTopic {
            topic: "orders".into(),
            start: Some(v1::subscribe_topic::Start::Earliest(true)),
            prefetch: 10,
            group: "billing".into(),
        })),
    };
    let (mut send, mut reader) = conn.open_subscription(&subscribe).await.expect("subscribe");
    let first = next_assignment(&mut reader).await;
    assert_eq!(first.partitions, vec![0, 1]);
    assert!(!first.member_id.is_empty());
    let mut got = Vec::new();
    for _ in 0..4 {
        let d = delivery(&mut reader).await;
        got.push((d.partition, d.offset, d.delivery_tag));
    }
    got.sort_unstable();
    assert_eq!(
        got.iter().map(|g| (g.0, g.1)).collect::<Vec<_>>(),
        vec![(0, 0), (0, 1), (1, 0), (1, 1)]
    );
    // Ack both of partition 0 and only the second of partition 1: partition 1's commit must
    // stop at its unacked first record.
    for (_, _, tag) in got.iter().filter(|g| g.0 == 0 || g.1 == 1) {
        ack(&mut send, *tag).await;
    }
    eventually("the acked offsets are committed", || {
        committed(&broker, "billing") == vec![(0, 2), (1, 0)]
    })
    .await;
    let description = broker.core().groups().describe_group("billing");
    assert_eq!(description.protocol_type, "consumer");
    assert_eq!(description.members.len(), 1);

    // A librdkafka consumer joins: the group rebalances and each partition has one owner.
    let stop = Arc::new(AtomicBool::new(false));
    let mut kafka = kafka_member(broker.kafka_bootstrap(), "billing", "orders", stop.clone());
    let second = next_assignment(&mut reader).await;
    assert!(second.generation > first.generation);
    assert_eq!(second.partitions.len(), 1, "{second:?}");
    let native_owns = second.partitions[0];
    let kafka_owns = 1 - native_owns;
    let mut kafka_records = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let saw = tokio::time::timeout_at(deadline, kafka.recv())
            .await
            .expect("kafka assignment in time")
            .expect("kafka member running");
        match saw {
            KafkaSaw::Assigned(a) if a == BTreeSet::from([kafka_owns]) => break,
            KafkaSaw::Assigned(_) => {}
            KafkaSaw::Record(p, o) => {
                kafka_records.insert((p, o));
            }
        }
    }
    // Whoever owns partition 1 now reads its unacked record 0 again (and 1 after it: the
    // commit could not pass 0); nobody rereads partition 0, whose records were all acked.
    if native_owns == 1 {
        let d = delivery(&mut reader).await;
        assert_eq!((d.partition, d.offset), (1, 0));
    } else {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !kafka_records.contains(&(1, 0)) {
            match tokio::time::timeout_at(deadline, kafka.recv()).await {
                Ok(Some(KafkaSaw::Record(p, o))) => {
                    kafka_records.insert((p, o));
                }
                Ok(Some(KafkaSaw::Assigned(a))) => panic!("unexpected reassignment {a:?}"),
                _ => panic!("the kafka member never reread partition 1"),
            }
        }
        assert!(
            kafka_records.iter().all(|(p, _)| *p == 1),
            "{kafka_records:?}"
        );
    }

    // The native subscription ends: it leaves the group and the Kafka consumer takes both.
    drop(send);
    drop(reader);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, kafka.recv()).await {
            Ok(Some(KafkaSaw::Assigned(a))) if a == BTreeSet::from([0, 1]) => break,
            Ok(Some(_)) => {}
            _ => panic!("the kafka member never got both partitions"),
        }
    }
    stop.store(true, Ordering::Relaxed);
}

#[tokio::test]
async fn group_subscriptions_refuse_bad_requests_with_typed_errors() {
    let broker = TestBroker::start().await.expect("broker");
    let conn = connect_as(&broker, "guest", "guest").await;
    for (topic, group, code) in [
        ("missing", "g", v1::ErrorCode::NotFound),
        (
            "orders",
            &"g".repeat(300)[..],
            v1::ErrorCode::InvalidArgument,
        ),
    ] {
        if topic == "orders" {
            conn.call(&v1::Request {
                op: Some(Op::DeclareTopic(v1::DeclareTopic {
                    name: "orders".into(),
                    partitions: 1,
                    ..Default::default()
                })),
            })
            .await
            .expect("declare");
        }
        let subscribe = v1::Request {
            op: Some(Op::SubscribeTopic(v1::SubscribeTopic {
                topic: topic.into(),
                group: group.into(),
                ..Default::default()
            })),
        };
        let err = conn
            .open_subscription(&subscribe)
            .await
            .err()
            .expect("refused");
        assert_eq!(err.code(), Some(code), "{topic}: {err}");
    }
}
