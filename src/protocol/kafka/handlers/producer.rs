//! InitProducerId: hands idempotent producers their id and epoch.
//!
//! The decision (fresh id, epoch bump, fencing) is the core's ([`crate::broker::producer`]);
//! this adapter only maps it to Kafka's response and error codes. With a `transactional.id`
//! the transaction coordinator ([`crate::broker::txn`]) decides instead: the id's producer id
//! with its epoch bumped, fencing the previous instance (TransactionalId WRITE is required).

use std::sync::Arc;

use kafka_protocol::messages::{ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::ResponseError;

use super::txn::txn_error_code;
use super::{decode, respond, Outcome};
use crate::broker::producer::ProducerIdError;
use crate::protocol::kafka::authz::{operation, resource};
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
    if let Some(transactional_id) = request.transactional_id.as_ref() {
        let transactional_id = transactional_id.as_str();
        if !ctx.allowed(
            &conn,
            operation::WRITE,
            resource::TRANSACTIONAL_ID,
            transactional_id,
        ) {
            return respond(
                ApiKey::InitProducerId,
                v,
                req.correlation_id,
                &error(ResponseError::TransactionalIdAuthorizationFailed.code()),
            );
        }
        let current = (v >= 3 && request.producer_id.0 >= 0)
            .then_some((request.producer_id.0, request.producer_epoch));
        let body = match ctx
            .core
            .init_transactional_producer(transactional_id, request.transaction_timeout_ms, current)
            .await
        {
            Ok(grant) => InitProducerIdResponse::default()
                .with_producer_id(ProducerId(grant.producer_id))
                .with_producer_epoch(grant.epoch),
            Err(e) => error(txn_error_code(&e, v >= 4)),
        };
        return respond(ApiKey::InitProducerId, v, req.correlation_id, &body);
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
