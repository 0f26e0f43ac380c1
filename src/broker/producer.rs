//! Producer ids and epochs for idempotent producers: the core's decision, whatever protocol asks.
//!
//! Ids come from a durable counter in the metadata store, so no id is ever handed out twice,
//! even across restarts. A producer that asks again with its current id and epoch (Kafka's
//! KIP-360, after an UNKNOWN_PRODUCER_ID or a timeout) gets the epoch bumped, which fences any
//! older instance still sending with the previous epoch; when the epoch is exhausted it gets a
//! fresh id instead. Every grant is flushed to the metadata store before it is returned, so a
//! crash can never hand the same (id, epoch) to two producers.

use crate::meta::{Meta, MetaError, ProducerRecord};

/// What a producer was granted: its id and the epoch it must send with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerGrant {
    pub producer_id: i64,
    pub epoch: i16,
}

#[derive(Debug, thiserror::Error)]
pub enum ProducerIdError {
    /// The (id, epoch) the producer presented is not the current one: a fenced or unknown
    /// producer (Kafka's INVALID_PRODUCER_EPOCH).
    #[error("producer {producer_id} with epoch {epoch} is not the current holder of that id")]
    StaleEpoch { producer_id: i64, epoch: i16 },
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// Grants a producer id: a new one when `current` is `None`, otherwise the presented id with its
/// epoch bumped. Blocking (it flushes the metadata store): call it off the async workers.
pub fn grant_producer_id(
    meta: &Meta,
    current: Option<(i64, i16)>,
) -> Result<ProducerGrant, ProducerIdError> {
    if let Some((producer_id, epoch)) = current {
        match meta.producer(producer_id)? {
            Some(record) if record.epoch == epoch && epoch < i16::MAX - 1 => {
                let bumped = ProducerRecord {
                    epoch: epoch + 1,
                    ..record
                };
                meta.put_producer(&bumped)?;
                meta.flush()?;
                return Ok(ProducerGrant {
                    producer_id,
                    epoch: bumped.epoch,
                });
            }
            // The epoch is exhausted: fall through to a fresh id.
            Some(record) if record.epoch == epoch => {}
            _ => return Err(ProducerIdError::StaleEpoch { producer_id, epoch }),
        }
    }
    let producer_id = meta.allocate_producer_id()?;
    meta.put_producer(&ProducerRecord {
        producer_id,
        epoch: 0,
        transactional_id: None,
    })?;
    meta.flush()?;
    Ok(ProducerGrant {
        producer_id,
        epoch: 0,
    })
}

impl super::BrokerCore {
    /// [`grant_producer_id`] on the core's metadata store, run on the blocking pool.
    pub async fn grant_producer_id(
        &self,
        current: Option<(i64, i16)>,
    ) -> Result<ProducerGrant, ProducerIdError> {
        let meta = self.meta().clone();
        tokio::task::spawn_blocking(move || grant_producer_id(&meta, current))
            .await
            .unwrap_or_else(|join| {
                Err(ProducerIdError::Meta(MetaError::Backend(format!(
                    "producer id allocation task failed: {join}"
                ))))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_fresh_epochs_bump_and_stale_epochs_are_fenced() {
        let meta = Meta::in_memory();
        let first = grant_producer_id(&meta, None).unwrap();
        let second = grant_producer_id(&meta, None).unwrap();
        assert_ne!(first.producer_id, second.producer_id);
        assert_eq!((first.epoch, second.epoch), (0, 0));

        let bumped = grant_producer_id(&meta, Some((first.producer_id, 0))).unwrap();
        assert_eq!(
            bumped,
            ProducerGrant {
                producer_id: first.producer_id,
                epoch: 1
            }
        );

        // The old instance still presenting epoch 0 is fenced.
        let stale = grant_producer_id(&meta, Some((first.producer_id, 0)));
        assert!(matches!(
            stale,
            Err(ProducerIdError::StaleEpoch { epoch: 0, .. })
        ));
        // An id nobody was granted is refused the same way.
        let unknown = grant_producer_id(&meta, Some((9_999_999, 0)));
        assert!(matches!(unknown, Err(ProducerIdError::StaleEpoch { .. })));
    }
}
