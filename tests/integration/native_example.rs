//! Runs `examples/native_orders.rs` (orders -> payments -> shipping) against an embedded
//! broker and checks the ids chain as the example promises.

#[path = "../../examples/native_orders.rs"]
mod example;

use ferry::testing::TestBroker;

#[tokio::test]
async fn orders_payments_shipping_keep_the_correlation_and_chain_causation() {
    let broker = TestBroker::start().await.expect("broker");
    let trace = example::run(&broker).await.expect("the example runs");
    let (order, payment, shipment) = (
        &trace.order.metadata,
        &trace.payment.metadata,
        &trace.shipment.metadata,
    );
    assert_eq!(order.event_type, "order.placed");
    assert_eq!(payment.event_type, "payment.captured");
    assert_eq!(shipment.event_type, "shipment.created");
    for m in [order, payment, shipment] {
        assert_eq!(m.correlation_id, "order-1001");
        assert_eq!(
            m.traceparent,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
    }
    assert!(order.causation_id.is_empty());
    assert_eq!(payment.causation_id, order.id);
    assert_eq!(shipment.causation_id, payment.id);
    let shipped: example::ShipmentCreated = trace.shipment.json().expect("json");
    assert_eq!(shipped.order, "order-1001");
}
