//! The supervision tree of a run, as the runtime knows it: the orchestrator's root supervisor,
//! the run's tenant supervisor, the run's supervisor (`run/<id>`), and the run's agents
//! (planner, executors, memory, custom members: every agent keyed by the run id). Whether an
//! agent is listed comes from the runtime's directory; starts, restarts and panics from its
//! lifecycle events, which [`Lives::record`] follows from the service's start.

use std::collections::BTreeMap;
use std::sync::Mutex;

use impresario::runtime::{AgentId, Exit, LifecycleEvent, RuntimeHandle};
use tokio::sync::broadcast;

/// The most agents remembered; past it, the least recently heard of are forgotten (agents gone
/// for good first) down to nine tenths of it. A run of the service has about 5 agents: this
/// covers the agents of roughly the last 800 runs, far more than the finished runs the service
/// tracks (100 by default), and the service's memory stops growing with them before 1,000 runs
/// (BENCHMARKS.md, "10,000 runs").
const MAX_AGENTS: usize = 4_000;

/// What the lifecycle events said about one agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Life {
    /// How many times it was started (1 for an agent never restarted).
    pub starts: u64,
    /// How many of its incarnations panicked.
    pub panics: u64,
    /// How its last incarnation ended, if one did (`panicked: ...`, `killed`, ...).
    pub last_exit: Option<String>,
    /// Whether it stopped for good.
    pub gone: bool,
    order: u64,
}

/// The lives of the agents seen since the service started, at most [`MAX_AGENTS`] of them.
pub struct Lives {
    agents: Mutex<BTreeMap<AgentId, Life>>,
    max: usize,
}

impl Default for Lives {
    fn default() -> Self {
        Lives::at_most(MAX_AGENTS)
    }
}

impl Lives {
    /// Remembers at most `max` agents.
    fn at_most(max: usize) -> Self {
        Lives {
            agents: Mutex::default(),
            max,
        }
    }

