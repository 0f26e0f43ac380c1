//! Kafka API handlers, one file per API family, each translating a decoded request into core
//! calls and building the response.
//!
//! [`dispatch`] runs in the connection's reader, in request order: it checks the version,
//! decodes the body and does whatever must happen in order (enqueueing appends), then returns
//! the rest of the work as a future the connection runs concurrently.

mod acls;
mod admin;
mod api_versions;
mod consumer_groups;
mod fetch;
mod group_admin;
mod groups;
mod list_offsets;
mod log_info;
mod metadata;
mod produce;
mod producer;
mod scram_credentials;
mod txn;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::{Decodable, Encodable};

use super::codec::{self, RawRequest};
use super::connection::ConnInfo;
use super::{versions, KafkaContext};

/// What the connection does once a request's work is done.
pub enum Outcome {
    Respond(Bytes),
    /// A zero-copy fetch: encoded pieces and segment-file spans, sent in order.
    RespondParts(codec::SplicedResponse),
    /// Produce with acks=0.
    NoResponse,
    /// Answer, then close (a failed SASL authentication, as Kafka does).
    RespondThenClose(Bytes),
    /// The request cannot be answered (undecodable body, unsupported version); Kafka closes.
    Close(String),
}

pub type Work = Pin<Box<dyn Future<Output = Outcome> + Send>>;

fn ready(outcome: Outcome) -> Work {
    Box::pin(std::future::ready(outcome))
}

