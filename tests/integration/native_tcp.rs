//! The native protocol over TCP (`native_tcp_listen`): TLS with ALPN `ferry/1` and streams
//! multiplexed by id. Publish with confirm, a queue subscription with nack and ack, and a
//! topic subscription through the SDK with `Transport::Tcp`; a subscriber that stops reading
//! does not hold up a publish on the same connection (per-stream flow control); and hostile
//! bytes on the listener (garbage, an oversized frame, a stream past the granted ones, an
//! oversized request inside a stream, a silent handshake) get a CLOSE frame or a typed error,
//! never a hang, and the listener keeps serving. The SDK suites' `..._over_tcp` tests run the
//! same bodies as their QUIC versions.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use ferry::client::native::*;
use ferry::proto::mux::frame::{self, Frame};
use ferry::proto::v1;
use ferry::testing::TestBroker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::native_sdk::sdk_over;

const WAIT: Duration = Duration::from_secs(10);

fn queue(broker: &TestBroker, name: &str) -> Arc<ferry::broker::queue::Queue> {
    broker
        .core()
        .router()
        .queue("/", name)
        .expect("queue exists")
}

async fn call(conn: &NativeConnection, op: v1::request::Op) -> v1::response::Result {
    conn.call(&v1::Request { op: Some(op) })
        .await
        .expect("call")
}

async fn declare_queue(conn: &NativeConnection, name: &str) {
    call(
        conn,
        v1::request::Op::DeclareQueue(v1::DeclareQueue {
            name: name.into(),
            durable: true,
            ..Default::default()
        }),
    )
    .await;
}

async fn next_delivery(reader: &mut ferry::proto::framed::FrameReader<RecvStream>) -> v1::Delivery {
    let r: v1::Response = tokio::time::timeout(WAIT, reader.next())
        .await
        .expect("in time")
        .expect("read")
        .expect("frame");
    match r.result {
        Some(v1::response::Result::Delivery(d)) => d,
        other => panic!("expected a delivery, got {other:?}"),
    }
}

async fn settle(send: &mut SendStream, tag: u64, outcome: v1::settle::Outcome) {
    let req = v1::Request {
        op: Some(v1::request::Op::Settle(v1::Settle {
            delivery_tag: tag,
            outcome: outcome as i32,
            reason: String::new(),
        })),
    };
    ferry::proto::framed::write(send, &req)
        .await
        .expect("settle");
}

