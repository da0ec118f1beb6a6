//! Long-term memory in PostgreSQL ([`PgMemory`], a `LongTermStore`): every record under its
//! tenant, found again by full-text search, bounded by the same retention as the SQLite file.
//!
//! - A row of `memory_records` (migration 6 of [`crate::schema::MIGRATIONS`]) holds a record
//!   (JSON), its tenant and its time, and the words it is indexed by (`index_terms`: its
//!   distinct words, at most `MAX_INDEXED_TERMS`, so ranking a 20 KB record costs no more than
//!   a short one); `search` is a `tsvector`
//!   generated from them (the `simple` configuration: lowercase words, no stemming, as the
//!   SQLite index), under a GIN index.
//! - Every query has `WHERE tenant = $1`: no other tenant's row is counted, ranked or returned.
//! - Recall ranks with `ts_rank` at most `MAX_CANDIDATES` of the tenant's matching records (the
//!   newest). Once the tenant holds more records than that, query words found in more than half
//!   of its newest `MAX_CANDIDATES` records are left out of the match (keeping the rarest if
//!   all are), so the candidates are the records sharing a telling word; each word is counted
//!   in that sample only (migration 8's index finds it).
//! - Retention (`Retention`: count and age per tenant) runs in the transaction of each insert.
//! - Every operation runs on the database's I/O thread and is retried while the server is
//!   unreachable; an insert retried after a lost commit answer first looks for its record, so
//!   it is stored once.

use deadpool_postgres::Object;
use impresario_agents::memory::{
    index_terms, query_terms, recalled, telling, unix_ms, LongTermStore, MemoryError, MemoryRecord,
    Recalled, RecordId, Retention, MAX_CANDIDATES,
};
use impresario_runtime::ledger_store::StoreFuture;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::database::Database;
use crate::ledger_retry::{self, Step};
use crate::PgError;

/// Long-term memory in PostgreSQL (see the module docs). Cheap to clone.
#[derive(Clone, Debug)]
pub struct PgMemory {
    db: Database,
    retention: Retention,
}

impl PgMemory {
    /// Long-term memory in `db` (connected and migrated), each tenant kept to `retention`.
    pub fn new(db: Database, retention: Retention) -> Self {
        PgMemory { db, retention }
    }

    /// Connects to `url` ([`Database::connect`]: the schema is checked and migrated). Blocks:
    /// call it at start, or from `spawn_blocking`.
    pub fn connect(url: &str, retention: Retention) -> Result<Self, PgError> {
        Ok(PgMemory::new(Database::connect(url)?, retention))
    }

    async fn run<S: Step>(&self, step: S) -> Result<S::Out, MemoryError> {
        ledger_retry::run(&self.db, step)
            .await
            .map_err(|e| MemoryError::Storage(e.message))
    }
}

impl LongTermStore for PgMemory {
    fn insert<'a>(
        &'a self,
        tenant: &'a str,
        record: &'a MemoryRecord,
    ) -> StoreFuture<'a, Result<RecordId, MemoryError>> {
        Box::pin(async move {
            let json = serde_json::to_string(record)
                .map_err(|e| MemoryError::Storage(format!("a record does not serialize: {e}")))?;
            let insert = Insert {
                tenant: tenant.to_owned(),
                at_ms: unix_ms(record.at),
                json,
                terms: index_terms(record).join(" "),
                retention: self.retention,
            };
            let id = self.run(insert).await?;
            Ok(RecordId(u64::try_from(id).unwrap_or_default()))
        })
    }

    fn search<'a>(
        &'a self,
        tenant: &'a str,
        query: &'a str,
        k: usize,
    ) -> StoreFuture<'a, Result<Vec<Recalled>, MemoryError>> {
        Box::pin(async move {
            let search = Search {
                tenant: tenant.to_owned(),
                terms: query_terms(query),
                k: i64::try_from(k).unwrap_or(i64::MAX),
            };
            let rows = self.run(search).await?;
            rows.into_iter()
                .map(|(id, json, rank)| recalled(id, &json, f64::from(rank)))
                .collect()
        })
    }

    fn count<'a>(&'a self, tenant: &'a str) -> StoreFuture<'a, Result<usize, MemoryError>> {
        Box::pin(async move {
            let count = Count {
                tenant: tenant.to_owned(),
            };
            let n = self.run(count).await?;
            Ok(usize::try_from(n).unwrap_or_default())
        })
    }
}

/// Stores one record, then applies the tenant's retention, in one transaction.
struct Insert {
    tenant: String,
    at_ms: i64,
    json: String,
    terms: String,
    retention: Retention,
}

impl Step for Insert {
    type Out = i64;

    fn what(&self) -> String {
        format!(
            "store a long-term memory record of tenant {:?}",
            self.tenant
        )
    }

