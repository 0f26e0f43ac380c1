//! Property tests for the AMQP frame decoder, the stable-toolchain twin of the `amqp_frame`
//! cargo-fuzz target: arbitrary bytes never panic (or hang, or allocate from a length prefix),
//! and generated valid frames (methods with nested field tables, content headers with every
//! property, bodies split at `frame_max`) decode to exactly what was encoded. The last test
//! runs real lapin traffic through a recording proxy and checks every frame it sent decodes
//! and re-encodes identically; with `FERRY_WRITE_FUZZ_SEEDS=1` it also writes those frames as
//! the fuzz target's seed corpus (`fuzz/seeds/amqp_frame/`).

use amq_protocol::frame::AMQPContentHeader;
use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::protocol::{basic, connection, exchange, queue, AMQPClass};
use amq_protocol::types::{AMQPValue, DecimalValue, FieldArray, FieldTable};
use bytes::BytesMut;
use ferry::protocol::amqp::codec::{decode_frame, encode_content, encode_method, Incoming};
use proptest::collection::vec;
use proptest::prelude::*;

/// Table values a RabbitMQ client can send. `ShortString` is left out on purpose:
/// `amq-protocol` writes it with a private `_` tag that RabbitMQ does not know, and Ferry
/// refuses it the same way (a 502 on the wire).
fn any_value() -> impl Strategy<Value = AMQPValue> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(AMQPValue::Boolean),
        any::<i8>().prop_map(AMQPValue::ShortShortInt),
        any::<u8>().prop_map(AMQPValue::ShortShortUInt),
        any::<i16>().prop_map(AMQPValue::ShortInt),
        any::<u16>().prop_map(AMQPValue::ShortUInt),
        any::<i32>().prop_map(AMQPValue::LongInt),
        any::<u32>().prop_map(AMQPValue::LongUInt),
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        (-1.0e6f32..1.0e6).prop_map(AMQPValue::Float),
        (-1.0e12f64..1.0e12).prop_map(AMQPValue::Double),
        (any::<u8>(), any::<u32>())
            .prop_map(|(scale, value)| AMQPValue::DecimalValue(DecimalValue { scale, value })),
        vec(any::<u8>(), 0..48).prop_map(|v| AMQPValue::LongString(v.into())),
        any::<u64>().prop_map(AMQPValue::Timestamp),
        vec(any::<u8>(), 0..24).prop_map(|v| AMQPValue::ByteArray(v.into())),
        Just(AMQPValue::Void),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6)
                .prop_map(|items| AMQPValue::FieldArray(FieldArray::from(items))),
            vec(("[a-zA-Z0-9_.-]{1,12}", inner), 0..6).prop_map(|pairs| {
                let mut t = FieldTable::default();
                for (k, v) in pairs {
                    t.insert(k.into(), v);
                }
                AMQPValue::FieldTable(t)
            }),
        ]
    })
}

fn any_table() -> impl Strategy<Value = FieldTable> {
    vec(("[a-zA-Z0-9_.-]{1,12}", any_value()), 0..8).prop_map(|pairs| {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert(k.into(), v);
        }
        t
    })
}

const NAME: &str = "[a-zA-Z0-9_.:-]{0,40}";