/// Encodes a response body for `req`, or closes if encoding fails (a bug: a field set that the
/// version lacks).
pub(crate) fn respond<R: Encodable>(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> Outcome {
    match codec::encode_response(api_key, version, correlation_id, body) {
        Ok(bytes) => Outcome::Respond(bytes),
        Err(e) => {
            tracing::error!(?api_key, version, error = %e, "cannot encode Kafka response");
            Outcome::Close(format!(
                "cannot encode {api_key:?} v{version} response: {e}"
            ))
        }
    }
}

/// Decodes a request body, mapping failure to a connection close.
pub(crate) fn decode<T: Decodable>(req: &RawRequest) -> Result<T, Outcome> {
    let mut body = req.body.clone();
    T::decode(&mut body, req.api_version).map_err(|e| {
        tracing::warn!(api = ?req.api_key, version = req.api_version, error = %e, "undecodable Kafka request body");
        Outcome::Close(format!("malformed {:?} v{} body: {e}", req.api_key, req.api_version))
    })
}

/// Routes one request. Must be awaited in request order.
pub async fn dispatch(ctx: &Arc<KafkaContext>, conn: &ConnInfo, req: RawRequest) -> Work {
    let started = std::time::Instant::now();
    let api = req.api_key;
    if !versions::is_supported(api, req.api_version) {
        if api == ApiKey::ApiVersions {
            return ready(api_versions::unsupported_version(&req));
        }
        tracing::debug!(
            ?api,
            version = req.api_version,
            "unsupported Kafka API version; closing"
        );
        return ready(Outcome::Close(format!(
            "{api:?} v{} is not supported",
            req.api_version
        )));
    }
    let work: Work = match api {
        ApiKey::ApiVersions => ready(api_versions::handle(&req)),
        ApiKey::Metadata => Box::pin(metadata::handle(ctx.clone(), conn.clone(), req)),
        ApiKey::Produce => produce::submit(ctx, conn, req).await,
        ApiKey::Fetch => Box::pin(fetch::handle(ctx.clone(), conn.clone(), req)),
        ApiKey::ListOffsets => ready(list_offsets::handle(ctx, conn, &req)),
        ApiKey::CreateTopics => Box::pin(admin::create_topics(ctx.clone(), conn.clone(), req)),
        ApiKey::DeleteTopics => Box::pin(admin::delete_topics(ctx.clone(), conn.clone(), req)),
        ApiKey::CreatePartitions => {
            Box::pin(admin::create_partitions(ctx.clone(), conn.clone(), req))
        }
        ApiKey::DescribeConfigs => ready(admin::describe_configs(ctx, conn, &req)),
        ApiKey::AlterConfigs => Box::pin(admin::alter_configs(ctx.clone(), conn.clone(), req)),
        ApiKey::IncrementalAlterConfigs => Box::pin(admin::incremental_alter_configs(
            ctx.clone(),
            conn.clone(),
            req,
        )),
        ApiKey::DescribeCluster => ready(admin::describe_cluster(ctx, conn, &req)),
        ApiKey::FindCoordinator => ready(groups::find_coordinator(ctx, conn, &req)),
        ApiKey::JoinGroup => Box::pin(groups::join_group(ctx.clone(), conn.clone(), req)),
        ApiKey::SyncGroup => Box::pin(groups::sync_group(ctx.clone(), conn.clone(), req)),
        ApiKey::Heartbeat => ready(groups::heartbeat(ctx, conn, &req)),
        ApiKey::LeaveGroup => ready(groups::leave_group(ctx, conn, &req)),
        ApiKey::OffsetCommit => Box::pin(groups::offset_commit(ctx.clone(), conn.clone(), req)),
        ApiKey::OffsetFetch => ready(groups::offset_fetch(ctx, conn, &req)),
        ApiKey::ListGroups => ready(group_admin::list_groups(ctx, conn, &req)),
        ApiKey::DescribeGroups => ready(group_admin::describe_groups(ctx, conn, &req)),
        ApiKey::DeleteGroups => ready(group_admin::delete_groups(ctx, conn, &req)),
        ApiKey::OffsetDelete => ready(groups::offset_delete(ctx, conn, &req)),
        ApiKey::ConsumerGroupHeartbeat => ready(consumer_groups::heartbeat(ctx, conn, &req)),
        ApiKey::ConsumerGroupDescribe => ready(consumer_groups::describe(ctx, conn, &req)),
        ApiKey::InitProducerId => {
            Box::pin(producer::init_producer_id(ctx.clone(), conn.clone(), req))
        }
        ApiKey::AddPartitionsToTxn => Box::pin(txn::add_partitions(ctx.clone(), conn.clone(), req)),
        ApiKey::AddOffsetsToTxn => Box::pin(txn::add_offsets(ctx.clone(), conn.clone(), req)),
        ApiKey::TxnOffsetCommit => Box::pin(txn::txn_offset_commit(ctx.clone(), conn.clone(), req)),
        ApiKey::EndTxn => Box::pin(txn::end_txn(ctx.clone(), conn.clone(), req)),
        ApiKey::DescribeTransactions => Box::pin(txn::describe(ctx.clone(), conn.clone(), req)),
        ApiKey::ListTransactions => Box::pin(txn::list(ctx.clone(), conn.clone(), req)),
        ApiKey::DescribeUserScramCredentials => ready(scram_credentials::describe(ctx, conn, &req)),
        ApiKey::AlterUserScramCredentials => ready(scram_credentials::alter(ctx, conn, &req)),
        ApiKey::CreateAcls => ready(acls::create_acls(ctx, conn, &req)),
        ApiKey::DescribeAcls => ready(acls::describe_acls(ctx, conn, &req)),
        ApiKey::DeleteAcls => ready(acls::delete_acls(ctx, conn, &req)),
        ApiKey::DescribeProducers => ready(log_info::describe_producers(ctx, conn, &req)),
        ApiKey::OffsetForLeaderEpoch => ready(log_info::offset_for_leader_epoch(ctx, conn, &req)),
        ApiKey::DescribeLogDirs => ready(log_info::describe_log_dirs(ctx, conn, &req)),
        other => ready(Outcome::Close(format!("{other:?} is not implemented"))),
    };
    let api_name = format!("{api:?}");
    Box::pin(async move {
        let outcome = work.await;
        metrics::histogram!("ferry_kafka_request_seconds", "api" => api_name)
            .record(started.elapsed().as_secs_f64());
        outcome
    })
}
