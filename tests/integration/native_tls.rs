//! The native listener with the broker's TLS settings: client certificates verified against
//! `tls.ca_file` (refused without one when `tls.client_auth = "required"`), EXTERNAL login as
//! the certificate's CN (over QUIC and over the TCP listener), and reloaded certificates taken
//! for new connections.

use std::path::Path;
use std::time::Duration;

use ferry::broker::users::Password;
use ferry::client::native::*;
use ferry::proto::v1::{self, request::Op, ErrorCode};
use ferry::testing::TestBroker;
use ferry::tls::generate::{generate, CertRequest, Generated};

const WAIT: Duration = Duration::from_secs(10);

fn certs(dir: &Path, force: bool) -> Generated {
    generate(&CertRequest {
        dns: vec!["localhost".into()],
        ips: vec!["127.0.0.1".parse().expect("ip")],
        clients: vec!["orders-app".into()],
        out: dir.to_path_buf(),
        days: 2,
        force,
    })
    .expect("certificates")
}

async fn broker(g: &Generated, client_auth: &str) -> TestBroker {
    let (g, client_auth) = (g.clone(), client_auth.to_string());
    TestBroker::with(move |b| {
        b.configure(move |c| {
            c.tls.cert_file = g.server_cert.display().to_string();
            c.tls.key_file = g.server_key.display().to_string();
            c.tls.ca_file = g.ca_cert.display().to_string();
            c.tls.client_auth = client_auth;
            c.tls.reload_check_interval_ms = 0;
        })
    })
    .await
    .expect("broker")
}

fn options(
    broker: &TestBroker,
    ca: &Path,
    client: Option<&(String, std::path::PathBuf, std::path::PathBuf)>,
    mechanism: Mechanism,
) -> ConnectOptions {
    let mut o = ConnectOptions::new(
        broker.native_addr(),
        Trust::CaFile(ca.to_path_buf()),
        if mechanism == Mechanism::Plain {
            "guest"
        } else {
            ""
        },
        "guest",
    );
    o.client_certificate = client.map(|(_, cert, key)| (cert.clone(), key.clone()));
    o.mechanism = mechanism;
    o.backoff.attempts = 1;
    o
}

/// [`options`] for the QUIC or the TCP listener (both use the shared TLS configuration).
fn options_on(
    transport: Transport,
    broker: &TestBroker,
    ca: &Path,
    client: Option<&(String, std::path::PathBuf, std::path::PathBuf)>,
    mechanism: Mechanism,
) -> ConnectOptions {
    let addr = match transport {
        Transport::Quic => broker.native_addr(),
        Transport::Tcp => broker.native_tcp_addr().expect("native_tcp_listen is on"),
    };
    options(broker, ca, client, mechanism).with_transport(transport, addr)
}

/// The user a connection acts as, read off a permission refusal (the user has no rights).
async fn acting_user(conn: &NativeConnection) -> String {
    let declare = v1::Request {
        op: Some(Op::DeclareQueue(v1::DeclareQueue {
            name: "probe".into(),
            ..Default::default()
        })),
    };
    match conn.call(&declare).await {
        Err(NativeClientError::Server { code, message }) => {
            assert_eq!(code, ErrorCode::PermissionDenied, "{message}");
            message
        }
        other => panic!("expected PERMISSION_DENIED, got {other:?}"),
    }
}

#[tokio::test]
async fn external_login_is_the_verified_client_certificate() {
    external_login_on(Transport::Quic).await
}

#[tokio::test]
async fn external_login_is_the_verified_client_certificate_over_tcp() {
    external_login_on(Transport::Tcp).await
}

async fn external_login_on(transport: Transport) {
    let dir = tempfile::tempdir().expect("dir");
    let g = certs(dir.path(), false);
    let broker = broker(&g, "requested").await;
    broker
        .core()
        .users()
        .put_user("orders-app", Password::Clear("unused".into()), Vec::new())
        .expect("user");
    let client = &g.clients[0];

    // Without a certificate a client may still log in with a password ("requested")...
    connect(options_on(
        transport,
        &broker,
        &g.ca_cert,
        None,
        Mechanism::Plain,
    ))
    .await
    .expect("PLAIN without a certificate");
    // ... but not with EXTERNAL.
    let err = connect(options_on(
        transport,
        &broker,
        &g.ca_cert,
        None,
        Mechanism::External,
    ))
    .await
    .err()
    .expect("EXTERNAL without a certificate is refused");
    assert_eq!(err.code(), Some(ErrorCode::Unauthenticated), "{err}");

    // With one, EXTERNAL logs in as its CN.
    let conn = connect(options_on(
        transport,
        &broker,
        &g.ca_cert,
        Some(client),
        Mechanism::External,
    ))
    .await
    .expect("EXTERNAL with the certificate");
    let refusal = acting_user(&conn).await;
    assert!(refusal.contains("user 'orders-app'"), "{refusal}");

    // A CN the user store does not know is refused.
    broker
        .core()
        .users()
        .delete_user("orders-app")
        .expect("delete user");
    let err = connect(options_on(
        transport,
        &broker,
        &g.ca_cert,
        Some(client),
        Mechanism::External,
    ))
    .await
    .err()
    .expect("unknown CN refused");
    assert_eq!(err.code(), Some(ErrorCode::Unauthenticated), "{err}");
}

#[tokio::test]
async fn required_client_auth_refuses_a_client_without_a_certificate() {
    let dir = tempfile::tempdir().expect("dir");
    let g = certs(dir.path(), false);
    let broker = broker(&g, "required").await;
    let err = connect(options(&broker, &g.ca_cert, None, Mechanism::Plain))
        .await
        .err()
        .expect("no certificate, no connection");
    assert!(err.code().is_none(), "refused in the handshake: {err}");
    connect(options(
        &broker,
        &g.ca_cert,
        Some(&g.clients[0]),
        Mechanism::Plain,
    ))
    .await
    .expect("with a certificate");
}

#[tokio::test]
async fn reloaded_certificates_serve_new_connections() {
    let dir = tempfile::tempdir().expect("dir");
    let first = certs(dir.path(), false);
    let old_ca = dir.path().join("old-ca.pem");
    std::fs::copy(&first.ca_cert, &old_ca).expect("copy");
    let broker = broker(&first, "requested").await;
    let open = connect(options(&broker, &old_ca, None, Mechanism::Plain))
        .await
        .expect("first certificate");

    let second = certs(dir.path(), true);
    broker.reload_tls().expect("reload");
    let deadline = tokio::time::Instant::now() + WAIT;
    while connect(options(&broker, &second.ca_cert, None, Mechanism::Plain))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the native listener never took the new certificate"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        connect(options(&broker, &old_ca, None, Mechanism::Plain))
            .await
            .is_err(),
        "new connections get the new certificate"
    );
    // The connection made before the reload keeps working.
    let ping = v1::Request {
        op: Some(Op::DeclareTopic(v1::DeclareTopic {
            name: "still-open".into(),
            partitions: 1,
            ..Default::default()
        })),
    };
    open.call(&ping).await.expect("open connection unaffected");
}
