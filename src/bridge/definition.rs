//! The bridge definition: RabbitMQ's dynamic shovel JSON (`src-uri`, `src-queue`, `dest-uri`,
//! `ack-mode`, ...) extended with Kafka sources and destinations, parsed once into typed
//! values the runner can trust.
//!
//! A side is Ferry itself when its URI is `ferry:`, omitted, or RabbitMQ's "this node" form
//! `amqp://` with no host (so shovel JSON written for a RabbitMQ node keeps its meaning); an
//! `amqp://host...` URI (or a list of them, tried in order, for a cluster) is a remote AMQP
//! 0-9-1 broker; `kafka://host:port,host:port?key=value&...` is a remote Kafka cluster whose
//! query pairs are passed to librdkafka as they are (`security.protocol`, `sasl.mechanism`,
//! `sasl.username`, ...). Unknown keys are refused by name, so a typo never silently turns
//! into a default.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

/// Where one side of a bridge lives.
#[derive(Clone, Debug, PartialEq)]
pub enum Endpoint {
    /// This broker, in the given vhost.
    Ferry { vhost: String },
    /// A remote AMQP 0-9-1 broker: URIs tried in order.
    Amqp { uris: Vec<String> },
    /// A remote Kafka cluster.
    Kafka {
        bootstrap: String,
        options: BTreeMap<String, String>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum SourceSpec {
    Queue(String),
    /// An exchange: the bridge consumes a queue of its own bound with `key` (remote: an
    /// exclusive server-named queue, as RabbitMQ's shovel; Ferry: a durable queue that lives
    /// as long as the bridge, see `ferry.rs`).
    Exchange {
        exchange: String,
        key: String,
    },
    /// A Kafka topic (remote) or a Ferry topic, read as consumer group `group`.
    Topic {
        topic: String,
        group: String,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum DestSpec {
    Queue(String),
    /// An exchange; `key` overrides the message's own routing key.
    Exchange {
        exchange: String,
        key: Option<String>,
    },
    Topic(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckMode {
    /// Settle at the source only once the destination confirmed (publisher confirms,
    /// Kafka acks=all, a durable Ferry append). No loss.
    OnConfirm,
    /// Settle once the message was handed to the destination connection.
    OnPublish,
    /// The source settles at delivery; a crash loses what was in flight.
    NoAck,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteAfter {
    Never,
    /// Stop after the messages the source queue held when the bridge started.
    QueueLength,
    Count(u64),
}

/// One validated bridge.
#[derive(Clone, Debug, PartialEq)]
pub struct Definition {
    pub vhost: String,
    pub name: String,
    pub src: Endpoint,
    pub source: SourceSpec,
    pub dest: Endpoint,
    pub destination: DestSpec,
    pub ack_mode: AckMode,
    pub prefetch: u16,
    pub reconnect_delay: Duration,
    pub delete_after: DeleteAfter,
    pub add_forward_headers: bool,
    /// Most bridges a message may already have crossed (its `x-ferry-bridged` list) and
    /// still be forwarded; like federation's `max-hops`, default 1.
    pub max_hops: u32,
}

/// The JSON keys, RabbitMQ's names. `src-protocol`/`dest-protocol` are accepted for
/// compatibility (`amqp091`, `kafka`, `ferry`) and checked against the URI.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Raw {
    src_uri: Option<Uris>,
    src_protocol: Option<String>,
    src_queue: Option<String>,
    src_exchange: Option<String>,
    src_exchange_key: Option<String>,
    src_topic: Option<String>,
    src_group: Option<String>,
    src_prefetch_count: Option<u32>,
    src_delete_after: Option<DeleteAfterRaw>,
    dest_uri: Option<Uris>,
    dest_protocol: Option<String>,
    dest_queue: Option<String>,
    dest_exchange: Option<String>,
    dest_exchange_key: Option<String>,
    dest_topic: Option<String>,
    dest_add_forward_headers: Option<bool>,
    ack_mode: Option<String>,
    reconnect_delay: Option<f64>,
    max_hops: Option<u32>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Uris {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DeleteAfterRaw {
    Count(u64),
    Word(String),
}

/// RabbitMQ's default `src-prefetch-count`.
pub const DEFAULT_PREFETCH: u16 = 1000;
/// RabbitMQ's default `reconnect-delay` (seconds).
pub const DEFAULT_RECONNECT_DELAY: f64 = 5.0;

impl Definition {
    /// Parses a shovel value (the `value` object of `PUT /api/parameters/shovel/...`).
    pub fn parse(vhost: &str, name: &str, value: &Value) -> Result<Definition, String> {
        let raw: Raw = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
        let src = endpoint("src-uri", raw.src_uri, vhost)?;
        let dest = endpoint("dest-uri", raw.dest_uri, vhost)?;
        check_protocol("src-protocol", raw.src_protocol.as_deref(), &src)?;
        check_protocol("dest-protocol", raw.dest_protocol.as_deref(), &dest)?;
        let source = match (raw.src_queue, raw.src_exchange, raw.src_topic) {
            (Some(q), None, None) if !q.is_empty() => SourceSpec::Queue(q),
            (None, Some(exchange), None) => SourceSpec::Exchange {
                exchange,
                key: raw.src_exchange_key.unwrap_or_default(),
            },
            (None, None, Some(topic)) if !topic.is_empty() => SourceSpec::Topic {
                group: raw
                    .src_group
                    .unwrap_or_else(|| format!("ferry-bridge-{name}")),
                topic,
            },
            _ => {
                return Err(
                    "give exactly one of src-queue, src-exchange or src-topic (non-empty)".into(),
                )
            }
        };
        let destination = match (raw.dest_queue, raw.dest_exchange, raw.dest_topic) {
            (Some(q), None, None) if !q.is_empty() => DestSpec::Queue(q),
            (None, Some(exchange), None) => DestSpec::Exchange {
                exchange,
                key: raw.dest_exchange_key,
            },
            (None, None, Some(t)) if !t.is_empty() => DestSpec::Topic(t),
            _ => {
                return Err(
                    "give exactly one of dest-queue, dest-exchange or dest-topic (non-empty)"
                        .into(),
                )
            }
        };
        match (&src, &source) {
            (Endpoint::Kafka { .. }, SourceSpec::Topic { .. }) => {}
            (Endpoint::Kafka { .. }, _) => {
                return Err("a kafka:// source reads a topic: give src-topic".into())
            }
            (Endpoint::Amqp { .. }, SourceSpec::Topic { .. }) => {
                return Err(
                    "an amqp:// source has no topics: give src-queue or src-exchange".into(),
                )
            }
            (_, SourceSpec::Exchange { exchange, .. }) if exchange.is_empty() => {
                return Err(
                    "src-exchange must name an exchange (the default exchange takes no bindings)"
                        .into(),
                )
            }
            _ => {}
        }
        if matches!(dest, Endpoint::Kafka { .. }) && !matches!(destination, DestSpec::Topic(_)) {
            return Err("a kafka:// destination takes dest-topic".into());
        }
        if matches!(dest, Endpoint::Amqp { .. }) && matches!(destination, DestSpec::Topic(_)) {
            return Err(
                "an amqp:// destination has no topics: give dest-queue or dest-exchange".into(),
            );
        }
        let ack_mode = match raw.ack_mode.as_deref().unwrap_or("on-confirm") {
            "on-confirm" => AckMode::OnConfirm,
            "on-publish" => AckMode::OnPublish,
            "no-ack" => AckMode::NoAck,
            other => {
                return Err(format!(
                    "ack-mode '{other}' is not one of on-confirm, on-publish, no-ack"
                ))
            }
        };
        let prefetch = match raw.src_prefetch_count {
            None => DEFAULT_PREFETCH,
            Some(n) if (1..=u32::from(u16::MAX)).contains(&n) => n as u16,
            Some(n) => return Err(format!("src-prefetch-count {n} is not in 1..=65535")),
        };
        let delay = raw.reconnect_delay.unwrap_or(DEFAULT_RECONNECT_DELAY);
        if !(delay.is_finite() && (0.0..=3600.0).contains(&delay)) {
            return Err(format!(
                "reconnect-delay {delay} is not a number of seconds in 0..=3600"
            ));
        }
        let delete_after = match raw.src_delete_after {
            None => DeleteAfter::Never,
            Some(DeleteAfterRaw::Word(w)) if w == "never" => DeleteAfter::Never,
            Some(DeleteAfterRaw::Word(w)) if w == "queue-length" => DeleteAfter::QueueLength,
            Some(DeleteAfterRaw::Count(0)) => {
                return Err("src-delete-after must be at least 1".into())
            }
            Some(DeleteAfterRaw::Count(n)) => DeleteAfter::Count(n),
            Some(DeleteAfterRaw::Word(w)) => {
                return Err(format!(
                    "src-delete-after '{w}' is not never, queue-length or a count"
                ))
            }
        };
        if delete_after == DeleteAfter::QueueLength && !matches!(source, SourceSpec::Queue(_)) {
            return Err("src-delete-after queue-length needs src-queue".into());
        }
        Ok(Definition {
            vhost: vhost.to_string(),
            name: name.to_string(),
            src,
            source,
            dest,
            destination,
            ack_mode,
            prefetch,
            reconnect_delay: Duration::from_secs_f64(delay),
            delete_after,
            add_forward_headers: raw.dest_add_forward_headers.unwrap_or(false),
            max_hops: raw.max_hops.unwrap_or(1).max(1),
        })
    }
}

fn endpoint(key: &str, uris: Option<Uris>, vhost: &str) -> Result<Endpoint, String> {
    let uris = match uris {
        None => {
            return Ok(Endpoint::Ferry {
                vhost: vhost.into(),
            })
        }
        Some(Uris::One(u)) => vec![u],
        Some(Uris::Many(v)) => v,
    };
    let Some(first) = uris.first() else {
        return Err(format!("{key} is an empty list"));
    };
    if uris.len() == 1 && (first == "ferry:" || first.is_empty()) {
        return Ok(Endpoint::Ferry {
            vhost: vhost.into(),
        });
    }
    if uris.len() == 1 {
        if let Some(rest) = first.strip_prefix("amqp://") {
            // RabbitMQ's "this node" form: no host, an optional vhost path.
            if rest.is_empty() || rest.starts_with('/') {
                let path = rest.trim_start_matches('/');
                let vhost = if path.is_empty() {
                    vhost.to_string()
                } else {
                    percent_decode(path).unwrap_or_else(|| path.to_string())
                };
                return Ok(Endpoint::Ferry { vhost });
            }
        }
        if let Some(rest) = first.strip_prefix("kafka://") {
            return kafka_endpoint(key, rest);
        }
    }
    for u in &uris {
        if u.starts_with("amqps://") {
            super::amqps::parse(u).map_err(|e| format!("{key} '{}': {e}", redact(u)))?;
            continue;
        }
        if !u.starts_with("amqp://") {
            return Err(format!(
                "{key} '{}' is not ferry:, amqp://... or kafka://...",
                redact(u)
            ));
        }
        u.parse::<amq_protocol::uri::AMQPUri>()
            .map_err(|e| format!("{key} '{}' does not parse: {e}", redact(u)))?;
    }
    Ok(Endpoint::Amqp { uris })
}

fn kafka_endpoint(key: &str, rest: &str) -> Result<Endpoint, String> {
    let (hosts, query) = rest.split_once('?').unwrap_or((rest, ""));
    let hosts = hosts.trim_end_matches('/');
    if hosts.is_empty() || hosts.split(',').any(|h| !h.contains(':')) {
        return Err(format!(
            "{key}: kafka:// needs host:port[,host:port...] (got '{hosts}')"
        ));
    }
    let mut options = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("{key}: query part '{pair}' is not key=value"))?;
        let decode = |s: &str| percent_decode(s).unwrap_or_else(|| s.to_string());
        options.insert(decode(k), decode(v));
    }
    Ok(Endpoint::Kafka {
        bootstrap: hosts.to_string(),
        options,
    })
}

/// `%XX` escapes decoded (a vhost in a URI path, a value in a Kafka URI query); `None` when
/// an escape is malformed or the result is not UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn check_protocol(key: &str, protocol: Option<&str>, endpoint: &Endpoint) -> Result<(), String> {
    let Some(p) = protocol else { return Ok(()) };
    let fits = match endpoint {
        Endpoint::Ferry { .. } => matches!(p, "amqp091" | "ferry" | "kafka"),
        Endpoint::Amqp { .. } => p == "amqp091",
        Endpoint::Kafka { .. } => p == "kafka",
    };
    if fits {
        Ok(())
    } else {
        Err(format!("{key} '{p}' does not match the URI"))
    }
}

/// A URI with its password replaced, for status views and messages.
pub fn redact(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_string();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            let secret = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{secret}@{host}{tail}")
        }
        None => uri.to_string(),
    }
}

impl Endpoint {
    /// The URI shown in status views (passwords redacted).
    pub fn display(&self) -> String {
        match self {
            Endpoint::Ferry { .. } => "ferry:".into(),
            Endpoint::Amqp { uris } => uris
                .iter()
                .map(|u| redact(u.split_once('?').map_or(u, |(base, _)| base)))
                .collect::<Vec<_>>()
                .join(","),
            Endpoint::Kafka { bootstrap, .. } => format!("kafka://{bootstrap}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rabbitmq_shovel_json_parses_with_rabbitmq_defaults() {
        let d = Definition::parse(
            "/",
            "s1",
            &json!({"src-protocol": "amqp091", "src-uri": "amqp://", "src-queue": "orders",
                    "dest-protocol": "amqp091", "dest-uri": "amqp://u:p@rabbit:5672/%2F",
                    "dest-exchange": "orders", "dest-exchange-key": "new"}),
        )
        .unwrap();
        assert_eq!(d.src, Endpoint::Ferry { vhost: "/".into() });
        assert_eq!(d.source, SourceSpec::Queue("orders".into()));
        assert!(matches!(d.dest, Endpoint::Amqp { .. }));
        assert_eq!(d.ack_mode, AckMode::OnConfirm);
        assert_eq!(d.prefetch, DEFAULT_PREFETCH);
        assert_eq!(d.reconnect_delay, Duration::from_secs(5));
        assert_eq!(d.delete_after, DeleteAfter::Never);
        assert_eq!(d.dest.display(), "amqp://u:***@rabbit:5672/%2F");
    }

    #[test]
    fn kafka_keys_and_bad_definitions() {
        let d = Definition::parse(
            "/",
            "k",
            &json!({"src-uri": "kafka://a:9092,b:9092?security.protocol=SASL_PLAINTEXT",
                    "src-topic": "t", "dest-queue": "q", "src-delete-after": 10}),
        )
        .unwrap();
        match &d.src {
            Endpoint::Kafka { bootstrap, options } => {
                assert_eq!(bootstrap, "a:9092,b:9092");
                assert_eq!(options["security.protocol"], "SASL_PLAINTEXT");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            d.source,
            SourceSpec::Topic {
                topic: "t".into(),
                group: "ferry-bridge-k".into()
            }
        );
        assert_eq!(d.delete_after, DeleteAfter::Count(10));
        let local = Definition::parse(
            "/",
            "t",
            &json!({"src-topic": "clicks", "dest-uri": "amqps://u:p@h:5671/%2f?cacertfile=%2Fca.pem",
                    "dest-queue": "q"}),
        )
        .unwrap();
        assert_eq!(local.src, Endpoint::Ferry { vhost: "/".into() });
        assert_eq!(local.dest.display(), "amqps://u:***@h:5671/%2f");
        for (bad, says) in [
            (
                json!({"src-queue": "a", "dest-queue": "b", "ack-mode": "sometimes"}),
                "ack-mode",
            ),
            (
                json!({"src-queue": "a", "src-topic": "t", "dest-queue": "b"}),
                "exactly one",
            ),
            (
                json!({"src-queue": "a", "dest-queue": "b", "src-prefetch": 3}),
                "unknown field",
            ),
            (
                json!({"src-queue": "a", "dest-uri": "kafka://h:1", "dest-queue": "b"}),
                "dest-topic",
            ),
            (
                json!({"src-uri": "http://x", "src-queue": "a", "dest-queue": "b"}),
                "not ferry:",
            ),
            (
                json!({"src-queue": "a", "dest-queue": "b", "reconnect-delay": -1}),
                "reconnect-delay",
            ),
            (
                json!({"src-exchange": "", "dest-queue": "b"}),
                "default exchange",
            ),
            (
                json!({"src-queue": "a", "dest-uri": "amqps://h?verify=sometimes",
                       "dest-queue": "b"}),
                "verify",
            ),
        ] {
            let e = Definition::parse("/", "x", &bad).unwrap_err();
            assert!(e.contains(says), "{bad} -> {e}");
        }
    }
}
