//! Several `impresario serve` replicas on one PostgreSQL (a real, throwaway server): runs
//! submitted to one replica are driven by whichever claims them, never more than
//! `cluster.max_runs_per_replica` at once by one replica, each exactly once; SIGTERM hands a
//! replica's runs back, and another finishes them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use impresario_pg::test_cluster::shared;
use serde_json::json;

use crate::binary::{Server, TempDir};

const GOAL: &str = "What is 7 plus 5?";

/// A replica named `name` on the database at `url`, driving at most `max_runs` runs, each
/// model call taking `latency_ms`.
fn replica(url: &str, name: &str, max_runs: u32, latency_ms: u32) -> Server {
    let (max_runs, latency) = (max_runs.to_string(), latency_ms.to_string());
    Server::start_with(
        Arc::new(TempDir::new()),
        "",
        &[
            ("IMPRESARIO_JOURNAL__URL", url),
            ("IMPRESARIO_CLUSTER__REPLICA", name),
            (
                "IMPRESARIO_CLUSTER__MAX_RUNS_PER_REPLICA",
                max_runs.as_str(),
            ),
            ("IMPRESARIO_MODELS__OFFLINE_LATENCY_MS", latency.as_str()),
        ],
    )
}

/// The live leases per replica, as `owner|count` lines.
fn leases_by_owner(url: &str) -> Vec<(String, u32)> {
    let out = shared()
        .psql(
            url,
            "SELECT owner, count(*) FROM run_queue WHERE state = 'leased' \
             AND lease_until > clock_timestamp() GROUP BY owner",
        )
        .unwrap();
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (owner, count) = l.split_once('|').unwrap();
            (owner.to_owned(), count.parse().unwrap())
        })
        .collect()
}

/// Polls the run queue's `epoch|state|count` groups until they are `expected` (10 s at most): a
/// run's end is shown before its replica marks it done in the queue.
async fn until_queue(url: &str, expected: &str) {
    let start = Instant::now();
    loop {
        let groups = shared()
            .psql(
                url,
                "SELECT epoch, state, count(*) FROM run_queue GROUP BY 1, 2 ORDER BY 1, 2",
            )
            .unwrap();
        if groups == expected {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the queue stayed {groups:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn replicas_share_the_queue_each_run_driven_once_and_at_most_max_runs_each() {
    let url = shared().create_database(&format!("cluster_share_{}", std::process::id()));
    let a = replica(&url, "a", 2, 150);
    let b = replica(&url, "b", 2, 150);
    let mut ids = Vec::new();
    for _ in 0..10 {
        let (status, body) = a
            .post("/v1/runs", json!({ "goal": GOAL, "tools": ["calculator"] }))
            .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["state"]["state"], "queued", "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    // While they run: never more than 2 live leases per replica, and both replicas drive.
    let (mut owners, mut most, mut waited) = (BTreeSet::new(), 0, 0.0_f64);
    let start = Instant::now();
    loop {
        for (owner, count) in leases_by_owner(&url) {
            most = most.max(count);
            owners.insert(owner);
        }
        waited = waited.max(
            b.scrape()
                .await
                .value_or_zero("impresario_cluster_queue_depth", &[]),
        );
        let done = shared()
            .psql(&url, "SELECT count(*) FROM run_queue WHERE state = 'done'")
            .unwrap();
        if done == "10" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "runs not done: {done} of 10"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(most <= 2, "a replica drove {most} runs at once (max 2)");
    assert_eq!(owners, BTreeSet::from(["a".to_owned(), "b".to_owned()]));
    assert!(
        waited >= 1.0,
        "the queue depth metric never showed a waiting run"
    );
    // Any replica answers for any run: B shows every run as succeeded, whoever drove it.
    for id in &ids {
        b.until(id, |s| s["state"] == "succeeded").await;
    }
    // Each run was claimed once (epoch 1) and is done; each replica started some, 10 in all.
    until_queue(&url, "1|done|10").await;
    let runs_started = "impresario_runs_started_total";
    let by_a = a.scrape().await.value_or_zero(runs_started, &[]);
    let by_b = b.scrape().await.value_or_zero(runs_started, &[]);
    assert!(by_a >= 1.0 && by_b >= 1.0, "a: {by_a}, b: {by_b}");
    assert_eq!(by_a + by_b, 10.0);
}

#[tokio::test]
async fn sigterm_hands_the_runs_back_and_another_replica_finishes_them() {
    let url = shared().create_database(&format!("cluster_drain_{}", std::process::id()));
    let mut a = replica(&url, "a", 4, 400);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (status, body) = a
            .post("/v1/runs", json!({ "goal": GOAL, "tools": ["calculator"] }))
            .await;
        assert_eq!(status, 201, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let start = Instant::now();
    while leases_by_owner(&url) != [("a".to_owned(), 3)] {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "a did not claim the 3 runs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b = replica(&url, "b", 4, 400);
    assert!(a.terminate().success(), "{}", a.stderr());
    assert!(
        a.stderr().contains("handed the runs back"),
        "{}",
        a.stderr()
    );
    for id in &ids {
        b.until_within(id, Duration::from_secs(30), |s| s["state"] == "succeeded")
            .await;
    }
    // Each was claimed twice (a, then b), and halted once for the drain, resumed by b.
    until_queue(&url, "2|done|3").await;
    let halts = shared()
        .psql(
            &url,
            "SELECT count(*) FROM journal_events WHERE kind = 'halted'",
        )
        .unwrap();
    assert_eq!(halts, "3");
}
