//! A minimal raw Kafka client for tests that need exact control over requests (sequence
//! numbers, members that stop heartbeating) that a real client library will not give up.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Any byte stream a raw client can speak over (TCP, or TLS in tests/tls.rs).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How long a test waits for any one answer.
pub const ANSWER_WAIT: Duration = Duration::from_secs(10);

pub struct RawKafka {
    stream: Box<dyn Io>,
    correlation_id: i32,
}

impl RawKafka {
    pub async fn connect(addr: std::net::SocketAddr) -> RawKafka {
        Self::over(TcpStream::connect(addr).await.unwrap())
    }

    /// A client over an already connected stream.
    pub fn over(stream: impl Io + 'static) -> RawKafka {
        RawKafka {
            stream: Box::new(stream),
            correlation_id: 0,
        }
    }

    /// Sends one request and reads its answer, checking the correlation id.
    pub async fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        body: &Req,
    ) -> Resp {
        self.try_call(api, version, body).await.unwrap_or_else(|| {
            panic!("the broker closed the connection instead of answering {api:?}")
        })
    }

    /// Sends one request and reads its answer, or `None` if the broker closes the connection
    /// instead of answering.
    pub async fn try_call<Req: Encodable, Resp: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        body: &Req,
    ) -> Option<Resp> {
        // A broker that already closed may reset the write; that is a close too.
        self.send(api, version, body).await.ok()?;
        self.try_recv(api, version).await
    }

    /// Sends one request without reading its answer (see [`try_recv`](Self::try_recv)).
    pub async fn send<Req: Encodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        body: &Req,
    ) -> std::io::Result<()> {
        self.correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("raw-test-client")));
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        header
            .encode(&mut buf, api.request_header_version(version))
            .unwrap();
        body.encode(&mut buf, version).unwrap();
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&buf).await
    }

    /// Reads the answer to the last request [`send`](Self::send) sent; `None` if the broker
    /// closed the connection instead.
    pub async fn try_recv<Resp: Decodable>(&mut self, api: ApiKey, version: i16) -> Option<Resp> {
        let mut frame = Bytes::from(self.recv_frame().await?);
        let header =
            ResponseHeader::decode(&mut frame, api.response_header_version(version)).unwrap();
        assert_eq!(header.correlation_id, self.correlation_id);
        Some(Resp::decode(&mut frame, version).unwrap())
    }

    /// Sends `payload` framed by its size only (SASL tokens after a v0 SaslHandshake).
    pub async fn send_frame(&mut self, payload: &[u8]) {
        let mut buf = BytesMut::new();
        buf.put_i32(payload.len() as i32);
        buf.put_slice(payload);
        self.stream.write_all(&buf).await.unwrap();
    }

    /// Reads one size-framed answer; `None` once the broker closed the connection.
    pub async fn recv_frame(&mut self) -> Option<Vec<u8>> {
        tokio::time::timeout(ANSWER_WAIT, async {
            let size = self.stream.read_i32().await.ok()?;
            let mut frame = vec![0u8; size as usize];
            self.stream.read_exact(&mut frame).await.ok()?;
            Some(frame)
        })
        .await
        .unwrap_or_else(|_| panic!("neither an answer nor a close within {ANSWER_WAIT:?}"))
    }
}
