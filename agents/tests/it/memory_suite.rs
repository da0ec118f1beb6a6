//! Long-term memory's behaviour, one suite for every store: each test here takes a fresh
//! `LongTermStore` and checks what the trait promises (each tenant's records apart, ranking by
//! relevance, retention by count and age, recall among many big records). impresario-agents'
//! tests run it against the SQLite file (`it/memory_db.rs`), impresario-pg's against
//! PostgreSQL (`pg/tests/it/memory.rs`, which includes this file with `#[path]`): one body per
//! behaviour, no copies.
//!
//! A backend's test module calls [`conformance!`] with an async function that opens a fresh,
//! empty store with a [`Retention`] and returns it with whatever must live as long as it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use impresario_agents::memory::{
    LongTermMemory, LongTermStore, MemoryError, MemoryRecord, Outcome, Retention, MAX_CANDIDATES,
};
use impresario_runtime::RunId;

/// One test per behaviour of this suite, each on the store `$open` (an async fn taking a
/// `Retention`, returning `(Arc<dyn LongTermStore>, keep_alive)`) opens.
macro_rules! conformance {
    ($open:path) => {
        $crate::memory_suite::conformance!(@each $open;
            recall_for_one_tenant_never_returns_anothers_records,
            recall_ranks_records_sharing_words_and_takes_queries_as_data,
            retention_keeps_the_newest_records_younger_than_the_age_limit,
            a_tenant_with_many_big_records_still_recalls_the_right_one
        );
    };
    (@each $open:path; $($suite:ident),*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $suite() {
            $crate::memory_suite::$suite(|retention| $open(retention)).await
        }
    )*};
}
pub(crate) use conformance;

/// Keeps every record.
pub const KEEP_ALL: Retention = Retention {
    max_records: None,
    max_age: None,
};

