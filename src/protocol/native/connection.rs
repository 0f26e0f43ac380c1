//! One native connection (QUIC, or TLS over TCP with [`mux`]): accepts its bidirectional
//! streams, each running as its own task, and holds what they share (the authenticated user, the connection id that owns exclusive
//! queues). The first request must authenticate; until one has, every other is refused.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::convert::NativeError;
use super::{handlers, NativeSettings};
use crate::broker::connections::{NewConnection, Protocol};
use crate::broker::BrokerCore;
use crate::proto::framed::{self, FrameReader, ReadError};
use crate::proto::mux;
use crate::proto::stream::{RecvStream, SendStream};
use crate::proto::v1::{self, request::Op, ErrorCode};

/// Native connection ids start high so they never meet the AMQP adapter's (which count from
/// 1) in the router's exclusive-queue bookkeeping.
static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1 << 62);

/// How often the connection's QUIC byte counts are copied into the management API's list.
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// The QUIC application close code of a connection an operator closed (`DELETE
/// /api/connections/{name}`); the reason travels as the close frame's text.
pub(super) const CLOSED_BY_OPERATOR: u32 = 320;

/// How long open streams get to finish once the connection is closing.
const STREAM_GRACE: Duration = Duration::from_secs(2);

/// What every stream of a connection shares.
pub(crate) struct Ctx {
    pub core: BrokerCore,
    pub settings: Arc<NativeSettings>,
    /// The router's connection id (owner of exclusive queues).
    pub id: u64,
    pub peer: SocketAddr,
    /// Set by the first successful `Authenticate`.
    pub user: OnceLock<String>,
    /// This connection in the management API's list (`/api/connections`).
    pub listed: Arc<crate::broker::connections::Connection>,
    /// Bytes of request frames being read or handled at once on this connection: a permit per
    /// byte, taken once a frame's length is known and before its body is read, and held until
    /// it is answered. Without it, thousands of streams each sending a frame just under the
    /// limit would make the broker buffer all of them.
    pub frame_budget: Arc<Semaphore>,
    /// The user's permission decisions (see `handlers::authorize`).
    pub permissions: handlers::PermissionCache,
    /// The client certificate's subject, when the client sent one and it verified against
    /// `tls.ca_file` (the only way the handshake lets one through).
    pub client_cert: Option<crate::tls::Principal>,
}

/// Request bytes a connection may have in memory at once, in units of the frame limit.
const FRAME_BUDGET_FRAMES: usize = 4;

/// The connection under the streams: QUIC, or TLS over TCP multiplexed by [`mux`].
pub(super) enum Transport {
    Quic(quinn::Connection),
    Tcp {
        session: mux::Session,
        incoming: mux::Incoming,
    },
}

impl Transport {
    /// The next stream the client opened; the error says why there will be no more.
    async fn accept(&mut self) -> Result<(SendStream, RecvStream), String> {
        match self {
            Transport::Quic(c) => c
                .accept_bi()
                .await
                .map(|(s, r)| (s.into(), r.into()))
                .map_err(|e| e.to_string()),
            Transport::Tcp { session, incoming } => match incoming.accept().await {
                Some((s, r)) => Ok((s.into(), r.into())),
                None => Err(session
                    .close_reason()
                    .map_or_else(|| "closed".to_string(), |c| c.to_string())),
            },
        }
    }

    fn close(&self, code: u32, reason: &[u8]) {
        match self {
            Transport::Quic(c) => c.close(code.into(), reason),
            Transport::Tcp { session, .. } => {
                session.close(code.into(), &String::from_utf8_lossy(reason))
            }
        }
    }

    /// Bytes received and sent so far, framing included.
    fn byte_counts(&self) -> (u64, u64) {
        match self {
            Transport::Quic(c) => {
                let udp = c.stats();
                (udp.udp_rx.bytes, udp.udp_tx.bytes)
            }
            Transport::Tcp { session, .. } => session.byte_counts(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Transport::Quic(_) => "QUIC",
            Transport::Tcp { .. } => "TCP",
        }
    }
}

/// A QUIC connection: its handshake, then [`serve`].
pub(super) async fn run(
    incoming: quinn::Incoming,
    listen_addr: Option<SocketAddr>,
    acceptor: Option<Arc<crate::tls::TlsAcceptor>>,
    core: BrokerCore,
    settings: Arc<NativeSettings>,
    shutdown: watch::Receiver<bool>,
) {
    let peer = incoming.remote_address();
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "native handshake failed");
            return;
        }
    };
    // The address the client's packets arrived at when the platform says, else the
    // listener's (which may be 0.0.0.0).
    let local = match (conn.local_ip(), listen_addr) {
        (Some(ip), Some(listen)) => Some(SocketAddr::new(ip, listen.port())),
        (None, listen) => listen,
        (Some(_), None) => None,
    };
    let client_cert = client_certificate(&conn, acceptor.as_deref());
    serve(
        Transport::Quic(conn),
        Peer {
            addr: peer,
            local,
            client_cert,
        },
        core,
        settings,
        shutdown,
    )
    .await
}

