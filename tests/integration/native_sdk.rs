//! The native protocol and the Rust SDK against an embedded broker over real QUIC on
//! 127.0.0.1: publish with confirm, subscribe and ack, retries with the retry count, dead
//! letters with the handler's error, request/reply, a connection killed mid-stream (resend and
//! dedup), typed errors for bad requests, and event metadata crossing to Kafka and AMQP clients
//! (rdkafka, lapin) and back. The tests named `..._over_tcp` run the same body over the TCP
//! listener (`native_tcp_listen`) instead of QUIC.

use std::sync::Arc;
use std::time::Duration;

use ferry::broker::routing::death_history;
use ferry::client::native::*;
use ferry::proto::v1;
use ferry::testing::TestBroker;
use futures::StreamExt;
use parking_lot::Mutex;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

async fn sdk(broker: &TestBroker) -> NativeConnection {
    sdk_over(broker, Transport::Quic).await
}

/// The SDK over QUIC or over the TCP listener (the same certificate either way).
pub(crate) async fn sdk_over(broker: &TestBroker, transport: Transport) -> NativeConnection {
    let trust = Trust::Fingerprint(broker.native_fingerprint().to_string());
    let addr = match transport {
        Transport::Quic => broker.native_addr(),
        Transport::Tcp => broker.native_tcp_addr().expect("native_tcp_listen is on"),
    };
    connect(ConnectOptions::new(addr, trust, "guest", "guest").with_transport(transport, addr))
        .await
        .expect("connect")
}

async fn call(conn: &NativeConnection, op: v1::request::Op) -> v1::response::Result {
    conn.call(&v1::Request { op: Some(op) })
        .await
        .expect("call")
}

async fn declare_queue(conn: &NativeConnection, name: &str, args: serde_json::Value) {
    call(
        conn,
        v1::request::Op::DeclareQueue(v1::DeclareQueue {
            name: name.into(),
            durable: true,
            arguments_json: args.to_string(),
            ..Default::default()
        }),
    )
    .await;
}

/// A dead-letter exchange `dlx` (fanout) with queue `dead` bound to it.
async fn dead_letter_queue(conn: &NativeConnection) {
    call(
        conn,
        v1::request::Op::DeclareExchange(v1::DeclareExchange {
            name: "dlx".into(),
            kind: "fanout".into(),
            durable: true,
            ..Default::default()
        }),
    )
    .await;
    declare_queue(conn, "dead", serde_json::json!({})).await;
    call(
        conn,
        v1::request::Op::Bind(v1::Bind {
            queue: "dead".into(),
            exchange: "dlx".into(),
            ..Default::default()
        }),
    )
    .await;
}

fn queue(broker: &TestBroker, name: &str) -> Arc<ferry::broker::queue::Queue> {
    broker
        .core()
        .router()
        .queue("/", name)
        .expect("queue exists")
}

/// Waits until queue `name` holds no message, ready or unacked.
async fn all_settled(broker: &TestBroker, name: &str) {
    let q = queue(broker, name);
    eventually("every message settled", || {
        q.message_count() == 0 && q.unacked_count() == 0
    })
    .await;
}

/// A handler that acks every event and hands it to the returned receiver.
fn collector() -> (impl EventHandler, mpsc::UnboundedReceiver<ReceivedEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = move |event: ReceivedEvent, _ctx: EventContext| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(event);
            Ok(())
        }
    };
    (handler, rx)
}

/// Waits until `check` holds (bounded), for state a settle changes asynchronously.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn publish_is_confirmed_and_a_subscriber_acks() {
    publish_is_confirmed_and_a_subscriber_acks_on(Transport::Quic).await
}

#[tokio::test]
async fn publish_is_confirmed_and_a_subscriber_acks_over_tcp() {
    publish_is_confirmed_and_a_subscriber_acks_on(Transport::Tcp).await
}

async fn publish_is_confirmed_and_a_subscriber_acks_on(transport: Transport) {
    let broker = TestBroker::start().await.expect("broker");
    let conn = sdk_over(&broker, transport).await;
    declare_queue(&conn, "orders", serde_json::json!({})).await;
    let publisher = EventPublisher::new(conn.clone());
    let meta = EventMetadata::new("order.placed", "/shop")
        .with_correlation_id("corr-1")
        .with_schema_version("2")
        .with_traceparent(TRACEPARENT)
        .with_attribute("tenant", "acme");
    let receipt = publisher
        .publish(
            &serde_json::json!({"order": 7}),
            meta,
            &PublishConfig::queue("orders"),
        )
        .await
        .expect("publish");
    assert_eq!(receipt.queues, 1);
    assert!(!receipt.duplicate);
    // A UUIDv7 id was chosen for the event.
    let id = uuid::Uuid::parse_str(&receipt.id).expect("uuid id");
    assert_eq!(id.get_version_num(), 7);
    // The confirm means it is in the queue already.
    assert_eq!(queue(&broker, "orders").message_count(), 1);

    let (handler, mut rx) = collector();
    let sub = EventConsumer::new(conn.clone())
        .subscribe(handler, ConsumerConfig::new("orders"))
        .await
        .expect("subscribe");
    let event = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("in time")
        .expect("event");
    assert_eq!(event.metadata.id, receipt.id);
    assert_eq!(event.metadata.event_type, "order.placed");
    assert_eq!(event.metadata.source, "/shop");
    assert_eq!(event.metadata.correlation_id, "corr-1");
    assert_eq!(event.metadata.schema_version, "2");
    assert_eq!(event.metadata.traceparent, TRACEPARENT);
    assert_eq!(event.attribute("tenant"), Some("acme"));
    assert_eq!(event.content_type, "application/json");
    assert!(event.metadata.time_ms > 0);
    assert_eq!(event.retry_count, 0);
    assert_eq!(event.json::<serde_json::Value>().expect("json")["order"], 7);
    sub.close().await;
    all_settled(&broker, "orders").await;
}

