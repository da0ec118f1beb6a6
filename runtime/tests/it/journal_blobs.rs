//! Shared values in the SQLite journal (schema version 4): a planner's system prompt and a
//! plan's output schema, shared by many runs' model requests, are stored once per file and read
//! back in their events byte for byte; retention deletes one once no run refers to it; a row
//! that refers to a value the file lost is corrupt, named; a file of schema version 3 reads
//! unchanged and goes on.

use std::path::Path;

use impresario_runtime::journal::{
    Journal, JournalError, RetentionPolicy, RunEvent, SqliteJournal, EVENT_VERSION, SCHEMA_VERSION,
};
use impresario_runtime::llm::{ChatRequest, SharedJson, SharedText};
use impresario_runtime::RunId;
use serde_json::json;

use crate::journal::{TempDir, RUNS_2, SCHEMA_3};
use crate::journal_suite::{finished, submitted};

/// A planner-like request: a long shared prompt, the goal, a shared schema.
fn request(prompt: &SharedText, schema: &SharedJson, goal: &str) -> RunEvent {
    RunEvent::LlmRequest {
        step: 0,
        call: 1,
        request: ChatRequest::new("m")
            .system(prompt.clone())
            .user(goal)
            .output_schema("plan", schema.clone(), false),
    }
}

fn prompt(tools: &str) -> SharedText {
    SharedText::new(format!(
        "You plan the steps of a run.\nTools: {tools}\n\"Answer\" with JSON only. {}",
        "Rules. ".repeat(60)
    ))
}

fn schema() -> SharedJson {
    SharedJson::new(
        json!({"type": "object", "required": ["steps"], "description": "é\n".repeat(200)}),
    )
}

/// Appends a run of `events` after its submission (one commit each).
async fn run(journal: &SqliteJournal, id: &str, events: Vec<RunEvent>) -> Vec<RunEvent> {
    let run = RunId::new(id);
    let mut all = vec![submitted("t")];
    all.extend(events);
    for event in &all {
        journal.append(&run, event.clone()).await.unwrap();
    }
    all
}

/// The one text column `sql` selects, one string per row.
fn column(path: &Path, sql: &str) -> Vec<String> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut rows = conn.prepare(sql).unwrap();
    rows.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn events_of(journal: &SqliteJournal, id: &str) -> Vec<RunEvent> {
    let read = journal.read(&RunId::new(id)).unwrap();
    read.into_iter().map(|e| e.event).collect()
}

#[tokio::test]
async fn shared_values_are_stored_once_per_file_and_read_back_whole() {
    let dir = TempDir::new();
    let path = dir.file("journal.db");
    let journal = SqliteJournal::open(&path).unwrap();
    let (calc, search, schema) = (prompt("calculator"), prompt("search"), schema());
    let mut written = Vec::new();
    for (id, p) in [("a", &calc), ("b", &calc), ("c", &search)] {
        let events = vec![request(p, &schema, id), request(p, &schema, "again")];
        written.push((id, run(&journal, id, events).await));
    }
    for (id, events) in &written {
        assert_eq!(&events_of(&journal, id), events, "run {id}");
        let after_1 = journal.read_after(&RunId::new(*id), 1).unwrap();
        let after_1: Vec<RunEvent> = after_1.into_iter().map(|e| e.event).collect();
        assert_eq!(after_1, events[1..], "run {id} after its first event");
    }
    // Three values (two prompts, one schema), once each, whatever the number of requests.
    let blobs = column(&path, "SELECT json FROM blobs ORDER BY json");
    let mut expected = vec![
        calc.blob().json().to_owned(),
        search.blob().json().to_owned(),
        schema.json().to_owned(),
    ];
    expected.sort();
    assert_eq!(blobs, expected);
    let bodies = column(&path, "SELECT bodies FROM batches").concat();
    assert!(bodies.contains("\"content\":null") && !bodies.contains("Rules. Rules."));
    assert!(!bodies.contains("é"), "the schema is not in the events");
    // Another process's journal (no value read yet) reads them from the file.
    drop(journal);
    let reopened = SqliteJournal::open(&path).unwrap();
    for (id, events) in &written {
        assert_eq!(
            &events_of(&reopened, id),
            events,
            "run {id} after reopening"
        );
    }
}

