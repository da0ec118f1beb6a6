//! The run journal on PostgreSQL: [`PgJournal`], with the semantics of the SQLite journal
//! (`impresario_runtime::journal`): gap-free sequence numbers per run, checked appends, one tool
//! result per idempotency key, retention, a write probe.
//!
//! - One writer task, on the database's I/O thread, takes every append waiting (up to
//!   [`MAX_GROUP`]) into one transaction and completes their futures after its COMMIT (group
//!   commit, as SQLite's writer does): appends are written in the order they were made. A
//!   `FOR UPDATE` lock on the run's row orders appends to one run across processes too.
//! - A COMMIT returns once PostgreSQL has flushed its WAL (`synchronous_commit` on, its
//!   default): an append that resolved survives a crash of the server.
//! - Connection loss: the writer retries on a new connection for up to
//!   [`crate::database::RETRY_FOR`]. When the connection broke during a COMMIT, it first reads
//!   back whether the COMMIT happened, so an append is never written twice nor lost.
//! - Reads are synchronous: they run on the I/O thread and the caller blocks on the reply; async
//!   callers put them in `spawn_blocking`, as the `Journal` trait says.
//! - Model calls' charges: an append settles the ledger holds its events carry
//!   ([`RunEvent::holds`], each event's with its charge) in its own transaction, so a call's
//!   charge in `ledger_accounts` and its journaled outcome commit together or not at all
//!   ([`HoldSettlement`]).
//! - Fencing: an append for a run that has an epoch in the journal's [`Fences`] (a run this
//!   process drives under a cluster lease) runs the fencing check first in its transaction, and
//!   is refused with [`JournalError::Fenced`], writing nothing, once the lease is gone. Other
//!   runs' appends (a single process) are written without a check.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use deadpool_postgres::{Pool, Transaction};
use impresario_runtime::journal::backend::{
    check_append, decode, empty_batch, gather, in_batch, now_ms, serialize_batch, to_ms, Append,
    Command, KeyUse, Reply, RunHead, StoredEvent, StoredRun,
};
use impresario_runtime::journal::{
    Journal, JournalEntry, JournalError, JournalFuture, RetentionPolicy, RetentionReport, RunEvent,
    RunFilter, RunStatus, RunSummary, Seq, EVENT_VERSION,
};
use impresario_runtime::ledger::Charge;
use impresario_runtime::RunId;
use tokio::sync::{mpsc, oneshot};

use crate::counters::{charge_at, to_sql};
use crate::database::{retrying, Attempt, Database};
use crate::error::PgError;
use crate::fences::Fences;
use crate::ledger;

/// Most appends committed in one transaction.
pub const MAX_GROUP: usize = 256;

/// A [`Journal`] in a PostgreSQL database. Clones share the same writer.
///
/// Dropping the last clone completes every append already queued.
#[derive(Clone)]
pub struct PgJournal {
    shared: Arc<Shared>,
}

struct Shared {
    db: Database,
    commands: Option<mpsc::UnboundedSender<Command>>,
    writer_done: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    commits: Arc<AtomicU64>,
    holds: HoldSettlement,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Closing the channel lets the writer finish what is queued; its end drops the sender.
        self.commands.take();
        let done = self
            .writer_done
            .get_mut()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(done) = done.take() {
            let _ = done.recv();
        }
    }
}

impl PgJournal {
    /// Connects to `url` ([`Database::connect`]: the schema is checked and migrated) and opens
    /// the journal in it. Blocks: call it at start, or from `spawn_blocking`.
    pub fn connect(url: &str) -> Result<PgJournal, PgError> {
        Ok(PgJournal::open(Database::connect(url)?))
    }

    /// The journal in `db` (connected and migrated), with its writer; no run is fenced.
    pub fn open(db: Database) -> PgJournal {
        PgJournal::open_with(db, PgJournalOptions::default())
    }