/// The retry count of the handler's next attempt.
async fn attempt(rx: &mut mpsc::UnboundedReceiver<u32>) -> u32 {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("an attempt in time")
        .expect("handler running")
}

/// Retry timings on the broker's manual clock: each retry is held (the queue reports it
/// delayed) until exactly its backoff has passed on that clock, then delivered with its count.
#[tokio::test]
async fn a_failing_handler_is_retried_by_the_broker_with_its_retry_count() {
    let clock = ferry::clock::Clock::manual(1_700_000_000_000);
    let broker = TestBroker::with(|b| b.clock(clock.clone()))
        .await
        .expect("broker");
    let conn = sdk(&broker).await;
    let consumer = EventConsumer::new(conn.clone());
    let mut config = ConsumerConfig::new("work");
    config.retry = RetryConfig {
        attempts: 5,
        delay: Duration::from_millis(100),
        backoff: BackoffKind::Linear,
        max_delay: Duration::from_secs(1),
    };
    consumer.declare_queue(&config).await.expect("declare");
    EventPublisher::new(conn.clone())
        .publish(
            &"job",
            EventMetadata::new("job", "/t"),
            &PublishConfig::queue("work"),
        )
        .await
        .expect("publish");
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let handler = move |event: ReceivedEvent, _ctx: EventContext| {
        let seen_tx = seen_tx.clone();
        async move {
            let _ = seen_tx.send(event.retry_count);
            if event.retry_count < 2 {
                return Err(HandlerError("not yet".into()));
            }
            Ok(())
        }
    };
    let sub = consumer
        .subscribe(handler, config)
        .await
        .expect("subscribe");
    let q = queue(&broker, "work");
    assert_eq!(attempt(&mut seen_rx).await, 0);
    // Linear backoff: retry n is held for n x 100 ms of the broker's clock, not a moment less.
    for (retry, delay_ms) in [(1, 100), (2, 200)] {
        eventually("the failed attempt is held as a delayed retry", || {
            q.delayed_count() == 1
        })
        .await;
        clock.advance_ms(delay_ms - 1);
        assert_eq!(q.message_count(), 1);
        assert_eq!(
            q.delayed_count(),
            1,
            "retry {retry} released before {delay_ms} ms"
        );
        assert!(seen_rx.try_recv().is_err(), "retry {retry} ran early");
        clock.advance_ms(1);
        assert_eq!(attempt(&mut seen_rx).await, retry);
    }
    all_settled(&broker, "work").await;
    sub.close().await;
}

#[tokio::test]
async fn an_always_failing_handler_dead_letters_with_its_error() {
    let broker = TestBroker::start().await.expect("broker");
    let conn = sdk(&broker).await;
    dead_letter_queue(&conn).await;
    let consumer = EventConsumer::new(conn.clone());
    let mut config = ConsumerConfig::new("payments");
    config.dead_letter_exchange = Some("dlx".into());
    config.retry = RetryConfig {
        attempts: 3,
        delay: Duration::from_millis(20),
        backoff: BackoffKind::Exponential,
        max_delay: Duration::from_millis(100),
    };
    consumer.declare_queue(&config).await.expect("declare");
    let receipt = EventPublisher::new(conn.clone())
        .publish(
            &"pay",
            EventMetadata::new("payment.requested", "/t"),
            &PublishConfig::queue("payments"),
        )
        .await
        .expect("publish");
    let runs = Arc::new(Mutex::new(0));
    let handler = {
        let runs = runs.clone();
        move |_event: ReceivedEvent, _ctx: EventContext| {
            let runs = runs.clone();
            async move {
                *runs.lock() += 1;
                Err::<(), _>(HandlerError("card declined".into()))
            }
        }
    };
    let sub = consumer
        .subscribe(handler, config)
        .await
        .expect("subscribe");
    let dead = queue(&broker, "dead");
    eventually("dead-lettered", || dead.message_count() == 1).await;
    sub.close().await;
    assert_eq!(*runs.lock(), 3, "three attempts, then the dead letter");
    let taken = dead.take(1, true).expect("read dead letter");
    let record = &taken[0].record;
    let deaths = death_history(record);
    assert_eq!(deaths[0]["reason"], "rejected");
    assert_eq!(deaths[0]["queue"], "payments");
    assert_eq!(deaths[0]["error"], "card declined");
    let id = record
        .headers
        .iter()
        .find(|(k, _)| k == "ce_id")
        .and_then(|(_, v)| v.clone());
    assert_eq!(id.as_deref(), Some(receipt.id.as_bytes()));
    assert_eq!(queue(&broker, "payments").message_count(), 0);
}

