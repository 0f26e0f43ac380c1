//! What the admin subcommands (`ferry topic|queue|exchange|group|dlq` and `ferry
//! produce|consume`) are asked to do, as plain values: the binary parses the command line
//! (clap types in `src/cli/admin.rs`) and converts it into these, so the library carries no
//! command-line types. [`super`] runs them.

use std::path::PathBuf;

/// Where the admin API is and how to log in; shared by every admin subcommand.
#[derive(Debug, Clone)]
pub struct AdminConn {
    /// Base URL of the broker's HTTP listener.
    pub admin_url: String,
    /// Admin user (the server's observe.admin_user).
    pub user: String,
    /// Admin password (the server's observe.admin_password).
    pub password: String,
    /// CA certificate (PEM) to trust for an https:// admin URL; `None`: the system CA bundle.
    pub cacert: Option<std::path::PathBuf>,
    /// Print the API's JSON instead of a table (for scripts).
    pub json: bool,
}

/// `ferry topic ...`
#[derive(Debug, Clone)]
pub struct TopicArgs {
    pub conn: AdminConn,
    pub command: TopicCommand,
}

#[derive(Debug, Clone)]
pub enum TopicCommand {
    /// List topics with partition counts and sizes.
    List,
    /// Create a topic.
    Create {
        /// Topic name (Kafka's rules: letters, digits, `.`, `_`, `-`).
        name: String,
        /// Number of partitions (fixed once created).
        partitions: u32,
        /// Topic config override (Kafka names), e.g. -c retention.ms=60000; repeatable.
        configs: Vec<String>,
        /// Succeed without changes when the topic exists already (kafka-topics
        /// --if-not-exists).
        if_not_exists: bool,
    },
    /// Delete a topic and its data.
    Delete {
        /// Topic name.
        name: String,
    },
    /// Show a topic's partitions, offsets and config overrides.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Grow a topic to COUNT partitions (Kafka's CreatePartitions; never fewer).
    AddPartitions {
        /// Topic name.
        name: String,
        /// The new total partition count.
        count: u32,
    },
    /// Change config overrides: set `configs` (KEY=VALUE), return `delete` keys to the default.
    Alter {
        /// Topic name.
        name: String,
        /// KEY=VALUE overrides to set.
        configs: Vec<String>,
        /// Keys to return to the broker default.
        delete: Vec<String>,
    },
}

/// `ferry queue ...`
#[derive(Debug, Clone)]
pub struct QueueArgs {
    pub conn: AdminConn,
    pub command: QueueCommand,
}

#[derive(Debug, Clone)]
pub enum QueueCommand {
    /// List queues with ready/unacked counts and consumers.
    List,
    /// Declare a queue (durable unless --transient).
    Create {
        /// Queue name.
        name: String,
        /// Virtual host (as in the AMQP URL; `/` is the default one).
        vhost: String,
        /// A transient queue (gone at restart).
        transient: bool,
        /// Delete the queue once its last consumer cancels (AMQP auto-delete).
        auto_delete: bool,
        /// Queue argument, e.g. --arg x-dead-letter-exchange=dlx --arg x-message-ttl=60000;
        /// a value that parses as JSON (numbers, true/false) is sent as such. Repeatable.
        arguments: Vec<String>,
    },
    /// Delete a queue and its messages.
    Delete {
        /// Queue name.
        name: String,
        /// Virtual host (as in the AMQP URL; `/` is the default one).
        vhost: String,
        /// Only if it has no consumers.
        if_unused: bool,
        /// Only if it has no ready messages.
        if_empty: bool,
    },
    /// Show a queue's properties and counts.
    Describe {
        /// Queue name.
        name: String,
        /// Virtual host (as in the AMQP URL; `/` is the default one).
        vhost: String,
    },
    /// Remove every ready message (unacked ones stay).
    Purge {
        /// Queue name.
        name: String,
        /// Virtual host (as in the AMQP URL; `/` is the default one).
        vhost: String,
    },
}

/// `ferry exchange ...`
#[derive(Debug, Clone)]
pub struct ExchangeArgs {
    pub conn: AdminConn,
    pub command: ExchangeCommand,
}

#[derive(Debug, Clone)]
pub enum ExchangeCommand {
    /// List exchanges (topics show as `topic` exchanges of vhost /).
    List,
    /// Declare an exchange (durable unless --transient).
    Create {
        /// Exchange name.
        name: String,
        /// direct, fanout, topic or headers.
        kind: String,
        /// Virtual host (as in the AMQP URL; `/` is the default one).
        vhost: String,
        /// A transient exchange (gone at restart).
        transient: bool,
    },
    /// Delete an exchange and its bindings.
    Delete {
        /// Exchange name (a topic's exchange face goes with `ferry topic delete`).
        name: String,
        /// Virtual host (as in the AMQP URL; `/` is the default one).
        vhost: String,
    },
    /// Bind a queue to an exchange.
    Bind {
        /// Source exchange.
        exchange: String,
        /// Destination queue.
        queue: String,
        /// Binding key (a pattern with `*` and `#` for topic exchanges and topics).
        routing_key: String,
        /// Virtual host (as in the AMQP URL; `/` is the default one).
        vhost: String,
    },
    /// Remove a binding of a queue to an exchange.
    Unbind {
        /// Source exchange.
        exchange: String,
        /// Destination queue.
        queue: String,
        /// Binding key of the binding to remove.
        routing_key: String,
        /// Virtual host (as in the AMQP URL; `/` is the default one).
        vhost: String,
    },
}

