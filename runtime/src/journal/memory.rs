//! The journal in memory: the same semantics as the SQLite one, nothing durable.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::event::{check_append, from_ms, now_ms, KeyUse, RunHead};
use super::{
    Journal, JournalEntry, JournalError, JournalFuture, RetentionPolicy, RetentionReport, RunEvent,
    RunFilter, RunStatus, RunSummary, Seq, EVENT_VERSION,
};
use crate::RunId;

/// A [`Journal`] in memory, for tests and examples. Events are kept serialized, so they go
/// through the same encoding and validation as on disk. Clones share the same journal.
#[derive(Clone, Default)]
pub struct MemoryJournal {
    runs: Arc<Mutex<HashMap<RunId, MemoryRun>>>,
}

struct MemoryRun {
    tenant: String,
    status: RunStatus,
    started_ms: i64,
    updated_ms: i64,
    events: Vec<MemoryEvent>,
}

/// An event as the memory journal keeps it: typed, so nothing is serialized or parsed (a typed
/// event in memory cannot be corrupt; the SQLite journal validates what it reads back).
struct MemoryEvent {
    at_ms: i64,
    kind: &'static str,
    key: Option<String>,
    event: RunEvent,
}

impl MemoryRun {
    fn entry(&self, run: &RunId, index: usize) -> Result<JournalEntry, JournalError> {
        let e = &self.events[index];
        Ok(JournalEntry {
            run: run.clone(),
            seq: index as Seq + 1,
            at: from_ms(e.at_ms),
            version: EVENT_VERSION,
            event: e.event.clone(),
        })
    }

    fn summary(&self, run: &RunId) -> RunSummary {
        RunSummary {
            run: run.clone(),
            tenant: self.tenant.clone(),
            status: self.status,
            last_seq: self.events.len() as Seq,
            last_event: self.events.last().map_or("", |e| e.kind).to_owned(),
            started_at: from_ms(self.started_ms),
            updated_at: from_ms(self.updated_ms),
        }
    }
}

impl MemoryJournal {
    /// An empty journal.
    pub fn new() -> Self {
        MemoryJournal::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<RunId, MemoryRun>> {
        // Every mutation below is complete before anything can panic, so a poisoned map is
        // still consistent.
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn append_now(&self, run: &RunId, event: RunEvent) -> Result<Seq, JournalError> {
        let mut runs = self.lock();
        let existing = runs.get(run);
        let head = existing.map(|r| RunHead {
            status: r.status,
            last_seq: r.events.len() as Seq,
        });
        check_append(run, head.as_ref(), &event, |key| {
            let mut used = KeyUse::default();
            for (i, e) in existing
                .into_iter()
                .flat_map(|r| r.events.iter().enumerate())
            {
                if e.key.as_deref() == Some(key) {
                    match e.kind {
                        "tool_call_intent" => used.intent = true,
                        _ => used.result = Some(i as Seq + 1),
                    }
                }
            }
            used
        })?;
        let at_ms = now_ms();
        let entry = runs.entry(run.clone()).or_insert_with(|| MemoryRun {
            tenant: match &event {
                RunEvent::RunSubmitted { tenant, .. } => tenant.clone(),
                _ => String::new(),
            },
            status: RunStatus::Active,
            started_ms: at_ms,
            updated_ms: at_ms,
            events: Vec::new(),
        });
        entry.status = event.status_after();
        entry.updated_ms = at_ms;
        entry.events.push(MemoryEvent {
            at_ms,
            kind: event.kind(),
            key: event.idempotency_key().map(str::to_owned),
            event,
        });
        Ok(entry.events.len() as Seq)
    }
}

impl Journal for MemoryJournal {
    fn append(&self, run: &RunId, event: RunEvent) -> JournalFuture<Seq> {
        JournalFuture::ready(self.append_now(run, event))
    }

    fn read(&self, run: &RunId) -> Result<Vec<JournalEntry>, JournalError> {
        let runs = self.lock();
        let Some(r) = runs.get(run) else {
            return Ok(Vec::new());
        };
        (0..r.events.len()).map(|i| r.entry(run, i)).collect()
    }

    fn runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, JournalError> {
        let mut out: Vec<RunSummary> = self
            .lock()
            .iter()
            .map(|(id, r)| r.summary(id))
            .filter(|s| filter.matches(s))
            .collect();
        out.sort_by(|a, b| (a.started_at, &a.run).cmp(&(b.started_at, &b.run)));
        out.truncate(filter.limit.unwrap_or(usize::MAX));
        Ok(out)
    }

    /// Memory can always be written (until the process runs out of it, which ends it).
    fn probe_write(&self) -> JournalFuture<()> {
        JournalFuture::ready(Ok(()))
    }

    fn apply_retention(&self, policy: &RetentionPolicy) -> JournalFuture<RetentionReport> {
        let mut runs = self.lock();
        let doomed = policy.select(
            now_ms(),
            runs.iter()
                .map(|(id, r)| (id.clone(), r.status, r.updated_ms)),
        );
        let mut report = RetentionReport::default();
        for id in doomed {
            if let Some(r) = runs.remove(&id) {
                report.runs_deleted += 1;
                report.events_deleted += r.events.len() as u64;
            }
        }
        JournalFuture::ready(Ok(report))
    }
}