#[tokio::test]
async fn registered_handlers_dispatch_by_type_and_version_and_time_out() {
    let broker = TestBroker::start().await.expect("broker");
    let conn = sdk(&broker).await;
    dead_letter_queue(&conn).await;
    let consumer = EventConsumer::new(conn.clone());
    let mut config = ConsumerConfig::new("inbox");
    config.dead_letter_exchange = Some("dlx".into());
    config.retry.attempts = 1;
    config.concurrency = 4;
    consumer.declare_queue(&config).await.expect("declare");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let v2 = {
        let tx = tx.clone();
        move |e: ReceivedEvent, _c: EventContext| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(("v2", e.metadata.id));
                Ok(())
            }
        }
    };
    let slow = |_e: ReceivedEvent, _c: EventContext| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(())
    };
    let handlers = Handlers::new()
        .on(HandlerConfig::new("user.created", "2"), v2)
        .on(
            HandlerConfig::new("report.requested", "").with_timeout(Duration::from_millis(50)),
            slow,
        );
    let sub = consumer
        .subscribe(handlers, config)
        .await
        .expect("subscribe");
    let publisher = EventPublisher::new(conn.clone());
    let to = PublishConfig::queue("inbox");
    let v2_id = publisher
        .publish(
            &1,
            EventMetadata::new("user.created", "/u").with_schema_version("2"),
            &to,
        )
        .await
        .expect("publish")
        .id;
    publisher
        .publish(
            &1,
            EventMetadata::new("user.created", "/u").with_schema_version("1"),
            &to,
        )
        .await
        .expect("publish");
    publisher
        .publish(&1, EventMetadata::new("report.requested", "/r"), &to)
        .await
        .expect("publish");
    let got = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("in time")
        .expect("event");
    assert_eq!(got, ("v2", v2_id));
    let dead = queue(&broker, "dead");
    eventually("version 1 and the slow one dead-lettered", || {
        dead.message_count() == 2
    })
    .await;
    sub.close().await;
    let mut errors: Vec<String> = dead
        .take(2, true)
        .expect("read")
        .iter()
        .map(|m| {
            death_history(&m.record)[0]["error"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    errors.sort();
    assert!(errors[0].contains("timed out"), "{errors:?}");
    assert!(
        errors[1].contains("no handler for event type `user.created` version `1`"),
        "{errors:?}"
    );
}

#[tokio::test]
async fn request_reply_and_follow_up_ids_and_a_timeout() {
    request_reply_and_follow_up_ids_and_a_timeout_on(Transport::Quic).await
}

#[tokio::test]
async fn request_reply_and_follow_up_ids_and_a_timeout_over_tcp() {
    request_reply_and_follow_up_ids_and_a_timeout_on(Transport::Tcp).await
}

async fn request_reply_and_follow_up_ids_and_a_timeout_on(transport: Transport) {
    let broker = TestBroker::start().await.expect("broker");
    let conn = sdk_over(&broker, transport).await;
    declare_queue(&conn, "quotes", serde_json::json!({})).await;
    declare_queue(&conn, "nobody-home", serde_json::json!({})).await;
    let server = EventConsumer::new(conn.clone())
        .subscribe(
            |event: ReceivedEvent, ctx: EventContext| async move {
                let n: i64 = event.json()?;
                ctx.reply(&(n * 2), EventMetadata::new("quote.given", "/quotes"))
                    .await?;
                Ok(())
            },
            ConsumerConfig::new("quotes"),
        )
        .await
        .expect("subscribe");
    let requester = Requester::new(conn.clone()).await.expect("requester");
    let meta = EventMetadata::new("quote.requested", "/client").with_traceparent(TRACEPARENT);
    let reply = requester
        .request(&21, meta, &PublishConfig::queue("quotes"), WAIT)
        .await
        .expect("reply");
    assert_eq!(reply.json::<i64>().expect("json"), 42);
    assert_eq!(reply.metadata.event_type, "quote.given");
    // The reply is caused by the request and keeps its correlation id and trace.
    assert!(!reply.metadata.causation_id.is_empty());
    assert_eq!(reply.metadata.correlation_id, reply.metadata.causation_id);
    assert_eq!(reply.metadata.traceparent, TRACEPARENT);
    let err = requester
        .request(
            &1,
            EventMetadata::new("x", "/y"),
            &PublishConfig::queue("nobody-home"),
            Duration::from_millis(200),
        )
        .await
        .expect_err("no reply");
    assert!(matches!(err, NativeClientError::Timeout(_)), "{err}");
    server.close().await;
}

#[tokio::test]
async fn a_killed_connection_loses_and_duplicates_nothing() {
    a_killed_connection_loses_and_duplicates_nothing_on(Transport::Quic).await
}

#[tokio::test]
async fn a_killed_connection_loses_and_duplicates_nothing_over_tcp() {
    a_killed_connection_loses_and_duplicates_nothing_on(Transport::Tcp).await
}

async fn a_killed_connection_loses_and_duplicates_nothing_on(transport: Transport) {
    let broker = TestBroker::start().await.expect("broker");
    let conn = sdk_over(&broker, transport).await;
    declare_queue(
        &conn,
        "ledger",
        serde_json::json!({"x-message-deduplication": true}),
    )
    .await;
    let publisher = EventPublisher::new(conn.clone());
    let to = PublishConfig::queue("ledger");
    // A confirm lost with its connection: the same event (same id) is sent again on a new
    // connection and the broker drops the repeat.
    let first = publisher
        .publish(
            &1,
            EventMetadata::new("entry", "/l").with_id("entry-1"),
            &to,
        )
        .await
        .expect("publish");
    conn.break_connection().await;
    let again = publisher
        .publish(
            &1,
            EventMetadata::new("entry", "/l").with_id("entry-1"),
            &to,
        )
        .await
        .expect("publish after the kill");
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!(queue(&broker, "ledger").message_count(), 1);

    // Kills while publishes are in flight: every publish still returns Ok, each event is
    // stored once.
    // Rounds of ten publishes; once they are waiting for their confirms, the connection is
    // killed under them.
    let mut tasks = Vec::new();
    for round in 0..4 {
        for i in round * 10..round * 10 + 10 {
            let publisher = publisher.clone();
            let to = to.clone();
            tasks.push(tokio::spawn(async move {
                publisher
                    .publish(
                        &i,
                        EventMetadata::new("entry", "/l").with_id(&format!("e-{i}")),
                        &to,
                    )
                    .await
            }));
        }
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        conn.break_connection().await;
    }
    let mut resent = 0;
    for t in tasks {
        resent += t
            .await
            .expect("task")
            .expect("publish survives the kill")
            .resent;
    }
    assert_eq!(queue(&broker, "ledger").message_count(), 41);
    // At least one publish was caught by a kill and sent again (else the test proved nothing).
    assert!(resent > 0, "no publish was interrupted");
}

#[tokio::test]
async fn bad_requests_get_typed_errors() {
    let broker = TestBroker::start().await.expect("broker");
    let conn = sdk(&broker).await;
    let publisher = EventPublisher::new(conn.clone());
    let code = |r: Result<PublishReceipt, NativeClientError>| r.expect_err("refused").code();
    let mut mandatory = PublishConfig::queue("missing");
    mandatory.mandatory = true;
    assert_eq!(
        code(
            publisher
                .publish(&1, EventMetadata::new("t", "/s"), &mandatory)
                .await
        ),
        Some(ErrorCode::Unroutable)
    );
    assert_eq!(
        code(
            publisher
                .publish(
                    &1,
                    EventMetadata::new("t", "/s"),
                    &PublishConfig::topic("nope")
                )
                .await
        ),
        Some(ErrorCode::NotFound)
    );
    let reserved = EventMetadata::new("t", "/s").with_attribute("ce_id", "forged");
    assert_eq!(
        code(
            publisher
                .publish(&1, reserved, &PublishConfig::queue("missing"))
                .await
        ),
        Some(ErrorCode::InvalidArgument)
    );
    let err = EventConsumer::new(conn.clone())
        .subscribe(
            |_e: ReceivedEvent, _c: EventContext| async { Ok(()) },
            ConsumerConfig::new("missing"),
        )
        .await
        .err()
        .expect("no such queue");
    assert_eq!(err.code(), Some(ErrorCode::NotFound));

    // Raw frames on the same connection: garbage, an oversized length, a settle out of place.
    let quic = conn.quic().await.expect("connected");
    let raw = |bytes: Vec<u8>| {
        let quic = quic.clone();
        async move {
            let (mut send, recv) = quic.open_bi().await.expect("stream");
            send.write_all(&bytes).await.expect("write");
            let _ = send.finish();
            let mut reader = ferry::proto::framed::FrameReader::new(recv, 1 << 20);
            let r: v1::Response = reader.next().await.expect("read").expect("a response");
            match r.result {
                Some(v1::response::Result::Error(e)) => {
                    ErrorCode::try_from(e.code).expect("known code")
                }
                other => panic!("expected an error, got {other:?}"),
            }
        }
    };
    assert_eq!(raw(vec![3, 0xff, 0xff, 0xff]).await, ErrorCode::Malformed);
    assert_eq!(
        raw(vec![0x80, 0x80, 0x80, 0x80, 0x08]).await,
        ErrorCode::TooLarge
    );
    assert_eq!(
        raw(vec![5, 1, 2]).await,
        ErrorCode::Malformed,
        "truncated frame"
    );
    let settle = ferry::proto::codec::encode(&v1::Request {
        op: Some(v1::request::Op::Settle(v1::Settle::default())),
    });
    assert_eq!(raw(settle.to_vec()).await, ErrorCode::Malformed);
    // The connection still works after all that.
    declare_queue(&conn, "still-fine", serde_json::json!({})).await;

    // A wrong password is refused with UNAUTHENTICATED.
    let trust = Trust::Fingerprint(broker.native_fingerprint().to_string());
    let err = connect(ConnectOptions::new(
        broker.native_addr(),
        trust,
        "guest",
        "wrong",
    ))
    .await
    .err()
    .expect("refused");
    assert_eq!(err.code(), Some(ErrorCode::Unauthenticated));
}

#[tokio::test]
async fn sdk_metadata_reaches_kafka_and_amqp_consumers_and_back() {
    let broker = TestBroker::start().await.expect("broker");
    let conn = sdk(&broker).await;
    call(
        &conn,
        v1::request::Op::DeclareTopic(v1::DeclareTopic {
            name: "events".into(),
            partitions: 1,
            ..Default::default()
        }),
    )
    .await;
    // An AMQP consumer on a queue bound to the topic's exchange face.
    let amqp = lapin::Connection::connect(&broker.amqp_url(), Default::default())
        .await
        .expect("amqp");
    let ch = amqp.create_channel().await.expect("channel");
    ch.queue_declare("amqp-view".into(), Default::default(), Default::default())
        .await
        .expect("declare");
    ch.queue_bind(
        "amqp-view".into(),
        "events".into(),
        "#".into(),
        Default::default(),
        Default::default(),
    )
    .await
    .expect("bind");
    let mut amqp_consumer = ch
        .basic_consume(
            "amqp-view".into(),
            "".into(),
            lapin::options::BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .expect("consume");
    // An SDK consumer on another bound queue, for the Kafka-produced event.
    declare_queue(&conn, "sdk-view", serde_json::json!({})).await;
    call(
        &conn,
        v1::request::Op::Bind(v1::Bind {
            queue: "sdk-view".into(),
            exchange: "events".into(),
            routing_key: "kafka.#".into(),
            ..Default::default()
        }),
    )
    .await;

    let receipt = EventPublisher::new(conn.clone())
        .publish(
            &serde_json::json!({"sku": "A1"}),
            EventMetadata::new("stock.reserved", "/warehouse")
                .with_correlation_id("corr-9")
                .with_traceparent(TRACEPARENT),
            &PublishConfig::topic_key("events", b"sku-A1"),
        )
        .await
        .expect("publish");
    assert_eq!(receipt.partition, 0);

    // Kafka sees the CloudEvents binding's headers. (rdkafka's poll blocks: off the test's
    // single runtime thread, which also runs the broker.)
    let bootstrap = broker.kafka_bootstrap();
    let (key, headers) = tokio::task::spawn_blocking(move || {
        let kafka: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "native-view")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("kafka consumer");
        kafka.subscribe(&["events"]).expect("subscribe");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            assert!(std::time::Instant::now() < deadline, "no Kafka record");
            if let Some(m) = kafka.poll(Duration::from_millis(200)) {
                let m = m.expect("kafka message");
                let headers: Vec<(String, String)> = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|x| {
                                let v = x.value.map(|v| String::from_utf8_lossy(v).into_owned());
                                (x.key.to_string(), v.unwrap_or_default())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                return (m.key().map(<[u8]>::to_vec), headers);
            }
        }
    })
    .await
    .expect("kafka reader");
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("ce_id").as_deref(), Some(receipt.id.as_str()));
    assert_eq!(header("ce_type").as_deref(), Some("stock.reserved"));
    assert_eq!(header("ce_source").as_deref(), Some("/warehouse"));
    assert_eq!(header("traceparent").as_deref(), Some(TRACEPARENT));
    assert_eq!(header("correlation-id").as_deref(), Some("corr-9"));
    assert_eq!(key.as_deref(), Some(&b"sku-A1"[..]));

    // AMQP sees the id as message-id and the correlation id as the property.
    let delivery = tokio::time::timeout(WAIT, amqp_consumer.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("delivery");
    assert_eq!(
        delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some(receipt.id.as_str())
    );
    assert_eq!(
        delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("corr-9")
    );

    // A Kafka producer's ce_* headers reach an SDK handler as typed metadata.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.kafka_bootstrap())
        .create()
        .expect("producer");
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "ce_specversion",
            value: Some("1.0"),
        })
        .insert(Header {
            key: "ce_id",
            value: Some("k-1"),
        })
        .insert(Header {
            key: "ce_type",
            value: Some("stock.counted"),
        })
        .insert(Header {
            key: "ce_source",
            value: Some("/kafka"),
        })
        .insert(Header {
            key: "traceparent",
            value: Some(TRACEPARENT),
        });
    producer
        .send(
            FutureRecord::to("events")
                .key("kafka.count")
                .payload("{}")
                .headers(headers),
            WAIT,
        )
        .await
        .expect("produce");
    let (handler, mut rx) = collector();
    let sub = EventConsumer::new(conn.clone())
        .subscribe(handler, ConsumerConfig::new("sdk-view"))
        .await
        .expect("subscribe");
    let event = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("in time")
        .expect("event");
    assert_eq!(event.metadata.id, "k-1");
    assert_eq!(event.metadata.event_type, "stock.counted");
    assert_eq!(event.metadata.source, "/kafka");
    assert_eq!(event.metadata.traceparent, TRACEPARENT);
    sub.close().await;
}

