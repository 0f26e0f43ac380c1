//! A small pipelined Kafka client, just enough for `ferry bench kafka` and `ferry
//! produce|consume`.
//!
//! One [`Connection`] is one TCP connection with two tasks: a writer that frames queued requests
//! and flushes when the queue runs dry (so pipelined requests share writes), and a reader that
//! matches each response to the oldest request in flight by correlation id — Kafka answers in
//! request order on a connection. Callers [`send`](Connection::send) as many requests as they
//! like and [`wait`](Pending::wait) for each answer later; that is what keeps several produce
//! requests in flight. Bodies are encoded and decoded with the `kafka-protocol` crate.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, ListOffsetsRequest, MetadataRequest,
    ProduceRequest, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::ResponseError;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::sasl::{self, SaslLogin};
use super::transport::{self, ReadStream, WriteStream};
use super::ClientError;

/// Client id sent in every request header.
const CLIENT_ID: &str = "ferry-bench";
/// Largest response frame we accept (a fetch answer is bounded by its max_bytes).
const MAX_FRAME: usize = 1 << 30;
/// Requests queued for the writer before `send` waits.
const QUEUE: usize = 256;

/// A response frame (after the size prefix) and when the reader finished reading it.
type Reply = Result<(Bytes, Instant), String>;

struct Outgoing {
    frame: Bytes,
    correlation_id: i32,
    reply: oneshot::Sender<Reply>,
}

struct InFlight {
    correlation_id: i32,
    reply: oneshot::Sender<Reply>,
}

/// How a connection protects itself and who it logs in as; the default is plaintext and
/// anonymous (`PLAINTEXT`). TLS and SASL together are Kafka's `SASL_SSL`.
#[derive(Clone, Debug, Default)]
pub struct KafkaSecurity {
    /// TLS with this configuration (`SSL`), checking the certificate against the host name.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// SaslHandshake + SaslAuthenticate right after ApiVersions (`SASL_*`).
    pub sasl: Option<SaslLogin>,
}

/// One pipelined connection to one broker. Cheap to clone; the connection closes when the last
/// clone is dropped.
#[derive(Clone)]
pub(crate) struct Connection {
    inner: Arc<Inner>,
}

