//! The substrate's cost, against baselines measured in the same run:
//! `AgentRef::ask` vs raw actix `Addr::send` vs tokio mpsc + oneshot, each called from a foreign
//! tokio runtime into a single-threaded executor on another thread (the way a service embeds the
//! runtime); sequential and with 8 concurrent callers. `AgentRef::ask` is measured twice: with
//! no metrics recorder installed (the default) and recording into a Prometheus recorder. Then spawning 100k agents vs 100k raw
//! actix actors: time and resident memory per agent.
//!
//! Run: `cargo bench --bench substrate`

// A benchmark's setup and measurement loop is a script, longer than the 60 lines product code
// may have (clippy::too_many_lines, workspace lint).
#![allow(clippy::too_many_lines)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use impresario_runtime::telemetry::Prometheus;
use impresario_runtime::{agent, AgentId, AgentRef, Runtime};
use tokio::sync::{mpsc, oneshot};

#[derive(Message)]
#[rtype(result = "u64")]
struct Ping(u64);

/// The same trivial actor, as an Impresario agent and as a raw actix actor.
#[derive(Default)]
struct Echo;
impl Actor for Echo {
    type Context = Context<Self>;
}
agent!(Echo);
impl Handler<Ping> for Echo {
    type Result = u64;
    fn handle(&mut self, msg: Ping, _: &mut Context<Self>) -> u64 {
        msg.0 + 1
    }
}

/// One way of making a request/response round trip.
#[derive(Clone)]
enum Target {
    Agent(AgentRef<Echo>),
    Actix(Addr<Echo>),
    Tokio(mpsc::UnboundedSender<(u64, oneshot::Sender<u64>)>),
}

impl Target {
    async fn call(&self, n: u64) -> u64 {
        match self {
            Target::Agent(a) => a.ask(Ping(n)).await.unwrap(),
            Target::Actix(a) => a.send(Ping(n)).await.unwrap(),
            Target::Tokio(tx) => {
                let (reply, rx) = oneshot::channel();
                tx.send((n, reply)).unwrap();
                rx.await.unwrap()
            }
        }
    }
}