/// A QUIC connection to the broker's native listener that has not logged in yet.
async fn raw_connection(broker: &TestBroker) -> quinn::Connection {
    let trust = Trust::Fingerprint(broker.native_fingerprint().to_string());
    let options = ConnectOptions::new(broker.native_addr(), trust, "guest", "guest");
    open_raw(&options).await.expect("handshake")
}

/// The same, logged in as guest under `client_name`.
async fn raw_login(broker: &TestBroker, client_name: &str) -> quinn::Connection {
    let quic = raw_connection(broker).await;
    let login = v1::request::Op::Authenticate(v1::Authenticate {
        user: "guest".into(),
        password: "guest".into(),
        client_name: client_name.into(),
        ..Default::default()
    });
    assert!(matches!(
        raw_call(&quic, login).await,
        v1::response::Result::Authenticated(_)
    ));
    quic
}

/// One request on its own stream of `quic`; the first response.
async fn raw_call(quic: &quinn::Connection, op: v1::request::Op) -> v1::response::Result {
    let (mut send, recv) = quic.open_bi().await.expect("stream");
    ferry::proto::framed::write(&mut send, &v1::Request { op: Some(op) })
        .await
        .expect("write");
    let _ = send.finish();
    let mut reader = ferry::proto::framed::FrameReader::new(recv, 1 << 20);
    let r: v1::Response = reader.next().await.expect("read").expect("a response");
    r.result.expect("a result")
}

