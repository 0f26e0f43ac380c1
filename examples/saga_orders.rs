//! An order saga over Ferry: order -> reserve stock -> charge payment -> ship, and a payment
//! failure that compensates the stock reservation.
//!
//! The [`OrderSaga`] is a process manager keyed by the order id (the correlation id): it keeps
//! its state in stream `saga-order-<id>` of event store `sagas` (written with expected
//! revisions, so concurrent events cannot both win) and talks to three services over queues.
//! The stock service's reservation registers a compensation (release the stock); when the
//! payment fails, or does not answer before the payment timeout (a delayed message carrying a
//! token), the saga ends as `Compensated` and the release is sent once. Services use
//! idempotent handlers and the saga's command queues deduplicate by message id, so a command
//! sent again is carried out once. Run it with `cargo run --example saga_orders` (it embeds a
//! broker); `tests/integration/es_sdk.rs` runs it as a test.

use std::time::Duration;

use ferry::client::native::*;
use ferry::Broker;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// The order saga's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OrderState {
    pub step: String,
    pub amount_cents: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderPlaced {
    pub order: String,
    pub amount_cents: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderRef {
    pub order: String,
}

/// The queues the saga sends to, and how long it waits for the payment.
pub struct OrderSaga {
    pub stock_queue: String,
    pub payment_queue: String,
    pub shipping_queue: String,
    pub payment_timeout: Duration,
}

impl OrderSaga {
    pub fn new(prefix: &str, payment_timeout: Duration) -> Self {
        Self {
            stock_queue: format!("{prefix}.stock"),
            payment_queue: format!("{prefix}.payments"),
            shipping_queue: format!("{prefix}.shipping"),
            payment_timeout,
        }
    }
}

fn step(state: &OrderState, step: &str) -> OrderState {
    OrderState {
        step: step.into(),
        ..state.clone()
    }
}

impl Saga for OrderSaga {
    type State = OrderState;

    fn name(&self) -> &str {
        "order"
    }

    fn handle(
        &self,
        state: &OrderState,
        event: &SagaEvent,
    ) -> Result<Decision<OrderState>, BoxError> {
        let order = OrderRef {
            order: event.metadata.correlation_id.clone(),
        };
        Ok(
            match (state.step.as_str(), event.metadata.event_type.as_str()) {
                ("", "order.placed") => {
                    let placed: OrderPlaced = event.payload_json()?;
                    let state = OrderState {
                        step: "reserving".into(),
                        amount_cents: placed.amount_cents,
                    };
                    Decision::to(state).send(Command::to_queue(
                        "reserve-stock",
                        "stock.reserve",
                        &self.stock_queue,
                        &order,
                    )?)
                }
                ("reserving", "stock.reserved") => Decision::to(step(state, "charging"))
                    .compensate_with(Command::to_queue(
                        "release-stock",
                        "stock.release",
                        &self.stock_queue,
                        &order,
                    )?)
                    .send(Command::to_queue(
                        "charge-payment",
                        "payment.charge",
                        &self.payment_queue,
                        &OrderPlaced {
                            order: order.order.clone(),
                            amount_cents: state.amount_cents,
                        },
                    )?)
                    .timeout("payment", self.payment_timeout),
                ("charging", "payment.charged") => Decision::to(step(state, "shipping"))
                    .cancel_timeout()
                    .send(Command::to_queue(
                        "ship",
                        "order.ship",
                        &self.shipping_queue,
                        &order,
                    )?),
                ("charging", "payment.failed") => {
                    Decision::to(step(state, "payment failed")).fail("payment declined")
                }
                ("shipping", "order.shipped") => Decision::to(step(state, "shipped")).complete(),
                // Anything else (a reply out of order) changes nothing.
                _ => Decision::to(state.clone()),
            },
        )
    }

    fn on_timeout(
        &self,
        state: &OrderState,
        timeout: &str,
    ) -> Result<Decision<OrderState>, BoxError> {
        Ok(match timeout {
            "payment" => Decision::to(step(state, "payment timed out")).fail("payment timed out"),
            _ => Decision::to(state.clone()),
        })
    }
}

/// What the run produced.
pub struct SagaRun {
    /// The saga records of the order that shipped and of the one whose payment failed.
    pub shipped: SagaRecord<OrderState>,
    pub failed: SagaRecord<OrderState>,
    /// Orders whose stock the stock service released (each release it carried out).
    pub releases: Vec<String>,
}

/// Payments above this are declined.
pub const PAYMENT_LIMIT_CENTS: u64 = 10_000;

/// Starts the saga and the services against `broker`, places two orders (one too expensive)
/// and waits until both sagas ended.
pub async fn run(broker: &Broker) -> Result<SagaRun, Box<dyn std::error::Error>> {
    let trust = Trust::Fingerprint(broker.native_fingerprint().to_string());
    let conn = connect(ConnectOptions::new(
        broker.native_addr(),
        trust,
        "guest",
        "guest",
    ))
    .await?;
    let saga = OrderSaga::new("shop", Duration::from_secs(30));
    let (stock_q, payment_q, shipping_q) = (
        saga.stock_queue.clone(),
        saga.payment_queue.clone(),
        saga.shipping_queue.clone(),
    );
    let input = ConsumerConfig::new("shop.order-saga");
    let manager = SagaManager::new(conn.clone(), saga, "sagas", &input.queue);
    manager.declare(&input).await?;
    for q in [&stock_q, &payment_q, &shipping_q] {
        manager
            .declare_command_queue(&ConsumerConfig::new(q))
            .await?;
    }
    let consumer = EventConsumer::new(conn.clone());
    let to_saga = PublishConfig::queue(&input.queue);

    // The stock service: reserves, and releases (counted) when the saga compensates.
    let (released_tx, mut released_rx) = mpsc::unbounded_channel::<String>();
    let reply = to_saga.clone();
    let stock = Handlers::new()
        .on(
            HandlerConfig::new("stock.reserve", "").idempotent_as("stock.reserve"),
            move |event: ReceivedEvent, ctx: EventContext| {
                let reply = reply.clone();
                async move {
                    let order: OrderRef = event.json()?;
                    ctx.publish(
                        &order,
                        EventMetadata::new("stock.reserved", "/stock"),
                        &reply,
                    )
                    .await?;
                    Ok(())
                }
            },
        )
        .on(
            HandlerConfig::new("stock.release", "").idempotent_as("stock.release"),
            move |event: ReceivedEvent, _ctx: EventContext| {
                let released_tx = released_tx.clone();
                async move {
                    let order: OrderRef = event.json()?;
                    let _ = released_tx.send(order.order);
                    Ok(())
                }
            },
        );
    let stock = consumer
        .subscribe(stock, ConsumerConfig::new(&stock_q))
        .await?;

    // The payment service: declines payments above the limit.
    let reply = to_saga.clone();
    let payments = Handlers::new().on(
        HandlerConfig::new("payment.charge", "").idempotent_as("payment.charge"),
        move |event: ReceivedEvent, ctx: EventContext| {
            let reply = reply.clone();
            async move {
                let charge: OrderPlaced = event.json()?;
                let outcome = if charge.amount_cents > PAYMENT_LIMIT_CENTS {
                    "payment.failed"
                } else {
                    "payment.charged"
                };
                let order = OrderRef {
                    order: charge.order,
                };
                ctx.publish(&order, EventMetadata::new(outcome, "/payments"), &reply)
                    .await?;
                Ok(())
            }
        },
    );
    let payments = consumer
        .subscribe(payments, ConsumerConfig::new(&payment_q))
        .await?;

    // The shipping service.
    let reply = to_saga.clone();
    let shipping = Handlers::new().on(
        HandlerConfig::new("order.ship", "").idempotent_as("order.ship"),
        move |event: ReceivedEvent, ctx: EventContext| {
            let reply = reply.clone();
            async move {
                let order: OrderRef = event.json()?;
                ctx.publish(
                    &order,
                    EventMetadata::new("order.shipped", "/shipping"),
                    &reply,
                )
                .await?;
                Ok(())
            }
        },
    );
    let shipping = consumer
        .subscribe(shipping, ConsumerConfig::new(&shipping_q))
        .await?;

    let saga_sub = manager.subscribe(&consumer, input.clone()).await?;

    // The shop places two orders; the order id is the correlation id.
    let publisher = EventPublisher::new(conn);
    for (order, amount_cents) in [("order-1", 4_200), ("order-2", 25_000)] {
        let meta = EventMetadata::new("order.placed", "/shop").with_correlation_id(order);
        let placed = OrderPlaced {
            order: order.into(),
            amount_cents,
        };
        publisher.publish(&placed, meta, &to_saga).await?;
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut ended = Vec::new();
    for order in ["order-1", "order-2"] {
        loop {
            match manager.load(order).await? {
                Some(i) if i.record.status != SagaStatus::Running => {
                    ended.push(i.record);
                    break;
                }
                _ if tokio::time::Instant::now() > deadline => {
                    return Err(format!("saga {order} did not end in time").into())
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
    // Give a second release (there must be none) the time to show up.
    let mut releases = Vec::new();
    while let Ok(Some(order)) =
        tokio::time::timeout(Duration::from_millis(500), released_rx.recv()).await
    {
        releases.push(order);
    }
    for s in [saga_sub, stock, payments, shipping] {
        s.close().await;
    }
    let mut ended = ended.into_iter();
    let (Some(shipped), Some(failed)) = (ended.next(), ended.next()) else {
        return Err("two sagas expected".into());
    };
    Ok(SagaRun {
        shipped,
        failed,
        releases,
    })
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = Broker::builder().start().await?;
    let outcome = run(&broker).await?;
    for (order, r) in [("order-1", &outcome.shipped), ("order-2", &outcome.failed)] {
        println!(
            "{order}: {:?} at step `{}` ({} events){}",
            r.status,
            r.state.step,
            r.processed.len(),
            r.failure
                .as_deref()
                .map(|f| format!(", failure: {f}"))
                .unwrap_or_default()
        );
    }
    println!("stock released for: {:?}", outcome.releases);
    broker.shutdown().await;
    Ok(())
}
