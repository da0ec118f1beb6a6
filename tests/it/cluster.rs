//! Several `impresario serve` replicas on one PostgreSQL (a real, throwaway server): runs
//! submitted to one replica are driven by whichever claims them, never more than
//! `cluster.max_runs_per_replica` at once by one replica, each exactly once; SIGTERM hands a
//! replica's runs back, and another finishes them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use impresario_pg::test_cluster::shared;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;

use crate::binary::{Server, TempDir, TOKEN};

const GOAL: &str = "What is 7 plus 5?";

/// A replica named `name` on the database at `url`, driving at most `max_runs` runs, each
/// model call taking `latency_ms`, with leases of 10 s.
fn replica(url: &str, name: &str, max_runs: u32, latency_ms: u32) -> Server {
    replica_leasing(url, name, (max_runs, 10.0), latency_ms)
}

/// [`replica`] with leases of `lease_secs`.
fn replica_leasing(
    url: &str,
    name: &str,
    (max_runs, lease_secs): (u32, f64),
    latency_ms: u32,
) -> Server {
    replica_configured(url, name, (max_runs, lease_secs), latency_ms, ("", &[]))
}

/// The token of tenant `beta` on a replica started by [`replica_knowing_beta`].
const BETA: &str = "beta-token-0123456789abcdef";

/// [`replica`] that also takes [`BETA`], the token of tenant `beta` (who sees none of the
/// runs the admin's token submits with no tenant).
fn replica_knowing_beta(url: &str, name: &str, max_runs: u32, latency_ms: u32) -> Server {
    let beta = "[[server.tokens]]\ntenant = \"beta\"\ntoken_env = \"BETA_TOKEN\"\n";
    let extra = (beta, &[("BETA_TOKEN", BETA)][..]);
    replica_configured(url, name, (max_runs, 10.0), latency_ms, extra)
}

/// [`replica_leasing`] with `extra` config lines and environment variables.
fn replica_configured(
    url: &str,
    name: &str,
    (max_runs, lease_secs): (u32, f64),
    latency_ms: u32,
    (config, env): (&str, &[(&str, &str)]),
) -> Server {
    let (max_runs, latency) = (max_runs.to_string(), latency_ms.to_string());
    let lease = lease_secs.to_string();
    let mut all = vec![
        ("IMPRESARIO_JOURNAL__URL", url),
        ("IMPRESARIO_CLUSTER__REPLICA", name),
        (
            "IMPRESARIO_CLUSTER__MAX_RUNS_PER_REPLICA",
            max_runs.as_str(),
        ),
        ("IMPRESARIO_CLUSTER__LEASE_SECS", lease.as_str()),
        ("IMPRESARIO_MODELS__OFFLINE_LATENCY_MS", latency.as_str()),
    ];
    all.extend_from_slice(env);
    Server::start_with(Arc::new(TempDir::new()), config, &all)
}

