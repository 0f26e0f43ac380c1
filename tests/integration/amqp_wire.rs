//! AMQP 0-9-1 at the frame level, for what real clients never send or cannot be made to show:
//! heartbeats and their timeout, bodies longer than announced, methods on unopened channels,
//! tuning limits, AMQPLAIN. Frames are built with the adapter's own codec (which wraps
//! `amq-protocol`), and read back with it.

use std::time::Duration;

use amq_protocol::protocol::{basic, channel, connection, queue, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::BytesMut;
use ferry::protocol::amqp::codec::{decode_frame, encode_content, encode_method, Incoming};
use ferry::testing::TestBroker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Wire {
    s: TcpStream,
    buf: BytesMut,
    /// Frames larger than this fail the test (the negotiated frame_max when it matters).
    frame_limit: usize,
}

impl Wire {
    async fn connect(broker: &TestBroker) -> Wire {
        let mut s = TcpStream::connect(broker.amqp_addr()).await.unwrap();
        s.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
        Wire {
            s,
            buf: BytesMut::new(),
            frame_limit: 1 << 20,
        }
    }

    async fn send(&mut self, ch: u16, m: AMQPClass) {
        let mut b = BytesMut::new();
        encode_method(ch, m, &mut b);
        self.s.write_all(&b).await.unwrap();
    }

    async fn raw(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    /// The next frame, or `None` when the server closed the socket (or 5 s passed).
    async fn recv(&mut self) -> Option<Incoming> {
        loop {
            if let Some(f) = decode_frame(&mut self.buf, self.frame_limit).unwrap() {
                return Some(f);
            }
            match tokio::time::timeout(Duration::from_secs(5), self.s.read_buf(&mut self.buf)).await
            {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    async fn recv_method(&mut self) -> Option<(u16, AMQPClass)> {
        loop {
            match self.recv().await? {
                Incoming::Method(ch, m) => return Some((ch, *m)),
                _ => continue,
            }
        }
    }

    /// Handshake with PLAIN (or a given mechanism/response) and the given tune-ok heartbeat.
    async fn open(broker: &TestBroker, mechanism: &str, response: Vec<u8>, heartbeat: u16) -> Wire {
        let mut w = Wire::connect(broker).await;
        match w.recv_method().await {
            Some((0, AMQPClass::Connection(connection::AMQPMethod::Start(s)))) => {
                let caps = match s.server_properties.inner().get("capabilities") {
                    Some(AMQPValue::FieldTable(t)) => t.clone(),
                    other => panic!("no capabilities: {other:?}"),
                };
                for c in [
                    "publisher_confirms",
                    "basic.nack",
                    "consumer_cancel_notify",
                    "per_consumer_qos",
                ] {
                    assert_eq!(caps.inner().get(c), Some(&AMQPValue::Boolean(true)), "{c}");
                }
                assert!(s.server_properties.contains_key("product"));
            }
            other => panic!("expected connection.start, got {other:?}"),
        }
        w.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: FieldTable::default(),
                mechanism: mechanism.into(),
                response: response.into(),
                locale: "en_US".into(),
            })),
        )
        .await;
        match w.recv_method().await {
            Some((0, AMQPClass::Connection(connection::AMQPMethod::Tune(t)))) => {
                assert_eq!(
                    (t.frame_max, t.channel_max, t.heartbeat),
                    (131072, 2047, 60)
                );
            }
            other => {
                // Auth failures end here; hand the wire back for the caller to inspect.
                w.buf.clear();
                if let Some((ch, m)) = other {
                    let mut b = BytesMut::new();
                    encode_method(ch, m, &mut b);
                    w.buf = b;
                }
                return w;
            }
        }
        w.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 16,
                frame_max: 4096,
                heartbeat,
            })),
        )
        .await;
        w.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        )
        .await;
        match w.recv_method().await {
            Some((0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)))) => {}
            other => panic!("expected open-ok, got {other:?}"),
        }
        w
    }

    async fn open_channel(&mut self, ch: u16) {
        self.send(
            ch,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )
        .await;
        match self.recv_method().await {
            Some((c, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)))) if c == ch => {}
            other => panic!("expected channel.open-ok, got {other:?}"),
        }
    }
}

fn plain(user: &str, pass: &str) -> Vec<u8> {
    format!("\0{user}\0{pass}").into_bytes()
}

fn connection_close_code(m: &AMQPClass) -> Option<u16> {
    match m {
        AMQPClass::Connection(connection::AMQPMethod::Close(c)) => Some(c.reply_code),
        _ => None,
    }
}

