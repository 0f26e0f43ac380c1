//! The operator's command line: `ferry topic|queue|exchange|group|dlq` over the admin HTTP API
//! (`docs/admin-api.yaml`), and `ferry produce|consume` over the Kafka protocol ([`kcat`]).
//!
//! Admin subcommands are thin: each is one or a few API calls through the small client in
//! [`http`], printed as an aligned table, or with `--json` as the API's own JSON so scripts
//! see exactly what the API documents. Errors say what to do next (start the broker, fix
//! --admin-url, pass credentials, check a name). The few things the API does not answer in one
//! call are composed here: `dlq list` (which queues are dead-letter targets) and `dlq replay`
//! (in chunks, so a terminal shows progress).

pub mod commands;
pub mod http;
pub mod kcat;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use self::commands::*;
use self::http::{segment, Client};

/// Why an admin command failed. Every message says what to try next.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(
        "cannot reach the admin API at {url}: {reason} — is `ferry serve` running? set \
         --admin-url (or FERRY_ADMIN_URL) to its HTTP listener"
    )]
    Unreachable { url: String, reason: String },
    #[error(
        "the admin API at {url} refused the credentials — pass --user/--password (or set \
         FERRY_ADMIN_USER/FERRY_ADMIN_PASSWORD) to the server's observe.admin_user/admin_password"
    )]
    Unauthorized { url: String },
    #[error("{message} (HTTP {status}){}", hint(*status))]
    Api { status: u16, message: String },
    #[error("{0}")]
    Protocol(String),
    #[error("{0}")]
    Usage(String),
    /// Boxed: the Kafka client's error is large and rare.
    #[error(transparent)]
    Kafka(Box<crate::client::ClientError>),
    #[error("{0}")]
    Io(String),
}

impl From<crate::client::ClientError> for CliError {
    fn from(e: crate::client::ClientError) -> Self {
        CliError::Kafka(Box::new(e))
    }
}

fn hint(status: u16) -> &'static str {
    match status {
        404 => " — check the name with the matching `list` command",
        409 => " — it already exists with other settings, or is in use",
        403 => " — the admin API is disabled or the name is reserved",
        503 => " — the broker is still starting or is shutting down; retry shortly",
        _ => "",
    }
}

/// `topic create` of a name that exists: fine with --if-not-exists (like kafka-topics), else an
/// error that says what exists and why it may have appeared (Kafka clients auto-create topics).
fn topic_exists(
    name: &str,
    existing: &Value,
    if_not_exists: bool,
    json: bool,
) -> Result<(), CliError> {
    let count = cell(&existing["partition_count"]);
    if if_not_exists {
        if json {
            print_json(existing);
        } else {
            println!("topic {name} already exists with {count} partition(s); left as it is");
        }
        return Ok(());
    }
    Err(CliError::Usage(format!(
        "topic `{name}` already exists with {count} partition(s) (Kafka clients create a topic \
         on first use while kafka.auto_create_topics is on) — inspect it with `ferry topic \
         describe {name}`, accept it with --if-not-exists, or delete it first with `ferry topic \
         delete {name}`"
    )))
}

