//! How a run ended: one type for the journal (`RunEvent::RunFinished`), the metrics
//! (`impresario_runs_finished_total{outcome}`) and everyone who reports a run's end.

use serde::{Deserialize, Serialize};

use crate::telemetry::LabelValue;

/// How a run ended. Stored in journals and used as a metric label by its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// It reached its goal.
    Succeeded,
    /// It gave up or failed.
    Failed,
    /// It was halted (operator, cost ceiling, deadline, ...).
    Halted,
    /// Its budget (a ledger ceiling) refused the next call: the budget worked as intended.
    CeilingReached,
}

impl RunOutcome {
    /// Its name, as stored and as a metric label: `succeeded`, `failed`, `halted`,
    /// `ceiling_reached`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Succeeded => "succeeded",
            RunOutcome::Failed => "failed",
            RunOutcome::Halted => "halted",
            RunOutcome::CeilingReached => "ceiling_reached",
        }
    }
}

impl LabelValue for RunOutcome {
    fn label_value(&self) -> &'static str {
        self.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_name_is_the_metric_label() {
        for outcome in [
            RunOutcome::Succeeded,
            RunOutcome::Failed,
            RunOutcome::Halted,
            RunOutcome::CeilingReached,
        ] {
            let stored = serde_json::to_value(outcome).unwrap();
            assert_eq!(stored, outcome.as_str(), "{outcome:?}");
        }
    }
}