fn event_id(d: &v1::Delivery) -> String {
    d.message
        .as_ref()
        .and_then(|m| m.metadata.as_ref())
        .map(|m| m.id.clone())
        .unwrap_or_default()
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn publish_confirm_queue_nack_ack_and_topic_subscription_over_tcp() {
    let broker = TestBroker::start().await.expect("broker");
    let conn = sdk_over(&broker, Transport::Tcp).await;
    assert_eq!(conn.transport(), Transport::Tcp);
    assert!(conn.quic().await.is_none(), "no QUIC connection was made");
    declare_queue(&conn, "work").await;
    let publisher = EventPublisher::new(conn.clone());
    let to = PublishConfig::queue("work");
    for id in ["a", "b"] {
        let receipt = publisher
            .publish(&id, EventMetadata::new("job", "/t").with_id(id), &to)
            .await
            .expect("confirmed");
        assert_eq!(receipt.queues, 1);
    }
    // The confirm means the message is stored.
    assert_eq!(queue(&broker, "work").message_count(), 2);

    let subscribe = v1::Request {
        op: Some(v1::request::Op::SubscribeQueue(v1::SubscribeQueue {
            queue: "work".into(),
            prefetch: 10,
            ..Default::default()
        })),
    };
    let (mut send, mut reader) = conn.open_subscription(&subscribe).await.expect("subscribe");
    let first = next_delivery(&mut reader).await;
    let second = next_delivery(&mut reader).await;
    assert_eq!(
        (event_id(&first), event_id(&second)),
        ("a".into(), "b".into())
    );
    assert!(!first.redelivered);
    settle(
        &mut send,
        first.delivery_tag,
        v1::settle::Outcome::NackRequeue,
    )
    .await;
    let again = next_delivery(&mut reader).await;
    assert_eq!(event_id(&again), "a");
    assert!(again.redelivered, "a nacked message comes back redelivered");
    settle(&mut send, second.delivery_tag, v1::settle::Outcome::Ack).await;
    settle(&mut send, again.delivery_tag, v1::settle::Outcome::Ack).await;
    let q = queue(&broker, "work");
    eventually("every message settled", || {
        q.message_count() == 0 && q.unacked_count() == 0
    })
    .await;
    drop((send, reader));

    call(
        &conn,
        v1::request::Op::DeclareTopic(v1::DeclareTopic {
            name: "audit".into(),
            partitions: 1,
            ..Default::default()
        }),
    )
    .await;
    for i in 0..2 {
        publisher
            .publish(
                &i,
                EventMetadata::new("audit", "/t"),
                &PublishConfig::topic("audit"),
            )
            .await
            .expect("topic publish");
    }
    let subscribe = v1::Request {
        op: Some(v1::request::Op::SubscribeTopic(v1::SubscribeTopic {
            topic: "audit".into(),
            start: Some(v1::subscribe_topic::Start::Earliest(true)),
            prefetch: 10,
            ..Default::default()
        })),
    };
    let (mut send, mut reader) = conn.open_subscription(&subscribe).await.expect("subscribe");
    for offset in 0..2 {
        let d = next_delivery(&mut reader).await;
        assert_eq!((d.partition, d.offset), (0, offset));
        settle(&mut send, d.delivery_tag, v1::settle::Outcome::Ack).await;
    }
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_does_not_block_a_publish_on_the_same_connection() {
    let broker = TestBroker::start().await.expect("broker");
    let conn = sdk_over(&broker, Transport::Tcp).await;
    declare_queue(&conn, "flood").await;
    declare_queue(&conn, "other").await;
    let publisher = EventPublisher::new(conn.clone());
    // 4 MiB of deliveries: far more than a stream's window (256 KiB) and the connection's
    // output buffer (1 MiB), so an unread subscription would fill any shared buffer.
    const N: usize = 64;
    for i in 0..N {
        publisher
            .publish_bytes(
                vec![i as u8; 64 * 1024],
                "application/octet-stream",
                EventMetadata::new("blob", "/t"),
                &PublishConfig::queue("flood"),
                "",
            )
            .await
            .expect("publish");
    }
    let subscribe = v1::Request {
        op: Some(v1::request::Op::SubscribeQueue(v1::SubscribeQueue {
            queue: "flood".into(),
            prefetch: 1000,
            ..Default::default()
        })),
    };
    let (_send, mut reader) = conn.open_subscription(&subscribe).await.expect("subscribe");
    // The broker takes all 64 for the subscription and writes until the window is full.
    let q = queue(&broker, "flood");
    eventually("the subscription took the messages", || {
        q.unacked_count() == N as u64
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..20 {
        let receipt = tokio::time::timeout(
            Duration::from_secs(5),
            publisher.publish(
                &i,
                EventMetadata::new("t", "/t"),
                &PublishConfig::queue("other"),
            ),
        )
        .await
        .expect("a publish is not held up by the unread subscription")
        .expect("publish");
        assert_eq!(receipt.queues, 1);
    }
    assert_eq!(queue(&broker, "other").message_count(), 20);
    // Reading again, the subscription gets every delivery: nothing was lost while it waited.
    for _ in 0..N {
        let d = next_delivery(&mut reader).await;
        assert_eq!(
            d.message.expect("message").payload.len(),
            64 * 1024,
            "a whole payload"
        );
    }
}

/// Reads frames off a raw TLS connection until the server closes it; the frames seen.
async fn frames_until_closed<S: tokio::io::AsyncRead + Unpin>(tls: &mut S) -> Vec<Frame> {
    let mut raw = Vec::new();
    let mut chunk = [0_u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, tls.read(&mut chunk)).await {
            Err(_) => panic!("the server did not close the connection"),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => raw.extend_from_slice(&chunk[..n]),
        }
    }
    let mut buf = BytesMut::from(&raw[..]);
    let mut frames = Vec::new();
    while let Ok(Some(f)) = frame::decode(&mut buf) {
        frames.push(f);
    }
    frames
}

fn tcp_options(broker: &TestBroker) -> ConnectOptions {
    let addr = broker.native_tcp_addr().expect("native_tcp_listen is on");
    let trust = Trust::Fingerprint(broker.native_fingerprint().to_string());
    ConnectOptions::new(addr, trust, "guest", "guest").with_transport(Transport::Tcp, addr)
}

fn protocol_close(frames: &[Frame]) -> bool {
    frames
        .iter()
        .any(|f| matches!(f, Frame::Close { code, .. } if *code == frame::code::PROTOCOL))
}

#[tokio::test]
async fn malformed_and_oversized_frames_close_the_connection_cleanly() {
    let broker = TestBroker::with(|b| b.configure(|c| c.native.max_frame_bytes = 4096))
        .await
        .expect("broker");
    let options = tcp_options(&broker);

    // Bytes that are no frame: a CLOSE with the protocol-error code, then the end.
    let mut tls = open_raw_tcp(&options).await.expect("handshake");
    tls.write_all(&[0xff; 16]).await.expect("write");
    let frames = frames_until_closed(&mut tls).await;
    assert!(
        matches!(frames.first(), Some(Frame::MaxStreams { max: 4096 })),
        "the server grants streams first: {frames:?}"
    );
    assert!(protocol_close(&frames), "{frames:?}");

    // A frame length over the mux limit: refused before its body is read.
    let mut tls = open_raw_tcp(&options).await.expect("handshake");
    let mut huge = BytesMut::new();
    prost::encoding::encode_varint(1 << 30, &mut huge);
    tls.write_all(&huge).await.expect("write");
    assert!(protocol_close(&frames_until_closed(&mut tls).await));

    // A stream past the granted ones.
    let mut tls = open_raw_tcp(&options).await.expect("handshake");
    let mut out = BytesMut::new();
    frame::put_data(&mut out, 100_000, b"x");
    tls.write_all(&out).await.expect("write");
    assert!(protocol_close(&frames_until_closed(&mut tls).await));

    // An unknown frame type.
    let mut tls = open_raw_tcp(&options).await.expect("handshake");
    tls.write_all(&[2, 1, 0x7e]).await.expect("write");
    assert!(protocol_close(&frames_until_closed(&mut tls).await));

    // Inside a well-formed stream, a request frame over native.max_frame_bytes: a typed
    // TOO_LARGE answer on that stream, as over QUIC, and the stream ends.
    let mut tls = open_raw_tcp(&options).await.expect("handshake");
    let mut request = BytesMut::new();
    prost::encoding::encode_varint(1_000_000, &mut request);
    request.extend_from_slice(&[0; 16]);
    let mut out = BytesMut::new();
    frame::put_data(&mut out, 1, &request);
    tls.write_all(&out).await.expect("write");
    let mut raw = BytesMut::new();
    let mut answer = BytesMut::new();
    let mut fin = false;
    let mut chunk = [0_u8; 4096];
    while !fin {
        let n = tokio::time::timeout(WAIT, tls.read(&mut chunk))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(n > 0, "the connection stays open");
        raw.extend_from_slice(&chunk[..n]);
        while let Some(f) = frame::decode(&mut raw).expect("valid frames") {
            match f {
                Frame::Data { stream: 1, payload } => answer.extend_from_slice(&payload),
                Frame::Fin { stream: 1 } => fin = true,
                _ => {}
            }
        }
    }
    let response: v1::Response = ferry::proto::codec::decode(&mut answer, 1 << 20)
        .expect("a response")
        .expect("whole");
    match response.result {
        Some(v1::response::Result::Error(e)) => assert_eq!(e.code, ErrorCode::TooLarge as i32),
        other => panic!("expected TOO_LARGE, got {other:?}"),
    }

    // The listener still serves.
    let conn = connect(options).await.expect("connect after the abuse");
    declare_queue(&conn, "still-fine").await;
}

#[tokio::test]
async fn a_silent_client_is_dropped_at_the_handshake_timeout() {
    let broker = TestBroker::with(|b| b.configure(|c| c.native.handshake_timeout_ms = 300))
        .await
        .expect("broker");
    let addr = broker.native_tcp_addr().expect("on");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut buf = [0_u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("closed by the handshake timeout")
        .unwrap_or(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn a_url_scheme_chooses_the_transport() {
    let broker = TestBroker::start().await.expect("broker");
    let trust = Trust::Fingerprint(broker.native_fingerprint().to_string());
    let tcp = broker.native_tcp_addr().expect("on");
    let options =
        ConnectOptions::from_url(&format!("tcp://{tcp}"), trust.clone(), "guest", "guest")
            .expect("url");
    assert_eq!(options.transport, Transport::Tcp);
    let conn = connect(options).await.expect("connect over tcp");
    declare_queue(&conn, "via-url").await;
    let quic = ConnectOptions::from_url(
        &format!("quic://{}", broker.native_addr()),
        trust.clone(),
        "guest",
        "guest",
    )
    .expect("url");
    assert_eq!(quic.transport, Transport::Quic);
    assert!(ConnectOptions::from_url("http://127.0.0.1:1", trust, "guest", "guest").is_err());
}
