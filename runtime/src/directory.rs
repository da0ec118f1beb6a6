//! Agents addressable by name: `AgentId { kind, key }` -> the agent's stable handle.
//!
//! An agent is listed from the moment it is spawned until it stops for good (a restart keeps it
//! listed). Lookups are lock-free reads of a `DashMap`.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::agent_ref::AgentRef;
use crate::slot::{ErasedSlot, Slot};
use crate::Agent;

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

/// The agents of one runtime, by id.
#[derive(Default)]
pub struct Directory {
    entries: DashMap<AgentId, Arc<dyn ErasedSlot>>,
}

impl Directory {
    /// The handle of agent `id`, if it is running (or restarting) and is of type `A`.
    pub fn lookup<A: Agent>(&self, id: &AgentId) -> Option<AgentRef<A>> {
        let erased = self.entries.get(id)?.value().clone();
        let any: Arc<dyn Any + Send + Sync> = erased.into_any();
        any.downcast::<Slot<A>>().ok().map(AgentRef::from_slot)
    }

    /// Whether an agent with this id is listed.
    pub fn contains(&self, id: &AgentId) -> bool {
        self.entries.contains_key(id)
    }

    /// The ids of every listed agent of `kind`, in start order.
    pub fn list_kind(&self, kind: &str) -> Vec<AgentId> {
        let mut found: Vec<(u64, AgentId)> = self
            .entries
            .iter()
            .filter(|e| &*e.key().kind == kind)
            .map(|e| (e.value().seq(), e.key().clone()))
            .collect();
        found.sort_unstable_by_key(|(seq, _)| *seq);
        found.into_iter().map(|(_, id)| id).collect()
    }

    /// How many agents are listed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no agent is listed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Lists a new agent; fails if the id is taken.
    pub(crate) fn insert(&self, id: AgentId, slot: Arc<dyn ErasedSlot>) -> Result<(), AgentId> {
        match self.entries.entry(id) {
            Entry::Occupied(e) => Err(e.key().clone()),
            Entry::Vacant(e) => {
                e.insert(slot);
                Ok(())
            }
        }
    }

    /// Unlists `id` if it still names this very slot (a newer agent may have taken the id).
    pub(crate) fn remove_slot(&self, id: &AgentId, slot_seq: u64) {
        self.entries.remove_if(id, |_, s| s.seq() == slot_seq);
    }

    /// Requests in flight, summed by agent kind.
    pub(crate) fn in_flight_by_kind(&self) -> HashMap<Arc<str>, usize> {
        let mut sums: HashMap<Arc<str>, usize> = HashMap::new();
        for entry in self.entries.iter() {
            *sums.entry(entry.key().kind.clone()).or_default() += entry.value().in_flight();
        }
        sums
    }

    /// Every listed agent, newest first: the order in which shutdown stops them.
    pub(crate) fn newest_first(&self) -> Vec<Arc<dyn ErasedSlot>> {
        let mut all: Vec<Arc<dyn ErasedSlot>> =
            self.entries.iter().map(|e| e.value().clone()).collect();
        all.sort_unstable_by_key(|s| std::cmp::Reverse(s.seq()));
        all
    }
}