#[tokio::test]
async fn nothing_but_authenticate_is_served_before_a_login() {
    let broker = TestBroker::start().await.expect("broker");
    let quic = raw_connection(&broker).await;
    let declare = || {
        v1::request::Op::DeclareQueue(v1::DeclareQueue {
            name: "sneaky".into(),
            ..Default::default()
        })
    };
    let auth = |password: &str| {
        v1::request::Op::Authenticate(v1::Authenticate {
            user: "guest".into(),
            password: password.into(),
            client_name: "raw".into(),
            ..Default::default()
        })
    };
    let refused = |r: v1::response::Result| match r {
        v1::response::Result::Error(e) => ErrorCode::try_from(e.code).expect("code"),
        other => panic!("expected an error, got {other:?}"),
    };
    assert_eq!(
        refused(raw_call(&quic, declare()).await),
        ErrorCode::Unauthenticated
    );
    assert!(broker.core().router().queue("/", "sneaky").is_none());
    assert_eq!(
        refused(raw_call(&quic, auth("nope")).await),
        ErrorCode::Unauthenticated
    );
    assert_eq!(
        refused(raw_call(&quic, declare()).await),
        ErrorCode::Unauthenticated
    );
    match raw_call(&quic, auth("guest")).await {
        v1::response::Result::Authenticated(a) => {
            assert_eq!(a.user, "guest");
            assert_eq!(a.max_frame_bytes, 16 * 1024 * 1024);
        }
        other => panic!("expected Authenticated, got {other:?}"),
    }
    assert!(matches!(
        raw_call(&quic, declare()).await,
        v1::response::Result::QueueDeclared(_)
    ));
}

