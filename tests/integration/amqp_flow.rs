//! AMQP flow control: a queue whose deliveries fall behind its publishers holds the publishing
//! connections (they stop being read, TCP slows the client), like RabbitMQ's credit flow; a
//! backlog nobody is taking (no consumers, or consumers out of prefetch credit) holds nobody;
//! and a connection that publishes to and consumes from one queue never holds itself.
//!
//! The clients are raw sockets with the adapter's own codec, so the tests decide exactly how
//! fast each side writes and reads (a library client reads its socket eagerly, which would
//! hide a slow consumer from the broker).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use amq_protocol::protocol::basic::{self, AMQPProperties};
use amq_protocol::protocol::{channel, connection, queue, AMQPClass};
use amq_protocol::types::FieldTable;
use bytes::BytesMut;
use ferry::broker::queue::FLOW_HIGH;
use ferry::protocol::amqp::codec::{decode_frame, encode_content, encode_method, Incoming};
use ferry::testing::TestBroker;
use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common;

/// The frame_max the raw clients ask for.
const FRAME_MAX: usize = 131_072;

struct Wire {
    s: TcpStream,
    buf: BytesMut,
}

impl Wire {
    /// Connects as guest and opens channel 1.
    async fn open(broker: &TestBroker) -> Wire {
        Wire::open_with_recv_buffer(broker, None).await
    }

    /// [`Wire::open`] with the socket's receive buffer set (a slow reader that the kernel
    /// must not buffer much for).
    async fn open_with_recv_buffer(broker: &TestBroker, recv_buffer: Option<u32>) -> Wire {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let mut s = socket.connect(broker.amqp_addr()).await.unwrap();
        s.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
        let mut w = Wire {
            s,
            buf: BytesMut::new(),
        };
        w.expect(|m| matches!(m, AMQPClass::Connection(connection::AMQPMethod::Start(_))))
            .await;
        w.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: FieldTable::default(),
                mechanism: "PLAIN".into(),
                response: "\0guest\0guest".into(),
                locale: "en_US".into(),
            })),
        )
        .await;
        w.expect(|m| matches!(m, AMQPClass::Connection(connection::AMQPMethod::Tune(_))))
            .await;
        w.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 16,
                frame_max: FRAME_MAX as u32,
                heartbeat: 0,
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
        w.expect(|m| matches!(m, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))))
            .await;
        w.open_channel(1).await;
        w
    }

    async fn open_channel(&mut self, ch: u16) {
        self.send(
            ch,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )
        .await;
        self.expect(|m| matches!(m, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))))
            .await;
    }

    async fn send(&mut self, ch: u16, m: AMQPClass) {
        let mut b = BytesMut::new();
        encode_method(ch, m, &mut b);
        self.s.write_all(&b).await.unwrap();
    }

    /// The next frame; fails the test if none comes within 10 s.
    async fn recv(&mut self) -> Incoming {
        loop {
            if let Some(f) = decode_frame(&mut self.buf, FRAME_MAX).unwrap() {
                return f;
            }
            match tokio::time::timeout(Duration::from_secs(10), self.s.read_buf(&mut self.buf))
                .await
            {
                Ok(Ok(n)) if n > 0 => {}
                other => panic!("connection ended or stalled: {other:?}"),
            }
        }
    }

    /// Skips frames until a method `want` accepts.
    async fn expect(&mut self, want: impl Fn(&AMQPClass) -> bool) {
        loop {
            if let Incoming::Method(_, m) = self.recv().await {
                if want(&m) {
                    return;
                }
                if let AMQPClass::Connection(connection::AMQPMethod::Close(c)) = *m {
                    panic!("connection closed: {} {}", c.reply_code, c.reply_text);
                }
            }
        }
    }

    async fn declare(&mut self, ch: u16, name: &str) {
        self.send(
            ch,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: name.into(),
                passive: false,
                durable: false,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        )
        .await;
        self.expect(|m| matches!(m, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))))
            .await;
    }

    async fn qos(&mut self, ch: u16, prefetch: u16) {
        self.send(
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: prefetch,
                global: false,
            })),
        )
        .await;
        self.expect(|m| matches!(m, AMQPClass::Basic(basic::AMQPMethod::QosOk(_))))
            .await;
    }

    async fn consume(&mut self, ch: u16, queue_name: &str, no_ack: bool) {
        self.send(
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: queue_name.into(),
                consumer_tag: format!("c{ch}").as_str().into(),
                no_local: false,
                no_ack,
                exclusive: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        )
        .await;
        self.expect(|m| matches!(m, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_))))
            .await;
    }
}

