//! Flags of `ferry bench kafka|amqp|native|es`, as clap derive types. They convert into the library's
//! plain [`ferry::bench::BenchTarget`], so clap stays in the binary. The two benches share flag names: `-b` for
//! the broker, `--size`/`--sizes`, `--records`/`--messages`, `--duration`, `--timeout`,
//! `--keep`, `--json`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// `ferry bench <target>`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub target: BenchTarget,
}

#[derive(Debug, Subcommand)]
pub enum BenchTarget {
    /// Load-test any Kafka-compatible broker (Ferry, Apache Kafka, Redpanda, ...) over the Kafka
    /// protocol: produce (acks=all) and consume throughput in records/s and MB/s, end-to-end
    /// latency p50/p99, and this client's own CPU share, for every record size x partition
    /// count. Each case uses a fresh topic, deleted afterwards unless --keep.
    #[command(
        after_help = "Examples:\n  ferry bench kafka                              # 4 cases of 64 MiB against 127.0.0.1:9092\n  ferry bench kafka -b kafka-1:9092 --sizes 1KiB --partitions 8 --duration 30\n  ferry bench kafka --records 100000 --latency-rate 0 --json > run.json\n  ferry bench kafka -b host:9093 --tls --sasl-mechanism SCRAM-SHA-512 --sasl-user bench"
    )]
    Kafka(KafkaBenchArgs),
    /// Load-test any AMQP 0-9-1 broker (Ferry, RabbitMQ, ...): one publisher with publisher
    /// confirms and one consumer with manual acks on one durable queue, persistent messages;
    /// reports published+confirmed and consumed messages/s, end-to-end latency p50/p99/p99.9,
    /// and this client's own CPU share, for every message size. Each size uses a fresh queue,
    /// deleted afterwards unless --keep.
    #[command(
        after_help = "Examples:\n  ferry bench amqp                               # 16 B and 1 KiB, 10 s each, against 127.0.0.1:5672\n  ferry bench amqp -b amqp://guest:guest@rabbit:5672/%2f --size 1KiB --rate 10000\n  ferry bench amqp --size 16 --messages 1000000 --no-consumer   # what queued messages cost\n  ferry bench amqp -b amqps://guest:guest@localhost:5671/%2f --cacert ca.pem"
    )]
    Amqp(AmqpBenchArgs),
    /// Load-test Ferry's native protocol (QUIC, or TCP with --transport tcp): confirmed
    /// publishes (the SDK's requests, pipelined on one publish stream) with a window in flight,
    /// and one subscription acking every
    /// delivery, on a fresh durable queue per size; reports messages/s, confirm and end-to-end
    /// latency, and the client's and a local broker's CPU.
    #[command(
        after_help = "Examples:\n  ferry bench native --cert-file ferry-data/native/cert.pem\n  ferry bench native --fingerprint AB:CD:... --size 1KiB --rate 10000 --duration 10\n  ferry bench native --cert-file ferry-data/native/cert.pem --transport tcp --native-addr 127.0.0.1:7448"
    )]
    Native(NativeBenchArgs),
    /// Load-test Ferry's event store over the native protocol: one-event appends with
    /// expected revisions (NoStream, then Exact) to 1 stream and to many streams, with many
    /// appends in flight where the streams allow, then a catch-up read of the whole store
    /// ($all); reports appends/s, append latency, events/s, and the client's and a local
    /// broker's CPU. Uses a fresh event-store topic, deleted afterwards unless --keep.
    #[command(
        after_help = "Examples:\n  ferry bench es --cert-file ferry-data/native/cert.pem          # 1 and 10,000 streams, 10 s each, then catch-up\n  ferry bench es --fingerprint AB:CD:... --streams 10000 --appends 500000 --concurrency 512\n  ferry bench es --cert-file ferry-data/native/cert.pem --appends 1000 --json --keep"
    )]
    Es(EsBenchArgs),
}

