//! The run journal (docs/ARCHITECTURE.md, contract 4): every event of a run, durable before the
//! step it records is acknowledged, so a run can be replayed without network calls and resumed
//! after a crash.
//!
//! - [`Journal`] is what the runtime writes to and recovers from. [`SqliteJournal`] (one SQLite
//!   file in WAL mode, the embedded default) and [`MemoryJournal`] (tests, examples) implement it
//!   with the same semantics.
//! - Events are [`RunEvent`]s, stored as versioned JSON ([`EVENT_VERSION`]) with the run, a
//!   sequence number (gap-free per run, from 1) and a timestamp. Reading back validates every
//!   event: a newer version, an unknown type, a missing sequence number or bytes that do not
//!   decode are errors naming the run and the sequence number, never a skip (contract 5).
//! - **Write-ahead:** [`Journal::append`] returns a future that resolves once the event is
//!   durable (for SQLite: committed and, by default, fsynced; see [`Durability`]). Acknowledge a
//!   step only after it resolves. The
//!   event is queued when `append` is called, so dropping the future does not withdraw it.
//! - **Batches:** [`Journal::append_batch`] writes several events of one run in one transaction
//!   (one commit, all or nothing): what a run did between two external effects goes in one
//!   commit. [`Journal::commits`] counts the commits.
//! - [`MemoryJournal`] is bounded by default ([`DEFAULT_MAX_FINISHED_RUNS`] finished runs).
//! - Appends are checked: a run starts with [`RunEvent::RunSubmitted`], nothing follows
//!   [`RunEvent::RunFinished`], and a [`RunEvent::ToolResult`] needs its intent and is unique per
//!   idempotency key (a resumed run finds it among the run's events before calling the tool
//!   again). A refused append is [`JournalError::Rejected`] and leaves the run as it was.
//! - **Retention:** [`Journal::apply_retention`] deletes finished (optionally halted) runs by age
//!   and count, never an active one, and gives the space back to the file system.
//!
//! Reads are synchronous: they are short queries on their own connections that never wait for
//! the writer (WAL). Call them from `spawn_blocking` when reading very large runs in async code.
//!
//! ```
//! # async fn demo() -> Result<(), impresario_runtime::journal::JournalError> {
//! use impresario_runtime::journal::{Journal, MemoryJournal, RunEvent, RunFilter};
//! use impresario_runtime::RunId;
//! use serde_json::json;
//!
//! let journal = MemoryJournal::new(); // or SqliteJournal::open("runs.db")?
//! let run = RunId::generate();
//! let submitted = RunEvent::RunSubmitted {
//!     tenant: "acme".into(),
//!     goal: "say hi".into(),
//!     request: json!({}),
//! };
//! assert_eq!(journal.append(&run, submitted).await?, 1); // durable once this resolves
//! assert_eq!(journal.read(&run)?.len(), 1);
//! assert_eq!(journal.runs(&RunFilter::unfinished())?[0].run, run);
//! # Ok(()) }
//! ```

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;

use crate::ledger::Charge;
use crate::RunId;

mod event;
mod memory;
mod sqlite;
mod writer;

pub use crate::outcome::RunOutcome;
pub use event::{RunEvent, ToolOutcome, EVENT_VERSION};
pub use memory::{MemoryJournal, DEFAULT_MAX_FINISHED_RUNS};
pub use sqlite::{Durability, SqliteJournal, SCHEMA_VERSION};

/// Building blocks for a [`Journal`] stored outside this crate (the PostgreSQL journal of
/// `impresario-pg`): the checks, the decoding and the time format every journal shares, so
/// that all of them refuse, validate and number events the same way.
pub mod backend {
    pub use super::event::{
        check_append, decode, from_ms, now_ms, serialize_batch, to_ms, CutValue, KeyUse, RunHead,
        StoredEvent, StoredRun,
    };
    pub use super::writer::{gather, Append, Command, Reply};
    pub use super::{empty_batch, in_batch};
}

/// Position of an event in its run: 1 for the first, then gap-free.
pub type Seq = u64;

/// One stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalEntry {
    /// The run.
    pub run: RunId,
    /// Its position in the run.
    pub seq: Seq,
    /// When it was journaled (millisecond precision).
    pub at: SystemTime,
    /// The event version it was written with.
    pub version: u32,
    /// The event.
    pub event: RunEvent,
}

/// Where a run stands, from its last event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunStatus {
    /// Submitted and not halted or finished: after a crash, recovery resumes these.
    Active,
    /// The last event is a halt; it can be resumed on request.
    Halted,
    /// Ended with [`RunEvent::RunFinished`]; nothing more can be appended.
    Finished,
}

