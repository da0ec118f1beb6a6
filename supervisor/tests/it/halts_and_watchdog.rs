//! Halts reach agents without going through their mailbox, and the watchdog turns a handler
//! that runs past its deadline into a failure.

use std::time::{Duration, Instant};

use crate::common::until;
use actix::prelude::*;
use impresario_runtime::halt::{Halt, HaltMode, HaltReason, HaltScope};
use impresario_runtime::{
    agent, AgentError, AgentId, AgentRef, Exit, Runtime, RuntimeHandle, SpawnOptions,
};
use impresario_supervisor::{
    ChildSpec, Strategy, Supervisor, SupervisorEvent, SupervisorRef, SupervisorSpec,
};

#[derive(Default)]
struct Worker {
    count: u64,
}
impl Actor for Worker {
    type Context = Context<Self>;
}
agent!(Worker);

#[derive(Message)]
#[rtype(result = "u64")]
struct Incr;
impl Handler<Incr> for Worker {
    type Result = u64;
    fn handle(&mut self, _: Incr, _: &mut Context<Self>) -> u64 {
        self.count += 1;
        self.count
    }
}

/// Holds the agent's mailbox for `0` (an atomic response: nothing else is handled meanwhile).
#[derive(Message)]
#[rtype(result = "&'static str")]
struct Hold(Duration);
impl Handler<Hold> for Worker {
    type Result = AtomicResponse<Self, &'static str>;
    fn handle(&mut self, Hold(d): Hold, _: &mut Context<Self>) -> Self::Result {
        AtomicResponse::new(Box::pin(
            tokio::time::sleep(d).into_actor(self).map(|_, _, _| "held"),
        ))
    }
}

/// Blocks the agent's thread (a sync handler that cannot be interrupted).
#[derive(Message)]
#[rtype(result = "&'static str")]
struct Block(Duration);
impl Handler<Block> for Worker {
    type Result = MessageResult<Block>;
    fn handle(&mut self, Block(d): Block, _: &mut Context<Self>) -> Self::Result {
        std::thread::sleep(d);
        MessageResult("blocked")
    }
}

fn worker(key: &'static str) -> ChildSpec {
    ChildSpec::agent(AgentId::new("worker", key), Worker::default)
}

async fn start(spec: SupervisorSpec) -> (RuntimeHandle, SupervisorRef) {
    let rt = Runtime::builder().arbiters(2).start().unwrap();
    let root = Supervisor::start_root(&rt, AgentId::new("supervisor", "root"), spec).unwrap();
    root.children().await.unwrap();
    (rt, root)
}

fn lookup(rt: &RuntimeHandle, key: &str) -> AgentRef<Worker> {
    rt.directory().lookup(&AgentId::new("worker", key)).unwrap()
}

