//! `ferry publish`: one event over the native protocol, printed back as the broker confirmed
//! it (id, partition/offset or queue count) in JSON. Scripts and other languages' tests use it
//! to publish natively without an SDK of their own.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::CliError;
use crate::client::native::{
    connect, ConnectOptions, EventMetadata, EventPublisher, PublishConfig, Trust,
};

/// What `ferry publish` was asked to do (plain values; the clap twin is in the binary).
#[derive(Debug, Clone, Default)]
pub struct PublishArgs {
    pub addr: String,
    /// Pin this SHA-256 fingerprint.
    pub fingerprint: Option<String>,
    /// Pin the certificate in this PEM file (the broker's `<data_dir>/native/cert.pem`).
    pub cert_file: Option<PathBuf>,
    /// Trust certificates issued by these CAs.
    pub ca_file: Option<PathBuf>,
    pub user: String,
    pub password: String,
    pub topic: Option<String>,
    pub partition: Option<i32>,
    pub key: Option<String>,
    pub exchange: Option<String>,
    pub routing_key: String,
    pub metadata: EventMetadata,
    pub content_type: String,
    pub payload: Vec<u8>,
}

pub async fn publish(args: PublishArgs) -> Result<(), CliError> {
    let (transport, hostport) = crate::client::native::Transport::split_url(&args.addr)
        .map_err(|e| CliError::Usage(format!("--native-addr {}: {e}", args.addr)))?;
    let addr: SocketAddr = hostport.parse().map_err(|_| {
        CliError::Usage(format!(
            "--native-addr {}: expected HOST:PORT with a numeric host, e.g. 127.0.0.1:7447",
            args.addr
        ))
    })?;
    let trust =
        match (&args.fingerprint, &args.cert_file, &args.ca_file) {
            (Some(fp), None, None) => Trust::Fingerprint(fp.clone()),
            (None, Some(file), None) => Trust::CertFile(file.clone()),
            (None, None, Some(file)) => Trust::CaFile(file.clone()),
            _ => return Err(CliError::Usage(
                "give exactly one of --fingerprint, --cert-file, --ca-file (the broker logs its \
                 fingerprint; its self-signed certificate is <data_dir>/native/cert.pem)"
                    .into(),
            )),
        };
    let mut config = match (&args.topic, &args.exchange) {
        (Some(topic), None) => PublishConfig::topic(topic),
        (None, Some(exchange)) => PublishConfig::exchange(exchange, &args.routing_key),
        _ => {
            return Err(CliError::Usage(
                "give exactly one of --topic and --exchange (\"\" is the default exchange)".into(),
            ))
        }
    };
    if let crate::client::native::Destination::Topic { partition, key, .. } =
        &mut config.destination
    {
        *partition = args.partition;
        *key = args
            .key
            .as_ref()
            .map(|k| bytes::Bytes::copy_from_slice(k.as_bytes()));
    }
    let mut options = ConnectOptions::new(addr, trust, &args.user, &args.password)
        .with_transport(transport, addr);
    options.client_name = "ferry publish".into();
    options.backoff.attempts = 3;
    let conn = connect(options)
        .await
        .map_err(|e| CliError::Protocol(format!("native connection to {addr}: {e}")))?;
    let receipt = EventPublisher::new(conn)
        .publish_bytes(args.payload, &args.content_type, args.metadata, &config, "")
        .await
        .map_err(|e| CliError::Protocol(format!("publish: {e}")))?;
    println!(
        "{}",
        serde_json::json!({
            "id": receipt.id,
            "partition": receipt.partition,
            "offset": receipt.offset,
            "queues": receipt.queues,
            "duplicate": receipt.duplicate,
        })
    );
    Ok(())
}
