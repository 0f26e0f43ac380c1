//! Command-line types of the admin subcommands (`ferry topic|queue|exchange|group|dlq` and
//! `ferry produce|consume`), as clap derive types. Parsing only: each converts into its plain twin in
//! [`ferry::admin_cli::commands`], which the library runs, so clap stays in the binary.
//!
//! They live here rather than in `cli/mod.rs` so the admin CLI can grow without touching the
//! serve and bench flags; `cli/mod.rs` only names them in its `Command` enum.

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// Where the admin API is and how to log in; shared by every admin subcommand.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Connection (also from the environment)")]
pub struct AdminConn {
    /// Base URL of the broker's HTTP listener.
    #[arg(
        long,
        value_name = "URL",
        env = "FERRY_ADMIN_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub admin_url: String,
    /// Admin API user: one tagged administrator (or management/monitoring for what they allow).
    #[arg(
        long,
        value_name = "USER",
        env = "FERRY_ADMIN_USER",
        default_value = "admin",
        global = true
    )]
    pub user: String,
    /// Its password.
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "FERRY_ADMIN_PASSWORD",
        default_value = "admin",
        hide_env_values = true,
        global = true
    )]
    pub password: String,
    /// CA certificate (PEM) to trust for an https:// admin URL, as curl's --cacert
    /// [default: the system CA bundle].
    #[arg(long, value_name = "FILE", env = "FERRY_ADMIN_CACERT", global = true)]
    pub cacert: Option<std::path::PathBuf>,
    /// Print the API's JSON instead of a table (for scripts).
    #[arg(long, global = true, help_heading = "Output")]
    pub json: bool,
}

/// `ferry topic ...`
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  ferry topic create orders -p 3\n  ferry topic list\n  ferry topic describe orders\n  ferry topic delete orders"
)]
pub struct TopicArgs {
    #[command(flatten)]
    pub conn: AdminConn,
    #[command(subcommand)]
    pub command: TopicCommand,
}

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// List topics with partition counts and sizes.
    #[command(
        after_help = "Examples:\n  ferry topic list\n  ferry topic list --json | jq -r '.[].name'"
    )]
    List,
    /// Create a topic.
    #[command(
        after_help = "Examples:\n  ferry topic create orders -p 3\n  ferry topic create audit -c retention.ms=604800000 -c segment.bytes=104857600\n  ferry topic create orders -p 3 --if-not-exists"
    )]
    Create {
        /// Topic name (Kafka's rules: letters, digits, `.`, `_`, `-`).
        name: String,
        /// Number of partitions (fixed once created).
        #[arg(short, long, default_value_t = 1)]
        partitions: u32,
        /// Topic config override (Kafka names), e.g. -c retention.ms=60000; repeatable.
        #[arg(short = 'c', long = "config", value_name = "KEY=VALUE")]
        configs: Vec<String>,
        /// Succeed without changes when the topic exists already (kafka-topics
        /// --if-not-exists).
        #[arg(long)]
        if_not_exists: bool,
    },
    /// Delete a topic and its data (its exchange face and the bindings to it go too).
    #[command(after_help = "Example:\n  ferry topic delete orders")]
    Delete {
        /// Topic name.
        name: String,
    },
    /// Show a topic's partitions, offsets and config overrides.
    #[command(
        after_help = "Examples:\n  ferry topic describe orders\n  ferry topic describe orders --json | jq '.partitions[].end_offset'"
    )]
    Describe {
        /// Topic name.
        name: String,
    },
    /// Grow a topic to COUNT partitions (like kafka-topics --alter --partitions; never fewer).
    /// Keys map to partitions by count, so keyed records may land elsewhere afterwards.
    #[command(after_help = "Example:\n  ferry topic add-partitions orders 6")]
    AddPartitions {
        /// Topic name.
        name: String,
        /// The new total partition count.
        count: u32,
    },
    /// Change a topic's config overrides (like kafka-configs --alter: only the keys named
    /// change; --delete-config returns a key to the broker default).
    #[command(
        after_help = "Examples:\n  ferry topic alter orders -c retention.ms=86400000\n  ferry topic alter orders --delete-config retention.ms"
    )]
    Alter {
        /// Topic name.
        name: String,
        /// Config to set (Kafka names), e.g. -c retention.ms=60000; repeatable.
        #[arg(short = 'c', long = "config", value_name = "KEY=VALUE")]
        configs: Vec<String>,
        /// Config to return to the broker default; repeatable.
        #[arg(long = "delete-config", value_name = "KEY")]
        delete: Vec<String>,
    },
}

