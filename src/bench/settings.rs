//! What `ferry bench kafka|amqp` runs with, as plain values: the binary parses its flags (clap
//! types in `src/cli/bench.rs`) and converts them into these, so the library carries no
//! command-line types. Field docs are the flags' meaning; defaults are the binary's.

#[derive(Debug, Clone)]
/// Which benchmark to run, with its settings.
pub enum BenchTarget {
    /// Load-test any Kafka-compatible broker (Ferry, Apache Kafka, Redpanda, ...) over the Kafka
    /// protocol: produce (acks=all) and consume throughput in records/s and MB/s, end-to-end
    /// latency p50/p99, and this client's own CPU share, for every record size x partition
    /// count. Each case uses a fresh topic, deleted afterwards unless --keep.
    Kafka(KafkaBenchSettings),
    /// Load-test any AMQP 0-9-1 broker (Ferry, RabbitMQ, ...): one publisher with publisher
    /// confirms and one consumer with manual acks on one durable queue, persistent messages;
    /// reports published+confirmed and consumed messages/s, end-to-end latency p50/p99/p99.9,
    /// and this client's own CPU share, for every message size. Each size uses a fresh queue,
    /// deleted afterwards unless --keep.
    Amqp(AmqpBenchSettings),
    /// Load-test Ferry's native protocol: confirmed publishes (a window in flight) and one
    /// acking subscription on a durable queue; the same figures as `Amqp`.
    Native(super::NativeBenchSettings),
    /// Load-test Ferry's event store over the native protocol: one-event appends with expected
    /// revisions to 1 and to many streams, and a catch-up read of `$all`.
    Es(super::EsBenchSettings),
}

/// Flags of `ferry bench amqp`.
#[derive(Debug, Clone)]
pub struct AmqpBenchSettings {
    /// Broker URL (the vhost `/` is written %2f); `-b` as in `ferry bench kafka`.
    /// `amqps://` connects with TLS (RabbitMQ's port 5671).
    pub url: String,
    /// For `amqps://`: the CA certificate(s) the broker's certificate must chain to (PEM)
    /// [default: the system's CA bundle].
    pub cacert: Option<std::path::PathBuf>,
    /// Messages to publish (and consume) per size [default: publish for 10 s].
    pub messages: Option<u64>,
    /// Publish for this many seconds per size [default: 10].
    pub duration: Option<f64>,
    /// Message body sizes in bytes, comma-separated (suffixes k/KiB and M/MiB are accepted).
    pub size: Vec<usize>,
    /// Unconfirmed messages the publisher keeps in flight.
    pub window: u64,
    /// The consumer's basic.qos prefetch count.
    pub prefetch: u16,
    /// Publish at most this many messages per second (default: as fast as confirms allow),
    /// to compare latency between brokers at the same load.
    pub rate: Option<u64>,
    /// Only publish (no consumer), and keep the queue with its messages: for measuring what
    /// queued messages cost the broker.
    pub no_consumer: bool,
    /// Declare the bench queue non-durable (messages stay persistent): shows what keeping a
    /// durable queue's delivery state costs the broker.
    pub transient_queue: bool,
    /// Publish transient (delivery-mode 1) messages instead of persistent (2) ones.
    pub transient: bool,
    /// The broker's process id, to report its CPU per message [default: the process listening
    /// on the URL's port, when the URL names a loopback address].
    pub broker_pid: Option<u32>,
    /// Seconds without a confirm, delivery or answer from the broker before giving up.
    pub timeout: u64,
    /// Keep the bench queues instead of deleting them at the end of each size.
    pub keep: bool,
    /// Print every result as one JSON document on stdout (and nothing else there).
    pub json: bool,
}

/// Flags of `ferry bench kafka`.
#[derive(Debug, Clone)]
pub struct KafkaBenchSettings {
    /// Kafka listener to bootstrap from (as for `ferry produce`/`consume`).
    pub bootstrap: String,
    /// Connect with TLS (Kafka's `SSL`, or `SASL_SSL` with `sasl`).
    pub tls: bool,
    /// With `tls`: the CA certificate(s) the broker's certificate must chain to (PEM)
    /// [default: the system's CA bundle].
    pub cacert: Option<std::path::PathBuf>,
    /// Log every connection in with SASL (Kafka's `SASL_PLAINTEXT`, or `SASL_SSL` with `tls`).
    pub sasl: Option<crate::client::sasl::SaslLogin>,
    /// Records to produce (then consume) per case [default: 64 MiB of values, i.e. 671,088
    /// of 100 B or 65,536 of 1 KiB; the default run takes well under a minute].
    pub records: Option<u64>,
    /// Produce for this many seconds per case instead of a fixed record count.
    pub duration: Option<f64>,
    /// Record value sizes in bytes, comma-separated (suffixes k/KiB and M/MiB are accepted).
    pub sizes: Vec<usize>,
    /// Partition counts, comma-separated; one case per size x partition count.
    pub partitions: Vec<i32>,
    /// Produce requests in flight per partition connection.
    pub in_flight: usize,
    /// Target size of one record batch (one produce request per batch).
    pub batch_bytes: usize,
    /// Most bytes one fetch may return per partition.
    pub fetch_bytes: usize,
    /// Fetches in flight per partition connection in the consume phase (1: a Kafka consumer's
    /// one at a time; more pipelines them at predicted offsets, see `bench::kafka`).
    pub fetch_in_flight: usize,
    /// Records per second (all partitions together) in the end-to-end latency phase; 0 skips it.
    pub latency_rate: u64,
    /// Length of the end-to-end latency phase.
    pub latency_secs: f64,
    /// Replication factor of the bench topics; -1 takes the broker's default.
    pub replication_factor: i16,
    /// Seconds to wait for any one answer from the broker before giving up.
    pub timeout: u64,
    /// Keep the bench topics instead of deleting them at the end of each case.
    pub keep: bool,
    /// Print every result as one JSON document on stdout (and nothing else there).
    pub json: bool,
    /// `--schema avro`: validated topics and Confluent-framed Avro values (see
    /// `bench::kafka::schema`).
    pub schema: Option<super::kafka::SchemaBench>,
}
