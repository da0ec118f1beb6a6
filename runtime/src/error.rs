//! Errors of the substrate. Each says what happened and what the caller can do about it.

use std::time::Duration;

use crate::agent_id::AgentId;

/// Why a message to an agent got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// The agent already has as many requests in flight as its limit allows; nothing was sent.
    #[error("agent {agent} is overloaded ({limit} requests in flight); nothing was sent: retry later or raise its in-flight limit")]
    Overloaded {
        /// The agent.
        agent: AgentId,
        /// Its in-flight limit.
        limit: usize,
    },
    /// No answer within the caller's timeout. The message may still be handled.
    #[error("agent {agent} did not answer within {after:?}; the message may still be handled")]
    Timeout {
        /// The agent.
        agent: AgentId,
        /// The timeout that expired.
        after: Duration,
    },
    /// The handler of this message panicked; the agent was stopped (and, if supervised, restarted).
    #[error("agent {agent} panicked while handling the message: {message}")]
    Panicked {
        /// The agent.
        agent: AgentId,
        /// The panic message.
        message: String,
    },
    /// The agent is being restarted by its supervisor; the message was not handled: retry.
    #[error("agent {agent} is restarting; the message was not handled: retry")]
    Restarting {
        /// The agent.
        agent: AgentId,
    },
    /// The agent has stopped for good; the message was not handled.
    #[error("agent {agent} has stopped; the message was not handled")]
    Stopped {
        /// The agent.
        agent: AgentId,
    },
    /// The agent, its run or its tenant was halted; the message was not handled.
    #[error("agent {agent} was halted ({reason}); the message was not handled")]
    Halted {
        /// The agent.
        agent: AgentId,
        /// Why it was halted (`operator`, `cost_ceiling`, ...).
        reason: String,
    },
}

impl AgentError {
    /// The agent the error is about.
    pub fn agent(&self) -> &AgentId {
        match self {
            AgentError::Overloaded { agent, .. }
            | AgentError::Timeout { agent, .. }
            | AgentError::Panicked { agent, .. }
            | AgentError::Restarting { agent }
            | AgentError::Stopped { agent }
            | AgentError::Halted { agent, .. } => agent,
        }
    }
}

/// Why an agent could not be spawned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpawnError {
    /// Another agent already has this id; stop it first or choose another key.
    #[error("an agent named {0} is already running; stop it first or choose another key")]
    AlreadyExists(AgentId),
    /// The runtime is shutting down or has stopped.
    #[error("the runtime is shutting down; no new agents can be spawned")]
    ShuttingDown,
    /// The placement hint names an arbiter that does not exist.
    #[error("placement names arbiter {index} but the runtime has {count} (indices 0..{count})")]
    NoSuchArbiter {
        /// The requested index.
        index: usize,
        /// How many arbiters there are.
        count: usize,
    },
}

/// Why a runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// `attach` was called on a thread that is not running an actix `System`.
    #[error("no actix System is running on this thread: call attach() from inside an actix System (e.g. in an actix-web main), or use start()")]
    NoActixSystem,
    /// The builder was asked for zero arbiters.
    #[error("a runtime needs at least one arbiter (got 0)")]
    ZeroArbiters,
    /// The operating system refused to start a thread.
    #[error("could not start the runtime thread: {0}")]
    Thread(#[from] std::io::Error),
    /// The runtime thread died while starting.
    #[error("the runtime thread exited while starting")]
    StartFailed,
}