/// `n` publishes of `body` (with its first 8 bytes replaced by a sequence number starting at
/// `first`) to the default exchange, as wire bytes.
fn publishes(ch: u16, queue_name: &str, first: u64, n: u64, body: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    let mut body = body.to_vec();
    for i in first..first + n {
        body[..8].copy_from_slice(&i.to_be_bytes());
        encode_method(
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "".into(),
                routing_key: queue_name.into(),
                mandatory: false,
                immediate: false,
            })),
            &mut b,
        );
        encode_content(ch, AMQPProperties::default(), &body, FRAME_MAX, &mut b);
    }
    b
}

fn sequence_of(body: &[u8]) -> u64 {
    u64::from_be_bytes(body[..8].try_into().unwrap())
}

/// Whether `GET /api/connections` lists some connection in state `flow`.
async fn any_connection_in_flow(broker: &TestBroker) -> bool {
    let (_, list) = common::admin::admin_call(broker, Method::GET, "/api/connections", None).await;
    list.as_array()
        .is_some_and(|l| l.iter().any(|c| c["state"] == "flow"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_is_held_while_deliveries_fall_behind_and_every_message_arrives() {
    const N: u64 = 8_000;
    let broker = TestBroker::start().await.unwrap();
    let mut consumer = Wire::open_with_recv_buffer(&broker, Some(16 * 1024)).await;
    consumer.declare(1, "flow").await;
    // No prefetch limit and no acks: the consumer always has credit, so only its socket
    // (read slowly below) limits deliveries.
    consumer.consume(1, "flow", true).await;
    let queue = broker.core().router().queue("/", "flow").unwrap();

    let mut publisher = Wire::open(&broker).await;
    // 4 KiB messages: the consumer connection's 4 MiB write budget and the kernel's socket
    // buffers then hold only a couple of thousand of them, and the rest must wait in the queue.
    let body = vec![7u8; 4096];
    let publish = tokio::spawn(async move {
        let started = Instant::now();
        for chunk in 0..N / 50 {
            let b = publishes(1, "flow", chunk * 50, 50, &body);
            publisher.s.write_all(&b).await.unwrap();
        }
        (publisher, started.elapsed())
    });

    // Samples the backlog and the connections' state while the consumer reads.
    let done = Arc::new(AtomicBool::new(false));
    let max_ready = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, max_ready, queue) = (done.clone(), max_ready.clone(), queue.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                max_ready.fetch_max(queue.message_count(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let flow_seen = {
        let done = done.clone();
        let url = broker.http_url();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !done.load(Ordering::Relaxed) {
                let listed = client
                    .get(format!("{url}/api/connections"))
                    .basic_auth("admin", Some("admin"))
                    .send()
                    .await;
                if let Ok(r) = listed {
                    let v: serde_json::Value = r.json().await.unwrap_or_default();
                    if v.as_array()
                        .is_some_and(|l| l.iter().any(|c| c["state"] == "flow"))
                    {
                        return true;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            false
        })
    };

    // A slow reader: at most 16 KiB every 2 ms (about 8 MB/s at best, far below the
    // publisher), counting deliveries and checking their order.
    let mut next_expected = 0u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while next_expected < N {
        assert!(
            Instant::now() < deadline,
            "only {next_expected} of {N} arrived"
        );
        match decode_frame(&mut consumer.buf, FRAME_MAX).unwrap() {
            Some(Incoming::Body(_, body)) => {
                assert_eq!(sequence_of(&body), next_expected, "out of order or lost");
                next_expected += 1;
                continue;
            }
            Some(_) => continue,
            None => {}
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), consumer.s.read(&mut chunk))
            .await
            .expect("deliveries stalled")
            .unwrap();
        assert!(n > 0, "consumer connection closed");
        consumer.buf.extend_from_slice(&chunk[..n]);
    }
    let (_publisher, publish_took) = publish.await.unwrap();
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let flow_seen = flow_seen.await.unwrap();

    // Without flow control the backlog reaches most of N (the publisher is done in well under
    // a second); with it, the queue stops its publisher once FLOW_HIGH are ready.
    let max_ready = max_ready.load(Ordering::Relaxed);
    assert!(
        max_ready <= FLOW_HIGH + 64,
        "backlog grew to {max_ready} (publishing took {publish_took:?})"
    );
    assert!(
        flow_seen,
        "the publisher never listed as state flow (backlog peaked at {max_ready})"
    );
    assert_eq!(queue.message_count(), 0);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_nobody_is_taking_does_not_hold_publishers() {
    const N: u64 = 6 * FLOW_HIGH;
    let broker = TestBroker::start().await.unwrap();
    let mut client = Wire::open(&broker).await;
    client.declare(1, "idle").await;
    client.declare(1, "stuck").await;
    // "stuck" has a consumer that took one message and never acks it: out of credit.
    let mut stuck = Wire::open(&broker).await;
    stuck.qos(1, 1).await;
    stuck.consume(1, "stuck", false).await;

    let body = [1u8; 16];
    for name in ["idle", "stuck"] {
        let started = Instant::now();
        let b = publishes(1, name, 0, N, &body);
        client.s.write_all(&b).await.unwrap();
        let queue = broker.core().router().queue("/", name).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        // Queued are all but the one "stuck"'s consumer holds.
        let want = if name == "stuck" { N - 1 } else { N };
        while queue.message_count() < want {
            assert!(
                Instant::now() < deadline,
                "{name}: only {} of {want} queued",
                queue.message_count()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = started.elapsed();
        assert!(!queue.flow_wanted(), "{name} holds its publishers");
        assert!(
            !any_connection_in_flow(&broker).await,
            "{name}: a connection is in flow"
        );
        // Far above anything flow control would allow through (one publish per hold of 1 s).
        assert!(
            took < Duration::from_secs(20),
            "{name}: {N} publishes took {took:?}"
        );
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_and_consuming_on_one_connection_does_not_hold_itself() {
    const N: u64 = 4 * FLOW_HIGH;
    const PREFETCH: u16 = 100;
    let broker = TestBroker::start().await.unwrap();
    let mut w = Wire::open(&broker).await;
    w.declare(1, "loop").await;
    w.qos(1, PREFETCH).await;
    w.consume(1, "loop", false).await;
    w.open_channel(2).await;

    // One task does everything, as a single-threaded client would: publish a burst on
    // channel 2, then take what was delivered on channel 1 and ack it, and again. The queue
    // grows by each burst, and its consumer (this connection) only gets credit back through
    // acks the broker must read, so a connection holding itself for that queue would stall.
    let started = Instant::now();
    let body = [2u8; 16];
    let (mut published, mut received, mut last_tag, mut acked) = (0u64, 0u64, 0u64, 0u64);
    while received < N {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "stalled at {received} of {N}"
        );
        if published < N {
            let n = 500.min(N - published);
            let b = publishes(2, "loop", published, n, &body);
            w.s.write_all(&b).await.unwrap();
            published += n;
        }
        // Read what arrives within a moment; ack it all at once.
        let read_until = Instant::now() + Duration::from_millis(5);
        loop {
            match decode_frame(&mut w.buf, FRAME_MAX).unwrap() {
                Some(Incoming::Method(1, m)) => {
                    if let AMQPClass::Basic(basic::AMQPMethod::Deliver(d)) = *m {
                        last_tag = d.delivery_tag;
                    }
                    continue;
                }
                Some(Incoming::Body(1, b)) => {
                    assert_eq!(sequence_of(&b), received, "out of order or lost");
                    received += 1;
                    continue;
                }
                Some(Incoming::Method(_, m)) => panic!("unexpected {m:?}"),
                Some(_) => continue,
                None => {}
            }
            let wait = read_until.saturating_duration_since(Instant::now());
            match tokio::time::timeout(wait, w.s.read_buf(&mut w.buf)).await {
                Ok(Ok(n)) => assert!(n > 0, "connection closed"),
                Ok(Err(e)) => panic!("read: {e}"),
                Err(_) => break,
            }
        }
        // A tag acked twice would be a channel error (unknown delivery tag).
        if last_tag > acked {
            acked = last_tag;
            w.send(
                1,
                AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: last_tag,
                    multiple: true,
                })),
            )
            .await;
        }
    }
    // Each hold that ran to its 1 s limit would add a second; a hold released by the
    // consumer running out of credit takes milliseconds.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "took {took:?}");
    broker.stop().await;
}