/// The single answer of `sql`, polled until `done` holds for it (`limit` at most).
async fn until_sql(url: &str, sql: &str, limit: Duration, done: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let out = shared().psql(url, sql).unwrap();
        if done(&out) {
            return out;
        }
        assert!(start.elapsed() < limit, "{sql} stayed {out:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    let a = replica(&url, "a", 2, 200);
    let b = replica(&url, "b", 2, 200);
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
    // Slow model calls (2 s): none of the runs can end on A while B starts (seconds under load).
    let mut a = replica(&url, "a", 4, 2000);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(calculator_run(&a).await);
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
    let ended = "SELECT count(*) FROM journal_events WHERE kind = 'run_finished'";
    assert_eq!(shared().psql(&url, ended).unwrap(), "0", "a run ended on A");
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

#[tokio::test]
async fn a_replica_paused_past_its_lease_cannot_write_for_the_run_another_took_over() {
    let url = shared().create_database(&format!("cluster_pause_{}", std::process::id()));
    let a = replica_leasing(&url, "a", (4, 1.0), 1500);
    let id = calculator_run(&a).await;
    // A drives it and waits on a model call (journaled before it was sent).
    let requested = format!(
        "SELECT count(*) FROM journal_events WHERE run_id = '{id}' AND kind = 'llm_request'"
    );
    until_sql(&url, &requested, Duration::from_secs(10), |n| n != "0").await;
    let b = replica_leasing(&url, "b", (4, 1.0), 100);
    let pid = Pid::from_raw(i32::try_from(a.pid()).unwrap());
    kill(pid, Signal::SIGSTOP).unwrap();
    // Past the lease, B takes the run over (epoch 2) and drives it from the journal.
    let owner = format!("SELECT owner || ':' || epoch FROM run_queue WHERE run_id = '{id}'");
    until_sql(&url, &owner, Duration::from_secs(15), |o| o == "b:2").await;
    let events_at_takeover = shared()
        .psql(
            &url,
            &format!("SELECT count(*) FROM journal_events WHERE run_id = '{id}'"),
        )
        .unwrap();
    kill(pid, Signal::SIGCONT).unwrap();
    b.until_within(&id, Duration::from_secs(30), |s| s["state"] == "succeeded")
        .await;
    // A woke up with its model's answer and a lost lease: nothing it tried to write (the
    // answer, the halt that stopped its run there) reached the journal.
    let lost = until_metric(&a, "impresario_cluster_leases_lost_total").await;
    assert!(lost >= 1.0, "a never noticed it lost the lease");
    let halted = shared()
        .psql(&url, &format!("SELECT count(*) FROM journal_events WHERE run_id = '{id}' AND kind IN ('halted', 'run_finished')"))
        .unwrap();
    assert_eq!(
        halted, "1",
        "only b's end is journaled (events at takeover: {events_at_takeover})"
    );
    let (_, shown) = b.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(shown["state"]["state"], "succeeded", "{shown}");
    assert!(a.stderr().contains("lease lost"), "{}", a.stderr());
}

/// Scrapes `name` (no labels) from `server` until it is above 0 (10 s at most); its value.
async fn until_metric(server: &Server, name: &str) -> f64 {
    let start = Instant::now();
    loop {
        let value = server.scrape().await.value_or_zero(name, &[]);
        if value > 0.0 || start.elapsed() > Duration::from_secs(10) {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_killed_replicas_runs_are_taken_over_and_finished_repeating_nothing_journaled() {
    let url = shared().create_database(&format!("cluster_kill_{}", std::process::id()));
    let mut a = replica_leasing(&url, "a", (8, 2.0), 300);
    let b = replica_leasing(&url, "b", (8, 2.0), 300);
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(calculator_run(&a).await);
    }
    // Kill A (SIGKILL) once it drives some of them and has journaled a model call of each.
    let a_requested = "SELECT count(DISTINCT q.run_id) FROM run_queue q JOIN journal_events e \
                       ON e.run_id = q.run_id AND e.kind = 'llm_request' WHERE q.owner = 'a'";
    until_sql(&url, a_requested, Duration::from_secs(10), |n| n != "0").await;
    let taken = shared()
        .psql(&url, "SELECT run_id FROM run_queue WHERE owner = 'a'")
        .unwrap();
    a.crash();
    for id in &ids {
        b.until_within(id, Duration::from_secs(30), |s| s["state"] == "succeeded")
            .await;
    }
    let done = "SELECT count(*) FROM run_queue WHERE state = 'done'";
    until_sql(&url, done, Duration::from_secs(10), |n| n == "6").await;
    for run in taken.lines() {
        let epoch = shared()
            .psql(
                &url,
                &format!("SELECT epoch FROM run_queue WHERE run_id = '{run}'"),
            )
            .unwrap();
        let epoch: i64 = epoch.parse().unwrap();
        assert!(
            epoch >= 2,
            "run {run}, driven by a, was not taken over (epoch {epoch})"
        );
    }
    assert_nothing_journaled_twice(&url);
    let results = shared()
        .psql(
            &url,
            "SELECT count(*) FROM journal_events WHERE kind = 'tool_result'",
        )
        .unwrap();
    assert_eq!(results, "6", "one calculator result per run");
}

#[tokio::test]
async fn any_replica_follows_the_events_of_a_run_another_drives_from_its_journal() {
    let url = shared().create_database(&format!("cluster_events_{}", std::process::id()));
    // Slow model calls (1.5 s): the run is still going when B has started (seconds under load).
    let a = replica(&url, "a", 4, 1500);
    let id = calculator_run(&a).await;
    let owner = format!("SELECT owner FROM run_queue WHERE run_id = '{id}'");
    until_sql(&url, &owner, Duration::from_secs(10), |o| o == "a").await;
    let b = replica_knowing_beta(&url, "b", 4, 300);
    let (_, shown) = b.get(&format!("/v1/runs/{id}")).await;
    assert!(
        ["queued", "planning", "running"].contains(&shown["state"]["state"].as_str().unwrap()),
        "b shows the run as its journal does: {shown}"
    );
    let mut stream = b.events(&id).await;
    let first = stream.next().await.unwrap();
    let ended = format!(
        "SELECT count(*) FROM journal_events WHERE run_id = '{id}' AND kind = 'run_finished'"
    );
    assert_eq!(shared().psql(&url, &ended).unwrap(), "0", "followed live");
    let mut events = vec![first];
    events.extend(stream.all().await);
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"run_submitted"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"run_finished"), "{kinds:?}");
    assert!(
        kinds.contains(&"llm_request") && kinds.contains(&"tool_result"),
        "{kinds:?}"
    );
    let ids: Vec<usize> = events.iter().map(|e| e.id).collect();
    assert_eq!(
        ids,
        (1..=ids.len()).collect::<Vec<_>>(),
        "every journaled event, in order"
    );
    // Reconnecting after event 2 continues with event 3.
    let response = b
        .request(reqwest::Method::GET, &format!("/v1/runs/{id}/events"))
        .header("last-event-id", "2")
        .send()
        .await
        .unwrap();
    let text = response.text().await.unwrap();
    let resumed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .collect();
    assert_eq!(resumed.first(), Some(&"3"), "{text}");
    assert_eq!(resumed.len(), ids.len() - 2, "{text}");
    // Reconnecting after the run's last event (its end): nothing more, and the stream ends
    // (the timeout is a safety net; a stream that never ends fails here).
    let request = b
        .request(reqwest::Method::GET, &format!("/v1/runs/{id}/events"))
        .header("last-event-id", ids.len().to_string())
        .send();
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        request.await.unwrap().text().await.unwrap()
    })
    .await
    .expect("the stream after the run's end ended");
    assert!(!ended.contains("id: "), "{ended}");
    // Another tenant's token gets no event of the run, from the start or after one.
    for last in ["0", "2"] {
        let path = format!("/v1/runs/{id}/events");
        let response = b
            .request_as(BETA, reqwest::Method::GET, &path)
            .header("last-event-id", last)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "beta after {last}");
        let text = response.text().await.unwrap();
        assert!(!text.contains("id: ") && !text.contains(GOAL), "{text}");
    }
}

