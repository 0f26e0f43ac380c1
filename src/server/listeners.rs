//! Binding the listeners, logging what each exposes, and keeping TLS certificates current.
//!
//! Every listener is bound by its setting's name, so a failure names the flag and variable to
//! change; TLS listeners bind only when `[tls]` loaded (and so share one [`TlsAcceptor`]).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{os_reason, Addrs, ListenConflict, StartError};
use crate::config::{resolve_listen, AnonymousAccess, Config};
use crate::tls::TlsAcceptor;

/// Binds the TLS listener of setting `key` if it is switched on (and so `tls` is loaded).
pub(super) async fn bind_tls(
    tls: &Option<Arc<TlsAcceptor>>,
    key: &'static str,
    addr: &str,
) -> Result<Option<(TcpListener, Arc<TlsAcceptor>, SocketAddr)>, StartError> {
    let Some(acceptor) = tls else {
        return Ok(None);
    };
    if addr.is_empty() {
        return Ok(None);
    }
    let listener = bind(key, addr).await?;
    let bound = local_addr(key, addr, &listener)?;
    Ok(Some((listener, acceptor.clone(), bound)))
}

/// Binds the native protocol's QUIC endpoint (UDP) on `native_listen`, with the TLS
/// listeners' certificate or the data directory's self-signed one (its fingerprint is logged:
/// clients pin it).
pub(super) fn bind_native(
    config: &Config,
    data_dir: &Path,
    tls: Option<&Arc<TlsAcceptor>>,
) -> Result<(quinn::Endpoint, String), StartError> {
    use crate::protocol::native::endpoint;
    let key = "native_listen";
    let addr = resolve_listen(key, &config.native_listen)?;
    let identity = endpoint::identity(&config.tls, data_dir)?;
    let (fingerprint, origin) = (identity.fingerprint.clone(), identity.origin);
    // With `tls.cert_file` the shared TLS configuration (client certificates, reloads).
    let bound = match tls {
        Some(acceptor) if origin == endpoint::CONFIGURED => {
            endpoint::bind_with(addr, &acceptor.server_config(), &config.native)
        }
        _ => endpoint::bind(addr, identity, &config.native),
    };
    let bound = bound.map_err(|e| match e {
        endpoint::EndpointError::Bind { source, .. } => StartError::Listen(vec![ListenConflict {
            key,
            addr: config.native_listen.clone(),
            reason: format!("{} (UDP)", os_reason(&source)),
        }]),
        other => StartError::Native(other),
    })?;
    tracing::info!(
        protocol = "native (QUIC)",
        addr = %bound.local_addr().map_or_else(|_| config.native_listen.clone(), |a| a.to_string()),
        alpn = "ferry/1",
        auth = "PLAIN (the user store)",
        certificate = origin,
        client_certificates = if tls.is_some_and(|t| t.verifies_clients()) { "verified (tls.ca_file)" } else { "not asked for" },
        sha256_fingerprint = %fingerprint,
        "listening"
    );
    Ok((bound, fingerprint))
}

/// Binds the native protocol's TCP listener on `native_tcp_listen` when it is set, with the
/// QUIC listener's certificate: the shared TLS configuration when `tls.cert_file` names one
/// (client certificates, reloads), else the data directory's self-signed one.
pub(super) async fn bind_native_tcp(
    config: &Config,
    data_dir: &Path,
    tls: Option<&Arc<TlsAcceptor>>,
) -> Result<
    Option<(
        TcpListener,
        SocketAddr,
        crate::protocol::native::tcp::TcpTls,
    )>,
    StartError,
> {
    use crate::protocol::native::{endpoint, tcp};
    let key = "native_tcp_listen";
    if config.native_tcp_listen.is_empty() {
        return Ok(None);
    }
    let identity = endpoint::identity(&config.tls, data_dir)?;
    let (fingerprint, origin) = (identity.fingerprint.clone(), identity.origin);
    let native_tls = match tls {
        Some(acceptor) if origin == endpoint::CONFIGURED => tcp::TcpTls::Shared(acceptor.clone()),
        _ => tcp::TcpTls::Fixed(tcp::fixed_config(identity)?),
    };
    let listener = bind(key, &config.native_tcp_listen).await?;
    let bound = local_addr(key, &config.native_tcp_listen, &listener)?;
    tracing::info!(
        protocol = "native (TCP)",
        addr = %bound,
        alpn = "ferry/1",
        certificate = origin,
        sha256_fingerprint = %fingerprint,
        "listening"
    );
    Ok(Some((listener, bound, native_tls)))
}

/// Reloads the certificates when their files change, every `tls.reload_check_interval_ms`.
pub(super) async fn watch_certificates(
    acceptor: Arc<TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(interval) = acceptor.reload_check_interval() else {
        return;
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let acceptor = acceptor.clone();
                // Reading the files blocks; keep it off the async workers.
                let _ = tokio::task::spawn_blocking(move || acceptor.reload_if_changed()).await;
            }
            _ = crate::util::stopped(&mut shutdown) => break,
        }
    }
}

pub(super) async fn bind(key: &'static str, addr: &str) -> Result<TcpListener, StartError> {
    let resolved = resolve_listen(key, addr)?;
    TcpListener::bind(resolved).await.map_err(|e| {
        StartError::Listen(vec![ListenConflict {
            key,
            addr: addr.to_string(),
            reason: os_reason(&e),
        }])
    })
}