/// Methods with field tables (the ones the nesting pre-check walks) and a few without.
fn any_method() -> impl Strategy<Value = AMQPClass> {
    prop_oneof![
        (any_table(), "PLAIN|AMQPLAIN", vec(any::<u8>(), 0..40)).prop_map(|(t, mech, resp)| {
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: t,
                mechanism: mech.as_str().into(),
                response: resp.into(),
                locale: "en_US".into(),
            }))
        }),
        (NAME, any::<[bool; 5]>(), any_table()).prop_map(|(q, f, t)| {
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: q.as_str().into(),
                passive: f[0],
                durable: f[1],
                exclusive: f[2],
                auto_delete: f[3],
                nowait: f[4],
                arguments: t,
            }))
        }),
        (NAME, NAME, NAME, any::<bool>(), any_table()).prop_map(|(q, e, k, nowait, t)| {
            AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                queue: q.as_str().into(),
                exchange: e.as_str().into(),
                routing_key: k.as_str().into(),
                nowait,
                arguments: t,
            }))
        }),
        (NAME, NAME, NAME, any_table()).prop_map(|(q, e, k, t)| {
            AMQPClass::Queue(queue::AMQPMethod::Unbind(queue::Unbind {
                queue: q.as_str().into(),
                exchange: e.as_str().into(),
                routing_key: k.as_str().into(),
                arguments: t,
            }))
        }),
        (
            NAME,
            "direct|fanout|topic|headers",
            any::<[bool; 5]>(),
            any_table()
        )
            .prop_map(|(e, kind, f, t)| {
                AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                    exchange: e.as_str().into(),
                    kind: kind.as_str().into(),
                    passive: f[0],
                    durable: f[1],
                    auto_delete: f[2],
                    internal: f[3],
                    nowait: f[4],
                    arguments: t,
                }))
            }),
        (NAME, NAME, NAME, any::<bool>(), any_table()).prop_map(|(d, s, k, nowait, t)| {
            AMQPClass::Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
                destination: d.as_str().into(),
                source: s.as_str().into(),
                routing_key: k.as_str().into(),
                nowait,
                arguments: t,
            }))
        }),
        (NAME, NAME, any::<[bool; 4]>(), any_table()).prop_map(|(q, tag, f, t)| {
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: q.as_str().into(),
                consumer_tag: tag.as_str().into(),
                no_local: f[0],
                no_ack: f[1],
                exclusive: f[2],
                nowait: f[3],
                arguments: t,
            }))
        }),
        (NAME, NAME, any::<bool>()).prop_map(|(e, k, mandatory)| {
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: e.as_str().into(),
                routing_key: k.as_str().into(),
                mandatory,
                immediate: false,
            }))
        }),
        (any::<u64>(), any::<bool>()).prop_map(|(delivery_tag, multiple)| {
            AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag,
                multiple,
            }))
        }),
    ]
}

fn any_properties() -> impl Strategy<Value = AMQPProperties> {
    (
        (
            proptest::option::of("[a-z/+.-]{1,30}"),
            proptest::option::of("gzip|identity"),
            proptest::option::of(any_table()),
            proptest::option::of(1u8..=2),
            proptest::option::of(0u8..=9),
            proptest::option::of(NAME),
            proptest::option::of(NAME),
        ),
        (
            proptest::option::of("[0-9]{1,9}"),
            proptest::option::of(NAME),
            proptest::option::of(any::<u64>()),
            proptest::option::of(NAME),
            proptest::option::of(NAME),
            proptest::option::of(NAME),
        ),
    )
        .prop_map(
            |((ct, ce, headers, dm, prio, corr, reply), (exp, mid, ts, kind, user, app))| {
                let mut p = AMQPProperties::default();
                if let Some(v) = ct {
                    p = p.with_content_type(v.as_str().into());
                }
                if let Some(v) = ce {
                    p = p.with_content_encoding(v.as_str().into());
                }
                if let Some(v) = headers {
                    p = p.with_headers(v);
                }
                if let Some(v) = dm {
                    p = p.with_delivery_mode(v);
                }
                if let Some(v) = prio {
                    p = p.with_priority(v);
                }
                if let Some(v) = corr {
                    p = p.with_correlation_id(v.as_str().into());
                }
                if let Some(v) = reply {
                    p = p.with_reply_to(v.as_str().into());
                }
                if let Some(v) = exp {
                    p = p.with_expiration(v.as_str().into());
                }
                if let Some(v) = mid {
                    p = p.with_message_id(v.as_str().into());
                }
                if let Some(v) = ts {
                    p = p.with_timestamp(v);
                }
                if let Some(v) = kind {
                    p = p.with_type(v.as_str().into());
                }
                if let Some(v) = user {
                    p = p.with_user_id(v.as_str().into());
                }
                if let Some(v) = app {
                    p = p.with_app_id(v.as_str().into());
                }
                p
            },
        )
}

