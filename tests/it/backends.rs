//! One behavioural suite, run on both backends: the real binary journaling in a SQLite file,
//! and the real binary with `journal.url` on a real PostgreSQL (a throwaway server, a database
//! per test). What depends on the backend is checked the same way on each: tenant ceilings
//! enforced and kept across a restart, a run budget over the limit refused, standing halts and
//! their lifts, approvals, a run cut off by a crash resumed at start, tenants kept apart, the
//! ceiling warnings (once per fraction crossed), the health check's spend in the tenants API.
//! Then what PostgreSQL makes possible: two `serve` processes on one database, where a halt
//! sent to one stops a run the other drives, a tenant's ceiling holds across both, and each
//! ceiling warning is reported once between them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use impresario_pg::test_cluster::shared;
use reqwest::Method;
use serde_json::{json, Value};

use crate::binary::{Server, TempDir, TOKEN};
use crate::provider::{Behaviour, Provider};

/// A token bound to tenant `acme`.
const ACME: &str = "acme-token-0123456789abcdef";
/// A token bound to tenant `beta`.
const BETA: &str = "beta-token-0123456789abcdef";

/// Where a service journals.
#[derive(Clone, Debug)]
enum Backend {
    /// `impresario.db` in the service's directory.
    Sqlite,
    /// A database of the test cluster (its URL).
    Postgres(String),
}

impl Backend {
    /// A PostgreSQL database of its own for `test`.
    fn postgres(test: &str) -> Backend {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("{test}_{}_{n}", std::process::id());
        Backend::Postgres(shared().create_database(&name))
    }

    /// `serve` in `dir` on this backend, with tokens of tenants `acme` and `beta` and `extra`
    /// config lines.
    fn serve(&self, dir: Arc<TempDir>, extra: &str) -> Server {
        self.serve_with(dir, extra, &[])
    }

    /// [`Backend::serve`] with `env` set too.
    fn serve_with(&self, dir: Arc<TempDir>, extra: &str, env_extra: &[(&str, &str)]) -> Server {
        let config = format!(
            "{extra}\n[[server.tokens]]\ntenant = \"acme\"\ntoken_env = \"ACME_TOKEN\"\n\
             [[server.tokens]]\ntenant = \"beta\"\ntoken_env = \"BETA_TOKEN\"\n"
        );
        let mut env = vec![("ACME_TOKEN", ACME), ("BETA_TOKEN", BETA)];
        env.extend_from_slice(env_extra);
        if let Backend::Postgres(url) = self {
            env.push(("IMPRESARIO_JOURNAL__URL", url.as_str()));
        }
        Server::start_with(dir, &config, &env)
    }
}

/// Runs the async test `$name(backend)` once per backend.
macro_rules! on_both_backends {
    ($name:ident) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn on_sqlite() {
                super::$name(Backend::Sqlite).await;
            }

            #[tokio::test]
            async fn on_postgres() {
                super::$name(Backend::postgres(stringify!($name))).await;
            }
        }
    };
}

on_both_backends!(tenant_ceilings_are_enforced_listed_and_kept_across_a_restart);
on_both_backends!(a_run_budget_over_the_limit_is_a_422_naming_the_field);
on_both_backends!(a_standing_halt_stops_a_tenants_runs_until_lifted);
on_both_backends!(an_approved_step_runs_and_a_rejected_one_does_not);
on_both_backends!(a_run_cut_off_by_a_crash_is_resumed_at_start);
on_both_backends!(a_tenant_sees_its_own_runs_only);
on_both_backends!(a_tenant_ceiling_warns_once_at_each_fraction_its_spend_crosses);
on_both_backends!(the_semantic_health_checks_spend_shows_in_the_tenants_api);

/// Submits `body` as `token`; the run's id.
async fn submit_as(server: &Server, token: &str, body: Value) -> String {
    let (status, created) = server.send_as(token, Method::POST, "/v1/runs", &body).await;
    assert_eq!(status, 201, "{created}");
    created["id"].as_str().unwrap().to_owned()
}

/// Whether a run's state is one it ended in.
fn ended(state: &Value) -> bool {
    !["queued", "planning", "running", "awaiting_approval"]
        .contains(&state["state"].as_str().unwrap_or("queued"))
}

const GOAL: &str = "What is the default restart intensity?";