/// The chaos test (issue 14 item 6), bounded in time: 3 replicas on one database, 200 runs over
/// 5 tenants whose ceilings let about half their runs through, each run calling a real MCP
/// server's tool that is not idempotent and records every call outside the process (a line in
/// a file, [`Effects`]); one replica killed (SIGKILL) while such a call is in flight, then a
/// random one twice, each started again. Every run ends once, no journaled model answer or tool
/// result is had twice, every call the journal shows completed happened exactly once and none
/// happened twice (from the file), the call cut off is reported as of unknown outcome (an
/// operator rejects it), every tenant's spend stays within its ceiling, and nothing stays
/// reserved.
#[tokio::test]
async fn chaos_killed_and_restarted_replicas_end_every_run_once_within_the_ceilings() {
    const RUNS: usize = 200;
    const NAMES: [&str; 3] = ["r0", "r1", "r2"];
    let url = shared().create_database(&format!("cluster_chaos_{}", std::process::id()));
    let effects = Effects::new();
    // 3 runs at once per replica, 400 ms per model call, 300 ms per recorded effect.
    let start = |name: &str| effects.replica(&url, name);
    let mut replicas: Vec<Server> = NAMES.into_iter().map(start).collect();
    // What one run costs, measured; then each tenant's ceiling fits about 20 of its 40 runs.
    let probe = submit_to(&replicas[0], "probe", 0).await;
    replicas[0]
        .until(&probe, |s| s["state"] == "succeeded")
        .await;
    let (_, spent) = replicas[0].get("/v1/tenants/probe").await;
    let one_run = spent["spent_micro_usd"].as_u64().unwrap();
    assert!(one_run > 0, "{spent}");
    let ceiling = one_run * 20;
    for t in 0..5 {
        let set = json!({ "ceiling_usd": ceiling as f64 / 1e6 });
        let path = format!("/v1/tenants/t{t}");
        let (status, answer) = replicas[1]
            .send_as(TOKEN, reqwest::Method::PUT, &path, &set)
            .await;
        assert_eq!(status, 200, "{answer}");
    }
    let mut ids = vec![probe];
    for i in 1..=RUNS {
        ids.push(submit_to(&replicas[i % 3], &format!("t{}", i % 5), i).await);
    }
    // Kill the replica driving a recorded call that has not answered yet, then a random one
    // twice; each is started again.
    let mut seed = u64::from(std::process::id());
    for kill in 0..3 {
        let victim = if kill == 0 {
            let owner = effects.owner_of_a_call_in_flight(&url).await;
            NAMES.iter().position(|n| *n == owner).unwrap()
        } else {
            tokio::time::sleep(Duration::from_millis(400)).await;
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            usize::try_from(seed >> 33).unwrap() % 3
        };
        replicas[victim].crash();
        tokio::time::sleep(Duration::from_millis(300)).await;
        replicas[victim] = start(NAMES[victim]);
    }
    // Every run ends, once, and is done in the queue (bounded: 120 s); a call whose outcome a
    // kill left unknown waits for an operator, who rejects it.
    let rejected = end_all(&url, &replicas[0], RUNS + 1).await;
    let all = (RUNS + 1).to_string();
    let done = "SELECT count(*) FROM run_queue WHERE state = 'done'";
    until_sql(&url, done, Duration::from_secs(10), |n| n == all).await;
    assert_nothing_journaled_twice(&url);
    assert_no_stale_epoch_appended(&url);
    effects.assert_each_happened_once(&url, &rejected);
    // Every tenant's spend is at most its ceiling, and the ceilings did refuse runs.
    let mut refused = 0;
    for t in 0..5 {
        let (_, tenant) = replicas[t % 3].get(&format!("/v1/tenants/t{t}")).await;
        let spent = tenant["spent_micro_usd"].as_u64().unwrap();
        assert!(spent <= ceiling, "t{t} spent {spent} > {ceiling}: {tenant}");
        assert_eq!(tenant["reserved_micro_usd"], 0, "t{t}: {tenant}");
    }
    // Nothing stays held on any account: the holds of the calls a kill cut off were released
    // when their runs were claimed again (not left to expire).
    let held = "SELECT count(*) FROM ledger_holds WHERE expires_at > now()";
    assert_eq!(shared().psql(&url, held).unwrap(), "0", "holds left");
    for id in &ids {
        let (_, run) = replicas[0].get(&format!("/v1/runs/{id}")).await;
        let state = run["state"]["state"].as_str().unwrap_or("");
        assert!(
            ["succeeded", "failed", "ceiling_reached"].contains(&state),
            "run {id} ended {run}"
        );
        refused += usize::from(state != "succeeded");
    }
    assert!(refused > 0, "no ceiling refused a run");
    // The kills hit runs in flight: some were taken over by another claim.
    let taken_over = shared()
        .psql(&url, "SELECT count(*) FROM run_queue WHERE epoch > 1")
        .unwrap();
    assert_ne!(taken_over, "0", "no kill interrupted a run");
}

