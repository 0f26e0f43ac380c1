//! The registry of live client connections of every protocol (AMQP, Kafka, native), for the
//! management API: who is connected, from where, as whom, since when, how many bytes each way,
//! and, for AMQP, which channels and consumers each connection has. It can also ask one
//! connection to close, with a reason.
//!
//! A protocol adapter calls [`ConnectionRegistry::register`] once its socket is accepted and
//! keeps the returned [`Registration`] for the connection's life: dropping it deregisters. The
//! hot path stays lock-free: byte counters are relaxed atomics the adapters add to per read and
//! per written batch, identity fields (user, vhost, client name) are set once through
//! `OnceLock`s, and only rare events (channel open/close, basic.qos, consume/cancel) take the
//! connection's own small mutex. The registry's map lock is taken on connect, disconnect and
//! listing only.
//!
//! Closing is cooperative: [`ConnectionRegistry::close`] sends the reason on the connection's
//! `watch` channel, which the adapter's read loop selects on next to the shutdown signal (AMQP
//! answers with connection.close 320 CONNECTION_FORCED and the reason, as RabbitMQ; Kafka, which
//! has no such frame, drops the socket).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

/// The wire protocol a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Amqp,
    Kafka,
    Native,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Amqp => "amqp",
            Protocol::Kafka => "kafka",
            Protocol::Native => "native",
        }
    }
}

/// What an adapter knows when it accepts a socket.
#[derive(Clone, Debug)]
pub struct NewConnection {
    pub protocol: Protocol,
    pub peer: SocketAddr,
    /// The listener's address the client connected to, when known.
    pub local: Option<SocketAddr>,
    pub tls: bool,
}

/// One AMQP consumer as the management API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerState {
    pub queue: String,
    pub ack_required: bool,
    pub exclusive: bool,
    /// The per-consumer prefetch (basic.qos, not global) in force when it subscribed.
    pub prefetch_count: u16,
}

/// One open AMQP channel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChannelState {
    /// The per-consumer prefetch the channel's next consumer gets (basic.qos global=false).
    pub prefetch_count: u16,
    /// The channel-wide prefetch (basic.qos global=true).
    pub global_prefetch_count: u16,
    /// Consumers by tag.
    pub consumers: BTreeMap<String, ConsumerState>,
}

/// One live connection. Adapters update it through their [`Registration`].
#[derive(Debug)]
pub struct Connection {
    id: u64,
    name: String,
    info: NewConnection,
    connected_at_ms: u64,
    user: OnceLock<String>,
    vhost: OnceLock<String>,
    client_name: OnceLock<String>,
    recv_oct: AtomicU64,
    send_oct: AtomicU64,
    channels: Mutex<BTreeMap<u16, ChannelState>>,
    close: watch::Sender<Option<String>>,
}

/// A point-in-time copy of a connection, for listing.
#[derive(Clone, Debug)]
pub struct ConnectionSnapshot {
    pub id: u64,
    /// RabbitMQ-style `"peer -> local"`; unique among live connections.
    pub name: String,
    pub protocol: Protocol,
    pub peer: SocketAddr,
    pub local: Option<SocketAddr>,
    pub tls: bool,
    pub user: Option<String>,
    pub vhost: Option<String>,
    /// AMQP's `connection_name` client property, or the Kafka client id.
    pub client_name: Option<String>,
    pub connected_at_ms: u64,
    pub recv_oct: u64,
    pub send_oct: u64,
    pub channels: BTreeMap<u16, ChannelState>,
}

impl Connection {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the authenticated user; later calls are ignored (identity is fixed once known).
    /// The user this connection authenticated as, once it has.
    pub fn user(&self) -> Option<&str> {
        self.user.get().map(String::as_str)
    }

    pub fn set_user(&self, user: &str) {
        let _ = self.user.set(user.to_string());
    }

    pub fn set_vhost(&self, vhost: &str) {
        let _ = self.vhost.set(vhost.to_string());
    }

    /// The client's own name for itself, once it gave one.
    pub fn client_name(&self) -> Option<&str> {
        self.client_name.get().map(String::as_str)
    }

    /// The client's own name for itself (AMQP `connection_name`, Kafka `client.id`).
    pub fn set_client_name(&self, name: &str) {
        if self.client_name.get().is_none() {
            let _ = self.client_name.set(name.to_string());
        }
    }

