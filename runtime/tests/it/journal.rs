//! The run journal: the shared suite (`journal_suite.rs`, also run against PostgreSQL by
//! impresario-pg) against the in-memory and the SQLite journal (a real file in a temporary
//! directory), then what only a file can show: reopening, a SIGKILLed writer, a newer
//! schema, corrupt rows, compaction.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use impresario_runtime::journal::{
    Durability, Journal, JournalEntry, JournalError, MemoryJournal, RetentionPolicy, RunEvent,
    RunFilter, SqliteJournal, ToolOutcome, EVENT_VERSION, SCHEMA_VERSION,
};
use impresario_runtime::RunId;
use serde_json::json;

use crate::journal_suite::{finished, halted, intent, result, step, submitted};

/// A directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "impresario-journal-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub(crate) fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh in-memory journal.
async fn open_memory() -> (Arc<dyn Journal>, ()) {
    (Arc::new(MemoryJournal::new()), ())
}

/// A fresh SQLite journal, in a temporary folder that lives as long as the test.
async fn open_sqlite() -> (Arc<dyn Journal>, TempDir) {
    let dir = TempDir::new();
    let journal = SqliteJournal::open(dir.file("journal.db")).unwrap();
    (Arc::new(journal), dir)
}

/// The shared journal suite (`journal_suite.rs`) against the in-memory journal.
mod memory {
    crate::journal_suite::conformance!(super::open_memory);
}

/// A fresh SQLite journal with `synchronous = NORMAL` ([`Durability::Normal`]).
async fn open_sqlite_normal() -> (Arc<dyn Journal>, TempDir) {
    let dir = TempDir::new();
    let journal = SqliteJournal::open_with(dir.file("journal.db"), Durability::Normal).unwrap();
    (Arc::new(journal), dir)
}

/// The shared journal suite (`journal_suite.rs`) against SQLite.
mod sqlite {
    crate::journal_suite::conformance!(super::open_sqlite);
}

/// The same suite against SQLite with [`Durability::Normal`]: only durability differs.
mod sqlite_normal {
    crate::journal_suite::conformance!(super::open_sqlite_normal);
}

// ---- Memory only -------------------------------------------------------------------------------

#[tokio::test]
async fn the_memory_journal_keeps_only_its_cap_of_finished_runs() {
    let journal = MemoryJournal::with_max_finished_runs(3);
    let run = |name: String| RunId::new(name);
    journal
        .append(&run("active".into()), submitted("t"))
        .await
        .unwrap();
    let halted_run = run("halted".into());
    journal
        .append_batch(&halted_run, vec![submitted("t"), halted()])
        .await
        .unwrap();
    for i in 0..6 {
        journal
            .append_batch(&run(format!("done-{i}")), vec![submitted("t"), finished()])
            .await
            .unwrap();
    }
    let names: BTreeSet<String> = journal
        .runs(&RunFilter::all())
        .unwrap()
        .into_iter()
        .map(|s| s.run.to_string())
        .collect();
    // The three that finished last; active and halted runs are never deleted by the cap.
    let kept = ["active", "done-3", "done-4", "done-5", "halted"];
    assert_eq!(names, kept.map(String::from).into());
    assert!(journal.read(&run("done-0".into())).unwrap().is_empty());
}

#[tokio::test]
async fn the_memory_journal_is_bounded_by_default() {
    let journal = MemoryJournal::new();
    let cap = impresario_runtime::journal::DEFAULT_MAX_FINISHED_RUNS;
    for i in 0..cap + 10 {
        let run = RunId::new(format!("r{i:05}"));
        journal
            .append_batch(&run, vec![submitted("t"), finished()])
            .await
            .unwrap();
    }
    let runs = journal.runs(&RunFilter::all()).unwrap();
    assert_eq!(runs.len(), cap);
    assert_eq!(runs[0].run, RunId::new("r00010"), "the oldest ten went");
}

// ---- SQLite only ------------------------------------------------------------------------------

