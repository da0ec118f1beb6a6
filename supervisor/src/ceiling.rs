//! Cost ceilings as the supervisor enforces them: the ledger refuses a reservation that does not
//! fit (before anything is sent); this bridge reports the ledger's warnings and refusals on the
//! supervisor event stream and, by policy, halts the run whose ceiling was reached.

use impresario_runtime::halt::{Halt, HaltMode, HaltReason, HaltScope, Halts};
use impresario_runtime::ledger::{AccountId, CeilingReached, Ledger, LedgerEvent};
use impresario_runtime::telemetry::Metrics;
use tokio::sync::broadcast;

use crate::events::SupervisorEvent;

/// What happens when a run's own account refuses a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnCeiling {
    /// Halt the run at once (reason `cost_ceiling`): its in-flight calls are aborted and it
    /// reports why. The default: a run that cannot pay for its next call cannot finish well.
    #[default]
    HaltRun,
    /// Only the refused call fails (its step gets the `CeilingReached` error); the run may
    /// replan with cheaper work.
    FailStep,
}

/// Forwards the ledger's events until the ledger or the event stream goes away, and counts
/// warnings and refusals in `metrics` (halts count themselves, in `halts`' metrics).
pub(crate) async fn watch(
    mut ledger_events: broadcast::Receiver<LedgerEvent>,
    halts: Halts,
    policy: OnCeiling,
    events: broadcast::Sender<SupervisorEvent>,
    metrics: Metrics,
) {
    loop {
        let event = match ledger_events.recv().await {
            Ok(event) => event,
            // Missed events are warnings and refusals already reported to their callers.
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        match event {
            LedgerEvent::Warning {
                account,
                dimension,
                fraction_percent,
                spent,
                limit,
            } => {
                metrics.ceiling_warning(&account, dimension, fraction_percent);
                let _ = events.send(SupervisorEvent::CeilingWarning {
                    account,
                    dimension,
                    fraction_percent,
                    spent,
                    limit,
                });
            }
            LedgerEvent::CeilingReached(reached) => {
                metrics.ceiling_reached(&reached.account, reached.dimension);
                ceiling_reached(reached, &halts, policy, &events);
            }
            LedgerEvent::Overshoot { account, by } => {
                let _ = events.send(SupervisorEvent::Overshoot { account, by });
            }
        }
    }
}

/// Reports a refusal and, by `policy`, halts the run whose own ceiling was reached.
fn ceiling_reached(
    reached: CeilingReached,
    halts: &Halts,
    policy: OnCeiling,
    events: &broadcast::Sender<SupervisorEvent>,
) {
    let run = match (&reached.account, policy) {
        (AccountId::Run(run), OnCeiling::HaltRun) => Some(run.clone()),
        _ => None,
    };
    let detail = reached.to_string();
    let _ = events.send(SupervisorEvent::CeilingReached(reached));
    let Some(run) = run else {
        return;
    };
    let halt = Halt::new(
        HaltScope::Run(run),
        HaltMode::Immediate,
        HaltReason::CostCeiling,
    )
    .with_detail(detail);
    if halts.halt_with(halt.clone()) {
        let _ = events.send(SupervisorEvent::Halted {
            scope: halt.scope,
            reason: halt.reason,
            agents: 0,
        });
    }
}

/// Starts forwarding `ledger`'s events on the current actix arbiter.
pub(crate) fn spawn_watch(
    ledger: &Ledger,
    halts: Halts,
    policy: OnCeiling,
    events: broadcast::Sender<SupervisorEvent>,
    metrics: Metrics,
) {
    actix::spawn(watch(ledger.subscribe(), halts, policy, events, metrics));
}