/// Who is on the other end of a connection, as its handshake established.
pub(super) struct Peer {
    pub addr: SocketAddr,
    pub local: Option<SocketAddr>,
    pub client_cert: Option<crate::tls::Principal>,
}

/// Serves the streams of an established connection, on either transport, until it closes.
pub(super) async fn serve(
    mut transport: Transport,
    peer_info: Peer,
    core: BrokerCore,
    settings: Arc<NativeSettings>,
    mut shutdown: watch::Receiver<bool>,
) {
    let peer = peer_info.addr;
    let frame_budget = Arc::new(Semaphore::new(budget_bytes(&settings)));
    let registration = core.connections().register(NewConnection {
        protocol: Protocol::Native,
        peer,
        local: peer_info.local,
        tls: true,
    });
    let mut close_requests = registration.close_requests();
    let ctx = Arc::new(Ctx {
        listed: registration.handle(),
        core,
        settings,
        id: NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed),
        peer,
        user: OnceLock::new(),
        frame_budget,
        permissions: handlers::PermissionCache::default(),
        client_cert: peer_info.client_cert,
    });
    metrics::gauge!("ferry_connections", "protocol" => "native").increment(1.0);
    tracing::debug!(%peer, connection = ctx.id, transport = transport.name(), "native connection open");
    let mut streams = JoinSet::new();
    // Byte counts come from the transport's own statistics, folded in once a second rather
    // than per frame: they include framing (and QUIC's retransmissions), as a socket's would.
    let mut stats_tick = tokio::time::interval(STATS_INTERVAL);
    let (mut rx_seen, mut tx_seen) = (0_u64, 0_u64);
    loop {
        tokio::select! {
            _ = stats_tick.tick() => {
                let (rx, tx) = transport.byte_counts();
                ctx.listed.add_received(usize::try_from(rx.saturating_sub(rx_seen)).unwrap_or(usize::MAX));
                ctx.listed.add_sent(usize::try_from(tx.saturating_sub(tx_seen)).unwrap_or(usize::MAX));
                (rx_seen, tx_seen) = (rx, tx);
            }
            reason = crate::broker::connections::close_requested(&mut close_requests) => {
                tracing::info!(%peer, reason, "native connection closed through the management API");
                transport.close(CLOSED_BY_OPERATOR, reason.as_bytes());
                break;
            }
            accepted = transport.accept() => match accepted {
                Ok((send, recv)) => {
                    streams.spawn(stream(ctx.clone(), send, recv));
                }
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "native connection closed");
                    break;
                }
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            _ = crate::util::stopped(&mut shutdown) => {
                transport.close(0, b"broker shutting down");
                break;
            }
        }
    }
    // The peer is gone: stream reads and writes fail at once and subscriptions return their
    // unsettled deliveries; the grace only bounds a stream stuck on the core.
    let drain = async { while streams.join_next().await.is_some() {} };
    if tokio::time::timeout(STREAM_GRACE, drain).await.is_err() {
        streams.abort_all();
    }
    ctx.core.router().connection_closed(ctx.id).await;
    metrics::gauge!("ferry_connections", "protocol" => "native").decrement(1.0);
}

/// Reads a stream's request and answers it.
async fn stream(ctx: Arc<Ctx>, mut send: SendStream, recv: RecvStream) {
    let mut reader = FrameReader::new(recv, ctx.settings.max_frame_bytes);
    let len = match reader.next_len().await {
        Ok(Some(len)) => len,
        Ok(None) => return,
        Err(e) => return refuse_read(&mut send, e).await,
    };
    let permits = u32::try_from(len.max(1)).unwrap_or(u32::MAX);
    let Ok(_budget) = ctx.frame_budget.clone().acquire_many_owned(permits).await else {
        return;
    };
    let request: v1::Request = match reader.next().await {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => return refuse_read(&mut send, e).await,
    };
    let Some(op) = request.op else {
        return refuse(
            &mut send,
            NativeError::malformed("the request names no operation this server knows"),
        )
        .await;
    };
    if let Op::Authenticate(a) = op {
        // Boxed: a login is rare, and inline it would grow every stream's task (see dispatch).
        let answer = Box::pin(authenticate(&ctx, a)).await;
        let response = match answer {
            Ok(r) => r,
            Err(e) => e.response(),
        };
        let _ = framed::write(&mut send, &response).await;
        let _ = send.finish();
        return;
    }
    if ctx.user.get().is_none() {
        return refuse(
            &mut send,
            NativeError::new(
                ErrorCode::Unauthenticated,
                "authenticate first: the first request on a connection must be Authenticate",
            ),
        )
        .await;
    }
    handlers::dispatch(&ctx, op, &mut send, reader).await;
}

