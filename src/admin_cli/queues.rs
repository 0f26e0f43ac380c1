//! `ferry queue list|create|delete|describe|purge`. `purge` is shared with `ferry dlq purge`.

use super::*;

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

pub(super) async fn purge(c: &Client, vhost: &str, name: &str, json: bool) -> Result<(), CliError> {
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
