//! The journal in memory: the same semantics as the SQLite one, nothing durable, bounded by
//! default.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::event::{check_append, from_ms, now_ms, KeyUse, RunHead};
use super::{
    empty_batch, in_batch, Journal, JournalEntry, JournalError, JournalFuture, RetentionPolicy,
    RetentionReport, RunEvent, RunFilter, RunStatus, RunSummary, Seq, EVENT_VERSION,
};
use crate::RunId;

/// Finished runs a [`MemoryJournal::new`] keeps: past this, each run that finishes deletes the
/// run that finished longest ago (as [`Journal::apply_retention`] with `max_finished_runs` would),
/// so an embedded orchestrator that runs for months stays bounded. Active and halted runs are
/// never deleted this way.
pub const DEFAULT_MAX_FINISHED_RUNS: usize = 1_000;

/// A [`Journal`] in memory, for tests, examples and embedded use. Events are kept typed (nothing
/// is serialized), with the same checks as on disk. Bounded by default
/// ([`DEFAULT_MAX_FINISHED_RUNS`]). Clones share the same journal.
#[derive(Clone)]
pub struct MemoryJournal {
    runs: Arc<Mutex<Runs>>,
    commits: Arc<AtomicU64>,
}

impl Default for MemoryJournal {
    fn default() -> Self {
        MemoryJournal::with_max_finished_runs(DEFAULT_MAX_FINISHED_RUNS)
    }
}

/// The runs, and the finished ones in the order they finished (for the automatic cap).
struct Runs {
    map: HashMap<RunId, MemoryRun>,
    finished: VecDeque<RunId>,
    max_finished: usize,
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

    /// What the idempotency key `key` already has in this run.
    fn key_use(&self, key: &str) -> KeyUse {
        let mut used = KeyUse::default();
        for (i, e) in self.events.iter().enumerate() {
            if e.event.idempotency_key() == Some(key) {
                match e.kind {
                    "tool_call_intent" => used.intent = true,
                    _ => used.result = Some(i as Seq + 1),
                }
            }
        }
        used
    }

    /// A run with no event yet, started now, of the tenant `first` (its first event) names.
    fn new(first: &RunEvent, at_ms: i64) -> Self {
        MemoryRun {
            tenant: match first {
                RunEvent::RunSubmitted { tenant, .. } => tenant.clone(),
                _ => String::new(),
            },
            status: RunStatus::Active,
            started_ms: at_ms,
            updated_ms: at_ms,
            events: Vec::new(),
        }
    }

    /// Checks `event` against the run as it stands (a run with no event has no head) and
    /// appends it.
    fn push(&mut self, run: &RunId, event: RunEvent, at_ms: i64) -> Result<(), JournalError> {
        let head = (!self.events.is_empty()).then_some(RunHead {
            status: self.status,
            last_seq: self.events.len() as Seq,
        });
        check_append(run, head.as_ref(), &event, |key| self.key_use(key))?;
        self.status = event.status_after();
        self.updated_ms = at_ms;
        self.events.push(MemoryEvent {
            at_ms,
            kind: event.kind(),
            event,
        });
        Ok(())
    }

    /// Appends `events` in order, all or nothing: on a refusal the run is put back as it was.
    fn push_all(
        &mut self,
        run: &RunId,
        events: Vec<RunEvent>,
        at_ms: i64,
    ) -> Result<(), JournalError> {
        let (had, status, updated_ms) = (self.events.len(), self.status, self.updated_ms);
        let len = events.len();
        for (i, event) in events.into_iter().enumerate() {
            if let Err(refused) = self.push(run, event, at_ms) {
                self.events.truncate(had);
                (self.status, self.updated_ms) = (status, updated_ms);
                return Err(in_batch(refused, i, len));
            }
        }
        Ok(())
    }
}

impl Runs {
    /// Counts `run` among the finished runs and deletes the oldest past the cap.
    fn finished(&mut self, run: &RunId) {
        self.finished.push_back(run.clone());
        while self.finished.len() > self.max_finished {
            let Some(oldest) = self.finished.pop_front() else {
                break;
            };
            // Deleted already by retention applied by hand: nothing to do.
            if self.map.get(&oldest).map(|r| r.status) == Some(RunStatus::Finished) {
                self.map.remove(&oldest);
            }
        }
    }
}

