//! Hostile and careless peers (issue 7): connection floods, slowloris handshakes, 2 GiB length
//! prefixes, a consumer that never reads its socket, a consumer that never acks, a publisher
//! that floods faster than the disk. Each test drives a real `TestBroker` through raw sockets
//! (for what no client library will do on purpose) and lapin / rdkafka (to show well-behaved
//! clients are unaffected), and the memory tests read the process's resident set size.
//!
//! The broker runs in this process, so its memory is this process's `VmRSS`; the tests take one
//! lock so that no other test's traffic shows up in a measurement, and they compare growth
//! against what was pushed at the broker rather than absolute figures.

use std::net::SocketAddr;
use std::time::Duration;

use amq_protocol::protocol::{basic, channel, connection, AMQPClass};
use amq_protocol::types::FieldTable;
use bytes::BytesMut;
use ferry::protocol::amqp::codec::{decode_frame, encode_content, encode_method, Incoming};
use ferry::testing::TestBroker;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// One test at a time: memory is measured per process and the floods share the machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[path = "hostile/storage.rs"]
mod storage;

const MB: u64 = 1024 * 1024;

/// Resident set size of this process (the broker's memory, since it runs in-process).
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line");
    kb * 1024
}

/// A hand-driven AMQP client, built on the broker's own codec.
struct Wire {
    s: TcpStream,
    buf: BytesMut,
}

impl Wire {
    async fn connect(addr: SocketAddr) -> Wire {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"AMQP\x00\x00\x09\x01").await.expect("header");
        Wire {
            s,
            buf: BytesMut::new(),
        }
    }

    async fn send(&mut self, ch: u16, m: AMQPClass) {
        let mut b = BytesMut::new();
        encode_method(ch, m, &mut b);
        self.s.write_all(&b).await.expect("send");
    }

    /// The next method, or `None` once the server closed the socket (or 5 s passed).
    async fn recv_method(&mut self) -> Option<(u16, AMQPClass)> {
        loop {
            match decode_frame(&mut self.buf, 1 << 20).expect("server frame") {
                Some(Incoming::Method(ch, m)) => return Some((ch, *m)),
                Some(_) => continue,
                None => {}
            }
            match tokio::time::timeout(Duration::from_secs(5), self.s.read_buf(&mut self.buf)).await
            {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    /// Handshake as guest, no heartbeats.
    async fn open(addr: SocketAddr) -> Wire {
        let mut w = Wire::connect(addr).await;
        assert!(matches!(
            w.recv_method().await,
            Some((0, AMQPClass::Connection(connection::AMQPMethod::Start(_))))
        ));
        w.send(0, start_ok()).await;
        assert!(matches!(
            w.recv_method().await,
            Some((0, AMQPClass::Connection(connection::AMQPMethod::Tune(_))))
        ));
        w.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 16,
                frame_max: 131072,
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
        assert!(matches!(
            w.recv_method().await,
            Some((0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))))
        ));
        w.send(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )
        .await;
        assert!(matches!(
            w.recv_method().await,
            Some((1, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))))
        ));
        w
    }
}

fn start_ok() -> AMQPClass {
    AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
        client_properties: FieldTable::default(),
        mechanism: "PLAIN".into(),
        response: "\0guest\0guest".into(),
        locale: "en_US".into(),
    }))
}

fn publish_frames(routing_key: &str, body: &[u8], out: &mut BytesMut) {
    encode_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: routing_key.into(),
            mandatory: false,
            immediate: false,
        })),
        out,
    );
    encode_content(1, Default::default(), body, 131072, out);
}

/// Whether the peer closes `s` within `within` (EOF or reset), discarding what it sends.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut sink = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut sink)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// A Kafka ApiVersions v0 request with its size prefix.
fn api_versions(correlation_id: i32) -> Vec<u8> {
    let mut r = vec![0, 0, 0, 10, 0, 18, 0, 0];
    r.extend_from_slice(&correlation_id.to_be_bytes());
    r.extend_from_slice(&[0xff, 0xff]);
    r
}

