//! Kafka SASL (issue 13): PLAIN through rdkafka, SCRAM-SHA-256/512 through a raw client that
//! runs RFC 5802's client side (the rdkafka test build has no OpenSSL, which librdkafka's
//! SCRAM needs; the Python interop suite covers SCRAM with librdkafka and kafka-python),
//! handshake v0 raw tokens, KIP-368 session expiry and re-authentication, the refusal of
//! anonymous clients, Describe/AlterUserScramCredentials, the ACL APIs' SECURITY_DISABLED; and,
//! through the `ferry` binary, the start-up WARN line for a Kafka listener open to anonymous
//! remote clients and `--print-config` without secrets.

use std::time::Duration;

use ferry::client::sasl::{SaslLogin, SaslMechanism, ScramClient};
use ferry::testing::TestBroker;
use kafka_protocol::messages::alter_user_scram_credentials_request::ScramCredentialUpsertion;
use kafka_protocol::messages::describe_user_scram_credentials_request::UserName;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use ring::pbkdf2;

use crate::common;
use common::kafka_raw::RawKafka;

const SASL_AUTHENTICATION_FAILED: i16 = 58;
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const ILLEGAL_SASL_STATE: i16 = 34;

/// A broker with users `alice`/`alice-secret` and `bob`/`bob-secret` that requires SASL even
/// from loopback (tests run on loopback, where anonymous clients are allowed by default).
async fn sasl_broker(reauth_ms: u64) -> TestBroker {
    TestBroker::with(move |b| {
        b.configure(move |c| {
            c.kafka.allow_anonymous = ferry::config::AnonymousAccess::Never;
            c.kafka.connections_max_reauth_ms = reauth_ms;
            c.users = ["alice", "bob"]
                .into_iter()
                .map(|name| ferry::config::UserSettings {
                    name: name.into(),
                    password: format!("{name}-secret"),
                    password_hash: String::new(),
                    tags: vec![],
                })
                .collect();
        })
    })
    .await
    .unwrap()
}

fn rdkafka_config(broker: &TestBroker, user: &str, password: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", broker.kafka_bootstrap())
        .set("security.protocol", "SASL_PLAINTEXT")
        .set("sasl.mechanisms", "PLAIN")
        .set("sasl.username", user)
        .set("sasl.password", password)
        .set("message.timeout.ms", "10000");
    c
}

#[tokio::test]
async fn rdkafka_produces_and_consumes_with_sasl_plain() {
    let broker = sasl_broker(0).await;
    let producer: FutureProducer = rdkafka_config(&broker, "alice", "alice-secret")
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::to("orders")
                .key("k")
                .payload("over SASL/PLAIN"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let consumer: BaseConsumer = rdkafka_config(&broker, "alice", "alice-secret")
        .set("group.id", "g")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["orders"]).unwrap();
    let records = tokio::task::spawn_blocking(move || common::kafka::poll_records(&consumer, 1))
        .await
        .unwrap();
    assert_eq!(records[0].payload, b"over SASL/PLAIN");
    broker.stop().await;
}

#[tokio::test]
async fn rdkafka_with_a_wrong_password_gets_nothing_through() {
    let broker = sasl_broker(0).await;
    let producer: FutureProducer = rdkafka_config(&broker, "alice", "wrong")
        .set("message.timeout.ms", "2000")
        .create()
        .unwrap();
    let sent = producer
        .send(
            FutureRecord::to("orders").key("k").payload("x"),
            Duration::from_secs(5),
        )
        .await;
    assert!(sent.is_err(), "a producer with a wrong password delivered");
    assert!(broker.core().topic("orders").is_none());
    broker.stop().await;
}

async fn handshake(client: &mut RawKafka, version: i16, mechanism: &str) -> SaslHandshakeResponse {
    client
        .call(
            ApiKey::SaslHandshake,
            version,
            &SaslHandshakeRequest::default()
                .with_mechanism(StrBytes::from_string(mechanism.into())),
        )
        .await
}

async fn authenticate(
    client: &mut RawKafka,
    version: i16,
    bytes: Vec<u8>,
) -> Option<SaslAuthenticateResponse> {
    client
        .try_call(
            ApiKey::SaslAuthenticate,
            version,
            &SaslAuthenticateRequest::default().with_auth_bytes(bytes.into()),
        )
        .await
}

