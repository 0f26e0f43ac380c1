//! Any bytes as an admin API request: a method, one of the API's routes with arbitrary path
//! segments (percent-encoded, so every byte string reaches the handlers), an optional query
//! string and an arbitrary JSON body. The real router runs in-process over one broker (tower
//! `oneshot`, no sockets). A handler must not panic, and every error must be the API's JSON
//! `{"error", "message"}` shape.
//!
//! Input layout: byte 0 picks the method, byte 1 the route; the rest is split at 0xFF into the
//! route's path segments, then the query string, then the body.
#![no_main]

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{header, Method, Request};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
];

/// Each `{}` takes the next path segment.
const ROUTES: &[&str] = &[
    "/api/topics",
    "/api/topics/{}",
    "/api/topics/{}/partitions",
    "/api/queues",
    "/api/queues/{}/{}",
    "/api/queues/{}/{}/contents",
    "/api/queues/{}/{}/purge",
    "/api/queues/{}/{}/messages",
    "/api/queues/{}/{}/replay",
    "/api/exchanges",
    "/api/exchanges/{}/{}",
    "/api/bindings",
    "/api/groups",
    "/api/groups/{}",
    "/api/groups/{}/reset-offsets",
    "/api/health/checks/port-listener/{}",
    "/api/health/checks/protocol-listener/{}",
    "/api/{}",
];

struct Harness {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    _broker: ferry::testing::TestBroker,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let broker = runtime
            .block_on(ferry::testing::TestBroker::start())
            .expect("broker");
        let health = ferry::observe::http::Health::new();
        health.set_core(broker.core().clone());
        health.set_ready(true);
        let router = ferry::observe::http::router(health, None, &Default::default());
        Harness {
            runtime,
            router,
            _broker: broker,
        }
    })
}

fn percent_encode(segment: &[u8]) -> String {
    let mut out = String::with_capacity(segment.len() * 3);
    for &b in segment {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Topic creation and growth are bounded elsewhere (`max_partitions`, issue 12's storage part);
/// a fuzzer asking for a million partitions would only measure the disk.
fn asks_for_many_partitions(body: &[u8]) -> bool {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    ["partitions", "count"].iter().any(|k| {
        value
            .get(k)
            .and_then(serde_json::Value::as_u64)
            .is_some_and(|n| n > 16)
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let method = METHODS[usize::from(data[0]) % METHODS.len()].clone();
    let route = ROUTES[usize::from(data[1]) % ROUTES.len()];
    let mut parts = data[2..].split(|b| *b == 0xFF);
    let mut path = String::new();
    for (i, piece) in route.split("{}").enumerate() {
        if i > 0 {
            path.push_str(&percent_encode(parts.next().unwrap_or_default()));
        }
        path.push_str(piece);
    }
    if let Some(query) = parts.next().filter(|q| !q.is_empty()) {
        path.push('?');
        path.push_str(
            &percent_encode(query)
                .replace("%3D", "=")
                .replace("%26", "&"),
        );
    }
    let body = parts.next().unwrap_or_default().to_vec();
    if route.starts_with("/api/topics") && asks_for_many_partitions(&body) {
        return;
    }
    let Ok(request) = Request::builder()
        .method(method)
        .uri(&path)
        .header(header::AUTHORIZATION, "Basic YWRtaW46YWRtaW4=")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
    else {
        return;
    };
    let h = harness();
    h.runtime.block_on(async {
        let response = h
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        if status.is_client_error() || status.is_server_error() {
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .expect("error body");
            let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{status} on {path} is not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            });
            // The health checks answer 503 in their own RabbitMQ-style shape.
            let check_failed = json["status"] == "failed" && json["reason"].is_string();
            let api_error = json["error"].is_string() && json["message"].is_string();
            assert!(check_failed || api_error, "{status} on {path}: {json}");
        }
    });
});