    /// The journal in `db` (connected and migrated), with its writer, writing as `options` say.
    pub fn open_with(db: Database, options: PgJournalOptions) -> PgJournal {
        let (commands, rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let commits = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            pool: db.pool().clone(),
            target: db.target().to_owned(),
            commits: commits.clone(),
            fences: options.fences,
        };
        let holds = options.holds;
        db.spawn(async move {
            writer.run(rx).await;
            drop(done_tx);
        });
        PgJournal {
            shared: Arc::new(Shared {
                db,
                commands: Some(commands),
                writer_done: Mutex::new(Some(done_rx)),
                commits,
                holds,
            }),
        }
    }

    /// The database the journal is in.
    pub fn database(&self) -> &Database {
        &self.shared.db
    }

    fn send<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> JournalFuture<T>
    where
        T: Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let sent = self
            .shared
            .commands
            .as_ref()
            .is_some_and(|c| c.send(command(reply)).is_ok());
        if !sent {
            return JournalFuture::ready(Err(JournalError::Closed));
        }
        JournalFuture::new(async move { rx.await.unwrap_or(Err(JournalError::Closed)) })
    }

    /// Runs a read on the I/O thread, retrying while the server is unreachable, and waits.
    fn read_with<T, F, Fut>(&self, context: &str, attempt: F) -> Result<T, JournalError>
    where
        T: Send + 'static,
        F: FnMut() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, Attempt>> + Send,
    {
        let target = self.shared.db.target().to_owned();
        let target_for_log = target.clone();
        self.shared
            .db
            .block_on(async move { retrying(&target_for_log, attempt).await })
            .map_err(|e| io(&target, context, e.to_string()))?
            .map_err(|e| io(&target, context, e.cause))
    }
}

/// How a [`PgJournal`] writes.
#[derive(Clone, Debug, Default)]
pub struct PgJournalOptions {
    /// The lease epochs of the runs this process drives in a cluster: their appends are
    /// fenced (shared with the [`PgLedger`](crate::ledger::PgLedger) of the same runs).
    pub fences: Fences,
    /// Who settles a model call's hold in the ledger store.
    pub holds: HoldSettlement,
}

/// Who settles a model call's hold in the ledger store (`PgLedger`'s `ledger_holds`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HoldSettlement {
    /// The append that journals the call's outcome, in its transaction
    /// ([`Journal::settles_holds`]): the charge and the journaled outcome commit together.
    /// Needs the runs' ledger store (if any) to be a `PgLedger` on the journal's database.
    #[default]
    InTheAppend,
    /// The call itself, when it ends (as with SQLite): for a ledger store elsewhere.
    ByTheCall,
}

/// A storage failure of `context` on `target`.
fn io(target: &str, context: &str, cause: String) -> JournalError {
    JournalError::Io {
        context: format!("{context} (PostgreSQL {target})"),
        cause,
    }
}

/// The writer task: owns the order of writes.
struct Writer {
    pool: Pool,
    target: String,
    commits: Arc<AtomicU64>,
    fences: Fences,
}

impl Writer {
    async fn run(self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut next = None;
        loop {
            let command = match next.take() {
                Some(command) => command,
                None => match commands.recv().await {
                    Some(command) => command,
                    None => return,
                },
            };
            match command {
                Command::Append(first) => {
                    let group;
                    (group, next) = gather(*first, MAX_GROUP, || commands.try_recv().ok());
                    self.append_group(group).await;
                }
                Command::Retention { policy, reply } => {
                    let _ = reply.send(self.retention(&policy).await);
                }
                Command::Probe { reply } => {
                    let _ = reply.send(self.probe().await);
                }
            }
        }
    }

