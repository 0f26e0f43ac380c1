//! `ferry exchange list|create|delete|bind`.

use super::*;

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
                    Some(&binding(&vhost, &exchange, &queue, &routing_key)),
                )
                .await?;
            if json {
                print_json(&v);
            } else {
                println!("bound queue {queue} to exchange {exchange} with key '{routing_key}'");
            }
        }
        ExchangeCommand::Unbind {
            exchange,
            queue,
            routing_key,
            vhost,
        } => {
            c.call(
                "DELETE",
                "/api/bindings",
                Some(&binding(&vhost, &exchange, &queue, &routing_key)),
            )
            .await?;
            if json {
                print_json(
                    &json!({"unbound": {"exchange": exchange, "queue": queue, "routing_key": routing_key}}),
                );
            } else {
                println!("unbound queue {queue} from exchange {exchange} (key '{routing_key}')");
            }
        }
    }
    Ok(())
}

/// The `/api/bindings` body naming one binding of a queue to an exchange.
fn binding(vhost: &str, exchange: &str, queue: &str, routing_key: &str) -> Value {
    json!({"vhost": vhost, "source": exchange, "destination": queue,
        "destination_type": "queue", "routing_key": routing_key})
}