    async fn once(&self, client: &mut Object, attempt: u32) -> Result<i64, tokio_postgres::Error> {
        let tx = client.transaction().await?;
        // A retry after a lost commit answer: the first attempt may have stored it.
        if attempt > 0 {
            let stored = tx
                .query_opt(
                    "SELECT id FROM memory_records WHERE tenant = $1 AND record = $2",
                    &[&self.tenant, &self.json],
                )
                .await?;
            if let Some(row) = stored {
                return Ok(row.get(0));
            }
        }
        let id: i64 = tx
            .query_one(
                "INSERT INTO memory_records (tenant, at_ms, record, terms)
                 VALUES ($1, $2, $3, $4) RETURNING id",
                &[&self.tenant, &self.at_ms, &self.json, &self.terms],
            )
            .await?
            .get(0);
        if let Some(age) = self.retention.max_age {
            let cutoff = unix_ms(SystemTime::now().checked_sub(age).unwrap_or(UNIX_EPOCH));
            tx.execute(
                "DELETE FROM memory_records WHERE tenant = $1 AND at_ms < $2",
                &[&self.tenant, &cutoff],
            )
            .await?;
        }
        if let Some(max) = self.retention.max_records {
            let max = i64::try_from(max).unwrap_or(i64::MAX);
            tx.execute(
                "DELETE FROM memory_records WHERE tenant = $1 AND id IN (
                     SELECT id FROM memory_records WHERE tenant = $1
                     ORDER BY at_ms DESC, id DESC OFFSET $2)",
                &[&self.tenant, &max],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(id)
    }
}

/// The `k` best of the tenant's newest matching records: (id, record, rank).
struct Search {
    tenant: String,
    terms: Vec<String>,
    k: i64,
}

impl Step for Search {
    type Out = Vec<(i64, String, f32)>;

    fn what(&self) -> String {
        format!("recall long-term memory of tenant {:?}", self.tenant)
    }

    async fn once(&self, client: &mut Object, _: u32) -> Result<Self::Out, tokio_postgres::Error> {
        let terms = telling_terms(client, &self.tenant, &self.terms).await?;
        // Each word a quoted lexeme, any of them matching: no tsquery syntax from the query
        // reaches the expression (words are letters and digits; quotes are doubled anyway).
        let quoted: Vec<String> = terms
            .iter()
            .map(|t| format!("'{}'", t.replace('\'', "''")))
            .collect();
        let rows = client
            .query(
                "WITH q AS (SELECT to_tsquery('simple', $2) AS q),
                 candidates AS (
                     SELECT id, at_ms, record, search FROM memory_records, q
                     WHERE tenant = $1 AND search @@ q.q
                     ORDER BY id DESC LIMIT $3)
                 SELECT id, record, ts_rank(search, q.q) AS rank FROM candidates, q
                 ORDER BY rank DESC, at_ms DESC, id DESC LIMIT $4",
                &[&self.tenant, &quoted.join(" | "), &cap(), &self.k],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }
}

/// `MAX_CANDIDATES` as a query parameter.
fn cap() -> i64 {
    i64::try_from(MAX_CANDIDATES).unwrap_or(i64::MAX)
}

/// `terms`, without those found in more than half of the tenant's newest `MAX_CANDIDATES`
/// records once it holds more than that (see `telling`). Each word is counted in that sample
/// only: the cost does not grow with the tenant's other records.
async fn telling_terms(
    client: &Object,
    tenant: &str,
    terms: &[String],
) -> Result<Vec<String>, tokio_postgres::Error> {
    // The oldest of the tenant's newest `cap` records; none if it has no more than `cap`.
    let floor = client
        .query_opt(
            "SELECT id FROM memory_records WHERE tenant = $1 ORDER BY id DESC OFFSET $2 LIMIT 1",
            &[&tenant, &cap()],
        )
        .await?;
    let Some(floor) = floor.map(|r| r.get::<_, i64>(0)) else {
        return Ok(terms.to_vec());
    };
    let rows = client
        .query(
            "SELECT t, (SELECT count(*) FROM memory_records
                        WHERE tenant = $1 AND id > $3 AND search @@ plainto_tsquery('simple', t))
             FROM unnest($2::text[]) WITH ORDINALITY AS u(t, n) ORDER BY n",
            &[&tenant, &terms, &floor],
        )
        .await?;
    let counted = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    Ok(telling(counted, cap()))
}

/// How many records a tenant has.
struct Count {
    tenant: String,
}

impl Step for Count {
    type Out = i64;

    fn what(&self) -> String {
        format!("count long-term memory records of tenant {:?}", self.tenant)
    }

    async fn once(&self, client: &mut Object, _: u32) -> Result<i64, tokio_postgres::Error> {
        let row = client
            .query_one(
                "SELECT count(*) FROM memory_records WHERE tenant = $1",
                &[&self.tenant],
            )
            .await?;
        Ok(row.get(0))
    }
}
