//! Where a call's reservation is held besides this process's [`Ledger`](crate::ledger::Ledger):
//! the seam to a durable store shared by several processes (PostgreSQL, `impresario-pg`'s
//! `PgLedger`).
//!
//! The in-memory ledger is the default and stays on every path: [`reserve`] always reserves
//! on the caller's [`AccountPath`] first (its refusals, warnings and overshoot events stay
//! as they are, and without a store nothing else happens: no allocation, no await point
//! that suspends). When a [`LedgerStore`] is attached, the call is also held there, and the
//! store is the authority: its holds count every process's calls against the same ceilings.
//! A hold has an expiry, so a process that dies holding one never pins budget.
//!
//! Finishing a [`HeldReservation`] settles the local reservation at once and the store's hold
//! before the awaited method returns. Dropped unfinished, it releases both: the store's hold
//! by a task spawned on the current tokio runtime (or, without one, by its expiry).
//!
//! A reservation left to a journal ([`HeldReservation::leave_to`], when the run's journal
//! settles holds: PostgreSQL) settles the local reservation as usual, but a charged store hold
//! goes to its [`PendingHolds`] instead: the run journals the call's outcome with the holds'
//! ids, and the journal's append settles them in the same transaction. A hold nobody journals
//! (the process died first) expires uncharged, like its unjournaled answer.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use crate::fencing::Fenced;
use crate::ledger::{AccountId, AccountPath, CeilingReached, Charge, Reservation, Settlement};

/// The future a [`LedgerStore`] method returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Capacity held in a store for one call, until it is settled or expires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    /// The store's id of the hold (unique across processes).
    pub id: String,
    /// After this instant the hold no longer counts against any ceiling.
    pub expires_at: SystemTime,
}

/// A store shared with other processes (ledger, halts) could not be reached or refused to
/// work (not a ceiling: see [`ReserveError`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the store shared with other processes failed: {message}. Check that it (PostgreSQL) is up and reachable, then try again")]
pub struct StoreError {
    /// What failed, without credentials.
    pub message: String,
}

/// Why a store did not hold a reservation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReserveError {
    /// The amount does not fit under a ceiling of the path.
    #[error(transparent)]
    Ceiling(#[from] CeilingReached),
    /// The store failed; nothing is held.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The run is driven under a lease this process no longer holds; nothing is held.
    #[error(transparent)]
    Fenced(#[from] Fenced),
}

/// A durable place for reservations, shared by the processes that spend against the same
/// ceilings.
///
/// Contract: [`reserve`](LedgerStore::reserve) holds `amount` on every account of the path
/// or on none, and only when `spent + held + amount <= limit` on each (held: the holds that
/// have not expired); a refusal names the account and dimension, like the in-memory ledger's.
/// [`settle`](LedgerStore::settle) charges what the call cost on every account of the hold's
/// path (in full, even above the hold) and frees it; settling the same hold again changes
/// nothing.
pub trait LedgerStore: fmt::Debug + Send + Sync + 'static {
    /// Holds `amount` on `path` (leaf first, up to `Global`).
    fn reserve<'a>(
        &'a self,
        path: &'a [AccountId],
        amount: Charge,
    ) -> StoreFuture<'a, Result<Hold, ReserveError>>;

    /// Charges `charge` for `hold` and frees it.
    fn settle<'a>(
        &'a self,
        hold: &'a Hold,
        charge: Charge,
    ) -> StoreFuture<'a, Result<(), StoreError>>;
}

/// The store holds of one model call that a journal settles: the calls' charged holds are
/// left here, and whoever journals the call's outcome takes them ([`PendingHolds::take`]) into
/// the event. Cheap to clone; clones share the holds.
#[derive(Clone, Debug, Default)]
pub struct PendingHolds(Arc<Mutex<Vec<String>>>);

impl PendingHolds {
    /// No hold yet.
    pub fn new() -> Self {
        PendingHolds::default()
    }

    /// The ids of the holds left so far, in order; they are no longer here.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn push(&self, hold: Hold) {
        let mut holds = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        holds.push(hold.id);
    }
}

/// A reservation on the in-memory ledger and, when a store is attached, a hold in it.
///
/// Finish it with [`settle`](Self::settle), [`release`](Self::release) or
/// [`cancel`](Self::cancel) (awaited: the store's hold is settled before they return), or
/// [`finish_detached`](Self::finish_detached) where nothing can be awaited.
#[must_use = "a reservation is released when dropped; settle it with the call's real usage"]
pub struct HeldReservation {
    local: Reservation,
    held: StoreHold,
}

