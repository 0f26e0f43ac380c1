//! Native SDK connections to a [`TestBroker`], trusting its certificate by fingerprint.

use ferry::client::native::{connect, ConnectOptions, NativeConnection, Trust};
use ferry::testing::TestBroker;

/// Options for `user` on `broker`'s native listener.
pub fn options(broker: &TestBroker, user: &str, password: &str) -> ConnectOptions {
    let trust = Trust::Fingerprint(broker.native_fingerprint().to_string());
    ConnectOptions::new(broker.native_addr(), trust, user, password)
}

/// An SDK connection as `user`.
pub async fn connect_as(broker: &TestBroker, user: &str, password: &str) -> NativeConnection {
    connect(options(broker, user, password))
        .await
        .expect("connect")
}
