//! Orders -> payments -> shipping over Ferry's native protocol, with correlation ids.
//!
//! Three services, each a handler on its own queue: the payments service takes `order.placed`
//! and emits `payment.captured`; shipping takes that and emits `shipment.created`. Each
//! follow-up is published through the handler's `EventContext`, so it carries the order's
//! correlation id and trace context and names the event that caused it. Run it with
//! `cargo run --example native_orders` (it embeds a broker); `tests/native_example.rs` runs it
//! as a test.

use std::time::Duration;

use ferry::client::native::*;
use ferry::Broker;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

#[derive(Debug, Serialize, Deserialize)]
pub struct OrderPlaced {
    pub order: String,
    pub amount_cents: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PaymentCaptured {
    pub order: String,
    pub amount_cents: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ShipmentCreated {
    pub order: String,
}

/// What the run produced: the three events as the last service saw them.
pub struct Trace {
    pub order: ReceivedEvent,
    pub payment: ReceivedEvent,
    pub shipment: ReceivedEvent,
}

/// Starts the services against `broker`, places one order and waits for its shipment.
pub async fn run(broker: &Broker) -> Result<Trace, Box<dyn std::error::Error>> {
    let trust = Trust::Fingerprint(broker.native_fingerprint().to_string());
    let conn = connect(ConnectOptions::new(
        broker.native_addr(),
        trust,
        "guest",
        "guest",
    ))
    .await?;
    let consumer = EventConsumer::new(conn.clone());
    for queue in ["orders", "payments", "shipments"] {
        consumer.declare_queue(&ConsumerConfig::new(queue)).await?;
    }
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<ReceivedEvent>();

    // The payments service.
    let tx = seen_tx.clone();
    let payments = Handlers::new().on(
        HandlerConfig::new("order.placed", "1").with_timeout(Duration::from_secs(5)),
        move |event: ReceivedEvent, ctx: EventContext| {
            let tx = tx.clone();
            async move {
                let order: OrderPlaced = event.json()?;
                let _ = tx.send(event);
                let captured = PaymentCaptured {
                    order: order.order,
                    amount_cents: order.amount_cents,
                };
                let meta =
                    EventMetadata::new("payment.captured", "/payments").with_schema_version("1");
                ctx.publish(&captured, meta, &PublishConfig::queue("payments"))
                    .await?;
                Ok(())
            }
        },
    );
    let payments = consumer
        .subscribe(payments, ConsumerConfig::new("orders"))
        .await?;

    // The shipping service.
    let tx = seen_tx.clone();
    let shipping = Handlers::new().on(
        HandlerConfig::new("payment.captured", "1"),
        move |event: ReceivedEvent, ctx: EventContext| {
            let tx = tx.clone();
            async move {
                let payment: PaymentCaptured = event.json()?;
                let _ = tx.send(event);
                let meta = EventMetadata::new("shipment.created", "/shipping");
                ctx.publish(
                    &ShipmentCreated {
                        order: payment.order,
                    },
                    meta,
                    &PublishConfig::queue("shipments"),
                )
                .await?;
                Ok(())
            }
        },
    );
    let shipping = consumer
        .subscribe(shipping, ConsumerConfig::new("payments"))
        .await?;

    // Whoever watches shipments.
    let tx = seen_tx;
    let watcher = consumer
        .subscribe(
            move |event: ReceivedEvent, _ctx: EventContext| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(event);
                    Ok(())
                }
            },
            ConsumerConfig::new("shipments"),
        )
        .await?;

    // The shop places an order; its id is the correlation id of everything that follows.
    let publisher = EventPublisher::new(conn);
    let meta = EventMetadata::new("order.placed", "/shop")
        .with_schema_version("1")
        .with_correlation_id("order-1001")
        .with_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    let order = OrderPlaced {
        order: "order-1001".into(),
        amount_cents: 4_200,
    };
    publisher
        .publish(&order, meta, &PublishConfig::queue("orders"))
        .await?;

    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = tokio::time::timeout(Duration::from_secs(10), seen_rx.recv())
            .await
            .ok()
            .flatten()
            .ok_or("an event did not arrive in time")?;
        seen.push(event);
    }
    let mut seen = seen.into_iter();
    let (Some(order), Some(payment), Some(shipment)) = (seen.next(), seen.next(), seen.next())
    else {
        return Err("three events expected".into());
    };
    let trace = Trace {
        order,
        payment,
        shipment,
    };
    for s in [payments, shipping, watcher] {
        s.close().await;
    }
    Ok(trace)
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = Broker::builder().start().await?;
    let trace = run(&broker).await?;
    for e in [&trace.order, &trace.payment, &trace.shipment] {
        println!(
            "{:<18} id={} correlation={} causation={}",
            e.metadata.event_type,
            e.metadata.id,
            e.metadata.correlation_id,
            e.metadata.causation_id
        );
    }
    broker.shutdown().await;
    Ok(())
}
