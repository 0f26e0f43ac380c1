//! A repeat that deduplication drops is confirmed only once the copy it repeats is durable,
//! whatever protocol published it: if the original's append fails (here a failed fsync), the
//! repeat is nacked too, so the publisher keeps the message rather than forgetting a message
//! the broker lost. Through lapin, for a queue's `x-message-deduplication` and for a topic's
//! `ferry.dedup.window.ms` (its exchange face).

use std::collections::BTreeMap;

use ferry::testing::TestBroker;
use lapin::types::AMQPValue;
use lapin::BasicProperties;

use crate::common;
use common::amqp::*;

fn with_id(id: &str) -> BasicProperties {
    BasicProperties::default().with_message_id(id.into())
}

/// A publisher that resends after a lost confirm (both copies in flight at once) while the
/// log the message goes to fails its next fsync: the original and the repeat are both nacked.
async fn original_lost_and_repeat_nacked(ch: &lapin::Channel, exchange: &str, key: &str) {
    let original = publish_pending(ch, exchange, key, b"pay-1", with_id("pay-1")).await;
    let resend = publish_pending(ch, exchange, key, b"pay-1", with_id("pay-1")).await;
    assert!(
        original.await.unwrap().is_nack(),
        "the original's fsync failed"
    );
    let resend = resend.await.unwrap();
    assert!(
        resend.is_nack(),
        "a repeat of a lost message was confirmed: {resend:?}"
    );
}

/// A channel in confirm mode and the durable queue `once` with `x-message-deduplication`.
async fn deduplicating_queue(broker: &TestBroker) -> (lapin::Connection, lapin::Channel) {
    let conn = connect(broker).await;
    let ch = channel(&conn).await;
    declare_durable(
        &ch,
        "once",
        args(vec![("x-message-deduplication", AMQPValue::Boolean(true))]),
    )
    .await;
    confirm_mode(&ch).await;
    (conn, ch)
}

#[tokio::test]
async fn a_queue_repeat_is_not_confirmed_when_its_original_is_lost() {
    let broker = TestBroker::start().await.unwrap();
    let (_conn, ch) = deduplicating_queue(&broker).await;
    let q = broker.core().router().queue("/", "once").unwrap();
    q.log().inject_fsync_failure();
    original_lost_and_repeat_nacked(&ch, "", "once").await;
    broker.stop().await;
}

#[tokio::test]
async fn a_topic_repeat_is_not_confirmed_when_its_original_is_lost() {
    let broker = TestBroker::start().await.unwrap();
    let configs = BTreeMap::from([("ferry.dedup.window.ms".to_string(), "60000".to_string())]);
    let topic = broker
        .core()
        .create_topic("payments", 1, configs)
        .await
        .unwrap();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    confirm_mode(&ch).await;
    // A first message makes the topic's deduplication cache load before the failure.
    assert!(publish_confirmed(&ch, "payments", "k", b"warm", with_id("warm")).await);
    topic.partition(0).unwrap().inject_fsync_failure();
    original_lost_and_repeat_nacked(&ch, "payments", "k").await;
    broker.stop().await;
}

#[tokio::test]
async fn a_repeat_of_a_durable_message_is_confirmed_and_not_stored_twice() {
    let broker = TestBroker::start().await.unwrap();
    let (_conn, ch) = deduplicating_queue(&broker).await;
    let original = publish_pending(&ch, "", "once", b"a", with_id("a")).await;
    let resend = publish_pending(&ch, "", "once", b"a", with_id("a")).await;
    assert!(original.await.unwrap().is_ack());
    assert!(resend.await.unwrap().is_ack());
    assert_eq!(count(&ch, "once").await, 1);
    broker.stop().await;
}