impl RunStatus {
    /// The name stored and shown (`active`, `halted`, `finished`).
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Active => "active",
            RunStatus::Halted => "halted",
            RunStatus::Finished => "finished",
        }
    }

    /// The status named `s` ([`RunStatus::as_str`]), if this build knows it.
    pub fn parse(s: &str) -> Option<Self> {
        [RunStatus::Active, RunStatus::Halted, RunStatus::Finished]
            .into_iter()
            .find(|st| st.as_str() == s)
    }
}

/// A run as listed by [`Journal::runs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    /// The run.
    pub run: RunId,
    /// Its tenant, from [`RunEvent::RunSubmitted`].
    pub tenant: String,
    /// Where it stands.
    pub status: RunStatus,
    /// Sequence number of its last event (= its number of events).
    pub last_seq: Seq,
    /// The `type` of its last event ([`RunEvent::kind`]).
    pub last_event: String,
    /// When its first event was journaled.
    pub started_at: SystemTime,
    /// When its last event was journaled.
    pub updated_at: SystemTime,
}

impl RunSummary {
    /// Where the run stands in the order of [`Journal::runs`]: its start, then its id.
    pub fn cursor(&self) -> (SystemTime, RunId) {
        (self.started_at, self.run.clone())
    }
}

/// Which runs [`Journal::runs`] lists, oldest first. The default lists all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    /// Only runs in one of these states; empty = any.
    pub statuses: Vec<RunStatus>,
    /// Only runs of this tenant.
    pub tenant: Option<String>,
    /// At most this many.
    pub limit: Option<usize>,
    /// Only runs listed after this one: its start and id, the order of the list (a cursor
    /// for pagination, see [`RunSummary::cursor`]).
    pub after: Option<(SystemTime, RunId)>,
}

impl RunFilter {
    /// Every run.
    pub fn all() -> Self {
        RunFilter::default()
    }

    /// Runs that are active or halted: what recovery looks at after a crash.
    pub fn unfinished() -> Self {
        RunFilter::all()
            .status(RunStatus::Active)
            .status(RunStatus::Halted)
    }

    /// Also lists runs in `status` (the first call restricts the list to it).
    pub fn status(mut self, status: RunStatus) -> Self {
        self.statuses.push(status);
        self
    }

    /// Only runs of `tenant`.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// At most `limit` runs.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Only runs listed after `run` (see [`RunFilter::after`]).
    pub fn after(mut self, run: &RunSummary) -> Self {
        self.after = Some(run.cursor());
        self
    }

    pub(crate) fn matches(&self, run: &RunSummary) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&run.status))
            && self.tenant.as_ref().is_none_or(|t| *t == run.tenant)
            && self
                .after
                .as_ref()
                .is_none_or(|(at, id)| (run.started_at, &run.run) > (*at, id))
    }
}

/// Which finished runs [`Journal::apply_retention`] deletes. Active runs are never deleted;
/// halted ones only with `include_halted`. A run is deleted if either limit says so.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Delete runs whose last event is older than this.
    pub max_age: Option<Duration>,
    /// Keep at most this many runs (the most recently ended), delete the others.
    pub max_finished_runs: Option<usize>,
    /// Also delete halted runs (which could still be resumed) by the same limits.
    pub include_halted: bool,
}

impl RetentionPolicy {
    /// The runs this policy deletes among `(run, status, last event ms)` at time `now_ms`;
    /// shared by every journal so they all keep the same runs.
    pub fn select(
        &self,
        now_ms: i64,
        runs: impl Iterator<Item = (RunId, RunStatus, i64)>,
    ) -> Vec<RunId> {
        let mut candidates: Vec<(i64, RunId)> = runs
            .filter(|(_, status, _)| {
                *status == RunStatus::Finished
                    || (self.include_halted && *status == RunStatus::Halted)
            })
            .map(|(id, _, updated)| (updated, id))
            .collect();
        // Newest first: the count limit keeps the head of the list.
        candidates.sort_by(|a, b| b.cmp(a));
        let cutoff = self
            .max_age
            .map(|age| now_ms.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX)));
        let keep = self.max_finished_runs.unwrap_or(usize::MAX);
        candidates
            .into_iter()
            .enumerate()
            .filter(|(i, (updated, _))| *i >= keep || cutoff.is_some_and(|c| *updated < c))
            .map(|(_, (_, id))| id)
            .collect()
    }
}

/// What [`Journal::apply_retention`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Runs deleted.
    pub runs_deleted: u64,
    /// Their events.
    pub events_deleted: u64,
    /// Size on disk before (database plus WAL); `None` for a journal in memory.
    pub bytes_before: Option<u64>,
    /// Size on disk after compaction.
    pub bytes_after: Option<u64>,
}

