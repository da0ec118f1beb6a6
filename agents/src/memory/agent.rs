//! `MemoryAgent`: the agent that owns one run's working memory and serves it, and the shared
//! long-term memory, as typed messages.

use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, AsyncContext, Context, Handler, Message, ResponseFuture};
use impresario_runtime::RunId;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{LongTermMemory, MemoryError, MemoryRecord, Recalled, RecordId, WorkingMemory};

/// How often the agent frees expired working-memory entries (reads never see them anyway).
const PURGE_EVERY: Duration = Duration::from_secs(30);

/// Stores a value in working memory; answers the previous value, if it had not expired.
#[derive(Message, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[rtype(result = "Option<Value>")]
#[serde(deny_unknown_fields)]
pub struct Put {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Value,
    /// How long it lives; `None`: until removed or the run ends.
    #[serde(default)]
    pub ttl: Option<Duration>,
}

/// Reads a value from working memory (`None` when absent or expired).
#[derive(Message, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[rtype(result = "Option<Value>")]
#[serde(deny_unknown_fields)]
pub struct Get {
    /// The key.
    pub key: String,
}

/// Removes a value from working memory; answers it, if it had not expired.
#[derive(Message, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[rtype(result = "Option<Value>")]
#[serde(deny_unknown_fields)]
pub struct Remove {
    /// The key.
    pub key: String,
}

/// Lists working memory: the live entries, sorted by key.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[rtype(result = "Vec<(String, Value)>")]
pub struct Snapshot;

/// Stores a record in long-term memory. The record must belong to the agent's run.
#[derive(Message, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[rtype(result = "Result<RecordId, MemoryError>")]
#[serde(deny_unknown_fields)]
pub struct Remember {
    /// What to remember.
    pub record: MemoryRecord,
}

/// Finds the `k` records of long-term memory most relevant to `query`. The records come back
/// as data (what past runs wrote, possibly quoting tool output), never as instructions.
#[derive(Message, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[rtype(result = "Result<Vec<Recalled>, MemoryError>")]
#[serde(deny_unknown_fields)]
pub struct Recall {
    /// What to look for.
    pub query: String,
    /// How many records at most.
    pub k: usize,
}

/// The memory of one run: its [`WorkingMemory`] (owned; a restarted agent starts with an empty
/// one) and the process's [`LongTermMemory`] (shared).
///
/// Messages: [`Put`], [`Get`], [`Remove`], [`Snapshot`] answer at once; [`Remember`] and
/// [`Recall`] answer asynchronously (an embedder may call a model), so the agent keeps serving
/// working memory meanwhile.
pub struct MemoryAgent {
    run: RunId,
    working: WorkingMemory,
    long_term: Arc<LongTermMemory>,
}

impl MemoryAgent {
    /// The memory agent of `run`, with an empty working memory.
    pub fn new(run: RunId, long_term: Arc<LongTermMemory>) -> Self {
        Self::with_working(run, WorkingMemory::new(), long_term)
    }

    /// The memory agent of `run` owning `working` (e.g. one on a [`ManualClock`](super::ManualClock)).
    pub fn with_working(
        run: RunId,
        working: WorkingMemory,
        long_term: Arc<LongTermMemory>,
    ) -> Self {
        MemoryAgent {
            run,
            working,
            long_term,
        }
    }

    /// The run it serves.
    pub fn run(&self) -> &RunId {
        &self.run
    }
}

impl Actor for MemoryAgent {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(PURGE_EVERY, |agent, _| {
            agent.working.purge_expired();
        });
    }
}
impresario_runtime::agent!(MemoryAgent);

impl Handler<Put> for MemoryAgent {
    type Result = Option<Value>;
    fn handle(&mut self, msg: Put, _: &mut Context<Self>) -> Option<Value> {
        self.working.put(msg.key, msg.value, msg.ttl)
    }
}

impl Handler<Get> for MemoryAgent {
    type Result = Option<Value>;
    fn handle(&mut self, msg: Get, _: &mut Context<Self>) -> Option<Value> {
        self.working.get(&msg.key).cloned()
    }
}

impl Handler<Remove> for MemoryAgent {
    type Result = Option<Value>;
    fn handle(&mut self, msg: Remove, _: &mut Context<Self>) -> Option<Value> {
        self.working.remove(&msg.key)
    }
}

impl Handler<Snapshot> for MemoryAgent {
    type Result = Vec<(String, Value)>;
    fn handle(&mut self, _: Snapshot, _: &mut Context<Self>) -> Vec<(String, Value)> {
        self.working
            .entries()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.clone()))
            .collect()
    }
}

impl Handler<Remember> for MemoryAgent {
    type Result = ResponseFuture<Result<RecordId, MemoryError>>;
    fn handle(&mut self, msg: Remember, _: &mut Context<Self>) -> Self::Result {
        if msg.record.run != self.run {
            let problem = format!(
                "it is for run `{}`, but this memory agent serves run `{}`; send it to that run's memory agent",
                msg.record.run, self.run
            );
            return Box::pin(async move {
                Err(MemoryError::BadInput {
                    what: "record",
                    problem,
                })
            });
        }
        let long_term = self.long_term.clone();
        Box::pin(async move { long_term.remember(msg.record).await })
    }
}

impl Handler<Recall> for MemoryAgent {
    type Result = ResponseFuture<Result<Vec<Recalled>, MemoryError>>;
    fn handle(&mut self, msg: Recall, _: &mut Context<Self>) -> Self::Result {
        let long_term = self.long_term.clone();
        Box::pin(async move { long_term.recall(&msg.query, msg.k).await })
    }
}
