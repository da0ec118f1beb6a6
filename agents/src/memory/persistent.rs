//! Long-term memory kept in a SQLite file, every record under its tenant, found again with
//! FTS5's BM25 ranking, and bounded by a retention policy.
//!
//! One [`MemoryDb`] (a [`LongTermStore`]) holds every tenant's records;
//! [`LongTermMemory::stored`](super::LongTermMemory::stored) gives the memory of one tenant,
//! which stores and recalls that tenant's records only (every query is scoped to the tenant: no
//! other tenant's record can come back, whatever the query). Records survive a restart: open
//! the same file again.
//!
//! What recall costs is bounded, whatever the size of the records and of other tenants' data:
//! - the full-text index holds each record's distinct words ([`index_terms`], at most
//!   [`MAX_INDEXED_TERMS`](super::MAX_INDEXED_TERMS)), not its text: ranking a record walks one instance per query word,
//!   however often a 20 KB record repeats it (term frequency is not used; BM25 keeps IDF and
//!   length normalization);
//! - the tenant is a column of the index, matched inside the FTS5 query, so other tenants'
//!   rows are skipped in the index and never ranked;
//! - at most [`MAX_CANDIDATES`] of the tenant's matching records (the newest) are ranked;
//! - once the tenant holds more records than that, query words found in more than half of its
//!   newest [`MAX_CANDIDATES`] records are dropped (BM25 gives such words next to no weight),
//!   keeping the rarest word if all are common, so the candidates are the records sharing a
//!   telling word; each word is counted in that sample only.
//!
//! Retention runs at every `remember`: records of the tenant older than `max_age` are deleted,
//! then the oldest beyond `max_records`.
//!
//! The file's schema version is SQLite's `user_version` (2): version 0 (the earlier full-text
//! index of whole texts) is migrated when opened, its index rebuilt from the stored records
//! (none is lost); version 1 loses its word-count table; a newer version is refused,
//! untouched.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};

use impresario_runtime::ledger_store::StoreFuture;

use super::long_term::{MemoryRecord, Recalled, RecordId};
use super::store::{
    index_terms, query_terms, recalled, telling, unix_ms, LongTermStore, Retention, MAX_CANDIDATES,
};
use super::MemoryError;

/// The schema version this build writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS memory (
        id INTEGER PRIMARY KEY,
        tenant TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        record TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS memory_by_tenant ON memory (tenant, at_ms);
    DROP TABLE IF EXISTS memory_text;
    CREATE VIRTUAL TABLE IF NOT EXISTS memory_terms USING fts5 (
        scope, terms, tokenize = 'unicode61'
    );
