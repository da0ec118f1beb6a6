//! Model tiers: callers ask for `Light`, `Standard` or `Heavy` work, and configuration decides
//! which models do it (a run's `ModelMap` in impresario-agents), so cheap work goes to cheap
//! models.

use serde::{Deserialize, Serialize};

/// How demanding a piece of work is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Classification, extraction, short summaries: the cheapest adequate model.
    Light,
    /// Ordinary agent steps.
    Standard,
    /// Planning, hard reasoning: the strongest model.
    Heavy,
}
