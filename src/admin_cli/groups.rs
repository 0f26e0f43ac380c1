//! `ferry group list|describe|reset-offsets`: Kafka consumer groups as kafka-consumer-groups
//! shows them, with lag per partition.

use super::*;

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
        GroupCommand::Delete { group } => {
            c.call("DELETE", &format!("/api/groups/{}", segment(&group)), None)
                .await?;
            if json {
                print_json(&json!({"deleted": group}));
            } else {
                println!("deleted consumer group {group}");
            }
        }
        GroupCommand::Describe { group } => {
            let v = c
                .call("GET", &format!("/api/groups/{}", segment(&group)), None)
                .await?;
            if json {
                print_json(&v);
                return Ok(());
            }
            print!("{}", describe_group(&v));
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

/// `group describe` as text: one row per partition the group has a committed offset for or a
/// member is assigned, as kafka-consumer-groups shows them. A partition without a committed
/// offset shows `-` as COMMITTED and counts its lag from the log start: that is what a consumer
/// with `auto.offset.reset=earliest` still has to read (with `latest` it would skip it), so
/// unread records never hide behind a total lag of 0.
fn describe_group(v: &Value) -> String {
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
    // (committed, end, lag) per partition. The API lists every committed partition and every
    // assigned one without a commit (committed `null`, lag from the log start).
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
    out
}
