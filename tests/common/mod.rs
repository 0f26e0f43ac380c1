//! Helpers shared by integration test binaries (each includes what it needs with `mod common;`).
#![allow(dead_code)]

pub mod admin;
pub mod amqp;
pub mod kafka;
pub mod kafka_raw;
