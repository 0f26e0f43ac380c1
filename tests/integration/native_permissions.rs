//! Native requests are held to the user's vhost permissions with RabbitMQ's rules (configure to
//! declare or delete, write to publish, read to consume, write on the queue and read on the
//! exchange to bind), refused with the typed `PERMISSION_DENIED`; a revoked permission refuses
//! the next request; and `native.max_connections` refuses the connection past the cap.

use std::time::Duration;

use ferry::broker::users::Password;
use ferry::client::native::*;
use ferry::meta::PermissionRecord;
use ferry::proto::v1::{self, request::Op, ErrorCode};
use ferry::testing::TestBroker;

use crate::common;
use common::native::{connect_as, options};

const WAIT: Duration = Duration::from_secs(10);

async fn call(conn: &NativeConnection, op: Op) -> Result<v1::response::Result, NativeClientError> {
    conn.call(&v1::Request { op: Some(op) }).await
}

fn denied(r: Result<v1::response::Result, NativeClientError>, what: &str) {
    match r {
        Err(NativeClientError::Server { code, message }) => {
            assert_eq!(code, ErrorCode::PermissionDenied, "{what}: {message}");
        }
        other => panic!("{what}: expected PERMISSION_DENIED, got {other:?}"),
    }
}

fn declare_queue(name: &str) -> Op {
    Op::DeclareQueue(v1::DeclareQueue {
        name: name.into(),
        durable: true,
        ..Default::default()
    })
}

fn publish_to_queue(queue: &str) -> Op {
    Op::Publish(v1::Publish {
        destination: Some(v1::publish::Destination::Exchange(
            v1::ExchangeDestination {
                exchange: "app.events".into(),
                routing_key: queue.into(),
                ..Default::default()
            },
        )),
        message: Some(v1::Message {
            payload: b"hello".to_vec(),
            ..Default::default()
        }),
    })
}

#[tokio::test]
async fn requests_need_the_users_vhost_permissions() {
    let broker = TestBroker::start().await.expect("broker");
    let users = broker.core().users();
    users
        .put_user("app", Password::Clear("app-secret".into()), Vec::new())
        .expect("user");
    users
        .set_permission(PermissionRecord {
            vhost: "/".into(),
            user: "app".into(),
            configure: "^app\\.".into(),
            write: "^app\\.".into(),
            read: "^app\\.".into(),
        })
        .expect("permission");
    let admin = connect_as(&broker, "guest", "guest").await;
    call(&admin, declare_queue("orders"))
        .await
        .expect("guest declares");
    call(
        &admin,
        Op::DeclareTopic(v1::DeclareTopic {
            name: "payments".into(),
            partitions: 1,
            ..Default::default()
        }),
    )
    .await
    .expect("guest declares a topic");

    let app = connect_as(&broker, "app", "app-secret").await;
    // configure
    denied(call(&app, declare_queue("orders")).await, "declare orders");
    denied(
        call(
            &app,
            Op::DeleteQueue(v1::DeleteQueue {
                name: "orders".into(),
                ..Default::default()
            }),
        )
        .await,
        "delete orders",
    );
    denied(
        call(
            &app,
            Op::DeleteTopic(v1::DeleteTopic {
                name: "payments".into(),
            }),
        )
        .await,
        "delete topic payments",
    );
    call(&app, declare_queue("app.jobs"))
        .await
        .expect("own queue");
    call(
        &app,
        Op::DeclareExchange(v1::DeclareExchange {
            name: "app.events".into(),
            kind: "direct".into(),
            durable: true,
            ..Default::default()
        }),
    )
    .await
    .expect("own exchange");
    // bind: write on the queue, read on the exchange
    denied(
        call(
            &app,
            Op::Bind(v1::Bind {
                queue: "orders".into(),
                exchange: "app.events".into(),
                ..Default::default()
            }),
        )
        .await,
        "bind into orders",
    );
    call(
        &app,
        Op::Bind(v1::Bind {
            queue: "app.jobs".into(),
            exchange: "app.events".into(),
            routing_key: "app.jobs".into(),
            ..Default::default()
        }),
    )
    .await
    .expect("own binding");
    // write
    let publisher = EventPublisher::new(app.clone());
    let refused = publisher
        .publish(
            &serde_json::json!({}),
            EventMetadata::new("t", "/s"),
            &PublishConfig::queue("orders"),
        )
        .await
        .expect_err("publish via the default exchange");
    assert_eq!(
        refused.code(),
        Some(ErrorCode::PermissionDenied),
        "{refused}"
    );
    denied(
        call(
            &app,
            Op::Publish(v1::Publish {
                destination: Some(v1::publish::Destination::Topic(v1::TopicDestination {
                    topic: "payments".into(),
                    partition: None,
                })),
                message: Some(v1::Message::default()),
            }),
        )
        .await,
        "publish to topic payments",
    );
    call(&app, publish_to_queue("app.jobs"))
        .await
        .expect("own exchange");
    // read
    let (handler_tx, mut got) = tokio::sync::mpsc::unbounded_channel();
    let handler = move |e: ReceivedEvent, _ctx: EventContext| {
        let tx = handler_tx.clone();
        async move {
            let _ = tx.send(e.payload);
            Ok(())
        }
    };
    let consumer = EventConsumer::new(app.clone());
    let refused = consumer
        .subscribe(handler.clone(), ConsumerConfig::new("orders"))
        .await
        .err()
        .expect("subscribe to orders");
    assert_eq!(
        refused.code(),
        Some(ErrorCode::PermissionDenied),
        "{refused}"
    );
    let sub = consumer
        .subscribe(handler, ConsumerConfig::new("app.jobs"))
        .await
        .expect("own queue");
    let body = tokio::time::timeout(WAIT, got.recv())
        .await
        .expect("in time")
        .expect("delivery");
    assert_eq!(&body[..], b"hello");
    sub.close().await;
    assert_eq!(
        broker
            .core()
            .router()
            .queue("/", "orders")
            .expect("orders")
            .message_count(),
        0,
        "nothing reached a queue the user may not write to"
    );
    // A revoked permission refuses the next request on the open connection.
    users.clear_permission("/", "app").expect("revoke");
    denied(
        call(&app, publish_to_queue("app.jobs")).await,
        "after revoke",
    );
}

