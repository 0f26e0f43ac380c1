//! `ferry status`, `ferry connection list|close`, `ferry channel list` and `ferry consumer
//! list`: the management views of the admin API (`/api/overview`, `/api/nodes`,
//! `/api/connections`, `/api/channels`, `/api/consumers`) as short summaries and tables, or
//! with `--json` as the API's own JSON.

use super::*;

/// `ferry status`: the overview and the node in a few lines.
pub async fn status(conn: AdminConn) -> Result<(), CliError> {
    let c = client(&conn)?;
    let overview = c.call("GET", "/api/overview", None).await?;
    let nodes = c.call("GET", "/api/nodes", None).await?;
    let node = arr(&nodes).first().cloned().unwrap_or(Value::Null);
    if conn.json {
        print_json(&json!({ "overview": overview, "node": node }));
        return Ok(());
    }
    print!("{}", status_text(&overview, &node));
    Ok(())
}

fn status_text(o: &Value, node: &Value) -> String {
    let totals = &o["object_totals"];
    let stats = &o["message_stats"];
    let listeners: Vec<String> = arr(&o["listeners"])
        .iter()
        .map(|l| {
            format!(
                "{} {}:{}",
                cell(&l["protocol"]),
                cell(&l["ip_address"]),
                cell(&l["port"])
            )
        })
        .collect();
    let alarms: Vec<String> = arr(&o["alarms"]).iter().map(cell).collect();
    let stat = |key: &str| cell(&stats[key]);
    let rate = |key: &str| cell(&stats[format!("{key}_details")]["rate"]);
    let rows = [
        (
            "Node",
            format!(
                "{} ({} {}), up {}",
                cell(&o["node"]),
                cell(&o["product_name"]),
                cell(&o["product_version"]),
                node["uptime"].as_u64().map_or("-".into(), duration)
            ),
        ),
        ("Listeners", listeners.join(", ")),
        (
            "Alarms",
            if alarms.is_empty() {
                "none".into()
            } else {
                alarms.join("; ")
            },
        ),
        (
            "Connections",
            format!(
                "{} (channels {}, consumers {})",
                cell(&totals["connections"]),
                cell(&totals["channels"]),
                cell(&totals["consumers"])
            ),
        ),
        (
            "Objects",
            format!(
                "topics {}, queues {}, exchanges {}, consumer groups {}",
                cell(&totals["topics"]),
                cell(&totals["queues"]),
                cell(&totals["exchanges"]),
                cell(&totals["consumer_groups"])
            ),
        ),
        (
            "Messages",
            format!(
                "{} ready, {} unacked",
                cell(&o["queue_totals"]["messages_ready"]),
                cell(&o["queue_totals"]["messages_unacknowledged"])
            ),
        ),
        (
            "Totals",
            format!(
                "publish {}, deliver {}, ack {}, log appends {}",
                stat("publish"),
                stat("deliver_get"),
                stat("ack"),
                stat("log_appended_records")
            ),
        ),
        (
            "Rates (/s)",
            format!(
                "publish {}, deliver {}, ack {}, log appends {}",
                rate("publish"),
                rate("deliver_get"),
                rate("ack"),
                rate("log_appended_records")
            ),
        ),
        (
            "Resources",
            format!(
                "memory {}, file descriptors {}/{}, disk free {}",
                node["mem_used"].as_u64().map_or("-".into(), bytes),
                cell(&node["fd_used"]),
                cell(&node["fd_total"]),
                node["disk_free"].as_u64().map_or("-".into(), bytes)
            ),
        ),
    ];
    rows.iter()
        .map(|(k, v)| format!("{:<13}{v}\n", format!("{k}:")))
        .collect()
}