/// Decodes every frame in `buf`, as the connection loop does, until it needs more bytes or
/// the codec refuses a frame.
fn drain(buf: &mut BytesMut, frame_max: usize) -> usize {
    let mut frames = 0;
    while let Ok(Some(_)) = decode_frame(buf, frame_max) {
        frames += 1;
    }
    frames
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in vec(any::<u8>(), 0..4096),
        frame_max in prop_oneof![Just(4096usize), Just(131_072), Just(1 << 20)],
    ) {
        let mut buf = BytesMut::from(&bytes[..]);
        drain(&mut buf, frame_max);
    }

    /// Bytes behind a valid frame header of each type, so the fuzzing reaches the method,
    /// content-header and table parsers instead of stopping at the frame type or frame end.
    #[test]
    fn arbitrary_payloads_in_well_formed_frames_never_panic(
        kind in prop_oneof![Just(1u8), Just(2), Just(3), Just(8)],
        channel in any::<u16>(),
        payload in vec(any::<u8>(), 0..2048),
    ) {
        let mut frame = vec![kind];
        frame.extend_from_slice(&channel.to_be_bytes());
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(&payload);
        frame.push(0xCE);
        let mut buf = BytesMut::from(&frame[..]);
        drain(&mut buf, 131_072);
    }

    #[test]
    fn methods_round_trip(channel in any::<u16>(), method in any_method()) {
        let mut buf = BytesMut::new();
        encode_method(channel, method.clone(), &mut buf);
        match decode_frame(&mut buf, 1 << 20) {
            Ok(Some(Incoming::Method(ch, m))) => {
                prop_assert_eq!(ch, channel);
                prop_assert_eq!(*m, method);
            }
            other => prop_assert!(false, "{:?} decoded as {:?}", method, other),
        }
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn content_round_trips_split_at_frame_max(
        channel in 1u16..,
        properties in any_properties(),
        body in vec(any::<u8>(), 0..20_000),
        frame_max in prop_oneof![Just(4096usize), Just(8192), Just(131_072)],
    ) {
        let mut buf = BytesMut::new();
        encode_content(channel, properties.clone(), &body, frame_max, &mut buf);
        let header = match decode_frame(&mut buf, frame_max) {
            Ok(Some(Incoming::Header(ch, h))) => {
                prop_assert_eq!(ch, channel);
                *h
            }
            other => return Err(TestCaseError::fail(format!("header decoded as {other:?}"))),
        };
        prop_assert_eq!(
            header,
            AMQPContentHeader { class_id: 60, body_size: body.len() as u64, properties }
        );
        let mut got = Vec::new();
        while let Some(frame) = decode_frame(&mut buf, frame_max).map_err(|e| TestCaseError::fail(e.to_string()))? {
            match frame {
                Incoming::Body(ch, b) => {
                    prop_assert_eq!(ch, channel);
                    prop_assert!(b.len() + 8 <= frame_max);
                    got.extend_from_slice(&b);
                }
                other => return Err(TestCaseError::fail(format!("unexpected {other:?}"))),
            }
        }
        prop_assert_eq!(got, body);
    }

    /// A valid frame cut anywhere is "need more bytes", never an error or a wrong frame.
    #[test]
    fn truncated_frames_wait_for_more(method in any_method(), cut in any::<prop::sample::Index>()) {
        let mut whole = BytesMut::new();
        encode_method(0, method, &mut whole);
        let at = cut.index(whole.len());
        let mut part = BytesMut::from(&whole[..at]);
        prop_assert!(matches!(decode_frame(&mut part, 1 << 20), Ok(None)));
        prop_assert_eq!(part.len(), at);
    }
}

