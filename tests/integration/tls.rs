//! TLS on every listener, through the embedding API and a rustls client: Kafka (Metadata
//! advertises the TLS listener to TLS clients), AMQPS (EXTERNAL offered only with a verified
//! client certificate), HTTPS, a wrong CA, certificate reload (explicit and on file change),
//! and a start that fails on an unusable certificate.

use crate::common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::kafka_raw::RawKafka;
use ferry::tls::generate::{generate, CertRequest, Generated};
use ferry::Broker;
use kafka_protocol::messages::{ApiKey, MetadataRequest, MetadataResponse};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

fn certs(dir: &Path, clients: &[&str], force: bool) -> Generated {
    generate(&CertRequest {
        dns: vec!["localhost".into()],
        ips: vec!["127.0.0.1".parse().unwrap()],
        clients: clients.iter().map(|c| c.to_string()).collect(),
        out: dir.to_path_buf(),
        days: 2,
        force,
    })
    .unwrap()
}

async fn tls_broker(generated: &Generated, mtls: bool, reload_ms: u64) -> Broker {
    let g = generated.clone();
    Broker::builder()
        .configure(move |c| {
            c.kafka_tls_listen = "127.0.0.1:0".into();
            c.amqp_tls_listen = "127.0.0.1:0".into();
            c.http_tls_listen = "127.0.0.1:0".into();
            c.tls.cert_file = g.server_cert.display().to_string();
            c.tls.key_file = g.server_key.display().to_string();
            if mtls {
                c.tls.ca_file = g.ca_cert.display().to_string();
            }
            c.tls.reload_check_interval_ms = reload_ms;
        })
        .start()
        .await
        .unwrap()
}

#[allow(deprecated)]
fn client_config(ca: &Path, client: Option<(&PathBuf, &PathBuf)>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
    Arc::new(match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
    })
}

async fn connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut stream = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("handshake neither finished nor failed")?;
    // TLS 1.3 reports a rejected client certificate only on the first read after the
    // handshake; a zero-length flush makes the failure show here rather than later.
    stream.flush().await?;
    Ok(stream)
}

async fn metadata_port(stream: impl common::kafka_raw::Io + 'static) -> i32 {
    let mut kafka = RawKafka::over(stream);
    let response: MetadataResponse = kafka
        .call(
            ApiKey::Metadata,
            1,
            &MetadataRequest::default().with_topics(Some(vec![])),
        )
        .await;
    response.brokers[0].port
}

#[tokio::test]
async fn kafka_metadata_sends_tls_clients_to_the_tls_listener() {
    let dir = tempfile::tempdir().unwrap();
    let g = certs(dir.path(), &[], false);
    let broker = tls_broker(&g, false, 0).await;
    let tls_addr = broker.kafka_tls_addr().unwrap();
    assert_ne!(tls_addr, broker.kafka_addr());

    let stream = connect(tls_addr, client_config(&g.ca_cert, None))
        .await
        .unwrap();
    assert_eq!(metadata_port(stream).await, i32::from(tls_addr.port()));
    let plain = TcpStream::connect(broker.kafka_addr()).await.unwrap();
    assert_eq!(
        metadata_port(plain).await,
        i32::from(broker.kafka_addr().port())
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn a_client_trusting_another_ca_cannot_connect_and_plaintext_on_tls_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let g = certs(dir.path(), &[], false);
    let stranger = certs(other.path(), &[], false);
    let broker = tls_broker(&g, false, 0).await;
    let addr = broker.kafka_tls_addr().unwrap();
    let err = connect(addr, client_config(&stranger.ca_cert, None))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");

    // A plaintext Kafka request on the TLS port gets no Kafka answer: the connection closes.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&[0, 0, 0, 10, 0, 18, 0, 0, 0, 0, 0, 1, 0, 0])
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the broker kept a garbage TLS connection open"
    );
    // Whatever came back is a TLS alert record (content type 21), not a Kafka response.
    assert!(buf.is_empty() || buf[0] == 21, "{buf:?}");
    // The broker still serves TLS clients afterwards.
    connect(addr, client_config(&g.ca_cert, None))
        .await
        .unwrap();
    broker.shutdown().await;
}