struct Inner {
    addr: String,
    tx: mpsc::Sender<Outgoing>,
    next_id: AtomicI32,
    /// `(api key, min, max)` as the broker advertised them.
    apis: OnceLock<Vec<(i16, i16, i16)>>,
    timeout: Duration,
    /// Why the connection closed, once it has.
    closed: Arc<Mutex<Option<String>>>,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Resolves `host:port` to its first socket address.
pub(crate) async fn resolve(addr: &str) -> Result<std::net::SocketAddr, ClientError> {
    let mut found = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| ClientError::Resolve {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
    found.next().ok_or_else(|| ClientError::Resolve {
        addr: addr.to_string(),
        reason: "no addresses".into(),
    })
}

impl Connection {
    /// Connects to `addr` (`host:port`) in plaintext, without SASL, and asks for the broker's
    /// API versions.
    pub(crate) async fn connect(addr: &str, timeout: Duration) -> Result<Connection, ClientError> {
        Self::connect_with(addr, timeout, &KafkaSecurity::default()).await
    }

    /// Like [`connect`](Self::connect), with TLS and/or a SASL login as `security` says.
    pub(crate) async fn connect_with(
        addr: &str,
        timeout: Duration,
        security: &KafkaSecurity,
    ) -> Result<Connection, ClientError> {
        let sock = resolve(addr).await?;
        let (read, write) = transport::connect(
            sock,
            transport::host_of(addr),
            security.tls.as_ref(),
            timeout,
        )
        .await
        .map_err(|reason| ClientError::Connect {
            addr: addr.to_string(),
            reason,
        })?;
        let (tx, rx) = mpsc::channel::<Outgoing>(QUEUE);
        let (flight_tx, flight_rx) = mpsc::unbounded_channel::<InFlight>();
        let closed = Arc::new(Mutex::new(None));
        let writer = tokio::spawn(write_loop(rx, write, flight_tx, closed.clone()));
        let reader = tokio::spawn(read_loop(read, flight_rx, closed.clone()));
        let conn = Connection {
            inner: Arc::new(Inner {
                addr: addr.to_string(),
                tx,
                next_id: AtomicI32::new(1),
                apis: OnceLock::new(),
                timeout,
                closed,
                tasks: [writer, reader],
            }),
        };
        conn.negotiate().await?;
        if let Some(login) = &security.sasl {
            sasl::authenticate(&conn, login).await?;
        }
        Ok(conn)
    }

    /// `host:port` this connection went to.
    pub(crate) fn addr(&self) -> &str {
        &self.inner.addr
    }

    async fn negotiate(&self) -> Result<(), ClientError> {
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str(CLIENT_ID))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        // v3 first (flexible); a broker that only knows older versions answers in v0 format
        // with UNSUPPORTED_VERSION (KIP-511), which v3 decoding may reject: then ask with v0.
        let mut response = match self.send(3, &request).await?.wait().await {
            Ok((r, _)) if r.error_code == 0 => Some(r),
            Ok(_) | Err(ClientError::Protocol { .. }) => None,
            Err(e) => return Err(e),
        };
        if response.is_none() {
            let v0 = ApiVersionsRequest::default();
            let (r, _) = self.send(0, &v0).await?.wait().await?;
            response = Some(r);
        }
        let response: ApiVersionsResponse = response.unwrap_or_default();
        if response.error_code != 0 {
            return Err(kafka_error(
                "ApiVersions",
                String::new(),
                response.error_code,
                None,
            ));
        }
        let apis = response
            .api_keys
            .iter()
            .map(|k| (k.api_key, k.min_version, k.max_version))
            .collect();
        let _ = self.inner.apis.set(apis);
        Ok(())
    }

    /// The highest version of `api` in `ours` (inclusive) that the broker serves.
    pub(crate) fn version(&self, api: ApiKey, ours: (i16, i16)) -> Result<i16, ClientError> {
        let theirs = self
            .inner
            .apis
            .get()
            .and_then(|apis| apis.iter().find(|(k, _, _)| *k == api as i16))
            .map(|(_, lo, hi)| (*lo, *hi));
        let unsupported = |offered: String| ClientError::Unsupported {
            addr: self.inner.addr.clone(),
            api: format!("{api:?}"),
            want_min: ours.0,
            want_max: ours.1,
            offered,
        };
        let Some((lo, hi)) = theirs else {
            return Err(unsupported("none".into()));
        };
        let v = ours.1.min(hi);
        if v < ours.0.max(lo) {
            return Err(unsupported(format!("v{lo}–v{hi}")));
        }
        Ok(v)
    }

    /// Queues `body` as `version` of its API and returns a handle to await the answer with.
    /// Waits only if the writer's queue is full.
    pub(crate) async fn send<R: Request>(
        &self,
        version: i16,
        body: &R,
    ) -> Result<Pending<R::Response>, ClientError> {
        let api = api_name(R::KEY);
        let encode_err =
            |e: anyhow::Error| ClientError::Failed(format!("cannot encode {api} v{version}: {e}"));
        let correlation_id = self.inner.next_id.fetch_add(1, Ordering::Relaxed) & i32::MAX;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
        let hv = R::header_version(version);
        let size = header.compute_size(hv).map_err(encode_err)?
            + body.compute_size(version).map_err(encode_err)?;
        let mut buf = BytesMut::with_capacity(4 + size);
        buf.put_i32(i32::try_from(size).map_err(|_| {
            ClientError::Invalid(format!("a {api} request of {size} bytes is too large"))
        })?);
        header.encode(&mut buf, hv).map_err(encode_err)?;
        body.encode(&mut buf, version).map_err(encode_err)?;
        let (reply, rx) = oneshot::channel();
        let sent_at = Instant::now();
        if self
            .inner
            .tx
            .send(Outgoing {
                frame: buf.freeze(),
                correlation_id,
                reply,
            })
            .await
            .is_err()
        {
            return Err(self.closed_error(&api));
        }
        Ok(Pending {
            rx,
            conn: self.clone(),
            api,
            version,
            sent_at,
            _response: PhantomData,
        })
    }

    /// Sends `body` and waits for its answer.
    pub(crate) async fn call<R: Request>(
        &self,
        version: i16,
        body: &R,
    ) -> Result<R::Response, ClientError> {
        Ok(self.send(version, body).await?.wait().await?.0)
    }

    fn closed_error(&self, api: &str) -> ClientError {
        ClientError::Closed {
            addr: self.inner.addr.clone(),
            api: api.to_string(),
            reason: self
                .inner
                .closed
                .lock()
                .clone()
                .unwrap_or_else(|| "connection closed".into()),
        }
    }
}

/// When a request was queued for sending and when its answer had been read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) sent: Instant,
    pub(crate) received: Instant,
}

