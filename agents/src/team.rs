//! Custom agents in a run's team. A user writes an ordinary agent and adds it to a run; it is
//! started under the run's supervisor like the built-in ones. A *reviewer* also sees every plan
//! before it is executed and may send it back with feedback (a critic).

use std::sync::Arc;

use actix::prelude::*;
use futures_util::future::BoxFuture;
use impresario_runtime::{Agent, AgentError, AgentId, RunId, RuntimeHandle};
use impresario_supervisor::ChildSpec;
use serde::{Deserialize, Serialize};

use crate::plan::Plan;

/// Asks a reviewer about a plan before it is executed.
#[derive(Message, Debug, Clone, Serialize, Deserialize)]
#[rtype(result = "Verdict")]
pub struct ReviewPlan {
    /// The run's goal.
    pub goal: String,
    /// The plan.
    pub plan: Plan,
}

/// A reviewer's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Execute it.
    Approve,
    /// Plan again, taking this into account.
    Revise {
        /// What to change.
        feedback: String,
    },
}

pub(crate) type Review = dyn Fn(&RuntimeHandle, &AgentId, ReviewPlan) -> BoxFuture<'static, Result<Verdict, AgentError>>
    + Send
    + Sync;

/// One custom member of a run's team.
#[derive(Clone)]
pub(crate) struct Member {
    pub(crate) kind: String,
    spec: Arc<dyn Fn(AgentId) -> ChildSpec + Send + Sync>,
    pub(crate) review: Option<Arc<Review>>,
}

impl Member {
    /// The member's id in a run: its kind, keyed by the run.
    pub(crate) fn id(&self, run: &RunId) -> AgentId {
        AgentId::new(self.kind.clone(), run.to_string())
    }

    pub(crate) fn child_spec(&self, run: &RunId) -> ChildSpec {
        (self.spec)(self.id(run))
    }
}

/// The custom agents to add to a run. Each gets the id `<kind>/<run id>`.
#[derive(Clone, Default)]
pub struct Team {
    pub(crate) members: Vec<Member>,
}

impl Team {
    /// No custom agents.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an agent of `kind` built by `factory` (fresh on every restart). Reach it through the
    /// runtime's directory by its id.
    pub fn member<A, F>(mut self, kind: &str, factory: F) -> Self
    where
        A: Agent,
        F: Fn() -> A + Send + Sync + Clone + 'static,
    {
        self.members.push(Member {
            kind: kind.to_owned(),
            spec: Arc::new(move |id| ChildSpec::agent(id, factory.clone())),
            review: None,
        });
        self
    }

    /// Adds a reviewer: an agent that handles [`ReviewPlan`] and sees every plan before it runs.
    pub fn reviewer<A, F>(mut self, kind: &str, factory: F) -> Self
    where
        A: Agent + Handler<ReviewPlan>,
        F: Fn() -> A + Send + Sync + Clone + 'static,
    {
        let review: Arc<Review> = Arc::new(|runtime: &RuntimeHandle, id: &AgentId, request| {
            let reviewer = runtime.directory().lookup::<A>(id);
            let id = id.clone();
            Box::pin(async move {
                match reviewer {
                    Some(reviewer) => reviewer.ask(request).await,
                    None => Err(AgentError::Stopped { agent: id }),
                }
            })
        });
        self.members.push(Member {
            kind: kind.to_owned(),
            spec: Arc::new(move |id| ChildSpec::agent(id, factory.clone())),
            review: Some(review),
        });
        self
    }
}
