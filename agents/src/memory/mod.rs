//! Memory: a run's working memory, long-term memory across runs, and the context budget.
//!
//! - [`WorkingMemory`]: one run's key-value scratchpad, entries with an optional TTL.
//! - [`LongTermMemory`]: what runs learned ([`MemoryRecord`]: goal, text, outcome and why),
//!   shared by all runs, recalled by relevance: BM25 in process by default ([`rank`]), or the
//!   cosine similarity of an [`Embedder`]'s vectors.
//! - [`compact`]: keeps a run's context ([`ContextEntry`] list) within a [`ContextBudget`] by
//!   having a model summarize its older steps, through the LLM [`Client`] (so the call is
//!   budgeted on the ledger and stopped by the run's halt token).
//! - [`MemoryAgent`]: the agent that owns a run's working memory and serves both memories as
//!   typed messages.
//!
//! - [`LongTermStore`]: where long-term memory is kept across restarts, each tenant's records
//!   apart ([`LongTermMemory::stored`]). [`MemoryDb`]: in a SQLite file, searched with FTS5,
//!   bounded by a [`Retention`] policy (the default); `impresario_pg::memory::PgMemory`: in
//!   PostgreSQL.
//!
//! Not implemented: embedder ranking over a store (SQLite ranks by BM25, PostgreSQL by
//! `ts_rank`), hybrid
//! BM25 + vector ranking.
//!
//! [`WorkingMemory`]: crate::memory::WorkingMemory
//! [`LongTermMemory`]: crate::memory::LongTermMemory
//! [`MemoryRecord`]: crate::memory::MemoryRecord
//! [`rank`]: crate::memory::rank
//! [`Embedder`]: crate::memory::Embedder
//! [`compact`]: crate::memory::compact
//! [`ContextEntry`]: crate::memory::ContextEntry
//! [`ContextBudget`]: crate::memory::ContextBudget
//! [`Client`]: impresario_runtime::llm::Client
//! [`MemoryAgent`]: crate::memory::MemoryAgent
//! [`MemoryDb`]: crate::memory::MemoryDb
//! [`LongTermStore`]: crate::memory::LongTermStore
//! [`LongTermMemory::stored`]: crate::memory::LongTermMemory::stored
//! [`Retention`]: crate::memory::Retention

mod agent;
mod budget;
mod embed;
mod long_term;
mod persistent;
pub mod rank;
mod store;
mod working;

pub use agent::{Get, MemoryAgent, Put, Recall, Remember, Remove, Snapshot};
pub use budget::{
    compact, compact_via, estimate_tokens, Compaction, ContextBudget, ContextEntry, EntryKind,
};
pub use embed::{cosine, Embedder, HashingEmbedder};
pub use long_term::{LongTermMemory, MemoryRecord, Outcome, Recalled, RecordId};
pub use persistent::MemoryDb;
pub use store::{
    index_terms, query_terms, recalled, telling, unix_ms, LongTermStore, Retention, MAX_CANDIDATES,
    MAX_INDEXED_TERMS, MAX_QUERY_TERMS,
};
pub use working::{Clock, ManualClock, SystemClock, WorkingMemory};

use impresario_runtime::llm::LlmError;

/// What can go wrong with memory. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The embedding model or service failed (reported by an [`Embedder`]).
    #[error("the embedder failed: {0}; check the embedding model or service, then retry")]
    Embedder(String),
    /// The embedder returned a vector of the wrong length.
    #[error("the embedder returned a vector of {got} dimensions, but declares {expected}; fix the embedder's `dimensions()` or the model it calls")]
    Dimension {
        /// What [`Embedder::dimensions`] declares.
        expected: usize,
        /// What it returned.
        got: usize,
    },
    /// The summarizer's model call failed (halted, over a ceiling, provider error).
    #[error("the summarizer's model call failed, context left unchanged: {0}")]
    Llm(#[from] LlmError),
    /// The long-term memory store (a SQLite file, a PostgreSQL database) could not be read or
    /// written.
    #[error("the long-term memory store failed: {0}; check the memory file (path, permissions, free space) or the database server")]
    Storage(String),
    /// Input that cannot be used, named.
    #[error("bad {what}: {problem}")]
    BadInput {
        /// What was wrong: `query`, `record`, `embedding`, `summary`, ...
        what: &'static str,
        /// How, and what to do instead.
        problem: String,
    },
}
