//! The one user store (issue 13): users, permissions and vhosts managed through RabbitMQ's
//! management API shapes and enforced on real AMQP clients (lapin) and the admin API itself.

use ferry::testing::TestBroker;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

use crate::common;
use common::admin::{admin_call as call, admin_call_as as call_as};
use common::external_ip;

fn url(broker: &TestBroker, user: &str, password: &str, vhost: &str) -> String {
    format!(
        "amqp://{user}:{password}@{}/{}",
        broker.amqp_addr(),
        vhost.replace('/', "%2f")
    )
}

async fn amqp(
    broker: &TestBroker,
    user: &str,
    password: &str,
    vhost: &str,
) -> lapin::Result<Connection> {
    Connection::connect(
        &url(broker, user, password, vhost),
        ConnectionProperties::default(),
    )
    .await
}

async fn put_user(broker: &TestBroker, name: &str, password: &str, tags: &str) -> StatusCode {
    call(
        broker,
        Method::PUT,
        &format!("/api/users/{name}"),
        Some(json!({"password": password, "tags": tags})),
    )
    .await
    .0
}

async fn put_permission(broker: &TestBroker, vhost: &str, user: &str, c: &str, w: &str, r: &str) {
    let (status, body) = call(
        broker,
        Method::PUT,
        &format!("/api/permissions/{}/{user}", vhost.replace('/', "%2F")),
        Some(json!({"configure": c, "write": w, "read": r})),
    )
    .await;
    assert!(status.is_success(), "{status} {body}");
}

fn is_access_refused(e: &lapin::Error) -> bool {
    let text = format!("{e:?} {e}");
    text.contains("ACCESS_REFUSED") || text.contains("ACCESSREFUSED") || text.contains("403")
}