/// The user of the client's verified certificate, if it sent one that a mapping rule names.
/// Certificates are only verified with the shared TLS configuration (a self-signed listener
/// asks for none). One that no rule maps logs in as nobody: EXTERNAL then fails, as it does
/// for Kafka and AMQP.
fn client_certificate(
    conn: &quinn::Connection,
    acceptor: Option<&crate::tls::TlsAcceptor>,
) -> Option<crate::tls::Principal> {
    let chain = conn
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    principal_of(&chain, acceptor, conn.remote_address())
}

/// The user a verified client certificate chain names (see [`client_certificate`]).
pub(super) fn principal_of(
    chain: &[rustls::pki_types::CertificateDer<'static>],
    acceptor: Option<&crate::tls::TlsAcceptor>,
    peer: SocketAddr,
) -> Option<crate::tls::Principal> {
    match acceptor?.principal(chain.first()?) {
        Ok(principal) => Some(principal),
        Err(e) => {
            tracing::warn!(%peer, error = %e, "native client certificate names no user");
            None
        }
    }
}

/// The connection's frame budget: a few frames at the limit, within the semaphore's range.
fn budget_bytes(settings: &NativeSettings) -> usize {
    settings
        .max_frame_bytes
        .saturating_mul(FRAME_BUDGET_FRAMES)
        .min(Semaphore::MAX_PERMITS)
        .min(u32::MAX as usize)
}

/// Answers a request that could not be read; a stream that failed under us gets nothing.
async fn refuse_read(send: &mut SendStream, e: ReadError) {
    if let Some(error) = NativeError::unreadable(e) {
        refuse(send, error).await
    }
}

async fn refuse(send: &mut SendStream, e: NativeError) {
    let _ = framed::write(send, &e.response()).await;
    let _ = send.finish();
}

async fn authenticate(ctx: &Ctx, a: v1::Authenticate) -> Result<v1::Response, NativeError> {
    let refused = || {
        NativeError::new(
            ErrorCode::Unauthenticated,
            "login refused: unknown user or wrong password",
        )
    };
    let external = match a.mechanism.as_str() {
        "" | "PLAIN" => false,
        "EXTERNAL" => true,
        other => {
            return Err(NativeError::new(
                ErrorCode::InvalidArgument,
                format!("unknown authentication mechanism `{other}` (PLAIN or EXTERNAL)"),
            ))
        }
    };
    // EXTERNAL (RabbitMQ's rabbitmq_auth_mechanism_ssl): the verified client certificate is
    // the credential and its CN the user.
    let user = if external {
        let Some(cert) = &ctx.client_cert else {
            return Err(NativeError::new(
                ErrorCode::Unauthenticated,
                "EXTERNAL needs a client certificate the broker verified (tls.ca_file)",
            ));
        };
        match &cert.common_name {
            Some(cn) if a.user.is_empty() || a.user == *cn => cn.clone(),
            _ => {
                tracing::info!(peer = %ctx.peer, subject = %cert.subject, user = a.user,
                    "native EXTERNAL login: the certificate has no CN or another one");
                return Err(refused());
            }
        }
    } else {
        a.user.clone()
    };
    if let Some(current) = ctx.user.get() {
        if *current != user {
            return Err(NativeError::new(
                ErrorCode::InvalidArgument,
                "this connection is already authenticated as another user",
            ));
        }
    } else {
        let ip = Some(ctx.peer.ip());
        if external {
            let guard = ctx.core.login_guard();
            match ctx.core.users().check_identity(&user, ip) {
                Ok(_) => guard.succeeded(ip),
                Err(_) => {
                    guard.failed("native", ip, &user).wait().await;
                    return Err(refused());
                }
            }
        } else {
            // Counted, logged (WARN, rate-limited) and slowed per peer by the core, and the
            // loopback-only rule for default users, exactly as for AMQP and Kafka PLAIN.
            ctx.core
                .login("native", ip, &user, &a.password)
                .await
                .map_err(|_| refused())?;
        }
        let _ = ctx.user.set(user.clone());
        ctx.listed.set_user(&user);
        if !a.client_name.is_empty() {
            ctx.listed.set_client_name(&a.client_name);
        }
        tracing::debug!(peer = %ctx.peer, user, client = a.client_name, external, "native login");
    }
    Ok(v1::Response {
        result: Some(v1::response::Result::Authenticated(v1::Authenticated {
            user,
            server_version: env!("CARGO_PKG_VERSION").to_string(),
            max_frame_bytes: u32::try_from(ctx.settings.max_frame_bytes).unwrap_or(u32::MAX),
        })),
    })
}
