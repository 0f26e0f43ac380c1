//! The writer task of a partition, started on demand and retired when idle (see the parent
//! module's documentation): the slot senders find the running writer in, the hand-over from a
//! retiring writer to the next, and the close of a log whose last handle goes while no writer
//! runs.

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use super::{close_log, writer_task, Command, Shared, QUEUE_DEPTH};

/// The partition's writer task, started on demand: by the first append after the previous one
/// retired (idle for [`WRITER_IDLE_RETIRE`]). Dropped with the last handle, which closes the
/// log (through the running writer, or a task spawned for it).
pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    pub(super) slot: Mutex<WriterSlot>,
}

#[derive(Default)]
pub(super) struct WriterSlot {
    /// The running writer's queue.
    pub(super) tx: Option<mpsc::Sender<Command>>,
    /// Set while a retiring writer finishes what was queued before it closed its queue: the
    /// next writer waits for it, so appends submitted in order are written in order.
    pub(super) draining: Option<watch::Receiver<bool>>,
    /// Shut down: no writer starts again.
    pub(super) closed: bool,
}

impl Writer {
    /// The running writer's queue, starting a writer if none runs. `None` once shut down
    /// (unless `for_shutdown`, the one command that may start a writer on a closing log).
    fn sender(self: &Arc<Self>, for_shutdown: bool) -> Option<mpsc::Sender<Command>> {
        let mut slot = self.slot.lock();
        if slot.closed && !for_shutdown {
            return None;
        }
        if for_shutdown {
            slot.closed = true;
        }
        if let Some(tx) = slot.tx.as_ref().filter(|tx| !tx.is_closed()) {
            return Some(tx.clone());
        }
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let predecessor = slot.draining.take();
        self.shared.runtime.spawn(writer_task(
            Arc::clone(&self.shared),
            Arc::downgrade(self),
            rx,
            predecessor,
        ));
        slot.tx = Some(tx.clone());
        Some(tx)
    }

    /// Queues `cmd` if the running writer's queue has room, without waiting: `None` when the
    /// log is shut down, `Some(Err(cmd))` when the queue is full or its writer is retiring
    /// (nothing was queued; try again).
    pub(super) fn try_send(self: &Arc<Self>, cmd: Command) -> Option<Result<(), Command>> {
        let tx = self.sender(false)?;
        Some(tx.try_send(cmd).map_err(|e| e.into_inner()))
    }

    /// Queues `cmd` on a running writer; gives it back if there is none to take it (shut
    /// down, or the runtime is gone).
    pub(super) async fn send(
        self: &Arc<Self>,
        mut cmd: Command,
        for_shutdown: bool,
    ) -> Result<(), Command> {
        // A writer retiring between `sender` and `send` hands the command back; the next
        // one takes it. Bounded, because a runtime that is shutting down drops every task it
        // is given.
        for _ in 0..3 {
            let Some(tx) = self.sender(for_shutdown) else {
                return Err(cmd);
            };
            match tx.send(cmd).await {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(back)) => cmd = back,
            }
        }
        Err(cmd)
    }

    /// Called by a writer that has been idle: no new command reaches it after this, and the
    /// next writer waits for `done` to turn true. Returns `false` (keep running) if the slot
    /// has a different writer or the log is shutting down.
    pub(super) fn retire(
        &self,
        rx: &mut mpsc::Receiver<Command>,
        done: watch::Receiver<bool>,
    ) -> bool {
        let mut slot = self.slot.lock();
        if slot.closed {
            return false;
        }
        slot.tx = None;
        slot.draining = Some(done);
        // Under the lock, so no sender can clone the queue between the two steps.
        rx.close();
        true
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let slot = self.slot.get_mut();
        if slot.closed || slot.tx.is_some() {
            // A running writer sees its queue close and closes the log itself.
            return;
        }
        let shared = Arc::clone(&self.shared);
        let predecessor = slot.draining.take();
        self.shared.runtime.spawn(async move {
            wait_for(predecessor).await;
            close_log(&shared).await;
        });
    }
}

/// Waits until a retiring writer has finished its last commands.
pub(super) async fn wait_for(predecessor: Option<watch::Receiver<bool>>) {
    if let Some(mut done) = predecessor {
        let _ = done.wait_for(|d| *d).await;
    }
}
