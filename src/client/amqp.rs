//! A small pipelined AMQP 0-9-1 client, just enough for `ferry bench amqp` (and, later, bridges).
//!
//! A general-purpose client (lapin) spends tens of microseconds of CPU per confirmed message
//! — more than a fast broker spends storing it — so a benchmark built on one measures the
//! client. This one does the minimum: the setup methods (handshake, channel.open,
//! confirm.select, queue.declare, basic.qos, basic.consume, queue.delete, close) run one at a
//! time over a [`Session`], and the hot path never builds a method value per message. A
//! publisher encodes its `basic.publish` method and content header once with `amq-protocol`'s
//! generator ([`PublishTemplate`]) and then only appends that template plus a body frame per
//! message into one buffer, written with a single `write_all` for a whole window of messages;
//! the read side pulls everything the socket has into one buffer and splits every complete
//! frame out of it in a loop ([`next_frame`]), parsing methods and content headers with
//! `amq-protocol`'s parser and slicing body frames without copying.
//!
//! `Session` owns the socket while methods are exchanged; the bench splits it
//! ([`Session::into_split`]) for the measured phase, runs its own reader and writer tasks on
//! the halves, and joins them again ([`Session::rejoin`]) to clean up and close.

use std::time::Duration;

use amq_protocol::frame::{gen_frame, AMQPContentHeader, AMQPFrame, WriteContext};
use amq_protocol::protocol::{basic, channel, connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use amq_protocol::uri::AMQPUri;
use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(crate) use super::transport::{ReadStream, WriteStream};
use super::ClientError;
use crate::protocol::amqp::codec::{self, Incoming, FRAME_OVERHEAD, PROTOCOL_HEADER};

const FRAME_BODY: u8 = 3;
#[cfg(test)]
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;
/// Type (1) + channel (2) + size (4).
const FRAME_HEADER_LEN: usize = 7;
/// The frame_max we ask for; the broker may lower it.
const OUR_FRAME_MAX: u32 = 128 * 1024;
/// AMQP 0-9-1's smallest legal frame_max.
const MIN_FRAME_MAX: u32 = 4096;

/// One frame as the bench needs it.
#[derive(Debug)]
pub(crate) enum Frame {
    Method(u16, Box<AMQPClass>),
    /// A content header's announced body size (the bench uses one channel per connection and
    /// needs no properties).
    Header(u64),
    Body(Bytes),
    Heartbeat,
}

/// Takes one whole frame off the front of `buf`; `Ok(None)` while more bytes are needed. The
/// broker's own frame decoder does the work ([`codec::decode_frame`]: pure, refuses frames
/// larger than `frame_max` before waiting for their payload, slices bodies without copying);
/// this only adds the answer of a broker that refuses our protocol version.
pub(crate) fn next_frame(buf: &mut BytesMut, frame_max: usize) -> Result<Option<Frame>, String> {
    if buf.starts_with(b"AMQP") && buf.len() >= FRAME_HEADER_LEN {
        // A broker that refuses our protocol version answers with its own header.
        return Err(format!(
            "the server does not speak AMQP 0-9-1 (it answered with protocol header {:?})",
            &buf[..buf.len().min(8)]
        ));
    }
    Ok(
        match codec::decode_frame(buf, frame_max).map_err(|e| e.to_string())? {
            None => None,
            Some(Incoming::Method(channel, method)) => Some(Frame::Method(channel, method)),
            Some(Incoming::Header(_, header)) => Some(Frame::Header(header.body_size)),
            Some(Incoming::Body(_, body)) => Some(Frame::Body(body)),
            Some(Incoming::Heartbeat(_)) => Some(Frame::Heartbeat),
        },
    )
}

/// Appends `frame` as `amq-protocol` generates it.
pub(crate) fn encode(frame: &AMQPFrame, out: &mut BytesMut) -> Result<(), ClientError> {
    let ctx = gen_frame(frame)(WriteContext::from(Vec::with_capacity(128)))
        .map_err(|e| ClientError::Failed(format!("cannot encode an AMQP frame: {e:?}")))?;
    out.extend_from_slice(&ctx.write);
    Ok(())
}

/// Appends a method frame.
pub(crate) fn encode_method(
    channel: u16,
    method: AMQPClass,
    out: &mut BytesMut,
) -> Result<(), ClientError> {
    encode(&AMQPFrame::Method(channel, method), out)
}

/// `basic.ack` for every delivery up to `tag`.
pub(crate) fn encode_ack(channel: u16, tag: u64, out: &mut BytesMut) -> Result<(), ClientError> {
    encode_method(
        channel,
        AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: tag,
            multiple: true,
        })),
        out,
    )
}