/// Sends ApiVersions and checks the answer carries our correlation id.
async fn kafka_answers(s: &mut TcpStream, correlation_id: i32) -> bool {
    if s.write_all(&api_versions(correlation_id)).await.is_err() {
        return false;
    }
    let read = async {
        let size = s.read_i32().await.ok()?;
        let mut body = vec![0u8; usize::try_from(size).ok()?];
        s.read_exact(&mut body).await.ok()?;
        Some(body.get(..4)? == correlation_id.to_be_bytes())
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), read).await,
        Ok(Some(true))
    )
}

async fn lapin(broker: &TestBroker) -> Connection {
    Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
        .await
        .expect("lapin connect")
}

/// A publish + basic.get round trip through a fresh lapin channel.
async fn lapin_round_trip(conn: &Connection, queue: &str) {
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.declare");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    ch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        b"still here",
        BasicProperties::default(),
    )
    .await
    .expect("publish")
    .await
    .expect("confirm");
    let got = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
        .expect("a message");
    assert_eq!(got.delivery.data, b"still here");
    ch.close(200, "done".into()).await.expect("channel.close");
}

/// Ready messages in `queue` (passive declare).
async fn ready(conn: &Connection, queue: &str) -> u32 {
    let ch = conn.create_channel().await.expect("channel");
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare");
    let _ = ch.close(200, "done".into()).await;
    q.message_count()
}

async fn wait_ready(conn: &Connection, queue: &str, want: u32, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let n = ready(conn, queue).await;
        if n == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{queue}: {n} ready, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metric(broker: &TestBroker, line_prefix: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", broker.http_url()))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn amqp_connections_beyond_the_limit_get_530_and_a_client_works_after() {
    let _serial = SERIAL.lock().await;
    let broker = TestBroker::with(|b| b.configure(|c| c.amqp.max_connections = 100))
        .await
        .unwrap();
    let addr = broker.amqp_addr();
    let mut held = Vec::new();
    for _ in 0..100 {
        let mut w = Wire::connect(addr).await;
        assert!(matches!(
            w.recv_method().await,
            Some((0, AMQPClass::Connection(connection::AMQPMethod::Start(_))))
        ));
        held.push(w);
    }
    for i in 0..200 {
        let mut w = Wire::connect(addr).await;
        match w.recv_method().await {
            Some((0, AMQPClass::Connection(connection::AMQPMethod::Close(c)))) => {
                assert_eq!(c.reply_code, 530, "refusal {i}");
                assert!(
                    c.reply_text.as_str().contains("connection limit"),
                    "{}",
                    c.reply_text.as_str()
                );
            }
            other => panic!("refusal {i}: expected connection.close 530, got {other:?}"),
        }
        assert!(closed_within(&mut w.s, Duration::from_secs(2)).await);
    }
    assert!(
        Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
            .await
            .is_err(),
        "a client at the limit is refused"
    );
    assert!(
        metric(
            &broker,
            "ferry_connections_refused_total{protocol=\"amqp\"}"
        )
        .await
            >= 201.0
    );
    // The held connections still get the handshake they are owed.
    let mut first = held.swap_remove(0);
    first.send(0, start_ok()).await;
    assert!(matches!(
        first.recv_method().await,
        Some((0, AMQPClass::Connection(connection::AMQPMethod::Tune(_))))
    ));
    drop(first);
    drop(held);
    // Once they are gone a normal client gets in again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let conn = loop {
        match Connection::connect(&broker.amqp_url(), ConnectionProperties::default()).await {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "still refused: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    lapin_round_trip(&conn, "after-flood").await;
    broker.stop().await;
}

#[tokio::test]
async fn kafka_connections_beyond_the_limit_are_closed_and_a_client_works_after() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let _serial = SERIAL.lock().await;
    let broker = TestBroker::with(|b| b.configure(|c| c.kafka.max_connections = 100))
        .await
        .unwrap();
    let addr = broker.kafka_addr();
    let mut held = Vec::new();
    for i in 0..100 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        assert!(kafka_answers(&mut s, i).await, "connection {i} is served");
        held.push(s);
    }
    for i in 0..200 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(&api_versions(i)).await;
        assert!(
            closed_within(&mut s, Duration::from_secs(2)).await,
            "excess connection {i} is closed"
        );
    }
    assert!(
        metric(
            &broker,
            "ferry_connections_refused_total{protocol=\"kafka\"}"
        )
        .await
            >= 200.0
    );
    assert!(
        kafka_answers(&mut held[99], 1000).await,
        "held ones still work"
    );
    drop(held);
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.kafka_bootstrap())
        .set("message.timeout.ms", "20000")
        .create()
        .expect("producer");
    producer
        .send(
            FutureRecord::to("after-flood").payload("x").key("k"),
            Duration::from_secs(20),
        )
        .await
        .expect("produce after the flood");
    broker.stop().await;
}

