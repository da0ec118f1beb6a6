//! The PostgreSQL journal: the shared journal suite (`runtime/tests/it/journal_suite.rs`, the
//! same bodies the SQLite journal passes), then what only a server can show: reopening, a
//! connection that fails without leaking the password, foreign and newer databases refused
//! untouched, a server restart in the middle of runs, a write probe on a read-only database.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use impresario_pg::test_cluster::{shared, TestCluster};
use impresario_pg::{PgError, PgJournal};
use impresario_runtime::journal::{Journal, JournalEntry, RunEvent, RunFilter, RunStatus};
use impresario_runtime::RunId;

use crate::journal_suite::{finished, step, submitted};
use crate::logs;

/// A new, empty database on the shared server, named after the test process and a counter.
fn fresh_database(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "{prefix}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    shared().create_database(&name)
}

/// Connects off the async threads: `connect` blocks until the schema is ready.
async fn connect(url: String) -> Result<PgJournal, PgError> {
    tokio::task::spawn_blocking(move || PgJournal::connect(&url))
        .await
        .unwrap()
}

/// A fresh PostgreSQL journal in a database of its own.
async fn open_postgres() -> (Arc<dyn Journal>, ()) {
    let journal = connect(fresh_database("suite")).await.unwrap();
    (Arc::new(journal), ())
}