async fn metadata(client: &mut RawKafka) -> Option<MetadataResponse> {
    client
        .try_call(
            ApiKey::Metadata,
            9,
            &MetadataRequest::default().with_topics(None),
        )
        .await
}

fn plain(user: &str, password: &str) -> Vec<u8> {
    format!("\0{user}\0{password}").into_bytes()
}

#[tokio::test]
async fn wrong_password_wrong_mechanism_and_anonymous_requests_are_refused() {
    let broker = sasl_broker(0).await;
    let addr = broker.kafka_addr();

    // No SASL: ApiVersions is answered, anything else closes the connection.
    let mut anonymous = RawKafka::connect(addr).await;
    let versions: ApiVersionsResponse = anonymous
        .call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default())
        .await;
    let sasl = versions
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::SaslAuthenticate as i16)
        .expect("SaslAuthenticate advertised");
    assert_eq!((sasl.min_version, sasl.max_version), (0, 2));
    assert!(
        metadata(&mut anonymous).await.is_none(),
        "anonymous Metadata answered"
    );

    let mut client = RawKafka::connect(addr).await;
    let refused = handshake(&mut client, 1, "GSSAPI").await;
    assert_eq!(refused.error_code, UNSUPPORTED_SASL_MECHANISM);
    let offered: Vec<&str> = refused.mechanisms.iter().map(|m| m.as_str()).collect();
    assert_eq!(offered, ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]);

    let mut client = RawKafka::connect(addr).await;
    assert_eq!(handshake(&mut client, 1, "PLAIN").await.error_code, 0);
    let failed = authenticate(&mut client, 2, plain("alice", "nope"))
        .await
        .unwrap();
    assert_eq!(failed.error_code, SASL_AUTHENTICATION_FAILED);
    assert!(failed
        .error_message
        .unwrap()
        .contains("Invalid username or password"));
    assert!(
        metadata(&mut client).await.is_none(),
        "connection stayed open after a failure"
    );

    // SaslAuthenticate without a handshake.
    let mut client = RawKafka::connect(addr).await;
    let out_of_order = authenticate(&mut client, 1, plain("alice", "alice-secret"))
        .await
        .unwrap();
    assert_eq!(out_of_order.error_code, ILLEGAL_SASL_STATE);

    let mut client = RawKafka::connect(addr).await;
    assert_eq!(handshake(&mut client, 1, "PLAIN").await.error_code, 0);
    let ok = authenticate(&mut client, 1, plain("alice", "alice-secret"))
        .await
        .unwrap();
    assert_eq!(ok.error_code, 0);
    assert!(metadata(&mut client).await.is_some());
    broker.stop().await;
}

#[tokio::test]
async fn handshake_v0_carries_bare_sasl_tokens() {
    let broker = sasl_broker(0).await;
    let mut client = RawKafka::connect(broker.kafka_addr()).await;
    assert_eq!(handshake(&mut client, 0, "PLAIN").await.error_code, 0);
    client.send_frame(&plain("bob", "bob-secret")).await;
    assert_eq!(client.recv_frame().await, Some(Vec::new()));
    assert!(metadata(&mut client).await.is_some());

    let mut client = RawKafka::connect(broker.kafka_addr()).await;
    assert_eq!(handshake(&mut client, 0, "PLAIN").await.error_code, 0);
    client.send_frame(&plain("bob", "alice-secret")).await;
    assert_eq!(
        client.recv_frame().await,
        None,
        "a failed v0 token must close"
    );
    broker.stop().await;
}

/// Runs a SCRAM exchange over SaslAuthenticate; `Ok` with the session lifetime, or the error.
async fn scram_login(
    client: &mut RawKafka,
    sha512: bool,
    user: &str,
    password: &str,
) -> Result<i64, i16> {
    let mechanism = if sha512 {
        "SCRAM-SHA-512"
    } else {
        "SCRAM-SHA-256"
    };
    assert_eq!(handshake(client, 1, mechanism).await.error_code, 0);
    // Ferry's own client side of SCRAM (ferry bench kafka uses it), checked here against the
    // broker's server side over the wire.
    let mut scram = ScramClient::new(&SaslLogin {
        mechanism: if sha512 {
            SaslMechanism::ScramSha512
        } else {
            SaslMechanism::ScramSha256
        },
        user: user.into(),
        password: password.into(),
    })
    .unwrap();
    let first = authenticate(client, 2, scram.client_first()).await.unwrap();
    assert_eq!(first.error_code, 0);
    let last = authenticate(client, 2, scram.client_final(&first.auth_bytes).unwrap())
        .await
        .unwrap();
    if last.error_code != 0 {
        return Err(last.error_code);
    }
    // The server proves it knows the credential too.
    scram.verify_server_final(&last.auth_bytes).unwrap();
    Ok(last.session_lifetime_ms)
}

