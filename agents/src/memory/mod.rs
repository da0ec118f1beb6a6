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
//! - [`MemoryDb`]: long-term memory in a SQLite file, each tenant's records apart
//!   ([`MemoryDb::tenant`]), searched with FTS5, bounded by a [`Retention`] policy.
//!
//! Not implemented: embedder ranking over the SQLite file (it ranks by BM25 only), hybrid
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
//! [`MemoryDb::tenant`]: crate::memory::MemoryDb::tenant
//! [`Retention`]: crate::memory::Retention

mod agent;
mod budget;
mod embed;
mod long_term;
mod persistent;
pub mod rank;
mod working;

pub use agent::{Get, MemoryAgent, Put, Recall, Remember, Remove, Snapshot};
pub use budget::{
    compact, compact_via, estimate_tokens, Compaction, ContextBudget, ContextEntry, EntryKind,
};
pub use embed::{cosine, Embedder, HashingEmbedder};
pub use long_term::{LongTermMemory, MemoryRecord, Outcome, Recalled, RecordId};
pub use persistent::{
    index_terms, MemoryDb, Retention, MAX_CANDIDATES, MAX_INDEXED_TERMS, MAX_QUERY_TERMS,
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
    /// The memory file could not be read or written.
    #[error("the long-term memory file failed: {0}; check its path, permissions and free space")]
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
