//! The seam to where long-term memory is kept across restarts: [`LongTermStore`], one store
//! for every tenant, each tenant's records apart. [`MemoryDb`](super::MemoryDb) keeps them in
//! a SQLite file (the default); `impresario_pg::memory::PgMemory` in PostgreSQL.
//!
//! Both backends bound what a recall costs the same way, with the helpers here: a record is
//! indexed by its distinct words ([`index_terms`], at most [`MAX_INDEXED_TERMS`]), a query
//! matches with at most [`MAX_QUERY_TERMS`] of its words ([`query_terms`]), and at most
//! [`MAX_CANDIDATES`] of the tenant's matching records are ranked.

use std::collections::HashSet;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use impresario_runtime::ledger_store::StoreFuture;

use super::long_term::{MemoryRecord, Recalled, RecordId};
use super::rank::tokenize;
use super::MemoryError;

/// Recall matches at most this many distinct words of its query (the first ones).
pub const MAX_QUERY_TERMS: usize = 32;

/// A record is indexed by at most this many distinct words (the first ones of its
/// [`search_text`](MemoryRecord::search_text)).
pub const MAX_INDEXED_TERMS: usize = 2_000;

/// Recall ranks at most this many of the tenant's matching records: the newest, once the
/// words most records share are left out of the query (see each backend).
pub const MAX_CANDIDATES: usize = 1_000;

/// How much long-term memory each tenant keeps (applied by every store at each insert).
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

/// Long-term memory kept outside the process, for every tenant. Every method is scoped by
/// `tenant`: no record of another tenant is counted, ranked or returned, whatever the query.
/// Record ids are the store's own (unique in the store, growing in the order stored).
pub trait LongTermStore: fmt::Debug + Send + Sync + 'static {
    /// Stores `record` for `tenant`, then applies the store's retention to that tenant.
    fn insert<'a>(
        &'a self,
        tenant: &'a str,
        record: &'a MemoryRecord,
    ) -> StoreFuture<'a, Result<RecordId, MemoryError>>;

    /// The `k` (`> 0`) records of `tenant` most relevant to `query` (which has a letter or a
    /// digit), best first; among equal scores the newer record (`at`), then the later stored.
    fn search<'a>(
        &'a self,
        tenant: &'a str,
        query: &'a str,
        k: usize,
    ) -> StoreFuture<'a, Result<Vec<Recalled>, MemoryError>>;

    /// How many records `tenant` has.
    fn count<'a>(&'a self, tenant: &'a str) -> StoreFuture<'a, Result<usize, MemoryError>>;
}

/// The words a record is indexed by: the distinct words of its
/// [`search_text`](MemoryRecord::search_text), in order, at most [`MAX_INDEXED_TERMS`].
pub fn index_terms(record: &MemoryRecord) -> Vec<String> {
    distinct(tokenize(&record.search_text()), MAX_INDEXED_TERMS)
}

/// The words a query matches with: its distinct words, in order, at most [`MAX_QUERY_TERMS`].
pub fn query_terms(query: &str) -> Vec<String> {
    distinct(tokenize(query), MAX_QUERY_TERMS)
}

/// The first `max` distinct items of `words`, in order.
fn distinct(words: impl Iterator<Item = String>, max: usize) -> Vec<String> {
    let mut seen = HashSet::new();
    words.filter(|w| seen.insert(w.clone())).take(max).collect()
}

/// The words of `counted` (each with the number of records of a sample of `sample` that hold
/// it) found in at most half of the sample, in order; if every word is in more, the rarest.
/// Such common words weigh next to nothing in a ranking, yet would make nearly every record a
/// candidate.
pub fn telling(counted: Vec<(String, i64)>, sample: i64) -> Vec<String> {
    let rarest = counted.iter().map(|(_, n)| *n).min().unwrap_or(0);
    counted
        .into_iter()
        .filter(|(_, n)| *n * 2 <= sample || *n == rarest)
        .map(|(term, _)| term)
        .collect()
}

/// A stored row read back: record `id`'s JSON with its `score` (higher is more relevant).
/// JSON that does not read back is [`MemoryError::Storage`], naming the record.
pub fn recalled(id: i64, json: &str, score: f64) -> Result<Recalled, MemoryError> {
    let record = serde_json::from_str(json)
        .map_err(|e| MemoryError::Storage(format!("memory record {id} does not read back: {e}")))?;
    Ok(Recalled {
        id: RecordId(u64::try_from(id).unwrap_or_default()),
        record,
        score,
    })
}

/// `at` in milliseconds since the Unix epoch, as stores keep a record's time (0 before it).
pub fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