#[tokio::test]
async fn handshake_advertises_capabilities_and_rabbitmq_tuning() {
    let broker = TestBroker::start().await.unwrap();
    let mut w = Wire::open(&broker, "PLAIN", plain("guest", "guest"), 0).await;
    w.open_channel(1).await;
    w.send(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    )
    .await;
    match w.recv_method().await {
        Some((0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)))) => {}
        other => panic!("expected close-ok, got {other:?}"),
    }
    assert!(w.recv().await.is_none(), "socket closed after close-ok");
    broker.stop().await;
}

#[tokio::test]
async fn amqplain_authentication() {
    let broker = TestBroker::start().await.unwrap();
    let creds = amq_protocol::auth::Credentials::new("guest".into(), "guest".into());
    let response = creds.sasl_auth_string(amq_protocol::auth::SASLMechanism::AMQPlain);
    let mut w = Wire::open(&broker, "AMQPLAIN", response.as_bytes().to_vec(), 0).await;
    w.open_channel(1).await;
    let bad = amq_protocol::auth::Credentials::new("guest".into(), "nope".into())
        .sasl_auth_string(amq_protocol::auth::SASLMechanism::AMQPlain);
    let mut w = Wire::open(&broker, "AMQPLAIN", bad.as_bytes().to_vec(), 0).await;
    let (_, m) = w.recv_method().await.expect("connection.close");
    assert_eq!(connection_close_code(&m), Some(403));
    broker.stop().await;
}

#[tokio::test]
async fn configured_users_replace_the_default() {
    let broker = TestBroker::with(|b| {
        b.configure(|c| {
            c.amqp.users = vec![ferry::config::AmqpUser {
                name: "app".into(),
                password: "s3cret".into(),
            }]
        })
    })
    .await
    .unwrap();
    let mut w = Wire::open(&broker, "PLAIN", plain("app", "s3cret"), 0).await;
    w.open_channel(1).await;
    let mut w = Wire::open(&broker, "PLAIN", plain("guest", "guest"), 0).await;
    let (_, m) = w.recv_method().await.expect("connection.close");
    assert_eq!(connection_close_code(&m), Some(403));
    broker.stop().await;
}

#[tokio::test]
async fn server_sends_heartbeats_and_closes_a_silent_client() {
    let broker = TestBroker::start().await.unwrap();
    let mut w = Wire::open(&broker, "PLAIN", plain("guest", "guest"), 1).await;
    let started = tokio::time::Instant::now();
    let mut heartbeats = 0;
    // We never answer: the server sends heartbeats every second, then gives up after two
    // silent intervals and closes the socket.
    loop {
        match w.recv().await {
            Some(Incoming::Heartbeat(0)) => heartbeats += 1,
            Some(other) => panic!("unexpected {other:?}"),
            None => break,
        }
    }
    let took = started.elapsed();
    assert!(heartbeats >= 1, "no heartbeat in {took:?}");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "{took:?}"
    );
    broker.stop().await;
}

#[tokio::test]
async fn body_longer_than_announced_closes_the_connection() {
    let broker = TestBroker::start().await.unwrap();
    let mut w = Wire::open(&broker, "PLAIN", plain("guest", "guest"), 0).await;
    w.open_channel(1).await;
    w.send(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "q".into(),
            mandatory: false,
            immediate: false,
        })),
    )
    .await;
    let mut b = BytesMut::new();
    encode_content(1, Default::default(), b"0123456789", 4096, &mut b);
    // Patch the announced body size (bytes 7+4 .. 7+12 of the header frame) from 10 to 4.
    b[7 + 4..7 + 12].copy_from_slice(&4u64.to_be_bytes());
    w.raw(&b).await;
    let (_, m) = w.recv_method().await.expect("connection.close");
    assert_eq!(connection_close_code(&m), Some(501));
    broker.stop().await;
}

#[tokio::test]
async fn frame_larger_than_negotiated_frame_max_is_501() {
    let broker = TestBroker::start().await.unwrap();
    let mut w = Wire::open(&broker, "PLAIN", plain("guest", "guest"), 0).await;
    w.open_channel(1).await;
    // We negotiated 4096; an 8000-byte body frame is too large.
    let mut frame = vec![3u8, 0, 1];
    frame.extend_from_slice(&8000u32.to_be_bytes());
    frame.extend_from_slice(&[0u8; 8000]);
    frame.push(0xCE);
    w.raw(&frame).await;
    let (_, m) = w.recv_method().await.expect("connection.close");
    assert_eq!(connection_close_code(&m), Some(501));
    broker.stop().await;
}

