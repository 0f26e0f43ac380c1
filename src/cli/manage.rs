//! Command-line types of the management subcommands (`ferry status`, `ferry connection
//! list|close`, `ferry channel list`, `ferry consumer list`), as clap derive types. Parsing
//! only: `main.rs` hands their values to [`ferry::admin_cli`], which calls the admin API.

use clap::{Args, Subcommand};

use super::admin::AdminConn;

/// `ferry status`
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  ferry status\n  ferry status --json | jq .overview.object_totals"
)]
pub struct StatusArgs {
    #[command(flatten)]
    pub conn: AdminConn,
}

/// `ferry catalog`
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  ferry catalog\n  ferry catalog --markdown > docs/events.md\n  ferry catalog --json | jq '.events[].type'"
)]
pub struct CatalogArgs {
    #[command(flatten)]
    pub conn: AdminConn,
    /// Print a Markdown document of every event type (to commit next to the code).
    #[arg(long, conflicts_with = "json")]
    pub markdown: bool,
}

/// `ferry connection ...`
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  ferry connection list\n  ferry connection close '127.0.0.1:50312 -> 127.0.0.1:5672' --reason 'moving to the new cluster'"
)]
pub struct ConnectionArgs {
    #[command(flatten)]
    pub conn: AdminConn,
    #[command(subcommand)]
    pub command: ConnectionCommand,
}

#[derive(Debug, Subcommand)]
pub enum ConnectionCommand {
    /// List client connections of every protocol (AMQP, Kafka, native).
    #[command(
        after_help = "Examples:\n  ferry connection list\n  ferry connection list --json | jq -r '.[] | select(.protocol == \"kafka\") | .client_id'"
    )]
    List,
    /// Close a connection: AMQP clients get connection.close 320 (CONNECTION_FORCED) with the
    /// reason; a Kafka client's socket is dropped (it reconnects).
    #[command(
        after_help = "Example:\n  ferry connection close '127.0.0.1:50312 -> 127.0.0.1:5672' --reason maintenance"
    )]
    Close {
        /// The connection's NAME as `ferry connection list` shows it.
        name: String,
        /// Why, as the client will see it [default: "Closed via management plugin"].
        #[arg(long)]
        reason: Option<String>,
    },
}

/// `ferry channel ...` and `ferry consumer ...`: one `list` subcommand each.
#[derive(Debug, Args)]
pub struct ListOnlyArgs {
    #[command(flatten)]
    pub conn: AdminConn,
    #[command(subcommand)]
    pub command: ListOnly,
}

#[derive(Debug, Subcommand)]
pub enum ListOnly {
    /// List them (AMQP), with prefetch and consumer counts.
    #[command(after_help = "Examples:\n  ferry channel list\n  ferry consumer list --json")]
    List,
}
