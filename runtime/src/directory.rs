//! Agents addressable by name: `AgentId { kind, key }` -> the agent's stable handle.
//!
//! An agent is listed from the moment it is spawned until it stops for good (a restart keeps it
//! listed). Lookups are lock-free reads of a `DashMap`.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::agent_id::AgentId;
use crate::agent_ref::AgentRef;
use crate::slot::{ErasedSlot, Slot};
use crate::Agent;

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