/// Every frame a real client (lapin) sends through a publish/consume/ack session decodes,
/// and re-encodes to the same bytes.
#[tokio::test]
async fn lapin_traffic_decodes_and_round_trips() {
    use futures::StreamExt;
    use lapin::options::*;
    use lapin::{BasicProperties, Connection, ConnectionProperties};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let broker = ferry::testing::TestBroker::start().await.unwrap();
    // A proxy that records what the client sends.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    let upstream = broker.amqp_addr();
    let recorder = tokio::spawn(async move {
        let (client, _) = proxy.accept().await.unwrap();
        let server = tokio::net::TcpStream::connect(upstream).await.unwrap();
        let (mut cr, mut cw) = client.into_split();
        let (mut sr, mut sw) = server.into_split();
        let down = tokio::spawn(async move { tokio::io::copy(&mut sr, &mut cw).await });
        let mut recorded = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match cr.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    recorded.extend_from_slice(&chunk[..n]);
                    if sw.write_all(&chunk[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = sw.shutdown().await;
        let _ = down.await;
        recorded
    });

    let conn = Connection::connect(
        &format!("amqp://guest:guest@{proxy_addr}/%2f"),
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut nested = FieldTable::default();
    nested.insert("depth".into(), AMQPValue::LongInt(2));
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(1000));
    args.insert("x-queue-mode".into(), AMQPValue::LongString("lazy".into()));
    args.insert("x-nested".into(), AMQPValue::FieldTable(nested.clone()));
    args.insert(
        "x-list".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::FieldTable(nested.clone()),
            AMQPValue::Boolean(true),
        ])),
    );
    ch.exchange_declare(
        "seed.x".into(),
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        args.clone(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        "seed.q".into(),
        QueueDeclareOptions::default(),
        args.clone(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "seed.q".into(),
        "seed.x".into(),
        "a.*".into(),
        QueueBindOptions::default(),
        args.clone(),
    )
    .await
    .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("identity".into())
        .with_headers(args.clone())
        .with_delivery_mode(2)
        .with_priority(5)
        .with_correlation_id("c-1".into())
        .with_reply_to("replies".into())
        .with_expiration("60000".into())
        .with_message_id("m-1".into())
        .with_timestamp(1_700_000_000)
        .with_type("seed".into())
        .with_app_id("properties_amqp".into());
    for body in [&b""[..], b"{\"small\":true}", &[7u8; 300_000][..]] {
        ch.basic_publish(
            "seed.x".into(),
            "a.b".into(),
            BasicPublishOptions::default(),
            body,
            props.clone(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let mut consumer = ch
        .basic_consume(
            "seed.q".into(),
            "seed".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await
        .unwrap();
    for _ in 0..3 {
        let d = consumer.next().await.unwrap().unwrap();
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    conn.close(200, "bye".into()).await.unwrap();
    let recorded = recorder.await.unwrap();
    broker.stop().await;

    assert_eq!(&recorded[..8], b"AMQP\x00\x00\x09\x01");
    let mut buf = BytesMut::from(&recorded[8..]);
    let mut frames: Vec<Vec<u8>> = Vec::new();
    loop {
        let before = buf.clone();
        match decode_frame(&mut buf, 131_072) {
            Ok(Some(frame)) => {
                let raw = before[..before.len() - buf.len()].to_vec();
                let mut again = BytesMut::new();
                match &frame {
                    Incoming::Method(ch, m) => encode_method(*ch, (**m).clone(), &mut again),
                    Incoming::Header(ch, h) => {
                        // Re-encode with a body of the announced size and compare the header
                        // frame only.
                        let body = vec![0u8; h.body_size as usize];
                        encode_content(*ch, h.properties.clone(), &body, 131_072, &mut again);
                        again.truncate(raw.len());
                    }
                    _ => again.extend_from_slice(&raw),
                }
                assert_eq!(&again[..], &raw[..], "{frame:?} re-encodes identically");
                frames.push(raw);
            }
            Ok(None) => break,
            Err(e) => panic!("lapin sent a frame Ferry refuses: {e}"),
        }
    }
    assert!(buf.is_empty(), "{} trailing bytes", buf.len());
    assert!(frames.len() > 20, "only {} frames", frames.len());

    if std::env::var_os("FERRY_WRITE_FUZZ_SEEDS").is_some() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/amqp_frame");
        std::fs::create_dir_all(&dir).unwrap();
        // Each frame alone, and the whole session as one input (the target decodes a stream).
        for (i, f) in frames.iter().enumerate() {
            // Big bodies are cut down: the fuzzer mutates small inputs faster.
            if f.len() <= 4096 {
                std::fs::write(dir.join(format!("lapin-{i:03}")), f).unwrap();
            }
        }
        let session: Vec<u8> = frames
            .iter()
            .filter(|f| f.len() <= 4096)
            .flatten()
            .copied()
            .collect();
        std::fs::write(dir.join("lapin-session"), session).unwrap();
    }
}