/// Reads from an AMQPS connection until connection.start arrived; returns its bytes.
async fn amqp_start(mut stream: TlsStream<TcpStream>) -> Vec<u8> {
    stream.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
    stream.flush().await.unwrap();
    let mut frame = vec![0u8; 7];
    stream.read_exact(&mut frame).await.unwrap();
    let size = u32::from_be_bytes(frame[3..7].try_into().unwrap()) as usize;
    let mut payload = vec![0u8; size + 1];
    stream.read_exact(&mut payload).await.unwrap();
    assert_eq!(&payload[..4], &[0, 10, 0, 10], "not connection.start");
    payload
}

fn offers(start: &[u8], mechanism: &str) -> bool {
    start
        .windows(mechanism.len())
        .any(|w| w == mechanism.as_bytes())
}

#[tokio::test]
async fn amqps_offers_external_only_with_a_verified_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let g = certs(dir.path(), &["orders-app"], false);
    let broker = tls_broker(&g, true, 0).await;
    let addr = broker.amqp_tls_addr().unwrap();
    let (cert, key) = (&g.clients[0].1, &g.clients[0].2);

    let with_cert = connect(addr, client_config(&g.ca_cert, Some((cert, key))))
        .await
        .unwrap();
    let start = amqp_start(with_cert).await;
    assert!(offers(&start, "PLAIN AMQPLAIN EXTERNAL"), "{start:?}");

    let without = connect(addr, client_config(&g.ca_cert, None))
        .await
        .unwrap();
    let start = amqp_start(without).await;
    assert!(offers(&start, "PLAIN AMQPLAIN"));
    assert!(!offers(&start, "EXTERNAL"));

    // A client certificate from another CA is refused in the handshake.
    let other = tempfile::tempdir().unwrap();
    let stranger = certs(other.path(), &["orders-app"], false);
    let (cert, key) = (&stranger.clients[0].1, &stranger.clients[0].2);
    let refused = async {
        let mut s = connect(addr, client_config(&g.ca_cert, Some((cert, key)))).await?;
        s.write_all(b"AMQP\x00\x00\x09\x01").await?;
        s.flush().await?;
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte).await.map(|_| ())
    };
    assert!(refused.await.is_err());
    broker.shutdown().await;
}

async fn https_get(addr: SocketAddr, ca: &Path, path: &str) -> String {
    let mut stream = connect(addr, client_config(ca, None)).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn https_serves_health_and_refuses_the_admin_api_without_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let g = certs(dir.path(), &[], false);
    let broker = tls_broker(&g, false, 0).await;
    let addr = broker.https_addr().unwrap();
    let ready = https_get(addr, &g.ca_cert, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let api = https_get(addr, &g.ca_cert, "/api/topics").await;
    assert!(api.starts_with("HTTP/1.1 401"), "{api}");
    // Issue 19: the web console and its vendored charts are served over HTTPS too.
    let console = https_get(addr, &g.ca_cert, "/").await;
    assert!(console.starts_with("HTTP/1.1 200"), "{console}");
    assert!(
        console.contains("<title>Ferry console</title>"),
        "{console}"
    );
    let charts = https_get(addr, &g.ca_cert, "/console/vendor/uPlot.iife.min.js").await;
    assert!(
        charts.starts_with("HTTP/1.1 200"),
        "{}",
        &charts[..charts.len().min(300)]
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn reload_swaps_certificates_and_a_bad_file_keeps_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let first = certs(dir.path(), &[], false);
    let old_ca = dir.path().join("old-ca.pem");
    std::fs::copy(&first.ca_cert, &old_ca).unwrap();
    let broker = tls_broker(&first, false, 0).await;
    let addr = broker.kafka_tls_addr().unwrap();
    let tls = broker.tls().unwrap().clone();
    assert_eq!(tls.generation(), 1);

    // A broken certificate file: the reload fails and the broker keeps serving the old one.
    std::fs::write(&first.server_cert, b"not a certificate").unwrap();
    let err = broker.reload_tls().unwrap_err();
    assert!(err.to_string().contains("tls.cert_file"), "{err}");
    assert_eq!(tls.generation(), 1);
    connect(addr, client_config(&old_ca, None)).await.unwrap();

    // A new CA and server certificate: new handshakes use them.
    let second = certs(dir.path(), &[], true);
    broker.reload_tls().unwrap();
    assert_eq!(tls.generation(), 2);
    connect(addr, client_config(&second.ca_cert, None))
        .await
        .unwrap();
    assert!(connect(addr, client_config(&old_ca, None)).await.is_err());
    broker.shutdown().await;
}

#[tokio::test]
async fn changed_certificate_files_are_reloaded_without_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let first = certs(dir.path(), &[], false);
    let broker = tls_broker(&first, false, 50).await;
    let tls = broker.tls().unwrap().clone();
    // Modification times have a coarse granularity on some filesystems.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = certs(dir.path(), &[], true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tls.generation() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the changed files were not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    connect(
        broker.kafka_tls_addr().unwrap(),
        client_config(&second.ca_cert, None),
    )
    .await
    .unwrap();
    broker.shutdown().await;
}