#[tokio::test]
async fn connections_past_native_max_connections_are_refused() {
    let broker = TestBroker::with(|b| b.configure(|c| c.native.max_connections = 1))
        .await
        .expect("broker");
    let first = open_raw(&options(&broker, "guest", "guest"))
        .await
        .expect("the first connection");
    let second = open_raw(&options(&broker, "guest", "guest")).await;
    assert!(
        matches!(second, Err(NativeClientError::Connection(_))),
        "{second:?}"
    );
    first.close(0_u32.into(), b"done");
    // Once the first is gone, a new connection is served again.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match open_raw(&options(&broker, "guest", "guest")).await {
            Ok(_) => break,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn check_processed(handler: &str, id: &str) -> Op {
    Op::CheckProcessed(v1::CheckProcessed {
        handler: handler.into(),
        event_id: id.into(),
    })
}

fn record_processed(handler: &str, id: &str) -> Op {
    Op::RecordProcessed(v1::RecordProcessed {
        handler: handler.into(),
        event_id: id.into(),
    })
}

async fn processed(conn: &NativeConnection, handler: &str, id: &str) -> bool {
    match call(conn, check_processed(handler, id)).await {
        Ok(v1::response::Result::ProcessedStatus(s)) => s.processed,
        other => panic!("expected a processed status, got {other:?}"),
    }
}

#[tokio::test]
async fn processed_ids_belong_to_the_user_that_recorded_them() {
    let broker = TestBroker::start().await.expect("broker");
    broker
        .core()
        .users()
        .put_user("mallory", Password::Clear("m-secret".into()), Vec::new())
        .expect("user");
    let owner = connect_as(&broker, "guest", "guest").await;
    let other = connect_as(&broker, "mallory", "m-secret").await;
    call(&owner, record_processed("billing.charge", "evt-1"))
        .await
        .expect("record");
    assert!(processed(&owner, "billing.charge", "evt-1").await);
    // Another user neither sees the owner's ids nor can mark an event done in its name.
    assert!(!processed(&other, "billing.charge", "evt-1").await);
    call(&other, record_processed("billing.charge", "evt-2"))
        .await
        .expect("a user's own record");
    assert!(!processed(&owner, "billing.charge", "evt-2").await);
    assert!(processed(&other, "billing.charge", "evt-2").await);
}

#[tokio::test]
async fn handler_names_are_bounded() {
    let broker = TestBroker::start().await.expect("broker");
    broker
        .core()
        .processed()
        .set_limits(ferry::broker::processed::ProcessedLimits {
            max_handlers: 2,
            ..Default::default()
        });
    let conn = connect_as(&broker, "guest", "guest").await;
    for name in ["h1", "h2"] {
        call(&conn, record_processed(name, "e"))
            .await
            .expect("within the cap");
    }
    for op in [record_processed("h3", "e"), check_processed("h3", "e")] {
        match call(&conn, op).await {
            Err(NativeClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::Rejected),
            other => panic!("expected REJECTED past the cap, got {other:?}"),
        }
    }
    // Known names keep working.
    assert!(processed(&conn, "h1", "e").await);
}