#[tokio::test]
async fn scram_sha_256_and_512_authenticate_with_the_users_passwords() {
    let broker = sasl_broker(0).await;
    for sha512 in [false, true] {
        let mut client = RawKafka::connect(broker.kafka_addr()).await;
        assert_eq!(
            scram_login(&mut client, sha512, "alice", "alice-secret").await,
            Ok(0)
        );
        assert!(metadata(&mut client).await.is_some());

        let mut client = RawKafka::connect(broker.kafka_addr()).await;
        assert_eq!(
            scram_login(&mut client, sha512, "alice", "bob-secret").await,
            Err(SASL_AUTHENTICATION_FAILED)
        );
        assert!(metadata(&mut client).await.is_none());

        // An unknown user fails the same way, at the same step.
        let mut client = RawKafka::connect(broker.kafka_addr()).await;
        assert_eq!(
            scram_login(&mut client, sha512, "mallory", "x").await,
            Err(SASL_AUTHENTICATION_FAILED)
        );
    }
    broker.stop().await;
}

#[tokio::test]
async fn sessions_expire_unless_the_client_re_authenticates() {
    let broker = sasl_broker(600).await;
    let mut client = RawKafka::connect(broker.kafka_addr()).await;
    assert_eq!(handshake(&mut client, 1, "PLAIN").await.error_code, 0);
    let ok = authenticate(&mut client, 1, plain("alice", "alice-secret"))
        .await
        .unwrap();
    assert_eq!(ok.session_lifetime_ms, 600);

    // Re-authenticating (KIP-368) renews the session on the same connection.
    let mut renewing = RawKafka::connect(broker.kafka_addr()).await;
    assert_eq!(
        scram_login(&mut renewing, true, "bob", "bob-secret").await,
        Ok(600)
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        scram_login(&mut renewing, true, "bob", "bob-secret").await,
        Ok(600)
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        metadata(&mut renewing).await.is_some(),
        "a renewed session was refused"
    );

    // The first client did not renew: its session is over 800 ms later.
    assert!(
        metadata(&mut client).await.is_none(),
        "an expired session was served"
    );

    // Re-authentication may not switch users.
    assert_eq!(
        scram_login(&mut renewing, true, "alice", "alice-secret").await,
        Err(SASL_AUTHENTICATION_FAILED)
    );
    broker.stop().await;
}

#[tokio::test]
async fn scram_credentials_are_described_and_altered_over_kafka() {
    let broker = TestBroker::start().await.unwrap();
    // Anonymous loopback clients are allowed by default, as Kafka without an authorizer.
    let mut admin = RawKafka::connect(broker.kafka_addr()).await;
    let salt = b"a-salt-of-the-test".to_vec();
    let mut salted = vec![0u8; 64];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA512,
        8192.try_into().unwrap(),
        &salt,
        b"carol-secret",
        &mut salted,
    );
    let upsert = |name: &str, iterations: i32| {
        ScramCredentialUpsertion::default()
            .with_name(StrBytes::from_string(name.into()))
            .with_mechanism(2)
            .with_iterations(iterations)
            .with_salt(salt.clone().into())
            .with_salted_password(salted.clone().into())
    };
    let altered: AlterUserScramCredentialsResponse = admin
        .call(
            ApiKey::AlterUserScramCredentials,
            0,
            &AlterUserScramCredentialsRequest::default()
                .with_upsertions(vec![upsert("carol", 8192), upsert("dave", 100)]),
        )
        .await;
    let codes: Vec<(String, i16)> = altered
        .results
        .iter()
        .map(|r| (r.user.to_string(), r.error_code))
        .collect();
    // 93 UNACCEPTABLE_CREDENTIAL: fewer than 4096 iterations.
    assert_eq!(codes, [("carol".to_string(), 0), ("dave".to_string(), 93)]);

    let described: DescribeUserScramCredentialsResponse = admin
        .call(
            ApiKey::DescribeUserScramCredentials,
            0,
            &DescribeUserScramCredentialsRequest::default().with_users(Some(vec![
                UserName::default().with_name(StrBytes::from_static_str("carol")),
                UserName::default().with_name(StrBytes::from_static_str("dave")),
            ])),
        )
        .await;
    let carol = &described.results[0];
    assert_eq!(carol.user.as_str(), "carol");
    assert_eq!(carol.credential_infos.len(), 1);
    assert_eq!(
        (
            carol.credential_infos[0].mechanism,
            carol.credential_infos[0].iterations
        ),
        (2, 8192)
    );
    assert_eq!(
        described.results[1].error_code, 91,
        "RESOURCE_NOT_FOUND for dave"
    );

    // The credential works for SCRAM-SHA-512 (and only for it).
    let mut client = RawKafka::connect(broker.kafka_addr()).await;
    assert_eq!(
        scram_login(&mut client, true, "carol", "carol-secret").await,
        Ok(0)
    );
    let mut client = RawKafka::connect(broker.kafka_addr()).await;
    assert_eq!(
        scram_login(&mut client, false, "carol", "carol-secret").await,
        Err(SASL_AUTHENTICATION_FAILED)
    );
    broker.stop().await;
}

