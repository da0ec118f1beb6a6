//! The journal in one SQLite file.
//!
//! - WAL with `synchronous = FULL` by default ([`Durability::Full`]): a commit returns once the
//!   WAL is fsynced, so an append that resolved survives a crash of the process *and* of the
//!   machine. [`Durability::Normal`] (`synchronous = NORMAL`) syncs only at checkpoints: an
//!   append that resolved survives a crash or SIGKILL of the process, but an OS crash or a power
//!   loss may drop the last commits before it (the file stays consistent). Chosen when the
//!   journal is opened ([`SqliteJournal::open_with`]; the binary's `journal.sync`).
//! - One writer thread owns the only writing connection. Appends (each a batch of one or more
//!   events of one run) queue on a channel; the writer takes every append waiting (up to
//!   [`MAX_GROUP`]) into one transaction, checks each append's events before writing any (a
//!   refused event refuses its append only, nothing of it written), and completes their
//!   futures after its COMMIT: group commit, one fsync for many appends.
//! - An append is stored as one row (its events one per line, `sqlite/rows.rs`), not a row per event:
//!   fewer rows and index entries per commit.
//! - Shared values (a planner's system prompt, a plan's output schema) are cut out of the
//!   events on the caller's thread and stored once per file, by SHA-256 (`sqlite/blobs.rs`);
//!   reading splices them back, so events read back as they were appended.
//! - Reads use read-only connections of their own, kept in a small pool; under WAL they never
//!   wait for the writer.
//! - The schema is versioned in `PRAGMA user_version` and migrated on open; a file with a newer
//!   version is refused before anything is written to it. `PRAGMA application_id` marks the file
//!   as a journal, so pointing the journal at some other database fails instead of writing to it.
//! - Compaction: the file is created with `auto_vacuum = INCREMENTAL`; retention deletes runs,
//!   then runs `incremental_vacuum` and a truncating WAL checkpoint, so the file shrinks.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::types::Value as SqlValue;
use rusqlite::{
    params, params_from_iter, Connection, ErrorCode, OpenFlags, Transaction, TransactionBehavior,
};
use tokio::sync::oneshot;

use super::event::{now_ms, serialize_batch, to_ms, StoredRun};
use super::writer::{gather, Append, Command, Reply};
use super::{
    Journal, JournalEntry, JournalError, JournalFuture, RetentionPolicy, RetentionReport, RunEvent,
    RunFilter, RunStatus, RunSummary, Seq,
};
use crate::ledger::Charge;
use crate::llm::JsonDigest;
use crate::RunId;

mod blobs;
mod rows;

use blobs::{KnownValues, ValueCache};
use rows::{
    decode_after, decode_all, delete_events, insert_all, raw_batches_after, read_rows, stored_run,
    values_of, RUNS_COLUMNS, RUNS_JOIN,
};

