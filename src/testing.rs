//! [`TestBroker`]: a whole Ferry broker inside a test, in a few milliseconds.
//!
//! It listens on `127.0.0.1` ports the OS picks, keeps its logs in a temporary directory and
//! its metadata in memory, and cleans everything up when dropped, so tests run in parallel
//! without sharing anything. Use [`TestBroker::with`] to change settings first.

use std::ops::Deref;

use crate::server::{Broker, BrokerBuilder, StartError};

pub struct TestBroker {
    broker: Broker,
}

impl TestBroker {
    /// Starts a broker with defaults suited to tests.
    pub async fn start() -> Result<Self, StartError> {
        Self::with(|b| b).await
    }

    /// Starts a broker after `configure` adjusts the builder (fsync policy, a data dir to
    /// reopen, a manual clock, …). Unlike a production broker, a consumer group's first
    /// rebalance does not wait 3 s for more members (`group_initial_rebalance_delay_ms = 0`),
    /// so group tests run fast; `configure` can set it back.
    pub async fn with(
        configure: impl FnOnce(BrokerBuilder) -> BrokerBuilder,
    ) -> Result<Self, StartError> {
        let builder = Broker::builder().configure(|c| c.kafka.group_initial_rebalance_delay_ms = 0);
        let broker = configure(builder).start().await?;
        Ok(Self { broker })
    }

    /// `host:port` for a Kafka client's `bootstrap.servers`.
    pub fn kafka_bootstrap(&self) -> String {
        self.broker.kafka_addr().to_string()
    }

    /// `amqp://guest:guest@host:port/%2f` for an AMQP client.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.broker.amqp_addr())
    }

    /// `http://host:port` of the health and metrics endpoints.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.broker.http_addr())
    }

    /// Stops the broker cleanly (drain, fsync) and hands back nothing; the temp dir goes too.
    pub async fn stop(self) {
        self.broker.shutdown().await;
    }
}

impl Deref for TestBroker {
    type Target = Broker;
    fn deref(&self) -> &Broker {
        &self.broker
    }
}