#[tokio::test]
async fn an_unusable_certificate_fails_the_start_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let g = certs(dir.path(), &[], false);
    let key = g.server_key.display().to_string();
    let err = Broker::builder()
        .configure(move |c| {
            c.kafka_tls_listen = "127.0.0.1:0".into();
            c.tls.cert_file = "/nonexistent/server.pem".into();
            c.tls.key_file = key;
        })
        .start()
        .await
        .err()
        .unwrap();
    let text = err.to_string();
    assert!(
        text.contains("tls.cert_file") && text.contains("no such file"),
        "{text}"
    );

    let err = Broker::builder()
        .configure(|c| c.amqp_tls_listen = "127.0.0.1:0".into())
        .start()
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("tls.cert_file"), "{err}");
}

#[tokio::test]
async fn required_client_auth_refuses_a_client_without_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let g = certs(dir.path(), &["orders-app"], false);
    let broker = tls_broker_with(&g, |c| c.tls.client_auth = "required".into()).await;
    let addr = broker.kafka_tls_addr().unwrap();
    let anonymous = async {
        let stream = connect(addr, client_config(&g.ca_cert, None)).await?;
        let mut kafka = stream;
        // The rejection arrives as an alert on the first read after the handshake.
        kafka.write_all(&[0, 0, 0, 0]).await?;
        kafka.flush().await?;
        let mut byte = [0u8; 1];
        kafka.read_exact(&mut byte).await.map(|_| ())
    };
    assert!(anonymous.await.is_err());
    let (cert, key) = (&g.clients[0].1, &g.clients[0].2);
    let stream = connect(addr, client_config(&g.ca_cert, Some((cert, key))))
        .await
        .unwrap();
    assert_eq!(metadata_port(stream).await, i32::from(addr.port()));
    broker.shutdown().await;
}

async fn tls_broker_with(g: &Generated, edit: impl FnOnce(&mut ferry::Config)) -> Broker {
    let g = g.clone();
    Broker::builder()
        .configure(move |c| {
            c.kafka_tls_listen = "127.0.0.1:0".into();
            c.tls.cert_file = g.server_cert.display().to_string();
            c.tls.key_file = g.server_key.display().to_string();
            c.tls.ca_file = g.ca_cert.display().to_string();
            edit(c);
        })
        .start()
        .await
        .unwrap()
}

#[test]
fn tls_settings_come_from_the_environment_and_are_checked() {
    let env = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
    };
    let c = ferry::Config::load(
        None,
        env(&[
            ("FERRY_KAFKA_TLS_LISTEN", "127.0.0.1:9093"),
            ("FERRY_KAFKA_TLS_ADVERTISED", "broker.example:9093"),
            ("FERRY_AMQP_TLS_LISTEN", "127.0.0.1:5671"),
            ("FERRY_TLS__CERT_FILE", "/etc/ferry/server.pem"),
            ("FERRY_TLS__KEY_FILE", "/etc/ferry/server.key"),
        ]),
        vec![],
    )
    .unwrap();
    assert_eq!(c.kafka_tls_listen, "127.0.0.1:9093");
    assert_eq!(
        c.kafka_tls_advertised.as_deref(),
        Some("broker.example:9093")
    );
    assert_eq!(c.tls.cert_file, "/etc/ferry/server.pem");
    assert_eq!(c.http_tls_listen, "", "off unless set");

    let err = ferry::Config::load(
        None,
        env(&[("FERRY_KAFKA_TLS_LISTEN", "127.0.0.1:9093")]),
        vec![],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("tls.cert_file"), "{err}");

    let err = ferry::Config::load(None, env(&[("FERRY_TLS__CLIENT_AUTH", "required")]), vec![])
        .unwrap_err()
        .to_string();
    assert!(err.contains("tls.ca_file"), "{err}");
}