/// The bytes of `basic.publish` + content header for one (exchange, routing key, body size,
/// properties), encoded once; each message then costs a copy of these bytes and its body frames.
pub(crate) struct PublishTemplate {
    channel: u16,
    prefix: Vec<u8>,
    body_size: usize,
    chunk: usize,
}

impl PublishTemplate {
    pub(crate) fn new(
        channel: u16,
        routing_key: &str,
        properties: basic::AMQPProperties,
        body_size: usize,
        frame_max: usize,
    ) -> Result<PublishTemplate, ClientError> {
        let mut prefix = BytesMut::new();
        encode_method(
            channel,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: ShortString::from(String::new()),
                routing_key: short(routing_key, "routing key")?,
                mandatory: false,
                immediate: false,
            })),
            &mut prefix,
        )?;
        encode(
            &AMQPFrame::Header(
                channel,
                AMQPContentHeader {
                    class_id: 60,
                    body_size: body_size as u64,
                    properties,
                },
            ),
            &mut prefix,
        )?;
        Ok(PublishTemplate {
            channel,
            prefix: prefix.to_vec(),
            body_size,
            chunk: frame_max.saturating_sub(FRAME_OVERHEAD).max(1),
        })
    }

    /// Bytes one message takes on the wire.
    pub(crate) fn wire_len(&self) -> usize {
        let frames = self.body_size.div_ceil(self.chunk).max(1);
        self.prefix.len() + self.body_size + frames * FRAME_OVERHEAD
    }

    /// Appends one message whose body is `body` (of the template's size).
    pub(crate) fn append(&self, body: &[u8], out: &mut BytesMut) {
        debug_assert_eq!(body.len(), self.body_size);
        out.extend_from_slice(&self.prefix);
        for part in body.chunks(self.chunk) {
            out.put_u8(FRAME_BODY);
            out.put_u16(self.channel);
            out.put_u32(part.len() as u32);
            out.extend_from_slice(part);
            out.put_u8(FRAME_END);
        }
    }
}

/// `s` as a short string, or an error naming `what`.
pub(crate) fn short(s: &str, what: &str) -> Result<ShortString, ClientError> {
    ShortString::try_new(s)
        .map_err(|_| ClientError::Invalid(format!("the {what} `{s}` is longer than 255 bytes")))
}

/// `amqp://user@host:port/vhost` — the URL without its password, for output.
pub(crate) fn display_url(uri: &AMQPUri) -> String {
    let scheme = match uri.scheme {
        amq_protocol::uri::AMQPScheme::AMQPS => "amqps",
        amq_protocol::uri::AMQPScheme::AMQP => "amqp",
    };
    format!(
        "{scheme}://{}@{}:{}/{}",
        uri.authority.userinfo.username,
        uri.authority.host,
        uri.authority.port,
        uri.vhost.replace('%', "%25").replace('/', "%2f")
    )
}

