//! Long-term memory: what runs learned, kept across runs, and found again by relevance.

use std::cmp::Ordering;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use impresario_runtime::RunId;
use serde::{Deserialize, Serialize};

use super::embed::{cosine, Embedder};
use super::rank::{best_first, tokenize, Bm25Index};
use super::store::LongTermStore;
use super::MemoryError;

/// How the run a record comes from ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The goal was reached.
    Succeeded,
    /// The run failed.
    Failed,
    /// The run was halted (by an operator, a ceiling or a deadline).
    Halted,
}

impl Outcome {
    /// The outcome as one lowercase word, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Halted => "halted",
        }
    }
}

/// One thing a run learned: what was tried for which goal, how it ended, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryRecord {
    /// The run it comes from.
    pub run: RunId,
    /// That run's goal.
    pub goal: String,
    /// What is worth remembering (approach, result, facts found).
    pub text: String,
    /// How the run ended.
    pub outcome: Outcome,
    /// Why it ended so (the error, the halt reason, what made it work).
    pub why: String,
    /// Free labels, e.g. the tools used.
    #[serde(default)]
    pub tags: Vec<String>,
    /// When it was remembered; ties in relevance go to the newer record.
    pub at: SystemTime,
}

impl MemoryRecord {
    /// The text retrieval matches against: goal, text, outcome, why and tags, one per line.
    pub fn search_text(&self) -> String {
        let mut s = format!(
            "{}\n{}\n{}\n{}",
            self.goal,
            self.text,
            self.outcome.as_str(),
            self.why
        );
        for tag in &self.tags {
            s.push('\n');
            s.push_str(tag);
        }
        s
    }
}

/// Identifies a record within one [`LongTermMemory`]: `0, 1, 2, ...` in the order remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RecordId(pub u64);

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "memory-{}", self.0)
    }
}

/// A record found by [`LongTermMemory::recall`], with its relevance. Its text is data a past
/// run wrote (and may quote tool output): show it to a model as data, never as instructions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recalled {
    /// The record's id.
    pub id: RecordId,
    /// The record.
    pub record: MemoryRecord,
    /// Relevance: the BM25 score (`> 0`, unbounded), or the cosine similarity (`-1..=1`) with
    /// an embedder. Higher is more relevant; compare scores of one memory only.
    pub score: f64,
}

/// How records are ranked; fixed when the memory is built.
enum Ranking {
    Bm25,
    Cosine(Arc<dyn Embedder>),
}

/// The records and their index: `bm25` under [`Ranking::Bm25`], `vectors` (one per record,
/// same position) under [`Ranking::Cosine`]; the other stays empty.
#[derive(Default)]
struct Store {
    records: Vec<MemoryRecord>,
    bm25: Bm25Index,
    vectors: Vec<Vec<f32>>,
    /// The newest `at` of the records up to each position (`latest[i]`: of records `0..=i`),
    /// so BM25 recall knows when no older record can win a tie.
    latest: Vec<SystemTime>,
}

/// Memory across runs, shared by every run of a process (`Arc<LongTermMemory>`; all methods
/// take `&self`).
///
/// By default ([`new`](Self::new)) records are ranked by BM25 on their
/// [`search_text`](MemoryRecord::search_text), in process, with no external service. With an
/// [`Embedder`] ([`with_embedder`](Self::with_embedder)) they are ranked by the cosine
/// similarity of their embedding to the query's. The embedder is fixed when the memory is
/// built, so every record is embedded by the same model when it is remembered and the query by
/// it when recalling: vectors are always comparable. To change embedders, build a new memory
/// and remember the records into it again (which embeds them all with the new one).
///
/// Ties rank the newer record (`at`) first, then the later remembered (higher id).
///
/// Built with [`new`](Self::new) or [`with_embedder`](Self::with_embedder), records live in
/// this process only (embedded use without a file; tests). [`stored`](Self::stored) gives one
/// tenant's memory kept in a [`LongTermStore`] (a SQLite file, PostgreSQL; ranked by the
/// store, with its retention), which survives a restart.
pub struct LongTermMemory {
    ranking: Ranking,
    store: RwLock<Store>,
    /// Records kept in a store under this tenant instead of `store` (ranked by the store).
    stored: Option<(Arc<dyn LongTermStore>, String)>,
}

impl fmt::Debug for LongTermMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ranking = match &self.ranking {
            Ranking::Bm25 => "bm25".to_string(),
            Ranking::Cosine(embedder) => format!("cosine, {} dimensions", embedder.dimensions()),
        };
        let mut debug = f.debug_struct("LongTermMemory");
        match &self.stored {
            Some((store, tenant)) => debug.field("store", store).field("tenant", tenant),
            None => debug
                .field("records", &self.read().records.len())
                .field("ranking", &ranking),
        };
        debug.finish()
    }
}

impl Default for LongTermMemory {
    fn default() -> Self {
        Self::new()
    }
}

impl LongTermMemory {
    /// An empty memory ranked by BM25.
    pub fn new() -> Self {
        Self::with_ranking(Ranking::Bm25)
    }