/// `group describe` as text: one row per partition the group has a committed offset for or a
/// member is assigned, as kafka-consumer-groups shows them. A partition without a committed
/// offset shows `-` as COMMITTED and counts its lag from the log start: that is what a consumer
/// with `auto.offset.reset=earliest` still has to read (with `latest` it would skip it), so
/// unread records never hide behind a total lag of 0.
async fn describe_group(c: &Client, v: &Value) -> Result<String, CliError> {
    // Which member owns each partition, from the decoded assignments.
    let mut owner: BTreeMap<(String, i64), String> = BTreeMap::new();
    for m in arr(&v["members"]) {
        for a in arr(&m["assignment"]) {
            for p in arr(&a["partitions"]) {
                owner.insert(
                    (cell(&a["topic"]), p.as_i64().unwrap_or(-1)),
                    format!("{} ({})", cell(&m["client_id"]), cell(&m["client_host"])),
                );
            }
        }
    }
    // (committed, end, lag) per partition; committed offsets first, then the uncommitted rest.
    let mut rows: BTreeMap<(String, i64), (String, String, Option<i64>)> = BTreeMap::new();
    for o in arr(&v["offsets"]) {
        let key = (cell(&o["topic"]), o["partition"].as_i64().unwrap_or(-1));
        let row = (
            cell(&o["committed_offset"]),
            cell(&o["high_watermark"]),
            o["lag"].as_i64(),
        );
        rows.insert(key, row);
    }
    let mut topics: BTreeMap<String, Value> = BTreeMap::new();
    for (topic, partition) in owner.keys() {
        if rows.contains_key(&(topic.clone(), *partition)) {
            continue;
        }
        if !topics.contains_key(topic) {
            let t = c
                .call("GET", &format!("/api/topics/{}", segment(topic)), None)
                .await?;
            topics.insert(topic.clone(), t);
        }
        let found = arr(&topics[topic]["partitions"])
            .iter()
            .find(|p| p["partition"].as_i64() == Some(*partition));
        let (end, lag) = match found {
            Some(p) => {
                let start = p["start_offset"].as_i64().unwrap_or(0);
                let end = p["end_offset"].as_i64().unwrap_or(start);
                (end.to_string(), Some(end - start))
            }
            None => ("-".into(), None),
        };
        rows.insert((topic.clone(), *partition), ("-".into(), end, lag));
    }
    let total: i64 = rows.values().filter_map(|r| r.2).sum();
    let mut out = format!(
        "group {} is {} with {} member(s), total lag {total}\n\n",
        cell(&v["group_id"]),
        cell(&v["state"]),
        arr(&v["members"]).len(),
    );
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|((topic, partition), (committed, end, lag))| {
            let consumer = owner
                .get(&(topic.clone(), partition))
                .cloned()
                .unwrap_or_else(|| "-".into());
            let lag = lag.map_or_else(|| "-".into(), |l| l.to_string());
            vec![topic, partition.to_string(), committed, end, lag, consumer]
        })
        .collect();
    out.push_str(&table(
        &["TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "CONSUMER"],
        &rows,
    ));
    Ok(out)
}

/// Runs an admin subcommand to completion on a small runtime of its own.
pub fn run_blocking<F>(f: F) -> Result<(), CliError>
where
    F: std::future::Future<Output = Result<(), CliError>>,
{
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Io(format!("cannot start the async runtime: {e}")))?
        .block_on(f)
}

fn client(conn: &AdminConn) -> Result<Client, CliError> {
    Client::new(&conn.admin_url, &conn.user, &conn.password)
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

/// Left-aligned columns, two spaces apart, with a header row.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(c);
                s.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// A JSON value as a table cell: strings bare, null as `-`.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// `KEY=VALUE` pairs; values that parse as JSON (numbers, booleans) keep that type when
/// `typed`.
fn pairs(items: &[String], what: &str, typed: bool) -> Result<Map<String, Value>, CliError> {
    let mut m = Map::new();
    for item in items {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("{what} `{item}` must look like KEY=VALUE")))?;
        let value = if typed {
            serde_json::from_str::<Value>(v)
                .ok()
                .filter(|j| j.is_number() || j.is_boolean())
                .unwrap_or_else(|| Value::String(v.to_string()))
        } else {
            Value::String(v.to_string())
        };
        m.insert(k.to_string(), value);
    }
    Ok(m)
}

fn queue_path(vhost: &str, name: &str) -> String {
    format!("/api/queues/{}/{}", segment(vhost), segment(name))
}

// --- topics -------------------------------------------------------------------------------------

