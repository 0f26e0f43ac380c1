//! Ferry's integration tests, one binary with a module per feature.
//!
//! Every test file used to be its own binary, and each of those linked the whole crate and its
//! dependencies (about 360 MB of debug build each): `cargo test` spent minutes linking and the
//! target directory grew by gigabytes per change. One binary links once. Each module still reads
//! as a standalone suite with its own `//!` paragraph; `cargo test --test integration kafka_txn`
//! runs one of them. The tests that count the process's file descriptors and memory
//! (`tests/hostile.rs`, `tests/hostile_http.rs`) stay separate binaries so nothing else runs
//! beside them, and so does `tests/observe_metrics.rs`, which asserts exact deltas of
//! process-wide metrics that the AMQP traffic of other suites would move.
//!
//! A test that re-executes this binary as a child selects itself by its full path
//! (`log_crash::crash_child`), module included.

#[path = "../common/mod.rs"]
mod common;

mod admin_api;
mod admin_cli;
mod alerts;
mod amqp_features;
mod amqp_lapin;
mod amqp_wire;
mod bench_cli;
mod bridge;
mod cli_errors;
mod compaction;
mod crash_loop;
mod cross_protocol;
mod dedup_confirms;
mod disk_faults;
mod embed;
mod es_bench;
mod es_catchup;
mod es_crash;
mod es_persistent;
mod es_reads;
mod es_sdk;
mod es_streams;
mod event_metadata;
mod kafka_consumer_protocol;
mod kafka_fetch_sessions;
mod kafka_groups;
mod kafka_idempotence;
mod kafka_rdkafka;
mod kafka_tool_apis;
mod kafka_txn;
mod kafka_wire;
mod kafka_zero_copy;
mod log_basic;
mod log_crash;
mod log_recovery;
mod log_writer;
mod management_api;
mod native_bench;
mod native_example;
mod native_groups;
mod native_idempotent;
mod native_permissions;
mod native_sdk;
mod native_tcp;
mod native_tls;
mod power_loss;
mod properties;
mod properties_amqp;
mod reliability;
mod schema_catalog;
mod schema_protobuf;
mod schema_registry;
mod schema_validation;
mod security_acls;
mod security_sasl;
mod security_users;
mod serve;
mod streams;
mod tls;
