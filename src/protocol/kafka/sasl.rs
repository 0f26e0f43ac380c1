//! Kafka SASL on one connection: SaslHandshake and SaslAuthenticate with PLAIN, SCRAM-SHA-256
//! and SCRAM-SHA-512, KIP-368 re-authentication, and the rule for clients that skip SASL.
//!
//! The state lives with the connection's reader and these requests are answered there, in
//! request order, before anything else of the connection runs: a client must not be able to
//! race a request past its own authentication. Kafka's sequence is SaslHandshake (the
//! mechanism), then either raw SASL tokens framed by a size only (handshake v0, the original
//! protocol old clients still speak) or SaslAuthenticate requests (handshake v1). A failed
//! authentication is answered (SASL_AUTHENTICATION_FAILED, with Kafka's message) and the
//! connection closed, as Kafka does; the failure also goes through the core's login guard.
//!
//! Who may skip SASL is `kafka.allow_anonymous`; a client with a verified TLS client
//! certificate is authenticated by it (principal `User:<subject>`). An unauthenticated client
//! that may not skip SASL can send ApiVersions and the SASL requests only; anything else
//! closes the connection, which is what a Kafka broker's SASL listener does to a client not
//! configured for SASL.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tokio::time::Instant;

use super::codec::RawRequest;
use super::handlers::{decode, respond, Outcome};
use super::KafkaContext;
use crate::broker::users::scram::ScramServer;
use crate::broker::users::ScramMechanism;
use crate::tls::ConnSecurity;

/// What the connection does with a request, decided before it is dispatched.
pub enum Gate {
    /// Not a SASL request and the connection may send it: dispatch as usual.
    Pass,
    /// A SASL request, answered here.
    Answered(Outcome),
    /// Answered, then the connection closes (failed or refused authentication).
    Final(Outcome),
    /// Closed without an answer (a request before the required authentication, or after the
    /// session expired).
    Refuse(String),
}

enum Mechanism {
    Plain,
    Scram(ScramServer),
}

/// Where the connection is in its SASL exchange.
enum Phase {
    /// Nothing asked for yet (or the last exchange finished).
    Idle,
    /// A mechanism was chosen; `raw` after handshake v0 (tokens without Kafka headers).
    Started { mechanism: Mechanism, raw: bool },
}

/// The authentication state of one Kafka connection.
pub struct SaslState {
    peer: SocketAddr,
    /// The authenticated SASL user.
    user: Option<String>,
    /// When the SASL session ends (`connections.max.reauth.ms`).
    expires: Option<Instant>,
    /// A verified client certificate or `kafka.allow_anonymous` lets this client in without SASL.
    anonymous_ok: bool,
    phase: Phase,
}

impl SaslState {
    pub fn new(ctx: &KafkaContext, peer: SocketAddr, security: &ConnSecurity) -> Self {
        let anonymous_ok =
            security.client_cert.is_some() || ctx.settings.kafka.allow_anonymous.allows(peer.ip());
        Self {
            peer,
            user: None,
            expires: None,
            anonymous_ok,
            phase: Phase::Idle,
        }
    }

    /// The SASL user this connection authenticated as.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// After a v0 handshake the next frames are bare SASL tokens, not Kafka requests.
    pub fn expects_raw_token(&self) -> bool {
        matches!(self.phase, Phase::Started { raw: true, .. })
    }

    /// Decides what to do with `req` (see [`Gate`]).
    pub async fn gate(&mut self, ctx: &KafkaContext, req: &RawRequest) -> Gate {
        match req.api_key {
            ApiKey::SaslHandshake => return self.handshake(ctx, req),
            ApiKey::SaslAuthenticate => return self.authenticate(ctx, req).await,
            ApiKey::ApiVersions => return Gate::Pass,
            _ => {}
        }
        if self.user.is_some() {
            if self.expires.is_some_and(|at| Instant::now() >= at) {
                metrics::counter!("ferry_kafka_sessions_expired_total").increment(1);
                return Gate::Refuse(format!(
                    "the SASL session of user '{}' expired (connections_max_reauth_ms) and the \
                     client did not re-authenticate",
                    self.user.as_deref().unwrap_or_default()
                ));
            }
            return Gate::Pass;
        }
        if self.anonymous_ok {
            return Gate::Pass;
        }
        Gate::Refuse(format!(
            "{:?} before SASL authentication from a non-loopback client (kafka.allow_anonymous)",
            req.api_key
        ))
    }