#[tokio::test]
async fn health_checks_know_the_tls_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let g = certs(dir.path(), &[], false);
    let broker = tls_broker(&g, false, 0).await;
    let http = reqwest::Client::new();
    for protocol in ["amqps", "amqp%2Fssl", "kafka-tls", "https"] {
        let url = format!(
            "http://{}/api/health/checks/protocol-listener/{protocol}",
            broker.http_addr()
        );
        let response = http
            .get(&url)
            .basic_auth("admin", Some("admin"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{protocol}");
    }
    broker.shutdown().await;
    // Without TLS listeners the same check fails with the listeners it has.
    let plain = Broker::builder().start().await.unwrap();
    let url = format!(
        "http://{}/api/health/checks/protocol-listener/amqps",
        plain.http_addr()
    );
    let response = http
        .get(&url)
        .basic_auth("admin", Some("admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    plain.shutdown().await;
}

/// One certificate is one user on every protocol: `tls.principal_mapping_rules` (Kafka's
/// syntax) maps the subject to the name that is both the Kafka principal `User:<name>` and
/// the AMQP EXTERNAL user, so a Kafka ACL for that name decides what the certificate's Kafka
/// client may do; a certificate no rule maps is refused rather than let in as anonymous.
#[tokio::test]
async fn principal_mapping_rules_name_the_certificates_user() {
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::protocol::StrBytes;

    let dir = tempfile::tempdir().unwrap();
    let g = certs(dir.path(), &["orders-app"], false);
    let broker = tls_broker_with(&g, |c| {
        c.tls.principal_mapping_rules = "RULE:^CN=([^,]*)$/$1/U".into();
        c.kafka.acl_enabled = true;
    })
    .await;
    for topic in ["orders", "billing"] {
        broker
            .core()
            .create_topic(topic, 1, Default::default())
            .await
            .unwrap();
    }
    broker
        .core()
        .acls()
        .create(&[ferry::meta::AclRecord {
            resource_type: 2,
            resource_name: "orders".into(),
            pattern_type: 3,
            principal: "User:ORDERS-APP".into(),
            host: "*".into(),
            operation: 8, // DESCRIBE
            permission: 3,
        }])
        .unwrap();
    let addr = broker.kafka_tls_addr().unwrap();
    let (cert, key) = (&g.clients[0].1, &g.clients[0].2);
    let stream = connect(addr, client_config(&g.ca_cert, Some((cert, key))))
        .await
        .unwrap();
    let mut kafka = RawKafka::over(stream);
    let topics = ["orders", "billing"].map(|t| {
        MetadataRequestTopic::default().with_name(Some(TopicName(StrBytes::from_static_str(t))))
    });
    let response: MetadataResponse = kafka
        .call(
            ApiKey::Metadata,
            9,
            &MetadataRequest::default().with_topics(Some(topics.to_vec())),
        )
        .await;
    let codes: Vec<(String, i16)> = response
        .topics
        .iter()
        .map(|t| (t.name.as_ref().unwrap().to_string(), t.error_code))
        .collect();
    assert_eq!(
        codes,
        vec![("orders".to_string(), 0), ("billing".to_string(), 29)]
    );
    let users: Vec<Option<String>> = broker
        .core()
        .connections()
        .list()
        .into_iter()
        .map(|c| c.user)
        .collect();
    assert_eq!(users, vec![Some("ORDERS-APP".to_string())]);
    broker.shutdown().await;

    // A rule set that maps no subject refuses the certificate.
    let broker = tls_broker_with(&g, |c| {
        c.tls.principal_mapping_rules = "RULE:^CN=billing-.*$/billing/".into();
    })
    .await;
    let addr = broker.kafka_tls_addr().unwrap();
    let refused = async {
        let mut stream = connect(addr, client_config(&g.ca_cert, Some((cert, key)))).await?;
        stream.write_all(&[0, 0, 0, 0]).await?;
        stream.flush().await?;
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.map(|_| ())
    };
    assert!(refused.await.is_err());
    broker.shutdown().await;
}