/// `ferry queue ...`
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  ferry queue create orders.work --arg x-dead-letter-exchange=dlx\n  ferry queue list\n  ferry queue describe orders.work\n  ferry queue purge orders.work"
)]
pub struct QueueArgs {
    #[command(flatten)]
    pub conn: AdminConn,
    #[command(subcommand)]
    pub command: QueueCommand,
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// List queues (every vhost) with ready/unacked counts and consumers.
    #[command(
        after_help = "Examples:\n  ferry queue list\n  ferry queue list --json | jq -r '.[] | select(.consumers == 0) | .name'"
    )]
    List,
    /// Declare a queue (durable unless --transient).
    #[command(
        after_help = "Examples:\n  ferry queue create orders.dead\n  ferry queue create orders.work --arg x-dead-letter-exchange=dlx --arg x-message-ttl=60000\n  ferry queue create payments --arg x-delayed-retry-min=200 --arg x-delivery-limit=3"
    )]
    Create {
        /// Queue name.
        name: String,
        /// Virtual host (as in the AMQP URL; `/` is the default one).
        #[arg(long, default_value = "/")]
        vhost: String,
        /// A transient queue (gone at restart).
        #[arg(long)]
        transient: bool,
        /// Delete the queue once its last consumer cancels (AMQP auto-delete).
        #[arg(long)]
        auto_delete: bool,
        /// Queue argument, e.g. --arg x-dead-letter-exchange=dlx --arg x-message-ttl=60000;
        /// a value that parses as JSON (numbers, true/false) is sent as such. Repeatable.
        #[arg(long = "arg", value_name = "KEY=VALUE")]
        arguments: Vec<String>,
    },
    /// Delete a queue and its messages.
    #[command(
        after_help = "Examples:\n  ferry queue delete orders.work --if-empty\n  ferry queue delete jobs --vhost staging --if-unused"
    )]
    Delete {
        /// Queue name.
        name: String,
        /// Virtual host (as in the AMQP URL; `/` is the default one).
        #[arg(long, default_value = "/")]
        vhost: String,
        /// Only if it has no consumers.
        #[arg(long)]
        if_unused: bool,
        /// Only if it has no ready messages.
        #[arg(long)]
        if_empty: bool,
    },
    /// Show a queue's properties and counts.
    #[command(
        after_help = "Examples:\n  ferry queue describe orders.work\n  ferry queue describe jobs --vhost staging --json"
    )]
    Describe {
        /// Queue name.
        name: String,
        /// Virtual host (as in the AMQP URL; `/` is the default one).
        #[arg(long, default_value = "/")]
        vhost: String,
    },
    /// Remove every ready message (unacked ones stay).
    #[command(after_help = "Example:\n  ferry queue purge orders.work")]
    Purge {
        /// Queue name.
        name: String,
        /// Virtual host (as in the AMQP URL; `/` is the default one).
        #[arg(long, default_value = "/")]
        vhost: String,
    },
}

/// `ferry exchange ...`
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  ferry exchange create dlx --type fanout\n  ferry exchange bind dlx orders.dead\n  ferry exchange list"
)]
pub struct ExchangeArgs {
    #[command(flatten)]
    pub conn: AdminConn,
    #[command(subcommand)]
    pub command: ExchangeCommand,
}