/// Waits (120 s at most) until `runs` runs ended, rejecting through `server` every tool call
/// whose outcome a crash left unknown (`approval_requested` with reason `unknown_outcome`)
/// meanwhile; returns the runs rejected so.
async fn end_all(url: &str, server: &Server, runs: usize) -> BTreeSet<String> {
    let ended = "SELECT count(DISTINCT run_id) FROM journal_events WHERE kind = 'run_finished'";
    let waiting = "SELECT run_id, body::json->>'step', body::json->>'reason' \
                   FROM journal_events a WHERE kind = 'approval_requested' AND NOT EXISTS ( \
                   SELECT 1 FROM journal_events d WHERE d.run_id = a.run_id \
                   AND d.kind = 'approval_decided' AND d.seq > a.seq)";
    let (mut rejected, start) = (BTreeSet::new(), Instant::now());
    while shared().psql(url, ended).unwrap() != runs.to_string() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "runs not ended: {} of {runs}",
            shared().psql(url, ended).unwrap()
        );
        for line in shared().psql(url, waiting).unwrap().lines() {
            let [run, step, reason] = line.split('|').collect::<Vec<_>>()[..] else {
                panic!("{line}")
            };
            assert_eq!(
                reason, "unknown_outcome",
                "run {run} asks about step {step}"
            );
            if rejected.insert(run.to_owned()) {
                let path = format!("/v1/runs/{run}/approvals/{step}");
                let no = json!({ "decision": "reject", "reason": "it may have happened" });
                let (status, answer) = server.post(&path, no).await;
                assert_eq!(status, 202, "{path}: {answer}");
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rejected
}

/// An MCP server with an effect outside the process (`tests/mcp-effects/server.js`, on the
/// TypeScript SDK `.ci/run` installs with the reference server): its tool `effects.record`,
/// declared not idempotent, appends `{"what", "pid"}` to a file shared by every replica's
/// server, then waits 300 ms before it answers.
struct Effects {
    dir: TempDir,
    config: String,
}

impl Effects {
    fn new() -> Effects {
        let reference = impresario::mcp::reference_server().unwrap_or_else(|e| panic!("{e}"));
        let modules = reference.ancestors().nth(4).unwrap();
        let dir = TempDir::new();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp-effects/server.js");
        let log = dir.0.join("effects.jsonl");
        let config = format!(
            "[[tools.mcp]]\nname = \"effects\"\ncommand = \"node\"\nargs = [{script:?}, {:?}, {:?}, \"300\"]\n",
            modules.to_str().unwrap(),
            log.to_str().unwrap(),
        );
        Effects { dir, config }
    }

    /// A replica calling this server's tool: at most 3 runs at once, 2 s leases, 400 ms per
    /// model call.
    fn replica(&self, url: &str, name: &str) -> Server {
        Server::start_with(
            Arc::new(TempDir::new()),
            &self.config,
            &[
                ("IMPRESARIO_JOURNAL__URL", url),
                ("IMPRESARIO_CLUSTER__REPLICA", name),
                ("IMPRESARIO_CLUSTER__MAX_RUNS_PER_REPLICA", "3"),
                ("IMPRESARIO_CLUSTER__LEASE_SECS", "2"),
                ("IMPRESARIO_MODELS__OFFLINE_LATENCY_MS", "400"),
            ],
        )
    }

    /// How many times each `what` was recorded.
    fn recorded(&self) -> BTreeMap<String, usize> {
        let text = std::fs::read_to_string(self.dir.0.join("effects.jsonl")).unwrap_or_default();
        let mut counts = BTreeMap::new();
        for line in text.lines() {
            let call: serde_json::Value = serde_json::from_str(line).unwrap();
            *counts
                .entry(call["what"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        counts
    }

    /// The replica driving a run whose call of the tool was recorded but has not answered
    /// (polled, 30 s at most).
    async fn owner_of_a_call_in_flight(&self, url: &str) -> String {
        let in_flight = "SELECT q.owner, r.body::json->>'goal' FROM journal_events i \
             JOIN run_queue q USING (run_id) \
             JOIN journal_events r ON r.run_id = i.run_id AND r.kind = 'run_submitted' \
             WHERE i.kind = 'tool_call_intent' AND i.body::json->>'tool' = 'effects.record' \
             AND q.state = 'leased' AND NOT EXISTS (SELECT 1 FROM journal_events o \
             WHERE o.run_id = i.run_id AND o.kind = 'tool_result' AND o.idem_key = i.idem_key)";
        let start = Instant::now();
        loop {
            let recorded = self.recorded();
            let out = shared().psql(url, in_flight).unwrap();
            let found = out.lines().find_map(|l| {
                let (owner, goal) = l.split_once('|')?;
                recorded.contains_key(goal).then(|| owner.to_owned())
            });
            if let Some(owner) = found {
                return owner;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no call in flight"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// From the file: no call happened twice; every call the journal shows answered by the
    /// tool happened exactly once; every call recorded was journaled as intended first; the
    /// calls a crash cut off were reported as of unknown outcome (`rejected`), not done again,
    /// and there was at least one.
    fn assert_each_happened_once(&self, url: &str, rejected: &BTreeSet<String>) {
        let recorded = self.recorded();
        let twice: Vec<_> = recorded.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "calls that happened twice: {twice:?}");
        let calls = shared()
            .psql(
                url,
                "SELECT i.run_id, r.body::json->>'goal', coalesce(o.body::jsonb->'outcome' ? 'ok', false) \
                 FROM journal_events i \
                 JOIN journal_events r ON r.run_id = i.run_id AND r.kind = 'run_submitted' \
                 LEFT JOIN journal_events o ON o.run_id = i.run_id AND o.kind = 'tool_result' \
                   AND o.idem_key = i.idem_key \
                 WHERE i.kind = 'tool_call_intent' AND i.body::json->>'tool' = 'effects.record'",
            )
            .unwrap();
        let (mut answered, mut intended) = (0, BTreeSet::new());
        for line in calls.lines() {
            let [run, goal, ok] = line.split('|').collect::<Vec<_>>()[..] else {
                panic!("{line}")
            };
            intended.insert(goal.to_owned());
            if ok == "t" {
                answered += 1;
                assert_eq!(recorded.get(goal), Some(&1), "run {run}'s answered call");
            } else {
                assert!(
                    rejected.contains(run),
                    "run {run}'s call did not answer: {line}"
                );
            }
        }
        let unjournaled: Vec<_> = recorded.keys().filter(|g| !intended.contains(*g)).collect();
        assert!(
            unjournaled.is_empty(),
            "calls with no intent journaled: {unjournaled:?}"
        );
        assert!(answered > 50, "only {answered} calls answered");
        assert!(!rejected.is_empty(), "no call was cut off by a kill");
    }
}

/// Every journal row after a run's submission was written under a lease, and no run's journal
/// goes back to an older lease: a replica that lost a run wrote nothing for it after the claim
/// that took it over. Some run holds rows of two leases (a kill cut it), so the check is not
/// vacuous.
fn assert_no_stale_epoch_appended(url: &str) {
    let unleased = "SELECT coalesce(string_agg(run_id || ' #' || seq || ' ' || kind, ', '), '') \
                    FROM journal_events WHERE lease_epoch IS NULL AND kind <> 'run_submitted'";
    assert_eq!(
        shared().psql(url, unleased).unwrap(),
        "",
        "rows written without a lease"
    );
    let stale = "SELECT DISTINCT run_id FROM (SELECT run_id, lease_epoch, max(lease_epoch) \
                 OVER (PARTITION BY run_id ORDER BY seq \
                 ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before \
                 FROM journal_events) e WHERE lease_epoch < before";
    assert_eq!(
        shared().psql(url, stale).unwrap(),
        "",
        "appends from a stale epoch"
    );
    let cut = "SELECT count(*) FROM (SELECT run_id FROM journal_events \
               GROUP BY run_id HAVING count(DISTINCT lease_epoch) > 1) r";
    assert_ne!(
        shared().psql(url, cut).unwrap(),
        "0",
        "no run was written by two leases"
    );
}

/// Submits a run of [`GOAL`] with the calculator to `server`; its id.
async fn calculator_run(server: &Server) -> String {
    server
        .submit(json!({ "goal": GOAL, "tools": ["calculator"] }))
        .await
}

/// Submits run `n` of `tenant` (the admin's token) to `server`, calling the calculator and
/// `effects.record` (which records its goal); its id.
async fn submit_to(server: &Server, tenant: &str, n: usize) -> String {
    let goal = format!("{GOAL} (chaos run {n})");
    let tools = ["calculator", "effects.record"];
    let body = json!({ "goal": goal, "tenant": tenant, "tools": tools });
    server.submit(body).await
}

/// Nothing journaled was done again: one answer per model call, one result per tool call, one
/// end per run.
fn assert_nothing_journaled_twice(url: &str) {
    for (what, sql) in [
        (
            "answers",
            "SELECT run_id, body::json->>'step', body::json->>'call' FROM journal_events \
             WHERE kind = 'llm_response' GROUP BY 1, 2, 3 HAVING count(*) > 1",
        ),
        (
            "tool results",
            "SELECT run_id, idem_key FROM journal_events WHERE kind = 'tool_result' \
             GROUP BY 1, 2 HAVING count(*) > 1",
        ),
        (
            "ends",
            "SELECT run_id FROM journal_events WHERE kind = 'run_finished' \
             GROUP BY 1 HAVING count(*) > 1",
        ),
    ] {
        assert_eq!(
            shared().psql(url, sql).unwrap(),
            "",
            "{what} journaled twice"
        );
    }
}

#[tokio::test]
async fn a_followed_streaming_run_carries_its_models_text_from_the_replica_driving_it() {
    let url = shared().create_database(&format!("cluster_deltas_{}", std::process::id()));
    // Slow model calls (3 s): B is up and following before the last answer arrives, however
    // slowly it starts under load.
    let a = replica(&url, "a", 4, 3000);
    let body = json!({ "goal": GOAL, "tools": ["calculator"], "stream": true });
    let id = a.submit(body).await;
    let owner = format!("SELECT owner FROM run_queue WHERE run_id = '{id}'");
    until_sql(&url, &owner, Duration::from_secs(10), |o| o == "a").await;
    let b = replica(&url, "b", 4, 300);
    let events = b.events(&id).await.all().await;
    // The text B streamed is the models' answers A journaled after B began to follow (each
    // call's text comes whole from the offline model), call after call.
    let streamed: String = events
        .iter()
        .filter(|e| e.kind == "delta")
        .map(|e| e.data["text"].as_str().unwrap())
        .collect();
    let answers: Vec<&str> = events
        .iter()
        .filter(|e| e.kind == "llm_response")
        .map(|e| e.data["response"]["content"].as_str().unwrap())
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(answers.len(), 2, "{kinds:?}");
    assert!(
        (0..answers.len()).any(|k| streamed == answers[k..].concat()),
        "streamed {streamed:?}, answered {answers:?}: {kinds:?}"
    );
    assert_eq!(kinds.last(), Some(&"run_finished"), "{kinds:?}");
    // A delta carries the sequence number of the journaled event before it.
    let journaled: Vec<usize> = events
        .iter()
        .filter(|e| e.kind != "delta")
        .map(|e| e.id)
        .collect();
    assert_eq!(journaled, (1..=journaled.len()).collect::<Vec<_>>());
    assert!(
        !a.stderr().contains("could not send streamed text"),
        "{}",
        a.stderr()
    );
}