    fn handshake(&mut self, ctx: &KafkaContext, req: &RawRequest) -> Gate {
        let body: SaslHandshakeRequest = match decode(req) {
            Ok(b) => b,
            Err(outcome) => return Gate::Final(outcome),
        };
        let enabled = &ctx.settings.kafka.sasl_enabled_mechanisms;
        let offered: Vec<StrBytes> = enabled
            .iter()
            .map(|m| StrBytes::from_string(m.clone()))
            .collect();
        let answer = |code: i16| {
            let body = SaslHandshakeResponse::default()
                .with_error_code(code)
                .with_mechanisms(offered.clone());
            respond(req.api_key, req.api_version, req.correlation_id, &body)
        };
        if !matches!(self.phase, Phase::Idle) {
            return Gate::Final(answer(ResponseError::IllegalSaslState.code()));
        }
        // KIP-368: re-authentication uses handshake v1 and SaslAuthenticate v1+.
        if self.user.is_some() && req.api_version == 0 {
            return Gate::Final(answer(ResponseError::IllegalSaslState.code()));
        }
        let wanted = body.mechanism.as_str();
        let mechanism = match wanted {
            _ if !enabled.iter().any(|m| m == wanted) => None,
            "PLAIN" => Some(Mechanism::Plain),
            other => {
                ScramMechanism::from_sasl_name(other).map(|m| Mechanism::Scram(ScramServer::new(m)))
            }
        };
        let Some(mechanism) = mechanism else {
            tracing::info!(peer = %self.peer, mechanism = wanted, "Kafka client asked for an unsupported SASL mechanism");
            return Gate::Final(answer(ResponseError::UnsupportedSaslMechanism.code()));
        };
        self.phase = Phase::Started {
            mechanism,
            raw: req.api_version == 0,
        };
        Gate::Answered(answer(0))
    }

    async fn authenticate(&mut self, ctx: &KafkaContext, req: &RawRequest) -> Gate {
        let body: SaslAuthenticateRequest = match decode(req) {
            Ok(b) => b,
            Err(outcome) => return Gate::Final(outcome),
        };
        let reply = |code: i16, message: Option<String>, bytes: Bytes, lifetime: i64| {
            let body = SaslAuthenticateResponse::default()
                .with_error_code(code)
                .with_error_message(message.map(StrBytes::from_string))
                .with_auth_bytes(bytes)
                .with_session_lifetime_ms(lifetime);
            respond(req.api_key, req.api_version, req.correlation_id, &body)
        };
        if !matches!(self.phase, Phase::Started { raw: false, .. }) {
            return Gate::Final(reply(
                ResponseError::IllegalSaslState.code(),
                Some("SaslAuthenticate before SaslHandshake".into()),
                Bytes::new(),
                0,
            ));
        }
        match self.step(ctx, &body.auth_bytes).await {
            Step::Continue(bytes) => Gate::Answered(reply(0, None, bytes, 0)),
            Step::Done(bytes) => {
                Gate::Answered(reply(0, None, bytes, self.session_lifetime_ms(ctx)))
            }
            Step::Failed(message) => Gate::Final(reply(
                ResponseError::SaslAuthenticationFailed.code(),
                Some(message),
                Bytes::new(),
                0,
            )),
        }
    }

    /// Handles one bare token after a v0 handshake; the answer is framed by its size only,
    /// and a failure just closes (the v0 protocol has no error frame).
    pub async fn raw_token(&mut self, ctx: &KafkaContext, token: &[u8]) -> Gate {
        match self.step(ctx, token).await {
            Step::Continue(bytes) | Step::Done(bytes) => {
                let mut out = BytesMut::with_capacity(4 + bytes.len());
                out.put_i32(bytes.len() as i32);
                out.put_slice(&bytes);
                Gate::Answered(Outcome::Respond(out.freeze()))
            }
            Step::Failed(message) => Gate::Refuse(message),
        }
    }

    fn session_lifetime_ms(&self, ctx: &KafkaContext) -> i64 {
        let ms = ctx.settings.kafka.connections_max_reauth_ms;
        i64::try_from(ms).unwrap_or(i64::MAX)
    }

