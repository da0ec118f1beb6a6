//! A test hook: makes a run's driver panic at a chosen phase, to check that every ending of a
//! run, a crash included, releases what the run held. Hidden from the documentation; nothing in
//! the product sets it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Where [`PanicInjection`] makes a run's driver panic.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverPhase {
    /// After the run enters `planning`, before the planner is asked.
    Planning,
    /// After a step's start is journaled, before it runs.
    Executing,
    /// While the run waits for an operator's approval.
    AwaitingApproval,
    /// When the run has its end, before it is journaled and released.
    Finishing,
}

/// Makes run drivers panic at one phase, a number of times in all, then never again.
#[doc(hidden)]
#[derive(Debug)]
pub struct PanicInjection {
    phase: DriverPhase,
    remaining: AtomicU32,
}

impl PanicInjection {
    /// Panics at `phase`, the first `times` times a driver reaches it.
    pub fn new(phase: DriverPhase, times: u32) -> Arc<Self> {
        Arc::new(PanicInjection {
            phase,
            remaining: AtomicU32::new(times),
        })
    }

    /// Panics if this is `phase` and panics remain.
    pub(crate) fn at(&self, phase: DriverPhase) {
        let take = |n: u32| n.checked_sub(1);
        if phase == self.phase
            && self
                .remaining
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, take)
                .is_ok()
        {
            panic!("injected panic while {phase:?}");
        }
    }
}