impl fmt::Debug for HeldReservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeldReservation")
            .field("local", &self.local)
            .field("hold", &self.hold())
            .finish()
    }
}

/// Reserves `worst_case` on `path`, and in `store` when there is one. On any refusal nothing
/// stays reserved anywhere.
pub async fn reserve(
    path: &AccountPath,
    store: Option<&Arc<dyn LedgerStore>>,
    worst_case: Charge,
) -> Result<HeldReservation, ReserveError> {
    let local = path.reserve(worst_case)?;
    let held = match store {
        None => None,
        // On error `local` is dropped, which releases it.
        Some(store) => Some((store.clone(), store.reserve(&path.ids(), worst_case).await?)),
    };
    let held = StoreHold {
        held,
        charge: Charge::ZERO,
        pending: None,
    };
    Ok(HeldReservation { local, held })
}

impl HeldReservation {
    /// The call finished: charges `actual` (see [`Reservation::settle`]).
    pub async fn settle(self, actual: Charge) -> Settlement {
        self.finish(actual).await
    }

    /// The call failed before the provider billed anything: frees the reservation.
    pub async fn release(self) {
        self.finish(Charge::ZERO).await;
    }

    /// The call was halted mid-flight: charges what the provider may still bill.
    pub async fn cancel(self, billable: Charge) -> Settlement {
        self.finish(billable).await
    }

    /// Leaves the store's hold, once charged, to `pending` (a journal settles it with the call's
    /// journaled outcome) instead of settling it when the reservation finishes; a hold released
    /// (nothing charged) is still released at once. `None`: settled here, as usual.
    pub fn leave_to(mut self, pending: Option<PendingHolds>) -> Self {
        self.held.pending = pending;
        self
    }

    /// What this reservation holds on every account of its path.
    pub fn reserved(&self) -> Charge {
        self.local.reserved()
    }

    /// The store's hold, if a store holds this reservation.
    pub fn hold(&self) -> Option<&Hold> {
        self.held.held.as_ref().map(|(_, hold)| hold)
    }

    /// Charges `charge` without waiting for the store: for a call dropped mid-flight. The
    /// store's hold is settled by a task on the current tokio runtime (without one, it is
    /// released when it expires, and `charge` is not counted there).
    pub fn finish_detached(mut self, charge: Charge) -> Settlement {
        self.held.charge = charge;
        // Dropping `self` detaches the store's hold with `charge`.
        self.local.settle(charge)
    }

    async fn finish(mut self, charge: Charge) -> Settlement {
        let settlement = self.local.settle(charge);
        self.held.charge = charge;
        // Cloned, not taken: if this future is dropped while the store is settling, Drop
        // settles the hold again with the same charge (settling is idempotent).
        if let Some((store, hold)) = self.held.held.clone() {
            if let Some(hold) = self.held.leave(hold) {
                settle_or_log(store.as_ref(), &hold, charge).await;
            }
        }
        self.held.held = None;
        settlement
    }
}

/// A hold in a store, settled with `charge` by a detached task when dropped unsettled (or left
/// to `pending`).
struct StoreHold {
    held: Option<(Arc<dyn LedgerStore>, Hold)>,
    /// What the call cost, once known (zero: released).
    charge: Charge,
    /// Where a charged hold goes instead of being settled here.
    pending: Option<PendingHolds>,
}

impl StoreHold {
    /// Leaves `hold` to the journal when it has one and the call was charged; otherwise hands
    /// it back, to be settled here.
    fn leave(&self, hold: Hold) -> Option<Hold> {
        match &self.pending {
            Some(pending) if !self.charge.is_zero() => {
                pending.push(hold);
                None
            }
            _ => Some(hold),
        }
    }
}

impl Drop for StoreHold {
    fn drop(&mut self) {
        if let Some((store, hold)) = self.held.take() {
            if let Some(hold) = self.leave(hold) {
                detach(store, hold, self.charge);
            }
        }
    }
}

/// Settles `hold` on a task of the current tokio runtime, if there is one.
fn detach(store: Arc<dyn LedgerStore>, hold: Hold, charge: Charge) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move { settle_or_log(store.as_ref(), &hold, charge).await });
    }
}

/// Settles `hold`. A store that still fails after its own retries cannot be told, so the
/// failure is logged: the hold expires and is released, and the charge stays in this
/// process's ledger and journal only.
async fn settle_or_log(store: &dyn LedgerStore, hold: &Hold, charge: Charge) {
    if let Err(err) = store.settle(hold, charge).await {
        tracing::error!(
            hold = %hold.id,
            charge_micro_usd = charge.micro_usd,
            error = %err,
            "a hold could not be settled in the ledger store; it will expire uncharged"
        );
    }
}