#[tokio::test]
async fn method_on_an_unopened_channel_is_504_and_garbage_is_an_error() {
    let broker = TestBroker::start().await.unwrap();
    let mut w = Wire::open(&broker, "PLAIN", plain("guest", "guest"), 0).await;
    w.send(
        5,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "x".into(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    )
    .await;
    let (_, m) = w.recv_method().await.expect("connection.close");
    assert_eq!(connection_close_code(&m), Some(504));

    let mut w = Wire::open(&broker, "PLAIN", plain("guest", "guest"), 0).await;
    // A method frame whose payload is nonsense (class 9999).
    w.raw(&[1, 0, 1, 0, 0, 0, 4, 0x27, 0x0f, 0, 1, 0xCE]).await;
    let (_, m) = w.recv_method().await.expect("connection.close");
    assert!(
        matches!(connection_close_code(&m), Some(501..=503)),
        "{m:?}"
    );
    // Broker still serves new connections.
    let mut w = Wire::open(&broker, "PLAIN", plain("guest", "guest"), 0).await;
    w.open_channel(1).await;
    broker.stop().await;
}

#[tokio::test]
async fn unknown_delivery_tag_is_a_406_channel_error() {
    let broker = TestBroker::start().await.unwrap();
    let mut w = Wire::open(&broker, "PLAIN", plain("guest", "guest"), 0).await;
    w.open_channel(1).await;
    w.send(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: 77,
            multiple: false,
        })),
    )
    .await;
    match w.recv_method().await {
        Some((1, AMQPClass::Channel(channel::AMQPMethod::Close(c)))) => {
            assert_eq!(c.reply_code, 406)
        }
        other => panic!("expected channel.close 406, got {other:?}"),
    }
    w.send(
        1,
        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
    )
    .await;
    // The connection carries on: the channel id can be reused.
    w.open_channel(1).await;
    broker.stop().await;
}

use crate::common;
use common::external_ip;

#[tokio::test]
async fn guest_is_refused_from_a_non_loopback_address() {
    let Some(ip) = external_ip() else {
        eprintln!("no non-loopback interface; skipping");
        return;
    };
    let broker = TestBroker::with(|b| {
        b.amqp_listen("0.0.0.0:0").configure(|c| {
            c.amqp.users.push(ferry::config::AmqpUser {
                name: "remote".into(),
                password: "pw".into(),
            })
        })
    })
    .await
    .unwrap();
    let addr = std::net::SocketAddr::new(ip, broker.amqp_addr().port());
    let login = |user: &'static str, pass: &'static str| async move {
        let mut w = Wire {
            s: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
            frame_limit: 1 << 20,
        };
        w.raw(b"AMQP\x00\x00\x09\x01").await;
        w.recv_method().await.expect("start");
        w.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: FieldTable::default(),
                mechanism: "PLAIN".into(),
                response: plain(user, pass).into(),
                locale: "en_US".into(),
            })),
        )
        .await;
        w.recv_method().await.expect("a reply").1
    };
    let refused = login("guest", "guest").await;
    assert_eq!(connection_close_code(&refused), Some(403), "{refused:?}");
    let accepted = login("remote", "pw").await;
    assert!(
        matches!(
            accepted,
            AMQPClass::Connection(connection::AMQPMethod::Tune(_))
        ),
        "{accepted:?}"
    );
    broker.stop().await;
}

/// The methods the server sends next, up to and including the first that `last` matches.
async fn methods_until(
    w: &mut Wire,
    mut last: impl FnMut(&AMQPClass) -> bool,
) -> Vec<(u16, AMQPClass)> {
    let mut seen = Vec::new();
    while let Some((ch, m)) = w.recv_method().await {
        let done = last(&m);
        seen.push((ch, m));
        if done {
            return seen;
        }
    }
    panic!("connection ended after {seen:?}");
}

/// A short name for the methods an ordering test looks at.
fn method_name(m: &AMQPClass) -> String {
    match m {
        AMQPClass::Basic(basic::AMQPMethod::Cancel(c)) => {
            format!("basic.cancel {}", c.consumer_tag)
        }
        AMQPClass::Basic(basic::AMQPMethod::Ack(_)) => "basic.ack".into(),
        AMQPClass::Basic(basic::AMQPMethod::Return(_)) => "basic.return".into(),
        AMQPClass::Queue(queue::AMQPMethod::DeleteOk(_)) => "queue.delete-ok".into(),
        other => format!("{other:?}"),
    }
}

async fn declare_queue(w: &mut Wire, ch: u16, name: &str, arguments: FieldTable) {
    w.send(
        ch,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: name.into(),
            passive: false,
            durable: true,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments,
        })),
    )
    .await;
    match w.recv_method().await {
        Some((c, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_)))) if c == ch => {}
        other => panic!("expected queue.declare-ok, got {other:?}"),
    }
}

