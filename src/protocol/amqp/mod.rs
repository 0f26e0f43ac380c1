//! The AMQP 0-9-1 adapter.
//!
//! Not implemented yet (issue "AMQP 0-9-1"): the listener binds so that deployments and
//! readiness checks see the port, and each connection is closed at once with a log line.

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::broker::BrokerCore;

pub async fn serve(listener: TcpListener, _core: BrokerCore, shutdown: watch::Receiver<bool>) {
    super::accept_loop("amqp", listener, shutdown, |_stream, peer, _| async move {
        tracing::warn!(%peer, "AMQP is not implemented yet; closing connection");
    })
    .await
}
