//! Command-line types of `ferry bridge create|list|describe|delete|restart` (clap derive);
//! each converts into its plain twin in [`ferry::admin_cli::bridges`], which the library runs.

use clap::{Args, Subcommand};

use super::admin::AdminConn;

/// `ferry bridge ...`
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  ferry bridge create to-rabbit --set src-queue=orders --set dest-uri=amqp://rabbit:5672 --set dest-queue=orders\n  ferry bridge create from-kafka --definition '{\"src-uri\":\"kafka://k1:9092\",\"src-topic\":\"events\",\"dest-queue\":\"events\"}'\n  ferry bridge list\n  ferry bridge describe to-rabbit\n  ferry bridge restart to-rabbit\n  ferry bridge delete to-rabbit"
)]
pub struct BridgeArgs {
    #[command(flatten)]
    pub conn: AdminConn,
    #[command(subcommand)]
    pub command: BridgeCommand,
}

#[derive(Debug, Subcommand)]
pub enum BridgeCommand {
    /// Define (or replace) a bridge: a RabbitMQ dynamic shovel definition, with Kafka keys.
    Create {
        /// The bridge's name.
        name: String,
        /// Virtual host of the Ferry side.
        #[arg(long, default_value = "/")]
        vhost: String,
        /// The shovel value as a JSON object, e.g. '{"src-queue":"q","dest-uri":"amqp://h"}'.
        #[arg(long, value_name = "JSON")]
        definition: Option<String>,
        /// A shovel key, e.g. src-queue=orders (repeatable; overrides --definition).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// List bridges with their state and counters.
    List,
    /// Show one bridge's definition and live state.
    Describe {
        name: String,
        #[arg(long, default_value = "/")]
        vhost: String,
    },
    /// Stop and forget a bridge (unforwarded messages stay at the source).
    Delete {
        name: String,
        #[arg(long, default_value = "/")]
        vhost: String,
    },
    /// Reconnect a bridge now (resets its backoff and circuit breaker).
    Restart {
        name: String,
        #[arg(long, default_value = "/")]
        vhost: String,
    },
}

impl From<BridgeArgs> for ferry::admin_cli::bridges::BridgeArgs {
    fn from(a: BridgeArgs) -> Self {
        use ferry::admin_cli::bridges::BridgeCommand as Plain;
        Self {
            conn: a.conn.into(),
            command: match a.command {
                BridgeCommand::Create {
                    name,
                    vhost,
                    definition,
                    set,
                } => Plain::Create {
                    name,
                    vhost,
                    definition,
                    set,
                },
                BridgeCommand::List => Plain::List,
                BridgeCommand::Describe { name, vhost } => Plain::Describe { name, vhost },
                BridgeCommand::Delete { name, vhost } => Plain::Delete { name, vhost },
                BridgeCommand::Restart { name, vhost } => Plain::Restart { name, vhost },
            },
        }
    }
}
