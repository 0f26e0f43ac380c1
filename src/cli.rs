//! The command line, as clap derive types. Parsing only: `main.rs` turns these into a
//! [`Config`](crate::config::Config) and runs them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Overrides;

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "A message broker that speaks Kafka and AMQP 0-9-1 over one log",
    long_about = "Ferry is one binary that is a real message broker: Kafka clients and RabbitMQ (AMQP 0-9-1) clients connect to it unchanged, and both read and write the same append-only log."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker.
    Serve(ServeArgs),
}

/// Every option can also be set in the TOML file given by --config and by a FERRY_* environment
/// variable (FERRY_KAFKA_LISTEN, FERRY_LOG__FSYNC for [log] fsync, ...). Precedence: file <
/// environment < flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file (see config/ferry.toml for every setting and its default).
    #[arg(long, value_name = "FILE", env = "FERRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for logs and metadata [default: ./ferry-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Kafka listener [default: 0.0.0.0:9092].
    #[arg(long, value_name = "HOST:PORT")]
    pub kafka_listen: Option<String>,
    /// Address Kafka clients are told to connect to [default: the address they connected to].
    #[arg(long, value_name = "HOST:PORT")]
    pub kafka_advertised: Option<String>,
    /// AMQP 0-9-1 listener [default: 0.0.0.0:5672].
    #[arg(long, value_name = "HOST:PORT")]
    pub amqp_listen: Option<String>,
    /// Native protocol (QUIC) listener [default: 0.0.0.0:7447] (reserved; not served yet).
    #[arg(long, value_name = "HOST:PORT")]
    pub native_listen: Option<String>,
    /// HTTP listener for /healthz, /readyz and /metrics [default: 0.0.0.0:8080].
    #[arg(long, value_name = "HOST:PORT")]
    pub http_listen: Option<String>,
    /// Durability policy: always | interval:<ms> | never [default: always].
    #[arg(long, value_name = "POLICY")]
    pub fsync: Option<String>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

impl ServeArgs {
    /// The flags that were given, as config overrides.
    pub fn overrides(&self) -> Overrides {
        let mut o = Overrides::default();
        o.set_str(
            "data_dir",
            self.data_dir.as_ref().map(|p| p.display().to_string()),
        );
        o.set_str("kafka_listen", self.kafka_listen.clone());
        o.set_str("kafka_advertised", self.kafka_advertised.clone());
        o.set_str("amqp_listen", self.amqp_listen.clone());
        o.set_str("native_listen", self.native_listen.clone());
        o.set_str("http_listen", self.http_listen.clone());
        o.set_str("log.fsync", self.fsync.clone());
        o
    }
}