/// Schema migrations: `MIGRATIONS[i]` takes a file from schema version `i` to `i + 1`. Append
/// new ones; never edit one that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: runs and their events.
    "CREATE TABLE runs (
        run_id     TEXT PRIMARY KEY NOT NULL,
        tenant     TEXT NOT NULL,
        status     TEXT NOT NULL,
        last_seq   INTEGER NOT NULL,
        last_kind  TEXT NOT NULL,
        started_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX runs_by_start ON runs (started_ms, run_id);
    CREATE TABLE events (
        run_id   TEXT NOT NULL,
        seq      INTEGER NOT NULL,
        at_ms    INTEGER NOT NULL,
        version  INTEGER NOT NULL,
        kind     TEXT NOT NULL,
        idem_key TEXT,
        body     TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    );
    CREATE INDEX events_by_key ON events (run_id, idem_key) WHERE idem_key IS NOT NULL;
    CREATE UNIQUE INDEX one_result_per_key ON events (run_id, idem_key)
        WHERE kind = 'tool_result';",
    // 2: what the runs retention deleted had spent, per tenant.
    "CREATE TABLE spend_carried (
        tenant      TEXT PRIMARY KEY NOT NULL,
        micro_usd   INTEGER NOT NULL,
        tokens      INTEGER NOT NULL,
        model_calls INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // 3: one row per append (a commit point's events, one per line: `sqlite/rows.rs`) instead
    // of one per event, and the tool calls' idempotency keys in a table of their own. The
    // events already stored become rows of one event each, their keys rows of `tool_keys`.
    "CREATE TABLE batches (
        run_id    TEXT NOT NULL,
        first_seq INTEGER NOT NULL,
        at_ms     INTEGER NOT NULL,
        version   INTEGER NOT NULL,
        kinds     TEXT NOT NULL,
        bodies    TEXT NOT NULL,
        PRIMARY KEY (run_id, first_seq)
    );
    CREATE TABLE tool_keys (
        run_id     TEXT NOT NULL,
        idem_key   TEXT NOT NULL,
        result_seq INTEGER,
        PRIMARY KEY (run_id, idem_key)
    ) WITHOUT ROWID;
    INSERT INTO batches (run_id, first_seq, at_ms, version, kinds, bodies)
        SELECT run_id, seq, at_ms, version, kind, body FROM events ORDER BY run_id, seq;
    INSERT INTO tool_keys (run_id, idem_key, result_seq)
        SELECT run_id, idem_key, max(CASE WHEN kind = 'tool_result' THEN seq END)
        FROM events WHERE idem_key IS NOT NULL GROUP BY run_id, idem_key;
    DROP TABLE events;",
    // 4: shared values (a planner's prompt, a plan's schema) stored once per file, by the
    // SHA-256 of their JSON, and where a row's events hold them (`sqlite/blobs.rs`). Rows
    // written before have no `refs` and read as they are.
    "CREATE TABLE blobs (
        digest TEXT PRIMARY KEY NOT NULL,
        json   TEXT NOT NULL
    ) WITHOUT ROWID;
    ALTER TABLE batches ADD COLUMN refs TEXT;",
    // 5: a run's row is written when the run starts and when its status changes, not at every
    // append: its last event (number, kind, time) is read from its last row of `batches`, so
    // the columns that held it go, and `updated_ms`, renamed `status_ms`, says when the status was set.
    "ALTER TABLE runs DROP COLUMN last_seq;
    ALTER TABLE runs DROP COLUMN last_kind;
    ALTER TABLE runs RENAME COLUMN updated_ms TO status_ms;",
];

/// The schema version this build writes, and the newest it opens.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// `PRAGMA application_id` of a journal file ("IMPR").
const APPLICATION_ID: i32 = 0x494D_5052;

/// Most appends committed in one transaction (a group commit).
const MAX_GROUP: usize = 1024;

/// Idle read connections kept open.
const IDLE_READERS: usize = 4;

/// How long a connection waits for a lock held by another process before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The WAL is truncated back to this size after a checkpoint.
const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// How durable a commit of a [`SqliteJournal`] is once its appends resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous = FULL`: each commit is synced to disk before its appends resolve; an
    /// acknowledged event survives a crash of the process, a crash of the OS and a power loss.
    /// The default.
    #[default]
    Full,
    /// `synchronous = NORMAL` in WAL mode: a commit is written to the WAL (in the OS's cache)
    /// and synced at the next checkpoint; an acknowledged event survives a crash or SIGKILL of
    /// the process, not an OS crash or a power loss, which may drop the commits made since the
    /// last checkpoint (the file stays consistent: whole commits are lost, never part of one).
    Normal,
}

impl Durability {
    /// SQLite's `synchronous` setting for it.
    fn synchronous(self) -> &'static str {
        match self {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        }
    }
}

