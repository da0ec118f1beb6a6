//! Where a run's updates go: held for the run's first subscriber until one subscribes, then a
//! broadcast channel. A run no one subscribes to (an embedder that waits for the result only)
//! holds a few updates, not a channel of [`RUN_UPDATE_CAPACITY`] slots made and dropped per
//! run; `serve` and the CLI subscribe at submission, so their runs make the channel at once.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;

/// Updates a run's subscriber may fall behind by before it loses the oldest (room for the
/// deltas of a streamed answer between two reads). A power of two: a broadcast channel rounds
/// its capacity up to one, and what a run holds for its first subscriber must be what a channel
/// made at submission would have kept.
pub const RUN_UPDATE_CAPACITY: usize = 512;

const _: () = assert!(RUN_UPDATE_CAPACITY.is_power_of_two());

/// The sending side of a run's updates (`T`: [`RunUpdate`](crate::RunUpdate)); clones share it.
pub(crate) struct RunUpdates<T>(Arc<Mutex<Updates<T>>>);

impl<T> Clone for RunUpdates<T> {
    fn clone(&self) -> Self {
        RunUpdates(self.0.clone())
    }
}

enum Updates<T> {
    /// No one subscribed yet: the newest [`RUN_UPDATE_CAPACITY`] updates, and how many older
    /// ones were let go.
    Held { updates: VecDeque<T>, lost: usize },
    /// Subscribed: the channel every subscriber reads.
    Open(broadcast::Sender<T>),
}

impl<T: Clone> RunUpdates<T> {
    /// A run's updates before anyone subscribed.
    pub(crate) fn new() -> Self {
        RunUpdates(Arc::new(Mutex::new(Updates::Held {
            updates: VecDeque::new(),
            lost: 0,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Updates<T>> {
        // Every change below is complete before anything can panic.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `update` to the subscribers, or holds it for the first one.
    pub(crate) fn send(&self, update: T) {
        match &mut *self.lock() {
            Updates::Held { updates, lost } => {
                if updates.len() == RUN_UPDATE_CAPACITY {
                    updates.pop_front();
                    *lost += 1;
                }
                updates.push_back(update);
            }
            Updates::Open(sender) => {
                // No receiver left: nobody is watching, as with any broadcast channel.
                let _ = sender.send(update);
            }
        }
    }

    /// A receiver of the run's updates. The first one gets every update held since the run
    /// was submitted, as a channel made then would have kept them: the newest
    /// [`RUN_UPDATE_CAPACITY`], after [`RecvError::Lagged`](broadcast::error::RecvError) with
    /// the count of older ones lost; later ones get updates from then on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<T> {
        let mut updates = self.lock();
        let (held, lost) = match &mut *updates {
            Updates::Open(sender) => return sender.subscribe(),
            Updates::Held { updates, lost } => (std::mem::take(updates), *lost),
        };
        let (sender, receiver) = broadcast::channel(RUN_UPDATE_CAPACITY);
        // The receiver is `lost` updates behind the oldest held one, as it would be had it
        // subscribed at submission: what stands for the lost ones (copies of the oldest held
        // one: `lost > 0` only when all the slots are held) is overwritten by the held ones
        // before anyone can read it, and the receiver's first read says how many it missed.
        if let Some(oldest) = held.front() {
            for _ in 0..lost {
                let _ = sender.send(oldest.clone());
            }
        }
        for update in held {
            let _ = sender.send(update);
        }
        *updates = Updates::Open(sender);
        receiver
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::RunUpdate;
    use broadcast::error::TryRecvError;

    fn recalled(n: usize) -> RunUpdate {
        RunUpdate::Recalled { memories: n }
    }

    fn memories(update: RunUpdate) -> usize {
        match update {
            RunUpdate::Recalled { memories } => memories,
            other => panic!("not a Recalled update: {other:?}"),
        }
    }

    #[test]
    fn the_first_subscriber_gets_what_was_held_and_later_ones_get_what_comes_next() {
        let updates = RunUpdates::<RunUpdate>::new();
        updates.send(recalled(1));
        updates.send(recalled(2));
        let mut first = updates.subscribe();
        let mut second = updates.subscribe();
        updates.send(recalled(3));
        for expected in [1, 2, 3] {
            assert_eq!(memories(first.try_recv().unwrap()), expected);
        }
        assert_eq!(memories(second.try_recv().unwrap()), 3);
        assert!(matches!(first.try_recv(), Err(TryRecvError::Empty)));
        assert!(matches!(second.try_recv(), Err(TryRecvError::Empty)));
    }

    /// What a late first subscriber sees is what it would see of a channel made at submission.
    #[test]
    fn a_late_first_subscriber_lags_as_on_a_channel_made_at_submission() {
        let extra = 37;
        let (updates, (sender, mut eager)) = (
            RunUpdates::<RunUpdate>::new(),
            broadcast::channel(RUN_UPDATE_CAPACITY),
        );
        for n in 0..RUN_UPDATE_CAPACITY + extra {
            updates.send(recalled(n));
            sender.send(recalled(n)).unwrap();
        }
        let mut lazy = updates.subscribe();
        assert!(matches!(lazy.try_recv(), Err(TryRecvError::Lagged(n)) if n == extra as u64));
        assert!(matches!(eager.try_recv(), Err(TryRecvError::Lagged(n)) if n == extra as u64));
        for n in extra..RUN_UPDATE_CAPACITY + extra {
            assert_eq!(memories(lazy.try_recv().unwrap()), n);
            assert_eq!(memories(eager.try_recv().unwrap()), n);
        }
        assert!(matches!(lazy.try_recv(), Err(TryRecvError::Empty)));
    }
}
