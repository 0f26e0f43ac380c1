//! `ferry bridge create|list|describe|delete|restart`: bridges (shovels) over the admin API's
//! `/api/parameters/shovel/...` and `/api/shovels`. A definition is given as the shovel JSON
//! (`--definition`) and/or `--set KEY=VALUE` pairs with the same keys (`src-queue=orders`),
//! so a RabbitMQ shovel definition can be pasted as it is.

use super::*;

/// `ferry bridge ...`
#[derive(Debug, Clone)]
pub struct BridgeArgs {
    pub conn: AdminConn,
    pub command: BridgeCommand,
}

#[derive(Debug, Clone)]
pub enum BridgeCommand {
    /// Create or replace a bridge.
    Create {
        name: String,
        vhost: String,
        /// The shovel value as JSON (`{"src-queue": ..., "dest-uri": ...}`).
        definition: Option<String>,
        /// `KEY=VALUE` pairs added to (and overriding) the definition.
        set: Vec<String>,
    },
    List,
    Describe {
        name: String,
        vhost: String,
    },
    Delete {
        name: String,
        vhost: String,
    },
    Restart {
        name: String,
        vhost: String,
    },
}

fn parameter_path(vhost: &str, name: &str) -> String {
    format!(
        "/api/parameters/shovel/{}/{}",
        segment(vhost),
        segment(name)
    )
}

pub async fn bridge(a: BridgeArgs) -> Result<(), CliError> {
    let c = client(&a.conn)?;
    let json = a.conn.json;
    match a.command {
        BridgeCommand::Create {
            name,
            vhost,
            definition,
            set,
        } => {
            let mut value = match definition {
                Some(text) => match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Object(m)) => m,
                    Ok(_) => {
                        return Err(CliError::Usage("--definition must be a JSON object".into()))
                    }
                    Err(e) => {
                        return Err(CliError::Usage(format!(
                            "--definition is not valid JSON: {e}"
                        )))
                    }
                },
                None => Map::new(),
            };
            value.extend(pairs(&set, "--set", true)?);
            if value.is_empty() {
                return Err(CliError::Usage(
                    "give the definition with --definition JSON and/or --set KEY=VALUE".into(),
                ));
            }
            let body = json!({"value": Value::Object(value)});
            c.call("PUT", &parameter_path(&vhost, &name), Some(&body))
                .await?;
            if json {
                print_json(&json!({"name": name, "vhost": vhost, "created": true}));
            } else {
                println!("bridge '{name}' defined in vhost '{vhost}'");
            }
            Ok(())
        }
        BridgeCommand::List => {
            let v = c.call("GET", "/api/shovels", None).await?;
            if json {
                print_json(&v);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = arr(&v)
                .iter()
                .map(|s| {
                    vec![
                        cell(&s["name"]),
                        cell(&s["vhost"]),
                        cell(&s["state"]),
                        cell(&s["src_uri"]),
                        cell(&s["dest_uri"]),
                        cell(&s["messages_forwarded"]),
                        cell(&s["pending"]),
                        cell(&s["reason"]),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "NAME",
                        "VHOST",
                        "STATE",
                        "SOURCE",
                        "DESTINATION",
                        "FORWARDED",
                        "PENDING",
                        "REASON"
                    ],
                    &rows
                )
            );
            Ok(())
        }
        BridgeCommand::Describe { name, vhost } => {
            let definition = c.call("GET", &parameter_path(&vhost, &name), None).await?;
            let status = c
                .call(
                    "GET",
                    &format!("/api/shovels/vhost/{}/{}", segment(&vhost), segment(&name)),
                    None,
                )
                .await
                .unwrap_or(Value::Null);
            let v = json!({"definition": definition["value"], "status": status,
                           "name": name, "vhost": vhost});
            if json {
                print_json(&v);
                return Ok(());
            }
            println!("name:        {name}");
            println!("vhost:       {vhost}");
            for key in [
                "state",
                "reason",
                "src_uri",
                "dest_uri",
                "messages_forwarded",
                "messages_skipped",
                "reconnects",
                "pending",
                "circuit_breaker",
            ] {
                println!("{:<13}{}", format!("{key}:"), cell(&status[key]));
            }
            println!("definition:");
            if let Some(m) = definition["value"].as_object() {
                for (k, v) in m {
                    println!("  {k} = {}", cell(v));
                }
            }
            Ok(())
        }
        BridgeCommand::Delete { name, vhost } => {
            c.call("DELETE", &parameter_path(&vhost, &name), None)
                .await?;
            if json {
                print_json(&json!({"name": name, "vhost": vhost, "deleted": true}));
            } else {
                println!("bridge '{name}' deleted from vhost '{vhost}'");
            }
            Ok(())
        }
        BridgeCommand::Restart { name, vhost } => {
            c.call(
                "DELETE",
                &format!(
                    "/api/shovels/vhost/{}/{}/restart",
                    segment(&vhost),
                    segment(&name)
                ),
                None,
            )
            .await?;
            if json {
                print_json(&json!({"name": name, "vhost": vhost, "restarted": true}));
            } else {
                println!("bridge '{name}' restarting");
            }
            Ok(())
        }
    }
}
