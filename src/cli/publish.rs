//! `ferry publish`: the clap twin of `ferry::admin_cli::native_publish::PublishArgs`.

use std::path::PathBuf;

use clap::Args;

use ferry::client::native::EventMetadata;

/// `ferry publish`: one event over the native protocol (QUIC), answered after the confirm.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The broker's native listener (UDP); `tcp://HOST:PORT` uses its TCP listener
    /// (`native_tcp_listen`) instead.
    #[arg(
        help_heading = "Connection (also from the environment)",
        long,
        value_name = "HOST:PORT",
        env = "FERRY_NATIVE_ADDR",
        default_value = "127.0.0.1:7447"
    )]
    pub native_addr: String,
    /// Pin the broker certificate's SHA-256 fingerprint (the broker logs it at start).
    #[arg(
        help_heading = "Connection (also from the environment)",
        long,
        env = "FERRY_NATIVE_FINGERPRINT"
    )]
    pub fingerprint: Option<String>,
    /// Pin the certificate in this PEM file (a local broker's <data_dir>/native/cert.pem).
    #[arg(
        help_heading = "Connection (also from the environment)",
        long,
        value_name = "FILE"
    )]
    pub cert_file: Option<PathBuf>,
    /// Trust certificates issued by the CAs in this PEM file.
    #[arg(
        help_heading = "Connection (also from the environment)",
        long,
        value_name = "FILE"
    )]
    pub ca_file: Option<PathBuf>,
    /// User (amqp.users).
    #[arg(
        help_heading = "Connection (also from the environment)",
        long,
        env = "FERRY_USER",
        default_value = "guest"
    )]
    pub user: String,
    /// Password.
    #[arg(
        help_heading = "Connection (also from the environment)",
        long,
        env = "FERRY_PASSWORD",
        default_value = "guest",
        hide_env_values = true
    )]
    pub password: String,
    /// Topic to publish to.
    #[arg(short, long, conflicts_with = "exchange")]
    pub topic: Option<String>,
    /// Partition of the topic [default: by key, else round-robin].
    #[arg(short, long, requires = "topic")]
    pub partition: Option<i32>,
    /// Record key (topics).
    #[arg(short, long, requires = "topic")]
    pub key: Option<String>,
    /// Exchange to publish to ("" = the default exchange, routing key = queue name).
    #[arg(short, long)]
    pub exchange: Option<String>,
    /// Routing key (exchanges).
    #[arg(short, long, default_value = "")]
    pub routing_key: String,
    /// Event id [default: a new UUIDv7].
    #[arg(long, default_value = "")]
    pub id: String,
    /// Event type (CloudEvents `type`).
    #[arg(long = "type", default_value = "")]
    pub event_type: String,
    /// Event source (CloudEvents `source`).
    #[arg(long, default_value = "")]
    pub source: String,
    #[arg(long, default_value = "")]
    pub subject: String,
    #[arg(long, default_value = "")]
    pub correlation_id: String,
    #[arg(long, default_value = "")]
    pub causation_id: String,
    #[arg(long, default_value = "")]
    pub schema_version: String,
    /// W3C traceparent.
    #[arg(long, default_value = "")]
    pub traceparent: String,
    /// A custom attribute (message header), KEY=VALUE; repeatable.
    #[arg(short = 'H', long = "header", value_name = "KEY=VALUE")]
    pub headers: Vec<String>,
    #[arg(long, default_value = "application/json")]
    pub content_type: String,
    /// The payload.
    pub payload: String,
}

impl From<PublishArgs> for ferry::admin_cli::native_publish::PublishArgs {
    fn from(a: PublishArgs) -> Self {
        let attributes = a
            .headers
            .iter()
            .map(|h| match h.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (h.clone(), String::new()),
            })
            .collect();
        Self {
            addr: a.native_addr,
            fingerprint: a.fingerprint,
            cert_file: a.cert_file,
            ca_file: a.ca_file,
            user: a.user,
            password: a.password,
            topic: a.topic,
            partition: a.partition,
            key: a.key,
            exchange: a.exchange,
            routing_key: a.routing_key,
            metadata: EventMetadata {
                id: a.id,
                event_type: a.event_type,
                source: a.source,
                time_ms: 0,
                subject: a.subject,
                correlation_id: a.correlation_id,
                causation_id: a.causation_id,
                schema_version: a.schema_version,
                traceparent: a.traceparent,
                tracestate: String::new(),
                attributes,
            },
            content_type: a.content_type,
            payload: a.payload.into_bytes(),
        }
    }
}