#[tokio::test]
async fn retention_deletes_a_stored_value_once_no_run_refers_to_it() {
    let dir = TempDir::new();
    let path = dir.file("journal.db");
    let journal = SqliteJournal::open(&path).unwrap();
    let (shared, own, schema) = (prompt("shared"), prompt("own"), schema());
    for (id, p) in [("old", &own), ("mid", &shared), ("new", &shared)] {
        run(&journal, id, vec![request(p, &schema, id), finished()]).await;
        // Retention keeps the most recently ended runs: distinct end times.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let count = || column(&path, "SELECT json FROM blobs").len();
    assert_eq!(count(), 3);
    let keep = |n| RetentionPolicy {
        max_finished_runs: Some(n),
        ..RetentionPolicy::default()
    };
    // "old" goes, and with it the only run of its prompt: that prompt goes.
    assert_eq!(
        journal
            .apply_retention(&keep(2))
            .await
            .unwrap()
            .runs_deleted,
        1
    );
    let left = column(&path, "SELECT json FROM blobs");
    assert_eq!(left.len(), 2);
    assert!(!left.contains(&own.blob().json().to_owned()));
    // "mid" goes, "new" still refers to the shared prompt and the schema: both stay.
    journal.apply_retention(&keep(1)).await.unwrap();
    assert_eq!(count(), 2);
    assert_eq!(
        events_of(&journal, "new")[1],
        request(&shared, &schema, "new")
    );
    journal.apply_retention(&keep(0)).await.unwrap();
    assert_eq!(count(), 0, "no run left, no value left");
}

#[tokio::test]
async fn a_row_referring_to_a_value_the_file_lost_is_corrupt_and_named() {
    let dir = TempDir::new();
    let path = dir.file("journal.db");
    let journal = SqliteJournal::open(&path).unwrap();
    let (p, schema) = (prompt("x"), schema());
    run(&journal, "r", vec![request(&p, &schema, "goal")]).await;
    drop(journal);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let digest = p.blob().digest().to_hex();
    conn.execute("DELETE FROM blobs WHERE digest = ?1", [&digest])
        .unwrap();
    drop(conn);
    let journal = SqliteJournal::open(&path).unwrap();
    match journal.read(&RunId::new("r")) {
        Err(JournalError::Corrupt { run, seq, reason }) => {
            assert_eq!((run.as_str(), seq), ("r", 2));
            assert!(
                reason.contains(&digest) && reason.contains("does not hold"),
                "{reason}"
            );
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // A value altered behind the journal's back no longer matches its digest: the same.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let schema_digest = schema.blob().digest().to_hex();
    conn.execute(
        "UPDATE blobs SET json = '{}' WHERE digest = ?1",
        [&schema_digest],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO blobs (digest, json) VALUES (?1, ?2)",
        [&digest, p.blob().json()],
    )
    .unwrap();
    drop(conn);
    let journal = SqliteJournal::open(&path).unwrap();
    let err = journal.read(&RunId::new("r")).unwrap_err();
    assert!(err.to_string().contains(&schema_digest), "{err}");
}

#[tokio::test]
async fn a_file_of_schema_3_reads_unchanged_and_goes_on_with_stored_values() {
    let dir = TempDir::new();
    let path = dir.file("journal.db");
    let (p, schema) = (prompt("old"), schema());
    let old = [submitted("t"), request(&p, &schema, "goal")];
    let body = |e: &RunEvent| serde_json::to_string(e).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    // Schema version 3 as shipped (before stored values); its run's model request holds
    // its prompt whole.
    conn.execute_batch(RUNS_2).unwrap();
    conn.execute_batch(SCHEMA_3).unwrap();
    conn.execute(
        "INSERT INTO batches VALUES ('old', 1, 1700000000000, ?1, ?2, ?3)",
        rusqlite::params![
            EVENT_VERSION,
            format!("{}\n{}", old[0].kind(), old[1].kind()),
            format!("{}\n{}", body(&old[0]), body(&old[1])),
        ],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO runs VALUES ('old', 't', 'active', 2, 'llm_request', 1700000000000, 1700000000000)",
        [],
    )
    .unwrap();
    drop(conn);

    let journal = SqliteJournal::open(&path).unwrap();
    assert_eq!(events_of(&journal, "old"), old);
    let next = request(&p, &schema, "again");
    assert_eq!(
        journal
            .append(&RunId::new("old"), next.clone())
            .await
            .unwrap(),
        3
    );
    let mut all = old.to_vec();
    all.push(next);
    assert_eq!(events_of(&journal, "old"), all);
    drop(journal);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let refs = column(
        &path,
        "SELECT coalesce(refs, '') FROM batches ORDER BY first_seq",
    );
    assert_eq!(refs[0], "", "the old row has no references");
    assert_eq!(refs[1].lines().count(), 2, "the new one: prompt and schema");
}

/// A writer that stored a value does not write it again, but another journal on the same file
/// may delete it meanwhile (its retention): the writer sees that the file changed and writes the
/// value again with the next row that refers to it.
#[tokio::test]
async fn a_value_another_journal_deleted_is_written_again() {
    let dir = TempDir::new();
    let path = dir.file("journal.db");
    let first = SqliteJournal::open(&path).unwrap();
    let (p, schema) = (prompt("both"), schema());
    run(
        &first,
        "one",
        vec![request(&p, &schema, "goal"), finished()],
    )
    .await;
    let second = SqliteJournal::open(&path).unwrap();
    let everything = RetentionPolicy {
        max_finished_runs: Some(0),
        ..RetentionPolicy::default()
    };
    assert_eq!(
        second
            .apply_retention(&everything)
            .await
            .unwrap()
            .runs_deleted,
        1
    );
    assert!(column(&path, "SELECT json FROM blobs").is_empty());
    drop(second);
    let events = run(&first, "two", vec![request(&p, &schema, "goal")]).await;
    assert_eq!(column(&path, "SELECT json FROM blobs").len(), 2);
    drop(first);
    assert_eq!(
        events_of(&SqliteJournal::open(&path).unwrap(), "two"),
        events
    );
}