#[derive(Debug, Subcommand)]
pub enum ExchangeCommand {
    /// List exchanges of every vhost (topics show as `topic` exchanges of vhost /).
    #[command(after_help = "Examples:\n  ferry exchange list\n  ferry exchange list --json")]
    List,
    /// Declare an exchange (durable unless --transient).
    #[command(
        after_help = "Examples:\n  ferry exchange create dlx --type fanout\n  ferry exchange create events --type topic --transient"
    )]
    Create {
        /// Exchange name.
        name: String,
        /// direct, fanout, topic or headers.
        #[arg(long = "type", short = 't', default_value = "direct")]
        kind: String,
        /// Virtual host (as in the AMQP URL; `/` is the default one).
        #[arg(long, default_value = "/")]
        vhost: String,
        /// A transient exchange (gone at restart).
        #[arg(long)]
        transient: bool,
    },
    /// Delete an exchange and its bindings.
    #[command(
        after_help = "Examples:\n  ferry exchange delete dlx\n  ferry exchange delete events --vhost staging"
    )]
    Delete {
        /// Exchange name (a topic's exchange face goes with `ferry topic delete`).
        name: String,
        /// Virtual host (as in the AMQP URL; `/` is the default one).
        #[arg(long, default_value = "/")]
        vhost: String,
    },
    /// Bind a queue to an exchange.
    #[command(
        after_help = "Examples:\n  ferry exchange bind dlx orders.dead\n  ferry exchange bind orders orders.eu -k 'eu.#'      # a topic is a topic exchange"
    )]
    Bind {
        /// Source exchange.
        exchange: String,
        /// Destination queue.
        queue: String,
        /// Binding key (a pattern with `*` and `#` for topic exchanges and topics).
        #[arg(long, short = 'k', default_value = "")]
        routing_key: String,
        /// Virtual host (as in the AMQP URL; `/` is the default one).
        #[arg(long, default_value = "/")]
        vhost: String,
    },
    /// Remove a binding of a queue to an exchange.
    #[command(after_help = "Example:\n  ferry exchange unbind orders orders.eu -k 'eu.#'")]
    Unbind {
        /// Source exchange.
        exchange: String,
        /// Destination queue.
        queue: String,
        /// Binding key of the binding to remove.
        #[arg(long, short = 'k', default_value = "")]
        routing_key: String,
        /// Virtual host (as in the AMQP URL; `/` is the default one).
        #[arg(long, default_value = "/")]
        vhost: String,
    },
}