impl MemoryJournal {
    /// An empty journal keeping at most [`DEFAULT_MAX_FINISHED_RUNS`] finished runs.
    pub fn new() -> Self {
        MemoryJournal::default()
    }

    /// An empty journal keeping at most `max` finished runs (`usize::MAX`: all of them).
    pub fn with_max_finished_runs(max: usize) -> Self {
        MemoryJournal {
            runs: Arc::new(Mutex::new(Runs {
                map: HashMap::new(),
                finished: VecDeque::new(),
                max_finished: max,
            })),
            commits: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Runs> {
        // Every mutation below is complete before anything can panic, so a poisoned map is
        // still consistent.
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `events` all or nothing (see [`Journal::append_batch`]), the run looked up once
    /// per batch.
    fn append_now(&self, run: &RunId, events: Vec<RunEvent>) -> Result<Seq, JournalError> {
        let Some(first) = events.first() else {
            return Err(empty_batch(run));
        };
        let mut runs = self.lock();
        let at_ms = now_ms();
        let new = !runs.map.contains_key(run);
        if new {
            let started = MemoryRun::new(first, at_ms);
            runs.map.insert(run.clone(), started);
        }
        let record = runs
            .map
            .get_mut(run)
            .expect("the run is there or was just added");
        if let Err(refused) = record.push_all(run, events, at_ms) {
            if new {
                runs.map.remove(run);
            }
            return Err(refused);
        }
        let (last, status) = (record.events.len() as Seq, record.status);
        if status == RunStatus::Finished {
            runs.finished(run);
        }
        self.commits.fetch_add(1, Ordering::Relaxed);
        Ok(last)
    }
}

impl Journal for MemoryJournal {
    fn append_batch(&self, run: &RunId, events: Vec<RunEvent>) -> JournalFuture<Seq> {
        JournalFuture::ready(self.append_now(run, events))
    }

    /// Accepted batches: each would be one transaction on disk.
    fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    fn read(&self, run: &RunId) -> Result<Vec<JournalEntry>, JournalError> {
        self.read_after(run, 0)
    }

    /// Clones only the events after `after` (event `n` is at index `n - 1`).
    fn read_after(&self, run: &RunId, after: Seq) -> Result<Vec<JournalEntry>, JournalError> {
        let runs = self.lock();
        let Some(r) = runs.map.get(run) else {
            return Ok(Vec::new());
        };
        let from = usize::try_from(after).map_or(r.events.len(), |a| a.min(r.events.len()));
        (from..r.events.len()).map(|i| r.entry(run, i)).collect()
    }

    fn runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, JournalError> {
        let mut out: Vec<RunSummary> = self
            .lock()
            .map
            .iter()
            .map(|(id, r)| r.summary(id))
            .filter(|s| filter.matches(s))
            .collect();
        out.sort_by(|a, b| (a.started_at, &a.run).cmp(&(b.started_at, &b.run)));
        out.truncate(filter.limit.unwrap_or(usize::MAX));
        Ok(out)
    }

    /// It refuses events ([`JournalError::Rejected`]), never fails otherwise.
    fn fails_transiently(&self) -> bool {
        false
    }

    /// Memory can always be written (until the process runs out of it, which ends it).
    fn probe_write(&self) -> JournalFuture<()> {
        JournalFuture::ready(Ok(()))
    }

    fn apply_retention(&self, policy: &RetentionPolicy) -> JournalFuture<RetentionReport> {
        let mut runs = self.lock();
        let doomed = policy.select(
            now_ms(),
            runs.map
                .iter()
                .map(|(id, r)| (id.clone(), r.status, r.updated_ms)),
        );
        let mut report = RetentionReport::default();
        for id in doomed {
            if let Some(r) = runs.map.remove(&id) {
                report.runs_deleted += 1;
                report.events_deleted += r.events.len() as u64;
            }
        }
        JournalFuture::ready(Ok(report))
    }
}
