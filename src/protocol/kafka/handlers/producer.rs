//! InitProducerId: hands idempotent producers their id and epoch.
//!
//! The decision (fresh id, epoch bump, fencing) is the core's ([`crate::broker::producer`]);
//! this adapter only maps it to Kafka's response and error codes. Transactional ids are refused:
//! transactions are not implemented, and the transaction APIs are not advertised.

use std::sync::Arc;

use kafka_protocol::messages::{ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::ResponseError;

use super::{decode, respond, Outcome};
use crate::broker::producer::ProducerIdError;
use crate::protocol::kafka::codec::RawRequest;
use crate::protocol::kafka::connection::ConnInfo;
use crate::protocol::kafka::KafkaContext;

pub async fn init_producer_id(ctx: Arc<KafkaContext>, conn: ConnInfo, req: RawRequest) -> Outcome {
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
    if !ctx.allowed_idempotent_write(&conn) {
        return respond(
            ApiKey::InitProducerId,
            v,
            req.correlation_id,
            &error(ResponseError::ClusterAuthorizationFailed.code()),
        );
    }
    // KIP-360: from v3 a producer may present its current id and epoch to have the epoch bumped.
    let current = (v >= 3 && request.producer_id.0 >= 0)
        .then_some((request.producer_id.0, request.producer_epoch));
    let body = match ctx.core.grant_producer_id(current).await {
        Ok(grant) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(grant.producer_id))
            .with_producer_epoch(grant.epoch),
        Err(ProducerIdError::StaleEpoch { .. }) => {
            error(ResponseError::InvalidProducerEpoch.code())
        }
        Err(ProducerIdError::Meta(e)) => {
            tracing::error!(error = %e, "cannot allocate a producer id");
            error(ResponseError::CoordinatorNotAvailable.code())
        }
    };
    respond(ApiKey::InitProducerId, v, req.correlation_id, &body)
}
