//! Check and record the event ids an idempotent handler completed (the core's
//! `broker::processed` store). The store is synchronous (metadata store, flushed on record), so
//! it runs on the blocking pool rather than stall the connection's tasks.
//!
//! Access: a handler's ids belong to the user that recorded them. The name a client sends is
//! scoped by the connection's user before it reaches the store, so one user can neither read
//! another's ids (learn which events it handled) nor record ids in its name (make it skip
//! events). No vhost permission is needed beyond a login, as the ids are the user's own. The
//! store holds at most `max_handlers` names in memory; a new name past that is `REJECTED`.

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

/// The store's name for `handler` of the connection's user, if the store has room for it.
fn scoped(ctx: &Ctx, handler: &str) -> Result<String, NativeError> {
    let Some(user) = ctx.user.get() else {
        return Err(NativeError::new(
            ErrorCode::Unauthenticated,
            "authenticate first",
        ));
    };
    let name = crate::broker::processed::scoped_handler(user, handler);
    if !ctx.core.processed().admits(&name) {
        return Err(NativeError::new(
            ErrorCode::Rejected,
            "the broker's processed-id store holds as many handler names as it may; \
             reuse a handler name",
        ));
    }
    Ok(name)
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
    let handler = scoped(ctx, &c.handler)?;
    let processed = on_store(ctx, move |s| s.is_processed(&handler, &c.event_id)).await?;
    Ok(v1::ProcessedStatus { processed })
}

pub(crate) async fn record(ctx: &Ctx, r: v1::RecordProcessed) -> Result<(), NativeError> {
    check_names(&r.handler, &r.event_id)?;
    let handler = scoped(ctx, &r.handler)?;
    on_store(ctx, move |s| s.record(&handler, &r.event_id)).await
}
