//! Check and record the event ids an idempotent handler completed (the core's
//! `broker::processed` store). The store is synchronous (metadata store, flushed on record), so
//! it runs on the blocking pool rather than stall the connection's tasks.

use super::super::connection::Ctx;
use super::super::convert::NativeError;
use crate::broker::processed::MAX_NAME_BYTES;
use crate::proto::v1::{self, ErrorCode};

fn check_names(handler: &str, event_id: &str) -> Result<(), NativeError> {
    for (what, value) in [("handler", handler), ("event_id", event_id)] {
        if value.is_empty() || value.len() > MAX_NAME_BYTES {
            return Err(NativeError::new(
                ErrorCode::InvalidArgument,
                format!("`{what}` must be 1 to {MAX_NAME_BYTES} bytes"),
            ));
        }
    }
    Ok(())
}

async fn on_store<T: Send + 'static>(
    ctx: &Ctx,
    op: impl FnOnce(&crate::broker::processed::ProcessedIds) -> Result<T, crate::meta::MetaError>
        + Send
        + 'static,
) -> Result<T, NativeError> {
    let core = ctx.core.clone();
    tokio::task::spawn_blocking(move || op(core.processed()))
        .await
        .map_err(|_| NativeError::new(ErrorCode::Internal, "the processed-id store failed"))?
        .map_err(|e| NativeError::new(ErrorCode::Unavailable, e.client_message()))
}

pub(crate) async fn check(
    ctx: &Ctx,
    c: v1::CheckProcessed,
) -> Result<v1::ProcessedStatus, NativeError> {
    check_names(&c.handler, &c.event_id)?;
    let processed = on_store(ctx, move |s| s.is_processed(&c.handler, &c.event_id)).await?;
    Ok(v1::ProcessedStatus { processed })
}

pub(crate) async fn record(ctx: &Ctx, r: v1::RecordProcessed) -> Result<(), NativeError> {
    check_names(&r.handler, &r.event_id)?;
    on_store(ctx, move |s| s.record(&r.handler, &r.event_id)).await
}