    /// An empty memory ranked by cosine similarity of `embedder`'s vectors.
    pub fn with_embedder(embedder: Arc<dyn Embedder>) -> Self {
        Self::with_ranking(Ranking::Cosine(embedder))
    }

    fn with_ranking(ranking: Ranking) -> Self {
        LongTermMemory {
            ranking,
            store: RwLock::default(),
            stored: None,
        }
    }

    /// The memory of `tenant`, kept in `store`: it stores, counts and recalls `tenant`'s
    /// records only, ranked by the store (BM25 in SQLite, `ts_rank` in PostgreSQL).
    pub fn stored(store: Arc<dyn LongTermStore>, tenant: impl Into<String>) -> Self {
        LongTermMemory {
            stored: Some((store, tenant.into())),
            ..Self::new()
        }
    }

    // The lock is never held across an await or a call out of this module, so a poisoned
    // lock can only come from a panic inside our own bookkeeping, which leaves it consistent.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Store> {
        self.store.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Store> {
        self.store.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `record` and indexes it (embedding it first, with an embedder).
    ///
    /// Rejected, with nothing stored: a record whose goal, text and why are all blank
    /// ([`MemoryError::BadInput`]), an embedder failure or an embedding of the wrong shape.
    pub async fn remember(&self, record: MemoryRecord) -> Result<RecordId, MemoryError> {
        if [&record.goal, &record.text, &record.why]
            .iter()
            .all(|s| s.trim().is_empty())
        {
            return Err(MemoryError::BadInput {
                what: "record",
                problem: "goal, text and why are all blank; there is nothing to remember".into(),
            });
        }
        if let Some((store, tenant)) = &self.stored {
            return store.insert(tenant, &record).await;
        }
        let text = record.search_text();
        let vector = match &self.ranking {
            Ranking::Bm25 => None,
            Ranking::Cosine(embedder) => Some(embed_one(embedder.as_ref(), text.clone()).await?),
        };
        let mut store = self.write();
        let id = RecordId(store.records.len() as u64);
        match vector {
            None => {
                store.bm25.add(&text);
            }
            Some(v) => store.vectors.push(v),
        }
        let latest = store.latest.last().map_or(record.at, |l| record.at.max(*l));
        store.latest.push(latest);
        store.records.push(record);
        Ok(id)
    }

    /// The `k` records most relevant to `query`, best first. Only records that share a word
    /// with the query are returned under BM25; with an embedder, the `k` nearest are.
    ///
    /// An empty query, or (under BM25) one with no letters or digits, is
    /// [`MemoryError::BadInput`].
    pub async fn recall(&self, query: &str, k: usize) -> Result<Vec<Recalled>, MemoryError> {
        if query.trim().is_empty() {
            return Err(MemoryError::BadInput {
                what: "query",
                problem: "is empty; say what to look for".into(),
            });
        }
        let query_vector = match &self.ranking {
            Ranking::Cosine(embedder) => {
                Some(embed_one(embedder.as_ref(), query.to_owned()).await?)
            }
            Ranking::Bm25 => {
                if tokenize(query).next().is_none() {
                    return Err(MemoryError::BadInput {
                        what: "query",
                        problem: format!(
                            "{query:?} has no letters or digits, so it matches no record"
                        ),
                    });
                }
                None
            }
        };
        if k == 0 {
            return Ok(Vec::new());
        }
        if let Some((store, tenant)) = &self.stored {
            return store.search(tenant, query, k).await;
        }
        let store = self.read();
        let order = rank_order(&store.records);
        let best = match &query_vector {
            None => {
                // Records up to `newest` may win a tie with `kth` if one of them is newer.
                let tie = |newest: u32, kth: &(u32, f64)| {
                    store.latest[newest as usize] > store.records[kth.0 as usize].at
                };
                store.bm25.top(query, k, order, tie)
            }
            Some(q) => {
                let scored = store.vectors.iter().enumerate();
                let scored = scored.map(|(i, v)| (i as u32, cosine(q, v))).collect();
                best_first(scored, k, order)
            }
        };
        Ok(best
            .into_iter()
            .map(|(i, score)| Recalled {
                id: RecordId(u64::from(i)),
                record: store.records[i as usize].clone(),
                score,
            })
            .collect())
    }

    /// How many records are stored (the tenant's, in a store).
    pub async fn len(&self) -> Result<usize, MemoryError> {
        match &self.stored {
            Some((store, tenant)) => store.count(tenant).await,
            None => Ok(self.read().records.len()),
        }
    }

    /// Whether no record is stored.
    pub async fn is_empty(&self) -> Result<bool, MemoryError> {
        Ok(self.len().await? == 0)
    }
}

/// Embeds one text and checks the answer's shape.
async fn embed_one(embedder: &dyn Embedder, text: String) -> Result<Vec<f32>, MemoryError> {
    let expected = embedder.dimensions();
    let texts = [text];
    let mut vectors = embedder.embed(&texts).await?;
    if vectors.len() != 1 {
        return Err(MemoryError::BadInput {
            what: "embedding",
            problem: format!(
                "the embedder returned {} vectors for 1 text; it must return one per text",
                vectors.len()
            ),
        });
    }
    let vector = vectors.pop().expect("one vector");
    if vector.len() != expected {
        return Err(MemoryError::Dimension {
            expected,
            got: vector.len(),
        });
    }
    if let Some(i) = vector.iter().position(|x| !x.is_finite()) {
        return Err(MemoryError::BadInput {
            what: "embedding",
            problem: format!(
                "coordinate {i} is {}; every coordinate must be finite",
                vector[i]
            ),
        });
    }
    Ok(vector)
}

/// How recalled records rank, best first: higher score, then newer `at`, then higher id.
fn rank_order(records: &[MemoryRecord]) -> impl Fn(&(u32, f64), &(u32, f64)) -> Ordering + '_ {
    |a, b| {
        b.1.total_cmp(&a.1)
            .then_with(|| records[b.0 as usize].at.cmp(&records[a.0 as usize].at))
            .then_with(|| b.0.cmp(&a.0))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn record(goal: &str, text: &str, outcome: Outcome, why: &str, secs: u64) -> MemoryRecord {
        MemoryRecord {
            run: RunId::new(format!("run-{secs}")),
            goal: goal.into(),
            text: text.into(),
            outcome,
            why: why.into(),
            tags: Vec::new(),
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        }
    }

    #[test]
    fn recall_breaks_ties_by_newer_then_id() {
        let records = vec![
            record("a", "", Outcome::Succeeded, "", 10),
            record("b", "", Outcome::Succeeded, "", 30),
            record("c", "", Outcome::Succeeded, "", 30),
            record("d", "", Outcome::Succeeded, "", 20),
        ];
        let scored = vec![(0, 1.0), (1, 1.0), (2, 1.0), (3, 1.0)];
        let ids: Vec<u32> = best_first(scored.clone(), 4, rank_order(&records))
            .into_iter()
            .map(|(i, _)| i)
            .collect();
        assert_eq!(ids, [2, 1, 3, 0]);
        let ids: Vec<u32> = best_first(scored, 2, rank_order(&records))
            .into_iter()
            .map(|(i, _)| i)
            .collect();
        assert_eq!(ids, [2, 1], "selection keeps the same order");
        let mixed = vec![(0, 3.0), (1, 0.5), (2, 2.0)];
        assert_eq!(
            best_first(mixed, 2, rank_order(&records)),
            [(0, 3.0), (2, 2.0)]
        );
    }

    #[test]
    fn recall_ranks_the_newest_first_when_records_come_out_of_time_order() {
        let memory = LongTermMemory::new();
        let remember = |secs| {
            let record = record("deploy", "same text", Outcome::Succeeded, "", secs);
            futures_util::FutureExt::now_or_never(memory.remember(record))
                .expect("in-process memory does not wait")
                .unwrap()
        };
        // Remembered newest first (imported, say): the earliest remembered is the newest.
        for secs in (0..50).rev() {
            remember(secs);
        }
        let recall = |k| {
            futures_util::FutureExt::now_or_never(memory.recall("deploy", k))
                .expect("in-process memory does not wait")
                .unwrap()
        };
        let ids: Vec<u64> = recall(2).iter().map(|r| r.id.0).collect();
        assert_eq!(ids, [0, 1], "newest `at` first, not the last remembered");
        // Back in time order from here on: the newest is the last remembered.
        remember(100);
        assert_eq!(recall(1)[0].id, RecordId(50));
    }

    #[test]
    fn recall_of_equal_records_a_little_out_of_time_order_is_the_newest() {
        let memory = LongTermMemory::new();
        // As concurrent runs remember: now and then a record a little older than the last.
        let secs = |i: u64| i * 2 + if i.is_multiple_of(7) { 9 } else { 0 };
        for i in 0..300 {
            let record = record("deploy", "same text", Outcome::Succeeded, "", secs(i));
            futures_util::FutureExt::now_or_never(memory.remember(record))
                .expect("in-process memory does not wait")
                .unwrap();
        }
        let mut expected: Vec<u64> = (0..300).collect();
        expected.sort_by_key(|&i| std::cmp::Reverse((secs(i), i)));
        for k in [1, 3, 10] {
            let recalled = futures_util::FutureExt::now_or_never(memory.recall("deploy", k))
                .expect("in-process memory does not wait")
                .unwrap();
            let ids: Vec<u64> = recalled.iter().map(|r| r.id.0).collect();
            assert_eq!(ids, expected[..k], "k {k}");
        }
    }

    #[test]
    fn outcome_serializes_snake_case() {
        assert_eq!(
            serde_json::to_string(&Outcome::Succeeded).unwrap(),
            "\"succeeded\""
        );
        assert_eq!(
            serde_json::from_str::<Outcome>("\"halted\"").unwrap(),
            Outcome::Halted
        );
        for o in [Outcome::Succeeded, Outcome::Failed, Outcome::Halted] {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
        }
    }
}
