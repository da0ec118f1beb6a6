//! What one replica holds: its leases, each with the local instant by which the database is sure
//! to have kept it (the time its claim or last renewal was *sent*, plus the lease). Past that
//! instant the lease may have expired in the database, so the replica must stop driving the run.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use super::lease::Lease;

/// A replica's leases and their local deadlines.
#[derive(Default)]
pub(crate) struct Held(Mutex<HashMap<String, (Lease, Instant)>>);

impl Held {
    /// Every lease held.
    pub(crate) fn leases(&self) -> Vec<Lease> {
        self.map()
            .values()
            .map(|(lease, _)| lease.clone())
            .collect()
    }

    /// Records `leases`, just claimed, as good until `deadline`.
    pub(crate) fn claimed(&self, leases: &[Lease], deadline: Instant) {
        let mut map = self.map();
        for lease in leases {
            map.insert(lease.run.clone(), (lease.clone(), deadline));
        }
    }

    /// Moves the deadline of `leases`, just renewed, to `deadline` (a lease forgotten meanwhile
    /// is not added back).
    pub(crate) fn renewed(&self, leases: &[Lease], deadline: Instant) {
        let mut map = self.map();
        for lease in leases {
            if let Some((held, until)) = map.get_mut(&lease.run) {
                if held == lease {
                    *until = deadline;
                }
            }
        }
    }

    /// Drops `leases` (unless a newer claim of the run replaced one).
    pub(crate) fn forget(&self, leases: &[Lease]) {
        let mut map = self.map();
        for lease in leases {
            if map.get(&lease.run).is_some_and(|(held, _)| held == lease) {
                map.remove(&lease.run);
            }
        }
    }

    /// Drops and returns the leases whose local deadline has passed.
    pub(crate) fn overdue(&self, now: Instant) -> Vec<Lease> {
        let mut map = self.map();
        let late: Vec<Lease> = map
            .values()
            .filter(|(_, deadline)| *deadline <= now)
            .map(|(lease, _)| lease.clone())
            .collect();
        for lease in &late {
            map.remove(&lease.run);
        }
        late
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, (Lease, Instant)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