pub async fn topic(a: TopicArgs) -> Result<(), CliError> {
    let c = client(&a.conn)?;
    let json = a.conn.json;
    match a.command {
        TopicCommand::List => {
            let v = c.call("GET", "/api/topics", None).await?;
            if json {
                print_json(&v);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = arr(&v)
                .iter()
                .map(|t| {
                    let messages: i64 = arr(&t["partitions"])
                        .iter()
                        .map(|p| {
                            p["end_offset"].as_i64().unwrap_or(0)
                                - p["start_offset"].as_i64().unwrap_or(0)
                        })
                        .sum();
                    vec![
                        cell(&t["name"]),
                        cell(&t["partition_count"]),
                        messages.to_string(),
                        cell(&t["size_bytes"]),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(&["NAME", "PARTITIONS", "MESSAGES", "BYTES"], &rows)
            );
        }
        TopicCommand::Create {
            name,
            partitions,
            configs,
            if_not_exists,
        } => {
            let configs = pairs(&configs, "--config", false)?;
            let created = c
                .call(
                    "POST",
                    "/api/topics",
                    Some(&json!({"name": name, "partitions": partitions, "configs": configs})),
                )
                .await;
            let v = match created {
                Err(CliError::Api { status: 409, .. }) => {
                    let existing = c
                        .call("GET", &format!("/api/topics/{}", segment(&name)), None)
                        .await?;
                    return topic_exists(&name, &existing, if_not_exists, json);
                }
                other => other?,
            };
            if json {
                print_json(&v);
            } else {
                println!("created topic {name} with {partitions} partition(s)");
            }
        }
        TopicCommand::Delete { name } => {
            c.call("DELETE", &format!("/api/topics/{}", segment(&name)), None)
                .await?;
            if json {
                print_json(&json!({"deleted": name}));
            } else {
                println!("deleted topic {name}");
            }
        }
        TopicCommand::Describe { name } => {
            let v = c
                .call("GET", &format!("/api/topics/{}", segment(&name)), None)
                .await?;
            if json {
                print_json(&v);
                return Ok(());
            }
            println!("topic:      {}", cell(&v["name"]));
            println!("partitions: {}", cell(&v["partition_count"]));
            println!("bytes:      {}", cell(&v["size_bytes"]));
            let configs = v["configs"].as_object().cloned().unwrap_or_default();
            if configs.is_empty() {
                println!("configs:    (broker defaults)");
            } else {
                let list: Vec<String> = configs
                    .iter()
                    .map(|(k, v)| format!("{k}={}", cell(v)))
                    .collect();
                println!("configs:    {}", list.join(", "));
            }
            println!();
            let rows: Vec<Vec<String>> = arr(&v["partitions"])
                .iter()
                .map(|p| {
                    vec![
                        cell(&p["partition"]),
                        cell(&p["start_offset"]),
                        cell(&p["end_offset"]),
                        cell(&p["size_bytes"]),
                        cell(&p["segments"]),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(&["PARTITION", "START", "END", "BYTES", "SEGMENTS"], &rows)
            );
        }
    }
    Ok(())
}

// --- queues and exchanges -----------------------------------------------------------------------

fn queue_rows(queues: &[Value]) -> Vec<Vec<String>> {
    queues
        .iter()
        .map(|q| {
            vec![
                cell(&q["vhost"]),
                cell(&q["name"]),
                cell(&q["ready"]),
                cell(&q["unacked"]),
                cell(&q["consumers"]),
                if q["durable"].as_bool() == Some(true) {
                    "durable".into()
                } else {
                    "transient".into()
                },
            ]
        })
        .collect()
}

const QUEUE_HEADERS: [&str; 6] = ["VHOST", "NAME", "READY", "UNACKED", "CONSUMERS", "KIND"];

pub async fn queue(a: QueueArgs) -> Result<(), CliError> {
    let c = client(&a.conn)?;
    let json = a.conn.json;
    match a.command {
        QueueCommand::List => {
            let v = c.call("GET", "/api/queues", None).await?;
            if json {
                print_json(&v);
            } else {
                print!("{}", table(&QUEUE_HEADERS, &queue_rows(arr(&v))));
            }
        }
        QueueCommand::Create {
            name,
            vhost,
            transient,
            auto_delete,
            arguments,
        } => {
            let arguments = pairs(&arguments, "--arg", true)?;
            let v = c
                .call(
                    "PUT",
                    &queue_path(&vhost, &name),
                    Some(&json!({"durable": !transient, "auto_delete": auto_delete, "arguments": arguments})),
                )
                .await?;
            if json {
                print_json(&v);
            } else {
                println!("declared queue {name}");
            }
        }
        QueueCommand::Delete {
            name,
            vhost,
            if_unused,
            if_empty,
        } => {
            let path = format!(
                "{}?if_unused={if_unused}&if_empty={if_empty}",
                queue_path(&vhost, &name)
            );
            c.call("DELETE", &path, None).await?;
            if json {
                print_json(&json!({"deleted": name}));
            } else {
                println!("deleted queue {name}");
            }
        }
        QueueCommand::Describe { name, vhost } => {
            let v = c.call("GET", &queue_path(&vhost, &name), None).await?;
            if json {
                print_json(&v);
                return Ok(());
            }
            for key in [
                "vhost",
                "name",
                "durable",
                "auto_delete",
                "exclusive",
                "ready",
                "unacked",
                "consumers",
            ] {
                println!("{:<12}{}", format!("{key}:"), cell(&v[key]));
            }
            let args = v["arguments"].as_object().cloned().unwrap_or_default();
            let list: Vec<String> = args
                .iter()
                .map(|(k, v)| format!("{k}={}", cell(v)))
                .collect();
            println!(
                "{:<12}{}",
                "arguments:",
                if list.is_empty() {
                    "-".into()
                } else {
                    list.join(", ")
                }
            );
        }
        QueueCommand::Purge { name, vhost } => purge(&c, &vhost, &name, json).await?,
    }
    Ok(())
}

async fn purge(c: &Client, vhost: &str, name: &str, json: bool) -> Result<(), CliError> {
    let v = c
        .call("POST", &format!("{}/purge", queue_path(vhost, name)), None)
        .await?;
    if json {
        print_json(&v);
    } else {
        println!("purged {} message(s) from {name}", cell(&v["purged"]));
    }
    Ok(())
}

pub async fn exchange(a: ExchangeArgs) -> Result<(), CliError> {
    let c = client(&a.conn)?;
    let json = a.conn.json;
    match a.command {
        ExchangeCommand::List => {
            let v = c.call("GET", "/api/exchanges", None).await?;
            if json {
                print_json(&v);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = arr(&v)
                .iter()
                .map(|e| {
                    vec![
                        cell(&e["vhost"]),
                        if e["name"] == "" {
                            "(default)".into()
                        } else {
                            cell(&e["name"])
                        },
                        cell(&e["type"]),
                        if e["durable"].as_bool() == Some(true) {
                            "durable".into()
                        } else {
                            "transient".into()
                        },
                    ]
                })
                .collect();
            print!("{}", table(&["VHOST", "NAME", "TYPE", "KIND"], &rows));
        }
        ExchangeCommand::Create {
            name,
            kind,
            vhost,
            transient,
        } => {
            let v = c
                .call(
                    "PUT",
                    &format!("/api/exchanges/{}/{}", segment(&vhost), segment(&name)),
                    Some(&json!({"type": kind, "durable": !transient})),
                )
                .await?;
            if json {
                print_json(&v);
            } else {
                println!("declared {kind} exchange {name}");
            }
        }
        ExchangeCommand::Delete { name, vhost } => {
            c.call(
                "DELETE",
                &format!("/api/exchanges/{}/{}", segment(&vhost), segment(&name)),
                None,
            )
            .await?;
            if json {
                print_json(&json!({"deleted": name}));
            } else {
                println!("deleted exchange {name}");
            }
        }
        ExchangeCommand::Bind {
            exchange,
            queue,
            routing_key,
            vhost,
        } => {
            let v = c
                .call(
                    "POST",
                    "/api/bindings",
                    Some(
                        &json!({"vhost": vhost, "source": exchange, "destination": queue,
                        "destination_type": "queue", "routing_key": routing_key}),
                    ),
                )
                .await?;
            if json {
                print_json(&v);
            } else {
                println!("bound queue {queue} to exchange {exchange} with key '{routing_key}'");
            }
        }
    }
    Ok(())
}

// --- consumer groups ----------------------------------------------------------------------------

pub async fn group(a: GroupArgs) -> Result<(), CliError> {
    let c = client(&a.conn)?;
    let json = a.conn.json;
    match a.command {
        GroupCommand::List => {
            let v = c.call("GET", "/api/groups", None).await?;
            if json {
                print_json(&v);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = arr(&v)
                .iter()
                .map(|g| {
                    vec![
                        cell(&g["group_id"]),
                        cell(&g["state"]),
                        cell(&g["protocol_type"]),
                    ]
                })
                .collect();
            print!("{}", table(&["GROUP", "STATE", "PROTOCOL TYPE"], &rows));
        }
        GroupCommand::Describe { group } => {
            let v = c
                .call("GET", &format!("/api/groups/{}", segment(&group)), None)
                .await?;
            if json {
                print_json(&v);
                return Ok(());
            }
            print!("{}", describe_group(&c, &v).await?);
        }
        GroupCommand::ResetOffsets {
            group,
            topic,
            partitions,
            to_earliest,
            to_latest,
            to_offset,
            to_timestamp,
            dry_run,
        } => {
            let mut body = json!({"dry_run": dry_run});
            if let Some(t) = &topic {
                body["topic"] = json!(t);
            }
            if !partitions.is_empty() {
                body["partitions"] = json!(partitions);
            }
            match (to_earliest, to_latest, to_offset, to_timestamp) {
                (true, _, _, _) => body["to"] = json!("earliest"),
                (_, true, _, _) => body["to"] = json!("latest"),
                (_, _, Some(o), _) => {
                    body["to"] = json!("offset");
                    body["offset"] = json!(o);
                }
                (_, _, _, Some(t)) => {
                    body["to"] = json!("timestamp");
                    body["timestamp"] = json!(t);
                }
                _ => return Err(CliError::Usage(
                    "say where to: --to-earliest, --to-latest, --to-offset N or --to-timestamp MS"
                        .into(),
                )),
            }
            let v = c
                .call(
                    "POST",
                    &format!("/api/groups/{}/reset-offsets", segment(&group)),
                    Some(&body),
                )
                .await?;
            if json {
                print_json(&v);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = arr(&v["offsets"])
                .iter()
                .map(|o| {
                    vec![
                        cell(&o["topic"]),
                        cell(&o["partition"]),
                        cell(&o["previous_offset"]),
                        cell(&o["new_offset"]),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(&["TOPIC", "PARTITION", "PREVIOUS", "NEW"], &rows)
            );
            if dry_run {
                println!("(dry run: nothing committed)");
            }
        }
    }
    Ok(())
}

// --- dead-letter queues -------------------------------------------------------------------------

/// Messages a replay moves per API call, so progress shows between calls.
const REPLAY_STEP: u64 = 500;

pub async fn dlq(a: DlqArgs) -> Result<(), CliError> {
    let c = client(&a.conn)?;
    let json = a.conn.json;
    match a.command {
        DlqCommand::List => dlq_list(&c, json).await,
        DlqCommand::Browse {
            queue,
            vhost,
            count,
        } => {
            let v = c
                .call(
                    "GET",
                    &format!("{}/messages?count={count}", queue_path(&vhost, &queue)),
                    None,
                )
                .await?;
            if json {
                print_json(&v);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = arr(&v)
                .iter()
                .map(|m| {
                    let death = arr(&m["death"]).first().cloned().unwrap_or(Value::Null);
                    let mut payload = cell(&m["payload"]);
                    if payload.chars().count() > 60 {
                        payload = payload.chars().take(57).collect::<String>() + "...";
                    }
                    vec![
                        cell(&m["offset"]),
                        cell(&death["queue"]),
                        cell(&death["reason"]),
                        cell(&death["count"]),
                        cell(&m["routing_key"]),
                        payload,
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "OFFSET",
                        "DIED IN",
                        "REASON",
                        "COUNT",
                        "ROUTING KEY",
                        "PAYLOAD"
                    ],
                    &rows
                )
            );
            Ok(())
        }
        DlqCommand::Replay {
            queue,
            vhost,
            count,
            exchange,
            routing_key,
        } => dlq_replay(&c, &vhost, &queue, count, exchange, routing_key, json).await,
        DlqCommand::Purge { queue, vhost } => purge(&c, &vhost, &queue, json).await,
    }
}

/// Dead-letter queues: queues some queue's `x-dead-letter-exchange` routes to (any binding
/// of that exchange, or the `x-dead-letter-routing-key` queue for the default exchange), plus
/// queues whose oldest ready message has an x-death history.
async fn dlq_list(c: &Client, json: bool) -> Result<(), CliError> {
    let queues = c.call("GET", "/api/queues", None).await?;
    let bindings = c.call("GET", "/api/bindings", None).await?;
    // (vhost, dlq) -> source queues
    let mut sources: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for q in arr(&queues) {
        let vhost = cell(&q["vhost"]);
        let Some(dlx) = q["arguments"]["x-dead-letter-exchange"].as_str() else {
            continue;
        };
        let targets: Vec<String> = if dlx.is_empty() {
            q["arguments"]["x-dead-letter-routing-key"]
                .as_str()
                .map(|k| vec![k.to_string()])
                .unwrap_or_default()
        } else {
            arr(&bindings)
                .iter()
                .filter(|b| {
                    b["vhost"] == vhost.as_str()
                        && b["source"] == dlx
                        && b["destination_kind"] == "queue"
                })
                .map(|b| cell(&b["destination"]))
                .collect()
        };
        for t in targets {
            sources
                .entry((vhost.clone(), t))
                .or_default()
                .insert(cell(&q["name"]));
        }
    }
    let mut out = Vec::new();
    for q in arr(&queues) {
        let key = (cell(&q["vhost"]), cell(&q["name"]));
        let from = sources.get(&key).cloned().unwrap_or_default();
        let mut holds_dead = false;
        if from.is_empty() && q["ready"].as_u64().unwrap_or(0) > 0 {
            let peek = c
                .call(
                    "GET",
                    &format!("{}/messages?count=1", queue_path(&key.0, &key.1)),
                    None,
                )
                .await?;
            holds_dead = arr(&peek)
                .first()
                .is_some_and(|m| !arr(&m["death"]).is_empty());
        }
        if from.is_empty() && !holds_dead {
            continue;
        }
        let mut entry = q.clone();
        entry["dead_letters_from"] = json!(from.iter().collect::<Vec<_>>());
        out.push(entry);
    }
    if json {
        print_json(&Value::Array(out));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = out
        .iter()
        .map(|q| {
            let from: Vec<String> = arr(&q["dead_letters_from"]).iter().map(cell).collect();
            vec![
                cell(&q["vhost"]),
                cell(&q["name"]),
                cell(&q["ready"]),
                cell(&q["unacked"]),
                if from.is_empty() {
                    "(holds x-death messages)".into()
                } else {
                    from.join(",")
                },
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["VHOST", "NAME", "READY", "UNACKED", "DEAD LETTERS FROM"],
            &rows
        )
    );
    Ok(())
}

async fn dlq_replay(
    c: &Client,
    vhost: &str,
    queue: &str,
    count: Option<u64>,
    exchange: Option<String>,
    routing_key: Option<String>,
    json: bool,
) -> Result<(), CliError> {
    let path = format!("{}/replay", queue_path(vhost, queue));
    let start = c.call("GET", &queue_path(vhost, queue), None).await?;
    let ready = start["ready"].as_u64().unwrap_or(0);
    let total = count.map_or(ready, |n| n.min(ready));
    let progress = crate::bench::Progress::start_with_unit(
        format!("replaying {queue}"),
        Some(total),
        !json,
        "messages",
    );
    let done = progress.counter();
    let (mut replayed, mut failed, mut errors) = (0u64, 0u64, Vec::<Value>::new());
    let mut remaining = ready;
    while replayed < total {
        let step = (total - replayed).min(REPLAY_STEP);
        let mut body = json!({"count": step});
        if let Some(e) = &exchange {
            body["exchange"] = json!(e);
        }
        if let Some(k) = &routing_key {
            body["routing_key"] = json!(k);
        }
        let r = match c.call("POST", &path, Some(&body)).await {
            Ok(r) => r,
            Err(e) => {
                progress.finish().await;
                return Err(e);
            }
        };
        let moved = r["replayed"].as_u64().unwrap_or(0);
        replayed += moved;
        done.fetch_add(moved, std::sync::atomic::Ordering::Relaxed);
        failed += r["failed"].as_u64().unwrap_or(0);
        errors.extend(arr(&r["errors"]).iter().cloned());
        remaining = r["remaining"].as_u64().unwrap_or(remaining);
        if moved == 0 || r["failed"].as_u64().unwrap_or(0) > 0 {
            break;
        }
    }
    progress.finish().await;
    let summary = json!({"queue": queue, "replayed": replayed, "failed": failed,
        "errors": errors, "remaining": remaining});
    if json {
        print_json(&summary);
    } else {
        println!("replayed {replayed} message(s) from {queue}; {remaining} left in it");
        if failed > 0 {
            println!("{failed} message(s) could not be moved and stay in {queue}:");
            for e in &errors {
                println!("  {}", cell(e));
            }
        }
    }
    if failed > 0 {
        return Err(CliError::Protocol(format!(
            "{failed} message(s) were not replayed (see above); fix the target or pass --exchange"
        )));
    }
    Ok(())
}