/// Flags of `ferry bench es`.
#[derive(Debug, Clone, Args)]
pub struct EsBenchArgs {
    /// The broker's native listener (UDP).
    #[arg(
        long,
        value_name = "IP:PORT",
        env = "FERRY_NATIVE_ADDR",
        default_value = "127.0.0.1:7447"
    )]
    pub native_addr: String,
    /// Pin the broker certificate's SHA-256 fingerprint (logged at start).
    #[arg(long, env = "FERRY_NATIVE_FINGERPRINT")]
    pub fingerprint: Option<String>,
    /// Pin the certificate in this PEM file (a local broker's <data_dir>/native/cert.pem).
    #[arg(long, value_name = "FILE")]
    pub cert_file: Option<PathBuf>,
    #[arg(long, env = "FERRY_USER", default_value = "guest")]
    pub user: String,
    #[arg(
        long,
        env = "FERRY_PASSWORD",
        default_value = "guest",
        hide_env_values = true
    )]
    pub password: String,
    /// One append case per count: the streams the appends go to, comma-separated.
    #[arg(
        long,
        value_name = "N,...",
        value_delimiter = ',',
        default_value = "1,10000"
    )]
    pub streams: Vec<u64>,
    /// Appends per case [default: append for 10 s].
    #[arg(long, value_name = "N", conflicts_with = "duration")]
    pub appends: Option<u64>,
    /// Append for this many seconds per case [default: 10].
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Appends in flight at once; with Exact, at most one per stream.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub concurrency: usize,
    /// QUIC connections the appends are spread over.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub connections: usize,
    /// Payload bytes of each event.
    #[arg(long, value_name = "BYTES", default_value = "100", value_parser = parse_bytes)]
    pub size: usize,
    /// Partitions of the bench store (1 gives a totally ordered $all).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub partitions: u32,
    /// Skip the catch-up read of $all.
    #[arg(long)]
    pub no_catch_up: bool,
    /// The broker's process id, to report its CPU [default: the process bound to the native
    /// port, when the address is a loopback one].
    #[arg(long, value_name = "PID")]
    pub broker_pid: Option<u32>,
    /// Keep the bench store.
    #[arg(long)]
    pub keep: bool,
    /// Print the results as one JSON document.
    #[arg(long)]
    pub json: bool,
}

impl From<EsBenchArgs> for ferry::bench::EsBenchSettings {
    fn from(a: EsBenchArgs) -> Self {
        Self {
            addr: a.native_addr,
            fingerprint: a.fingerprint,
            cert_file: a.cert_file,
            user: a.user,
            password: a.password,
            streams: a.streams,
            appends: a.appends,
            duration: a.duration,
            concurrency: a.concurrency,
            connections: a.connections,
            size: a.size,
            partitions: a.partitions,
            no_catch_up: a.no_catch_up,
            broker_pid: a.broker_pid,
            keep: a.keep,
            json: a.json,
        }
    }
}

/// Flags of `ferry bench native`.
#[derive(Debug, Clone, Args)]
pub struct NativeBenchArgs {
    /// The broker's native listener: UDP for QUIC, `native_tcp_listen` for --transport tcp
    /// (a `tcp://` or `quic://` prefix chooses the transport too).
    #[arg(
        long,
        value_name = "IP:PORT",
        env = "FERRY_NATIVE_ADDR",
        default_value = "127.0.0.1:7447"
    )]
    pub native_addr: String,
    /// quic or tcp (the broker's `native_tcp_listen`).
    #[arg(long, default_value = "quic", value_parser = ["quic", "tcp"])]
    pub transport: String,
    /// The broker process whose CPU to report [default: the local process bound to the port].
    #[arg(long, value_name = "PID")]
    pub broker_pid: Option<u32>,
    /// Pin the broker certificate's SHA-256 fingerprint (logged at start).
    #[arg(long, env = "FERRY_NATIVE_FINGERPRINT")]
    pub fingerprint: Option<String>,
    /// Pin the certificate in this PEM file (a local broker's <data_dir>/native/cert.pem).
    #[arg(long, value_name = "FILE")]
    pub cert_file: Option<PathBuf>,
    #[arg(long, env = "FERRY_USER", default_value = "guest")]
    pub user: String,
    #[arg(
        long,
        env = "FERRY_PASSWORD",
        default_value = "guest",
        hide_env_values = true
    )]
    pub password: String,
    /// Messages to publish (and consume) per size [default: publish for 10 s].
    #[arg(long, conflicts_with = "duration")]
    pub messages: Option<u64>,
    /// Publish for this many seconds per size.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Message sizes in bytes, comma-separated (k/KiB, M/MiB accepted).
    #[arg(long, value_delimiter = ',', value_parser = parse_bytes, default_value = "16,1KiB")]
    pub size: Vec<usize>,
    /// Publish requests in flight, awaiting their confirms.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Messages per publish request: 1 publishes one by one, more uses publish_batch.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// The subscription's prefetch.
    #[arg(long, default_value_t = 256)]
    pub prefetch: u32,
    /// Publish at most this many messages per second.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Keep the bench queues.
    #[arg(long)]
    pub keep: bool,
    /// Print the results as one JSON document.
    #[arg(long)]
    pub json: bool,
}

