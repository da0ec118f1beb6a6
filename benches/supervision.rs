//! Restart latency: from sending a message that panics its handler to the first successful
//! answer of the restarted agent (same `AgentRef`), under a OneForOne supervisor with no backoff.
//! Baseline in the same run: what any fresh actor costs, a raw actix `start_in_arbiter` plus its
//! first `send` round trip; and a plain `ask` round trip for scale.
//!
//! Run: `cargo bench --bench supervision`

// A benchmark's setup and measurement loop is a script, longer than the 60 lines product code
// may have (clippy::too_many_lines, workspace lint).
#![allow(clippy::too_many_lines)]

mod common;

use std::time::{Duration, Instant};

use actix::prelude::*;
use impresario_runtime::{agent, AgentError, AgentId, AgentRef, Runtime};
use impresario_supervisor::{ChildSpec, Intensity, Strategy, Supervisor, SupervisorSpec};

#[derive(Default)]
struct Worker;
impl Actor for Worker {
    type Context = Context<Self>;
}
agent!(Worker);

#[derive(Message)]
#[rtype(result = "u64")]
struct Ping;
impl Handler<Ping> for Worker {
    type Result = u64;
    fn handle(&mut self, _: Ping, _: &mut Context<Self>) -> u64 {
        1
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Crash;
impl Handler<Crash> for Worker {
    type Result = ();
    fn handle(&mut self, _: Crash, _: &mut Context<Self>) {
        panic!("bench crash")
    }
}

fn main() {
    // The default hook would print every one of the panics below.
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() != Some(&"bench crash") {
            quiet(info)
        }
    }));
    const RESTARTS: usize = 2_000;
    let tokio_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let runtime = Runtime::builder().arbiters(1).start().unwrap();
    let spec = SupervisorSpec::new(Strategy::OneForOne)
        .intensity(Intensity {
            max_restarts: u32::MAX,
            period: Duration::from_secs(1),
        })
        .child(ChildSpec::agent(
            AgentId::new("worker", "w"),
            Worker::default,
        ));
    let root = Supervisor::start_root(&runtime, AgentId::new("supervisor", "bench"), spec).unwrap();
    tokio_rt.block_on(root.children()).unwrap();
    let worker: AgentRef<Worker> = runtime
        .directory()
        .lookup(&AgentId::new("worker", "w"))
        .unwrap();

    let (restart, asks, refused) = tokio_rt.block_on(async {
        let mut restart = Vec::with_capacity(RESTARTS);
        let mut asks = Vec::with_capacity(RESTARTS);
        let mut refused = 0usize;
        for _ in 0..RESTARTS {
            let t = Instant::now();
            worker.ask(Ping).await.unwrap();
            asks.push(t.elapsed());

            let t = Instant::now();
            assert!(matches!(
                worker.ask(Crash).await,
                Err(AgentError::Panicked { .. })
            ));
            loop {
                match worker.ask(Ping).await {
                    Ok(_) => break,
                    Err(AgentError::Restarting { .. }) => {
                        refused += 1;
                        tokio::task::yield_now().await
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            restart.push(t.elapsed());
        }
        (restart, asks, refused)
    });

    // Baseline: a fresh raw actix actor on an arbiter, then its first answer.
    let (handle, thread, system) = common::raw_actix_arbiter();
    let fresh = tokio_rt.block_on(async {
        let mut fresh = Vec::with_capacity(RESTARTS);
        for _ in 0..RESTARTS {
            let t = Instant::now();
            let addr = Worker::start_in_arbiter(&handle, |_| Worker);
            addr.send(Ping).await.unwrap();
            fresh.push(t.elapsed());
        }
        fresh
    });
    system.stop();
    thread.join().unwrap();

    let sorted = |mut v: Vec<Duration>| {
        v.sort();
        v
    };
    let (restart, asks, fresh) = (sorted(restart), sorted(asks), sorted(fresh));
    let base = common::median(&fresh);
    println!("# {RESTARTS} restarts, callers in a foreign tokio runtime; medians (p99)");
    for (name, v) in [
        ("raw actix: start_in_arbiter + first send", &fresh),
        ("AgentRef::ask round trip (for scale)", &asks),
        ("panic -> restarted agent answers (same AgentRef)", &restart),
    ] {
        common::row(name, common::median(v), Some(base));
        println!(
            "{:<58} {:>12}   p99",
            "",
            common::fmt(common::quantile(v, 0.99))
        );
    }
    println!("calls refused with Restarting while restarting: {refused} over {RESTARTS} restarts");
    runtime.shutdown_blocking(Duration::from_secs(5));
}