    pub fn add_received(&self, bytes: usize) {
        self.recv_oct.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn add_sent(&self, bytes: usize) {
        self.send_oct.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn channel_opened(&self, channel: u16) {
        self.channels
            .lock()
            .insert(channel, ChannelState::default());
    }

    pub fn channel_closed(&self, channel: u16) {
        self.channels.lock().remove(&channel);
    }

    pub fn channel_prefetch(&self, channel: u16, prefetch_count: u16, global: bool) {
        if let Some(c) = self.channels.lock().get_mut(&channel) {
            if global {
                c.global_prefetch_count = prefetch_count;
            } else {
                c.prefetch_count = prefetch_count;
            }
        }
    }

    pub fn consumer_added(&self, channel: u16, tag: &str, consumer: ConsumerState) {
        if let Some(c) = self.channels.lock().get_mut(&channel) {
            c.consumers.insert(tag.to_string(), consumer);
        }
    }

    pub fn consumer_removed(&self, channel: u16, tag: &str) {
        if let Some(c) = self.channels.lock().get_mut(&channel) {
            c.consumers.remove(tag);
        }
    }

    /// Resolves with the reason once the management API asks this connection to close.
    pub fn close_requests(&self) -> watch::Receiver<Option<String>> {
        self.close.subscribe()
    }

    pub fn snapshot(&self) -> ConnectionSnapshot {
        ConnectionSnapshot {
            id: self.id,
            name: self.name.clone(),
            protocol: self.info.protocol,
            peer: self.info.peer,
            local: self.info.local,
            tls: self.info.tls,
            user: self.user.get().cloned(),
            vhost: self.vhost.get().cloned(),
            client_name: self.client_name.get().cloned(),
            connected_at_ms: self.connected_at_ms,
            recv_oct: self.recv_oct.load(Ordering::Relaxed),
            send_oct: self.send_oct.load(Ordering::Relaxed),
            channels: self.channels.lock().clone(),
        }
    }
}

/// Waits until a close is requested through `requests` and returns its reason. Never resolves
/// if the registry entry is gone (the connection is closing anyway).
pub async fn close_requested(requests: &mut watch::Receiver<Option<String>>) -> String {
    loop {
        if let Some(reason) = requests.borrow_and_update().clone() {
            return reason;
        }
        if requests.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[derive(Debug, Default)]
struct Registry {
    next_id: AtomicU64,
    live: RwLock<BTreeMap<u64, Arc<Connection>>>,
}

/// All live connections of the broker; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct ConnectionRegistry(Arc<Registry>);

/// Keeps a connection listed while it lives; dropping it deregisters the connection.
#[derive(Debug)]
pub struct Registration {
    connection: Arc<Connection>,
    registry: ConnectionRegistry,
}

impl std::ops::Deref for Registration {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.connection
    }
}

impl Registration {
    /// A shared handle for tasks of the connection (its writer, its channels).
    pub fn handle(&self) -> Arc<Connection> {
        self.connection.clone()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.0.live.write().remove(&self.connection.id);
    }
}

impl ConnectionRegistry {
    /// Lists a new connection until the returned registration is dropped. Every adapter
    /// (AMQP, Kafka, the native protocol) calls this right after accepting a socket.
    pub fn register(&self, info: NewConnection) -> Registration {
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        // RabbitMQ names a connection "peer -> local"; the id keeps names unique even when
        // the local address is unknown.
        let name = match info.local {
            Some(local) => format!("{} -> {local}", info.peer),
            None => format!("{} -> {}#{id}", info.peer, info.protocol.as_str()),
        };
        let connected_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let connection = Arc::new(Connection {
            id,
            name,
            info,
            connected_at_ms,
            user: OnceLock::new(),
            vhost: OnceLock::new(),
            client_name: OnceLock::new(),
            recv_oct: AtomicU64::new(0),
            send_oct: AtomicU64::new(0),
            channels: Mutex::new(BTreeMap::new()),
            close: watch::channel(None).0,
        });
        self.0.live.write().insert(id, connection.clone());
        Registration {
            connection,
            registry: self.clone(),
        }
    }

    /// Every live connection, oldest first.
    pub fn list(&self) -> Vec<ConnectionSnapshot> {
        let live: Vec<_> = self.0.live.read().values().cloned().collect();
        live.iter().map(|c| c.snapshot()).collect()
    }

    pub fn get(&self, name: &str) -> Option<ConnectionSnapshot> {
        let live = self.0.live.read();
        live.values().find(|c| c.name == name).map(|c| c.snapshot())
    }

    pub fn len(&self) -> usize {
        self.0.live.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Asks the connection called `name` to close with `reason`; `false` if there is none.
    pub fn close(&self, name: &str, reason: &str) -> bool {
        let live = self.0.live.read();
        match live.values().find(|c| c.name == name) {
            Some(c) => {
                c.close.send_replace(Some(reason.to_string()));
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(port: u16) -> NewConnection {
        NewConnection {
            protocol: Protocol::Kafka,
            peer: SocketAddr::from(([127, 0, 0, 1], port)),
            local: Some(SocketAddr::from(([127, 0, 0, 1], 9092))),
            tls: false,
        }
    }

    #[tokio::test]
    async fn registration_lists_until_dropped_and_close_reaches_the_connection() {
        let registry = ConnectionRegistry::default();
        let a = registry.register(info(1000));
        let b = registry.register(info(1001));
        a.set_client_name("app-a");
        a.add_received(10);
        a.add_sent(7);
        let listed = registry.list();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].name, "127.0.0.1:1000 -> 127.0.0.1:9092");
        assert_eq!(listed[0].client_name.as_deref(), Some("app-a"));
        assert_eq!((listed[0].recv_oct, listed[0].send_oct), (10, 7));

        let mut requests = b.close_requests();
        assert!(registry.close(b.name(), "maintenance"));
        assert_eq!(close_requested(&mut requests).await, "maintenance");
        assert!(!registry.close("nobody", "x"));

        drop(b);
        assert_eq!(registry.len(), 1);
        assert!(registry.get("127.0.0.1:1001 -> 127.0.0.1:9092").is_none());
    }
}