async fn tenant_ceilings_are_enforced_listed_and_kept_across_a_restart(backend: Backend) {
    let config = "[budget]\ntenant_default_usd = 3.0\n[budget.tenants]\nacme = 5.0";
    let mut server = backend.serve(Arc::new(TempDir::new()), config);
    let (status, acme) = server.get("/v1/tenants/acme").await;
    assert_eq!(
        (status, &acme["ceiling_micro_usd"]),
        (200, &json!(5_000_000)),
        "{acme}"
    );
    let (_, beta) = server.get("/v1/tenants/beta").await;
    assert_eq!(beta["ceiling_micro_usd"], 3_000_000, "the default: {beta}");

    // A run of beta's is charged on beta.
    let id = submit_as(&server, BETA, json!({ "goal": GOAL })).await;
    server.until(&id, |s| s["state"] == "succeeded").await;
    let (_, beta) = server.get("/v1/tenants/beta").await;
    let spent = beta["spent_micro_usd"].as_u64().unwrap();
    assert!(spent > 0, "{beta}");
    assert_eq!(beta["reserved_micro_usd"], 0, "{beta}");

    let (status, _) = server
        .send_as(BETA, Method::GET, "/v1/tenants/acme", &Value::Null)
        .await;
    assert_eq!(status, 404, "beta does not see acme");

    // acme's ceiling set to one micro-dollar (by an admin, in an amount): its next model call
    // is refused.
    let tiny = json!({ "ceiling_usd": 0.000001 });
    let (status, _) = server
        .send_as(ACME, Method::PUT, "/v1/tenants/acme", &tiny)
        .await;
    assert_eq!(status, 403, "a tenant does not set its own ceiling");
    for bad in [
        json!({ "ceiling_usd": 1e300 }),
        json!({ "ceiling_usd": -1 }),
        json!({}),
    ] {
        let (status, answer) = server
            .send_as(TOKEN, Method::PUT, "/v1/tenants/acme", &bad)
            .await;
        assert_eq!(
            (status, answer["field"].as_str()),
            (422, Some("ceiling_usd")),
            "{answer}"
        );
    }
    let (status, acme) = server
        .send_as(TOKEN, Method::PUT, "/v1/tenants/acme", &tiny)
        .await;
    assert_eq!(
        (status, &acme["ceiling_micro_usd"]),
        (200, &json!(1)),
        "{acme}"
    );
    let id = submit_as(&server, ACME, json!({ "goal": GOAL })).await;
    let state = server.until(&id, ended).await;
    assert_ne!(state["state"], "succeeded", "{state}");
    let (_, acme) = server.get("/v1/tenants/acme").await;
    assert!(acme["spent_micro_usd"].as_u64().unwrap() <= 1, "{acme}");
    assert_eq!(acme["runs"]["active"], 0, "{acme}");

    assert!(server.terminate().success());
    let server = backend.serve(server.dir.clone(), config);
    let (_, acme) = server.get("/v1/tenants/acme").await;
    assert_eq!(
        acme["ceiling_micro_usd"], 1,
        "PUT survives a restart: {acme}"
    );
    let (_, beta) = server.get("/v1/tenants/beta").await;
    assert_eq!(
        beta["spent_micro_usd"], spent,
        "spend survives a restart: {beta}"
    );
    let (_, listed) = server.get("/v1/tenants").await;
    let names: Vec<&str> = listed["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["tenant"].as_str())
        .collect();
    assert!(
        names.contains(&"acme") && names.contains(&"beta"),
        "{listed}"
    );
    let (_, own) = server
        .send_as(BETA, Method::GET, "/v1/tenants", &Value::Null)
        .await;
    assert_eq!(own["tenants"].as_array().unwrap().len(), 1, "{own}");
    assert_eq!(own["tenants"][0]["tenant"], "beta", "{own}");

    // Back to the configured ceiling, which the ledger enforces again.
    let back = json!({ "ceiling_usd": null });
    let (_, acme) = server
        .send_as(TOKEN, Method::PUT, "/v1/tenants/acme", &back)
        .await;
    assert_eq!(acme["ceiling_micro_usd"], 5_000_000, "{acme}");
    let id = submit_as(&server, ACME, json!({ "goal": GOAL })).await;
    server.until(&id, |s| s["state"] == "succeeded").await;
}

async fn a_run_budget_over_the_limit_is_a_422_naming_the_field(backend: Backend) {
    let server = backend.serve(Arc::new(TempDir::new()), "[budget]\nmax_run_usd = 1.0");
    for usd in [json!(1e300), json!(-1), json!(1.5), json!("NaN")] {
        let body = json!({ "goal": GOAL, "budget_usd": usd });
        let (status, answer) = server.send_as(ACME, Method::POST, "/v1/runs", &body).await;
        assert_eq!(
            (status, answer["field"].as_str()),
            (422, Some("budget_usd")),
            "{usd}: {answer}"
        );
    }
    let (_, listed) = server.get("/v1/runs").await;
    assert_eq!(listed["runs"], json!([]), "nothing was journaled");
    let id = server
        .submit(json!({ "goal": GOAL, "budget_usd": 1.0 }))
        .await;
    server.until(&id, |s| s["state"] == "succeeded").await;
}

async fn a_standing_halt_stops_a_tenants_runs_until_lifted(backend: Backend) {
    let server = backend.serve(
        Arc::new(TempDir::new()),
        "[models]\noffline_latency_ms = 60000",
    );
    let running = submit_as(&server, ACME, json!({ "goal": GOAL })).await;
    server.until(&running, |s| s["state"] == "planning").await;
    let (status, answer) = server.post("/v1/halt", json!({ "tenant": "acme" })).await;
    assert_eq!(status, 202, "{answer}");
    let state = server.until(&running, |s| s["state"] == "halted").await;
    assert_eq!(state["reason"], "operator", "{state}");
    let new = submit_as(&server, ACME, json!({ "goal": GOAL })).await;
    server.until(&new, |s| s["state"] == "halted").await;
    let other = submit_as(&server, BETA, json!({ "goal": GOAL })).await;
    server.until(&other, |s| s["state"] == "planning").await;

    let (status, answer) = server
        .post("/v1/halt/lift", json!({ "tenant": "acme" }))
        .await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = server
        .post("/v1/halt/lift", json!({ "tenant": "acme" }))
        .await;
    assert_eq!(status, 409, "nothing stands any more: {answer}");
    let after = submit_as(&server, ACME, json!({ "goal": GOAL })).await;
    server.until(&after, |s| s["state"] == "planning").await;
    let (_, run) = server.get(&format!("/v1/runs/{running}")).await;
    assert_eq!(
        run["state"]["state"], "halted",
        "a lift resumes nothing: {run}"
    );

    // A halted run resumed goes on (its own recorded halt is lifted).
    let (status, answer) = server
        .post(&format!("/v1/runs/{running}/resume"), json!({}))
        .await;
    assert_eq!(status, 202, "{answer}");
    server.until(&running, |s| s["state"] == "planning").await;
}

async fn an_approved_step_runs_and_a_rejected_one_does_not(backend: Backend) {
    let server = backend.serve(Arc::new(TempDir::new()), "");
    let manual = |goal: &str| json!({ "goal": goal, "tools": ["save_note"], "autonomy": "manual" });
    let id = server.submit(manual("Lisbon has trams")).await;
    server
        .until(&id, |s| s["state"] == "awaiting_approval")
        .await;
    let approvals = format!("/v1/runs/{id}/approvals");
    let (status, answer) = server
        .post(&format!("{approvals}/2"), json!({ "decision": "approve" }))
        .await;
    assert_eq!(status, 409, "step 2 is not waiting: {answer}");
    let (status, answer) = server
        .post(&format!("{approvals}/1"), json!({ "decision": "maybe" }))
        .await;
    assert_eq!(
        (status, answer["field"].as_str()),
        (422, Some("decision")),
        "{answer}"
    );
    let (_, run) = server.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(
        run["state"]["state"], "awaiting_approval",
        "nothing was decided: {run}"
    );
    let (status, answer) = server
        .post(&format!("{approvals}/1"), json!({ "decision": "approve" }))
        .await;
    assert_eq!(status, 202, "{answer}");
    let state = server.until(&id, |s| s["state"] == "succeeded").await;
    assert!(
        state["answer"]
            .as_str()
            .unwrap()
            .starts_with("save_note: saved"),
        "{state}"
    );

    let id = server.submit(manual("Porto has trams too")).await;
    server
        .until(&id, |s| s["state"] == "awaiting_approval")
        .await;
    let reject = json!({ "decision": "reject", "reason": "not today" });
    let (status, _) = server
        .post(&format!("/v1/runs/{id}/approvals/1"), reject)
        .await;
    assert_eq!(status, 202);
    server.until(&id, |s| s["state"] == "succeeded").await;
    let (_, run) = server.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(
        run["steps"][0]["outcome"]["Err"]["reason"], "not today",
        "{run}"
    );
}

async fn a_run_cut_off_by_a_crash_is_resumed_at_start(backend: Backend) {
    let slow = "[models]\noffline_latency_ms = 1500";
    let mut server = backend.serve(Arc::new(TempDir::new()), slow);
    let id = server.submit(json!({ "goal": GOAL })).await;
    server.until(&id, |s| s["state"] == "planning").await;
    server.crash();
    let server = backend.serve(server.dir.clone(), "[models]\noffline_latency_ms = 10");
    let state = server
        .until_within(&id, std::time::Duration::from_secs(30), |s| {
            s["state"] == "succeeded"
        })
        .await;
    assert!(state["answer"].is_string(), "{state}");
}

async fn a_tenant_sees_its_own_runs_only(backend: Backend) {
    let server = backend.serve(Arc::new(TempDir::new()), "");
    let acme = submit_as(&server, ACME, json!({ "goal": GOAL })).await;
    let beta = submit_as(&server, BETA, json!({ "goal": GOAL })).await;
    for id in [&acme, &beta] {
        server.until(id, |s| s["state"] == "succeeded").await;
    }
    let (_, listed) = server
        .send_as(BETA, Method::GET, "/v1/runs", &Value::Null)
        .await;
    let ids: Vec<&str> = listed["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids, [beta.as_str()], "{listed}");
    for path in [
        format!("/v1/runs/{acme}"),
        format!("/v1/runs/{acme}/events"),
    ] {
        let (status, answer) = server.send_as(BETA, Method::GET, &path, &Value::Null).await;
        assert_eq!(status, 404, "{path}: {answer}");
    }
    let (status, _) = server
        .send_as(BETA, Method::GET, "/v1/tenants/acme", &Value::Null)
        .await;
    assert_eq!(status, 404);
    let (_, all) = server.get("/v1/runs").await;
    assert_eq!(
        all["runs"].as_array().unwrap().len(),
        2,
        "the admin sees both: {all}"
    );
}

/// Two `serve` processes on one database: two replicas of a cluster, sharing the run queue.
fn two_processes(test: &str, extra: &str) -> (Server, Server) {
    let backend = Backend::postgres(test);
    let a = backend.serve(Arc::new(TempDir::new()), extra);
    let b = backend.serve(Arc::new(TempDir::new()), extra);
    (a, b)
}

#[tokio::test]
async fn a_halt_sent_to_one_process_stops_a_run_the_other_drives() {
    let (a, b) = two_processes("cross_halt", "[models]\noffline_latency_ms = 60000");
    let id = b.submit(json!({ "goal": GOAL })).await;
    b.until(&id, |s| s["state"] == "planning").await;
    let (status, answer) = a.post(&format!("/v1/runs/{id}/halt"), json!({})).await;
    assert_eq!(status, 202, "{answer}");
    let state = b.until(&id, |s| s["state"] == "halted").await;
    assert_eq!(state["reason"], "operator", "{state}");
    // A run that ended is not halted again.
    let (status, answer) = a.post(&format!("/v1/runs/{id}/halt"), json!({})).await;
    assert_eq!(status, 409, "{answer}");

    // A tenant's standing halt sent to B reaches A's new runs; lifted on A, it is over on B.
    let (status, _) = b.post("/v1/halt", json!({ "tenant": "acme" })).await;
    assert_eq!(status, 202);
    let id = submit_as(&a, ACME, json!({ "goal": GOAL })).await;
    a.until(&id, |s| s["state"] == "halted").await;
    let (status, answer) = a.post("/v1/halt/lift", json!({ "tenant": "acme" })).await;
    assert_eq!(status, 200, "{answer}");
    let mut lifted = false;
    for _ in 0..100 {
        let id = submit_as(&b, ACME, json!({ "goal": GOAL })).await;
        let state = b.until(&id, |s| s["state"] != "queued").await;
        b.post(&format!("/v1/runs/{id}/halt"), json!({})).await;
        if state["state"] == "planning" {
            lifted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(lifted, "B kept halting acme's new runs after the lift");
}

/// Submits `n` of acme's runs, to `a` and `b` in turn, without waiting; each with the
/// process it was submitted to.
async fn acme_runs_on_both<'a>(
    a: &'a Server,
    b: &'a Server,
    n: usize,
) -> Vec<(&'a Server, String)> {
    let mut runs = Vec::new();
    for i in 0..n {
        let server = if i % 2 == 0 { a } else { b };
        runs.push((
            server,
            submit_as(server, ACME, json!({ "goal": GOAL })).await,
        ));
    }
    runs
}

#[tokio::test]
async fn a_tenant_ceiling_holds_across_two_processes() {
    let (a, b) = two_processes("cross_ceiling", "");
    // What one run costs, measured.
    let id = submit_as(&a, ACME, json!({ "goal": GOAL })).await;
    a.until(&id, |s| s["state"] == "succeeded").await;
    let (_, acme) = a.get("/v1/tenants/acme").await;
    let one_run = acme["spent_micro_usd"].as_u64().unwrap();
    assert!(one_run > 0, "{acme}");
    // Room for about three more runs across both processes.
    let ceiling = one_run * 4;
    let set = json!({ "ceiling_usd": ceiling as f64 / 1e6 });
    let (status, answer) = b
        .send_as(TOKEN, Method::PUT, "/v1/tenants/acme", &set)
        .await;
    assert_eq!(status, 200, "{answer}");

    let runs = acme_runs_on_both(&a, &b, 8).await;
    let mut succeeded = 0;
    for (server, id) in &runs {
        let state = server
            .until_within(id, std::time::Duration::from_secs(30), ended)
            .await;
        succeeded += usize::from(state["state"] == "succeeded");
    }
    assert!(succeeded < runs.len(), "no run was refused");
    for server in [&a, &b] {
        let (_, acme) = server.get("/v1/tenants/acme").await;
        let spent = acme["spent_micro_usd"].as_u64().unwrap();
        assert!(
            spent <= ceiling,
            "spent {spent} > ceiling {ceiling}: {acme}"
        );
        assert!(spent >= one_run, "{acme}");
        assert_eq!(acme["reserved_micro_usd"], 0, "{acme}");
        assert_eq!(acme["ceiling_micro_usd"], ceiling, "{acme}");
    }
}

/// Which replica (`p<i>`, as `replicas` names them) holds the lease of run `id` in the queue
/// of database `url` (10 s at most). Every replica serves every run's events, so the queue is
/// what tells the driver.
async fn driver_of(url: &str, id: &str) -> usize {
    let sql = format!("SELECT owner FROM run_queue WHERE run_id = '{id}' AND state = 'leased'");
    for _ in 0..500 {
        let owner = shared().psql(url, &sql).unwrap();
        if let Some(i) = owner.strip_prefix('p').and_then(|n| n.parse().ok()) {
            return i;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("no replica drives run {id}");
}

#[tokio::test]
async fn a_decision_posted_to_any_process_reaches_the_run_even_after_its_driver_crashed() {
    let backend = Backend::postgres("cross_approval");
    let Backend::Postgres(url) = &backend else {
        unreachable!("a PostgreSQL backend")
    };
    let config = |i: usize| format!("[cluster]\nlease_secs = 2\nreplica = \"p{i}\"");
    let mut servers: Vec<Server> = (0..2)
        .map(|i| backend.serve(Arc::new(TempDir::new()), &config(i)))
        .collect();
    let manual = |goal: &str| json!({ "goal": goal, "tools": ["save_note"], "autonomy": "manual" });

    // One replica drives the run; the other takes the decision.
    let id = servers[0].submit(manual("Lisbon has trams")).await;
    let driving = driver_of(url, &id).await;
    let (driver, other) = (&servers[driving], &servers[1 - driving]);
    driver
        .until(&id, |s| s["state"] == "awaiting_approval")
        .await;
    let approve = json!({ "decision": "approve" });
    let approvals = format!("/v1/runs/{id}/approvals");
    let (status, answer) = other.post(&format!("{approvals}/2"), approve.clone()).await;
    assert_eq!(status, 409, "step 2 is not waiting: {answer}");
    let (status, answer) = other.post(&format!("{approvals}/1"), approve.clone()).await;
    assert_eq!(status, 202, "{answer}");
    let state = driver.until(&id, |s| s["state"] == "succeeded").await;
    assert!(
        state["answer"]
            .as_str()
            .unwrap()
            .starts_with("save_note: saved"),
        "{state}"
    );
    let (status, answer) = other.post(&format!("{approvals}/1"), approve).await;
    assert_eq!(status, 409, "decided and finished: {answer}");

    // The driving replica crashes while its run waits; the decision, posted to the other one
    // meanwhile, is served when the run is taken over and waits again.
    let id = servers[0].submit(manual("Porto has trams too")).await;
    let driving = driver_of(url, &id).await;
    servers[driving]
        .until(&id, |s| s["state"] == "awaiting_approval")
        .await;
    servers[driving].crash();
    let other = &servers[1 - driving];
    let approvals = format!("/v1/runs/{id}/approvals");
    let reject = json!({ "decision": "reject", "reason": "not today" });
    let (status, answer) = other.post(&format!("{approvals}/1"), reject).await;
    assert_eq!(status, 202, "{answer}");
    let approve = json!({ "decision": "approve" });
    let (status, answer) = other.post(&format!("{approvals}/1"), approve).await;
    assert_eq!(status, 409, "the first decision counts: {answer}");
    let limit = std::time::Duration::from_secs(30);
    other
        .until_within(&id, limit, |s| s["state"] == "succeeded")
        .await;
    let (_, run) = other.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(
        run["steps"][0]["outcome"]["Err"]["reason"], "not today",
        "{run}"
    );
}

#[tokio::test]
async fn a_tenant_first_seen_by_either_process_gets_the_default_ceiling_in_the_database() {
    let (a, b) = two_processes("first_seen", "[budget]\ntenant_default_usd = 0.000001");
    // No process has seen tenant gamma: its ceiling is the default, its account not created.
    let (_, gamma) = a.get("/v1/tenants/gamma").await;
    assert_eq!(gamma["ceiling_micro_usd"], 1, "{gamma}");
    let id = b.submit(json!({ "goal": GOAL, "tenant": "gamma" })).await;
    let limit = std::time::Duration::from_secs(30);
    let state = b.until_within(&id, limit, ended).await;
    assert_ne!(
        state["state"], "succeeded",
        "gamma's default ceiling was not applied: {state}"
    );
    for server in [&a, &b] {
        let (_, gamma) = server.get("/v1/tenants/gamma").await;
        assert_eq!(gamma["ceiling_micro_usd"], 1, "{gamma}");
        assert!(gamma["spent_micro_usd"].as_u64().unwrap() <= 1, "{gamma}");
        assert_eq!(gamma["reserved_micro_usd"], 0, "{gamma}");
    }
    let (_, listed) = a.get("/v1/tenants").await;
    assert!(listed.to_string().contains("\"gamma\""), "{listed}");
}

/// The fractions of a tenant ceiling that warn.
const FRACTIONS: [u64; 3] = [50, 80, 100];

/// The tenant ceiling warnings `servers` reported in all, by fraction of [`FRACTIONS`].
async fn tenant_warnings(servers: &[&Server]) -> Vec<f64> {
    let mut counts = vec![0.0; FRACTIONS.len()];
    for server in servers {
        let scraped = server.scrape().await;
        for (count, percent) in counts.iter_mut().zip(FRACTIONS) {
            let percent = percent.to_string();
            let labels = [
                ("account_kind", "tenant"),
                ("dimension", "micro_usd"),
                ("percent", percent.as_str()),
            ];
            *count += scraped.value_or_zero("impresario_ceiling_warnings_total", &labels);
        }
    }
    counts
}

/// Waits (10 s at most) until `servers` together reported each fraction of acme's `ceiling`
/// that its spend (as the tenants API shows it) reached exactly once, and none it did not
/// reach; then checks that no second report follows. Returns the spend.
async fn warned_once_per_fraction_reached(servers: &[&Server], ceiling: u64) -> u64 {
    let (_, acme) = servers[0].get("/v1/tenants/acme").await;
    let spent = acme["spent_micro_usd"].as_u64().unwrap();
    let expected: Vec<f64> = FRACTIONS
        .iter()
        .map(|p| f64::from(u8::from(spent * 100 >= ceiling * p)))
        .collect();
    let mut reported = Vec::new();
    for _ in 0..200 {
        reported = tenant_warnings(servers).await;
        if reported == expected {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        reported, expected,
        "warnings at {FRACTIONS:?} % of {ceiling} with {spent} spent"
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let later = tenant_warnings(servers).await;
    assert_eq!(later, expected, "a warning was reported twice");
    spent
}

/// Measures what one run costs (on beta, unlimited), and gives acme a ceiling of `runs` of them.
async fn acme_ceiling_of_runs(server: &Server, runs: u64) -> u64 {
    let id = submit_as(server, BETA, json!({ "goal": GOAL })).await;
    server.until(&id, |s| s["state"] == "succeeded").await;
    let (_, beta) = server.get("/v1/tenants/beta").await;
    let one_run = beta["spent_micro_usd"].as_u64().unwrap();
    assert!(one_run > 0, "{beta}");
    let ceiling = one_run * runs;
    let set = json!({ "ceiling_usd": ceiling as f64 / 1e6 });
    let (status, acme) = server
        .send_as(TOKEN, Method::PUT, "/v1/tenants/acme", &set)
        .await;
    assert_eq!((status, &acme["ceiling_micro_usd"]), (200, &json!(ceiling)));
    ceiling
}

async fn a_tenant_ceiling_warns_once_at_each_fraction_its_spend_crosses(backend: Backend) {
    let server = backend.serve(Arc::new(TempDir::new()), "");
    let ceiling = acme_ceiling_of_runs(&server, 5).await;
    assert_eq!(
        warned_once_per_fraction_reached(&[&server], ceiling).await,
        0
    );
    // One run at a time until the ceiling refuses one: after each, the fractions reached so
    // far have warned once each.
    let mut spent = 0;
    for _ in 0..8 {
        let id = submit_as(&server, ACME, json!({ "goal": GOAL })).await;
        let state = server.until(&id, ended).await;
        spent = warned_once_per_fraction_reached(&[&server], ceiling).await;
        if state["state"] != "succeeded" {
            break;
        }
    }
    assert!(spent * 100 >= ceiling * 80, "spent {spent} of {ceiling}");
    assert!(spent <= ceiling, "spent {spent} of {ceiling}");
}

#[tokio::test]
async fn two_processes_spending_at_once_report_each_ceiling_warning_once_between_them() {
    let (a, b) = two_processes("cross_warnings", "");
    let ceiling = acme_ceiling_of_runs(&a, 5).await;
    // Eight runs submitted at once, half to each process: they race to cross each fraction.
    let runs = acme_runs_on_both(&a, &b, 8).await;
    for (server, id) in &runs {
        let limit = std::time::Duration::from_secs(30);
        server.until_within(id, limit, ended).await;
    }
    let spent = warned_once_per_fraction_reached(&[&a, &b], ceiling).await;
    assert!(spent * 100 >= ceiling * 80, "spent {spent} of {ceiling}");
    assert!(spent <= ceiling, "spent {spent} of {ceiling}");
}

/// A model served by the loopback provider, priced, asked by the semantic health check.
const CHECKED_MODEL: &str = r#"
[models]
standard = ["house-model"]
[prices."house-model"]
litellm_provider = "local"
input_cost_per_token = 0.000001
output_cost_per_token = 0.000002
[health]
semantic_every_secs = 1
"#;

async fn the_semantic_health_checks_spend_shows_in_the_tenants_api(backend: Backend) {
    let answer = r#"{"steps": [{"type": "final_answer", "answer": "4"}]}"#;
    let provider = Provider::start(Behaviour::Answer(answer.into())).await;
    let env = [
        ("IMPRESARIO_MODELS__PROVIDER", "auto"),
        ("OPENAI_BASE_URL", provider.base_url.as_str()),
    ];
    let server = backend.serve_with(Arc::new(TempDir::new()), CHECKED_MODEL, &env);
    // The check's calls are charged to tenant `_health`; on PostgreSQL the API reads the
    // database, so they must be held there too.
    let mut health = Value::Null;
    for _ in 0..200 {
        health = server.get("/v1/tenants/_health").await.1;
        if health["spent_micro_usd"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        health["spent_micro_usd"].as_u64().unwrap_or(0) > 0,
        "the checks' spend does not show: {health}; asked {} times",
        provider.models().len()
    );
    assert!(!provider.models().is_empty());
}