fn halted(agent: &AgentRef<Worker>, reason: &str) -> AgentError {
    AgentError::Halted {
        agent: agent.id().clone(),
        reason: reason.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_queued_behind_a_ten_second_handler_does_not_delay_a_halt() {
    let (rt, root) = start(SupervisorSpec::new(Strategy::OneForOne).child(worker("a"))).await;
    let a = lookup(&rt, "a");
    let held = tokio::spawn({
        let a = a.clone();
        async move { a.ask(Hold(Duration::from_secs(10))).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await; // the 10 s handler is running
    let queued = tokio::spawn({
        let a = a.clone();
        async move { a.ask(Incr).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await; // and a message waits behind it

    let halt = Halt::new(
        HaltScope::Agent("worker/a".into()),
        HaltMode::Immediate,
        HaltReason::Operator,
    );
    let started = Instant::now();
    assert_eq!(root.halt(&halt), 1);
    let (held, queued) = tokio::join!(held, queued);
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(100),
        "both callers answered in {took:?}"
    );
    assert_eq!(held.unwrap(), Err(halted(&a, "operator")));
    assert_eq!(queued.unwrap(), Err(halted(&a, "operator")));
    assert_eq!(
        a.ask(Incr).await,
        Err(halted(&a, "operator")),
        "new work is refused"
    );

    // The supervisor does not restart a halted agent; resume does, with a fresh actor.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(a.ask(Incr).await, Err(halted(&a, "operator")));
    assert!(root.resume(a.id()));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(a.ask(Incr).await.unwrap(), 1);
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_halt_lets_the_current_handler_finish_and_refuses_new_work() {
    let (rt, root) = start(SupervisorSpec::new(Strategy::OneForOne).child(worker("a"))).await;
    let a = lookup(&rt, "a");
    let held = tokio::spawn({
        let a = a.clone();
        async move { a.ask(Hold(Duration::from_millis(200))).await }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    let halt = Halt::new(
        HaltScope::Agent("worker/a".into()),
        HaltMode::Graceful {
            deadline: Duration::from_secs(5),
        },
        HaltReason::CostCeiling,
    )
    .with_detail("run budget spent");
    assert_eq!(root.halt(&halt), 1);
    let reason = "cost_ceiling: run budget spent";
    assert_eq!(
        a.ask(Incr).await,
        Err(halted(&a, reason)),
        "nothing new starts"
    );
    assert_eq!(
        held.await.unwrap(),
        Ok("held"),
        "the step in progress finished"
    );
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halting_everything_reaches_every_agent_of_the_tree_and_reports_it() {
    let nested = SupervisorSpec::new(Strategy::OneForOne).child(worker("deep"));
    let spec = SupervisorSpec::new(Strategy::OneForAll)
        .child(worker("a"))
        .child(ChildSpec::supervisor(
            AgentId::new("supervisor", "nested"),
            nested,
        ));
    let (rt, root) = start(spec).await;
    tokio::time::sleep(Duration::from_millis(50)).await; // the nested supervisor started its child
    let mut events = root.events();
    let halt = Halt::new(HaltScope::All, HaltMode::Immediate, HaltReason::Shutdown);
    assert_eq!(root.halt(&halt), 2, "a and the nested supervisor's child");
    for key in ["a", "deep"] {
        let w = lookup(&rt, key);
        assert_eq!(w.ask(Incr).await, Err(halted(&w, "shutdown")));
    }
    let event = until(&mut events, |e| matches!(e, SupervisorEvent::Halted { .. })).await;
    assert_eq!(
        event,
        SupervisorEvent::Halted {
            scope: HaltScope::All,
            reason: HaltReason::Shutdown,
            agents: 2
        }
    );
    // Supervisors kept running, so a halted agent deep in the tree can be resumed.
    assert!(root.resume(&AgentId::new("worker", "deep")));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(lookup(&rt, "deep").ask(Incr).await.unwrap(), 1);
    rt.shutdown(Duration::from_secs(5)).await;
}

fn watched(key: &'static str, deadline: Duration) -> ChildSpec {
    let options = SpawnOptions {
        handler_deadline: Some(deadline),
        ..SpawnOptions::default()
    };
    ChildSpec::agent_with(AgentId::new("worker", key), options, Worker::default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_cancels_an_async_handler_past_its_deadline_and_the_agent_restarts() {
    let spec =
        SupervisorSpec::new(Strategy::OneForOne).child(watched("w", Duration::from_millis(100)));
    let (rt, root) = start(spec).await;
    let mut events = root.events();
    let w = lookup(&rt, "w");
    assert_eq!(w.ask(Incr).await.unwrap(), 1);
    let asked = Instant::now();
    let answer = w.ask(Hold(Duration::from_secs(10))).await;
    let took = asked.elapsed();
    assert_eq!(
        answer,
        Err(AgentError::Timeout {
            agent: w.id().clone(),
            after: Duration::from_millis(100)
        })
    );
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_secs(2),
        "{took:?}"
    );
    let exit = until(&mut events, |e| {
        matches!(e, SupervisorEvent::ChildExited { .. })
    })
    .await;
    assert!(
        matches!(&exit, SupervisorEvent::ChildExited { exit: Exit::Failed { reason }, .. } if reason.contains("watchdog")),
        "{exit:?}"
    );
    until(&mut events, |e| {
        matches!(e, SupervisorEvent::ChildRestarted { .. })
    })
    .await;
    assert_eq!(w.ask(Incr).await.unwrap(), 1, "restarted fresh");
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_handler_that_overran_answers_and_then_fails_its_agent() {
    let spec =
        SupervisorSpec::new(Strategy::OneForOne).child(watched("w", Duration::from_millis(20)));
    let (rt, root) = start(spec).await;
    let mut events = root.events();
    let w = lookup(&rt, "w");
    assert_eq!(
        w.ask(Block(Duration::from_millis(5))).await.unwrap(),
        "blocked",
        "within the deadline"
    );
    assert_eq!(
        w.ask(Block(Duration::from_millis(60))).await.unwrap(),
        "blocked"
    );
    let exit = until(&mut events, |e| {
        matches!(e, SupervisorEvent::ChildExited { .. })
    })
    .await;
    assert!(
        matches!(&exit, SupervisorEvent::ChildExited { exit: Exit::Failed { reason }, .. } if reason.contains("20ms")),
        "{exit:?}"
    );
    until(&mut events, |e| {
        matches!(e, SupervisorEvent::ChildRestarted { .. })
    })
    .await;
    rt.shutdown(Duration::from_secs(5)).await;
}
