//! Ferry: one broker that speaks Kafka and AMQP 0-9-1 over a single segmented log.
//!
//! The crate is both the `ferry` binary and a library for embedding. The layers, from the wire
//! inwards: [`protocol`] adapters decode frames and call the [`broker`] core, which owns topics
//! and partitions and stores every message, whatever protocol brought it, as a Kafka record
//! batch in the [`log`]; definitions and small durable state live in [`meta`]; [`observe`]
//! serves health and metrics beside it all. [`Broker`] wires them into one start/stop value and
//! [`testing::TestBroker`] wraps that for tests.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = ferry::Broker::builder().data_dir("./ferry-data").start().await?;
//! println!("Kafka clients connect to {}", broker.kafka_addr());
//! broker.shutdown().await;
//! # Ok(()) }
//! ```

// Peers and the disk control most inputs; a panic there takes every connection down. Outside
// tests, errors are handled, never unwrapped.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod admin_cli;
pub mod bench;
pub mod bridge;
pub mod broker;
pub mod client;
pub mod clock;
pub mod config;
pub mod es;
pub mod log;
pub mod meta;
pub mod observe;
pub mod proto;
pub mod protocol;
pub mod schema;
pub mod server;
pub mod testing;
pub mod tls;
pub mod util;

pub use broker::{BrokerCore, BrokerError};
pub use clock::Clock;
pub use config::Config;
pub use server::{Broker, BrokerBuilder, StartError};