/// `ferry connection list`
pub async fn connections(conn: AdminConn) -> Result<(), CliError> {
    let headers = [
        "NAME", "PROTOCOL", "USER", "VHOST", "CLIENT", "TLS", "CHANNELS", "RECV", "SENT",
    ];
    list(&conn, "/api/connections", &headers, |c| {
        vec![
            cell(&c["name"]),
            cell(&c["protocol"]),
            cell(&c["user"]),
            cell(&c["vhost"]),
            cell(&c["client_name"]),
            yes_no(&c["ssl"]),
            cell(&c["channels"]),
            c["recv_oct"].as_u64().map_or("-".into(), bytes),
            c["send_oct"].as_u64().map_or("-".into(), bytes),
        ]
    })
    .await
}

/// GETs a list from the API and prints it as a table of `row`s, or as JSON with `--json`.
async fn list(
    conn: &AdminConn,
    path: &str,
    headers: &[&str],
    row: impl Fn(&Value) -> Vec<String>,
) -> Result<(), CliError> {
    let v = client(conn)?.call("GET", path, None).await?;
    if conn.json {
        print_json(&v);
    } else {
        let rows: Vec<Vec<String>> = arr(&v).iter().map(row).collect();
        print!("{}", table(headers, &rows));
    }
    Ok(())
}

fn yes_no(v: &Value) -> String {
    if *v == Value::Bool(true) { "yes" } else { "no" }.into()
}

/// `ferry connection close NAME [--reason TEXT]`
pub async fn close_connection(
    conn: AdminConn,
    name: &str,
    reason: Option<&str>,
) -> Result<(), CliError> {
    if reason.is_some_and(|r| !r.chars().all(|c| c == ' ' || c.is_ascii_graphic())) {
        return Err(CliError::Usage(
            "--reason must be printable ASCII on one line (it travels in an HTTP header)".into(),
        ));
    }
    let headers: Vec<(&str, &str)> = reason.map(|r| ("X-Reason", r)).into_iter().collect();
    let path = format!("/api/connections/{}", segment(name));
    client(&conn)?
        .call_with_headers("DELETE", &path, &headers)
        .await?;
    if conn.json {
        print_json(&json!({ "closed": name }));
    } else {
        println!("closing connection '{name}'");
    }
    Ok(())
}

/// `ferry channel list`
pub async fn channels(conn: AdminConn) -> Result<(), CliError> {
    let headers = [
        "CHANNEL",
        "USER",
        "VHOST",
        "PREFETCH",
        "GLOBAL PREFETCH",
        "CONSUMERS",
    ];
    list(&conn, "/api/channels", &headers, |c| {
        vec![
            cell(&c["name"]),
            cell(&c["user"]),
            cell(&c["vhost"]),
            cell(&c["prefetch_count"]),
            cell(&c["global_prefetch_count"]),
            cell(&c["consumer_count"]),
        ]
    })
    .await
}

/// `ferry consumer list`
pub async fn consumers(conn: AdminConn) -> Result<(), CliError> {
    let headers = ["TAG", "QUEUE", "VHOST", "CHANNEL", "ACK", "PREFETCH"];
    list(&conn, "/api/consumers", &headers, |c| {
        vec![
            cell(&c["consumer_tag"]),
            cell(&c["queue"]["name"]),
            cell(&c["queue"]["vhost"]),
            cell(&c["channel_details"]["name"]),
            yes_no(&c["ack_required"]),
            cell(&c["prefetch_count"]),
        ]
    })
    .await
}

/// `3d 4h`, `2h 5m`, `4m 10s`, `12s` from milliseconds.
fn duration(ms: u64) -> String {
    let s = ms / 1000;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// Bytes in binary units with one decimal (`512 B`, `1.5 KiB`, `3.2 GiB`).
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_read_naturally() {
        assert_eq!(duration(12_000), "12s");
        assert_eq!(duration(250_000), "4m 10s");
        assert_eq!(duration(7_500_000), "2h 5m");
        assert_eq!(duration(3 * 86_400_000 + 4 * 3_600_000), "3d 4h");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }
}
