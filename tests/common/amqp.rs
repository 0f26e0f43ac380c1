//! lapin helpers shared by the AMQP test binaries (`amqp_lapin`, `amqp_features`,
//! `cross_protocol`): connecting, declaring, publishing with and without confirms, polling
//! basic.get, reading deliveries with a deadline, and the AMQP reply code of a lapin error.
//! Each helper panics with the operation's name, so a failing test says which step broke.

use std::time::Duration;

use ferry::testing::TestBroker;
use futures::StreamExt;
use lapin::message::{BasicGetMessage, Delivery};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

/// How long a test waits for any one delivery.
pub const WAIT: Duration = Duration::from_secs(10);

pub async fn connect(broker: &TestBroker) -> Connection {
    connect_url(&broker.amqp_url()).await
}

pub async fn connect_url(url: &str) -> Connection {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect")
}

pub async fn channel(conn: &Connection) -> Channel {
    conn.create_channel().await.expect("channel")
}

pub fn args(pairs: Vec<(&str, AMQPValue)>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert(k.into(), v);
    }
    t
}

pub fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

pub async fn declare(ch: &Channel, name: &str) {
    declare_with(ch, name, FieldTable::default()).await
}

pub async fn declare_with(ch: &Channel, name: &str, arguments: FieldTable) {
    ch.queue_declare(name.into(), QueueDeclareOptions::default(), arguments)
        .await
        .expect("queue.declare");
}

pub async fn declare_durable(ch: &Channel, name: &str, arguments: FieldTable) {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        arguments,
    )
    .await
    .expect("queue.declare");
}

pub async fn exchange(ch: &Channel, name: &str, kind: ExchangeKind, arguments: FieldTable) {
    ch.exchange_declare(name.into(), kind, Default::default(), arguments)
        .await
        .expect("exchange.declare");
}

pub async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    bind_with(ch, queue, exchange, key, FieldTable::default()).await
}

pub async fn bind_with(
    ch: &Channel,
    queue: &str,
    exchange: &str,
    key: &str,
    arguments: FieldTable,
) {
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        Default::default(),
        arguments,
    )
    .await
    .expect("queue.bind");
}

/// Publishes without waiting for anything but the frames to be sent.
pub async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    publish_pending(ch, exchange, key, body, BasicProperties::default()).await;
}

pub async fn confirm_mode(ch: &Channel) {
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
}

/// Publishes and waits for the broker's confirm (the channel must be in confirm mode);
/// returns whether it was an ack.
pub async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) -> bool {
    publish_pending(ch, exchange, key, body, props)
        .await
        .await
        .expect("confirm")
        .is_ack()
}

/// Publishes and returns the pending confirm without waiting for it (the channel must be in
/// confirm mode): for messages the broker holds back or refuses.
pub async fn publish_pending(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) -> lapin::PublisherConfirm {
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await
    .expect("publish")
}

/// Publishes a message the broker must refuse by closing the channel (or connection); returns
/// the error lapin reports, whether from the publish or from its confirm.
pub async fn publish_refused(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) -> lapin::Error {
    let res = ch
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await;
    match res {
        Ok(confirm) => confirm.await.expect_err("publish refused"),
        Err(e) => e,
    }
}

/// basic.get, polling for up to 3 s: publishes become visible once durable, and dead letters
/// arrive through a task.
pub async fn get(ch: &Channel, queue: &str, no_ack: bool) -> Option<BasicGetMessage> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let got = ch
            .basic_get(queue.into(), BasicGetOptions { no_ack })
            .await
            .expect("basic.get");
        if got.is_some() || tokio::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// basic.get that must find a message, acked; returns its body.
pub async fn get_body(ch: &Channel, queue: &str) -> Vec<u8> {
    let m = get(ch, queue, false).await.expect("a message");
    m.delivery
        .ack(BasicAckOptions::default())
        .await
        .expect("ack");
    m.delivery.data
}

/// Ready messages of a queue, from a passive declare.
pub async fn count(ch: &Channel, queue: &str) -> u32 {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("passive declare")
    .message_count()
}

pub async fn consume(ch: &Channel, queue: &str, no_ack: bool) -> lapin::Consumer {
    ch.basic_consume(
        queue.into(),
        "".into(),
        BasicConsumeOptions {
            no_ack,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("basic.consume")
}

/// The next delivery, within [`WAIT`].
pub async fn next(consumer: &mut lapin::Consumer) -> Delivery {
    tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("delivery in time")
        .expect("stream open")
        .expect("delivery ok")
}

/// The AMQP reply code of a channel or connection close, if the error is one.
pub fn amqp_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => Some(p.get_id()),
        _ => None,
    }
}

pub fn header<'a>(d: &'a Delivery, key: &str) -> Option<&'a AMQPValue> {
    d.properties.headers().as_ref()?.inner().get(key)
}

/// Polls `cond` every 20 ms for up to 5 s; returns its last value.
pub async fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// The first error a connection reports on its event stream (a broker's connection.close),
/// within [`WAIT`].
pub async fn connection_error(events: impl futures::Stream<Item = lapin::Event>) -> lapin::Error {
    let mut events = std::pin::pin!(events);
    tokio::time::timeout(WAIT, async {
        loop {
            match events.next().await {
                Some(lapin::Event::Error(e)) => return e,
                Some(_) => {}
                None => panic!("event stream ended without an error"),
            }
        }
    })
    .await
    .expect("the client hears of the close in time")
}
