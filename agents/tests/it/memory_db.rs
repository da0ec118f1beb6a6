//! Long-term memory in a real SQLite file: the store suite (`memory_suite.rs`, the same bodies
//! PostgreSQL passes), then what only the file shows: records kept across a reopen (a restart),
//! the index of distinct words, a file of the first schema migrated with every record, a file
//! of a newer schema refused untouched.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use impresario_agents::memory::{
    index_terms, LongTermMemory, LongTermStore, MemoryDb, MemoryRecord, Retention,
    MAX_INDEXED_TERMS,
};

use crate::memory_suite::{big_goal, record, KEEP_ALL};

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

/// A fresh memory file in the temporary folder, removed with the returned guard.
async fn open_sqlite(retention: Retention) -> (Arc<dyn LongTermStore>, TempFile) {
    let file = TempFile::new();
    let db = MemoryDb::open(&file.0, retention).unwrap();
    (Arc::new(db), file)
}

/// The shared store suite against the SQLite file.
mod sqlite {
    crate::memory_suite::conformance!(super::open_sqlite);
}

/// `tenant`'s memory in the file at `path`.
fn tenant(path: &std::path::Path, tenant: &str) -> LongTermMemory {
    let db = MemoryDb::open(path, KEEP_ALL).unwrap();
    LongTermMemory::stored(Arc::new(db), tenant)
}

#[tokio::test]
async fn records_survive_a_reopen() {
    let file = TempFile::new();
    {
        let memory = tenant(&file.0, "acme");
        let r = record(
            "r1",
            "Deploy the web service",
            "deploy tool",
            Duration::ZERO,
        );
        memory.remember(r).await.unwrap();
    }
    let memory = tenant(&file.0, "acme");
    assert_eq!(memory.len().await.unwrap(), 1);
    let found = memory.recall("deploy", 5).await.unwrap();
    assert_eq!(found[0].record.run.as_str(), "r1");
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
    let (acme, beta) = (tenant(&file.0, "acme"), tenant(&file.0, "beta"));
    assert_eq!(
        (acme.len().await.unwrap(), beta.len().await.unwrap()),
        (2, 1)
    );
    let found = acme.recall("rotate keys", 5).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].record.run.as_str(), "a1");
    assert_eq!(beta.recall("payroll rotate", 5).await.unwrap().len(), 1);
    drop((acme, beta));
    // Opened again: already migrated, nothing indexed twice.
    let again = tenant(&file.0, "acme");
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

#[tokio::test]
async fn a_file_of_the_second_schema_loses_only_its_word_counts() {
    let file = TempFile::new();
    {
        let memory = tenant(&file.0, "acme");
        let r = record("r1", "rotate the keys", "done", Duration::ZERO);
        memory.remember(r).await.unwrap();
    }
    {
        // What version 1 wrote beside the index: a word-count table.
        let conn = rusqlite::Connection::open(&file.0).unwrap();
        conn.execute_batch(
            "CREATE VIRTUAL TABLE memory_vocab USING fts5vocab (memory_terms, 'row');
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let memory = tenant(&file.0, "acme");
    assert_eq!(memory.recall("rotate keys", 5).await.unwrap().len(), 1);
    let conn = rusqlite::Connection::open(&file.0).unwrap();
    let (version, vocab): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT user_version FROM pragma_user_version),
                    (SELECT count(*) FROM sqlite_master WHERE name = 'memory_vocab')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((version, vocab), (2, 0));
}