impl Timing {
    /// Request sent → answer read.
    pub(crate) fn latency(&self) -> Duration {
        self.received.saturating_duration_since(self.sent)
    }
}

/// A request on the wire whose answer has not been awaited yet.
pub(crate) struct Pending<T> {
    rx: oneshot::Receiver<Reply>,
    conn: Connection,
    api: String,
    version: i16,
    sent_at: Instant,
    _response: PhantomData<fn() -> T>,
}

impl<T: Decodable + HeaderVersion> Pending<T> {
    /// Waits for and decodes the answer; also returns when it was sent and when the connection
    /// read it (not when this was polled).
    pub(crate) async fn wait(self) -> Result<(T, Timing), ClientError> {
        let inner = &self.conn.inner;
        let deadline = tokio::time::Instant::from_std(self.sent_at + inner.timeout);
        let reply = match tokio::time::timeout_at(deadline, self.rx).await {
            Err(_) => {
                return Err(ClientError::Timeout {
                    addr: inner.addr.clone(),
                    api: self.api,
                    secs: inner.timeout.as_secs(),
                })
            }
            Ok(Err(_)) => return Err(self.conn.closed_error(&self.api)),
            Ok(Ok(reply)) => reply,
        };
        let protocol = |detail: String| ClientError::Protocol {
            addr: inner.addr.clone(),
            api: self.api.clone(),
            detail,
        };
        let (mut frame, received) = reply.map_err(&protocol)?;
        ResponseHeader::decode(&mut frame, T::header_version(self.version))
            .map_err(|e| protocol(format!("response header: {e}")))?;
        let body = T::decode(&mut frame, self.version)
            .map_err(|e| protocol(format!("v{} body: {e}", self.version)))?;
        Ok((
            body,
            Timing {
                sent: self.sent_at,
                received,
            },
        ))
    }
}

fn api_name(key: i16) -> String {
    match ApiKey::try_from(key) {
        Ok(k) => format!("{k:?}"),
        Err(()) => format!("api {key}"),
    }
}

/// A Kafka error code as a [`ClientError`], with a hint for the codes a benchmark meets.
pub(crate) fn kafka_error(
    api: &str,
    what: String,
    code: i16,
    message: Option<&str>,
) -> ClientError {
    let known = ResponseError::try_from_code(code);
    let hint = match known {
        Some(ResponseError::InvalidReplicationFactor) | Some(ResponseError::PolicyViolation) => {
            " — pass --replication-factor N that the cluster allows"
        }
        Some(ResponseError::TopicAuthorizationFailed)
        | Some(ResponseError::ClusterAuthorizationFailed) => {
            " — the benchmark needs rights to create, write, read and delete its topics"
        }
        Some(ResponseError::MessageTooLarge) | Some(ResponseError::RecordListTooLarge) => {
            " — lower --batch-bytes (the broker's message.max.bytes is smaller)"
        }
        Some(ResponseError::InvalidRequiredAcks) | Some(ResponseError::NotEnoughReplicas) => {
            " — acks=all needs enough in-sync replicas; check min.insync.replicas"
        }
        Some(ResponseError::KafkaStorageError) => {
            " — the broker cannot write; check its disk and log"
        }
        _ => "",
    };
    ClientError::Kafka {
        api: api.to_string(),
        what,
        code,
        error: known
            .map(|e| format!("{e:?}"))
            .unwrap_or_else(|| "unknown error".into()),
        message: message
            .filter(|m| !m.is_empty())
            .map(|m| format!(": {m}"))
            .unwrap_or_default(),
        hint: hint.to_string(),
    }
}

/// Whether a retry may succeed (leader moving, topic still being created, …).
pub(crate) fn retriable(code: i16) -> bool {
    ResponseError::try_from_code(code).is_some_and(|e| e.is_retriable())
}

