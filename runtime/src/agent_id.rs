//! The name of an agent: `AgentId { kind, key }`. A leaf: every module of the substrate names
//! agents, so this one imports none of them.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The name of an agent: its kind (what it is, e.g. `planner`) and a key unique within the kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AgentId {
    /// What the agent is; a bounded set, safe to use as a metric label.
    pub kind: Arc<str>,
    /// Which one of its kind.
    pub key: Arc<str>,
}

impl AgentId {
    /// An id from a kind and a key.
    pub fn new(kind: impl Into<Arc<str>>, key: impl Into<Arc<str>>) -> Self {
        AgentId {
            kind: kind.into(),
            key: key.into(),
        }
    }

    /// An id of this kind with a key no other `unique` id in this process has.
    pub fn unique(kind: impl Into<Arc<str>>) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        AgentId::new(kind, format!("#{n}"))
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.key)
    }
}