    /// Writes `group` in one transaction; if storage fails it, writes its appends one by one,
    /// so that each gets its own result.
    async fn append_group(&self, group: Vec<Append>) {
        let at_ms = now_ms();
        let results = match self.commit(&group, at_ms).await {
            Ok(results) => results,
            // Unreachable all along, or one append: each of them fails with the cause.
            Err(e) if e.retry || group.len() == 1 => group
                .iter()
                .map(|_| Err(io(&self.target, "appending events", e.cause.clone())))
                .collect(),
            // A statement failed: one append's doing, so each is written on its own.
            Err(_) => {
                let mut results = Vec::with_capacity(group.len());
                for append in &group {
                    let one = self.commit(std::slice::from_ref(append), at_ms).await;
                    results.push(match one {
                        Ok(mut one) => one.pop().unwrap_or(Err(JournalError::Closed)),
                        Err(e) => Err(io(&self.target, "appending events", e.cause)),
                    });
                }
                results
            }
        };
        for (append, result) in group.into_iter().zip(results) {
            let _ = append.reply.send(result);
        }
    }

    /// Commits `group`, retrying on a new connection while the server is unreachable. The
    /// outer error means nothing was written; an inner one is an append refused.
    async fn commit(
        &self,
        group: &[Append],
        at_ms: i64,
    ) -> Result<Vec<Result<Seq, JournalError>>, Attempt> {
        // Set when a COMMIT's outcome is unknown (the connection broke during it): the next
        // attempt reads back whether it happened before writing anything again.
        let uncertain: Mutex<Option<Uncertain>> = Mutex::new(None);
        let uncertain = &uncertain;
        let written = retrying(&self.target, || async move {
            let mut client = self.pool.get().await?;
            let pending = uncertain.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(pending) = pending {
                if pending.committed(&client).await? {
                    return Ok(pending.results);
                }
            }
            let mut tx = client.transaction().await?;
            let mut results = Vec::with_capacity(group.len());
            let mut check = None;
            for append in group {
                let result = match self.fences.check(&mut tx, append.run.as_str()).await? {
                    Ok(epoch) => write_append(&tx, append, at_ms, epoch).await?,
                    Err(fenced) => Err(JournalError::Fenced(fenced)),
                };
                if let (Ok(seq), None) = (&result, &check) {
                    check = Some(commit_probe(append, *seq));
                }
                results.push(result);
            }
            if let Err(e) = tx.commit().await {
                if let Some(check) = check {
                    let results = results.clone();
                    *uncertain.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(Uncertain { results, check });
                }
                return Err(e.into());
            }
            Ok(results)
        })
        .await?;
        if written.iter().any(Result::is_ok) {
            self.commits.fetch_add(1, Ordering::Relaxed);
        }
        Ok(written)
    }
}

/// A transaction whose COMMIT may or may not have happened: what it would have returned, and
/// one event it wrote, to look for.
#[derive(Clone)]
struct Uncertain {
    results: Vec<Result<Seq, JournalError>>,
    check: (String, i64, String),
}

impl Uncertain {
    /// Whether the transaction was committed: its event is stored, with its body.
    async fn committed(
        &self,
        client: &tokio_postgres::Client,
    ) -> Result<bool, tokio_postgres::Error> {
        let (run, seq, body) = &self.check;
        let row = client
            .query_opt(
                "SELECT body FROM journal_events WHERE run_id = $1 AND seq = $2",
                &[run, seq],
            )
            .await?;
        Ok(row.is_some_and(|r| r.get::<_, &str>(0) == body))
    }
}

/// What to look for to know whether `append`, written as ending at `last`, committed.
fn commit_probe(append: &Append, last: Seq) -> (String, i64, String) {
    let body = append
        .events
        .last()
        .map(|(_, b)| b.clone())
        .unwrap_or_default();
    (append.run.as_str().to_owned(), last as i64, body)
}

