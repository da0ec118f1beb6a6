//! Long-term memory in a real SQLite file: each tenant's records apart (recall for tenant B
//! never returns tenant A's, whatever the query), kept across a reopen (a restart), ranked by
//! FTS5's BM25, and bounded by retention (count and age).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use impresario_agents::memory::{MemoryDb, MemoryError, MemoryRecord, Outcome, Retention};
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
