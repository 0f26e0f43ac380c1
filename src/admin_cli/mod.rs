//! The operator's command line: `ferry topic|queue|exchange|group|dlq|bridge|user|permission|vhost|acl`,
//! and `ferry status`, `ferry connection|channel|consumer` ([`manage`]), over the admin HTTP API
//! (`docs/admin-api.yaml`), and `ferry produce|consume` over the Kafka protocol ([`kcat`]).
//!
//! Admin subcommands are thin: each is one or a few API calls through the small client in
//! [`http`], printed as an aligned table, or with `--json` as the API's own JSON so scripts
//! see exactly what the API documents. Errors say what to do next (start the broker, fix
//! --admin-url, pass credentials, check a name). The few things the API does not answer in one
//! call are composed here: `dlq list` (which queues are dead-letter targets) and `dlq replay`
//! (in chunks, so a terminal shows progress).

mod acls;
pub mod bridges;
pub mod catalog;
pub mod commands;
mod dlq;
mod exchanges;
mod groups;
pub mod http;
pub mod kcat;
pub mod manage;
pub mod native_publish;
mod queues;
mod topics;
pub mod users;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

pub use self::acls::{acl, AclArgs, AclCommand, AclSpec};
use self::commands::*;
pub use self::dlq::dlq;
pub use self::exchanges::exchange;
pub use self::groups::group;
use self::http::{segment, Client};
use self::queues::purge;
pub use self::queues::queue;
pub use self::topics::topic;
pub use self::users::{permission, user, vhost};

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
         FERRY_ADMIN_USER/FERRY_ADMIN_PASSWORD) of a user tagged administrator or management \
         (the default admin/admin works only from the broker's own machine)"
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
        403 => " — the admin API is disabled, the name is reserved, or your user's tags do not allow this",
        503 => " — the broker is still starting or is shutting down; retry shortly",
        _ => "",
    }
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
    Client::new(
        &conn.admin_url,
        &conn.user,
        &conn.password,
        conn.cacert.as_deref(),
    )
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
