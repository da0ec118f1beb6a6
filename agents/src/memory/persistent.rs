//! Long-term memory kept in a SQLite file, every record under its tenant, found again with
//! FTS5's BM25 ranking, and bounded by a retention policy.
//!
//! One [`MemoryDb`] holds every tenant's records; [`MemoryDb::tenant`] gives the
//! [`LongTermMemory`] of one tenant, which stores and recalls that tenant's records only (every
//! query filters on the tenant column: no other tenant's record can come back, whatever the
//! query). Records survive a restart: open the same file again.
//!
//! Retention runs at every `remember`: records of the tenant older than `max_age` are deleted,
//! then the oldest beyond `max_records`.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};

use super::long_term::{LongTermMemory, MemoryRecord, Recalled, RecordId};
use super::rank::tokenize;
use super::MemoryError;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS memory (
        id INTEGER PRIMARY KEY,
        tenant TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        record TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS memory_by_tenant ON memory (tenant, at_ms);
    CREATE VIRTUAL TABLE IF NOT EXISTS memory_text USING fts5 (text, tokenize = 'unicode61');
";

/// Recall matches at most this many distinct words of its query (the first ones).
pub const MAX_QUERY_TERMS: usize = 32;

/// How much long-term memory each tenant keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// At most this many records per tenant (the newest); `None`: no count limit.
    pub max_records: Option<usize>,
    /// Records older than this are deleted; `None`: no age limit.
    pub max_age: Option<Duration>,
}

impl Default for Retention {
    /// 10,000 records per tenant, 90 days.
    fn default() -> Self {
        Retention {
            max_records: Some(10_000),
            max_age: Some(Duration::from_secs(90 * 86_400)),
        }
    }
}

/// A SQLite file of long-term memory for every tenant. Cheap to clone (one connection, shared).
#[derive(Clone)]
pub struct MemoryDb {
    conn: Arc<Mutex<Connection>>,
    retention: Retention,
}

impl std::fmt::Debug for MemoryDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryDb")
            .field("retention", &self.retention)
            .finish()
    }
}

fn storage(e: impl std::fmt::Display) -> MemoryError {
    MemoryError::Storage(e.to_string())
}

impl MemoryDb {
    /// Opens (creating if missing) the memory file at `path`.
    pub fn open(path: impl AsRef<Path>, retention: Retention) -> Result<Self, MemoryError> {
        let path = path.as_ref();
        let conn = Connection::open(path)
            .map_err(|e| storage(format!("cannot open {}: {e}", path.display())))?;
        conn.execute_batch("PRAGMA journal_mode = WAL;")
            .and_then(|()| conn.execute_batch(SCHEMA))
            .map_err(|e| storage(format!("cannot set up {}: {e}", path.display())))?;
        Ok(MemoryDb {
            conn: Arc::new(Mutex::new(conn)),
            retention,
        })
    }

    /// The long-term memory of `tenant`: its records only.
    pub fn tenant(&self, tenant: &str) -> LongTermMemory {
        LongTermMemory::persistent(self.clone(), tenant.to_owned())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic under the lock leaves SQLite consistent (each statement is atomic).
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores `record` for `tenant`, then applies the retention policy to that tenant.
    pub(crate) fn insert(
        &self,
        tenant: &str,
        record: &MemoryRecord,
    ) -> Result<RecordId, MemoryError> {
        let json = serde_json::to_string(record).map_err(storage)?;
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(storage)?;
        tx.execute(
            "INSERT INTO memory (tenant, at_ms, record) VALUES (?1, ?2, ?3)",
            params![tenant, unix_ms(record.at), json],
        )
        .map_err(storage)?;
        let id = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO memory_text (rowid, text) VALUES (?1, ?2)",
            params![id, record.search_text()],
        )
        .map_err(storage)?;
        apply_retention(&tx, tenant, self.retention, SystemTime::now())?;
        tx.commit().map_err(storage)?;
        Ok(RecordId(u64::try_from(id).unwrap_or_default()))
    }

    /// The `k` records of `tenant` most relevant to `query` (FTS5 BM25), best first; ties go
    /// to the newer record, then the later stored.
    pub(crate) fn search(
        &self,
        tenant: &str,
        query: &str,
        k: usize,
    ) -> Result<Vec<Recalled>, MemoryError> {
        // Every word quoted, any of them matching: no FTS5 syntax reaches the query. A long
        // query (a 20 KB goal) is cut to its first distinct words: an OR of thousands of terms
        // costs seconds per recall.
        let mut terms: Vec<String> = Vec::new();
        for term in tokenize(query) {
            let quoted = format!("\"{term}\"");
            if !terms.contains(&quoted) {
                terms.push(quoted);
            }
            if terms.len() == MAX_QUERY_TERMS {
                break;
            }
        }
        let conn = self.lock();
        let mut statement = conn
            .prepare_cached(
                "SELECT m.id, m.record, bm25(memory_text) AS rank
                 FROM memory_text JOIN memory m ON m.id = memory_text.rowid
                 WHERE memory_text MATCH ?1 AND m.tenant = ?2
                 ORDER BY rank, m.at_ms DESC, m.id DESC LIMIT ?3",
            )
            .map_err(storage)?;
        let limit = i64::try_from(k).unwrap_or(i64::MAX);
        let rows = statement
            .query_map(params![terms.join(" OR "), tenant, limit], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, f64>(2)?,
                ))
            })
            .map_err(storage)?;
        rows.map(|row| {
            let (id, json, rank) = row.map_err(storage)?;
            let record = serde_json::from_str(&json)
                .map_err(|e| storage(format!("memory record {id} does not read back: {e}")))?;
            Ok(Recalled {
                id: RecordId(u64::try_from(id).unwrap_or_default()),
                record,
                // FTS5's bm25() is lower for better matches; ours is higher.
                score: -rank,
            })
        })
        .collect()
    }

    /// How many records `tenant` has.
    pub(crate) fn count(&self, tenant: &str) -> usize {
        self.lock()
            .query_row(
                "SELECT count(*) FROM memory WHERE tenant = ?1",
                [tenant],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .ok()
            .flatten()
            .map_or(0, |n| usize::try_from(n).unwrap_or_default())
    }
}

/// Deletes `tenant`'s records older than the policy's age, then its oldest beyond its count.
fn apply_retention(
    conn: &Connection,
    tenant: &str,
    retention: Retention,
    now: SystemTime,
) -> Result<(), MemoryError> {
    let doomed =
        "CREATE TEMP TABLE IF NOT EXISTS doomed (id INTEGER PRIMARY KEY); DELETE FROM doomed;";
    conn.execute_batch(doomed).map_err(storage)?;
    if let Some(age) = retention.max_age {
        let cutoff = unix_ms(now.checked_sub(age).unwrap_or(UNIX_EPOCH));
        conn.execute(
            "INSERT OR IGNORE INTO doomed SELECT id FROM memory WHERE tenant = ?1 AND at_ms < ?2",
            params![tenant, cutoff],
        )
        .map_err(storage)?;
    }
    if let Some(max) = retention.max_records {
        conn.execute(
            "INSERT OR IGNORE INTO doomed SELECT id FROM memory WHERE tenant = ?1
             ORDER BY at_ms DESC, id DESC LIMIT -1 OFFSET ?2",
            params![tenant, i64::try_from(max).unwrap_or(i64::MAX)],
        )
        .map_err(storage)?;
    }
    conn.execute_batch(
        "DELETE FROM memory_text WHERE rowid IN (SELECT id FROM doomed);
         DELETE FROM memory WHERE id IN (SELECT id FROM doomed);",
    )
    .map_err(storage)
}

fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