async fn write_loop(
    mut rx: mpsc::Receiver<Outgoing>,
    write: WriteStream,
    in_flight: mpsc::UnboundedSender<InFlight>,
    closed: Arc<Mutex<Option<String>>>,
) {
    let mut out = BufWriter::with_capacity(256 * 1024, write);
    while let Some(next) = rx.recv().await {
        // Registered before the bytes leave, so the reader always finds it.
        if in_flight
            .send(InFlight {
                correlation_id: next.correlation_id,
                reply: next.reply,
            })
            .is_err()
        {
            break;
        }
        if let Err(e) = out.write_all(&next.frame).await {
            closed
                .lock()
                .get_or_insert_with(|| format!("write failed: {e}"));
            break;
        }
        if rx.is_empty() {
            if let Err(e) = out.flush().await {
                closed
                    .lock()
                    .get_or_insert_with(|| format!("write failed: {e}"));
                break;
            }
        }
    }
    let _ = out.flush().await;
    let _ = out.shutdown().await;
}

async fn read_loop(
    read: ReadStream,
    mut in_flight: mpsc::UnboundedReceiver<InFlight>,
    closed: Arc<Mutex<Option<String>>>,
) {
    let mut input = BufReader::with_capacity(256 * 1024, read);
    let reason = loop {
        let size = match input.read_i32().await {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break "the broker closed the connection".to_string()
            }
            Err(e) => break format!("read failed: {e}"),
        };
        if size < 4 || size as usize > MAX_FRAME {
            break format!("response frame of {size} bytes");
        }
        let size = size as usize;
        let mut frame = BytesMut::with_capacity(size);
        let mut eof = false;
        while frame.len() < size {
            let want = (size - frame.len()) as u64;
            match (&mut input).take(want).read_buf(&mut frame).await {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    eof = true;
                    closed
                        .lock()
                        .get_or_insert_with(|| format!("read failed: {e}"));
                    break;
                }
            }
        }
        if eof {
            break "the broker closed the connection mid-response".to_string();
        }
        let received = Instant::now();
        let frame = frame.freeze();
        let correlation_id = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        let Some(waiting) = in_flight.recv().await else {
            break "a response arrived with no request in flight".to_string();
        };
        if waiting.correlation_id != correlation_id {
            let why = format!(
                "response with correlation id {correlation_id} where {} was next",
                waiting.correlation_id
            );
            let _ = waiting.reply.send(Err(why.clone()));
            break why;
        }
        // The caller may have given up on it; that is fine.
        let _ = waiting.reply.send(Ok((frame, received)));
    };
    closed.lock().get_or_insert(reason);
}

/// ListOffsets for one partition: `-1` latest (the high watermark), `-2` earliest, else the
/// first offset at or after that timestamp. Used by `ferry bench` and `ferry consume`.
pub(crate) async fn list_offset(
    conn: &Connection,
    topic: &str,
    partition: i32,
    timestamp: i64,
) -> Result<i64, ClientError> {
    let v = conn.version(ApiKey::ListOffsets, (1, 7))?;
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(partition)
                .with_timestamp(timestamp)])]);
    let response = conn.call(v, &request).await?;
    let found = response
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .find(|p| p.partition_index == partition)
        .ok_or_else(|| ClientError::Protocol {
            addr: conn.addr().to_string(),
            api: "ListOffsets".into(),
            detail: format!("no answer for partition {partition}"),
        })?;
    if found.error_code != 0 {
        return Err(kafka_error(
            "ListOffsets",
            format!(" for topic {topic} partition {partition}"),
            found.error_code,
            None,
        ));
    }
    Ok(found.offset)
}

// --- requests both `ferry bench` and `ferry produce|consume` send -----------------------------

/// A topic name as the protocol types carry it.
pub(crate) fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

/// Produce one batch to one partition with acks=all (-1), waiting at most `timeout_ms` on the
/// broker for the replicas.
pub(crate) fn produce_request(
    topic: &TopicName,
    partition: i32,
    batch: Bytes,
    timeout_ms: i32,
) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(timeout_ms)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic.clone())
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(batch))])])
}

/// Metadata for one topic at `version`, without creating it (from v4, where the flag exists):
/// a typo must not leave a topic behind.
pub(crate) fn topic_metadata_request(topic: &str, version: i16) -> MetadataRequest {
    let request = MetadataRequest::default().with_topics(Some(vec![
        MetadataRequestTopic::default().with_name(Some(topic_name(topic))),
    ]));
    if version >= 4 {
        request.with_allow_auto_topic_creation(false)
    } else {
        request
    }
}