/// `ferry group ...`
#[derive(Debug, Clone)]
pub struct GroupArgs {
    pub conn: AdminConn,
    pub command: GroupCommand,
}

#[derive(Debug, Clone)]
pub enum GroupCommand {
    /// List consumer groups and their states.
    List,
    /// Show a group's members, assignment, committed offsets and lag.
    ///
    /// One row per partition the group has committed or is assigned. COMMITTED is `-` when the
    /// group has not committed an offset there; its LAG then counts from the log start, which is
    /// what a consumer with auto.offset.reset=earliest still has to read.
    Describe {
        /// Consumer group id (group.id).
        group: String,
    },
    /// Delete an empty group and its committed offsets (like kafka-consumer-groups --delete).
    Delete {
        /// Consumer group id (group.id); it must have no members.
        group: String,
    },
    /// Move an empty group's committed offsets (like kafka-consumer-groups --reset-offsets).
    ResetOffsets {
        /// Consumer group id (group.id); it must have no members.
        group: String,
        /// Topic to reset [default: every topic the group has offsets for].
        topic: Option<String>,
        /// Partition of --topic; repeatable [default: all].
        partitions: Vec<i32>,
        /// To each partition's oldest offset.
        to_earliest: bool,
        /// To each partition's end (skip everything not yet consumed).
        to_latest: bool,
        /// To this offset (clamped to each partition's range).
        to_offset: Option<i64>,
        /// First offset at or after this time (ms since the epoch).
        to_timestamp: Option<i64>,
        /// Show the new offsets without committing them.
        dry_run: bool,
    },
}

/// `ferry dlq ...`
#[derive(Debug, Clone)]
pub struct DlqArgs {
    pub conn: AdminConn,
    pub command: DlqCommand,
}

#[derive(Debug, Clone)]
pub enum DlqCommand {
    /// List dead-letter queues: queues bound to some queue's x-dead-letter-exchange (or named
    /// by its x-dead-letter-routing-key on the default exchange), and queues whose oldest ready
    /// message carries an x-death history.
    List,
    /// Show dead letters without consuming them.
    Browse {
        /// The dead-letter queue.
        queue: String,
        /// Virtual host (as in the AMQP URL; `/` is the default one).
        vhost: String,
        /// How many messages to show.
        count: usize,
    },
    /// Move dead letters back to where they died from (the exchange and routing key of their
    /// first x-death entry), or to --exchange; each is settled here only once its copy is
    /// durable.
    Replay {
        /// The dead-letter queue.
        queue: String,
        /// Virtual host (as in the AMQP URL; `/` is the default one).
        vhost: String,
        /// Most messages to move [default: all].
        count: Option<u64>,
        /// Publish to this exchange instead ("" is the default exchange).
        exchange: Option<String>,
        /// With --exchange: the routing key [default: each message's original one].
        routing_key: Option<String>,
    },
    /// Remove every ready dead letter.
    Purge {
        /// The dead-letter queue.
        queue: String,
        /// Virtual host (as in the AMQP URL; `/` is the default one).
        vhost: String,
    },
}

/// `ferry produce`: kcat -P over the Kafka protocol.
#[derive(Debug, Clone)]
pub struct ProduceArgs {
    /// Kafka listener to bootstrap from.
    pub bootstrap: String,
    /// Topic to produce to.
    pub topic: String,
    /// Partition [default: by key (Kafka's murmur2), round-robin batches without a key].
    pub partition: Option<i32>,
    /// Read messages from FILE, one per line [default: stdin].
    pub file: Option<PathBuf>,
    /// Split each line at the first SEP into key and value (kcat -K).
    pub key_delimiter: Option<String>,
    /// Print the summary as JSON.
    pub json: bool,
}

/// `ferry consume`: kcat -C over the Kafka protocol.
#[derive(Debug, Clone)]
pub struct ConsumeArgs {
    /// Kafka listener to bootstrap from.
    pub bootstrap: String,
    /// Topic to consume.
    pub topic: String,
    /// Partition [default: all].
    pub partition: Option<i32>,
    /// Where to start: beginning, end, an offset N, or -N for the last N messages of each
    /// partition (-N stops at the end like `tail -n`, unless --follow).
    pub offset: String,
    /// Stop after COUNT messages.
    pub count: Option<u64>,
    /// Stop at the end of the partitions instead of waiting for more (kcat -e).
    pub exit: bool,
    /// With -o -N: keep waiting for new messages after the last N (like `tail -f`).
    pub follow: bool,
    /// Print `key SEP value` instead of the value alone.
    pub key_delimiter: Option<String>,
    /// One JSON object per message: topic, partition, offset, timestamp, key, value, headers.
    pub json: bool,
}