";

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
    /// Opens (creating if missing) the memory file at `path`, migrating a file of an earlier
    /// version (its records kept, its index rebuilt). A file of a newer version is refused
    /// ([`MemoryError::Storage`]) and left untouched.
    pub fn open(path: impl AsRef<Path>, retention: Retention) -> Result<Self, MemoryError> {
        let path = path.as_ref();
        let mut conn = Connection::open(path)
            .map_err(|e| storage(format!("cannot open {}: {e}", path.display())))?;
        migrate(&mut conn).map_err(|e| match e {
            MemoryError::Storage(why) => storage(format!("{}: {why}", path.display())),
            other => other,
        })?;
        Ok(MemoryDb {
            conn: Arc::new(Mutex::new(conn)),
            retention,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic under the lock leaves SQLite consistent (each statement is atomic).
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores `record` for `tenant`, then applies the retention policy to that tenant.
    fn insert(&self, tenant: &str, record: &MemoryRecord) -> Result<RecordId, MemoryError> {
        let json = serde_json::to_string(record).map_err(storage)?;
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(storage)?;
        tx.execute(
            "INSERT INTO memory (tenant, at_ms, record) VALUES (?1, ?2, ?3)",
            params![tenant, unix_ms(record.at), json],
        )
        .map_err(storage)?;
        let id = tx.last_insert_rowid();
        index(&tx, id, tenant, record)?;
        apply_retention(&tx, tenant, self.retention, SystemTime::now())?;
        tx.commit().map_err(storage)?;
        Ok(RecordId(u64::try_from(id).unwrap_or_default()))
    }

    /// The `k` records of `tenant` most relevant to `query` (FTS5 BM25 over the newest
    /// [`MAX_CANDIDATES`] matching records), best first; ties go to the newer record, then the
    /// later stored.
    fn search(&self, tenant: &str, query: &str, k: usize) -> Result<Vec<Recalled>, MemoryError> {
        let conn = self.lock();
        let scope = scope_token(tenant);
        let (terms, over_cap) = telling_terms(&conn, &scope, query)?;
        // Every word quoted, any of them matching, within the tenant's rows: no FTS5 syntax
        // from the query reaches the expression.
        let quoted: Vec<String> = terms.iter().map(|t| format!("\"{t}\"")).collect();
        let expression = format!("scope : \"{scope}\" AND terms : ({})", quoted.join(" OR "));
        let floor = if over_cap {
            candidates_floor(&conn, &expression)?
        } else {
            0 // At most `MAX_CANDIDATES` records: every match is a candidate.
        };
        let mut statement = conn
            .prepare_cached(
                "SELECT m.id, m.record, bm25(memory_terms, 0.0, 1.0) AS rank
                 FROM memory_terms JOIN memory m ON m.id = memory_terms.rowid
                 WHERE memory_terms MATCH ?1 AND memory_terms.rowid >= ?2
                 ORDER BY rank, m.at_ms DESC, m.id DESC LIMIT ?3",
            )
            .map_err(storage)?;
        let limit = i64::try_from(k).unwrap_or(i64::MAX);
        let rows = statement
            .query_map(params![expression, floor, limit], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, f64>(2)?,
                ))
            })
            .map_err(storage)?;
        rows.map(|row| {
            let (id, json, rank) = row.map_err(storage)?;
            // FTS5's bm25() is lower for better matches; ours is higher.
            recalled(id, &json, -rank)
        })
        .collect()
    }

    /// How many records `tenant` has.
    fn count(&self, tenant: &str) -> Result<usize, MemoryError> {
        self.lock()
            .query_row(
                "SELECT count(*) FROM memory WHERE tenant = ?1",
                [tenant],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| usize::try_from(n).unwrap_or_default())
            .map_err(storage)
    }
}

/// Each call runs SQLite on the calling thread, as the journal's readers do.
impl LongTermStore for MemoryDb {
    fn insert<'a>(
        &'a self,
        tenant: &'a str,
        record: &'a MemoryRecord,
    ) -> StoreFuture<'a, Result<RecordId, MemoryError>> {
        Box::pin(async move { MemoryDb::insert(self, tenant, record) })
    }

    fn search<'a>(
        &'a self,
        tenant: &'a str,
        query: &'a str,
        k: usize,
    ) -> StoreFuture<'a, Result<Vec<Recalled>, MemoryError>> {
        Box::pin(async move { MemoryDb::search(self, tenant, query, k) })
    }

    fn count<'a>(&'a self, tenant: &'a str) -> StoreFuture<'a, Result<usize, MemoryError>> {
        Box::pin(async move { MemoryDb::count(self, tenant) })
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
        "DELETE FROM memory_terms WHERE rowid IN (SELECT id FROM doomed);
         DELETE FROM memory WHERE id IN (SELECT id FROM doomed);",
    )
    .map_err(storage)
}

/// The oldest rowid among the newest [`MAX_CANDIDATES`] matches of `expression`, found without
/// ranking anything; `i64::MAX` when nothing matches.
fn candidates_floor(conn: &Connection, expression: &str) -> Result<i64, MemoryError> {
    let cap = i64::try_from(MAX_CANDIDATES).unwrap_or(i64::MAX);
    let floor = conn
        .prepare_cached(
            "SELECT min(rowid) FROM (SELECT rowid FROM memory_terms
             WHERE memory_terms MATCH ?1 ORDER BY rowid DESC LIMIT ?2)",
        )
        .and_then(|mut s| s.query_row(params![expression, cap], |r| r.get::<_, Option<i64>>(0)))
        .map_err(storage)?;
    Ok(floor.unwrap_or(i64::MAX))
}