async fn consume_from(w: &mut Wire, ch: u16, queue_name: &str, tag: &str) {
    w.send(
        ch,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: queue_name.into(),
            consumer_tag: tag.into(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    )
    .await;
    match w.recv_method().await {
        Some((c, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)))) if c == ch => {}
        other => panic!("expected basic.consume-ok, got {other:?}"),
    }
}

/// Deletes `queue_name` on channel 1 while consumers on channel 1 and channel 2 of the same
/// connection consume from it, and checks that queue.delete-ok comes before both cancels.
async fn delete_consumed_queue(queue_name: &str, arguments: FieldTable) {
    let broker = TestBroker::start().await.unwrap();
    let mut w = Wire::open(&broker, "PLAIN", plain("guest", "guest"), 0).await;
    w.open_channel(1).await;
    w.open_channel(2).await;
    declare_queue(&mut w, 1, queue_name, arguments).await;
    for ch in [1, 2] {
        // Streams refuse consumers without a prefetch (RabbitMQ's rule too).
        w.send(
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: 10,
                global: false,
            })),
        )
        .await;
        match w.recv_method().await {
            Some((c, AMQPClass::Basic(basic::AMQPMethod::QosOk(_)))) if c == ch => {}
            other => panic!("expected basic.qos-ok, got {other:?}"),
        }
    }
    consume_from(&mut w, 1, queue_name, "same-channel").await;
    consume_from(&mut w, 2, queue_name, "other-channel").await;
    w.send(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
            queue: queue_name.into(),
            if_unused: false,
            if_empty: false,
            nowait: false,
        })),
    )
    .await;
    let mut cancels = 0;
    let seen = methods_until(&mut w, |m| {
        if matches!(m, AMQPClass::Basic(basic::AMQPMethod::Cancel(_))) {
            cancels += 1;
        }
        cancels == 2
    })
    .await;
    broker.stop().await;
    let seen: Vec<String> = seen
        .iter()
        .map(|(ch, m)| format!("{ch}:{}", method_name(m)))
        .collect();
    assert_eq!(seen[0], "1:queue.delete-ok", "{seen:?}");
    let mut cancels = seen[1..].to_vec();
    cancels.sort();
    assert_eq!(
        cancels,
        [
            "1:basic.cancel same-channel",
            "2:basic.cancel other-channel"
        ],
        "{seen:?}"
    );
}

/// RabbitMQ answers queue.delete before it tells the queue's consumers they were cancelled,
/// on the deleting channel and on the connection's other channels; py-amqp (kombu, Celery)
/// raises ConsumerCancelled from queue_delete() when the cancel comes first (issue 21).
#[tokio::test]
async fn queue_delete_ok_comes_before_the_cancels_it_causes() {
    delete_consumed_queue("deleted-under-consumers", FieldTable::default()).await;
}

/// The same order when the deleted queue is a stream (a topic under the hood).
#[tokio::test]
async fn stream_delete_ok_comes_before_the_cancels_it_causes() {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    delete_consumed_queue("deleted-stream", args).await;
}

/// A mandatory publish that routes nowhere, in confirm mode: basic.return (with the message)
/// comes before the basic.ack that confirms it, as RabbitMQ sends them.
#[tokio::test]
async fn basic_return_comes_before_the_confirm_of_an_unroutable_mandatory_publish() {
    let broker = TestBroker::start().await.unwrap();
    let mut w = Wire::open(&broker, "PLAIN", plain("guest", "guest"), 0).await;
    w.open_channel(1).await;
    w.send(
        1,
        AMQPClass::Confirm(amq_protocol::protocol::confirm::AMQPMethod::Select(
            amq_protocol::protocol::confirm::Select { nowait: false },
        )),
    )
    .await;
    match w.recv_method().await {
        Some((1, AMQPClass::Confirm(_))) => {}
        other => panic!("expected confirm.select-ok, got {other:?}"),
    }
    let mut b = BytesMut::new();
    encode_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "no-such-queue".into(),
            mandatory: true,
            immediate: false,
        })),
        &mut b,
    );
    encode_content(1, basic::AMQPProperties::default(), b"lost?", 4096, &mut b);
    w.raw(&b).await;
    let seen = methods_until(&mut w, |m| {
        matches!(m, AMQPClass::Basic(basic::AMQPMethod::Ack(_)))
    })
    .await;
    let names: Vec<_> = seen.iter().map(|(_, m)| method_name(m)).collect();
    assert_eq!(names, ["basic.return", "basic.ack"]);
    broker.stop().await;
}