/// A stream that starts with a publish carries more publishes, written back to back: each is
/// answered in request order, a refused one does not end the stream, and anything but a
/// publish is answered `MALFORMED` and ends it.
#[tokio::test]
async fn publishes_on_one_stream_are_answered_in_order() {
    let broker = TestBroker::start().await.expect("broker");
    let quic = raw_login(&broker, "").await;
    let declare = v1::request::Op::DeclareQueue(v1::DeclareQueue {
        name: "piped".into(),
        durable: true,
        ..Default::default()
    });
    assert!(matches!(
        raw_call(&quic, declare).await,
        v1::response::Result::QueueDeclared(_)
    ));
    let to = |queue: &str, mandatory: bool| v1::ExchangeDestination {
        vhost: String::new(),
        exchange: String::new(),
        routing_key: queue.into(),
        mandatory,
    };
    let message = |id: &str| v1::Message {
        metadata: Some(v1::EventMetadata {
            id: id.into(),
            ..Default::default()
        }),
        payload: id.as_bytes().to_vec(),
        ..Default::default()
    };
    let publish = |id: &str, queue: &str, mandatory: bool| {
        v1::request::Op::Publish(v1::Publish {
            destination: Some(v1::publish::Destination::Exchange(to(queue, mandatory))),
            message: Some(message(id)),
        })
    };
    let requests = [
        publish("a", "piped", false),
        publish("lost", "missing", true),
        publish("b", "piped", false),
        v1::request::Op::PublishBatch(v1::PublishBatch {
            destination: Some(v1::publish_batch::Destination::Exchange(to("piped", false))),
            messages: vec![message("c"), message("d")],
        }),
        v1::request::Op::Settle(v1::Settle::default()),
        publish("never", "piped", false),
    ];
    let (mut send, recv) = quic.open_bi().await.expect("stream");
    let mut frames = Vec::new();
    for op in requests {
        frames.extend_from_slice(&ferry::proto::codec::encode(&v1::Request { op: Some(op) }));
    }
    // All written before any answer is read.
    tokio::io::AsyncWriteExt::write_all(&mut send, &frames)
        .await
        .expect("write");
    let mut reader = ferry::proto::framed::FrameReader::new(recv, 1 << 20);
    let mut answers = Vec::new();
    while let Some(r) = tokio::time::timeout(WAIT, reader.next::<v1::Response>())
        .await
        .expect("answers in time")
        .expect("read")
    {
        answers.push(r.result.expect("a result"));
    }
    let code = |r: &v1::response::Result| match r {
        v1::response::Result::Error(e) => ErrorCode::try_from(e.code).ok(),
        _ => None,
    };
    assert_eq!(answers.len(), 5, "{answers:?}");
    assert!(
        matches!(&answers[0], v1::response::Result::Published(p) if p.id == "a" && p.queues == 1)
    );
    assert_eq!(code(&answers[1]), Some(ErrorCode::Unroutable));
    assert!(matches!(&answers[2], v1::response::Result::Published(p) if p.id == "b"));
    match &answers[3] {
        v1::response::Result::PublishedBatch(b) => {
            let ids: Vec<&str> = b.results.iter().map(|p| p.id.as_str()).collect();
            assert_eq!(ids, ["c", "d"]);
        }
        other => panic!("expected the batch's answer, got {other:?}"),
    }
    assert_eq!(code(&answers[4]), Some(ErrorCode::Malformed));
    // What came after the malformed request was not read.
    assert_eq!(queue(&broker, "piped").message_count(), 4);
}

#[tokio::test]
async fn a_subscription_survives_a_killed_connection_and_a_panicking_handler() {
    a_subscription_survives_a_killed_connection_and_a_panicking_handler_on(Transport::Quic).await
}

#[tokio::test]
async fn a_subscription_survives_a_killed_connection_and_a_panicking_handler_over_tcp() {
    a_subscription_survives_a_killed_connection_and_a_panicking_handler_on(Transport::Tcp).await
}