    /// Follows `events` until the runtime closes them.
    pub async fn record(&self, mut events: broadcast::Receiver<LifecycleEvent>) {
        let mut order = 0u64;
        loop {
            match events.recv().await {
                Ok(event) => {
                    order += 1;
                    self.apply(event, order);
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        missed,
                        "the console missed lifecycle events; restart counts may be low"
                    );
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    fn apply(&self, event: LifecycleEvent, order: u64) {
        let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            LifecycleEvent::Started { agent, incarnation } => {
                let life = agents.entry(agent).or_default();
                life.starts = incarnation + 1;
                life.gone = false;
                life.order = order;
            }
            LifecycleEvent::Exited {
                agent,
                exit,
                final_exit,
            } => {
                let life = agents.entry(agent).or_default();
                if matches!(exit, Exit::Panicked { .. }) {
                    life.panics += 1;
                }
                life.last_exit = Some(exit_text(&exit));
                life.gone = final_exit;
                life.order = order;
            }
        }
        if agents.len() > self.max {
            forget_oldest(&mut agents, self.max - self.max / 10);
        }
    }

    /// The agents whose key is `run` or starts with `run#` (a run's executors).
    fn of_run(&self, run: &str) -> Vec<(AgentId, Life)> {
        let agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        agents
            .iter()
            .filter(|(id, _)| {
                id.key.as_ref() == run
                    || id
                        .key
                        .strip_prefix(run)
                        .is_some_and(|rest| rest.starts_with('#'))
            })
            .map(|(id, life)| (id.clone(), life.clone()))
            .collect()
    }

    fn life(&self, id: &AgentId) -> Option<Life> {
        let agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        agents.get(id).cloned()
    }
}

/// Forgets the agents least recently heard of, those gone for good first, down to `keep`. An
/// agent whose exit was never final (its supervisor stopped with it) is forgotten too, or the
/// map would grow with every run.
fn forget_oldest(agents: &mut BTreeMap<AgentId, Life>, keep: usize) {
    let mut oldest: Vec<(bool, u64, AgentId)> = agents
        .iter()
        .map(|(id, l)| (!l.gone, l.order, id.clone()))
        .collect();
    oldest.sort_unstable();
    for (_, _, id) in oldest.into_iter().take(agents.len().saturating_sub(keep)) {
        agents.remove(&id);
    }
}

fn exit_text(exit: &Exit) -> String {
    match exit {
        Exit::Normal => "stopped".into(),
        Exit::Panicked { message } => format!("panicked: {message}"),
        Exit::Killed => "killed".into(),
        Exit::Failed { reason } => format!("failed: {reason}"),
    }
}

/// One node of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// `kind/key`.
    pub id: String,
    /// Whether the runtime's directory lists it now.
    pub listed: bool,
    /// What its lifecycle events said, if any were seen.
    pub life: Option<Life>,
    /// How deep it is (0 = the root supervisor).
    pub depth: usize,
}

/// The tree of run `run` of `tenant`, top down.
pub fn of_run(runtime: &RuntimeHandle, lives: &Lives, run: &str, tenant: &str) -> Vec<Node> {
    let directory = runtime.directory();
    let node = |id: AgentId, depth: usize| Node {
        id: id.to_string(),
        listed: directory.contains(&id),
        life: lives.life(&id),
        depth,
    };
    let mut nodes: Vec<Node> = directory
        .list_kind("supervisor")
        .into_iter()
        .map(|id| node(id, 0))
        .collect();
    let suffix = format!(":{tenant}");
    nodes.extend(
        directory
            .list_kind("tenant")
            .into_iter()
            .filter(|id| id.key.ends_with(&suffix))
            .map(|id| node(id, 1)),
    );
    nodes.push(node(AgentId::new("run", run), 2));
    nodes.extend(
        lives
            .of_run(run)
            .into_iter()
            .filter(|(id, _)| id.kind.as_ref() != "run")
            .map(|(id, life)| Node {
                id: id.to_string(),
                listed: directory.contains(&id),
                life: Some(life),
                depth: 3,
            }),
    );
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_its_bound_the_oldest_agents_are_forgotten_gone_ones_first() {
        let lives = Lives::at_most(10);
        let agent = |i: usize| AgentId::new("planner", format!("run-{i}"));
        // One agent in three never exits for good (its supervisor went with it).
        for i in 0..100 {
            let order = 2 * i as u64;
            let started = LifecycleEvent::Started {
                agent: agent(i),
                incarnation: 0,
            };
            lives.apply(started, order);
            if i % 3 != 0 {
                let exited = LifecycleEvent::Exited {
                    agent: agent(i),
                    exit: Exit::Normal,
                    final_exit: true,
                };
                lives.apply(exited, order + 1);
            }
            let remembered = lives.agents.lock().unwrap().len();
            assert!(remembered <= 10, "{remembered} agents after agent {i}");
        }
        assert!(lives.life(&agent(99)).is_some(), "the newest is kept");
        assert!(
            lives.life(&agent(0)).is_none(),
            "the oldest live one went too"
        );
        let kept = lives.agents.lock().unwrap();
        assert!(kept.values().filter(|l| !l.gone).count() >= kept.len() / 2);
    }

    #[test]
    fn restarts_and_panics_are_counted_per_agent_of_the_run() {
        let lives = Lives::default();
        let planner = AgentId::new("planner", "run-1");
        let executor = AgentId::new("executor", "run-1#0");
        let other = AgentId::new("executor", "run-10#0");
        let started = |agent: &AgentId, incarnation| LifecycleEvent::Started {
            agent: agent.clone(),
            incarnation,
        };
        lives.apply(started(&planner, 0), 1);
        lives.apply(started(&executor, 0), 2);
        lives.apply(started(&other, 0), 3);
        lives.apply(
            LifecycleEvent::Exited {
                agent: executor.clone(),
                exit: Exit::Panicked {
                    message: "boom".into(),
                },
                final_exit: false,
            },
            4,
        );
        lives.apply(started(&executor, 1), 5);
        let of_run = lives.of_run("run-1");
        let ids: Vec<String> = of_run.iter().map(|(id, _)| id.to_string()).collect();
        assert_eq!(ids, ["executor/run-1#0", "planner/run-1"]);
        let executor = &of_run[0].1;
        assert_eq!((executor.starts, executor.panics), (2, 1));
        assert_eq!(executor.last_exit.as_deref(), Some("panicked: boom"));
        assert!(!executor.gone);
    }
}