#[tokio::test]
async fn amqp_slowloris_is_dropped_at_the_handshake_deadline() {
    let _serial = SERIAL.lock().await;
    let broker = TestBroker::with(|b| b.configure(|c| c.amqp.handshake_timeout_ms = 600))
        .await
        .unwrap();
    let addr = broker.amqp_addr();

    // The protocol header, one byte every 150 ms: 8 bytes would take 1.2 s.
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut closed = false;
    for b in b"AMQP\x00\x00\x09\x01" {
        if s.write_all(&[*b]).await.is_err()
            || closed_within(&mut s, Duration::from_millis(150)).await
        {
            closed = true;
            break;
        }
    }
    let took = started.elapsed();
    assert!(closed, "a trickled header was not dropped");
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(2),
        "{took:?}"
    );

    // A whole header, then start-ok one byte every 100 ms.
    let started = Instant::now();
    let mut w = Wire::connect(addr).await;
    assert!(w.recv_method().await.is_some());
    let mut frame = BytesMut::new();
    encode_method(0, start_ok(), &mut frame);
    let mut closed = false;
    for b in frame.iter() {
        if w.s.write_all(&[*b]).await.is_err()
            || closed_within(&mut w.s, Duration::from_millis(100)).await
        {
            closed = true;
            break;
        }
    }
    let took = started.elapsed();
    assert!(closed, "a trickled handshake was not dropped");
    assert!(took < Duration::from_secs(2), "{took:?}");

    // A real client handshakes well within the same deadline.
    let conn = lapin(&broker).await;
    lapin_round_trip(&conn, "fast-enough").await;
    broker.stop().await;
}