async fn a_subscription_survives_a_killed_connection_and_a_panicking_handler_on(
    transport: Transport,
) {
    let broker = TestBroker::start().await.expect("broker");
    let conn = sdk_over(&broker, transport).await;
    let consumer = EventConsumer::new(conn.clone());
    let mut config = ConsumerConfig::new("sturdy");
    config.retry = RetryConfig {
        attempts: 3,
        delay: Duration::from_millis(10),
        backoff: BackoffKind::Linear,
        max_delay: Duration::from_millis(10),
    };
    consumer.declare_queue(&config).await.expect("declare");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler = move |event: ReceivedEvent, _ctx: EventContext| {
        let tx = tx.clone();
        async move {
            if event.attribute("panic").is_some() && event.retry_count == 0 {
                panic!("handler bug");
            }
            let _ = tx.send(event);
            Ok(())
        }
    };
    let sub = consumer
        .subscribe(handler, config)
        .await
        .expect("subscribe");
    let publisher = EventPublisher::new(conn.clone());
    let to = PublishConfig::queue("sturdy");
    let first = publisher
        .publish(
            &1,
            EventMetadata::new("t", "/s").with_attribute("panic", "yes"),
            &to,
        )
        .await
        .expect("publish");
    let got = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("in time")
        .expect("event");
    assert_eq!(got.metadata.id, first.id);
    assert_eq!(got.retry_count, 1, "the panic counted as a failed attempt");

    conn.break_connection().await;
    let second = publisher
        .publish(&2, EventMetadata::new("t", "/s"), &to)
        .await
        .expect("publish on a new connection");
    let got = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("resubscribed in time")
        .expect("event");
    assert_eq!(got.metadata.id, second.id);
    sub.close().await;
    all_settled(&broker, "sturdy").await;
}

#[tokio::test]
async fn a_topic_subscription_reads_from_an_offset_with_locations() {
    a_topic_subscription_reads_from_an_offset_with_locations_on(Transport::Quic).await
}

#[tokio::test]
async fn a_topic_subscription_reads_from_an_offset_with_locations_over_tcp() {
    a_topic_subscription_reads_from_an_offset_with_locations_on(Transport::Tcp).await
}

async fn a_topic_subscription_reads_from_an_offset_with_locations_on(transport: Transport) {
    let broker = TestBroker::start().await.expect("broker");
    let conn = sdk_over(&broker, transport).await;
    call(
        &conn,
        v1::request::Op::DeclareTopic(v1::DeclareTopic {
            name: "audit".into(),
            partitions: 1,
            ..Default::default()
        }),
    )
    .await;
    let publisher = EventPublisher::new(conn.clone());
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = publisher
            .publish(
                &i,
                EventMetadata::new("audit.entry", "/a"),
                &PublishConfig::topic("audit"),
            )
            .await
            .expect("publish");
        ids.push(r.id);
    }
    let subscribe = v1::Request {
        op: Some(v1::request::Op::SubscribeTopic(v1::SubscribeTopic {
            topic: "audit".into(),
            start: Some(v1::subscribe_topic::Start::Offset(1)),
            prefetch: 10,
            ..Default::default()
        })),
    };
    let (mut send, mut reader) = conn.open_subscription(&subscribe).await.expect("subscribe");
    for (expected_offset, id) in [(1, &ids[1]), (2, &ids[2])] {
        let r: v1::Response = tokio::time::timeout(WAIT, reader.next())
            .await
            .expect("in time")
            .expect("read")
            .expect("frame");
        let Some(v1::response::Result::Delivery(d)) = r.result else {
            panic!("expected a delivery, got {r:?}");
        };
        assert_eq!((d.partition, d.offset), (0, expected_offset));
        let meta = d.message.expect("message").metadata.expect("metadata");
        assert_eq!(&meta.id, id);
        assert_eq!(meta.r#type, "audit.entry");
    }
    // A settle for a tag never sent ends the subscription with a typed error.
    let bogus = v1::Request {
        op: Some(v1::request::Op::Settle(v1::Settle {
            delivery_tag: 999,
            ..Default::default()
        })),
    };
    ferry::proto::framed::write(&mut send, &bogus)
        .await
        .expect("write");
    let r: v1::Response = tokio::time::timeout(WAIT, reader.next())
        .await
        .expect("in time")
        .expect("read")
        .expect("frame");
    match r.result {
        Some(v1::response::Result::Error(e)) => {
            assert_eq!(e.code, ErrorCode::UnknownDelivery as i32)
        }
        other => panic!("expected an error, got {other:?}"),
    }
    // Unknown start topic: NOT_FOUND.
    let missing = v1::Request {
        op: Some(v1::request::Op::SubscribeTopic(v1::SubscribeTopic {
            topic: "nope".into(),
            ..Default::default()
        })),
    };
    let err = conn
        .open_subscription(&missing)
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
}

#[tokio::test]
async fn a_batch_is_confirmed_together_and_a_repeat_is_deduplicated() {
    a_batch_is_confirmed_together_and_a_repeat_is_deduplicated_on(Transport::Quic).await
}

#[tokio::test]
async fn a_batch_is_confirmed_together_and_a_repeat_is_deduplicated_over_tcp() {
    a_batch_is_confirmed_together_and_a_repeat_is_deduplicated_on(Transport::Tcp).await
}