impl From<NativeBenchArgs> for ferry::bench::NativeBenchSettings {
    fn from(a: NativeBenchArgs) -> Self {
        Self {
            addr: a.native_addr,
            tcp: a.transport == "tcp",
            broker_pid: a.broker_pid,
            fingerprint: a.fingerprint,
            cert_file: a.cert_file,
            user: a.user,
            password: a.password,
            messages: a.messages,
            duration: a.duration,
            size: a.size,
            window: a.window,
            batch: a.batch,
            prefetch: a.prefetch,
            rate: a.rate,
            keep: a.keep,
            json: a.json,
        }
    }
}

/// Flags of `ferry bench amqp`.
#[derive(Debug, Clone, Args)]
pub struct AmqpBenchArgs {
    /// Broker URL (the vhost `/` is written %2f); `-b` as in `ferry bench kafka`.
    #[arg(
        short = 'b',
        long,
        value_name = "URL",
        env = "FERRY_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        help_heading = "Connection (also from the environment)"
    )]
    pub url: String,
    /// For amqps:// URLs: the CA certificate(s) the broker's certificate must chain to (PEM)
    /// [default: the system's CA bundle].
    #[arg(
        long,
        value_name = "FILE",
        help_heading = "Connection (also from the environment)"
    )]
    pub cacert: Option<PathBuf>,
    /// Messages to publish (and consume) per size [default: publish for 10 s].
    #[arg(long, alias = "records", value_name = "N", conflicts_with = "duration")]
    pub messages: Option<u64>,
    /// Publish for this many seconds per size [default: 10].
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Message body sizes in bytes, comma-separated (suffixes k/KiB and M/MiB are accepted).
    #[arg(long, alias = "sizes", value_name = "BYTES,...", value_delimiter = ',', default_value = "16,1024", value_parser = parse_bytes)]
    pub size: Vec<usize>,
    /// Unconfirmed messages the publisher keeps in flight.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub window: u64,
    /// The consumer's basic.qos prefetch count.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub prefetch: u16,
    /// Publish at most this many messages per second (default: as fast as confirms allow),
    /// to compare latency between brokers at the same load.
    #[arg(long, value_name = "N")]
    pub rate: Option<u64>,
    /// Only publish (no consumer), and keep the queue with its messages: for measuring what
    /// queued messages cost the broker.
    #[arg(long)]
    pub no_consumer: bool,
    /// Declare the bench queue non-durable (messages stay persistent): shows what keeping a
    /// durable queue's delivery state costs the broker.
    #[arg(long)]
    pub transient_queue: bool,
    /// Publish transient (delivery-mode 1) messages instead of persistent (2) ones.
    #[arg(long)]
    pub transient: bool,
    /// The broker's process id, to report its CPU per message [default: the process listening
    /// on the URL's port, when the URL names a loopback address].
    #[arg(long, value_name = "PID")]
    pub broker_pid: Option<u32>,
    /// Seconds without a confirm, delivery or answer from the broker before giving up.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub timeout: u64,
    /// Keep the bench queues instead of deleting them at the end of each size.
    #[arg(long)]
    pub keep: bool,
    /// Print every result as one JSON document on stdout (and nothing else there).
    #[arg(long)]
    pub json: bool,
}