fn string_value(v: Option<&AMQPValue>) -> Option<String> {
    match v? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// A channel or connection closed by the broker, as an error that says what happened.
fn closed_by_broker(what: &str, during: &str, code: u16, text: &str) -> ClientError {
    let hint = match code {
        403 => " — check the user name, password and vhost in --url",
        404 => " — the vhost or queue does not exist",
        406 => " — a queue of that name exists with other settings; pick another or delete it",
        530 => " — the vhost in --url does not exist or the user may not use it",
        _ => "",
    };
    ClientError::Failed(format!(
        "the broker closed the {what} during {during}: {code} {text}{hint}"
    ))
}

/// A connection while methods are exchanged one at a time.
pub(crate) struct Session {
    addr: String,
    read: ReadStream,
    write: WriteStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    frame_max: usize,
    timeout: Duration,
    /// `product version` from the broker's connection.start.
    pub(crate) server: String,
}

impl Session {
    /// Connects (with TLS for `amqps://`, trusting `tls`'s CAs), authenticates with PLAIN and
    /// opens the URL's vhost.
    pub(crate) async fn connect(
        uri: &AMQPUri,
        tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
        timeout: Duration,
    ) -> Result<Session, ClientError> {
        let addr = format!("{}:{}", uri.authority.host, uri.authority.port);
        let tls = match uri.scheme {
            amq_protocol::uri::AMQPScheme::AMQPS => Some(tls.ok_or_else(|| {
                ClientError::Invalid("amqps:// needs a TLS configuration".into())
            })?),
            amq_protocol::uri::AMQPScheme::AMQP => None,
        };
        let (read, write) =
            super::transport::connect(addr.as_str(), &uri.authority.host, tls, timeout)
                .await
                .map_err(|reason| ClientError::AmqpConnect {
                    addr: addr.clone(),
                    reason,
                })?;
        let mut s = Session {
            addr,
            read,
            write,
            rbuf: BytesMut::with_capacity(256 * 1024),
            wbuf: BytesMut::with_capacity(4096),
            // Until tune: what we will ask for, which every handshake frame fits.
            frame_max: OUR_FRAME_MAX as usize,
            timeout,
            server: String::new(),
        };
        s.handshake(uri).await?;
        Ok(s)
    }

    async fn handshake(&mut self, uri: &AMQPUri) -> Result<(), ClientError> {
        self.write
            .write_all(PROTOCOL_HEADER)
            .await
            .map_err(|e| self.closed("the handshake", e.to_string()))?;
        let start = match self.expect_method(0, "connection.start").await? {
            AMQPClass::Connection(connection::AMQPMethod::Start(s)) => s,
            other => return Err(self.unexpected("connection.start", &other)),
        };
        let props = start.server_properties.inner();
        self.server = format!(
            "{} {}",
            string_value(props.get("product")).unwrap_or_else(|| "unknown broker".into()),
            string_value(props.get("version")).unwrap_or_default()
        )
        .trim()
        .to_string();
        let mechanisms = String::from_utf8_lossy(start.mechanisms.as_bytes()).into_owned();
        if !mechanisms.split_whitespace().any(|m| m == "PLAIN") {
            return Err(ClientError::Failed(format!(
                "{} does not offer PLAIN authentication (it offers {mechanisms})",
                self.addr
            )));
        }
        let user = &uri.authority.userinfo;
        let mut response = Vec::new();
        response.push(0);
        response.extend_from_slice(user.username.as_bytes());
        response.push(0);
        response.extend_from_slice(user.password.as_bytes());
        let mut capabilities = FieldTable::default();
        for cap in [
            "authentication_failure_close",
            "publisher_confirms",
            "basic.nack",
            "consumer_cancel_notify",
        ] {
            capabilities.insert(cap.into(), AMQPValue::Boolean(true));
        }
        let mut client = FieldTable::default();
        client.insert(
            "product".into(),
            AMQPValue::LongString(LongString::from("ferry-bench")),
        );
        client.insert(
            "version".into(),
            AMQPValue::LongString(LongString::from(env!("CARGO_PKG_VERSION"))),
        );
        client.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: client,
                mechanism: "PLAIN".into(),
                response: LongString::from(response),
                locale: "en_US".into(),
            })),
        )
        .await?;
        let tune = match self.expect_method(0, "authentication").await? {
            AMQPClass::Connection(connection::AMQPMethod::Tune(t)) => t,
            other => return Err(self.unexpected("connection.tune", &other)),
        };
        let frame_max = match tune.frame_max {
            0 => OUR_FRAME_MAX,
            n => n.min(OUR_FRAME_MAX),
        };
        if frame_max < MIN_FRAME_MAX {
            return Err(ClientError::Failed(format!(
                "{} offers frame_max {frame_max}, below AMQP's minimum {MIN_FRAME_MAX}",
                self.addr
            )));
        }
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: tune.channel_max,
                frame_max,
                // No heartbeats: both directions carry traffic for the whole run, and the
                // bench's own timeouts catch a dead broker.
                heartbeat: 0,
            })),
        )
        .await?;
        self.frame_max = frame_max as usize;
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: short(&uri.vhost, "vhost")?,
            })),
        )
        .await?;
        match self.expect_method(0, "connection.open").await? {
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) => Ok(()),
            other => Err(self.unexpected("connection.open-ok", &other)),
        }
    }

    /// The negotiated frame_max.
    pub(crate) fn frame_max(&self) -> usize {
        self.frame_max
    }

    /// `host:port`.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    fn closed(&self, during: &str, reason: String) -> ClientError {
        ClientError::Closed {
            addr: self.addr.clone(),
            api: during.to_string(),
            reason,
        }
    }

    fn unexpected(&self, wanted: &str, got: &AMQPClass) -> ClientError {
        ClientError::Protocol {
            addr: self.addr.clone(),
            api: wanted.to_string(),
            detail: format!("expected {wanted}, got {got:?}"),
        }
    }

    /// Sends one method frame.
    pub(crate) async fn send(
        &mut self,
        channel: u16,
        method: AMQPClass,
    ) -> Result<(), ClientError> {
        self.wbuf.clear();
        encode_method(channel, method, &mut self.wbuf)?;
        let during = "a method";
        let result = self.write.write_all(&self.wbuf).await;
        result.map_err(|e| self.closed(during, e.to_string()))
    }

    /// Sends `method` on `channel` and waits for its answer there.
    pub(crate) async fn call(
        &mut self,
        channel: u16,
        method: AMQPClass,
        during: &str,
    ) -> Result<AMQPClass, ClientError> {
        self.send(channel, method).await?;
        self.expect_method(channel, during).await
    }

    /// Reads until a method arrives on `channel`, skipping deliveries, confirms and content
    /// still in flight from an earlier phase. A channel.close or connection.close from the
    /// broker becomes an error (after acknowledging it, as the protocol asks).
    async fn expect_method(
        &mut self,
        channel: u16,
        during: &str,
    ) -> Result<AMQPClass, ClientError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            while let Some(frame) =
                next_frame(&mut self.rbuf, self.frame_max).map_err(|detail| {
                    ClientError::Protocol {
                        addr: self.addr.clone(),
                        api: during.to_string(),
                        detail,
                    }
                })?
            {
                let Frame::Method(ch, method) = frame else {
                    continue;
                };
                match *method {
                    AMQPClass::Connection(connection::AMQPMethod::Close(c)) => {
                        let _ = self
                            .send(
                                0,
                                AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                                    connection::CloseOk {},
                                )),
                            )
                            .await;
                        return Err(closed_by_broker(
                            "connection",
                            during,
                            c.reply_code,
                            c.reply_text.as_str(),
                        ));
                    }
                    AMQPClass::Channel(channel::AMQPMethod::Close(c)) if ch == channel => {
                        let _ = self
                            .send(
                                ch,
                                AMQPClass::Channel(channel::AMQPMethod::CloseOk(
                                    channel::CloseOk {},
                                )),
                            )
                            .await;
                        return Err(closed_by_broker(
                            "channel",
                            during,
                            c.reply_code,
                            c.reply_text.as_str(),
                        ));
                    }
                    // Late confirms and deliveries of a finished phase.
                    AMQPClass::Basic(
                        basic::AMQPMethod::Ack(_)
                        | basic::AMQPMethod::Nack(_)
                        | basic::AMQPMethod::Deliver(_),
                    ) => continue,
                    m if ch == channel => return Ok(m),
                    _ => continue,
                }
            }
            let read = tokio::time::timeout_at(deadline, self.read.read_buf(&mut self.rbuf)).await;
            match read {
                Err(_) => {
                    return Err(ClientError::Failed(format!(
                        "no answer from {} during {during} within {} s — the broker is stuck or \
                         overloaded; check its log or retry with a larger --timeout",
                        self.addr,
                        self.timeout.as_secs()
                    )))
                }
                Ok(Ok(0)) => {
                    return Err(self.closed(
                        during,
                        "end of stream (wrong credentials or vhost? check the broker's log)".into(),
                    ))
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(self.closed(during, e.to_string())),
            }
        }
    }

    /// Opens `channel`.
    pub(crate) async fn open_channel(&mut self, channel: u16) -> Result<(), ClientError> {
        match self
            .call(
                channel,
                AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
                "channel.open",
            )
            .await?
        {
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)) => Ok(()),
            other => Err(self.unexpected("channel.open-ok", &other)),
        }
    }

    /// Splits into the halves and the bytes already read but not parsed (the reader starts
    /// from those), for the measured phase.
    pub(crate) fn into_split(self) -> (Halves, ReadStream, WriteStream, BytesMut) {
        (
            Halves {
                addr: self.addr,
                frame_max: self.frame_max,
                timeout: self.timeout,
                server: self.server,
            },
            self.read,
            self.write,
            self.rbuf,
        )
    }

    /// Joins the halves again; `rbuf` holds whatever the reader had not parsed yet.
    pub(crate) fn rejoin(
        halves: Halves,
        read: ReadStream,
        write: WriteStream,
        rbuf: BytesMut,
    ) -> Session {
        Session {
            addr: halves.addr,
            read,
            write,
            rbuf,
            wbuf: BytesMut::with_capacity(4096),
            frame_max: halves.frame_max,
            timeout: halves.timeout,
            server: halves.server,
        }
    }

    /// connection.close, waiting (briefly) for close-ok so the broker finishes cleanly.
    pub(crate) async fn close(mut self) {
        let close = AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "bench done".into(),
            class_id: 0,
            method_id: 0,
        }));
        self.timeout = self.timeout.min(Duration::from_secs(5));
        let _ = self.call(0, close, "connection.close").await;
    }
}