/// A [`Journal`] in one SQLite file (WAL, group commit, `synchronous = FULL` unless opened
/// with [`Durability::Normal`]). See the [module documentation](super) for the guarantees.
/// Clones share the same writer.
///
/// Dropping the last clone completes every append already queued, then closes the file.
#[derive(Clone)]
pub struct SqliteJournal {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    commands: Option<mpsc::Sender<Command>>,
    writer: Option<JoinHandle<()>>,
    readers: Mutex<Vec<Connection>>,
    /// Shared values the readers have read, by digest.
    values: ValueCache,
    /// Durable commits that wrote events ([`Journal::commits`]), counted by the writer.
    commits: Arc<AtomicU64>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Readers first, so the writer's connection is the last one: closing it checkpoints
        // the WAL into the file and removes it.
        self.readers
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        // Closing the channel lets the writer finish what is queued, then return.
        self.commands.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn io(context: &'static str) -> impl Fn(rusqlite::Error) -> JournalError {
    move |e| JournalError::Io {
        context: context.into(),
        cause: e.to_string(),
    }
}

impl SqliteJournal {
    /// Opens (or creates) the journal at `path`, migrating an older schema, with
    /// [`Durability::Full`].
    ///
    /// Fails without modifying the file if it was written by a newer Impresario
    /// ([`JournalError::NewerSchema`]) or is not a journal ([`JournalError::NotAJournal`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, JournalError> {
        Self::open_with(path, Durability::Full)
    }