    /// One step of the chosen mechanism.
    async fn step(&mut self, ctx: &KafkaContext, token: &[u8]) -> Step {
        let peer = Some(self.peer.ip());
        let Phase::Started { mechanism, .. } = &mut self.phase else {
            return Step::Failed("no SASL exchange in progress".into());
        };
        let core = &ctx.core;
        let (user, reply) = match mechanism {
            Mechanism::Plain => {
                let Some((authzid, user, password)) = plain_token(token) else {
                    self.phase = Phase::Idle;
                    return Step::Failed("Authentication failed: malformed PLAIN token".into());
                };
                if !authzid.is_empty() && authzid != user {
                    self.phase = Phase::Idle;
                    return Step::Failed(
                        "Authentication failed: Client requested an authorization id that is \
                         different from username"
                            .into(),
                    );
                }
                if core.login("kafka", peer, &user, &password).await.is_err() {
                    self.phase = Phase::Idle;
                    return Step::Failed(
                        "Authentication failed: Invalid username or password".into(),
                    );
                }
                (user, Bytes::new())
            }
            Mechanism::Scram(server) => {
                let mechanism = server.mechanism();
                if server.awaits_client_first() {
                    return match server
                        .client_first(token, |name| core.users().scram(name, mechanism))
                    {
                        Ok(server_first) => Step::Continue(Bytes::from(server_first)),
                        Err(e) => {
                            self.phase = Phase::Idle;
                            Step::Failed(format!("Authentication failed: {e}"))
                        }
                    };
                }
                // The proof must match, and the user may still be loopback-only.
                let accepted = match server.client_final(token) {
                    Ok((user, server_final)) => match core.users().check_identity(&user, peer) {
                        Ok(_) => Ok((user, server_final)),
                        Err(_) => Err(user),
                    },
                    Err(e) => {
                        tracing::debug!(peer = %self.peer, error = %e, "SCRAM client-final refused");
                        Err(String::new())
                    }
                };
                let guard = core.login_guard();
                match accepted {
                    Ok((user, server_final)) => {
                        guard.succeeded(peer);
                        (user, Bytes::from(server_final))
                    }
                    Err(name) => {
                        guard.failed("kafka", peer, &name).wait().await;
                        self.phase = Phase::Idle;
                        return Step::Failed(format!(
                            "Authentication failed during authentication due to invalid \
                             credentials with SASL mechanism {}",
                            mechanism.sasl_name()
                        ));
                    }
                }
            }
        };
        self.phase = Phase::Idle;
        if let Some(previous) = &self.user {
            if *previous != user {
                return Step::Failed(format!(
                    "Cannot change principals during re-authentication from User:{previous} to \
                     User:{user}"
                ));
            }
            metrics::counter!("ferry_kafka_reauthentications_total").increment(1);
        }
        let lifetime = ctx.settings.kafka.connections_max_reauth_ms;
        self.expires = (lifetime > 0).then(|| Instant::now() + Duration::from_millis(lifetime));
        tracing::debug!(peer = %self.peer, user, "Kafka client authenticated");
        self.user = Some(user);
        Step::Done(reply)
    }
}

enum Step {
    /// More of the exchange follows (SCRAM's server-first).
    Continue(Bytes),
    /// Authenticated; the last server message.
    Done(Bytes),
    /// Refused, with the message Kafka sends.
    Failed(String),
}

/// `authzid NUL authcid NUL password` (RFC 4616).
fn plain_token(token: &[u8]) -> Option<(String, String, String)> {
    let mut parts = token.split(|b| *b == 0);
    let (authzid, user, password) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || user.is_empty() {
        return None;
    }
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).ok();
    Some((text(authzid)?, text(user)?, text(password)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_tokens_are_split_per_rfc_4616() {
        assert_eq!(
            plain_token(b"\0alice\0pw"),
            Some(("".into(), "alice".into(), "pw".into()))
        );
        assert_eq!(
            plain_token(b"alice\0alice\0p\xc3\xa4ss"),
            Some(("alice".into(), "alice".into(), "päss".into()))
        );
        assert_eq!(plain_token(b"alice"), None);
        assert_eq!(plain_token(b"\0\0pw"), None);
        assert_eq!(plain_token(b"\0a\0b\0c"), None);
    }
}
