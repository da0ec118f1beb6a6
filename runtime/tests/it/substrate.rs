//! The substrate through its public API: asks and tells, panics in every handler style,
//! admission control, calls from a foreign tokio runtime, the directory, and shutdown.

use std::future::IntoFuture;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use impresario_runtime::{
    agent, AgentError, AgentId, AgentRef, Exit, LifecycleEvent, Placement, Runtime, RuntimeHandle,
    SpawnError, SpawnOptions,
};
use serde::{Deserialize, Serialize};

/// A sync message.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "u64")]
struct Add(u64);

/// An async message answered by a `ResponseFuture` after `delay_ms`.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "String")]
struct Echo {
    text: String,
    delay_ms: u64,
}

/// An async message answered by a `ResponseActFuture` (a future with access to the actor).
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "u64")]
struct AddLater(u64);

/// Panics in a sync handler or in an actor future.
#[derive(Message, Clone, Copy)]
#[rtype(result = "u64")]
enum Boom {
    Sync,
    ActorFuture,
}

#[derive(Default)]
struct Counter {
    total: u64,
}

impl Actor for Counter {
    type Context = Context<Self>;
}
agent!(Counter);

impl Handler<Add> for Counter {
    type Result = u64;
    fn handle(&mut self, msg: Add, _: &mut Context<Self>) -> u64 {
        self.total += msg.0;
        self.total
    }
}

impl Handler<Echo> for Counter {
    type Result = ResponseFuture<String>;
    fn handle(&mut self, msg: Echo, _: &mut Context<Self>) -> Self::Result {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(msg.delay_ms)).await;
            msg.text
        })
    }
}

impl Handler<AddLater> for Counter {
    type Result = ResponseActFuture<Self, u64>;
    fn handle(&mut self, msg: AddLater, _: &mut Context<Self>) -> Self::Result {
        Box::pin(
            tokio::time::sleep(Duration::from_millis(5))
                .into_actor(self)
                .map(move |_, this, _| {
                    this.total += msg.0;
                    this.total
                }),
        )
    }
}

impl Handler<Boom> for Counter {
    type Result = ResponseActFuture<Self, u64>;
    fn handle(&mut self, msg: Boom, _: &mut Context<Self>) -> Self::Result {
        match msg {
            Boom::Sync => panic!("sync boom"),
            Boom::ActorFuture => Box::pin(
                tokio::time::sleep(Duration::from_millis(5))
                    .into_actor(self)
                    .map(|_, _, _| -> u64 { panic!("actor future boom") }),
            ),
        }
    }
}

/// A second agent whose only async handler is a true `ResponseFuture` that panics.
#[derive(Default)]
struct Flaky;
impl Actor for Flaky {
    type Context = Context<Self>;
}
agent!(Flaky);

#[derive(Message)]
#[rtype(result = "u64")]
struct FailAsync;

impl Handler<FailAsync> for Flaky {
    type Result = ResponseFuture<u64>;
    fn handle(&mut self, _: FailAsync, _: &mut Context<Self>) -> Self::Result {
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            panic!("response future boom")
        })
    }
}

impl Handler<Add> for Flaky {
    type Result = u64;
    fn handle(&mut self, msg: Add, _: &mut Context<Self>) -> u64 {
        msg.0
    }
}

fn runtime() -> RuntimeHandle {
    Runtime::builder()
        .arbiters(2)
        .start()
        .expect("runtime starts")
}

async fn next_exit(
    events: &mut tokio::sync::broadcast::Receiver<LifecycleEvent>,
) -> (AgentId, Exit) {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Ok(LifecycleEvent::Exited { agent, exit, .. })) => return (agent, exit),
            Ok(Ok(_)) => continue,
            other => panic!("no exit event: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_async_and_actor_future_handlers_answer() {
    let rt = runtime();
    let counter = rt
        .spawn(AgentId::new("counter", "a"), Counter::default)
        .unwrap();
    assert_eq!(counter.ask(Add(2)).await.unwrap(), 2);
    assert_eq!(counter.ask(Add(3)).await.unwrap(), 5);
    let echo = Echo {
        text: "hi".into(),
        delay_ms: 5,
    };
    assert_eq!(counter.ask(echo).await.unwrap(), "hi");
    assert_eq!(counter.ask(AddLater(10)).await.unwrap(), 15);
    counter.tell(Add(1)).unwrap();
    assert_eq!(
        counter.ask(Add(0)).await.unwrap(),
        16,
        "tell was handled before the next ask"
    );
    assert_eq!(counter.in_flight(), 0);
    rt.shutdown(Duration::from_secs(5)).await;
}