    /// [`SqliteJournal::open`] with commits as durable as `durability` says.
    pub fn open_with(path: impl AsRef<Path>, durability: Durability) -> Result<Self, JournalError> {
        let path = path.as_ref().to_path_buf();
        let mut conn = Connection::open(&path).map_err(io("opening the journal"))?;
        let found = check_file(&conn, &path)?;
        configure(&conn, durability)?;
        if found < SCHEMA_VERSION {
            migrate(&mut conn, &path)?;
        }
        let (commands, rx) = mpsc::channel();
        let commits = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            conn,
            path: path.clone(),
            commits: commits.clone(),
            known: KnownValues::default(),
        };
        let writer = std::thread::Builder::new()
            .name("impresario-journal".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| JournalError::Io {
                context: "starting the journal writer thread".into(),
                cause: e.to_string(),
            })?;
        Ok(SqliteJournal {
            shared: Arc::new(Shared {
                path,
                commands: Some(commands),
                writer: Some(writer),
                readers: Mutex::new(Vec::new()),
                values: ValueCache::default(),
                commits,
            }),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    fn send<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> JournalFuture<T> {
        let (reply, rx) = oneshot::channel();
        if let Some(commands) = &self.shared.commands {
            // If the writer is gone the command (and `reply`) is dropped: `rx` reports `Closed`.
            let _ = commands.send(command(reply));
        }
        JournalFuture::waiting(rx)
    }

    fn idle_readers(&self) -> MutexGuard<'_, Vec<Connection>> {
        self.shared
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on a read-only connection from the pool.
    fn with_reader<T>(
        &self,
        context: &'static str,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, JournalError> {
        let pooled = self.idle_readers().pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => {
                let conn = Connection::open_with_flags(
                    &self.shared.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(io("opening a read connection"))?;
                conn.busy_timeout(BUSY_TIMEOUT)
                    .map_err(io("opening a read connection"))?;
                conn
            }
        };
        let out = f(&conn).map_err(io(context));
        let mut idle = self.idle_readers();
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
        out
    }
}

/// Reads the file's schema version and refuses a newer or foreign file. Only reads.
fn check_file(conn: &Connection, path: &Path) -> Result<i64, JournalError> {
    let not_a_journal = |reason: String| JournalError::NotAJournal {
        path: path.to_owned(),
        reason,
    };
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => not_a_journal("it is not an SQLite database".into()),
            _ => io("reading the journal's schema version")(e),
        })?;
    let app_id: i32 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(io("reading the journal's schema version"))?;
    if version == 0 {
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(io("reading the journal's schema version"))?;
        if tables > 0 {
            return Err(not_a_journal(format!(
                "it is an SQLite database with {tables} schema objects but no journal schema version"
            )));
        }
    } else if app_id != APPLICATION_ID {
        return Err(not_a_journal(format!(
            "its application_id is {app_id:#x}, a journal's is {APPLICATION_ID:#x}"
        )));
    }
    if version > SCHEMA_VERSION {
        return Err(JournalError::NewerSchema {
            path: path.to_owned(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(version)
}

/// Durability and space settings of the writing connection.
fn configure(conn: &Connection, durability: Durability) -> Result<(), JournalError> {
    let err = io("configuring the journal");
    conn.busy_timeout(BUSY_TIMEOUT).map_err(&err)?;
    // Takes effect only on a file without tables, i.e. a new journal; a no-op afterwards.
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
        .map_err(&err)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(&err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(JournalError::Io {
            context: "configuring the journal".into(),
            cause: format!("the file system does not support WAL (journal_mode is {mode})"),
        });
    }
    conn.pragma_update(None, "synchronous", durability.synchronous())
        .map_err(&err)?;
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)
        .map_err(&err)?;
    Ok(())
}

/// Brings the schema up to [`SCHEMA_VERSION`] in one transaction.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), JournalError> {
    let err = io("migrating the journal schema");
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(&err)?;
    // Read again under the write lock: another process may have migrated it meanwhile.
    let found: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(&err)?;
    if found > SCHEMA_VERSION {
        return Err(JournalError::NewerSchema {
            path: path.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for sql in &MIGRATIONS[found as usize..] {
        tx.execute_batch(sql).map_err(&err)?;
    }
    tx.pragma_update(None, "application_id", APPLICATION_ID)
        .map_err(&err)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(&err)?;
    tx.commit().map_err(&err)
}

/// The writer thread: owns the only writing connection.
struct Writer {
    conn: Connection,
    path: PathBuf,
    commits: Arc<AtomicU64>,
    /// The shared values the file holds, as far as this writer knows.
    known: KnownValues,
}

impl Writer {
    fn run(mut self, commands: mpsc::Receiver<Command>) {
        let mut next = commands.recv().ok();
        while let Some(command) = next.take() {
            match command {
                Command::Append(first) => {
                    // Group commit: everything queued while the last commit was syncing.
                    let group;
                    (group, next) = gather(*first, MAX_GROUP, || commands.try_recv().ok());
                    self.commit_group(group);
                }
                Command::Retention { policy, reply } => {
                    let _ = reply.send(self.retention(&policy));
                }
                Command::Probe { reply } => {
                    let _ = reply.send(self.probe());
                }
            }
            if next.is_none() {
                next = commands.recv().ok();
            }
        }
    }

    /// Commits a group of appends in one transaction and answers each.
    fn commit_group(&mut self, group: Vec<Append>) {
        let at_ms = now_ms();
        let results = match self.write(&group, at_ms) {
            Ok(results) => results,
            Err(e) if group.len() == 1 => vec![Err(e)],
            // A storage error failed the whole transaction (nothing was written): write the
            // appends one by one, so that each gets its own result.
            Err(_) => group
                .iter()
                .map(|append| {
                    self.write(std::slice::from_ref(append), at_ms)
                        .and_then(|mut one| one.pop().unwrap_or(Err(JournalError::Closed)))
                })
                .collect(),
        };
        for (append, result) in group.into_iter().zip(results) {
            let _ = append.reply.send(result);
        }
    }

    /// Writes `group` in one transaction. The outer error means nothing was written; an inner
    /// one is an append refused (none of its events written) while the others went in.
    fn write(
        &mut self,
        group: &[Append],
        at_ms: i64,
    ) -> Result<Vec<Result<Seq, JournalError>>, JournalError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(io("starting a write transaction"))?;
        if group.iter().any(|append| !append.blobs.is_empty()) {
            self.known
                .check(&tx)
                .map_err(io("checking the journal's stored values"))?;
        }
        let written = group
            .iter()
            .map(|append| {
                insert_all(&tx, append, &mut self.known, at_ms).map_err(io("appending events"))
            })
            .collect::<Result<Vec<_>, _>>()
            .and_then(|results| {
                tx.commit().map_err(io("committing appended events"))?;
                Ok(results)
            });
        // Nothing was written: neither the values this transaction stored.
        let results = written.inspect_err(|_| self.known.forget())?;
        if results.iter().any(Result::is_ok) {
            self.commits.fetch_add(1, Ordering::Relaxed);
        }
        Ok(results)
    }

    /// A durable write that changes nothing: the header's application id, rewritten with its
    /// own value in a committed transaction (a page goes to the WAL and is synced). It fails
    /// when the disk is full or the file cannot be written.
    fn probe(&mut self) -> Result<(), JournalError> {
        let err = io("probing that the journal can be written");
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(&err)?;
        tx.commit().map_err(&err)
    }

    fn retention(&mut self, policy: &RetentionPolicy) -> Result<RetentionReport, JournalError> {
        let err = io("applying retention");
        let bytes_before = self.disk_bytes();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        let ended = tx
            .prepare("SELECT run_id, status, status_ms FROM runs WHERE status != 'active'")
            .and_then(|mut st| {
                st.query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?))
                })?
                .collect::<Result<Vec<(String, String, i64)>, _>>()
            })
            .map_err(&err)?;
        // A status this build does not know is kept: retention never guesses.
        let doomed = policy.select(
            now_ms(),
            ended.into_iter().filter_map(|(id, status, updated)| {
                Some((RunId::new(id), RunStatus::parse(&status)?, updated))
            }),
        );
        let mut report = RetentionReport::default();
        let (cache, mut referenced) = (ValueCache::default(), HashSet::new());
        for run in &doomed {
            report.events_deleted += carry_spend(&tx, run, &cache, &mut referenced)?;
            delete_events(&tx, run).map_err(&err)?;
            report.runs_deleted += tx
                .execute("DELETE FROM runs WHERE run_id = ?1", [run.as_str()])
                .map_err(&err)? as u64;
        }
        if !referenced.is_empty() {
            self.known.forget();
            blobs::delete_unreferenced(&tx, &referenced).map_err(&err)?;
        }
        tx.commit().map_err(&err)?;
        self.compact().map_err(io("compacting the journal"))?;
        report.bytes_before = bytes_before;
        report.bytes_after = self.disk_bytes();
        Ok(report)
    }

