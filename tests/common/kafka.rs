//! rdkafka helpers shared by the test binaries that read topics with a real Kafka consumer.

use std::time::Duration;

use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{Headers, Message};

/// One record as a consumer saw it.
pub struct Consumed {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Polls `c` (subscribed or assigned already) until it returned `count` records; panics on a
/// consumer error or after 20 s. Blocking: run it on a blocking thread.
pub fn poll_records(c: &BaseConsumer, count: usize) -> Vec<Consumed> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while out.len() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out consuming ({} of {count})",
            out.len()
        );
        match c.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(e)) => panic!("consume error: {e}"),
            Some(Ok(m)) => out.push(Consumed {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
        }
    }
    out
}
