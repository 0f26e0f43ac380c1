//! The Rust SDK over the native protocol: [`EventPublisher`] (publish with a durability
//! confirm, resend after reconnect, dedup by event id), [`EventConsumer`] (handlers with
//! broker-side delayed retries and dead-lettering), [`Handlers`] (registration by event type
//! and version), [`EventContext`] (follow-up events with causation and correlation ids) and
//! [`Requester`] (request/reply); for event stores [`EventStoreClient`], CQRS projections
//! ([`ProjectionRunner`]), aggregate snapshots ([`SnapshotStore`]) and sagas
//! ([`SagaManager`]).
//!
//! Everything runs over one [`NativeConnection`] (QUIC, or TLS over TCP with
//! [`Transport::Tcp`] for networks that block UDP; reconnecting with backoff), one stream per
//! call, except publishes, which share one stream per connection. Events are JSON by
//! default; [`EventPublisher::publish_bytes`] takes any encoding (a prost message's bytes
//! with `application/protobuf`).
//!
//! ```no_run
//! # async fn demo(addr: std::net::SocketAddr, fingerprint: String) -> Result<(), Box<dyn std::error::Error>> {
//! use ferry::client::native::*;
//! let conn = connect(ConnectOptions::new(addr, Trust::Fingerprint(fingerprint), "guest", "guest")).await?;
//! let publisher = EventPublisher::new(conn.clone());
//! publisher
//!     .publish(&serde_json::json!({"order": 1}), EventMetadata::new("order.placed", "/shop"), &PublishConfig::queue("orders"))
//!     .await?;
//! # Ok(()) }
//! ```

mod connection;
mod consumer;
mod es;
mod es_persistent;
mod event;
mod pipe;
mod projection;
mod publisher;
mod reply;
mod saga;
mod snapshot;

pub use crate::proto::v1::ErrorCode;
pub use connection::{
    connect, open_raw, open_raw_tcp, Backoff, ConnectOptions, Mechanism, NativeClientError,
    NativeConnection, RecvStream, SendStream, Transport, Trust,
};
pub use consumer::{
    BackoffKind, ConsumerConfig, EventConsumer, EventContext, EventHandler, HandlerConfig,
    HandlerError, Handlers, RetryConfig, Subscription, Upcaster,
};
pub use es::{
    AppendError, AppendResult, CatchUpEvent, CatchUpSubscription, EventData, EventStoreClient,
    ExpectedRevision, ReadFrom, RecordedEvent, StreamInfo, SubscriptionFilter,
};
pub use es_persistent::{
    ConsumerStrategy, NackAction, PersistentEvent, PersistentSource, PersistentSubscription,
    PersistentSubscriptionInfo, PersistentSubscriptionSettings, StartFrom,
};
pub use event::{EventMetadata, ReceivedEvent};
pub use projection::{
    BoxError, CheckpointStorage, FerryCheckpoints, Projection, ProjectionError, ProjectionRunner,
    CHECKPOINT_EVENT_TYPE,
};
pub(crate) use publisher::{publish_batch_request, publish_request};
pub use publisher::{Destination, EventPublisher, PublishConfig, PublishReceipt};
pub use reply::Requester;
pub use saga::{
    Command, Decision, Handled, Outcome, PendingTimeout, Saga, SagaError, SagaEvent, SagaInstance,
    SagaManager, SagaRecord, SagaStatus, SAGA_EVENT_TYPE, TIMEOUT_EVENT_TYPE,
};
pub use snapshot::{
    Aggregate, AggregateError, LoadedAggregate, Snapshot, SnapshotStore, SNAPSHOT_EVENT_TYPE,
};