/// Checks and writes one append (its events all or none), under the lease `epoch` it was
/// fenced with (if any). Outer error: storage failed; inner: the append was refused and
/// nothing of it written.
async fn write_append(
    tx: &Transaction<'_>,
    append: &Append,
    at_ms: i64,
    epoch: Option<i64>,
) -> Result<Result<Seq, JournalError>, tokio_postgres::Error> {
    let run = &append.run;
    let mut head = match run_head(tx, run).await? {
        Ok(head) => head,
        Err(corrupt) => return Ok(Err(corrupt)),
    };
    let first = head.as_ref().map_or(1, |h| h.last_seq + 1);
    let len = append.events.len();
    for (i, (event, _)) in append.events.iter().enumerate() {
        let key_use = key_use(tx, run, event, &append.events[..i], first).await?;
        if let Err(refused) = check_append(run, head.as_ref(), event, |_| key_use) {
            return Ok(Err(in_batch(refused, i, len)));
        }
        head = Some(RunHead {
            status: event.status_after(),
            last_seq: first + i as Seq,
        });
    }
    let insert = tx
        .prepare_cached(
            "INSERT INTO journal_events
             (run_id, seq, at_ms, version, kind, idem_key, body, lease_epoch)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .await?;
    let version = EVENT_VERSION as i32;
    for (i, (event, body)) in append.events.iter().enumerate() {
        let seq = (first + i as Seq) as i64;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 8] = [
            &run.as_str(),
            &seq,
            &at_ms,
            &version,
            &event.kind(),
            &event.idempotency_key(),
            body,
            &epoch,
        ];
        tx.execute(&insert, &params).await?;
    }
    settle_holds(tx, append).await?;
    let last = first + len as Seq - 1;
    write_run_row(tx, append, last, at_ms).await?;
    Ok(Ok(last))
}

/// Settles the ledger holds the append's events carry (model calls whose charge commits with
/// their journaled outcome), each event's holds with the event's charge, in the append's
/// transaction.
async fn settle_holds(tx: &Transaction<'_>, append: &Append) -> Result<(), tokio_postgres::Error> {
    for (event, _) in &append.events {
        let holds = event.holds();
        if holds.is_empty() {
            continue;
        }
        // Gone (settled, or swept long after it expired): nothing is left to charge.
        if let Some(path) = ledger::holds_path(tx, holds).await? {
            ledger::settle_on(tx, &path, holds, event.charge()).await?;
        }
    }
    Ok(())
}

/// Inserts or updates the run's row after its events up to `last`.
async fn write_run_row(
    tx: &Transaction<'_>,
    append: &Append,
    last: Seq,
    at_ms: i64,
) -> Result<(), tokio_postgres::Error> {
    let Some((event, _)) = append.events.last() else {
        return Ok(());
    };
    let tenant = match append.events.first() {
        Some((RunEvent::RunSubmitted { tenant, .. }, _)) => tenant.as_str(),
        _ => "",
    };
    let upsert = tx
        .prepare_cached(
            "INSERT INTO journal_runs
                 (run_id, tenant, status, last_seq, last_kind, started_ms, updated_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $6)
             ON CONFLICT (run_id) DO UPDATE SET status = excluded.status,
                 last_seq = excluded.last_seq, last_kind = excluded.last_kind,
                 updated_ms = excluded.updated_ms",
        )
        .await?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
        &append.run.as_str(),
        &tenant,
        &event.status_after().as_str(),
        &(last as i64),
        &event.kind(),
        &at_ms,
    ];
    tx.execute(&upsert, &params).await?;
    Ok(())
}

/// The run's status and last sequence number, its row locked until the transaction ends
/// (`None`: a new run). Inner error: a stored status this build does not know.
async fn run_head(
    tx: &Transaction<'_>,
    run: &RunId,
) -> Result<Result<Option<RunHead>, JournalError>, tokio_postgres::Error> {
    let st = tx
        .prepare_cached("SELECT status, last_seq FROM journal_runs WHERE run_id = $1 FOR UPDATE")
        .await?;
    let Some(row) = tx.query_opt(&st, &[&run.as_str()]).await? else {
        return Ok(Ok(None));
    };
    Ok(RunHead::parse(run, row.get(0), row.get(1)).map(Some))
}