async fn assert_panic_is_answered(rt: &RuntimeHandle, key: &str, boom: Boom, expected: &str) {
    let mut events = rt.subscribe();
    let victim = rt
        .spawn(AgentId::new("counter", key), Counter::default)
        .unwrap();
    let bystander = rt
        .spawn(
            AgentId::new("counter", format!("{key}-bystander")),
            Counter::default,
        )
        .unwrap();
    assert_eq!(victim.ask(Add(1)).await.unwrap(), 1);

    let err = victim
        .ask(boom)
        .timeout(Duration::from_secs(5))
        .await
        .unwrap_err();
    match &err {
        AgentError::Panicked { agent, message } => {
            assert_eq!(agent, victim.id());
            assert!(
                message.contains(expected),
                "{message:?} should contain {expected:?}"
            );
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
    let (agent, exit) = next_exit(&mut events).await;
    assert_eq!(&agent, victim.id());
    assert!(
        matches!(exit, Exit::Panicked { ref message } if message.contains(expected)),
        "{exit:?}"
    );

    // The victim is stopped; the bystander and the runtime keep serving.
    assert!(matches!(
        victim.ask(Add(1)).await,
        Err(AgentError::Stopped { .. })
    ));
    assert!(!rt.directory().contains(victim.id()));
    assert_eq!(bystander.ask(Add(7)).await.unwrap(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_in_sync_handler_is_answered_and_stops_only_that_agent() {
    let rt = runtime();
    assert_panic_is_answered(&rt, "sync", Boom::Sync, "sync boom").await;
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_in_actor_future_is_answered_and_stops_only_that_agent() {
    let rt = runtime();
    assert_panic_is_answered(&rt, "actfut", Boom::ActorFuture, "actor future boom").await;
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_in_response_future_is_answered_and_stops_the_agent() {
    let rt = runtime();
    let mut events = rt.subscribe();
    let flaky = rt.spawn(AgentId::new("flaky", "1"), || Flaky).unwrap();
    let other = rt.spawn(AgentId::new("flaky", "2"), || Flaky).unwrap();
    let err = flaky
        .ask(FailAsync)
        .timeout(Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        AgentError::Panicked {
            agent: flaky.id().clone(),
            message: "response future boom".into()
        }
    );
    let (agent, exit) = next_exit(&mut events).await;
    assert_eq!(&agent, flaky.id());
    assert_eq!(
        exit,
        Exit::Panicked {
            message: "response future boom".into()
        }
    );
    assert!(matches!(
        flaky.ask(Add(1)).await,
        Err(AgentError::Stopped { .. })
    ));
    assert_eq!(other.ask(Add(4)).await.unwrap(), 4);
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_after_tell_stops_the_agent_and_emits_an_event() {
    let rt = runtime();
    let mut events = rt.subscribe();
    let flaky = rt.spawn(AgentId::new("flaky", "told"), || Flaky).unwrap();
    flaky.tell(FailAsync).unwrap();
    let (agent, exit) = next_exit(&mut events).await;
    assert_eq!(&agent, flaky.id());
    assert!(matches!(exit, Exit::Panicked { .. }), "{exit:?}");
    assert!(!flaky.is_running());
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_messages_behind_a_panic_learn_the_agent_stopped() {
    let rt = runtime();
    // Both on one arbiter, and the victim busy first so the next messages queue behind the panic.
    let victim = rt
        .spawn(AgentId::new("counter", "queue"), Counter::default)
        .unwrap();
    let slow = victim.ask(Echo {
        text: "x".into(),
        delay_ms: 1,
    });
    let boom = victim.ask(Boom::Sync);
    let after = victim.ask(Add(1));
    let (slow, boom, after) = tokio::join!(slow, boom, after);
    assert_eq!(slow.unwrap(), "x");
    assert!(matches!(boom, Err(AgentError::Panicked { .. })), "{boom:?}");
    assert!(
        matches!(after, Err(AgentError::Stopped { .. })),
        "{after:?}"
    );
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifth_concurrent_ask_over_a_limit_of_four_is_overloaded() {
    let rt = runtime();
    let options = SpawnOptions {
        in_flight_limit: Some(4),
        ..SpawnOptions::default()
    };
    let agent = rt
        .spawn_with(
            AgentId::new("counter", "limited"),
            options,
            Counter::default,
        )
        .unwrap();
    let slow = |i: u64| {
        agent
            .ask(Echo {
                text: i.to_string(),
                delay_ms: 300,
            })
            .into_future()
    };
    let pending: Vec<_> = (0..4).map(slow).collect();
    assert_eq!(agent.in_flight(), 4);
    let fifth = agent.ask(Add(1)).await;
    assert_eq!(
        fifth,
        Err(AgentError::Overloaded {
            agent: agent.id().clone(),
            limit: 4
        })
    );
    assert_eq!(
        agent.tell(Add(1)),
        Err(AgentError::Overloaded {
            agent: agent.id().clone(),
            limit: 4
        })
    );
    let answers = futures_util::future::join_all(pending).await;
    assert_eq!(
        answers.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
        ["0", "1", "2", "3"]
    );
    // Places are freed once answers are given.
    assert_eq!(agent.in_flight(), 0);
    assert_eq!(agent.ask(Add(1)).await.unwrap(), 1);
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_times_out_and_the_place_is_freed_when_the_handler_finishes() {
    let rt = runtime();
    let agent = rt
        .spawn(AgentId::new("counter", "slow"), Counter::default)
        .unwrap();
    let err = agent
        .ask(Echo {
            text: "late".into(),
            delay_ms: 200,
        })
        .timeout(Duration::from_millis(20))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        AgentError::Timeout {
            agent: agent.id().clone(),
            after: Duration::from_millis(20)
        }
    );
    assert_eq!(agent.in_flight(), 1, "the handler is still running");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(agent.in_flight(), 0);
    rt.shutdown(Duration::from_secs(5)).await;
}

#[test]
fn calls_from_eight_worker_threads_of_a_foreign_tokio_runtime() {
    let rt = runtime();
    let agents: Vec<AgentRef<Counter>> = (0..4)
        .map(|i| {
            rt.spawn(AgentId::new("counter", i.to_string()), Counter::default)
                .unwrap()
        })
        .collect();
    let tokio_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(8)
        .enable_all()
        .build()
        .unwrap();
    let threads = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    tokio_rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..64 {
            let agents = agents.clone();
            let threads = threads.clone();
            let calls = calls.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..100u64 {
                    threads.lock().unwrap().insert(std::thread::current().id());
                    let agent = &agents[(t + i as usize) % agents.len()];
                    agent.ask(Add(1)).await.unwrap();
                    calls.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
    assert_eq!(calls.load(Ordering::Relaxed), 6400);
    let total: u64 = tokio_rt.block_on(async {
        let mut sum = 0;
        for agent in &agents {
            sum += agent.ask(Add(0)).await.unwrap();
        }
        sum
    });
    assert_eq!(total, 6400, "every increment reached an agent exactly once");
    assert!(
        threads.lock().unwrap().len() >= 2,
        "calls came from several worker threads"
    );
    assert_eq!(rt.shutdown_blocking(Duration::from_secs(5)).stopped, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_lists_looks_up_and_forgets_stopped_agents() {
    let rt = runtime();
    let a = rt
        .spawn(AgentId::new("counter", "a"), Counter::default)
        .unwrap();
    let _b = rt
        .spawn(AgentId::new("counter", "b"), Counter::default)
        .unwrap();
    let _f = rt.spawn(AgentId::new("flaky", "a"), || Flaky).unwrap();

    assert_eq!(
        rt.spawn(AgentId::new("counter", "a"), Counter::default)
            .unwrap_err(),
        SpawnError::AlreadyExists(AgentId::new("counter", "a"))
    );
    assert_eq!(
        rt.directory().list_kind("counter"),
        [AgentId::new("counter", "a"), AgentId::new("counter", "b")]
    );
    let found: AgentRef<Counter> = rt
        .directory()
        .lookup(&AgentId::new("counter", "a"))
        .unwrap();
    assert_eq!(found.ask(Add(5)).await.unwrap(), 5);
    assert_eq!(
        a.ask(Add(0)).await.unwrap(),
        5,
        "both handles reach the same agent"
    );
    assert!(
        rt.directory()
            .lookup::<Flaky>(&AgentId::new("counter", "a"))
            .is_none(),
        "wrong type"
    );

    a.stop().await;
    assert!(!rt.directory().contains(a.id()));
    assert_eq!(
        rt.directory().list_kind("counter"),
        [AgentId::new("counter", "b")]
    );
    assert!(matches!(
        found.ask(Add(1)).await,
        Err(AgentError::Stopped { .. })
    ));
    // The name is free again.
    let again = rt
        .spawn(AgentId::new("counter", "a"), Counter::default)
        .unwrap();
    assert_eq!(again.ask(Add(1)).await.unwrap(), 1);
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_hint_and_bad_placement() {
    let rt = runtime();
    let first = rt
        .spawn(AgentId::unique("counter"), Counter::default)
        .unwrap();
    let options = SpawnOptions {
        placement: Placement::Arbiter(first.arbiter_index()),
        ..Default::default()
    };
    let beside = rt
        .spawn_with(AgentId::unique("counter"), options, Counter::default)
        .unwrap();
    assert_eq!(beside.arbiter_index(), first.arbiter_index());
    let options = SpawnOptions {
        placement: Placement::Arbiter(9),
        ..Default::default()
    };
    assert_eq!(
        rt.spawn_with(AgentId::unique("counter"), options, Counter::default)
            .unwrap_err(),
        SpawnError::NoSuchArbiter { index: 9, count: 2 }
    );
    rt.shutdown(Duration::from_secs(5)).await;
}

/// Records its name in a shared log when it stops; optionally refuses to stop for a while.
struct Recorder {
    name: &'static str,
    log: Arc<Mutex<Vec<&'static str>>>,
    linger: Duration,
}
impl Actor for Recorder {
    type Context = Context<Self>;
    fn stopping(&mut self, ctx: &mut Context<Self>) -> Running {
        if self.linger.is_zero() {
            return Running::Stop;
        }
        // Keep running for `linger`, then stop for real.
        let linger = std::mem::take(&mut self.linger);
        ctx.run_later(linger, |_, ctx| ctx.stop());
        Running::Continue
    }
    fn stopped(&mut self, _: &mut Context<Self>) {
        self.log.lock().unwrap().push(self.name);
    }
}
agent!(Recorder);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_agents_in_reverse_start_order() {
    let rt = runtime();
    let log = Arc::new(Mutex::new(Vec::new()));
    for name in ["first", "second", "third", "fourth"] {
        let log = log.clone();
        rt.spawn(AgentId::new("recorder", name), move || Recorder {
            name,
            log,
            linger: Duration::ZERO,
        })
        .unwrap();
    }
    let report = rt.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.stopped, 4);
    assert!(!report.timed_out);
    assert_eq!(*log.lock().unwrap(), ["fourth", "third", "second", "first"]);
    assert!(matches!(
        rt.spawn(AgentId::new("recorder", "late"), Counter::default),
        Err(SpawnError::ShuttingDown)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_honours_its_timeout_and_kills_the_rest() {
    let rt = runtime();
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    rt.spawn(AgentId::new("recorder", "older"), move || Recorder {
        name: "older",
        log: l,
        linger: Duration::ZERO,
    })
    .unwrap();
    let l = log.clone();
    rt.spawn(AgentId::new("recorder", "stubborn"), move || Recorder {
        name: "stubborn",
        log: l,
        linger: Duration::from_secs(30),
    })
    .unwrap();
    let started = std::time::Instant::now();
    let report = rt.shutdown(Duration::from_millis(200)).await;
    let took = started.elapsed();
    assert!(report.timed_out);
    assert_eq!((report.stopped, report.killed), (0, 2));
    assert!(
        took >= Duration::from_millis(200),
        "waited the timeout: {took:?}"
    );
    assert!(
        took < Duration::from_secs(10),
        "did not wait for the stubborn agent: {took:?}"
    );
}