/// Issue 12 bug 2: a Kafka header of 200 KB delivered over AMQP used to make a 200 KB content
/// header frame, over the negotiated frame_max (strict clients close the connection). Every
/// frame now fits; the header that cannot is left out and named in `x-ferry-dropped-headers`,
/// and the body and the other headers arrive whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_property_set_larger_than_frame_max_never_makes_an_oversized_frame() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let broker = TestBroker::start().await.unwrap();
    broker
        .core()
        .create_topic("big-headers", 1, Default::default())
        .await
        .unwrap();
    let mut w = Wire::open(&broker, "PLAIN", plain("guest", "guest"), 0).await;
    // Wire::open negotiated frame_max 4096: a larger frame now fails decoding.
    w.frame_limit = 4096;
    w.open_channel(1).await;
    declare_queue(&mut w, 1, "big", FieldTable::default()).await;
    w.send(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
            queue: "big".into(),
            exchange: "big-headers".into(),
            routing_key: "#".into(),
            nowait: false,
            arguments: FieldTable::default(),
        })),
    )
    .await;
    match w.recv_method().await {
        Some((1, AMQPClass::Queue(queue::AMQPMethod::BindOk(_)))) => {}
        other => panic!("expected queue.bind-ok, got {other:?}"),
    }
    let producer: FutureProducer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", broker.kafka_bootstrap())
        .set("message.timeout.ms", "20000")
        .create()
        .expect("producer");
    let big = vec![b'x'; 200 * 1024];
    let body = vec![b'b'; 10_000];
    producer
        .send(
            FutureRecord::to("big-headers")
                .key("k")
                .payload(&body)
                .headers(
                    OwnedHeaders::new()
                        .insert(Header {
                            key: "big",
                            value: Some(&big),
                        })
                        .insert(Header {
                            key: "small",
                            value: Some("ok"),
                        }),
                ),
            Duration::from_secs(10),
        )
        .await
        .expect("produce");
    // Routing to the bound queue is asynchronous: poll basic.get.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let header = loop {
        w.send(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
                queue: "big".into(),
                no_ack: true,
            })),
        )
        .await;
        match w.recv().await {
            Some(Incoming::Method(1, m))
                if matches!(*m, AMQPClass::Basic(basic::AMQPMethod::GetOk(_))) =>
            {
                match w.recv().await {
                    Some(Incoming::Header(1, h)) => break h,
                    other => panic!("expected a content header, got {other:?}"),
                }
            }
            Some(Incoming::Method(1, m))
                if matches!(*m, AMQPClass::Basic(basic::AMQPMethod::GetEmpty(_))) =>
            {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the record never reached the queue"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("expected get-ok or get-empty, got {other:?}"),
        }
    };
    let mut received = Vec::new();
    while received.len() < header.body_size as usize {
        match w.recv().await {
            Some(Incoming::Body(1, part)) => received.extend_from_slice(&part),
            other => panic!("expected a body frame, got {other:?}"),
        }
    }
    assert_eq!(received, body);
    let headers = header.properties.headers().clone().expect("headers");
    assert!(!headers.contains_key("big"));
    assert_eq!(
        headers.inner().get("small"),
        Some(&AMQPValue::LongString("ok".into()))
    );
    assert_eq!(
        headers.inner().get("x-ferry-dropped-headers"),
        Some(&AMQPValue::FieldArray(
            vec![AMQPValue::LongString("big".into())].into()
        ))
    );
    // The connection is still fine.
    w.open_channel(2).await;
    broker.stop().await;
}

/// A deletion through the admin API answers no AMQP method, so nothing holds the cancel back:
/// the queue's consumer is told at once, as RabbitMQ does for a management-UI deletion.
#[tokio::test]
async fn an_admin_api_deletion_cancels_the_queues_consumers_at_once() {
    let broker = TestBroker::start().await.unwrap();
    let mut w = Wire::open(&broker, "PLAIN", plain("guest", "guest"), 0).await;
    w.open_channel(1).await;
    declare_queue(&mut w, 1, "removed-by-ops", FieldTable::default()).await;
    consume_from(&mut w, 1, "removed-by-ops", "worker").await;
    let status = reqwest::Client::new()
        .delete(format!(
            "{}/api/queues/%2F/removed-by-ops",
            broker.http_url()
        ))
        .basic_auth("admin", Some("admin"))
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");
    match w.recv_method().await {
        Some((1, AMQPClass::Basic(basic::AMQPMethod::Cancel(c)))) => {
            assert_eq!(c.consumer_tag.as_str(), "worker")
        }
        other => panic!("expected basic.cancel, got {other:?}"),
    }
    broker.stop().await;
}