/// `ferry group ...`
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  ferry group list\n  ferry group describe billing\n  ferry group reset-offsets billing --topic orders --to-earliest"
)]
pub struct GroupArgs {
    #[command(flatten)]
    pub conn: AdminConn,
    #[command(subcommand)]
    pub command: GroupCommand,
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List consumer groups and their states.
    #[command(after_help = "Examples:\n  ferry group list\n  ferry group list --json")]
    List,
    /// Show a group's members, assignment, committed offsets and lag.
    ///
    /// One row per partition the group has committed or is assigned. COMMITTED is `-` when the
    /// group has not committed an offset there; its LAG then counts from the log start, which is
    /// what a consumer with auto.offset.reset=earliest still has to read. --json prints the
    /// admin API's document, which lists and counts the partitions the same way.
    #[command(
        after_help = "Examples:\n  ferry group describe billing\n  ferry group describe billing --json | jq .total_lag"
    )]
    Describe {
        /// Consumer group id (group.id).
        group: String,
    },
    /// Delete an empty group and its committed offsets (like kafka-consumer-groups --delete).
    #[command(after_help = "Example:\n  ferry group delete billing-old")]
    Delete {
        /// Consumer group id (group.id); it must have no members.
        group: String,
    },
    /// Move an empty group's committed offsets (like kafka-consumer-groups --reset-offsets).
    #[command(group(clap::ArgGroup::new("target").required(true)))]
    #[command(
        after_help = "Examples:\n  ferry group reset-offsets billing --topic orders --to-earliest\n  ferry group reset-offsets billing --to-timestamp 1767225600000 --dry-run"
    )]
    ResetOffsets {
        /// Consumer group id (group.id); it must have no members.
        group: String,
        /// Topic to reset [default: every topic the group has offsets for].
        #[arg(long)]
        topic: Option<String>,
        /// Partition of --topic; repeatable [default: all].
        #[arg(long = "partition", requires = "topic")]
        partitions: Vec<i32>,
        /// To each partition's oldest offset.
        #[arg(long, group = "target")]
        to_earliest: bool,
        /// To each partition's end (skip everything not yet consumed).
        #[arg(long, group = "target")]
        to_latest: bool,
        /// To this offset (clamped to each partition's range).
        #[arg(long, value_name = "OFFSET", group = "target")]
        to_offset: Option<i64>,
        /// First offset at or after this time (ms since the epoch).
        #[arg(long, value_name = "MS", group = "target")]
        to_timestamp: Option<i64>,
        /// Show the new offsets without committing them.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `ferry dlq ...`
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  ferry dlq list\n  ferry dlq browse orders.dead -n 5\n  ferry dlq replay orders.dead"
)]
pub struct DlqArgs {
    #[command(flatten)]
    pub conn: AdminConn,
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead-letter queues: queues bound to some queue's x-dead-letter-exchange (or named
    /// by its x-dead-letter-routing-key on the default exchange), and queues whose oldest ready
    /// message carries an x-death history.
    #[command(after_help = "Examples:\n  ferry dlq list\n  ferry dlq list --json")]
    List,
    /// Show dead letters without consuming them.
    #[command(
        after_help = "Examples:\n  ferry dlq browse orders.dead -n 5\n  ferry dlq browse orders.dead --json | jq '.[0].death'"
    )]
    Browse {
        /// The dead-letter queue.
        queue: String,
        /// Virtual host (as in the AMQP URL; `/` is the default one).
        #[arg(long, default_value = "/")]
        vhost: String,
        /// How many messages to show.
        #[arg(short = 'n', long, default_value_t = 10)]
        count: usize,
    },
    /// Move dead letters back to where they died from (the exchange and routing key of their
    /// first x-death entry), or to --exchange; each is settled here only once its copy is
    /// durable.
    #[command(
        after_help = "Examples:\n  ferry dlq replay orders.dead\n  ferry dlq replay orders.dead -n 100 --exchange orders --routing-key retry"
    )]
    Replay {
        /// The dead-letter queue.
        queue: String,
        /// Virtual host (as in the AMQP URL; `/` is the default one).
        #[arg(long, default_value = "/")]
        vhost: String,
        /// Most messages to move [default: all].
        #[arg(short = 'n', long)]
        count: Option<u64>,
        /// Publish to this exchange instead ("" is the default exchange).
        #[arg(long)]
        exchange: Option<String>,
        /// With --exchange: the routing key [default: each message's original one].
        #[arg(long, requires = "exchange")]
        routing_key: Option<String>,
    },
    /// Remove every ready dead letter.
    #[command(after_help = "Example:\n  ferry dlq purge orders.dead")]
    Purge {
        /// The dead-letter queue.
        queue: String,
        /// Virtual host (as in the AMQP URL; `/` is the default one).
        #[arg(long, default_value = "/")]
        vhost: String,
    },
}