#[tokio::test]
async fn acl_requests_say_that_no_authorizer_is_configured() {
    use kafka_protocol::messages::create_acls_request::AclCreation;
    let broker = TestBroker::start().await.unwrap();
    let mut admin = RawKafka::connect(broker.kafka_addr()).await;
    let created: CreateAclsResponse = admin
        .call(
            ApiKey::CreateAcls,
            3,
            &CreateAclsRequest::default().with_creations(vec![AclCreation::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_static_str("orders"))
                .with_resource_pattern_type(3)
                .with_principal(StrBytes::from_static_str("User:alice"))
                .with_host(StrBytes::from_static_str("*"))
                .with_operation(3)
                .with_permission_type(3)]),
        )
        .await;
    // 54 SECURITY_DISABLED, as a Kafka broker without authorizer.class.name answers: Ferry
    // stores no ACL that nothing would enforce.
    assert_eq!(created.results.len(), 1);
    assert_eq!(created.results[0].error_code, 54);
    let described: DescribeAclsResponse = admin
        .call(ApiKey::DescribeAcls, 3, &DescribeAclsRequest::default())
        .await;
    assert_eq!(described.error_code, 54);
    broker.stop().await;
}

/// Starts `ferry serve` with `args` and `env`, and returns its log lines up to "ferry is ready"
/// (the listener lines come before it), then stops it.
fn startup_log(args: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["serve", "--data-dir"])
        .arg(dir.path())
        .args([
            "--amqp-listen",
            "127.0.0.1:0",
            "--native-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .map(common::serve::KillOnDrop)
        .expect("spawn ferry");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let ready = line.contains("ferry is ready");
            lines.push(line);
            if ready {
                break;
            }
        }
        tx.send(lines).ok();
    });
    let lines = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("ferry did not get ready within 30 s");
    child.kill().ok();
    child.wait().ok();
    lines
}

#[test]
fn a_kafka_listener_open_to_anonymous_remote_clients_is_warned_about() {
    let warning = "without authenticating (kafka.allow_anonymous = true)";
    let open = startup_log(
        &["--kafka-listen", "0.0.0.0:0"],
        &[("FERRY_KAFKA__ALLOW_ANONYMOUS", "true")],
    );
    let warned: Vec<&String> = open.iter().filter(|l| l.contains(warning)).collect();
    assert_eq!(warned.len(), 1, "{open:#?}");
    assert!(warned[0].contains("WARN"), "{warned:?}");

    // The default (anonymous from loopback only) warns about nothing.
    let default = startup_log(&["--kafka-listen", "0.0.0.0:0"], &[]);
    assert!(default.iter().any(|l| l.contains("ferry is ready")));
    assert!(!default.iter().any(|l| l.contains(warning)), "{default:#?}");
    assert!(
        default
            .iter()
            .any(|l| l.contains("anonymous from loopback only")),
        "{default:#?}"
    );
}

#[test]
fn print_config_redacts_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        "[observe]\nadmin_password = \"s3cret-admin\"\n\
         [[users]]\nname = \"app\"\npassword = \"s3cret-app\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", "--print-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(!printed.contains("s3cret"), "{printed}");
    assert!(printed.contains("name = \"app\""), "{printed}");
    assert_eq!(printed.matches("<redacted>").count(), 3, "{printed}");
}
