//! Long-term memory in a real SQLite file: each tenant's records apart (recall for tenant B
//! never returns tenant A's, whatever the query), kept across a reopen (a restart), ranked by
//! FTS5's BM25, and bounded by retention (count and age).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use impresario_agents::memory::{
    index_terms, MemoryDb, MemoryError, MemoryRecord, Outcome, Retention, MAX_CANDIDATES,
    MAX_INDEXED_TERMS,
};
use impresario_runtime::RunId;

struct TempFile(PathBuf);

impl TempFile {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        TempFile(
            std::env::temp_dir().join(format!("impresario-memory-{}-{n}.db", std::process::id())),
        )
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

fn record(run: &str, goal: &str, text: &str, ago: Duration) -> MemoryRecord {
    MemoryRecord {
        run: RunId::new(run),
        goal: goal.into(),
        text: text.into(),
        outcome: Outcome::Succeeded,
        why: "done".into(),
        tags: Vec::new(),
        at: SystemTime::now() - ago,
    }
}

const KEEP_ALL: Retention = Retention {
    max_records: None,
    max_age: None,
};

#[tokio::test]
async fn recall_for_one_tenant_never_returns_anothers_records() {
    let file = TempFile::new();
    let db = MemoryDb::open(&file.0, KEEP_ALL).unwrap();
    let (a, b) = (db.tenant("acme"), db.tenant("beta"));
    let secret = "the acme vault code is 4471 for the payroll export";
    a.remember(record("ra", "Export payroll", secret, Duration::ZERO))
        .await
        .unwrap();
    b.remember(record(
        "rb",
        "Export invoices",
        "invoices exported as csv",
        Duration::ZERO,
    ))
    .await
    .unwrap();

    // Tenant B asks with tenant A's very words: only B's own record can come back.
    for query in [secret, "payroll vault code 4471 acme", "export"] {
        let found = b.recall(query, 10).await.unwrap();
        assert!(
            found.iter().all(|r| r.record.run.as_str() == "rb"),
            "{query:?} -> {found:?}"
        );
    }
    let own = a.recall("vault code", 10).await.unwrap();
    assert_eq!(own.len(), 1);
    assert_eq!(own[0].record.text, secret);
    assert!(own[0].score > 0.0);
    assert_eq!((a.len(), b.len(), db.tenant("gamma").len()), (1, 1, 0));
}

#[tokio::test]
async fn records_survive_a_reopen_and_rank_by_relevance_then_recency() {
    let file = TempFile::new();
    {
        let memory = MemoryDb::open(&file.0, KEEP_ALL).unwrap().tenant("acme");
        let old = Duration::from_secs(60);
        memory
            .remember(record(
                "r1",
                "Deploy the web service",
                "deployed v2 with the deploy tool",
                old,
            ))
            .await
            .unwrap();
        memory
            .remember(record(
                "r2",
                "Translate the README",
                "translated to French",
                old,
            ))
            .await
            .unwrap();
        memory
            .remember(record(
                "r3",
                "Deploy the worker",
                "deploy tool again",
                Duration::ZERO,
            ))
            .await
            .unwrap();
    }
    let memory = MemoryDb::open(&file.0, KEEP_ALL).unwrap().tenant("acme");
    assert_eq!(memory.len(), 3);
    let found = memory.recall("deploy tool", 5).await.unwrap();
    let runs: Vec<&str> = found.iter().map(|r| r.record.run.as_str()).collect();
    assert_eq!(runs.len(), 2, "only records sharing a word: {runs:?}");
    assert!(runs.contains(&"r1") && runs.contains(&"r3"), "{runs:?}");
    assert!(found[0].score >= found[1].score);
    // Query words are data, not FTS5 syntax.
    assert!(memory.recall("deploy\" OR tenant:*", 5).await.is_ok());
    assert!(matches!(
        memory.recall("  ", 5).await,
        Err(MemoryError::BadInput { what: "query", .. })
    ));
}

#[tokio::test]
async fn retention_keeps_the_newest_records_younger_than_the_age_limit() {
    let file = TempFile::new();
    let retention = Retention {
        max_records: Some(3),
        max_age: Some(Duration::from_secs(3_600)),
    };
    let db = MemoryDb::open(&file.0, retention).unwrap();
    let (memory, other) = (db.tenant("acme"), db.tenant("beta"));
    other
        .remember(record(
            "b1",
            "beta task",
            "beta notes",
            Duration::from_secs(7_200),
        ))
        .await
        .ok();
    memory
        .remember(record(
            "stale",
            "ancient task",
            "notes",
            Duration::from_secs(7_200),
        ))
        .await
        .unwrap();
    for i in 0..5u64 {
        let ago = Duration::from_secs(600 - i * 60);
        memory
            .remember(record(&format!("r{i}"), "task", "notes", ago))
            .await
            .unwrap();
    }
    assert_eq!(memory.len(), 3, "at most 3 records");
    let kept: Vec<String> = memory
        .recall("task notes", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.record.run.to_string())
        .collect();
    let mut sorted = kept.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["r2", "r3", "r4"],
        "the newest three, the stale one gone"
    );
    // Retention of acme's inserts never touches beta's records.
    assert_eq!(
        other.len(),
        0,
        "beta's own insert applied beta's age limit to beta only"
    );
    other
        .remember(record("b2", "beta task", "fresh", Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(other.len(), 1);
    assert_eq!(memory.len(), 3);
}

/// A goal of about 20 KB that repeats the same common words, like the service's big goals.
fn big_goal(n: usize) -> String {
    let mut goal = format!("Task {n}: summarize what changed. ");
    while goal.len() < 20_000 {
        goal.push_str("Detail of the task about the release notes and what changed. ");
    }
    goal
}

#[tokio::test]
async fn a_tenant_with_many_big_records_still_recalls_the_right_one() {
    let file = TempFile::new();
    let db = MemoryDb::open(&file.0, KEEP_ALL).unwrap();
    let (acme, beta) = (db.tenant("acme"), db.tenant("beta"));
    // The one that matters is the oldest, among more big records than recall ranks.
    let mut right = record("needle", &big_goal(0), "", Duration::from_secs(3_600));
    right.why = "the flamingo certificate had expired".into();
    acme.remember(right).await.unwrap();
    beta.remember(record(
        "beta-flamingo",
        "rotate the flamingo certificate",
        "beta's own",
        Duration::ZERO,
    ))
    .await
    .unwrap();
    let total = MAX_CANDIDATES + 100;
    for n in 1..total {
        let ago = Duration::from_secs(3_600 - n as u64);
        acme.remember(record(&format!("big-{n}"), &big_goal(n), "", ago))
            .await
            .unwrap();
    }
    assert_eq!(acme.len(), total);
    // Common words of every record, and one only the right record has.
    let found = acme
        .recall("what changed in the release notes: flamingo certificate", 3)
        .await
        .unwrap();
    assert_eq!(found[0].record.run.as_str(), "needle", "{:?}", found[0].id);
    assert!(found
        .iter()
        .all(|r| r.record.run.as_str() != "beta-flamingo"));
    // Common words alone still recall the tenant's records (the newest rank among equals).
    let common = acme.recall("release notes", 2).await.unwrap();
    assert_eq!(common.len(), 2);
    assert!(common
        .iter()
        .all(|r| r.record.run.as_str().starts_with("big-")));
}

#[test]
fn a_record_is_indexed_by_its_distinct_words_only() {
    let mut big = record("r", &big_goal(7), "text", Duration::ZERO);
    big.why = "expired".into();
    let terms = index_terms(&big);
    assert!(terms.len() < 30, "{} terms: {terms:?}", terms.len());
    assert_eq!(terms[..2], ["task", "7"]);
    assert!(terms.contains(&"expired".to_owned()) && terms.contains(&"succeeded".to_owned()));
    let mut many = record("r", "", "", Duration::ZERO);
    many.text = (0..3 * MAX_INDEXED_TERMS)
        .map(|i| format!("w{i} "))
        .collect();
    assert_eq!(index_terms(&many).len(), MAX_INDEXED_TERMS);
}

/// Writes a memory file as the first schema did (version 0: the whole text in `memory_text`).
fn write_version_0(path: &std::path::Path, records: &[(&str, MemoryRecord)]) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "CREATE TABLE memory (id INTEGER PRIMARY KEY, tenant TEXT NOT NULL,
             at_ms INTEGER NOT NULL, record TEXT NOT NULL);
         CREATE INDEX memory_by_tenant ON memory (tenant, at_ms);
         CREATE VIRTUAL TABLE memory_text USING fts5 (text, tokenize = 'unicode61');",
    )
    .unwrap();
    for (tenant, r) in records {
        let json = serde_json::to_string(r).unwrap();
        conn.execute(
            "INSERT INTO memory (tenant, at_ms, record) VALUES (?1, 0, ?2)",
            rusqlite::params![tenant, json],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO memory_text (rowid, text) VALUES (last_insert_rowid(), ?1)",
            [r.search_text()],
        )
        .unwrap();
    }
}