#[tokio::test]
async fn users_created_through_the_api_log_in_over_amqp_with_their_permissions() {
    let broker = TestBroker::start().await.unwrap();
    assert_eq!(
        put_user(&broker, "alice", "wonderland", "").await,
        StatusCode::CREATED
    );
    assert_eq!(
        put_user(&broker, "alice", "wonderland", "").await,
        StatusCode::NO_CONTENT
    );

    // The API never shows a clear password: RabbitMQ's hash and algorithm instead.
    let (status, user) = call(&broker, Method::GET, "/api/users/alice", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(user["hashing_algorithm"], "rabbit_password_hashing_sha256");
    assert!(!user.to_string().contains("wonderland"), "{user}");
    assert_eq!(
        user["scram_mechanisms"],
        json!(["SCRAM-SHA-256", "SCRAM-SHA-512"])
    );

    // A new user has no permissions, so it cannot open the vhost (RabbitMQ's 530).
    let refused = amqp(&broker, "alice", "wonderland", "/").await;
    assert!(refused.is_err(), "opened a vhost without permissions");
    let wrong = amqp(&broker, "alice", "wrong", "/").await;
    assert!(wrong.is_err());

    put_permission(&broker, "/", "alice", "^alice\\.", ".*", ".*").await;
    let conn = amqp(&broker, "alice", "wonderland", "/").await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "alice.jobs".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    // The configure pattern does not cover this name: 403 on the channel.
    let err = ch
        .queue_declare(
            "bob.jobs".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert!(is_access_refused(&err), "{err:?}");

    let (_, perms) = call(&broker, Method::GET, "/api/users/alice/permissions", None).await;
    assert_eq!(perms[0]["configure"], "^alice\\.");

    assert_eq!(
        call(&broker, Method::DELETE, "/api/users/alice", None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert!(amqp(&broker, "alice", "wonderland", "/").await.is_err());
    assert_eq!(
        call(&broker, Method::DELETE, "/api/users/alice", None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_revoked_write_permission_refuses_the_next_publish_with_403() {
    let broker = TestBroker::start().await.unwrap();
    put_user(&broker, "svc", "pw", "").await;
    put_permission(&broker, "/", "svc", ".*", ".*", ".*").await;
    let conn = amqp(&broker, "svc", "pw", "/").await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch.queue_declare(
        "work".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let confirm = ch
        .basic_publish(
            "".into(),
            "work".into(),
            BasicPublishOptions::default(),
            b"one",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());

    // Revoke write on the connection's vhost while it stays open.
    put_permission(&broker, "/", "svc", ".*", "^$", ".*").await;
    let outcome = match ch
        .basic_publish(
            "".into(),
            "work".into(),
            BasicPublishOptions::default(),
            b"two",
            BasicProperties::default(),
        )
        .await
    {
        Ok(pending) => pending.await.map(|_| ()),
        Err(e) => Err(e),
    };
    let err = outcome.expect_err("publish after the revoke was accepted");
    assert!(is_access_refused(&err), "{err:?}");
    assert!(!ch.status().connected());

    // Only the first message reached the queue.
    let (_, q) = call(&broker, Method::GET, "/api/queues/%2F/work", None).await;
    assert_eq!(q["ready"], 1, "{q}");
    broker.stop().await;
}

#[tokio::test]
async fn admin_api_tags_decide_what_a_user_may_do() {
    let broker = TestBroker::start().await.unwrap();
    put_user(&broker, "watcher", "pw", "monitoring").await;
    put_user(&broker, "operator", "pw", "management").await;
    put_user(&broker, "worker", "pw", "").await;

    let get = |u: &'static str| {
        let broker = &broker;
        async move {
            call_as(broker, u, "pw", Method::GET, "/api/queues", None)
                .await
                .0
        }
    };
    assert_eq!(get("watcher").await, StatusCode::OK);
    assert_eq!(get("operator").await, StatusCode::OK);
    // No management tag: the admin API is closed to it, as in RabbitMQ.
    assert_eq!(get("worker").await, StatusCode::UNAUTHORIZED);

    let declare = |u: &'static str| {
        let broker = &broker;
        async move {
            call_as(
                broker,
                u,
                "pw",
                Method::PUT,
                "/api/queues/%2F/q",
                Some(json!({})),
            )
            .await
            .0
        }
    };
    assert_eq!(declare("watcher").await, StatusCode::FORBIDDEN);
    // A management user works in the vhosts it has permissions in (RabbitMQ's rule).
    assert_eq!(declare("operator").await, StatusCode::FORBIDDEN);
    put_permission(&broker, "/", "operator", ".*", ".*", ".*").await;
    assert!(declare("operator").await.is_success());

    // Users and permissions need administrator.
    let (status, _) = call_as(&broker, "operator", "pw", Method::GET, "/api/users", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = call_as(
        &broker,
        "operator",
        "pw",
        Method::PUT,
        "/api/users/mallory",
        Some(json!({"password": "x", "tags": "administrator"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        call(&broker, Method::GET, "/api/users/mallory", None)
            .await
            .0
            == StatusCode::NOT_FOUND
    );
    broker.stop().await;
}

#[tokio::test]
async fn vhosts_are_created_and_deleted_at_run_time() {
    let broker = TestBroker::start().await.unwrap();
    assert!(amqp(&broker, "guest", "guest", "staging").await.is_err());
    let (status, _) = call(
        &broker,
        Method::PUT,
        "/api/vhosts/staging",
        Some(json!({"description": "pre-production"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    // The creator (admin) gets full permissions, as RabbitMQ's API grants; guest gets none.
    let (_, perm) = call(&broker, Method::GET, "/api/permissions/staging/admin", None).await;
    assert_eq!(perm["write"], ".*");
    assert!(amqp(&broker, "guest", "guest", "staging").await.is_err());
    put_permission(&broker, "staging", "guest", ".*", ".*", ".*").await;
    let conn = amqp(&broker, "guest", "guest", "staging").await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "jobs".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    conn.close(200, "bye".into()).await.unwrap();

    let (_, vhosts) = call(&broker, Method::GET, "/api/vhosts", None).await;
    let names: Vec<&str> = vhosts
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(names, ["/", "staging"]);

    // The configured vhost cannot be deleted at run time; the created one can, with its queues.
    let (status, _) = call(&broker, Method::DELETE, "/api/vhosts/%2F", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call(&broker, Method::DELETE, "/api/vhosts/staging", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(amqp(&broker, "guest", "guest", "staging").await.is_err());
    let (_, queues) = call(&broker, Method::GET, "/api/queues", None).await;
    assert!(
        queues
            .as_array()
            .unwrap()
            .iter()
            .all(|q| q["vhost"] != "staging"),
        "{queues}"
    );
    assert_eq!(
        call(&broker, Method::GET, "/api/permissions/staging/guest", None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    broker.stop().await;
}

#[tokio::test]
async fn configured_users_and_run_time_users_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    // RabbitMQ's `password_hash` of "test12" (salt 908DC60A), as a definitions export has it.
    let hash = "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR";
    let start = |p: std::path::PathBuf| async move {
        TestBroker::with(move |b| {
            b.data_dir(p).configure(|c| {
                c.users = vec![
                    ferry::config::UserSettings {
                        name: "ops".into(),
                        password: "ops-secret".into(),
                        password_hash: String::new(),
                        tags: vec!["administrator".into()],
                    },
                    ferry::config::UserSettings {
                        name: "legacy".into(),
                        password: String::new(),
                        password_hash: hash.into(),
                        tags: vec![],
                    },
                ]
            })
        })
        .await
        .unwrap()
    };
    let broker = start(path.clone()).await;
    // `[[users]]` replaces the default users.
    let (status, _) = call(&broker, Method::GET, "/api/users", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, users) = call_as(
        &broker,
        "ops",
        "ops-secret",
        Method::GET,
        "/api/users",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["name"].as_str())
        .collect();
    assert_eq!(names, ["legacy", "ops"]);
    amqp(&broker, "legacy", "test12", "/").await.unwrap();
    assert!(amqp(&broker, "guest", "guest", "/").await.is_err());

    let (status, _) = call_as(
        &broker,
        "ops",
        "ops-secret",
        Method::PUT,
        "/api/users/runtime",
        Some(json!({"password": "rt", "tags": ""})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    broker.stop().await;

    let broker = start(path).await;
    let (_, users) = call_as(
        &broker,
        "ops",
        "ops-secret",
        Method::GET,
        "/api/users",
        None,
    )
    .await;
    let names: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["name"].as_str())
        .collect();
    assert_eq!(names, ["legacy", "ops", "runtime"]);
    broker.stop().await;
}

#[tokio::test]
async fn metrics_can_require_a_monitoring_user() {
    let broker = TestBroker::with(|b| b.configure(|c| c.observe.metrics_auth = true))
        .await
        .unwrap();
    let anonymous = Client::new()
        .get(format!("{}/metrics", broker.http_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    put_user(&broker, "prometheus", "scrape", "monitoring").await;
    let scraper = Client::new()
        .get(format!("{}/metrics", broker.http_url()))
        .basic_auth("prometheus", Some("scrape"))
        .send()
        .await
        .unwrap();
    assert_ne!(scraper.status(), StatusCode::UNAUTHORIZED);
    assert_ne!(scraper.status(), StatusCode::FORBIDDEN);
    broker.stop().await;
}

#[tokio::test]
async fn default_users_work_from_loopback_only_until_their_password_changes() {
    let Some(ip) = external_ip() else {
        eprintln!("no non-loopback interface; skipping");
        return;
    };
    let broker = TestBroker::with(|b| b.http_listen("0.0.0.0:0").amqp_listen("0.0.0.0:0"))
        .await
        .unwrap();
    let remote_http = format!("http://{ip}:{}", broker.http_addr().port());
    let remote_get = |user: &'static str, pw: &'static str| {
        let url = format!("{remote_http}/api/overview");
        async move {
            Client::new()
                .get(url.replace("/api/overview", "/api/vhosts"))
                .basic_auth(user, Some(pw))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(remote_get("admin", "admin").await, StatusCode::UNAUTHORIZED);
    let remote_amqp = format!("amqp://guest:guest@{ip}:{}/%2f", broker.amqp_addr().port());
    assert!(
        Connection::connect(&remote_amqp, ConnectionProperties::default())
            .await
            .is_err()
    );
    // From loopback both work.
    assert_eq!(
        call(&broker, Method::GET, "/api/vhosts", None).await.0,
        StatusCode::OK
    );
    amqp(&broker, "guest", "guest", "/").await.unwrap();

    // A real password lifts the restriction (the admin changes its own password last).
    put_user(&broker, "admin", "a-long-admin-password", "administrator").await;
    assert_eq!(
        remote_get("admin", "a-long-admin-password").await,
        StatusCode::OK
    );
    broker.stop().await;
}

/// Runs `ferry ARGS` against the broker's admin API as admin/admin, `stdin` piped in.
async fn ferry_cli(broker: &TestBroker, args: &[&str], stdin: &str) -> (bool, String, String) {
    common::admin::ferry_cli_as(broker, "admin", "admin", args, stdin).await
}

#[tokio::test]
async fn cli_manages_users_permissions_and_vhosts() {
    let broker = TestBroker::start().await.unwrap();
    // The password comes from stdin, so it never shows in `ps`.
    let (ok, out, err) = ferry_cli(
        &broker,
        &["user", "add", "carol", "--tags", "management"],
        "c-pass\n",
    )
    .await;
    assert!(ok, "{out}{err}");
    let (ok, out, err) = ferry_cli(&broker, &["vhost", "add", "team-a"], "").await;
    assert!(ok, "{out}{err}");
    let (ok, out, err) = ferry_cli(
        &broker,
        &[
            "permission",
            "set",
            "carol",
            "^carol-",
            ".*",
            ".*",
            "--vhost",
            "team-a",
        ],
        "",
    )
    .await;
    assert!(ok, "{out}{err}");

    let conn = amqp(&broker, "carol", "c-pass", "team-a").await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "carol-q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    let (ok, out, _) = ferry_cli(&broker, &["user", "list"], "").await;
    assert!(ok);
    let carol = out.lines().find(|l| l.starts_with("carol")).expect(&out);
    assert!(
        carol.contains("management") && carol.contains("SCRAM-SHA-512"),
        "{out}"
    );
    let (ok, out, _) = ferry_cli(
        &broker,
        &["permission", "list", "--vhost", "team-a", "--json"],
        "",
    )
    .await;
    assert!(ok);
    let perms: Value = serde_json::from_str(&out).unwrap();
    let users: Vec<&str> = perms
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["user"].as_str())
        .collect();
    assert_eq!(users, ["admin", "carol"]);

    let (ok, out, err) = ferry_cli(&broker, &["user", "passwd", "carol"], "new-pass\n").await;
    assert!(ok, "{out}{err}");
    assert!(amqp(&broker, "carol", "c-pass", "team-a").await.is_err());
    amqp(&broker, "carol", "new-pass", "team-a").await.unwrap();

    let (ok, _, err) = ferry_cli(&broker, &["user", "passwd", "nobody"], "x\n").await;
    assert!(!ok);
    assert!(err.contains("not found"), "{err}");

    let (ok, out, err) = ferry_cli(&broker, &["vhost", "delete", "team-a"], "").await;
    assert!(ok, "{out}{err}");
    let (ok, out, _) = ferry_cli(&broker, &["vhost", "list"], "").await;
    assert!(ok && !out.contains("team-a"), "{out}");
    let (ok, out, err) = ferry_cli(&broker, &["user", "delete", "carol"], "").await;
    assert!(ok, "{out}{err}");
    assert!(amqp(&broker, "carol", "new-pass", "/").await.is_err());
    broker.stop().await;
}

/// `observe.allow_anonymous`, the admin API's counterpart of `kafka.allow_anonymous`: off by
/// default (no credentials, 401), `"loopback"` lets requests without credentials in from this
/// machine only, `true` from anywhere.
#[tokio::test]
async fn admin_api_anonymous_access_follows_observe_allow_anonymous() {
    use ferry::config::AnonymousAccess;
    let no_credentials = |url: String| async move {
        Client::new()
            .get(format!("{url}/api/vhosts"))
            .send()
            .await
            .unwrap()
            .status()
    };
    let default = TestBroker::start().await.unwrap();
    assert_eq!(
        no_credentials(default.http_url()).await,
        StatusCode::UNAUTHORIZED
    );
    default.stop().await;

    let ip = external_ip();
    for (setting, from_remote) in [
        (AnonymousAccess::Loopback, StatusCode::UNAUTHORIZED),
        (AnonymousAccess::Always, StatusCode::OK),
    ] {
        let broker = TestBroker::with(move |b| {
            b.http_listen("0.0.0.0:0")
                .configure(move |c| c.observe.allow_anonymous = setting)
        })
        .await
        .unwrap();
        let local = format!("http://127.0.0.1:{}", broker.http_addr().port());
        assert_eq!(
            no_credentials(local.clone()).await,
            StatusCode::OK,
            "{setting:?}"
        );
        // Anonymous is an administrator: it may create users.
        let created = Client::new()
            .put(format!("{local}/api/users/made-anonymously"))
            .json(&json!({"password": "pw", "tags": ""}))
            .send()
            .await
            .unwrap()
            .status();
        assert!(created.is_success(), "{setting:?}: {created}");
        match ip {
            Some(ip) => {
                let remote = format!("http://{ip}:{}", broker.http_addr().port());
                assert_eq!(no_credentials(remote).await, from_remote, "{setting:?}");
            }
            None => eprintln!("no non-loopback interface; remote half skipped"),
        }
        broker.stop().await;
    }
}

/// RabbitMQ checks configure on the name it generates for a server-named queue: a user whose
/// configure pattern does not cover `amq.gen-…` cannot declare one (403), and one whose
/// pattern does gets the generated name.
#[tokio::test]
async fn server_named_queues_need_configure_on_their_generated_name() {
    let broker = TestBroker::start().await.unwrap();
    assert!(put_user(&broker, "app", "app-pw", "").await.is_success());
    put_permission(&broker, "/", "app", "^app\\.", ".*", ".*").await;
    let conn = amqp(&broker, "app", "app-pw", "/").await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "app.named".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let refused = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert!(is_access_refused(&refused), "{refused:?}");

    put_permission(&broker, "/", "app", "^(app\\.|amq\\.gen-)", ".*", ".*").await;
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert!(q.name().as_str().starts_with("amq.gen-"), "{}", q.name());
    // A client may still not pick an amq.gen- name itself (reserved prefix).
    let own = ch
        .queue_declare(
            "amq.gen-mine".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert!(is_access_refused(&own), "{own:?}");
    conn.close(200, "bye".into()).await.ok();
    broker.stop().await;
}

/// RabbitMQ's `management` tag sees only the vhosts its user has permissions in: lists leave
/// the others out, paths naming them get 403; `monitoring` (and `administrator`) see all.
#[tokio::test]
async fn management_users_see_only_the_vhosts_they_have_permissions_in() {
    let broker = TestBroker::start().await.unwrap();
    let (status, _) = call(&broker, Method::PUT, "/api/vhosts/staging", Some(json!({}))).await;
    assert!(status.is_success(), "{status}");
    for (vhost, queue) in [("%2F", "orders"), ("staging", "secret")] {
        let path = format!("/api/queues/{vhost}/{queue}");
        let (status, body) = call(&broker, Method::PUT, &path, Some(json!({}))).await;
        assert!(status.is_success(), "{status} {body}");
    }
    put_user(&broker, "operator", "pw", "management").await;
    put_user(&broker, "watcher", "pw", "monitoring").await;
    put_permission(&broker, "/", "operator", ".*", ".*", ".*").await;
    // An AMQP connection in each vhost (admin created staging, so it may open it).
    let root = amqp(&broker, "guest", "guest", "/").await.unwrap();
    let staging = amqp(&broker, "admin", "admin", "staging").await.unwrap();

    let get = |user: &'static str, path: &'static str| {
        let broker = &broker;
        async move { call_as(broker, user, "pw", Method::GET, path, None).await }
    };
    let vhosts_of = |list: &Value, key: &str| -> Vec<String> {
        let mut seen: Vec<String> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o[key].as_str().unwrap_or("-").to_string())
            .collect();
        seen.sort();
        seen.dedup();
        seen
    };
    let (status, queues) = get("operator", "/api/queues").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(vhosts_of(&queues, "vhost"), ["/"]);
    let (_, exchanges) = get("operator", "/api/exchanges").await;
    assert_eq!(vhosts_of(&exchanges, "vhost"), ["/"]);
    let (_, vhosts) = get("operator", "/api/vhosts").await;
    assert_eq!(vhosts_of(&vhosts, "name"), ["/"]);
    let (_, connections) = get("operator", "/api/connections").await;
    assert_eq!(vhosts_of(&connections, "vhost"), ["/"]);
    for path in [
        "/api/queues/staging/secret",
        "/api/vhosts/staging",
        "/api/exchanges/staging/amq.direct",
    ] {
        let (status, body) = get("operator", path).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
    }
    let (status, _) = call_as(
        &broker,
        "operator",
        "pw",
        Method::DELETE,
        "/api/queues/staging/secret",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(broker
        .core()
        .router()
        .existing_queue("staging", "secret")
        .is_ok());

    let (_, queues) = get("watcher", "/api/queues").await;
    assert_eq!(vhosts_of(&queues, "vhost"), ["/", "staging"]);
    let (_, connections) = get("watcher", "/api/connections").await;
    assert_eq!(vhosts_of(&connections, "vhost"), ["/", "staging"]);
    let (status, _) = get("watcher", "/api/queues/staging/secret").await;
    assert_eq!(status, StatusCode::OK);
    root.close(200, "bye".into()).await.ok();
    staging.close(200, "bye".into()).await.ok();
    broker.stop().await;
}