    /// Gives free pages back to the file system and folds the WAL into the file.
    fn compact(&mut self) -> rusqlite::Result<()> {
        // Each step frees pages; step to the end so the whole free list goes.
        let mut vacuum = self.conn.prepare("PRAGMA incremental_vacuum")?;
        let mut rows = vacuum.query([])?;
        while rows.next()?.is_some() {}
        drop(rows);
        drop(vacuum);
        // Fails to truncate (busy) only while a reader is mid-query; the next run catches up.
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
    }

    /// Size of the database file plus its WAL.
    fn disk_bytes(&self) -> Option<u64> {
        let mut wal = OsString::from(self.path.as_os_str());
        wal.push("-wal");
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        Some(size(&self.path) + size(Path::new(&wal)))
    }
}

/// The query of [`Journal::runs`] for `filter`, and its arguments.
fn runs_query(filter: &RunFilter) -> (String, Vec<SqlValue>) {
    let mut sql = format!("SELECT {RUNS_COLUMNS} FROM runs r {RUNS_JOIN} WHERE 1 = 1");
    let mut args: Vec<SqlValue> = Vec::new();
    if !filter.statuses.is_empty() {
        let marks = vec!["?"; filter.statuses.len()].join(", ");
        sql.push_str(&format!(" AND r.status IN ({marks})"));
        args.extend(
            filter
                .statuses
                .iter()
                .map(|s| SqlValue::Text(s.as_str().into())),
        );
    }
    if let Some(tenant) = &filter.tenant {
        sql.push_str(" AND r.tenant = ?");
        args.push(SqlValue::Text(tenant.clone()));
    }
    if let Some((at, run)) = &filter.after {
        sql.push_str(" AND (r.started_ms, r.run_id) > (?, ?)");
        args.push(SqlValue::Integer(to_ms(*at)));
        args.push(SqlValue::Text(run.as_str().into()));
    }
    sql.push_str(" ORDER BY r.started_ms, r.run_id LIMIT ?");
    args.push(SqlValue::Integer(
        filter.limit.map_or(-1, |l| i64::try_from(l).unwrap_or(-1)),
    ));
    (sql, args)
}

