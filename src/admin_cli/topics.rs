//! `ferry topic list|create|delete|describe|add-partitions|alter`: one admin API call each, printed as a table or
//! as the API's JSON.

use super::*;

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
        TopicCommand::AddPartitions { name, count } => {
            let v = c
                .call(
                    "POST",
                    &format!("/api/topics/{}/partitions", segment(&name)),
                    Some(&json!({ "count": count })),
                )
                .await?;
            if json {
                print_json(&v);
            } else {
                println!(
                    "topic {name} now has {} partition(s)",
                    cell(&v["partition_count"])
                );
            }
        }
        TopicCommand::Alter {
            name,
            configs,
            delete,
        } => {
            if configs.is_empty() && delete.is_empty() {
                return Err(CliError::Usage(
                    "name a change: -c KEY=VALUE or --delete-config KEY".into(),
                ));
            }
            let set = pairs(&configs, "--config", false)?;
            let v = c
                .call(
                    "PATCH",
                    &format!("/api/topics/{}/configs", segment(&name)),
                    Some(&json!({"set": set, "delete": delete})),
                )
                .await?;
            if json {
                print_json(&v);
            } else {
                let now: Vec<String> = v["configs"]
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| format!("{k}={}", cell(v))).collect())
                    .unwrap_or_default();
                let now = if now.is_empty() {
                    "(broker defaults)".to_string()
                } else {
                    now.join(", ")
                };
                println!("topic {name} configs: {now}");
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