/// The shared journal suite against PostgreSQL.
mod postgres {
    crate::journal_suite::conformance!(super::open_postgres);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_survive_close_and_reopen_and_appends_go_on() {
    let url = fresh_database("reopen");
    let run = RunId::new("durable");
    let journal = connect(url.clone()).await.unwrap();
    journal.append(&run, submitted("t")).await.unwrap();
    for i in 1..=20 {
        journal.append(&run, step(i)).await.unwrap();
    }
    // Queued but never awaited: dropping the journal still completes them.
    let pending: Vec<_> = (21..=30).map(|i| journal.append(&run, step(i))).collect();
    drop(pending);
    drop(journal);

    let journal = connect(url).await.unwrap();
    let events = journal.read(&run).unwrap();
    assert_eq!(events.len(), 31);
    assert_eq!(events[30].event, step(30));
    assert_eq!(journal.append(&run, step(31)).await.unwrap(), 32);
    assert_eq!(
        journal.commits(),
        1,
        "one append after reopening, one commit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_that_cannot_connect_names_host_and_database_never_the_password() {
    logs::capture();
    let pg = shared();
    let wrong = format!(
        "postgres://postgres:{}-x@127.0.0.1:{}/nowhere",
        pg.password(),
        pg.port()
    );
    let err = connect(wrong)
        .await
        .err()
        .expect("a wrong password connected");
    let text = err.to_string();
    assert!(matches!(err, PgError::Connect { .. }), "{err:?}");
    assert!(text.contains(&format!("127.0.0.1:{}", pg.port())), "{text}");
    assert!(text.contains("database \"nowhere\""), "{text}");
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(!text.contains(pg.password()), "the password leaked: {text}");

    // Nothing listens on this port: refused, named, no password.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let closed = format!("postgres://app:hunter2secret@127.0.0.1:{port}/runs");
    let text = connect(closed).await.err().unwrap().to_string();
    assert!(
        text.contains(&format!("127.0.0.1:{port}")) && text.contains("\"runs\""),
        "{text}"
    );
    assert!(!text.contains("hunter2secret"), "{text}");
    let logged = logs::text();
    assert!(!logged.contains(pg.password()) && !logged.contains("hunter2secret"));
}

/// Every table of the database at `url` with its rows, as text: what "untouched" compares.
fn dump(url: &str) -> String {
    let tables = shared()
        .psql(
            url,
            "SELECT string_agg(table_name::text, ' ' ORDER BY table_name)
             FROM information_schema.tables WHERE table_schema = 'public'",
        )
        .unwrap();
    let mut out = tables.clone();
    for table in tables.split_whitespace() {
        let rows = shared()
            .psql(url, &format!("SELECT t::text FROM {table} t ORDER BY 1"))
            .unwrap();
        out.push_str(&format!("\n[{table}]\n{rows}"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_database_is_refused_untouched() {
    let url = fresh_database("foreign");
    shared()
        .psql(&url, "CREATE TABLE orders (id int, total numeric); INSERT INTO orders VALUES (1, 9.5), (2, 3)")
        .unwrap();
    let before = dump(&url);
    let err = connect(url.clone())
        .await
        .err()
        .expect("a foreign database opened");
    assert!(
        matches!(&err, PgError::Foreign { reason, .. } if reason.contains("orders") && reason.contains("no impresario_schema")),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("point journal.url at an empty database"),
        "{err}"
    );
    assert_eq!(dump(&url), before);

    // A table of our name, of another shape.
    let url = fresh_database("foreign_shape");
    shared()
        .psql(&url, "CREATE TABLE impresario_schema (version text); INSERT INTO impresario_schema VALUES ('x')")
        .unwrap();
    let before = dump(&url);
    let err = connect(url.clone()).await.err().unwrap();
    assert!(
        matches!(&err, PgError::Foreign { reason, .. } if reason.contains("columns")),
        "{err}"
    );
    assert_eq!(dump(&url), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_refused_untouched() {
    let url = fresh_database("newer");
    let journal = connect(url.clone()).await.unwrap();
    let run = RunId::new("r");
    journal.append(&run, submitted("t")).await.unwrap();
    journal.append(&run, step(1)).await.unwrap();
    drop(journal);
    let newer = impresario_pg::schema::SCHEMA_VERSION + 1;
    shared()
        .psql(
            &url,
            &format!("UPDATE impresario_schema SET version = {newer}"),
        )
        .unwrap();
    let before = dump(&url);
    assert!(before.contains("journal_events"), "{before}");

    let err = connect(url.clone())
        .await
        .err()
        .expect("a newer schema opened");
    assert!(
        matches!(err, PgError::NewerSchema { found, supported, .. }
            if found == newer && supported == impresario_pg::schema::SCHEMA_VERSION),
        "{err:?}"
    );
    assert!(err.to_string().contains("use a newer Impresario"), "{err}");
    assert_eq!(dump(&url), before);
}

/// What a run of `steps` steps holds once finished, in order.
fn expected_run(steps: u32) -> Vec<RunEvent> {
    let mut events = vec![submitted("t")];
    events.extend((1..=steps).map(step));
    events.push(finished());
    events
}

/// One run appending steps every few milliseconds until 20 steps after `restarted` is set (at
/// most 2 000), then finishing; returns its step count. Every append must be acknowledged.
async fn drive(journal: Arc<PgJournal>, run: RunId, restarted: Arc<AtomicBool>) -> u32 {
    journal.append(&run, submitted("t")).await.unwrap();
    let mut after_restart: Option<u32> = None;
    for i in 1..=2_000 {
        let seq = journal.append(&run, step(i)).await.unwrap();
        assert_eq!(seq, u64::from(i) + 1, "{run}");
        if after_restart.is_none() && restarted.load(Ordering::SeqCst) {
            after_restart = Some(i);
        }
        if after_restart.is_some_and(|at| i >= at + 20) {
            journal.append(&run, finished()).await.unwrap();
            return i;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{run}: the restart was not signalled within 2 000 steps");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_go_on_through_a_server_restart_and_every_acknowledged_event_is_there() {
    logs::capture();
    let pg = Arc::new(TestCluster::start());
    let url = pg.create_database("restart");
    let journal = Arc::new(connect(url).await.unwrap());
    let restarted = Arc::new(AtomicBool::new(false));
    let runs: Vec<RunId> = (0..6).map(|i| RunId::new(format!("through-{i}"))).collect();
    let tasks: Vec<_> = runs
        .iter()
        .map(|run| tokio::spawn(drive(journal.clone(), run.clone(), restarted.clone())))
        .collect();
    // Let the runs get going, then restart the server under them (every connection drops).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let server = pg.clone();
    tokio::task::spawn_blocking(move || server.restart())
        .await
        .unwrap();
    // A read right after the restart: on a new connection.
    let listed = tokio::task::spawn_blocking({
        let journal = journal.clone();
        move || journal.runs(&RunFilter::all())
    });
    restarted.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let mut steps = Vec::new();
    for task in tasks {
        steps.push(
            tokio::time::timeout(Duration::from_secs(120), task)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert!(started.elapsed() < Duration::from_secs(120));
    assert_eq!(listed.await.unwrap().unwrap().len(), runs.len());
    for (run, steps) in runs.iter().zip(steps) {
        let events: Vec<RunEvent> = journal
            .read(run)
            .unwrap()
            .into_iter()
            .map(|e: JournalEntry| e.event)
            .collect();
        assert_eq!(events, expected_run(steps), "{run}: lost or doubled events");
    }
    let finished = journal
        .runs(&RunFilter::all().status(RunStatus::Finished))
        .unwrap();
    assert_eq!(finished.len(), runs.len());
    // The restart did hit this journal's connections: it retried on new ones.
    let logged = logs::text();
    assert!(
        logged
            .lines()
            .any(|l| l.contains("retrying") && l.contains("database \"restart\"")),
        "no retry on the restarted database was logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_probe_fails_on_a_read_only_database() {
    let url = fresh_database("probe");
    let journal = connect(url.clone()).await.unwrap();
    journal.probe_write().await.unwrap();
    let name = url.rsplit('/').next().unwrap();
    shared()
        .psql(
            &url,
            &format!(
                "ALTER DATABASE {name} SET default_transaction_read_only = on;
                 SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE datname = '{name}' AND pid <> pg_backend_pid()"
            ),
        )
        .unwrap();
    let err = journal.probe_write().await.unwrap_err();
    assert!(err.to_string().contains("read-only transaction"), "{err}");
    let run = RunId::new("r");
    let refused = journal.append(&run, submitted("t")).await.unwrap_err();
    assert!(refused.to_string().contains("read-only"), "{refused}");
    assert!(journal.read(&run).unwrap().is_empty(), "reads still work");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_cut_off_by_the_server_is_written_once_on_a_new_connection() {
    let url = fresh_database("cutoff");
    let journal = connect(url.clone()).await.unwrap();
    let run = RunId::new("r");
    journal.append(&run, submitted("t")).await.unwrap();
    // From now on, at the first COMMIT that wrote an event, the server ends the connection the
    // COMMIT runs on (a deferred trigger; a sequence, which no rollback undoes, counts them).
    shared()
        .psql(
            &url,
            "CREATE SEQUENCE commits_seen;
             CREATE FUNCTION cut_first() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF nextval('commits_seen') = 1 THEN
                     PERFORM pg_terminate_backend(pg_backend_pid());
                 END IF;
                 RETURN NULL;
             END $$;
             CREATE CONSTRAINT TRIGGER cut_first AFTER INSERT ON journal_events
                 DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION cut_first();",
        )
        .unwrap();
    assert_eq!(journal.append(&run, step(1)).await.unwrap(), 2);
    assert_eq!(journal.append(&run, step(2)).await.unwrap(), 3);
    let events: Vec<RunEvent> = journal
        .read(&run)
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(
        events,
        [submitted("t"), step(1), step(2)],
        "written once each"
    );
    // The trigger ran three times: the cut COMMIT, its retry, the next append.
    let seen = shared()
        .psql(&url, "SELECT last_value FROM commits_seen")
        .unwrap();
    assert_eq!(seen, "3");
}
