//! Several `impresario serve` replicas on one PostgreSQL (issue 14): this build's binary, the
//! offline model at 50 ms per call, a throwaway server (`impresario_pg::test_cluster`).
//!
//! - Runs per second with 1, 2 and 3 replicas: 120 calculator runs submitted round-robin, timed
//!   from the first submission until the queue has them all done; 3 rounds each, medians; the
//!   1-replica figure, measured in the same run, is the baseline of the ratios.
//! - Failover: a replica SIGKILLed while it drives a run; the time until the other replica
//!   claimed the run (its queue row's owner), with 2 s leases; 5 rounds, median.
//! - Cross-replica halt: a halt sent to the replica that does not drive a run, until the one
//!   that drives it shows the run halted; 30 rounds, p50 and p99 (of 30 samples: the 29th).
//!
//! Run: `cargo bench --bench cluster` (release; BENCHMARKS.md, "Cluster").

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::runs::median_of;
use impresario_pg::test_cluster::shared;
use serde_json::{json, Value};

const TOKEN: &str = "cluster-bench-token-0123456789abcdef";
const GOAL: &str = "What is 7 plus 5?";

/// A replica, killed when dropped.
struct Replica {
    child: Child,
    url: String,
    _dir: Dir,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary folder, removed when dropped.
struct Dir(std::path::PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts replica `name` on the database at `db`: `lease_secs` leases, `latency_ms` per call.
fn replica(db: &str, name: &str, lease_secs: f64, latency_ms: u64) -> Replica {
    static STARTED: AtomicUsize = AtomicUsize::new(0);
    let n = STARTED.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "impresario-cluster-bench-{}-{name}-{n}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("impresario.toml");
    std::fs::write(
        &config,
        format!("[server]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n[models]\nprovider = \"offline\"\n"),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_impresario"))
        .current_dir(&dir)
        .env_clear()
        .env("IMPRESARIO_JOURNAL__URL", db)
        .env("IMPRESARIO_CLUSTER__REPLICA", name)
        .env("IMPRESARIO_CLUSTER__LEASE_SECS", lease_secs.to_string())
        .env(
            "IMPRESARIO_MODELS__OFFLINE_LATENCY_MS",
            latency_ms.to_string(),
        )
        .args(["--config", config.to_str().unwrap(), "serve"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .expect(&line)
        .to_owned();
    Replica {
        child,
        url,
        _dir: Dir(dir),
    }
}

/// `sql`'s answer on the database at `db`.
fn psql(db: &str, sql: &str) -> String {
    shared().psql(db, sql).unwrap()
}

/// Polls `sql` until `done` holds for its answer (60 s at most); the time it took.
async fn until(db: &str, sql: &str, done: impl Fn(&str) -> bool) -> Duration {
    let start = Instant::now();
    while !done(&psql(db, sql)) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{sql} did not change"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

async fn post(http: &reqwest::Client, url: &str, path: &str, body: Value) -> Value {
    let response = http
        .post(format!("{url}{path}"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    response.json().await.unwrap()
}

/// Runs per second of `replicas` replicas over 120 runs.
async fn throughput(http: &reqwest::Client, round: usize, replicas: usize) -> f64 {
    const RUNS: usize = 120;
    let db = shared().create_database(&format!(
        "bench_tp_{}_{round}_{replicas}",
        std::process::id()
    ));
    let started: Vec<Replica> = (0..replicas)
        .map(|i| replica(&db, &format!("r{i}"), 10.0, 50))
        .collect();
    let start = Instant::now();
    for i in 0..RUNS {
        let body = json!({ "goal": GOAL, "tools": ["calculator"] });
        post(http, &started[i % replicas].url, "/v1/runs", body).await;
    }
    let all = RUNS.to_string();
    until(
        &db,
        "SELECT count(*) FROM run_queue WHERE state = 'done'",
        |n| n == all,
    )
    .await;
    RUNS as f64 / start.elapsed().as_secs_f64()
}

/// From SIGKILL of the replica driving a run to the other replica's claim of it.
async fn failover(http: &reqwest::Client, round: usize) -> Duration {
    let db = shared().create_database(&format!("bench_fo_{}_{round}", std::process::id()));
    let mut a = replica(&db, "a", 2.0, 300);
    let id = post(
        http,
        &a.url,
        "/v1/runs",
        json!({ "goal": GOAL, "tools": ["calculator"] }),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let owner = format!("SELECT owner FROM run_queue WHERE run_id = '{id}'");
    until(&db, &owner, |o| o == "a").await;
    let _b = replica(&db, "b", 2.0, 300);
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    until(&db, &owner, |o| o == "b").await
}

/// From a halt sent to one replica to the other, which drives the run, showing it halted.
async fn halt_latency(http: &reqwest::Client, db: &str, pair: [&Replica; 2]) -> Duration {
    let id = post(http, &pair[0].url, "/v1/runs", json!({ "goal": GOAL })).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let owner = format!("SELECT owner FROM run_queue WHERE run_id = '{id}'");
    until(db, &owner, |o| o == "a" || o == "b").await;
    let (driver, sender) = match psql(db, &owner).as_str() {
        "a" => (pair[0], pair[1]),
        _ => (pair[1], pair[0]),
    };
    let start = Instant::now();
    post(http, &sender.url, &format!("/v1/runs/{id}/halt"), json!({})).await;
    loop {
        let shown: Value = http
            .get(format!("{}/v1/runs/{id}", driver.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if shown["state"]["state"] == "halted" {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not halted: {shown}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::new();
    rt.block_on(async {
        let mut by_replicas = Vec::new();
        for replicas in 1..=3 {
            let mut rates = Vec::new();
            for round in 0..3 {
                rates.push(throughput(&http, round, replicas).await);
            }
            let rate = median_of(rates.clone());
            println!("{replicas} replica(s): {rate:.1} runs/s (median of {rates:.1?})");
            by_replicas.push(rate);
        }
        for (i, rate) in by_replicas.iter().enumerate().skip(1) {
            println!("{} replicas / 1: {:.2}x", i + 1, rate / by_replicas[0]);
        }
        let mut times = Vec::new();
        for round in 0..5 {
            times.push(failover(&http, round).await.as_secs_f64());
        }
        println!("failover (2 s leases), kill to claim elsewhere: median {:.2} s ({times:.2?})", median_of(times.clone()));
        let db = shared().create_database(&format!("bench_halt_{}", std::process::id()));
        let a = replica(&db, "a", 10.0, 60_000);
        let b = replica(&db, "b", 10.0, 60_000);
        let mut latencies = Vec::new();
        for _ in 0..30 {
            latencies.push(halt_latency(&http, &db, [&a, &b]).await.as_secs_f64() * 1000.0);
        }
        latencies.sort_by(f64::total_cmp);
        println!("cross-replica halt, sent to the replica not driving the run, seen halted on the driver: p50 {:.1} ms, p99 {:.1} ms (30 halts)", latencies[14], latencies[28]);
    });
}
