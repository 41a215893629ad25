//! Group commit for fires: every fire waiting at the moment goes into one `Command::Fire` log entry, so a
//! thousand subscriptions firing at one instant cost one fsync, not a thousand.

use gofer_clock::Clock;
use gofer_domain::triggers::{Fire, FireOutcome};
use gofer_domain::{Applied, Command};
use gofer_state::StateHandle;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Error;

/// The most fires one log entry carries.
const MAX_BATCH: usize = 1024;
/// The most bytes of fires (as JSON) one log entry carries, give or take its last fire, so that it fits a
/// raft message (128 MiB in `gofer-state`) whatever extensions send: a checked fire is at most 64 KiB of
/// parameters, a few hundred KiB of JSON at worst.
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// What became of one fire: its outcome and whether its key was seen before, or why it was refused.
pub type FireResult = Result<(FireOutcome, bool), gofer_domain::Error>;

type Pending = (Fire, oneshot::Sender<Result<FireResult, Error>>);

/// Sends fires to the log in batches. Clone it freely.
#[derive(Clone)]
pub struct FireQueue {
    tx: mpsc::UnboundedSender<Pending>,
}

impl FireQueue {
    /// Starts the batching task on `tracker`, which stamps each batch with `clock`; it ends on `shutdown`
    /// or when every queue clone is dropped.
    pub fn start(state: StateHandle, clock: Clock, tracker: &TaskTracker, shutdown: CancellationToken) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tracker.spawn(batch_loop(state, clock, rx, shutdown));
        FireQueue { tx }
    }

    /// Commits one fire and returns what it did. `Err` means the log could not be written (the caller
    /// retries with the same key, which is safe).
    pub async fn fire(&self, fire: Fire) -> Result<FireResult, Error> {
        self.enqueue(fire).await
    }

    /// Queues a fire now, so that fires queued one after another are committed in that order; the
    /// returned future gives what it did.
    ///
    /// Every fire enters the log here, from the timers, webhooks and extensions alike, so this is where it
    /// is checked (`gofer_domain::inputs::check_fire`): a fire that fails is refused as apply refuses one,
    /// without being proposed.
    pub fn enqueue(&self, fire: Fire) -> impl std::future::Future<Output = Result<FireResult, Error>> + use<> {
        let (tx, rx) = oneshot::channel();
        let refused = gofer_domain::inputs::check_fire(&fire).err();
        let queued = match refused {
            Some(_) => Ok(()),
            None => self.tx.send((fire, tx)).map_err(|_| Error::QueueStopped),
        };
        async move {
            if let Some(err) = refused {
                return Ok(Err(err));
            }
            queued?;
            rx.await.map_err(|_| Error::QueueStopped)?
        }
    }
}

/// `first` and the fires waiting after it, up to [`MAX_BATCH`] fires or [`MAX_BATCH_BYTES`].
fn take_batch(first: Pending, rx: &mut mpsc::UnboundedReceiver<Pending>) -> Vec<Pending> {
    let size = |fire: &Fire| serde_json::to_vec(fire).map_or(0, |json| json.len());
    let mut bytes = size(&first.0);
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
        match rx.try_recv() {
            Ok(next) => {
                bytes += size(&next.0);
                batch.push(next);
            }
            Err(_) => break,
        }
    }
    batch
}

async fn batch_loop(
    state: StateHandle,
    clock: Clock,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    shutdown: CancellationToken,
) {
    // On shutdown the fires waiting are answered "the fire queue stopped" (their senders are dropped).
    while let Some(first) = tokio::select! {
        () = shutdown.cancelled() => None,
        first = rx.recv() => first,
    } {
        let batch = take_batch(first, &mut rx);
        let fires: Vec<Fire> = batch.iter().map(|(f, _)| f.clone()).collect();
        let command = Command::Fire {
            fires,
            at: clock.now_millis(),
        };
        match state.propose(command).await {
            Ok(Applied::Fired(results)) => {
                for ((_, reply), result) in batch.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
            }
            Ok(other) => {
                for (_, reply) in batch {
                    let _ = reply.send(Err(Error::UnexpectedResult(other.clone())));
                }
            }
            Err(err) => {
                let err = std::sync::Arc::new(err);
                for (_, reply) in batch {
                    let _ = reply.send(Err(Error::State(err.clone())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