/// What a split [`Session`] keeps while its halves are elsewhere.
pub(crate) struct Halves {
    addr: String,
    frame_max: usize,
    timeout: Duration,
    server: String,
}

impl Halves {
    pub(crate) fn frame_max(&self) -> usize {
        self.frame_max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_messages_parse_back() {
        let props = basic::AMQPProperties::default().with_delivery_mode(2);
        let t = PublishTemplate::new(1, "q", props, 10_000, 4096).unwrap();
        let mut out = BytesMut::new();
        t.append(&[7u8; 10_000], &mut out);
        t.append(&[8u8; 10_000], &mut out);
        assert_eq!(out.len(), 2 * t.wire_len());
        let mut methods = 0;
        let mut body = 0;
        while let Some(f) = next_frame(&mut out, 4096).unwrap() {
            match f {
                Frame::Method(1, m) => {
                    assert!(matches!(
                        *m,
                        AMQPClass::Basic(basic::AMQPMethod::Publish(ref p))
                            if p.routing_key.as_str() == "q"
                    ));
                    methods += 1;
                }
                Frame::Header(size) => assert_eq!(size, 10_000),
                Frame::Body(b) => body += b.len(),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((methods, body), (2, 20_000));
        assert!(out.is_empty());
    }

    #[test]
    fn partial_oversized_and_garbage_frames() {
        let mut out = BytesMut::new();
        encode_ack(1, 42, &mut out).unwrap();
        let whole = out.clone();
        let mut part = BytesMut::from(&whole[..whole.len() - 1]);
        assert!(next_frame(&mut part, 4096).unwrap().is_none());
        let mut big = BytesMut::from(&[FRAME_BODY, 0, 1, 0, 1, 0, 0][..]);
        assert!(next_frame(&mut big, 4096).is_err());
        let mut header = BytesMut::from(&b"AMQP\x00\x00\x09\x01"[..]);
        assert!(next_frame(&mut header, 4096).is_err());
        let mut bad_end = BytesMut::from(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, 0][..]);
        assert!(next_frame(&mut bad_end, 4096).is_err());
        match next_frame(&mut out, 4096).unwrap() {
            Some(Frame::Method(1, m)) => assert!(matches!(
                *m,
                AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: 42,
                    multiple: true
                }))
            )),
            other => panic!("{other:?}"),
        }
    }
}