/// For a tool result: whether its key has an intent and a result in `run`, stored or among
/// `earlier`, the events before it in its batch (numbered from `first`).
async fn key_use(
    tx: &Transaction<'_>,
    run: &RunId,
    event: &RunEvent,
    earlier: &[(RunEvent, String)],
    first: Seq,
) -> Result<KeyUse, tokio_postgres::Error> {
    let mut key_use = KeyUse::default();
    let (RunEvent::ToolResult { .. }, Some(key)) = (event, event.idempotency_key()) else {
        return Ok(key_use);
    };
    let st = tx
        .prepare_cached("SELECT kind, seq FROM journal_events WHERE run_id = $1 AND idem_key = $2")
        .await?;
    let stored = tx.query(&st, &[&run.as_str(), &key]).await?;
    let stored = stored
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as Seq));
    let in_batch = earlier
        .iter()
        .enumerate()
        .filter(|(_, (e, _))| e.idempotency_key() == Some(key))
        .map(|(i, (e, _))| (e.kind().to_owned(), first + i as Seq));
    for (kind, seq) in stored.chain(in_batch) {
        match kind.as_str() {
            "tool_result" => key_use.result = Some(seq),
            _ => key_use.intent = true,
        }
    }
    Ok(key_use)
}

impl Writer {
    /// Deletes the runs `policy` selects, adding what they spent to their tenants' carried
    /// spend in the same transaction, then vacuums the journal's tables so that their space is
    /// reused (PostgreSQL keeps the files' size; `VACUUM FULL` would lock the tables).
    async fn retention(&self, policy: &RetentionPolicy) -> Result<RetentionReport, JournalError> {
        retrying(&self.target, || async {
            let mut client = self.pool.get().await?;
            let bytes_before = journal_bytes(&client).await?;
            let tx = client.transaction().await?;
            let ended = tx
                .query(
                    "SELECT run_id, status, updated_ms FROM journal_runs
                     WHERE status != 'active' FOR UPDATE",
                    &[],
                )
                .await?;
            // A status this build does not know is kept: retention never guesses.
            let doomed = policy.select(
                now_ms(),
                ended.iter().filter_map(|r| {
                    let status = RunStatus::parse(r.get(1))?;
                    Some((RunId::new(r.get::<_, String>(0)), status, r.get(2)))
                }),
            );
            let ids: Vec<&str> = doomed.iter().map(RunId::as_str).collect();
            if let Err(undecodable) = carry_spend(&tx, &ids).await? {
                return Ok(Err(undecodable));
            }
            let events_deleted = tx
                .execute("DELETE FROM journal_events WHERE run_id = ANY($1)", &[&ids])
                .await?;
            let runs_deleted = tx
                .execute("DELETE FROM journal_runs WHERE run_id = ANY($1)", &[&ids])
                .await?;
            tx.commit().await?;
            client
                .batch_execute("VACUUM journal_events, journal_runs")
                .await?;
            Ok(Ok(RetentionReport {
                runs_deleted,
                events_deleted,
                bytes_before: Some(bytes_before),
                bytes_after: Some(journal_bytes(&client).await?),
            }))
        })
        .await
        .map_err(|e| io(&self.target, "applying retention", e.cause))?
    }

