//! The command line, as clap derive types. Parsing only: `main.rs` turns these into a
//! [`Config`](ferry::config::Config) or the library's plain settings and runs them. This is the
//! binary's module tree (`src/main.rs` is its own crate root), so no module of the `ferry`
//! library imports clap. The subcommands' flags have their own files: [`admin`], [`manage`]
//! and [`bench`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use ferry::config::Overrides;

use self::bench::BenchArgs;

pub mod admin;
pub mod bench;
pub mod bridge;
pub mod manage;
pub mod publish;
pub mod security;

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
    #[command(
        after_help = "Examples:\n  ferry serve                                    # ./ferry-data, Kafka 9092, AMQP 5672, HTTP 8080\n  ferry serve --data-dir /var/lib/ferry --fsync interval:100\n  ferry serve --config /etc/ferry/ferry.toml --print-config"
    )]
    Serve(ServeArgs),
    /// Measure a running broker from the outside (throughput, latency, client CPU).
    #[command(
        after_help = "Examples:\n  ferry bench kafka                              # a short run against 127.0.0.1:9092\n  ferry bench amqp --sizes 16,1KiB --duration 10"
    )]
    Bench(BenchArgs),
    /// Topics: list, create, delete, describe, add-partitions (through the admin API).
    Topic(admin::TopicArgs),
    /// AMQP queues: list, create, delete, describe, purge (through the admin API).
    Queue(admin::QueueArgs),
    /// AMQP exchanges: list, create, delete, bind, unbind (through the admin API).
    Exchange(admin::ExchangeArgs),
    /// Kafka consumer groups: list, describe, delete, reset-offsets (through the admin API).
    Group(admin::GroupArgs),
    /// Dead-letter queues: list, browse, replay, purge (through the admin API).
    Dlq(admin::DlqArgs),
    /// Bridges (shovels) to and from RabbitMQ and Kafka: create, list, describe, delete,
    /// restart (through the admin API).
    Bridge(bridge::BridgeArgs),
    /// Users of every protocol: list, add, passwd, delete (through the admin API).
    User(security::UserArgs),
    /// AMQP permissions (configure/write/read patterns per vhost): list, set, clear.
    Permission(security::PermissionArgs),
    /// Virtual hosts: list, add, delete (through the admin API).
    Vhost(security::VhostArgs),
    /// Kafka ACL bindings: list, add, delete (through the admin API).
    Acl(security::AclArgs),
    /// The broker at a glance: node, listeners, alarms, connections, messages and rates.
    Status(manage::StatusArgs),
    /// Event types seen at publish: schema, flows, producers, consumers, rate, an example.
    Catalog(manage::CatalogArgs),
    /// Client connections of every protocol: list, close (through the admin API).
    Connection(manage::ConnectionArgs),
    /// AMQP channels: list (through the admin API).
    Channel(manage::ListOnlyArgs),
    /// AMQP consumers with their queue and prefetch: list (through the admin API).
    Consumer(manage::ListOnlyArgs),
    /// Produce lines from stdin or a file to a topic over the Kafka protocol (like kcat -P).
    #[command(
        after_help = "Examples:\n  echo hello | ferry produce -t orders\n  ferry produce -t orders -f events.txt -K :    # key before the first ':'"
    )]
    Produce(admin::ProduceArgs),
    /// Publish one event over the native protocol (QUIC) and print the broker's confirm.
    #[command(
        after_help = "Examples:\n  ferry publish --cert-file ferry-data/native/cert.pem -t orders --type order.placed --source /shop '{\"id\":1}'\n  ferry publish --fingerprint AB:CD:... -e '' -r payments --correlation-id c-1 '{}'"
    )]
    Publish(publish::PublishArgs),
    /// Print a topic's messages over the Kafka protocol (like kcat -C).
    #[command(
        after_help = "Examples:\n  ferry consume -t orders -e                     # everything, then stop\n  ferry consume -t orders -p 1 -o -10 --json     # the last ten of partition 1\n  ferry consume -t orders -o end                 # wait for new messages"
    )]
    Consume(admin::ConsumeArgs),
    /// Development certificates: a private CA, a server certificate and client certificates.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Print a shell completion script for bash, zsh, fish, elvish or powershell.
    #[command(
        after_help = "Examples:\n  ferry completions bash > /etc/bash_completion.d/ferry\n  ferry completions zsh > \"${fpath[1]}/_ferry\"\n  ferry completions fish > ~/.config/fish/completions/ferry.fish"
    )]
    Completions {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
    /// Print the manual page ferry(1) in roff, or write one page per subcommand to a directory.
    #[command(
        after_help = "Examples:\n  ferry man | man -l -\n  ferry man --dir /usr/local/share/man/man1"
    )]
    Man {
        /// Write ferry.1 and ferry-<subcommand>.1 into DIR instead of printing ferry.1.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
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
    /// Native protocol (QUIC, UDP) listener [default: 0.0.0.0:7447].
    #[arg(long, value_name = "HOST:PORT")]
    pub native_listen: Option<String>,
    /// Native protocol over TCP (TLS) for networks that block UDP, e.g. 0.0.0.0:7448
    /// [default: off].
    #[arg(long, value_name = "HOST:PORT")]
    pub native_tcp_listen: Option<String>,
    /// HTTP listener for /healthz, /readyz and /metrics [default: 0.0.0.0:8080].
    #[arg(long, value_name = "HOST:PORT")]
    pub http_listen: Option<String>,
    /// Kafka TLS (SSL) listener, e.g. 0.0.0.0:9093 [default: off].
    #[arg(long, value_name = "ADDR")]
    pub kafka_tls_listen: Option<String>,
    /// Address Kafka TLS clients are told to connect to.
    #[arg(long, value_name = "ADDR")]
    pub kafka_tls_advertised: Option<String>,
    /// AMQPS listener, e.g. 0.0.0.0:5671 [default: off].
    #[arg(long, value_name = "ADDR")]
    pub amqp_tls_listen: Option<String>,
    /// HTTPS listener (admin API, metrics), e.g. 0.0.0.0:8443 [default: off].
    #[arg(long, value_name = "ADDR")]
    pub http_tls_listen: Option<String>,
    /// PEM certificate (chain) of the TLS listeners.
    #[arg(long, value_name = "FILE")]
    pub tls_cert_file: Option<String>,
    /// PEM private key of the TLS listeners.
    #[arg(long, value_name = "FILE")]
    pub tls_key_file: Option<String>,
    /// PEM CA that client certificates must verify against (mTLS).
    #[arg(long, value_name = "FILE")]
    pub tls_ca_file: Option<String>,
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
        o.set_str("native_tcp_listen", self.native_tcp_listen.clone());
        o.set_str("http_listen", self.http_listen.clone());
        o.set_str("log.fsync", self.fsync.clone());
        o.set_str("kafka_tls_listen", self.kafka_tls_listen.clone());
        o.set_str("kafka_tls_advertised", self.kafka_tls_advertised.clone());
        o.set_str("amqp_tls_listen", self.amqp_tls_listen.clone());
        o.set_str("http_tls_listen", self.http_tls_listen.clone());
        o.set_str("tls.cert_file", self.tls_cert_file.clone());
        o.set_str("tls.key_file", self.tls_key_file.clone());
        o.set_str("tls.ca_file", self.tls_ca_file.clone());
        o
    }
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Write a CA (ca.pem, ca.key), a server certificate (server.pem, server.key) and
    /// optionally client certificates (client-NAME.pem, .key) into a directory, and print the
    /// settings that use them. For development and tests; production certificates come from
    /// your CA.
    #[command(
        after_help = "Examples:\n  ferry cert generate --out ./certs                      # localhost and 127.0.0.1\n  ferry cert generate --dns broker.local --ip 10.0.0.5 --client orders-app --out ./certs"
    )]
    Generate(CertGenerateArgs),
}

#[derive(Debug, Args)]
pub struct CertGenerateArgs {
    /// A DNS name of the server certificate; repeat for more [default: localhost, with 127.0.0.1].
    #[arg(long, value_name = "NAME")]
    pub dns: Vec<String>,
    /// An IP address of the server certificate; repeat for more.
    #[arg(long, value_name = "ADDR")]
    pub ip: Vec<std::net::IpAddr>,
    /// Also make a client certificate with this CN (mTLS, AMQP EXTERNAL); repeat for more.
    #[arg(long, value_name = "NAME")]
    pub client: Vec<String>,
    /// Directory to write the files to (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Days the certificates are valid.
    #[arg(long, value_name = "DAYS", default_value_t = 365)]
    pub days: u32,
    /// Replace existing files.
    #[arg(long)]
    pub force: bool,
}