/// Why a journal operation failed. Each variant says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// The file was written by a newer Impresario. It was not modified.
    #[error("journal {path:?} has schema version {found}, this build supports up to {supported}; open it with a newer Impresario (the file was not modified)")]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// Its schema version.
        found: i64,
        /// The newest this build knows.
        supported: i64,
    },
    /// The file is not a journal (another SQLite database, or not SQLite at all). It was not
    /// modified.
    #[error("{path:?} is not an Impresario journal ({reason}); point the journal at a new file")]
    NotAJournal {
        /// The file.
        path: PathBuf,
        /// What gave it away.
        reason: String,
    },
    /// A stored event is invalid: it does not decode, is of an unknown type, or is missing.
    /// Nothing was skipped; the run cannot be read until the event is repaired or removed.
    #[error("journal of run {run}, event {seq}: {reason}")]
    Corrupt {
        /// The run.
        run: RunId,
        /// The event.
        seq: Seq,
        /// What was wrong.
        reason: String,
    },
    /// A stored event was written by a newer Impresario.
    #[error("journal of run {run}, event {seq}: event version {found} is newer than this build reads ({supported}); read it with a newer Impresario")]
    NewerEvent {
        /// The run.
        run: RunId,
        /// The event.
        seq: Seq,
        /// Its version.
        found: u32,
        /// The newest this build reads.
        supported: u32,
    },
    /// The append was refused; the run is unchanged. A bug in the caller, not in storage.
    #[error("append to run {run} refused: {reason}")]
    Rejected {
        /// The run.
        run: RunId,
        /// Why.
        reason: String,
    },
    /// Storage failed (disk full, permissions, I/O error). An append that fails with it was not
    /// journaled.
    #[error("journal storage failed while {context}: {cause}; check the disk (free space, permissions) and retry")]
    Io {
        /// What the journal was doing.
        context: String,
        /// The underlying error.
        cause: String,
    },
    /// The run is driven under a lease this process no longer holds (a cluster's fencing
    /// token): the append was refused and nothing written. Stop driving the run here.
    #[error(transparent)]
    Fenced(#[from] crate::fencing::Fenced),
    /// The journal is closed (dropped, or its writer thread died). An append that gets this may
    /// or may not be durable: read the run back to find out.
    #[error("the journal is closed; an append that got this error may or may not be durable: read the run back")]
    Closed,
}

/// The future of a journal write: resolves once the write is durable (or failed).
///
/// The write was queued when the future was created; dropping the future does not cancel it.
#[must_use = "an append is durable only once its future resolves: await it before acknowledging the step"]
pub struct JournalFuture<T>(Pending<T>);

enum Pending<T> {
    Ready(Option<Result<T, JournalError>>),
    Waiting(oneshot::Receiver<Result<T, JournalError>>),
    Boxed(Pin<Box<dyn Future<Output = Result<T, JournalError>> + Send>>),
}

impl<T> JournalFuture<T> {
    /// A write that is already done (or failed).
    pub fn ready(result: Result<T, JournalError>) -> Self {
        JournalFuture(Pending::Ready(Some(result)))
    }

    /// Wraps any future, for journal implementations that complete writes asynchronously.
    pub fn new(future: impl Future<Output = Result<T, JournalError>> + Send + 'static) -> Self {
        JournalFuture(Pending::Boxed(Box::pin(future)))
    }

    /// A write completed by a writer thread through `rx`; a dropped sender means it died.
    pub(crate) fn waiting(rx: oneshot::Receiver<Result<T, JournalError>>) -> Self {
        JournalFuture(Pending::Waiting(rx))
    }
}

// No variant is pinned in place: the result is moved out, the others are `Unpin` already.
impl<T> Unpin for JournalFuture<T> {}

impl<T> Future for JournalFuture<T> {
    type Output = Result<T, JournalError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().0 {
            Pending::Ready(result) => Poll::Ready(
                result
                    .take()
                    .expect("JournalFuture polled after it completed"),
            ),
            Pending::Waiting(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(JournalError::Closed))),
            Pending::Boxed(f) => f.as_mut().poll(cx),
        }
    }
}

/// A run journal. See the [module documentation](self) for the guarantees every implementation
/// keeps; `Arc<dyn Journal>` is how the runtime holds one.
///
/// An implementation provides [`Journal::append_batch`] (one transaction per call) and
/// [`Journal::commits`]; [`Journal::append`] is a batch of one.
pub trait Journal: Send + Sync {
    /// Appends `event` to `run` and resolves to its sequence number once it is durable.
    /// Refused appends resolve to [`JournalError::Rejected`]. A batch of one.
    fn append(&self, run: &RunId, event: RunEvent) -> JournalFuture<Seq> {
        self.append_batch(run, vec![event])
    }