/// Brings the file to [`SCHEMA_VERSION`] in one transaction: creates it, or rebuilds the index
/// of a version-0 file from its stored records. Refuses a newer version untouched.
fn migrate(conn: &mut Connection) -> Result<(), MemoryError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(storage)?;
    if version > SCHEMA_VERSION {
        return Err(storage(format!(
            "the memory file is of schema version {version}, newer than this build's \
             ({SCHEMA_VERSION}); left untouched: run the newer impresario, or point \
             memory.path at another file"
        )));
    }
    conn.execute_batch("PRAGMA journal_mode = WAL;")
        .map_err(storage)?;
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    let tx = conn.transaction().map_err(storage)?;
    // Version 1 counted words in an fts5vocab table; they are counted by tenant now.
    tx.execute_batch("DROP TABLE IF EXISTS memory_vocab;")
        .map_err(storage)?;
    if version == 0 {
        reindex(&tx)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(storage)?;
    tx.commit().map_err(storage)
}

/// Creates the tables, and indexes every stored record (a version-0 file indexed whole texts).
fn reindex(tx: &Connection) -> Result<(), MemoryError> {
    tx.execute_batch(SCHEMA).map_err(storage)?;
    let stored: Vec<(i64, String, String)> = {
        let mut all = tx
            .prepare("SELECT id, tenant, record FROM memory ORDER BY id")
            .map_err(storage)?;
        let rows = all
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(storage)?;
        rows.collect::<Result<_, _>>().map_err(storage)?
    };
    for (id, tenant, json) in stored {
        let record: MemoryRecord = serde_json::from_str(&json).map_err(|e| {
            storage(format!(
                "memory record {id} does not read back ({e}); nothing was migrated"
            ))
        })?;
        index(tx, id, &tenant, &record)?;
    }
    Ok(())
}

/// Indexes record `id` of `tenant`: its scope token and its distinct words.
fn index(
    conn: &Connection,
    id: i64,
    tenant: &str,
    record: &MemoryRecord,
) -> Result<(), MemoryError> {
    conn.execute(
        "INSERT INTO memory_terms (rowid, scope, terms) VALUES (?1, ?2, ?3)",
        params![id, scope_token(tenant), index_terms(record).join(" ")],
    )
    .map(drop)
    .map_err(storage)
}

/// The one word standing for `tenant` in the index: `t` and the hex of its bytes (distinct
/// tenants never share it, whatever their punctuation).
fn scope_token(tenant: &str) -> String {
    let mut token = String::with_capacity(1 + 2 * tenant.len());
    token.push('t');
    for byte in tenant.bytes() {
        token.push_str(&format!("{byte:02x}"));
    }
    token
}

/// The query's words ([`query_terms`]); once the tenant holds more than [`MAX_CANDIDATES`]
/// records, without those found in more than half of its newest [`MAX_CANDIDATES`] (see
/// [`telling`]). Each word is counted in that sample only: the cost does not grow with the
/// tenant's other records nor with other tenants'. Also says whether the tenant holds more
/// than [`MAX_CANDIDATES`] records.
fn telling_terms(
    conn: &Connection,
    scope: &str,
    query: &str,
) -> Result<(Vec<String>, bool), MemoryError> {
    let terms = query_terms(query);
    let tenant = format!("scope : \"{scope}\"");
    let cap = i64::try_from(MAX_CANDIDATES).unwrap_or(i64::MAX);
    // The oldest of the tenant's newest `cap` records; none if it has no more than `cap`.
    let floor: Option<i64> = conn
        .prepare_cached(
            "SELECT rowid FROM memory_terms WHERE memory_terms MATCH ?1
             ORDER BY rowid DESC LIMIT 1 OFFSET ?2",
        )
        .and_then(|mut s| s.query_row(params![tenant, cap], |r| r.get(0)).optional())
        .map_err(storage)?;
    let Some(floor) = floor else {
        return Ok((terms, false));
    };
    let mut count = conn
        .prepare_cached(
            "SELECT count(*) FROM memory_terms WHERE memory_terms MATCH ?1 AND rowid > ?2",
        )
        .map_err(storage)?;
    let counted = terms
        .into_iter()
        .map(|term| {
            let expression = format!("{tenant} AND terms : \"{term}\"");
            let n: i64 = count.query_row(params![expression, floor], |r| r.get(0))?;
            Ok((term, n))
        })
        .collect::<Result<Vec<_>, rusqlite::Error>>()
        .map_err(storage)?;
    Ok((telling(counted, cap), true))
}