    /// A durable write that changes nothing: the schema row rewritten with its own value in a
    /// committed transaction. Fails when the database cannot be written (read-only, disk full,
    /// unreachable).
    async fn probe(&self) -> Result<(), JournalError> {
        retrying(&self.target, || async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            tx.execute("UPDATE impresario_schema SET version = version", &[])
                .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
        .map_err(|e| {
            io(
                &self.target,
                "probing that the journal can be written",
                e.cause,
            )
        })
    }
}

/// Adds what the runs `ids` spent (their events' charges) to their tenants' rows of
/// `journal_spend_carried`, in the retention's transaction, before the runs are deleted: a
/// tenant's spend survives retention. Inner error: an event that does not decode (retention
/// then deletes nothing).
async fn carry_spend(
    tx: &Transaction<'_>,
    ids: &[&str],
) -> Result<Result<(), JournalError>, tokio_postgres::Error> {
    let rows = tx
        .query(
            "SELECT r.tenant, e.run_id, e.seq, e.at_ms, e.version, e.kind, e.body
             FROM journal_events e JOIN journal_runs r ON r.run_id = e.run_id
             WHERE e.run_id = ANY($1) ORDER BY e.run_id, e.seq",
            &[&ids],
        )
        .await?;
    let mut spent: BTreeMap<String, Charge> = BTreeMap::new();
    for row in &rows {
        let (run, seq) = (RunId::new(row.get::<_, &str>(1)), row.get::<_, i64>(2));
        let stored = StoredEvent {
            seq,
            at_ms: row.get(3),
            version: i64::from(row.get::<_, i32>(4)),
            kind: row.get(5),
            body: row.get(6),
        };
        // Numbered as stored: the runs' events were checked gap-free when appended.
        let event = match decode(&run, seq as Seq, stored) {
            Ok(entry) => entry.event,
            Err(undecodable) => return Ok(Err(undecodable)),
        };
        let tenant = spent.entry(row.get(0)).or_insert(Charge::ZERO);
        *tenant = *tenant + event.charge();
    }
    let add = tx
        .prepare_cached(
            "INSERT INTO journal_spend_carried (tenant, micro_usd, tokens, model_calls)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (tenant) DO UPDATE SET
                 micro_usd = journal_spend_carried.micro_usd + excluded.micro_usd,
                 tokens = journal_spend_carried.tokens + excluded.tokens,
                 model_calls = journal_spend_carried.model_calls + excluded.model_calls",
        )
        .await?;
    for (tenant, charge) in spent.iter().filter(|(_, c)| !c.is_zero()) {
        let amounts = [charge.micro_usd, charge.tokens, charge.model_calls].map(to_sql);
        tx.execute(&add, &[tenant, &amounts[0], &amounts[1], &amounts[2]])
            .await?;
    }
    Ok(Ok(()))
}

/// What the runs deleted by retention had spent, per tenant.
async fn carried_rows(pool: &Pool) -> Result<Vec<(String, Charge)>, Attempt> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT tenant, micro_usd, tokens, model_calls FROM journal_spend_carried
             ORDER BY tenant",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), charge_at(r, 1))).collect())
}

/// The size of the journal's tables with their indexes, in bytes.
async fn journal_bytes(client: &tokio_postgres::Client) -> Result<u64, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT (pg_total_relation_size('journal_events')
                   + pg_total_relation_size('journal_runs'))::bigint",
            &[],
        )
        .await?;
    Ok(row.get::<_, i64>(0).max(0) as u64)
}

/// The query of [`Journal::runs`]: every filter is a parameter (an empty or NULL one lets all
/// runs through), so it is one prepared statement.
const RUNS_QUERY: &str =
    "SELECT run_id, tenant, status, last_seq, last_kind, started_ms, updated_ms
     FROM journal_runs
     WHERE (cardinality($1::text[]) = 0 OR status = ANY($1))
       AND ($2::text IS NULL OR tenant = $2)
       AND ($3::bigint IS NULL OR (started_ms, run_id) > ($3, $4::text))
     ORDER BY started_ms, run_id
     LIMIT $5";

/// The parameters of [`RUNS_QUERY`] for `filter`.
struct RunsParams {
    statuses: Vec<String>,
    tenant: Option<String>,
    after_ms: Option<i64>,
    after_run: Option<String>,
    limit: Option<i64>,
}

impl RunsParams {
    fn of(filter: &RunFilter) -> Self {
        RunsParams {
            statuses: filter
                .statuses
                .iter()
                .map(|s| s.as_str().to_owned())
                .collect(),
            tenant: filter.tenant.clone(),
            after_ms: filter.after.as_ref().map(|(at, _)| to_ms(*at)),
            after_run: filter
                .after
                .as_ref()
                .map(|(_, run)| run.as_str().to_owned()),
            limit: filter.limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX)),
        }
    }

    async fn query(&self, pool: &Pool) -> Result<Vec<StoredRun>, Attempt> {
        let client = pool.get().await?;
        let st = client.prepare_cached(RUNS_QUERY).await?;
        let rows = client
            .query(
                &st,
                &[
                    &self.statuses,
                    &self.tenant,
                    &self.after_ms,
                    &self.after_run,
                    &self.limit,
                ],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| StoredRun {
                id: r.get(0),
                tenant: r.get(1),
                status: r.get(2),
                last_seq: r.get(3),
                last_event: r.get(4),
                started_ms: r.get(5),
                updated_ms: r.get(6),
            })
            .collect())
    }
}