    /// Appends `events` to `run`, in order, in **one transaction**, and resolves to the
    /// sequence number of the last one once all of them are durable (one commit, however many
    /// events).
    ///
    /// All or nothing: each event is checked as if appended alone after the ones before it
    /// in the batch (a tool result may follow its intent in the same batch); if any is
    /// refused, none is written, the run is left as it was, and the future resolves to
    /// [`JournalError::Rejected`] naming the refused event. An empty batch is refused too
    /// (it would have no sequence number to resolve to). Like [`Journal::append`], the batch
    /// is queued when this is called: dropping the future does not withdraw it.
    fn append_batch(&self, run: &RunId, events: Vec<RunEvent>) -> JournalFuture<Seq>;

    /// The durable commits this journal has made since it was opened: one per transaction
    /// that wrote at least one event (a batch, or several batches group-committed together),
    /// counted once the transaction is durable. Refused batches, reads, probes and retention
    /// are not counted. What tests and benchmarks count fsyncs with (one per commit with
    /// SQLite's [`Durability::Full`]).
    fn commits(&self) -> u64;

    /// Every event of `run` in order, validated; empty if the journal has no such run.
    fn read(&self, run: &RunId) -> Result<Vec<JournalEntry>, JournalError>;

    /// The events of `run` numbered after `after`, in order, validated as [`Journal::read`]
    /// validates them: the tail of what `read` returns, read without the events up to `after`
    /// (what a follower of a run asks for with the last sequence number it has). `after = 0`
    /// is every event; at or past the run's last event, and for a run the journal does not
    /// have, it is empty. Only the events returned, and their numbering from `after + 1`, are
    /// checked: a corrupt event at or before `after` is not seen here.
    fn read_after(&self, run: &RunId, after: Seq) -> Result<Vec<JournalEntry>, JournalError>;

    /// The runs `filter` selects, oldest first.
    fn runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, JournalError>;

    /// Deletes the runs `policy` selects and compacts the storage. A journal that keeps what
    /// the deleted runs spent ([`Journal::carried_spend`]) adds it in the same transaction.
    fn apply_retention(&self, policy: &RetentionPolicy) -> JournalFuture<RetentionReport>;

    /// What the runs deleted by retention had spent, per tenant (their events' charges), so a
    /// tenant's spend is rebuilt whole after a restart. The default keeps nothing: a journal
    /// that does not outlive its process (`MemoryJournal`) has nothing to rebuild.
    fn carried_spend(&self) -> Result<Vec<(String, Charge)>, JournalError> {
        Ok(Vec::new())
    }

    /// Whether an append settles the ledger store's holds its events carry
    /// ([`RunEvent::holds`]) in the transaction that writes them, so that a model call's
    /// charge and its journaled outcome commit together (PostgreSQL, with the runs' ledger
    /// store in the same database). When it does, a run's model calls leave their store holds
    /// to the journal ([`crate::ledger_store::PendingHolds`]). The default: no (the call settles
    /// its hold itself).
    fn settles_holds(&self) -> bool {
        false
    }

    /// Whether an append that failed for a reason other than its events (I/O, a lock, a lost
    /// connection) may succeed when tried again. A caller that retries keeps a copy of what it
    /// appends only then. The default: yes. A journal whose only refusal is
    /// [`JournalError::Rejected`] (`MemoryJournal`) says no, so nothing is copied for it.
    fn fails_transiently(&self) -> bool {
        true
    }

    /// Writes durably without changing any run, behind the appends already queued: fails when
    /// the storage cannot be written (disk full, read-only file). Readiness asks this.
    fn probe_write(&self) -> JournalFuture<()>;
}

/// A refusal of event `index` (from 0) of a batch of `len`, saying which event it was; a batch
/// of one keeps the refusal as it is.
pub fn in_batch(error: JournalError, index: usize, len: usize) -> JournalError {
    match error {
        JournalError::Rejected { run, reason } if len > 1 => JournalError::Rejected {
            run,
            reason: format!(
                "event {} of a batch of {len} (none was written): {reason}",
                index + 1
            ),
        },
        other => other,
    }
}

/// The refusal of an empty batch ([`Journal::append_batch`]), shared by every journal.
pub fn empty_batch(run: &RunId) -> JournalError {
    JournalError::Rejected {
        run: run.clone(),
        reason: "an empty batch of events (append_batch needs at least one event)".into(),
    }
}