#[tokio::test]
async fn a_file_of_the_first_schema_is_migrated_with_every_record() {
    let file = TempFile::new();
    write_version_0(
        &file.0,
        &[
            (
                "acme",
                record("a1", "rotate the keys", "done", Duration::ZERO),
            ),
            (
                "acme",
                record("a2", "export payroll", "csv", Duration::ZERO),
            ),
            (
                "beta",
                record("b1", "rotate the keys", "beta", Duration::ZERO),
            ),
        ],
    );
    let db = MemoryDb::open(&file.0, KEEP_ALL).unwrap();
    let (acme, beta) = (db.tenant("acme"), db.tenant("beta"));
    assert_eq!((acme.len(), beta.len()), (2, 1));
    let found = acme.recall("rotate keys", 5).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].record.run.as_str(), "a1");
    assert_eq!(beta.recall("payroll rotate", 5).await.unwrap().len(), 1);
    drop((acme, beta, db));
    // Opened again: already migrated, nothing indexed twice.
    let again = MemoryDb::open(&file.0, KEEP_ALL).unwrap().tenant("acme");
    assert_eq!(again.recall("rotate keys", 5).await.unwrap().len(), 1);
}

#[test]
fn a_file_of_a_newer_schema_is_refused_untouched() {
    let file = TempFile::new();
    {
        let conn = rusqlite::Connection::open(&file.0).unwrap();
        conn.execute_batch("CREATE TABLE future (x); PRAGMA user_version = 99;")
            .unwrap();
    }
    let before = std::fs::read(&file.0).unwrap();
    let err = MemoryDb::open(&file.0, KEEP_ALL).unwrap_err().to_string();
    assert!(
        err.contains("version 99") && err.contains("untouched"),
        "{err}"
    );
    assert!(err.contains(&file.0.display().to_string()), "{err}");
    assert_eq!(std::fs::read(&file.0).unwrap(), before);
}