/// An event row as stored: seq, at_ms, version, kind, body.
type EventRow = (i64, i64, i32, String, String);

/// The stored events of `run` numbered after `after`, in order (`after = 0`: every one),
/// found in the primary key `(run_id, seq)`.
async fn event_rows(pool: &Pool, run: &str, after: i64) -> Result<Vec<EventRow>, Attempt> {
    let client = pool.get().await?;
    let st = client
        .prepare_cached(
            "SELECT seq, at_ms, version, kind, body FROM journal_events
             WHERE run_id = $1 AND seq > $2 ORDER BY seq",
        )
        .await?;
    let rows = client.query(&st, &[&run, &after]).await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect())
}

impl Journal for PgJournal {
    fn append_batch(&self, run: &RunId, events: Vec<RunEvent>) -> JournalFuture<Seq> {
        if events.is_empty() {
            return JournalFuture::ready(Err(empty_batch(run)));
        }
        // Serialized here, on the caller's thread, so the writer only writes.
        let events = match serialize_batch(run, events) {
            Ok(events) => events,
            Err(refused) => return JournalFuture::ready(Err(refused)),
        };
        let run = run.clone();
        self.send(|reply| {
            // Events are stored whole here: no shared value is cut out of them.
            let blobs = Vec::new();
            Command::Append(Box::new(Append {
                run,
                events,
                blobs,
                reply,
            }))
        })
    }

    fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    /// What the runs deleted by retention had spent, per tenant.
    fn carried_spend(&self) -> Result<Vec<(String, Charge)>, JournalError> {
        let pool = self.shared.db.pool().clone();
        self.read_with("reading the spend retention carried over", move || {
            let pool = pool.clone();
            async move { carried_rows(&pool).await }
        })
    }

    fn settles_holds(&self) -> bool {
        self.shared.holds == HoldSettlement::InTheAppend
    }

    fn read(&self, run: &RunId) -> Result<Vec<JournalEntry>, JournalError> {
        self.read_after(run, 0)
    }

    /// `WHERE seq > after` in the events' primary key: nothing up to `after` is sent.
    fn read_after(&self, run: &RunId, after: Seq) -> Result<Vec<JournalEntry>, JournalError> {
        let pool = self.shared.db.pool().clone();
        let id = run.as_str().to_owned();
        // Past every sequence number a run can have: nothing.
        let Ok(after_i64) = i64::try_from(after) else {
            return Ok(Vec::new());
        };
        let rows = self.read_with("reading a run", move || {
            let (pool, id) = (pool.clone(), id.clone());
            async move { event_rows(&pool, &id, after_i64).await }
        })?;
        (after + 1..)
            .zip(&rows)
            .map(|(expected, (seq, at_ms, version, kind, body))| {
                let stored = StoredEvent {
                    seq: *seq,
                    at_ms: *at_ms,
                    version: i64::from(*version),
                    kind,
                    body,
                };
                decode(run, expected, stored)
            })
            .collect()
    }

    fn runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, JournalError> {
        let pool = self.shared.db.pool().clone();
        let params = Arc::new(RunsParams::of(filter));
        let rows = self.read_with("listing runs", move || {
            let (pool, params) = (pool.clone(), params.clone());
            async move { params.query(&pool).await }
        })?;
        rows.into_iter().map(StoredRun::summary).collect()
    }

    fn apply_retention(&self, policy: &RetentionPolicy) -> JournalFuture<RetentionReport> {
        let policy = policy.clone();
        self.send(|reply| Command::Retention { policy, reply })
    }

    fn probe_write(&self) -> JournalFuture<()> {
        self.send(|reply| Command::Probe { reply })
    }
}