/// Flags of `ferry bench kafka`.
#[derive(Debug, Clone, Args)]
pub struct KafkaBenchArgs {
    /// Kafka listener to bootstrap from (as for `ferry produce`/`consume`).
    #[arg(
        short = 'b',
        long,
        value_name = "HOST:PORT",
        env = "FERRY_BOOTSTRAP",
        default_value = "127.0.0.1:9092",
        help_heading = "Connection (also from the environment)"
    )]
    pub bootstrap: String,
    /// Connect with TLS (Kafka's SSL; SASL_SSL with --sasl-mechanism), e.g. to
    /// kafka_tls_listen.
    #[arg(long, help_heading = "Connection (also from the environment)")]
    pub tls: bool,
    /// With --tls: the CA certificate(s) the broker's certificate must chain to (PEM)
    /// [default: the system's CA bundle].
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls",
        help_heading = "Connection (also from the environment)"
    )]
    pub cacert: Option<PathBuf>,
    /// Log in with SASL: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_PLAINTEXT; SASL_SSL
    /// with --tls).
    #[arg(
        long,
        value_name = "MECHANISM",
        requires = "sasl_user",
        value_parser = parse_mechanism,
        help_heading = "Connection (also from the environment)"
    )]
    pub sasl_mechanism: Option<ferry::client::sasl::SaslMechanism>,
    /// The SASL user.
    #[arg(
        long,
        value_name = "USER",
        env = "FERRY_SASL_USER",
        requires = "sasl_mechanism",
        help_heading = "Connection (also from the environment)"
    )]
    pub sasl_user: Option<String>,
    /// The SASL user's password.
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "FERRY_SASL_PASSWORD",
        hide_env_values = true,
        default_value = "",
        hide_default_value = true,
        help_heading = "Connection (also from the environment)"
    )]
    pub sasl_password: String,
    /// Records to produce (then consume) per case [default: 64 MiB of values, i.e. 671,088
    /// of 100 B or 65,536 of 1 KiB; the default run takes well under a minute].
    #[arg(
        long,
        alias = "messages",
        value_name = "N",
        conflicts_with = "duration"
    )]
    pub records: Option<u64>,
    /// Produce for this many seconds per case instead of a fixed record count.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Record value sizes in bytes, comma-separated (suffixes k/KiB and M/MiB are accepted).
    #[arg(long, alias = "size", value_name = "BYTES,...", value_delimiter = ',', default_value = "100,1024", value_parser = parse_bytes)]
    pub sizes: Vec<usize>,
    /// Partition counts, comma-separated; one case per size x partition count.
    #[arg(
        long,
        value_name = "N,...",
        value_delimiter = ',',
        default_value = "1,8"
    )]
    pub partitions: Vec<i32>,
    /// Produce requests in flight per partition connection.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub in_flight: usize,
    /// Target size of one record batch (one produce request per batch).
    #[arg(long, value_name = "BYTES", default_value = "64KiB", value_parser = parse_bytes)]
    pub batch_bytes: usize,
    /// Most bytes one fetch may return per partition.
    #[arg(long, value_name = "BYTES", default_value = "8MiB", value_parser = parse_bytes)]
    pub fetch_bytes: usize,
    /// Fetches in flight per partition connection in the consume phase: 1 waits for each answer
    /// as a Kafka consumer does; more pipelines them at the offsets the last answer predicts, so
    /// the client keeps the broker's socket busy (every record is still counted exactly once).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub fetch_in_flight: usize,
    /// Records per second (all partitions together) in the end-to-end latency phase; 0 skips it.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub latency_rate: u64,
    /// Length of the end-to-end latency phase.
    #[arg(long, value_name = "SECS", default_value_t = 3.0)]
    pub latency_secs: f64,
    /// Replication factor of the bench topics; -1 takes the broker's default.
    #[arg(long, value_name = "N", default_value_t = -1, allow_negative_numbers = true)]
    pub replication_factor: i16,
    /// Seconds to wait for any one answer from the broker before giving up.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub timeout: u64,
    /// Keep the bench topics instead of deleting them at the end of each case.
    #[arg(long)]
    pub keep: bool,
    /// Print every result as one JSON document on stdout (and nothing else there).
    #[arg(long)]
    pub json: bool,
    /// Measure validation on publish: each case's topic gets `ferry.schema.validation=true`,
    /// an Avro schema is registered under `<topic>-value` and every value is a
    /// Confluent-framed Avro order of the case's size. Needs Ferry's schema registry (--registry).
    #[arg(
        long,
        value_name = "FORMAT",
        value_enum,
        help_heading = "Schema validation"
    )]
    pub schema: Option<BenchSchemaFormat>,
    /// The schema registry for --schema (Ferry's HTTP listener).
    #[arg(
        long = "registry",
        alias = "schema-registry",
        value_name = "URL",
        default_value = "http://127.0.0.1:8080",
        help_heading = "Schema validation"
    )]
    pub schema_registry: String,
    /// Basic-auth user for --registry (the admin API's).
    #[arg(
        long = "registry-user",
        alias = "schema-registry-user",
        value_name = "USER",
        default_value = "admin",
        help_heading = "Schema validation"
    )]
    pub schema_registry_user: String,
    /// Basic-auth password for --registry.
    #[arg(
        long = "registry-password",
        alias = "schema-registry-password",
        value_name = "PASSWORD",
        default_value = "admin",
        hide_env_values = true,
        help_heading = "Schema validation",
        env = "FERRY_SCHEMA_REGISTRY_PASSWORD"
    )]
    pub schema_registry_password: String,
}