async fn a_batch_is_confirmed_together_and_a_repeat_is_deduplicated_on(transport: Transport) {
    let broker = TestBroker::start().await.expect("broker");
    let conn = sdk_over(&broker, transport).await;
    declare_queue(
        &conn,
        "batched",
        serde_json::json!({"x-message-deduplication": true}),
    )
    .await;
    let publisher = EventPublisher::new(conn.clone());
    let events: Vec<(Vec<u8>, EventMetadata)> = (0..3)
        .map(|i| {
            (
                vec![i],
                EventMetadata::new("t", "/s").with_id(&format!("b-{i}")),
            )
        })
        .collect();
    let to = PublishConfig::queue("batched");
    let first = publisher
        .publish_batch(events.clone(), "application/octet-stream", &to)
        .await
        .expect("batch");
    assert_eq!(
        first.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["b-0", "b-1", "b-2"]
    );
    assert!(first.iter().all(|r| !r.duplicate && r.queues == 1));
    assert_eq!(queue(&broker, "batched").message_count(), 3);
    let again = publisher
        .publish_batch(events, "application/octet-stream", &to)
        .await
        .expect("batch again");
    assert!(again.iter().all(|r| r.duplicate));
    assert_eq!(queue(&broker, "batched").message_count(), 3);
}

#[tokio::test]
async fn an_old_event_version_is_upcast_before_its_handler_sees_it() {
    let broker = TestBroker::start().await.expect("broker");
    let conn = sdk(&broker).await;
    let consumer = EventConsumer::new(conn.clone());
    let config = ConsumerConfig::new("users");
    consumer.declare_queue(&config).await.expect("declare");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let v3 = move |event: ReceivedEvent, _ctx: EventContext| {
        let tx = tx.clone();
        async move {
            let _ = tx.send((
                event.metadata.schema_version.clone(),
                event.json::<serde_json::Value>()?,
            ));
            Ok(())
        }
    };
    // v1 {"name": "Ada Lovelace"} -> v2 {"first", "last"} -> v3 adds "display".
    let handlers = Handlers::new()
        .on(HandlerConfig::new("user.created", "3"), v3)
        .upcast("user.created", "1", |mut e| {
            let v1: serde_json::Value = e.json()?;
            let name = v1["name"].as_str().unwrap_or_default();
            let (first, last) = name.split_once(' ').unwrap_or((name, ""));
            e.payload =
                serde_json::to_vec(&serde_json::json!({"first": first, "last": last}))?.into();
            e.metadata.schema_version = "2".into();
            Ok(e)
        })
        .upcast("user.created", "2", |mut e| {
            let mut v2: serde_json::Value = e.json()?;
            v2["display"] = format!(
                "{} {}",
                v2["first"].as_str().unwrap_or(""),
                v2["last"].as_str().unwrap_or("")
            )
            .into();
            e.payload = serde_json::to_vec(&v2)?.into();
            e.metadata.schema_version = "3".into();
            Ok(e)
        });
    let sub = consumer
        .subscribe(handlers, config)
        .await
        .expect("subscribe");
    EventPublisher::new(conn.clone())
        .publish(
            &serde_json::json!({"name": "Ada Lovelace"}),
            EventMetadata::new("user.created", "/u").with_schema_version("1"),
            &PublishConfig::queue("users"),
        )
        .await
        .expect("publish");
    let (version, body) = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("in time")
        .expect("event");
    assert_eq!(version, "3");
    assert_eq!(
        body,
        serde_json::json!({"first": "Ada", "last": "Lovelace", "display": "Ada Lovelace"})
    );
    sub.close().await;
    all_settled(&broker, "users").await;
}

/// The management API lists a native connection with its user, client name and QUIC byte
/// counts, and `DELETE /api/connections/{name}` closes it: the client sees an application
/// close with code 320 and the operator's reason.
#[tokio::test]
async fn a_native_connection_is_listed_and_closed_through_the_management_api() {
    let broker = TestBroker::start().await.expect("broker");
    let quic = raw_login(&broker, "inventory-service").await;
    let http = reqwest::Client::new();
    let list = || async {
        let body: serde_json::Value = http
            .get(format!("{}/api/connections", broker.http_url()))
            .basic_auth("admin", Some("admin"))
            .send()
            .await
            .expect("GET /api/connections")
            .json()
            .await
            .expect("json");
        body.as_array()
            .expect("a list")
            .iter()
            .filter(|c| c["protocol"] == "native")
            .cloned()
            .collect::<Vec<_>>()
    };
    // The byte counts are folded in once a second.
    let deadline = tokio::time::Instant::now() + WAIT;
    let listed = loop {
        let native = list().await;
        if native.len() == 1 && native[0]["recv_oct"].as_u64().unwrap_or(0) > 0 {
            break native[0].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "native connection not listed with bytes: {native:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(listed["user"], "guest");
    assert_eq!(listed["client_name"], "inventory-service");
    assert_eq!(listed["ssl"], true);
    assert!(listed["send_oct"].as_u64().unwrap_or(0) > 0, "{listed}");

    let name = listed["name"].as_str().expect("a name");
    let encoded: String = name
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let status = http
        .delete(format!("{}/api/connections/{encoded}", broker.http_url()))
        .basic_auth("admin", Some("admin"))
        .header("X-Reason", "rolling restart")
        .send()
        .await
        .expect("DELETE")
        .status();
    assert_eq!(status, reqwest::StatusCode::NO_CONTENT);
    match tokio::time::timeout(WAIT, quic.closed())
        .await
        .expect("closed in time")
    {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(u64::from(close.error_code), 320);
            assert_eq!(&close.reason[..], b"rolling restart");
        }
        other => panic!("expected an application close, got {other:?}"),
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while !list().await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "closed connection still listed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
