//! InitProducerId: hands idempotent producers their id and epoch.
//!
//! Ids come from a durable counter in the metadata store, so no id is ever handed out twice,
//! even across restarts. A producer that asks again with its current id and epoch (KIP-360,
//! v3+, after an UNKNOWN_PRODUCER_ID or a timeout) gets the epoch bumped, which fences any
//! older instance still sending with the previous epoch. Transactional ids are refused:
//! transactions are not implemented, and the transaction APIs are not advertised.

use std::sync::Arc;

use kafka_protocol::messages::{ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::ResponseError;

use super::{decode, respond, Outcome};
use crate::meta::ProducerRecord;
use crate::protocol::kafka::codec::RawRequest;
use crate::protocol::kafka::KafkaContext;

pub async fn init_producer_id(ctx: Arc<KafkaContext>, req: RawRequest) -> Outcome {
    let request: InitProducerIdRequest = match decode(&req) {
        Ok(r) => r,
        Err(close) => return close,
    };
    let v = req.api_version;
    let error = |code: i16| {
        InitProducerIdResponse::default()
            .with_error_code(code)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    if request.transactional_id.is_some() {
        tracing::info!(
            "refusing InitProducerId with a transactional id: transactions are not supported"
        );
        return respond(
            ApiKey::InitProducerId,
            v,
            req.correlation_id,
            &error(ResponseError::InvalidRequest.code()),
        );
    }
    let meta = ctx.core.meta().clone();
    let asked = (v >= 3 && request.producer_id.0 >= 0)
        .then_some((request.producer_id.0, request.producer_epoch));
    // Allocation flushes the metadata store; keep the fsync off the async workers.
    let result = tokio::task::spawn_blocking(
        move || -> Result<Result<(i64, i16), i16>, crate::meta::MetaError> {
            if let Some((id, epoch)) = asked {
                match meta.producer(id)? {
                    Some(record) if record.epoch == epoch && epoch < i16::MAX - 1 => {
                        let bumped = ProducerRecord {
                            epoch: epoch + 1,
                            ..record
                        };
                        meta.put_producer(&bumped)?;
                        meta.flush()?;
                        return Ok(Ok((id, bumped.epoch)));
                    }
                    Some(record) if record.epoch == epoch => {} // epoch exhausted: new id below
                    _ => return Ok(Err(ResponseError::InvalidProducerEpoch.code())),
                }
            }
            let id = meta.allocate_producer_id()?;
            meta.put_producer(&ProducerRecord {
                producer_id: id,
                epoch: 0,
                transactional_id: None,
            })?;
            meta.flush()?;
            Ok(Ok((id, 0)))
        },
    )
    .await;
    let body = match result {
        Ok(Ok(Ok((id, epoch)))) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(epoch),
        Ok(Ok(Err(code))) => error(code),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot allocate a producer id");
            error(ResponseError::CoordinatorNotAvailable.code())
        }
        Err(_) => error(ResponseError::CoordinatorNotAvailable.code()),
    };
    respond(ApiKey::InitProducerId, v, req.correlation_id, &body)
}