#[tokio::test]
async fn events_survive_close_and_reopen() {
    let dir = TempDir::new();
    let path = dir.file("journal.db");
    let run = RunId::new("durable");
    let journal = SqliteJournal::open(&path).unwrap();
    journal.append(&run, submitted("t")).await.unwrap();
    for i in 1..=50 {
        journal.append(&run, step(i)).await.unwrap();
    }
    // Queued but never awaited: dropping the journal still completes them.
    let pending: Vec<_> = (51..=60).map(|i| journal.append(&run, step(i))).collect();
    drop(pending);
    assert!(journal.read(&run).unwrap().len() >= 51); // leaves a pooled reader open
    drop(journal);
    // A clean close folds the WAL into the file.
    assert!(!dir.file("journal.db-wal").exists());

    let journal = SqliteJournal::open(&path).unwrap();
    let events = journal.read(&run).unwrap();
    assert_eq!(events.len(), 61);
    assert_eq!(events[60].event, step(60));
    assert_eq!(journal.append(&run, step(61)).await.unwrap(), 62);
}

/// Child side of the crash tests: appends on 4 runs as fast as it can and prints
/// `ACK <run> <seq>` once each append has resolved, until it is killed. `normal` in
/// `IMPRESARIO_JOURNAL_CRASH_SYNC` opens the journal with [`Durability::Normal`].
#[test]
#[ignore = "the child process of appends_acknowledged_before_sigkill_survive"]
fn crash_child() {
    let Ok(path) = std::env::var("IMPRESARIO_JOURNAL_CRASH_CHILD") else {
        return; // only meaningful when started by `appends_acknowledged_before_sigkill_survive`
    };
    let durability = match std::env::var("IMPRESARIO_JOURNAL_CRASH_SYNC").as_deref() {
        Ok("normal") => Durability::Normal,
        _ => Durability::Full,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let journal = Arc::new(SqliteJournal::open_with(&path, durability).unwrap());
        let tasks: Vec<_> = (0..4)
            .map(|t| {
                let journal = journal.clone();
                tokio::spawn(async move {
                    let run = RunId::new(format!("crash-{t}"));
                    journal.append(&run, submitted("t")).await.unwrap();
                    for i in 1.. {
                        let seq = journal.append(&run, step(i)).await.unwrap();
                        println!("ACK {t} {seq}");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
}

#[test]
fn appends_acknowledged_before_sigkill_survive() {
    acknowledged_appends_survive_sigkill("full");
}

/// `synchronous = NORMAL` does not sync each commit, yet a commit is in the WAL file (the OS's
/// cache) when its append resolves: killing the process loses none of them.
#[test]
fn appends_acknowledged_before_sigkill_survive_with_normal_sync() {
    acknowledged_appends_survive_sigkill("normal");
}

/// Kills a child appending with `sync` ([`crash_child`]) mid-stream; every append it
/// acknowledged is read back.
fn acknowledged_appends_survive_sigkill(sync: &str) {
    use std::process::{Command, Stdio};
    let dir = TempDir::new();
    let path = dir.file("journal.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "journal::crash_child", // its path in the `it` binary
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("IMPRESARIO_JOURNAL_CRASH_CHILD", &path)
        .env("IMPRESARIO_JOURNAL_CRASH_SYNC", sync)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = [0u64; 4];
    let mut count = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let record = |line: &str, acked: &mut [u64; 4]| {
        let mut parts = line.strip_prefix("ACK ")?.split(' ');
        let t: usize = parts.next()?.parse().ok()?;
        let seq: u64 = parts.next()?.parse().ok()?;
        acked[t] = acked[t].max(seq);
        Some(())
    };
    // Kill it mid-stream, after enough acknowledgements that batches are in flight.
    while count < 2_000 && Instant::now() < deadline {
        let line = lines.next().expect("the child exited early").unwrap();
        if record(&line, &mut acked).is_some() {
            count += 1;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // What it printed before dying.
    for line in lines.map_while(Result::ok) {
        record(&line, &mut acked);
    }
    assert!(
        count >= 2_000,
        "the child acknowledged only {count} appends in 60 s"
    );

    let journal = SqliteJournal::open(&path).unwrap();
    for (t, &last_acked) in acked.iter().enumerate() {
        let run = RunId::new(format!("crash-{t}"));
        // `read` validates: every event decodes and seqs are gap-free from 1.
        let events = journal.read(&run).unwrap();
        assert!(
            events.len() as u64 >= last_acked,
            "{run}: seq {last_acked} was acknowledged but only {} events survived",
            events.len()
        );
    }
}

/// The SQLite writer checks a batch's events before writing any: each against the stored run
/// and the batch's own events before it.
#[tokio::test]
async fn a_batch_is_checked_against_its_own_earlier_events() {
    let (journal, _dir) = open_sqlite().await;
    let run = RunId::new("checked");
    let ok = |n| result("k", ToolOutcome::Ok(json!(n)));
    let twice = vec![submitted("t"), intent("k"), ok(1), ok(2)];
    let refused = journal.append_batch(&run, twice).await.unwrap_err();
    let JournalError::Rejected { reason, .. } = &refused else {
        panic!("expected a refusal, got {refused:?}");
    };
    assert!(reason.contains("event 4 of a batch of 4"), "{reason}");
    assert!(reason.contains("already journaled (event 3)"), "{reason}");
    assert!(journal.read(&run).unwrap().is_empty(), "nothing written");
    assert!(journal.runs(&RunFilter::all()).unwrap().is_empty());

    let once = vec![submitted("t"), intent("k"), ok(1)];
    assert_eq!(journal.append_batch(&run, once).await.unwrap(), 3);
    // Against the stored run: a second result, then a result with no intent.
    let again = journal.append_batch(&run, vec![step(1), ok(2)]).await;
    assert!(
        matches!(again, Err(JournalError::Rejected { reason, .. }) if reason.contains("(event 3)"))
    );
    let orphan = result("other", ToolOutcome::Ok(json!(0)));
    let none = journal.append_batch(&run, vec![step(1), orphan]).await;
    assert!(
        matches!(none, Err(JournalError::Rejected { reason, .. }) if reason.contains("no `tool_call_intent`"))
    );
    assert_eq!(
        journal.read(&run).unwrap().len(),
        3,
        "the refused batches left it"
    );
}

/// A new journal file `journal.db` in `dir`, then `sql` run on it on a connection of the
/// test's own (the journal closed meanwhile).
fn journal_file_with(dir: &TempDir, sql: &str) -> PathBuf {
    let path = dir.file("journal.db");
    drop(SqliteJournal::open(&path).unwrap());
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(sql)
        .unwrap();
    path
}

#[tokio::test]
async fn a_storage_error_fails_only_its_own_append() {
    let dir = TempDir::new();
    // Make the database itself refuse some inserts, as a full disk or I/O error would.
    let path = journal_file_with(
        &dir,
        "CREATE TRIGGER boom BEFORE INSERT ON batches WHEN NEW.bodies LIKE '%boom%'
         BEGIN SELECT RAISE(ABORT, 'boom'); END;",
    );
    let journal = SqliteJournal::open(&path).unwrap();
    let run = RunId::new("r");
    journal.append(&run, submitted("t")).await.unwrap();
    // Queued together, so that they share a batch.
    let futures: Vec<_> = (1..=40)
        .map(|i| {
            let kind = if i % 10 == 0 { "boom" } else { "llm" };
            let event = RunEvent::StepStarted {
                step: i,
                kind: kind.into(),
                detail: json!(null),
            };
            journal.append(&run, event)
        })
        .collect();
    let mut stored = Vec::new();
    for (i, future) in (1..=40).zip(futures) {
        match future.await {
            Ok(seq) => stored.push((seq, i)),
            Err(JournalError::Io { cause, .. }) if i % 10 == 0 => {
                assert!(cause.contains("boom"), "{cause}")
            }
            other => panic!("append {i}: {other:?}"),
        }
    }
    assert_eq!(stored.len(), 36);
    let events = journal.read(&run).unwrap();
    assert_eq!(events.len(), 37);
    for (seq, i) in stored {
        assert!(
            matches!(events[seq as usize - 1].event, RunEvent::StepStarted { step, .. } if step == i)
        );
    }
}

fn set_user_version(path: &Path, version: i64) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.pragma_update(None, "user_version", version).unwrap();
}

#[tokio::test]
async fn a_newer_schema_is_refused_and_the_file_left_untouched() {
    let dir = TempDir::new();
    let path = dir.file("journal.db");
    let journal = SqliteJournal::open(&path).unwrap();
    journal
        .append(&RunId::new("r"), submitted("t"))
        .await
        .unwrap();
    drop(journal);
    set_user_version(&path, SCHEMA_VERSION + 1);
    let listing = || -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<_> = std::fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
            .collect();
        files.sort();
        files
    };
    let before = listing();

    let err = SqliteJournal::open(&path)
        .err()
        .expect("a newer schema opened");
    assert_eq!(
        err,
        JournalError::NewerSchema {
            path: path.clone(),
            found: SCHEMA_VERSION + 1,
            supported: SCHEMA_VERSION,
        }
    );
    assert!(
        err.to_string().contains("open it with a newer Impresario"),
        "{err}"
    );
    assert!(before == listing(), "opening changed the directory's files");
}

#[test]
fn a_file_that_is_not_a_journal_is_refused_untouched() {
    let dir = TempDir::new();
    let text = dir.file("notes.txt");
    std::fs::write(&text, "x".repeat(4096)).unwrap();
    let err = SqliteJournal::open(&text).err().unwrap();
    assert!(
        matches!(&err, JournalError::NotAJournal { reason, .. } if reason.contains("not an SQLite database")),
        "{err}"
    );
    assert_eq!(std::fs::read(&text).unwrap(), "x".repeat(4096).as_bytes());

    let other = dir.file("other.db");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE t (x); PRAGMA user_version = 1;")
        .unwrap();
    let bytes = std::fs::read(&other).unwrap();
    let err = SqliteJournal::open(&other).err().unwrap();
    assert!(
        matches!(&err, JournalError::NotAJournal { reason, .. } if reason.contains("application_id")),
        "{err}"
    );
    assert_eq!(std::fs::read(&other).unwrap(), bytes);
}

/// The runs and the spend carried over of a journal file of schema version 2 or 3, as
/// shipped: the run's row holds its last event.
pub(crate) const RUNS_2: &str =
    "CREATE TABLE runs (run_id TEXT PRIMARY KEY NOT NULL, tenant TEXT NOT NULL,
        status TEXT NOT NULL, last_seq INTEGER NOT NULL, last_kind TEXT NOT NULL,
        started_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL) WITHOUT ROWID;
    CREATE INDEX runs_by_start ON runs (started_ms, run_id);
    CREATE TABLE spend_carried (tenant TEXT PRIMARY KEY NOT NULL, micro_usd INTEGER NOT NULL,
        tokens INTEGER NOT NULL, model_calls INTEGER NOT NULL) WITHOUT ROWID;
    PRAGMA application_id = 1229803602;";

/// The rest of a journal file as schema version 2 wrote it (one row per event), as shipped.
const SCHEMA_2: &str =
    "CREATE TABLE events (run_id TEXT NOT NULL, seq INTEGER NOT NULL, at_ms INTEGER NOT NULL,
        version INTEGER NOT NULL, kind TEXT NOT NULL, idem_key TEXT, body TEXT NOT NULL,
        PRIMARY KEY (run_id, seq));
    CREATE INDEX events_by_key ON events (run_id, idem_key) WHERE idem_key IS NOT NULL;
    CREATE UNIQUE INDEX one_result_per_key ON events (run_id, idem_key)
        WHERE kind = 'tool_result';
    PRAGMA user_version = 2;";

/// A file of schema version 2 (a row per event) is migrated on open: every event reads back
/// as it was written (its number, time and version), and its tool calls' keys still count: a
/// second result for a key that has one is refused, a result for an open intent is taken.
#[tokio::test]
async fn a_file_of_schema_2_is_migrated_with_every_event_and_key() {
    let dir = TempDir::new();
    let path = dir.file("journal.db");
    let events = [
        submitted("t"),
        intent("done"),
        result("done", ToolOutcome::Ok(json!(1))),
        intent("open"),
        step(2),
    ];
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(RUNS_2).unwrap();
    conn.execute_batch(SCHEMA_2).unwrap();
    for (seq, event) in (1..).zip(&events) {
        let version = if seq == 5 { 1 } else { EVENT_VERSION };
        conn.execute(
            "INSERT INTO events VALUES ('old', ?1, ?2, ?3, ?4, ?5, ?6)",
            rusqlite::params![
                seq,
                1_700_000_000_000_i64 + seq,
                version,
                event.kind(),
                event.idempotency_key(),
                serde_json::to_string(event).unwrap()
            ],
        )
        .unwrap();
    }
    conn.execute(
        "INSERT INTO runs VALUES ('old', 't', 'active', 5, 'step_started', 1700000000001, 1700000000005)",
        [],
    )
    .unwrap();
    drop(conn);

    let journal = SqliteJournal::open(&path).unwrap();
    let run = RunId::new("old");
    let read = journal.read(&run).unwrap();
    assert_eq!(
        read.iter().map(|e| &e.event).collect::<Vec<_>>(),
        events.iter().collect::<Vec<_>>()
    );
    let numbers: Vec<_> = read.iter().map(|e| (e.seq, e.version)).collect();
    let v = EVENT_VERSION;
    assert_eq!(numbers, [(1, v), (2, v), (3, v), (4, v), (5, 1)]);
    let millis = |e: &impresario_runtime::journal::JournalEntry| {
        e.at.duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    };
    assert_eq!(millis(&read[2]), 1_700_000_000_003);

    let again = journal
        .append(&run, result("done", ToolOutcome::Ok(json!(2))))
        .await;
    assert!(
        matches!(&again, Err(JournalError::Rejected { reason, .. }) if reason.contains("(event 3)")),
        "{again:?}"
    );
    let open = journal
        .append(&run, result("open", ToolOutcome::Ok(json!(3))))
        .await;
    assert_eq!(open.unwrap(), 6);
    drop(journal);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let old_table: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'events'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(old_table, 0, "the rows moved, the old table went");
}

/// The rest of a journal file as schema version 3 wrote it (a row per append), as shipped.
pub(crate) const SCHEMA_3: &str =
    "CREATE TABLE batches (run_id TEXT NOT NULL, first_seq INTEGER NOT NULL,
        at_ms INTEGER NOT NULL, version INTEGER NOT NULL, kinds TEXT NOT NULL,
        bodies TEXT NOT NULL, PRIMARY KEY (run_id, first_seq));
    CREATE TABLE tool_keys (run_id TEXT NOT NULL, idem_key TEXT NOT NULL, result_seq INTEGER,
        PRIMARY KEY (run_id, idem_key)) WITHOUT ROWID;
    PRAGMA user_version = 3;";

/// A file of schema version 3 (the run's row holding its last event) is migrated on open: the
/// runs list shows each run's last event from its events (number, kind, time), ended runs
/// keep their end's time for retention, and appends go on from the right number.
#[tokio::test]
async fn a_file_of_schema_3_is_migrated_with_each_runs_last_event() {
    let dir = TempDir::new();
    let path = dir.file("journal.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(RUNS_2).unwrap();
    conn.execute_batch(SCHEMA_3).unwrap();
    let row = |run: &str, first_seq: i64, at_ms: i64, events: &[RunEvent]| {
        let kinds: Vec<_> = events.iter().map(|e| e.kind()).collect();
        let bodies: Vec<_> = events
            .iter()
            .map(|e| serde_json::to_string(e).unwrap())
            .collect();
        conn.execute(
            "INSERT INTO batches VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            rusqlite::params![
                run,
                first_seq,
                at_ms,
                EVENT_VERSION,
                kinds.join("\n"),
                bodies.join("\n")
            ],
        )
        .unwrap();
    };
    row("going", 1, 1_700_000_000_001, &[submitted("t")]);
    row("going", 2, 1_700_000_000_002, &[step(1), step(2)]);
    row("ended", 1, 1_700_000_000_003, &[submitted("u")]);
    row("ended", 2, 1_700_000_000_009, &[step(1), finished()]);
    conn.execute_batch(
        "INSERT INTO runs VALUES ('going', 't', 'active', 3, 'step_started', 1700000000001, 1700000000002);
         INSERT INTO runs VALUES ('ended', 'u', 'finished', 3, 'run_finished', 1700000000003, 1700000000009);",
    )
    .unwrap();
    drop(conn);

    let journal = SqliteJournal::open(&path).unwrap();
    let runs = journal.runs(&RunFilter::all()).unwrap();
    let seen: Vec<_> = runs
        .iter()
        .map(|s| {
            let at = |t: std::time::SystemTime| {
                t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
            };
            (
                s.run.as_str(),
                s.last_seq,
                s.last_event.as_str(),
                at(s.started_at),
                at(s.updated_at),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                "going",
                3,
                "step_started",
                1_700_000_000_001,
                1_700_000_000_002
            ),
            (
                "ended",
                3,
                "run_finished",
                1_700_000_000_003,
                1_700_000_000_009
            ),
        ]
    );
    let going = RunId::new("going");
    assert_eq!(journal.append(&going, step(3)).await.unwrap(), 4);
    assert_eq!(journal.read(&going).unwrap().len(), 4);
    let report = journal
        .apply_retention(&RetentionPolicy {
            max_finished_runs: Some(0),
            ..RetentionPolicy::default()
        })
        .await
        .unwrap();
    assert_eq!(report.runs_deleted, 1, "the ended run, not the active one");
}

/// A run's row is written when the run starts and when its status changes, not at every
/// append: 5 appends of a run that starts, goes on and finishes write it twice. Counted by
/// triggers on `runs`, on a connection of the test's own, before the journal opens the file.
#[tokio::test]
async fn a_runs_row_is_written_only_when_its_status_changes() {
    let dir = TempDir::new();
    let path = journal_file_with(
        &dir,
        "CREATE TABLE run_writes (status TEXT);
         CREATE TRIGGER run_inserted AFTER INSERT ON runs
             BEGIN INSERT INTO run_writes VALUES (NEW.status); END;
         CREATE TRIGGER run_updated AFTER UPDATE ON runs
             BEGIN INSERT INTO run_writes VALUES (NEW.status); END;",
    );
    let journal = SqliteJournal::open(&path).unwrap();
    let run = RunId::new("r");
    journal.append(&run, submitted("t")).await.unwrap();
    for s in 1..=3 {
        journal.append(&run, step(s)).await.unwrap();
    }
    journal.append(&run, finished()).await.unwrap();
    let summary = &journal.runs(&RunFilter::all()).unwrap()[0];
    assert_eq!(
        (summary.last_seq, summary.last_event.as_str()),
        (5, "run_finished")
    );
    drop(journal);
    let writes: Vec<String> = rusqlite::Connection::open(&path)
        .unwrap()
        .prepare("SELECT status FROM run_writes ORDER BY rowid")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(writes, ["active", "finished"]);
}

#[tokio::test]
async fn corrupt_rows_are_errors_naming_run_and_seq() {
    let dir = TempDir::new();
    let path = dir.file("journal.db");
    let journal = SqliteJournal::open(&path).unwrap();
    for name in ["json", "type", "version", "gap", "split"] {
        let run = RunId::new(name);
        journal.append(&run, submitted("t")).await.unwrap();
        journal.append(&run, step(1)).await.unwrap();
        journal.append(&run, step(2)).await.unwrap();
    }
    // Damage the file behind the journal's back, on a connection of our own. Each append
    // above is a row of its own (`first_seq` is its event's number).
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "UPDATE batches SET bodies = '{\"type\": \"step_started\", \"step\": ' WHERE run_id = 'json' AND first_seq = 2;
         UPDATE batches SET bodies = '{\"type\": \"teleport\"}', kinds = 'teleport' WHERE run_id = 'type' AND first_seq = 3;
         UPDATE batches SET version = 99 WHERE run_id = 'version' AND first_seq = 2;
         DELETE FROM batches WHERE run_id = 'gap' AND first_seq = 2;
         UPDATE batches SET kinds = kinds || char(10) || 'step_started' WHERE run_id = 'split' AND first_seq = 3;",
    )
    .unwrap();

    let corrupt = |run: &str| match journal.read(&RunId::new(run)) {
        Err(JournalError::Corrupt {
            run: r,
            seq,
            reason,
        }) => {
            assert_eq!(r.as_str(), run);
            (seq, reason)
        }
        other => panic!("{run}: expected Corrupt, got {other:?}"),
    };
    let (seq, reason) = corrupt("json");
    assert_eq!(seq, 2);
    assert!(reason.contains("does not decode"), "{reason}");
    let (seq, reason) = corrupt("type");
    assert_eq!(seq, 3);
    assert!(reason.contains("unknown variant `teleport`"), "{reason}");
    let (seq, reason) = corrupt("gap");
    assert_eq!(seq, 2);
    assert!(reason.contains("event 2 is missing"), "{reason}");
    let (seq, reason) = corrupt("split");
    assert_eq!(seq, 3);
    assert!(reason.contains("holds 2 kinds but 1 bodies"), "{reason}");
    let err = journal.read(&RunId::new("version")).unwrap_err();
    assert_eq!(
        err,
        JournalError::NewerEvent {
            run: RunId::new("version"),
            seq: 2,
            found: 99,
            supported: EVENT_VERSION,
        }
    );
    assert!(err.to_string().contains("run version, event 2"), "{err}");
    // The rest of the journal is unaffected.
    assert_eq!(journal.runs(&RunFilter::all()).unwrap().len(), 5);
}

/// SQLite's `read_after` reads the rows from the one holding event `after + 1` only, and
/// decodes only the events after `after`: a damaged event before them does not stop it (a
/// read of the whole run, filtered, would fail on it), one among them is an error naming it,
/// and so is a missing one.
#[tokio::test]
async fn sqlite_read_after_reads_and_checks_only_the_events_it_returns() {
    let dir = TempDir::new();
    let path = dir.file("journal.db");
    let journal = SqliteJournal::open(&path).unwrap();
    let run = RunId::new("tail");
    journal.append(&run, submitted("t")).await.unwrap();
    let batch = vec![step(1), step(2), step(3)];
    journal.append_batch(&run, batch).await.unwrap(); // events 2..=4, one row
    journal
        .append_batch(&run, vec![step(4), step(5)])
        .await
        .unwrap(); // 5..=6
                   // Event 7. Then damage event 1 and event 2, the first line of the row of events 2..=4.
    journal.append(&run, step(6)).await.unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "UPDATE batches SET bodies = 'damaged' WHERE run_id = 'tail' AND first_seq = 1;
         UPDATE batches SET bodies = 'damaged' || substr(bodies, instr(bodies, char(10)))
             WHERE run_id = 'tail' AND first_seq = 2;",
    )
    .unwrap();
    let corrupt_at = |result: Result<Vec<JournalEntry>, JournalError>| match result {
        Err(JournalError::Corrupt { seq, reason, .. }) => (seq, reason),
        other => panic!("expected Corrupt, got {other:?}"),
    };
    assert_eq!(corrupt_at(journal.read(&run)).0, 1);
    let tail = journal.read_after(&run, 2).unwrap();
    let events: Vec<RunEvent> = tail.into_iter().map(|e| e.event).collect();
    assert_eq!(events, [step(2), step(3), step(4), step(5), step(6)]);
    let (seq, reason) = corrupt_at(journal.read_after(&run, 1));
    assert_eq!(seq, 2);
    assert!(reason.contains("does not decode"), "{reason}");
    // A missing row after the cut one is named, as `read` names it.
    conn.execute(
        "DELETE FROM batches WHERE run_id = 'tail' AND first_seq = 5",
        [],
    )
    .unwrap();
    let (seq, reason) = corrupt_at(journal.read_after(&run, 3));
    assert_eq!(seq, 5);
    assert!(reason.contains("event 5 is missing"), "{reason}");
}

#[tokio::test]
async fn retention_shrinks_the_file() {
    let dir = TempDir::new();
    let path = dir.file("journal.db");
    let journal = SqliteJournal::open(&path).unwrap();
    let payload = "x".repeat(20_000);
    for i in 0..60 {
        let run = RunId::new(format!("r{i:02}"));
        journal.append(&run, submitted("t")).await.unwrap();
        for s in 0..5 {
            let detail = RunEvent::StepFinished {
                step: s,
                outcome: json!({ "text": payload }),
            };
            journal.append(&run, detail).await.unwrap();
        }
        if i >= 2 {
            journal.append(&run, finished()).await.unwrap();
        }
    }
    let disk = || {
        let wal = dir.file("journal.db-wal");
        std::fs::metadata(&path).unwrap().len() + std::fs::metadata(wal).map_or(0, |m| m.len())
    };
    let before = disk();
    assert!(before > 5_000_000, "only {before} bytes written");

    let report = journal
        .apply_retention(&RetentionPolicy {
            max_finished_runs: Some(3),
            ..RetentionPolicy::default()
        })
        .await
        .unwrap();
    let after = disk();
    assert_eq!(report.runs_deleted, 55);
    assert_eq!(report.bytes_after, Some(after));
    assert!(
        after * 5 < before,
        "the file did not shrink enough: {before} -> {after} bytes"
    );
    let left: Vec<String> = journal
        .runs(&RunFilter::all())
        .unwrap()
        .into_iter()
        .map(|s| s.run.to_string())
        .collect();
    assert_eq!(left, ["r00", "r01", "r57", "r58", "r59"]);
    assert_eq!(journal.read(&RunId::new("r01")).unwrap().len(), 6);
}
