//! Restart policies through the public API: fresh state, which siblings restart and in what
//! order, intensity and escalation, backoff, restart types, dynamic children, shutdown.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::until;
use actix::prelude::*;
use impresario_runtime::supervision::Shutdown;
use impresario_runtime::{agent, AgentError, AgentId, AgentRef, Exit, Runtime, RuntimeHandle};
use impresario_supervisor::{
    Backoff, ChildSpec, Intensity, RestartType, Strategy, Supervisor, SupervisorError,
    SupervisorEvent, SupervisorRef, SupervisorSpec,
};

type Log = Arc<Mutex<Vec<String>>>;

/// Counts; logs its starts and stops; can crash, fail slowly, or quit normally.
struct Worker {
    name: &'static str,
    log: Log,
    count: u64,
    linger: Duration,
}

impl Actor for Worker {
    type Context = Context<Self>;
    fn started(&mut self, _: &mut Context<Self>) {
        self.log
            .lock()
            .unwrap()
            .push(format!("start {}", self.name));
    }
    fn stopping(&mut self, ctx: &mut Context<Self>) -> Running {
        if self.linger.is_zero() {
            return Running::Stop;
        }
        let linger = std::mem::take(&mut self.linger);
        ctx.run_later(linger, |_, ctx| ctx.stop());
        Running::Continue
    }
    fn stopped(&mut self, _: &mut Context<Self>) {
        self.log.lock().unwrap().push(format!("stop {}", self.name));
    }
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

#[derive(Message)]
#[rtype(result = "()")]
struct Crash;
impl Handler<Crash> for Worker {
    type Result = ();
    fn handle(&mut self, _: Crash, _: &mut Context<Self>) {
        panic!("worker {} crashed", self.name)
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Quit;
impl Handler<Quit> for Worker {
    type Result = ();
    fn handle(&mut self, _: Quit, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

fn worker(name: &'static str, log: &Log) -> ChildSpec {
    worker_lingering(name, log, Duration::ZERO)
}

fn worker_lingering(name: &'static str, log: &Log, linger: Duration) -> ChildSpec {
    let log = log.clone();
    ChildSpec::agent(AgentId::new("worker", name), move || Worker {
        name,
        log: log.clone(),
        count: 0,
        linger,
    })
}

fn runtime() -> RuntimeHandle {
    Runtime::builder().arbiters(2).start().unwrap()
}

fn lookup(rt: &RuntimeHandle, name: &str) -> AgentRef<Worker> {
    rt.directory()
        .lookup(&AgentId::new("worker", name))
        .expect("worker is listed")
}

fn restarted(name: &'static str) -> impl Fn(&SupervisorEvent) -> bool {
    move |e| matches!(e, SupervisorEvent::ChildRestarted { child, .. } if &*child.key == name)
}

async fn start(rt: &RuntimeHandle, spec: SupervisorSpec) -> SupervisorRef {
    let root = Supervisor::start_root(rt, AgentId::new("supervisor", "root"), spec).unwrap();
    // The children are started once the supervisor's first message is handled.
    root.children().await.unwrap();
    root
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_builds_fresh_state_and_the_handle_stays_valid() {
    let rt = runtime();
    let log = Log::default();
    let root = start(
        &rt,
        SupervisorSpec::new(Strategy::OneForOne).child(worker("a", &log)),
    )
    .await;
    let mut events = root.events();
    let a = lookup(&rt, "a");
    assert_eq!(a.ask(Incr).await.unwrap(), 1);
    assert_eq!(a.ask(Incr).await.unwrap(), 2);

    let crash = a.ask(Crash).await.unwrap_err();
    assert!(
        matches!(crash, AgentError::Panicked { ref message, .. } if message == "worker a crashed")
    );
    until(&mut events, restarted("a")).await;
    assert_eq!(
        a.ask(Incr).await.unwrap(),
        1,
        "a fresh actor, through the same AgentRef"
    );
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_during_the_backoff_gets_restarting_at_once() {
    let rt = runtime();
    let log = Log::default();
    let backoff = Backoff {
        min_backoff: Duration::from_millis(300),
        max_backoff: Duration::from_millis(300),
        ..Backoff::default()
    };
    let spec = SupervisorSpec::new(Strategy::OneForOne)
        .backoff(backoff)
        .child(worker("a", &log));
    let root = start(&rt, spec).await;
    let mut events = root.events();
    let a = lookup(&rt, "a");
    let _ = a.ask(Crash).await;
    let asked = Instant::now();
    assert_eq!(
        a.ask(Incr).await,
        Err(AgentError::Restarting {
            agent: a.id().clone()
        })
    );
    assert!(
        asked.elapsed() < Duration::from_millis(200),
        "refused at once, not after the backoff"
    );
    until(&mut events, restarted("a")).await;
    assert_eq!(a.ask(Incr).await.unwrap(), 1);
    rt.shutdown(Duration::from_secs(5)).await;
}

/// Starts a, b, c under `strategy`, crashes b, and returns the log of what happened after.
async fn crash_the_middle_child(strategy: Strategy) -> Vec<String> {
    let rt = runtime();
    let log = Log::default();
    let spec = SupervisorSpec::new(strategy)
        .child(worker("a", &log))
        .child(worker("b", &log))
        .child(worker("c", &log));
    let root = start(&rt, spec).await;
    let mut events = root.events();
    for name in ["a", "b", "c"] {
        lookup(&rt, name).ask(Incr).await.unwrap();
    }
    assert_eq!(*log.lock().unwrap(), ["start a", "start b", "start c"]);
    log.lock().unwrap().clear();

    let _ = lookup(&rt, "b").ask(Crash).await;
    until(&mut events, restarted("b")).await;
    // Let any other restart of the same decision land, then read the counts.
    let children = root.children().await.unwrap();
    assert!(children.iter().all(|c| c.running), "{children:?}");
    let counts: Vec<u64> = futures_counts(&rt).await;
    let after = log.lock().unwrap().clone();
    rt.shutdown(Duration::from_secs(5)).await;
    let mut out = after;
    out.push(format!("counts {counts:?}"));
    out
}

async fn futures_counts(rt: &RuntimeHandle) -> Vec<u64> {
    let mut counts = Vec::new();
    for name in ["a", "b", "c"] {
        counts.push(lookup(rt, name).ask(Incr).await.unwrap());
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_for_one_restarts_only_the_failed_child() {
    assert_eq!(
        crash_the_middle_child(Strategy::OneForOne).await,
        ["stop b", "start b", "counts [2, 1, 2]"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_for_all_stops_the_others_newest_first_then_restarts_all_in_order() {
    assert_eq!(
        crash_the_middle_child(Strategy::OneForAll).await,
        [
            "stop b",
            "stop c",
            "stop a",
            "start a",
            "start b",
            "start c",
            "counts [1, 1, 1]"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_for_one_restarts_the_failed_child_and_those_started_after_it() {
    assert_eq!(
        crash_the_middle_child(Strategy::RestForOne).await,
        ["stop b", "stop c", "start b", "start c", "counts [2, 1, 1]"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn within_the_intensity_restarts_keep_serving_past_it_the_nested_supervisor_escalates() {
    let rt = runtime();
    let log = Log::default();
    let nested = SupervisorSpec::new(Strategy::OneForOne)
        .intensity(Intensity {
            max_restarts: 2,
            period: Duration::from_secs(10),
        })
        .child(worker("w", &log));
    let spec = SupervisorSpec::new(Strategy::OneForOne).child(ChildSpec::supervisor(
        AgentId::new("supervisor", "nested"),
        nested,
    ));
    let root = start(&rt, spec).await;
    let mut events = root.events();
    let w = listed(&rt, "w").await;

    for round in 1..=2 {
        assert_eq!(
            w.ask(Incr).await.unwrap(),
            1,
            "round {round}: a fresh worker serves"
        );
        let _ = w.ask(Crash).await;
        until(&mut events, restarted("w")).await;
    }
    assert_eq!(
        w.ask(Incr).await.unwrap(),
        1,
        "still serving after 2 restarts"
    );

    // The third crash is one too many for the nested supervisor.
    let _ = w.ask(Crash).await;
    let escalated = until(&mut events, |e| {
        matches!(e, SupervisorEvent::Escalated { .. })
    })
    .await;
    let SupervisorEvent::Escalated { supervisor, reason } = escalated else {
        unreachable!()
    };
    assert_eq!(&*supervisor.key, "nested");
    assert!(reason.contains("more than 2 restarts"), "{reason}");
    let exit = until(
        &mut events,
        |e| matches!(e, SupervisorEvent::ChildExited { child, .. } if &*child.key == "nested"),
    )
    .await;
    assert!(
        matches!(
            exit,
            SupervisorEvent::ChildExited {
                exit: Exit::Failed { .. },
                ..
            }
        ),
        "{exit:?}"
    );
    // The root restarts the nested supervisor, which starts a fresh worker under the same name.
    // (The nested supervisor's events may come before or after the root's: other threads.)
    until(&mut events, restarted("nested")).await;
    let w = listed(&rt, "w").await;
    assert_eq!(w.ask(Incr).await.unwrap(), 1);
    rt.shutdown(Duration::from_secs(5)).await;
}

/// Waits (up to 5 s) until a worker of this name is listed and running.
async fn listed(rt: &RuntimeHandle, name: &str) -> AgentRef<Worker> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(w) = rt
            .directory()
            .lookup::<Worker>(&AgentId::new("worker", name))
        {
            if w.is_running() {
                return w;
            }
        }
        assert!(Instant::now() < deadline, "worker {name} never came up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_gives_up_without_stopping_the_process() {
    let rt = runtime();
    let log = Log::default();
    let spec = SupervisorSpec::new(Strategy::OneForOne)
        .intensity(Intensity {
            max_restarts: 1,
            period: Duration::from_secs(10),
        })
        .child(worker("a", &log))
        .child(worker("b", &log))
        .child(worker("c", &log));
    let root = start(&rt, spec).await;
    let mut events = root.events();
    let _ = lookup(&rt, "a").ask(Crash).await;
    until(&mut events, restarted("a")).await;
    let _ = lookup(&rt, "a").ask(Crash).await;
    let fatal = until(&mut events, |e| matches!(e, SupervisorEvent::Fatal { .. })).await;
    assert!(
        matches!(fatal, SupervisorEvent::Fatal { ref reason, .. } if reason.contains("more than 1 restarts"))
    );
    // a crashed; the others were stopped newest first, and all are gone.
    let log = log.lock().unwrap().clone();
    assert_eq!(
        &log[log.len() - 3..],
        ["stop a", "stop c", "stop b"].map(String::from).as_slice(),
        "{log:?}"
    );
    assert!(rt.directory().list_kind("worker").is_empty());
    // The root itself still answers, with GaveUp.
    assert_eq!(
        root.children().await,
        Err(SupervisorError::GaveUp(AgentId::new("supervisor", "root")))
    );
    assert!(root.agent().is_running());
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_grows_then_resets_after_a_long_enough_run() {
    let rt = runtime();
    let log = Log::default();
    let backoff = Backoff {
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(80),
        random_factor: 0.0,
        reset_after: Duration::from_millis(400),
    };
    let spec = SupervisorSpec::new(Strategy::OneForOne)
        .intensity(Intensity {
            max_restarts: 100,
            period: Duration::from_secs(10),
        })
        .backoff(backoff)
        .child(worker("a", &log));
    let root = start(&rt, spec).await;
    let mut events = root.events();
    let a = lookup(&rt, "a");
    let mut delays = Vec::new();
    for _ in 0..4 {
        let crashed = Instant::now();
        let _ = a.ask(Crash).await;
        let event = until(&mut events, restarted("a")).await;
        let SupervisorEvent::ChildRestarted {
            backoff, attempt, ..
        } = event
        else {
            unreachable!()
        };
        assert!(
            crashed.elapsed() >= backoff,
            "waited the backoff before restarting"
        );
        delays.push((attempt, backoff.as_millis()));
    }
    assert_eq!(delays, [(1, 20), (2, 40), (3, 80), (4, 80)]);

    // Run longer than reset_after, then fail: back to the first delay.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let _ = a.ask(Crash).await;
    let event = until(&mut events, restarted("a")).await;
    assert!(
        matches!(event, SupervisorEvent::ChildRestarted { attempt: 1, backoff, .. } if backoff.as_millis() == 20),
        "{event:?}"
    );
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_and_temporary_children_are_not_restarted_when_their_type_says_so() {
    let rt = runtime();
    let log = Log::default();
    let spec = SupervisorSpec::new(Strategy::OneForOne)
        .child(worker("transient", &log).restart(RestartType::Transient))
        .child(worker("temporary", &log).restart(RestartType::Temporary))
        .child(worker("permanent", &log));
    let root = start(&rt, spec).await;
    let mut events = root.events();

    // A transient child that quits normally is not restarted; a crash would be.
    lookup(&rt, "transient").tell(Quit).unwrap();
    until(
        &mut events,
        |e| matches!(e, SupervisorEvent::ChildExited { child, .. } if &*child.key == "transient"),
    )
    .await;
    // A temporary child is not restarted even after a crash.
    let _ = lookup(&rt, "temporary").ask(Crash).await;
    until(
        &mut events,
        |e| matches!(e, SupervisorEvent::ChildExited { child, .. } if &*child.key == "temporary"),
    )
    .await;
    // A permanent child is restarted even after a normal exit.
    lookup(&rt, "permanent").tell(Quit).unwrap();
    until(&mut events, restarted("permanent")).await;

    let children: Vec<String> = root
        .children()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id.key.to_string())
        .collect();
    assert_eq!(children, ["permanent"]);
    assert_eq!(
        rt.directory().list_kind("worker"),
        [AgentId::new("worker", "permanent")]
    );
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_are_added_and_removed_at_runtime_and_shutdown_timeouts_kill() {
    let rt = runtime();
    let log = Log::default();
    let root = start(&rt, SupervisorSpec::new(Strategy::OneForOne)).await;
    root.start_child(worker("late", &log)).await.unwrap();
    assert_eq!(lookup(&rt, "late").ask(Incr).await.unwrap(), 1);
    assert!(matches!(
        root.start_child(worker("late", &log)).await,
        Err(SupervisorError::Spawn(_))
    ));

    // A child that ignores a graceful stop is killed when its shutdown timeout runs out.
    let stubborn = worker_lingering("stubborn", &log, Duration::from_secs(30))
        .shutdown(Shutdown::Timeout(Duration::from_millis(100)));
    root.start_child(stubborn).await.unwrap();
    let asked = Instant::now();
    root.stop_child(AgentId::new("worker", "stubborn"))
        .await
        .unwrap();
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(!rt.directory().contains(&AgentId::new("worker", "stubborn")));
    assert_eq!(
        root.stop_child(AgentId::new("worker", "nobody")).await,
        Err(SupervisorError::NoSuchChild(AgentId::new(
            "worker", "nobody"
        )))
    );
    let children: Vec<String> = root
        .children()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id.key.to_string())
        .collect();
    assert_eq!(children, ["late"]);
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_racing_a_fast_restart_get_restarting_never_stopped() {
    let rt = runtime();
    let log = Log::default();
    let spec = SupervisorSpec::new(Strategy::OneForOne)
        .intensity(Intensity {
            max_restarts: u32::MAX,
            period: Duration::from_secs(1),
        })
        .child(worker("a", &log));
    let _root = start(&rt, spec).await;
    let a = lookup(&rt, "a");
    for _ in 0..300 {
        let _ = a.ask(Crash).await;
        // Asks sent at once may land in the dying mailbox; none may claim the agent stopped.
        loop {
            match a.ask(Incr).await {
                Ok(_) => break,
                Err(AgentError::Restarting { .. }) => tokio::task::yield_now().await,
                Err(other) => panic!("a racing call got {other:?}"),
            }
        }
    }
    rt.shutdown(Duration::from_secs(5)).await;
}