pub fn record(run: &str, goal: &str, text: &str, ago: Duration) -> MemoryRecord {
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

/// A goal of about 20 KB that repeats the same common words, like the service's big goals.
pub fn big_goal(n: usize) -> String {
    let mut goal = format!("Task {n}: summarize what changed. ");
    while goal.len() < 20_000 {
        goal.push_str("Detail of the task about the release notes and what changed. ");
    }
    goal
}

async fn len(memory: &LongTermMemory) -> usize {
    memory.len().await.unwrap()
}

pub async fn recall_for_one_tenant_never_returns_anothers_records<F, K>(
    open: impl FnOnce(Retention) -> F,
) where
    F: std::future::Future<Output = (Arc<dyn LongTermStore>, K)>,
{
    let (store, _keep) = open(KEEP_ALL).await;
    let a = LongTermMemory::stored(store.clone(), "acme");
    let b = LongTermMemory::stored(store.clone(), "beta");
    let secret = "the acme vault code is 4471 for the payroll export";
    a.remember(record("ra", "Export payroll", secret, Duration::ZERO))
        .await
        .unwrap();
    let beta_record = record("rb", "Export invoices", "invoices as csv", Duration::ZERO);
    b.remember(beta_record).await.unwrap();
    // Tenant B asks with tenant A's very words: only B's own record can come back.
    for query in [secret, "payroll vault code 4471 acme", "export"] {
        let found = b.recall(query, 10).await.unwrap();
        assert!(
            found.iter().all(|r| r.record.run.as_str() == "rb"),
            "{query:?} -> {found:?}"
        );
    }
    // A tenant whose name differs only in punctuation is another tenant.
    let lookalike = LongTermMemory::stored(store.clone(), "acme ");
    assert!(lookalike.recall("vault code", 10).await.unwrap().is_empty());
    let own = a.recall("vault code", 10).await.unwrap();
    assert_eq!(own.len(), 1);
    assert_eq!(own[0].record.text, secret);
    assert!(own[0].score > 0.0);
    let gamma = LongTermMemory::stored(store, "gamma");
    assert_eq!((len(&a).await, len(&b).await, len(&gamma).await), (1, 1, 0));
}

pub async fn recall_ranks_records_sharing_words_and_takes_queries_as_data<F, K>(
    open: impl FnOnce(Retention) -> F,
) where
    F: std::future::Future<Output = (Arc<dyn LongTermStore>, K)>,
{
    let (store, _keep) = open(KEEP_ALL).await;
    let memory = LongTermMemory::stored(store, "acme");
    let old = Duration::from_secs(60);
    let r1 = record("r1", "Deploy the web service", "deployed v2", old);
    let r2 = record("r2", "Translate the README", "translated to French", old);
    let r3 = record(
        "r3",
        "Deploy the worker",
        "the deploy tool again",
        Duration::ZERO,
    );
    let mut ids = Vec::new();
    for r in [r1, r2, r3] {
        ids.push(memory.remember(r).await.unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids grow: {ids:?}");
    let found = memory.recall("deploy tool", 5).await.unwrap();
    let runs: Vec<&str> = found.iter().map(|r| r.record.run.as_str()).collect();
    assert_eq!(
        runs,
        ["r3", "r1"],
        "only records sharing a word, the better first"
    );
    assert!(found[0].score > found[1].score, "{found:?}");
    assert_eq!(memory.recall("deploy tool", 1).await.unwrap().len(), 1);
    // Query words are data, not full-text syntax.
    for query in ["deploy\" OR tenant:*", "deploy' | !a & (b", "scope : x"] {
        assert!(memory.recall(query, 5).await.is_ok(), "{query}");
    }
    assert!(matches!(
        memory.recall("  ", 5).await,
        Err(MemoryError::BadInput { what: "query", .. })
    ));
}

pub async fn retention_keeps_the_newest_records_younger_than_the_age_limit<F, K>(
    open: impl FnOnce(Retention) -> F,
) where
    F: std::future::Future<Output = (Arc<dyn LongTermStore>, K)>,
{
    let retention = Retention {
        max_records: Some(3),
        max_age: Some(Duration::from_secs(3_600)),
    };
    let (store, _keep) = open(retention).await;
    let memory = LongTermMemory::stored(store.clone(), "acme");
    let other = LongTermMemory::stored(store, "beta");
    let stale_beta = record("b1", "beta task", "beta notes", Duration::from_secs(7_200));
    other.remember(stale_beta).await.unwrap();
    let stale = record("stale", "ancient task", "notes", Duration::from_secs(7_200));
    memory.remember(stale).await.unwrap();
    for i in 0..5u64 {
        let ago = Duration::from_secs(600 - i * 60);
        let r = record(&format!("r{i}"), "task", "notes", ago);
        memory.remember(r).await.unwrap();
    }
    assert_eq!(len(&memory).await, 3, "at most 3 records");
    let mut kept: Vec<String> = memory
        .recall("task notes", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.record.run.to_string())
        .collect();
    kept.sort();
    assert_eq!(
        kept,
        ["r2", "r3", "r4"],
        "the newest three, the stale one gone"
    );
    // Beta's stale record went at beta's own insert (its age limit); acme's inserts never
    // touch beta's records.
    assert_eq!(len(&other).await, 0, "beta's insert applied its age limit");
    let fresh = record("b2", "beta task", "fresh", Duration::ZERO);
    other.remember(fresh).await.unwrap();
    let newest = record("r5", "task", "notes", Duration::ZERO);
    memory.remember(newest).await.unwrap();
    assert_eq!(
        len(&other).await,
        1,
        "acme's insert left beta's record alone"
    );
    assert_eq!(len(&memory).await, 3);
}

pub async fn a_tenant_with_many_big_records_still_recalls_the_right_one<F, K>(
    open: impl FnOnce(Retention) -> F,
) where
    F: std::future::Future<Output = (Arc<dyn LongTermStore>, K)>,
{
    let (store, _keep) = open(KEEP_ALL).await;
    let acme = LongTermMemory::stored(store.clone(), "acme");
    let beta = LongTermMemory::stored(store, "beta");
    // The one that matters is the oldest, among more big records than recall ranks.
    let mut right = record("needle", &big_goal(0), "", Duration::from_secs(3_600));
    right.why = "the flamingo certificate had expired".into();
    acme.remember(right).await.unwrap();
    let theirs = record(
        "beta-flamingo",
        "the flamingo certificate",
        "",
        Duration::ZERO,
    );
    beta.remember(theirs).await.unwrap();
    let total = MAX_CANDIDATES + 100;
    for n in 1..total {
        let ago = Duration::from_secs(3_600 - n as u64);
        let big = record(&format!("big-{n}"), &big_goal(n), "", ago);
        acme.remember(big).await.unwrap();
    }
    assert_eq!(len(&acme).await, total);
    // Common words of every record, and two only the right record has.
    let found = acme
        .recall("what changed in the release notes: flamingo certificate", 3)
        .await
        .unwrap();
    assert_eq!(found[0].record.run.as_str(), "needle", "{:?}", found[0].id);
    assert!(found
        .iter()
        .all(|r| r.record.run.as_str() != "beta-flamingo"));
    // Common words alone still recall the tenant's records.
    let common = acme.recall("release notes", 2).await.unwrap();
    assert_eq!(common.len(), 2);
    assert!(common
        .iter()
        .all(|r| r.record.run.as_str().starts_with("big-")));
}