/// Per-call time of `calls` round trips made by `callers` concurrent tasks.
fn round_trips(
    tokio_rt: &tokio::runtime::Runtime,
    target: &Target,
    callers: usize,
    calls: usize,
) -> Duration {
    let started = Instant::now();
    tokio_rt.block_on(async {
        let tasks: Vec<_> = (0..callers)
            .map(|_| {
                let target = target.clone();
                tokio::spawn(async move {
                    for i in 0..calls / callers {
                        std::hint::black_box(target.call(i as u64).await);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    started.elapsed() / calls as u32
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    match std::env::var(PART).as_deref() {
        Ok("raw") => return spawn_raw(),
        Ok("agents") => return spawn_agents(),
        _ => {}
    }
    const SAMPLES: usize = 33;
    const CALLS: usize = 20_000;
    let tokio_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // Each target runs on one thread of its own, apart from the callers'.
    let runtime = Runtime::builder().arbiters(1).start().unwrap();
    let agent = Target::Agent(
        runtime
            .spawn(AgentId::new("echo", "bench"), || Echo)
            .unwrap(),
    );
    let (metrics, scrape) = Prometheus::new().build();
    let recorded_runtime = Runtime::builder()
        .arbiters(1)
        .metrics(metrics)
        .start()
        .unwrap();
    let recorded = Target::Agent(
        recorded_runtime
            .spawn(AgentId::new("echo", "recorded"), || Echo)
            .unwrap(),
    );
    let (arbiter, raw_thread, raw_system) = common::raw_actix_arbiter();
    let actix = Target::Actix(Echo::start_in_arbiter(&arbiter, |_| Echo));
    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, oneshot::Sender<u64>)>();
    let server = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async move {
                while let Some((n, reply)) = rx.recv().await {
                    let _ = reply.send(n + 1);
                }
            })
    });
    let tokio_target = Target::Tokio(tx);

    println!("# ask round trip, callers in a foreign tokio runtime (2 workers); median of {SAMPLES} samples of {CALLS} calls, the targets taking turns sample by sample");
    for callers in [1usize, 8] {
        let targets = [&agent, &recorded, &actix, &tokio_target];
        let mut times: [Vec<Duration>; 4] = Default::default();
        for sample in 0..SAMPLES {
            // Each sample starts with another target, so drift on a noisy machine hits all alike.
            for turn in 0..targets.len() {
                let t = (sample + turn) % targets.len();
                times[t].push(round_trips(&tokio_rt, targets[t], callers, CALLS));
            }
            // A scrape drains the histogram samples, as a real one every few seconds would.
            std::hint::black_box(scrape.render());
        }
        let mut paired: Vec<f64> = times[1]
            .iter()
            .zip(&times[0])
            .map(|(m, a)| m.as_secs_f64() / a.as_secs_f64())
            .collect();
        paired.sort_by(f64::total_cmp);
        for t in &mut times {
            t.sort();
        }
        let [a, m, x, k] = &times;
        let raw = common::median(x);
        common::row(
            &format!("tokio mpsc+oneshot, {callers} caller(s)"),
            common::median(k),
            Some(raw),
        );
        common::row(
            &format!("raw actix Addr::send, {callers} caller(s)"),
            raw,
            Some(raw),
        );
        common::row(
            &format!("impresario AgentRef::ask, {callers} caller(s)"),
            common::median(a),
            Some(raw),
        );
        common::row(
            &format!("impresario AgentRef::ask, metrics recorded, {callers} caller(s)"),
            common::median(m),
            Some(raw),
        );
        println!(
            "{:<58} {:>12.2}x",
            format!("metrics recorded / not, paired by sample, {callers} caller(s)"),
            common::median(&paired)
        );
    }

    drop((agent, recorded));
    runtime.shutdown_blocking(Duration::from_secs(5));
    recorded_runtime.shutdown_blocking(Duration::from_secs(5));
    raw_system.stop();
    raw_thread.join().unwrap();
    drop(tokio_target);
    server.join().unwrap();

    // Each spawn measurement runs in a fresh process, so neither reuses memory the other freed.
    println!("\n# spawning {AGENTS} agents (time until every actor is built; RSS growth per agent; fresh process each)");
    for part in ["raw", "agents"] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .env(PART, part)
            .output()
            .expect("re-run the bench binary");
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
}

const AGENTS: usize = 100_000;
const PART: &str = "IMPRESARIO_BENCH_SPAWN";

/// Spawns 100k raw actix actors on one arbiter of a plain actix System.
fn spawn_raw() {
    let (arbiter, _thread, _system) = common::raw_actix_arbiter();
    let built = Arc::new(AtomicUsize::new(0));
    let rss_before = rss_bytes();
    let started = Instant::now();
    let addrs: Vec<Addr<Echo>> = (0..AGENTS)
        .map(|_| {
            let built = built.clone();
            Echo::start_in_arbiter(&arbiter, move |_| {
                built.fetch_add(1, Ordering::Relaxed);
                Echo
            })
        })
        .collect();
    while built.load(Ordering::Relaxed) < AGENTS {
        std::thread::yield_now();
    }
    let time = started.elapsed();
    let rss = rss_bytes().saturating_sub(rss_before) / AGENTS as u64;
    println!(
        "raw actix start_in_arbiter (1 arbiter):    {:>10}   {rss:>5} B/actor",
        common::fmt(time)
    );
    drop(addrs);
}

/// Spawns 100k Impresario agents (named, listed in the directory) on 2 arbiters.
fn spawn_agents() {
    let runtime = Runtime::builder().arbiters(2).start().unwrap();
    let built = Arc::new(AtomicUsize::new(0));
    let kind: Arc<str> = Arc::from("echo");
    let rss_before = rss_bytes();
    let started = Instant::now();
    let refs: Vec<AgentRef<Echo>> = (0..AGENTS)
        .map(|i| {
            let built = built.clone();
            runtime
                .spawn(AgentId::new(kind.clone(), i.to_string()), move || {
                    built.fetch_add(1, Ordering::Relaxed);
                    Echo
                })
                .unwrap()
        })
        .collect();
    while built.load(Ordering::Relaxed) < AGENTS {
        std::thread::yield_now();
    }
    let time = started.elapsed();
    let rss = rss_bytes().saturating_sub(rss_before) / AGENTS as u64;
    println!(
        "impresario spawn (2 arbiters, directory):  {:>10}   {rss:>5} B/agent",
        common::fmt(time)
    );
    assert_eq!(refs[AGENTS - 1].ask(Ping(1)).wait().unwrap(), 2);
    let started = Instant::now();
    let report = runtime.shutdown_blocking(Duration::from_secs(60));
    println!(
        "impresario shutdown of {} agents, one by one in reverse order: {}",
        report.stopped,
        common::fmt(started.elapsed())
    );
}