/// `ferry produce`: kcat -P over the Kafka protocol.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Kafka listener to bootstrap from.
    #[arg(
        help_heading = "Connection (also from the environment)",
        short,
        long,
        value_name = "HOST:PORT",
        env = "FERRY_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    pub bootstrap: String,
    /// Topic to produce to.
    #[arg(short, long)]
    pub topic: String,
    /// Partition [default: by key (Kafka's murmur2), round-robin batches without a key].
    #[arg(short, long)]
    pub partition: Option<i32>,
    /// Read messages from FILE, one per line [default: stdin].
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Split each line at the first SEP into key and value (kcat -K).
    #[arg(short = 'K', long = "key-delimiter", value_name = "SEP")]
    pub key_delimiter: Option<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `ferry consume`: kcat -C over the Kafka protocol.
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Kafka listener to bootstrap from.
    #[arg(
        help_heading = "Connection (also from the environment)",
        short,
        long,
        value_name = "HOST:PORT",
        env = "FERRY_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    pub bootstrap: String,
    /// Topic to consume.
    #[arg(short, long)]
    pub topic: String,
    /// Partition [default: all].
    #[arg(short, long)]
    pub partition: Option<i32>,
    /// Where to start: beginning, end, an offset N, or -N for the last N messages of each
    /// partition (-N stops at the end like `tail -n`, unless --follow).
    #[arg(
        short = 'o',
        long,
        default_value = "beginning",
        allow_hyphen_values = true
    )]
    pub offset: String,
    /// Stop after COUNT messages.
    #[arg(short = 'c', long)]
    pub count: Option<u64>,
    /// Stop at the end of the partitions instead of waiting for more (kcat -e).
    #[arg(short = 'e', long, conflicts_with = "follow")]
    pub exit: bool,
    /// With -o -N: keep waiting for new messages after the last N (like `tail -f`).
    #[arg(short = 'F', long)]
    pub follow: bool,
    /// Print `key SEP value` instead of the value alone.
    #[arg(short = 'K', long = "key-delimiter", value_name = "SEP")]
    pub key_delimiter: Option<String>,
    /// One JSON object per message: topic, partition, offset, timestamp, key, value, headers.
    #[arg(long)]
    pub json: bool,
}

// The library takes plain values; these carry the parsed command line over.

impl From<AdminConn> for ferry::admin_cli::commands::AdminConn {
    fn from(a: AdminConn) -> Self {
        Self {
            admin_url: a.admin_url,
            user: a.user,
            password: a.password,
            cacert: a.cacert,
            json: a.json,
        }
    }
}

impl From<TopicArgs> for ferry::admin_cli::commands::TopicArgs {
    fn from(a: TopicArgs) -> Self {
        Self {
            conn: a.conn.into(),
            command: a.command.into(),
        }
    }
}

impl From<TopicCommand> for ferry::admin_cli::commands::TopicCommand {
    fn from(a: TopicCommand) -> Self {
        match a {
            TopicCommand::List => Self::List,
            TopicCommand::Create {
                name,
                partitions,
                configs,
                if_not_exists,
            } => Self::Create {
                name,
                partitions,
                configs,
                if_not_exists,
            },
            TopicCommand::Delete { name } => Self::Delete { name },
            TopicCommand::Describe { name } => Self::Describe { name },
            TopicCommand::AddPartitions { name, count } => Self::AddPartitions { name, count },
            TopicCommand::Alter {
                name,
                configs,
                delete,
            } => Self::Alter {
                name,
                configs,
                delete,
            },
        }
    }
}

impl From<QueueArgs> for ferry::admin_cli::commands::QueueArgs {
    fn from(a: QueueArgs) -> Self {
        Self {
            conn: a.conn.into(),
            command: a.command.into(),
        }
    }
}

impl From<QueueCommand> for ferry::admin_cli::commands::QueueCommand {
    fn from(a: QueueCommand) -> Self {
        match a {
            QueueCommand::List => Self::List,
            QueueCommand::Create {
                name,
                vhost,
                transient,
                auto_delete,
                arguments,
            } => Self::Create {
                name,
                vhost,
                transient,
                auto_delete,
                arguments,
            },
            QueueCommand::Delete {
                name,
                vhost,
                if_unused,
                if_empty,
            } => Self::Delete {
                name,
                vhost,
                if_unused,
                if_empty,
            },
            QueueCommand::Describe { name, vhost } => Self::Describe { name, vhost },
            QueueCommand::Purge { name, vhost } => Self::Purge { name, vhost },
        }
    }
}