/// Adds what `run` spent (the charges of its events) to its tenant's carried spend, in the
/// retention's transaction, before the run is deleted: a tenant's spend survives retention.
/// The number of its events; the digests of the stored values it refers to are added to
/// `referenced` (its events read through `cache`).
fn carry_spend(
    tx: &Transaction<'_>,
    run: &RunId,
    cache: &ValueCache,
    referenced: &mut HashSet<JsonDigest>,
) -> Result<u64, JournalError> {
    let err = io("carrying a deleted run's spend over");
    let tenant: String = tx
        .query_row(
            "SELECT tenant FROM runs WHERE run_id = ?1",
            [run.as_str()],
            |r| r.get(0),
        )
        .map_err(&err)?;
    let (rows, values) = read_rows(tx, run, cache).map_err(&err)?;
    let events = decode_all(run, &rows, &values)?;
    referenced.extend(values.keys());
    let spent = events
        .iter()
        .fold(Charge::ZERO, |sum, entry| sum + entry.event.charge());
    if spent.is_zero() {
        return Ok(events.len() as u64);
    }
    let amount = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    tx.execute(
        "INSERT INTO spend_carried (tenant, micro_usd, tokens, model_calls) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (tenant) DO UPDATE SET micro_usd = micro_usd + excluded.micro_usd,
             tokens = tokens + excluded.tokens, model_calls = model_calls + excluded.model_calls",
        params![
            tenant,
            amount(spent.micro_usd),
            amount(spent.tokens),
            amount(spent.model_calls)
        ],
    )
    .map_err(&err)?;
    Ok(events.len() as u64)
}

impl Journal for SqliteJournal {
    /// What the runs retention deleted had spent, per tenant.
    fn carried_spend(&self) -> Result<Vec<(String, Charge)>, JournalError> {
        self.with_reader("reading the spend retention carried over", |conn| {
            conn.prepare_cached("SELECT tenant, micro_usd, tokens, model_calls FROM spend_carried")?
                .query_map([], |r| {
                    let amount =
                        |i: usize| r.get::<_, i64>(i).map(|n| u64::try_from(n).unwrap_or(0));
                    Ok((
                        r.get::<_, String>(0)?,
                        Charge {
                            micro_usd: amount(1)?,
                            tokens: amount(2)?,
                            model_calls: amount(3)?,
                        },
                    ))
                })?
                .collect()
        })
    }

    fn append_batch(&self, run: &RunId, events: Vec<RunEvent>) -> JournalFuture<Seq> {
        // Serialize here, on the caller's thread, so the writer only writes.
        let mut bodies = match serialize_batch(run, events) {
            Ok(bodies) => bodies,
            Err(refused) => return JournalFuture::ready(Err(refused)),
        };
        let blobs = blobs::cut(&mut bodies);
        let run = run.clone();
        self.send(|reply| {
            Command::Append(Box::new(Append {
                run,
                events: bodies,
                blobs,
                reply,
            }))
        })
    }

    fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    fn read(&self, run: &RunId) -> Result<Vec<JournalEntry>, JournalError> {
        let (rows, values) = self.with_reader("reading a run", |conn| {
            read_rows(conn, run, &self.shared.values)
        })?;
        decode_all(run, &rows, &values)
    }

    /// Reads only the rows from the one holding event `after + 1` (one lookup in the batches'
    /// key), and decodes only the events after `after`.
    fn read_after(&self, run: &RunId, after: Seq) -> Result<Vec<JournalEntry>, JournalError> {
        let (rows, values) = self.with_reader("reading a run's latest events", |conn| {
            let rows = raw_batches_after(conn, run, after)?;
            let values = values_of(conn, &rows, &self.shared.values)?;
            Ok((rows, values))
        })?;
        decode_after(run, after, &rows, &values)
    }

    fn runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, JournalError> {
        let (sql, args) = runs_query(filter);
        let rows = self.with_reader("listing runs", |conn| {
            conn.prepare_cached(&sql)?
                .query_map(params_from_iter(args), stored_run)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter().map(StoredRun::summary).collect()
    }

    fn probe_write(&self) -> JournalFuture<()> {
        self.send(|reply| Command::Probe { reply })
    }

    fn apply_retention(&self, policy: &RetentionPolicy) -> JournalFuture<RetentionReport> {
        let policy = policy.clone();
        self.send(|reply| Command::Retention { policy, reply })
    }
}
