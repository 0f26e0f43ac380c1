//! `ferry dlq list|browse|replay|purge`. The API has no "dead-letter queue" resource, so `list`
//! works out which queues are dead-letter targets, and `replay` moves messages in steps so a
//! terminal shows progress.

use super::*;

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