impl From<ExchangeArgs> for ferry::admin_cli::commands::ExchangeArgs {
    fn from(a: ExchangeArgs) -> Self {
        Self {
            conn: a.conn.into(),
            command: a.command.into(),
        }
    }
}

impl From<ExchangeCommand> for ferry::admin_cli::commands::ExchangeCommand {
    fn from(a: ExchangeCommand) -> Self {
        match a {
            ExchangeCommand::List => Self::List,
            ExchangeCommand::Create {
                name,
                kind,
                vhost,
                transient,
            } => Self::Create {
                name,
                kind,
                vhost,
                transient,
            },
            ExchangeCommand::Delete { name, vhost } => Self::Delete { name, vhost },
            ExchangeCommand::Bind {
                exchange,
                queue,
                routing_key,
                vhost,
            } => Self::Bind {
                exchange,
                queue,
                routing_key,
                vhost,
            },
            ExchangeCommand::Unbind {
                exchange,
                queue,
                routing_key,
                vhost,
            } => Self::Unbind {
                exchange,
                queue,
                routing_key,
                vhost,
            },
        }
    }
}

impl From<GroupArgs> for ferry::admin_cli::commands::GroupArgs {
    fn from(a: GroupArgs) -> Self {
        Self {
            conn: a.conn.into(),
            command: a.command.into(),
        }
    }
}

impl From<GroupCommand> for ferry::admin_cli::commands::GroupCommand {
    fn from(a: GroupCommand) -> Self {
        match a {
            GroupCommand::List => Self::List,
            GroupCommand::Describe { group } => Self::Describe { group },
            GroupCommand::Delete { group } => Self::Delete { group },
            GroupCommand::ResetOffsets {
                group,
                topic,
                partitions,
                to_earliest,
                to_latest,
                to_offset,
                to_timestamp,
                dry_run,
            } => Self::ResetOffsets {
                group,
                topic,
                partitions,
                to_earliest,
                to_latest,
                to_offset,
                to_timestamp,
                dry_run,
            },
        }
    }
}

impl From<DlqArgs> for ferry::admin_cli::commands::DlqArgs {
    fn from(a: DlqArgs) -> Self {
        Self {
            conn: a.conn.into(),
            command: a.command.into(),
        }
    }
}

impl From<DlqCommand> for ferry::admin_cli::commands::DlqCommand {
    fn from(a: DlqCommand) -> Self {
        match a {
            DlqCommand::List => Self::List,
            DlqCommand::Browse {
                queue,
                vhost,
                count,
            } => Self::Browse {
                queue,
                vhost,
                count,
            },
            DlqCommand::Replay {
                queue,
                vhost,
                count,
                exchange,
                routing_key,
            } => Self::Replay {
                queue,
                vhost,
                count,
                exchange,
                routing_key,
            },
            DlqCommand::Purge { queue, vhost } => Self::Purge { queue, vhost },
        }
    }
}

impl From<ProduceArgs> for ferry::admin_cli::commands::ProduceArgs {
    fn from(a: ProduceArgs) -> Self {
        Self {
            bootstrap: a.bootstrap,
            topic: a.topic,
            partition: a.partition,
            file: a.file,
            key_delimiter: a.key_delimiter,
            json: a.json,
        }
    }
}

impl From<ConsumeArgs> for ferry::admin_cli::commands::ConsumeArgs {
    fn from(a: ConsumeArgs) -> Self {
        Self {
            bootstrap: a.bootstrap,
            topic: a.topic,
            partition: a.partition,
            offset: a.offset,
            count: a.count,
            exit: a.exit,
            follow: a.follow,
            key_delimiter: a.key_delimiter,
            json: a.json,
        }
    }
}
