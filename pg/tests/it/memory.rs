//! Long-term memory in PostgreSQL: the store suite (`agents/tests/it/memory_suite.rs`, the same
//! bodies the SQLite file passes), then what only a server shows: records kept across a new
//! connection (a restart).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use impresario_agents::memory::{LongTermMemory, LongTermStore, Retention};
use impresario_pg::memory::PgMemory;
use impresario_pg::test_cluster::shared;

use crate::memory_suite::{record, KEEP_ALL};

/// A new, empty database on the shared server, named after the test process and a counter.
fn fresh_database() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "memory_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    shared().create_database(&name)
}

/// Connects off the async threads: `connect` blocks until the schema is ready.
async fn connect(url: String, retention: Retention) -> PgMemory {
    tokio::task::spawn_blocking(move || PgMemory::connect(&url, retention))
        .await
        .unwrap()
        .unwrap()
}

/// A fresh store in a database of its own.
async fn open_postgres(retention: Retention) -> (Arc<dyn LongTermStore>, ()) {
    (Arc::new(connect(fresh_database(), retention).await), ())
}

/// The shared store suite against PostgreSQL.
mod postgres {
    crate::memory_suite::conformance!(super::open_postgres);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_survive_a_new_connection() {
    let url = fresh_database();
    {
        let store: Arc<dyn LongTermStore> = Arc::new(connect(url.clone(), KEEP_ALL).await);
        let memory = LongTermMemory::stored(store, "acme");
        let r = record("r1", "Rotate the signing keys", "done", Duration::ZERO);
        memory.remember(r).await.unwrap();
    }
    let store: Arc<dyn LongTermStore> = Arc::new(connect(url, KEEP_ALL).await);
    let memory = LongTermMemory::stored(store.clone(), "acme");
    assert_eq!(memory.len().await.unwrap(), 1);
    let found = memory.recall("signing keys", 5).await.unwrap();
    assert_eq!(found[0].record.run.as_str(), "r1");
    let other = LongTermMemory::stored(store, "beta");
    assert!(other.recall("signing keys", 5).await.unwrap().is_empty());
}