#[tokio::test]
async fn kafka_idle_and_trickling_connections_are_closed() {
    let _serial = SERIAL.lock().await;
    let broker = TestBroker::with(|b| b.configure(|c| c.kafka.connections_max_idle_ms = 500))
        .await
        .unwrap();
    let addr = broker.kafka_addr();

    let started = Instant::now();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(3)).await);
    assert!(started.elapsed() >= Duration::from_millis(400));

    // One request, a byte every 100 ms (1.4 s in all): dropped before it completes.
    let started = Instant::now();
    let mut trickle = TcpStream::connect(addr).await.unwrap();
    let mut closed = false;
    for b in api_versions(7) {
        if trickle.write_all(&[b]).await.is_err()
            || closed_within(&mut trickle, Duration::from_millis(100)).await
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "a trickled request was not dropped");
    assert!(started.elapsed() < Duration::from_secs(2));

    // A connection that keeps talking stays open well past the idle time.
    let mut busy = TcpStream::connect(addr).await.unwrap();
    for i in 0..8 {
        assert!(kafka_answers(&mut busy, i).await, "request {i}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    broker.stop().await;
}

#[tokio::test]
async fn two_gib_length_prefixes_are_refused_without_waiting_for_the_body() {
    let _serial = SERIAL.lock().await;
    let broker = TestBroker::start().await.unwrap();
    let before = rss();

    // Kafka: 2 GiB - 1, and a negative size. The connection is closed at once, long before
    // 2 GiB could arrive, and the broker still serves the next connection.
    for prefix in [[0x7f, 0xff, 0xff, 0xff], [0x80, 0, 0, 0]] {
        let mut s = TcpStream::connect(broker.kafka_addr()).await.unwrap();
        s.write_all(&prefix).await.unwrap();
        let _ = s.write_all(&[0, 18, 0, 0, 0, 0, 0, 1]).await;
        assert!(
            closed_within(&mut s, Duration::from_secs(2)).await,
            "{prefix:?}"
        );
    }
    let mut s = TcpStream::connect(broker.kafka_addr()).await.unwrap();
    assert!(kafka_answers(&mut s, 1).await);

    // AMQP: a 2 GiB frame before the handshake and after it; both get connection.close 501.
    let mut early = Wire::connect(broker.amqp_addr()).await;
    assert!(early.recv_method().await.is_some());
    early
        .s
        .write_all(&[1, 0, 0, 0x7f, 0xff, 0xff, 0xf0])
        .await
        .unwrap();
    match early.recv_method().await {
        Some((0, AMQPClass::Connection(connection::AMQPMethod::Close(c)))) => {
            assert_eq!(c.reply_code, 501)
        }
        other => panic!("expected connection.close 501, got {other:?}"),
    }
    let mut open = Wire::open(broker.amqp_addr()).await;
    open.s
        .write_all(&[3, 0, 1, 0xff, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    match open.recv_method().await {
        Some((0, AMQPClass::Connection(connection::AMQPMethod::Close(c)))) => {
            assert_eq!(c.reply_code, 501)
        }
        other => panic!("expected connection.close 501, got {other:?}"),
    }
    let grew = rss().saturating_sub(before);
    assert!(grew < 64 * MB, "RSS grew by {} MB", grew / MB);
    broker.stop().await;
}

#[tokio::test]
async fn a_consumer_that_never_reads_is_bounded_and_others_are_unaffected() {
    let _serial = SERIAL.lock().await;
    let broker = TestBroker::with(|b| b.configure(|c| c.log.fsync = "never".into()))
        .await
        .unwrap();
    let conn = lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "stuck".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    // A consumer with unlimited prefetch and a small receive window that never reads again.
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(64 * 1024).unwrap();
    let mut stuck = Wire {
        s: sock.connect(broker.amqp_addr()).await.unwrap(),
        buf: BytesMut::new(),
    };
    stuck.s.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
    let mut w = Wire::open_after_header(stuck).await;
    w.send(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 0,
            global: false,
        })),
    )
    .await;
    w.send(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: "stuck".into(),
            consumer_tag: "stuck".into(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    )
    .await;

    // 96 MB for it, published with confirms.
    const N: u32 = 3000;
    let body = vec![7u8; 32 * 1024];
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let before = rss();
    for _ in 0..N / 100 {
        let mut confirms = Vec::new();
        for _ in 0..100 {
            confirms.push(
                ch.basic_publish(
                    "".into(),
                    "stuck".into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default(),
                )
                .await
                .unwrap(),
            );
        }
        for c in confirms {
            c.await.unwrap();
        }
    }
    let grew = rss().saturating_sub(before);
    eprintln!(
        "RSS grew {} MB while 96 MB queued for a consumer that does not read",
        grew / MB
    );
    assert!(grew < 48 * MB, "RSS grew by {} MB", grew / MB);

    // Another consumer on the same queue gets the rest, and other queues work.
    let other = lapin(&broker).await;
    lapin_round_trip(&other, "elsewhere").await;
    let och = other.create_channel().await.unwrap();
    och.basic_qos(50, BasicQosOptions::default()).await.unwrap();
    let mut consumer = och
        .basic_consume(
            "stuck".into(),
            "healthy".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..500 {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap_or_else(|_| panic!("delivery {i} did not come"))
            .expect("stream open")
            .expect("delivery");
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    och.close(200, "done".into()).await.unwrap();

    // Hanging up releases what the stuck consumer held: everything not acked is ready again,
    // which also shows its connection was cleaned up although it never read a byte.
    drop(w);
    wait_ready(&conn, "stuck", N - 500, Duration::from_secs(15)).await;
    broker.stop().await;
}

impl Wire {
    /// [`Wire::open`] on a socket that already sent the protocol header.
    async fn open_after_header(mut w: Wire) -> Wire {
        assert!(matches!(
            w.recv_method().await,
            Some((0, AMQPClass::Connection(connection::AMQPMethod::Start(_))))
        ));
        w.send(0, start_ok()).await;
        assert!(w.recv_method().await.is_some());
        w.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 16,
                frame_max: 131072,
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
        assert!(w.recv_method().await.is_some());
        w.send(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )
        .await;
        assert!(w.recv_method().await.is_some());
        w
    }
}

/// Publishes `n` messages of `size` bytes to `queue` over a raw connection, as fast as TCP
/// takes them (no confirms), in writes of about 1 MB.
async fn flood(addr: SocketAddr, queue: &str, n: usize, size: usize) -> Wire {
    let mut w = Wire::open(addr).await;
    let body = vec![1u8; size];
    let mut out = BytesMut::new();
    for _ in 0..n {
        publish_frames(queue, &body, &mut out);
        if out.len() >= 1 << 20 {
            w.s.write_all(&out).await.expect("flood write");
            out.clear();
        }
    }
    w.s.write_all(&out).await.expect("flood write");
    w
}

#[tokio::test]
async fn a_consumer_that_never_acks_holds_its_prefetch_and_memory_stays_flat() {
    let _serial = SERIAL.lock().await;
    let broker = TestBroker::with(|b| b.configure(|c| c.log.fsync = "never".into()))
        .await
        .unwrap();
    let conn = lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "backlog".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.basic_qos(100, BasicQosOptions::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume(
            "backlog".into(),
            "lazy".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    const FIRST: u32 = 20_000;
    const TOTAL: u32 = 200_000;
    let _a = flood(broker.amqp_addr(), "backlog", FIRST as usize, 512).await;
    wait_ready(&conn, "backlog", FIRST - 100, Duration::from_secs(60)).await;
    let base = rss();
    let started = Instant::now();
    let _b = flood(broker.amqp_addr(), "backlog", (TOTAL - FIRST) as usize, 512).await;
    wait_ready(&conn, "backlog", TOTAL - 100, Duration::from_secs(120)).await;
    let grew = rss().saturating_sub(base);
    eprintln!(
        "{} more messages (~{} MB) queued in {:?}; RSS grew {} MB",
        TOTAL - FIRST,
        u64::from(TOTAL - FIRST) * 512 / MB,
        started.elapsed(),
        grew / MB
    );
    // 90 MB more on disk; the broker's memory must not follow it.
    assert!(grew < 32 * MB, "RSS grew by {} MB", grew / MB);

    // Exactly the prefetch was delivered, and nothing more comes while none is acked.
    let mut got = 0;
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(500), consumer.next()).await
    {
        d.expect("delivery");
        got += 1;
    }
    assert_eq!(got, 100);
    broker.stop().await;
}

#[tokio::test]
async fn a_publisher_flooding_faster_than_the_disk_is_held_back() {
    let _serial = SERIAL.lock().await;
    // fsync on every write: the disk is the bottleneck.
    let broker = TestBroker::start().await.unwrap();
    let conn = lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "flooded".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    let base = rss();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(base));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // 250 MB of 64 KB messages, written as fast as the broker reads them.
    const N: usize = 4_000;
    let addr = broker.amqp_addr();
    let flooding = tokio::spawn(async move { flood(addr, "flooded", N, 64 * 1024).await });
    // While the flood runs, another client's round trip still completes promptly.
    let other = lapin(&broker).await;
    let t = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(10),
        lapin_round_trip(&other, "bystander"),
    )
    .await
    .expect("a bystander is not starved by the flood");
    eprintln!("bystander round trip during the flood: {:?}", t.elapsed());
    let _w = flooding.await.unwrap();
    wait_ready(&conn, "flooded", N as u32, Duration::from_secs(120)).await;
    sampler.abort();
    let grew = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(base);
    eprintln!("RSS peak grew {} MB while 250 MB were published", grew / MB);
    // The connection reads a publish only when its not-yet-durable publishes fit in the
    // 8 MiB publish budget; TCP holds the rest back at the client. (Before that budget, the
    // only bound was 4096 queued appends per queue: 256 MB of these messages.)
    assert!(grew < 64 * MB, "RSS peak grew by {} MB", grew / MB);
    broker.stop().await;
}

/// A Kafka request with its size prefix and a v1/v2 header.
fn kafka_request<R: kafka_protocol::protocol::Encodable>(
    api: kafka_protocol::messages::ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> Vec<u8> {
    use bytes::BufMut;
    use kafka_protocol::protocol::Encodable;
    let header = kafka_protocol::messages::RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id);
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    header
        .encode(&mut buf, api.request_header_version(version))
        .expect("header");
    body.encode(&mut buf, version).expect("body");
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf.to_vec()
}

#[tokio::test]
async fn a_kafka_client_that_never_reads_its_fetches_is_bounded() {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{ApiKey, BrokerId, FetchRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let _serial = SERIAL.lock().await;
    let broker = TestBroker::with(|b| b.configure(|c| c.log.fsync = "never".into()))
        .await
        .unwrap();
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.kafka_bootstrap())
        .set("message.timeout.ms", "20000")
        .create()
        .expect("producer");
    let value = vec![3u8; 128 * 1024];
    for i in 0..8 {
        producer
            .send(
                FutureRecord::to("fetched")
                    .payload(&value)
                    .key(&format!("{i}")),
                Duration::from_secs(20),
            )
            .await
            .expect("produce");
    }

    // Each fetch gets the whole 1 MB; 200k of them (14 MB of requests, more than the kernel
    // buffers hold) would be 200 GB of responses. At most 32 are in flight per connection.
    let fetch = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(0)
        .with_max_bytes(4 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str("fetched")))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(4 << 20)])]);
    let mut requests = Vec::new();
    let one = kafka_request(ApiKey::Fetch, 4, 0, &fetch);
    for i in 0..200_000i32 {
        requests.extend_from_slice(&one);
        // The correlation id follows the size prefix and the api key and version.
        let at = requests.len() - one.len() + 8;
        requests[at..at + 4].copy_from_slice(&i.to_be_bytes());
    }
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(64 * 1024).unwrap();
    sock.set_send_buffer_size(64 * 1024).unwrap();
    let mut deaf = sock.connect(broker.kafka_addr()).await.unwrap();
    let base = rss();
    // The broker stops reading once 32 requests are in flight, so this write never finishes.
    let written = tokio::time::timeout(Duration::from_secs(3), deaf.write_all(&requests)).await;
    assert!(
        written.is_err(),
        "the broker read 2000 fetches it could not answer"
    );
    let grew = rss().saturating_sub(base);
    eprintln!(
        "RSS grew {} MB with fetches piled up for a client that does not read",
        grew / MB
    );
    assert!(grew < 80 * MB, "RSS grew by {} MB", grew / MB);

    // Other clients are served meanwhile.
    producer
        .send(
            FutureRecord::to("other").payload("x").key("k"),
            Duration::from_secs(20),
        )
        .await
        .expect("another producer is unaffected");
    let mut s = TcpStream::connect(broker.kafka_addr()).await.unwrap();
    assert!(kafka_answers(&mut s, 1).await);
    drop(deaf);
    broker.stop().await;
}