/// Record formats `ferry bench kafka --schema` can send.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum BenchSchemaFormat {
    Avro,
}

// The library takes plain settings; these carry the parsed flags over.

impl From<BenchArgs> for ferry::bench::BenchTarget {
    fn from(a: BenchArgs) -> Self {
        a.target.into()
    }
}

impl From<BenchTarget> for ferry::bench::BenchTarget {
    fn from(a: BenchTarget) -> Self {
        match a {
            BenchTarget::Kafka(v) => Self::Kafka(v.into()),
            BenchTarget::Amqp(v) => Self::Amqp(v.into()),
            BenchTarget::Native(v) => Self::Native(v.into()),
            BenchTarget::Es(v) => Self::Es(v.into()),
        }
    }
}

impl From<AmqpBenchArgs> for ferry::bench::AmqpBenchSettings {
    fn from(a: AmqpBenchArgs) -> Self {
        Self {
            url: a.url,
            cacert: a.cacert,
            messages: a.messages,
            duration: a.duration,
            size: a.size,
            window: a.window,
            prefetch: a.prefetch,
            rate: a.rate,
            no_consumer: a.no_consumer,
            transient_queue: a.transient_queue,
            transient: a.transient,
            broker_pid: a.broker_pid,
            timeout: a.timeout,
            keep: a.keep,
            json: a.json,
        }
    }
}

impl From<KafkaBenchArgs> for ferry::bench::KafkaBenchSettings {
    fn from(a: KafkaBenchArgs) -> Self {
        let sasl = match (a.sasl_mechanism, a.sasl_user) {
            (Some(mechanism), Some(user)) => Some(ferry::client::sasl::SaslLogin {
                mechanism,
                user,
                password: a.sasl_password,
            }),
            _ => None,
        };
        Self {
            bootstrap: a.bootstrap,
            tls: a.tls,
            cacert: a.cacert,
            sasl,
            records: a.records,
            duration: a.duration,
            sizes: a.sizes,
            partitions: a.partitions,
            in_flight: a.in_flight,
            batch_bytes: a.batch_bytes,
            fetch_bytes: a.fetch_bytes,
            fetch_in_flight: a.fetch_in_flight,
            latency_rate: a.latency_rate,
            latency_secs: a.latency_secs,
            replication_factor: a.replication_factor,
            timeout: a.timeout,
            keep: a.keep,
            json: a.json,
            schema: a.schema.map(|_| ferry::bench::kafka::SchemaBench {
                registry: a.schema_registry,
                user: a.schema_registry_user,
                password: a.schema_registry_password,
            }),
        }
    }
}

fn parse_mechanism(s: &str) -> Result<ferry::client::sasl::SaslMechanism, String> {
    s.parse()
}

/// `100`, `64k`, `64KiB`, `1M`, `8MiB` as a byte count.
fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("`{s}` is not a byte count (try 100, 64KiB or 8MiB)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{s}` (use k/KiB or M/MiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}