/// One line per listener (address, protocol, authentication, TLS) and one for the data
/// directory, so an operator sees from the log alone what is exposed and how.
pub(super) fn log_listeners(config: &Config, addrs: &Addrs, data_dir: &Path) {
    let (kafka, amqp, http) = (addrs.kafka, addrs.amqp, addrs.http);
    let advertised = config
        .kafka_advertised
        .as_deref()
        .unwrap_or("the address the client connected to");
    let kafka_auth = kafka_auth(config);
    tracing::info!(
        protocol = "kafka",
        addr = %kafka,
        advertised,
        auth = %kafka_auth,
        tls = "off",
        "listening"
    );
    warn_if_open("kafka", kafka, config);
    let client_certs = match config.tls.ca_file.as_str() {
        "" => "not asked for".to_string(),
        ca => format!("{} against {ca}", config.tls.client_auth),
    };
    if let Some(addr) = addrs.kafka_tls {
        let advertised = config
            .kafka_tls_advertised
            .as_deref()
            .unwrap_or("the address the client connected to");
        tracing::info!(
            protocol = "kafka",
            %addr,
            advertised,
            auth = %kafka_auth,
            tls = "on",
            cert_file = %config.tls.cert_file,
            client_certs = %client_certs,
            "listening"
        );
        let certs_required = !config.tls.ca_file.is_empty() && config.tls.client_auth == "required";
        if !certs_required {
            warn_if_open("kafka-tls", addr, config);
        }
    }
    tracing::info!(
        protocol = "amqp-0-9-1",
        addr = %amqp,
        auth = "PLAIN, AMQPLAIN (the user store)",
        loopback_only = %config.amqp.loopback_users.join(","),
        vhosts = %config.amqp.vhosts.join(","),
        tls = "off",
        "listening"
    );
    if let Some(addr) = addrs.amqp_tls {
        let external = if config.tls.ca_file.is_empty() {
            "off (needs tls.ca_file)"
        } else {
            "with a verified client certificate"
        };
        tracing::info!(
            protocol = "amqps",
            %addr,
            auth = "PLAIN, AMQPLAIN",
            external,
            cert_file = %config.tls.cert_file,
            "listening"
        );
    }
    let admin = if config.observe.admin_user.is_empty() && config.observe.admin_password.is_empty()
    {
        "off".to_string()
    } else {
        let anonymous = match config.observe.allow_anonymous {
            AnonymousAccess::Never => "",
            AnonymousAccess::Loopback => "; requests without credentials from loopback",
            AnonymousAccess::Always => "; requests without credentials from anywhere",
        };
        format!("/api (basic auth of users tagged administrator/management/monitoring{anonymous})")
    };
    tracing::info!(
        protocol = "http",
        addr = %http,
        endpoints = "/healthz /readyz /metrics",
        admin_api = %admin,
        tls = "off",
        "listening"
    );
    warn_if_admin_open("http", http, config);
    if let Some(addr) = addrs.https {
        tracing::info!(protocol = "https", %addr, admin_api = %admin, cert_file = %config.tls.cert_file, "listening");
        warn_if_admin_open("https", addr, config);
    }
    tracing::info!(
        path = %data_dir.display(),
        fsync = %config.log.fsync,
        "data directory"
    );
}

pub(super) fn local_addr(
    what: &'static str,
    addr: &str,
    listener: &TcpListener,
) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|source| StartError::Bind {
        what,
        addr: addr.to_string(),
        source,
    })
}

/// How Kafka clients authenticate, for the listener's log line.
fn kafka_auth(config: &Config) -> String {
    let sasl = match config.kafka.sasl_enabled_mechanisms.as_slice() {
        [] => "SASL off".to_string(),
        mechanisms => format!("SASL {}", mechanisms.join("/")),
    };
    let anonymous = match config.kafka.allow_anonymous {
        AnonymousAccess::Never => "no anonymous clients",
        AnonymousAccess::Loopback => "anonymous from loopback only",
        AnonymousAccess::Always => "anonymous from anywhere",
    };
    format!("{sasl}, {anonymous}")
}

/// One WARN line for an HTTP listener whose admin API lets requests from other machines in
/// without credentials (`observe.allow_anonymous = true` on a non-loopback address).
fn warn_if_admin_open(listener: &str, addr: std::net::SocketAddr, config: &Config) {
    let admin_on =
        !(config.observe.admin_user.is_empty() && config.observe.admin_password.is_empty());
    if admin_on
        && config.observe.allow_anonymous == AnonymousAccess::Always
        && !addr.ip().is_loopback()
    {
        tracing::warn!(
            listener,
            %addr,
            "anyone who reaches this address can use the admin API as an administrator without \
             credentials (observe.allow_anonymous = true); configure [[users]], or set \
             observe.allow_anonymous = \"loopback\""
        );
    }
}

/// One WARN line for a Kafka listener that lets clients from other machines in without
/// authenticating (`kafka.allow_anonymous = true` on a non-loopback address).
fn warn_if_open(listener: &str, addr: std::net::SocketAddr, config: &Config) {
    if config.kafka.allow_anonymous == AnonymousAccess::Always && !addr.ip().is_loopback() {
        tracing::warn!(
            listener,
            %addr,
            "Kafka clients from other machines can read, write and delete every topic without \
             authenticating (kafka.allow_anonymous = true); configure [[users]] and SASL, or \
             set kafka.allow_anonymous = \"loopback\""
        );
    }
}
