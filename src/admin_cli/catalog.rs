//! `ferry catalog [--json|--markdown]`: the event catalog of `GET /api/catalog` as a table,
//! the API's JSON, or a Markdown document a team can commit next to its code (one section per
//! event type: schema, versions, where it flows, who produces and consumes it, an example).

use super::*;

pub async fn catalog(conn: AdminConn, markdown: bool) -> Result<(), CliError> {
    let c = client(&conn)?;
    let v = c.call("GET", "/api/catalog", None).await?;
    if conn.json {
        print_json(&v);
    } else if markdown {
        print!("{}", catalog_markdown(&v));
    } else {
        print!("{}", catalog_table(&v));
    }
    Ok(())
}

fn joined(v: &Value) -> String {
    let items: Vec<String> = arr(v).iter().map(cell).collect();
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

fn schema_cell(v: &Value) -> String {
    if v.is_null() {
        return "-".into();
    }
    format!(
        "{} v{} ({})",
        cell(&v["subject"]),
        cell(&v["latest_version"]),
        cell(&v["schema_type"])
    )
}

/// `"<label> <name>"` for each name of each list, comma-separated; `-` when there is none.
fn labelled(lists: &[(&str, &Value)]) -> String {
    let all: Vec<String> = lists
        .iter()
        .flat_map(|(label, names)| {
            arr(names)
                .iter()
                .map(move |n| format!("{label} {}", cell(n)))
        })
        .collect();
    if all.is_empty() {
        "-".into()
    } else {
        all.join(", ")
    }
}

fn flows(e: &Value) -> String {
    labelled(&[("topic", &e["topics"]), ("exchange", &e["exchanges"])])
}

fn consumers(e: &Value) -> String {
    labelled(&[
        ("group", &e["consumers"]["groups"]),
        ("queue", &e["consumers"]["queues"]),
    ])
}

/// One row per event type.
pub fn catalog_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = arr(&v["events"])
        .iter()
        .map(|e| {
            vec![
                cell(&e["type"]),
                schema_cell(&e["schema"]),
                flows(e),
                joined(&e["producers"]),
                consumers(e),
                cell(&e["rate_per_sec"]),
            ]
        })
        .collect();
    table(
        &[
            "TYPE",
            "SCHEMA",
            "FLOWS",
            "PRODUCERS",
            "CONSUMERS",
            "RATE/S",
        ],
        &rows,
    )
}

fn rfc3339(ms: &Value) -> String {
    ms.as_i64().map_or_else(
        || "-".into(),
        |ms| crate::broker::event::format_rfc3339_secs(ms.div_euclid(1000)),
    )
}

/// The catalog as a Markdown document.
pub fn catalog_markdown(v: &Value) -> String {
    let events = arr(&v["events"]);
    let mut out = String::from("# Event catalog\n\n");
    out.push_str(&format!(
        "{} event types, as the broker saw them at publish (counts and rates are sampled \
         estimates).\n\n| type | schema | flows | producers | consumers |\n|---|---|---|---|---|\n",
        events.len()
    ));
    for e in events {
        out.push_str(&format!(
            "| [`{t}`](#{anchor}) | {} | {} | {} | {} |\n",
            schema_cell(&e["schema"]),
            flows(e),
            joined(&e["producers"]),
            consumers(e),
            t = cell(&e["type"]),
            anchor = anchor(&cell(&e["type"])),
        ));
    }
    for e in events {
        out.push_str(&format!("\n## {}\n\n", cell(&e["type"])));
        out.push_str(&format!("- **Schema**: {}\n", schema_cell(&e["schema"])));
        out.push_str(&format!(
            "- **Versions seen**: {}\n",
            joined(&e["versions"])
        ));
        out.push_str(&format!(
            "- **Content types**: {}\n",
            joined(&e["content_types"])
        ));
        out.push_str(&format!("- **Flows through**: {}\n", flows(e)));
        out.push_str(&format!("- **Producers**: {}\n", joined(&e["producers"])));
        out.push_str(&format!("- **Consumers**: {}\n", consumers(e)));
        out.push_str(&format!(
            "- **Seen**: {} to {}, about {} messages ({}/s)\n",
            rfc3339(&e["first_seen_ms"]),
            rfc3339(&e["last_seen_ms"]),
            cell(&e["messages_estimated"]),
            cell(&e["rate_per_sec"]),
        ));
        match e["example"]["encoding"].as_str() {
            Some("utf8") => {
                let data = e["example"]["data"].as_str().unwrap_or_default();
                let pretty = serde_json::from_str::<Value>(data)
                    .ok()
                    .and_then(|j| serde_json::to_string_pretty(&j).ok());
                let (lang, body) = match &pretty {
                    Some(p) => ("json", p.as_str()),
                    None => ("", data),
                };
                out.push_str(&format!("\nExample:\n\n```{lang}\n{body}\n```\n"));
            }
            Some(_) => out.push_str("\nExample: binary payload (see `ferry catalog --json`).\n"),
            None => {}
        }
    }
    out
}

/// GitHub's heading anchor: lower case, spaces to `-`, punctuation but `-`/`_` dropped.
fn anchor(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}
