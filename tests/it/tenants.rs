//! Tenants are a boundary in `impresario serve`: tokens bound to a tenant see and act on that
//! tenant's runs only, and nothing one tenant's runs hold (goals, tool outputs, notes, memories)
//! reaches another tenant, through the API or through a prompt. The real binary on loopback,
//! with a real OpenAI-compatible provider on loopback that records every request it receives.
//! Before the fix tenant B's first prompt carried tenant A's goal and outcome (one long-term
//! memory per process) and its `search_notes` could find A's notes (one notes store per
//! process): the crossing test failed, at the first (the prompt carrying A's memory).

use std::sync::Arc;
use std::time::SystemTime;

use impresario::runtime::ledger::{utc_text, BudgetPeriod};

use crate::binary::{Server, TempDir};
use crate::provider::{Behaviour, Provider};
use reqwest::Method;
use serde_json::{json, Value};

const ACME: &str = "acme-token-0123456789abcdef";
const BETA: &str = "beta-token-0123456789abcdef";

/// A service with the admin token, a token of tenant `acme` (from a file) and one of tenant
/// `beta` (from the environment), plus `extra` config lines after `[server]`'s.
fn serve(extra: &str, env: &[(&str, &str)]) -> Server {
    serve_in(Arc::new(TempDir::new()), extra, env)
}

/// [`serve`] in `dir` (another service's, to start again on its journal).
fn serve_in(dir: Arc<TempDir>, extra: &str, env: &[(&str, &str)]) -> Server {
    let acme = dir.write("acme.token", &format!("{ACME}\n"));
    let config = format!(
        "{extra}\n[[server.tokens]]\ntenant = \"acme\"\ntoken_file = {acme:?}\n\
         [[server.tokens]]\ntenant = \"beta\"\ntoken_env = \"BETA_TOKEN\"\n"
    );
    let mut env = env.to_vec();
    env.push(("BETA_TOKEN", BETA));
    Server::start_with(dir, &config, &env)
}

/// Every string `server` answers to `token` on the read routes about `runs`: the list (with and
/// without a tenant query), each run, each run's events.
async fn everything_readable(server: &Server, token: &str, runs: &[&str]) -> String {
    let mut seen = String::new();
    for path in ["/v1/runs", "/v1/runs?tenant=acme", "/v1/runs?tenant=beta"] {
        let (_, body) = server.send_as(token, Method::GET, path, &Value::Null).await;
        seen.push_str(&body.to_string());
    }
    for id in runs {
        let (_, body) = server
            .send_as(token, Method::GET, &format!("/v1/runs/{id}"), &Value::Null)
            .await;
        seen.push_str(&body.to_string());
        let events = server
            .request_as(token, Method::GET, &format!("/v1/runs/{id}/events"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        seen.push_str(&events);
    }
    seen
}

#[tokio::test]
async fn a_tenant_token_sees_and_acts_on_its_own_tenants_runs_only() {
    // Slow model calls: the runs are still running while the other tenant pokes at them.
    let server = serve("[models]\noffline_latency_ms = 400", &[]);
    let goal = json!({ "goal": "What is the default restart intensity?", "autonomy": "manual" });
    let (status, created) = server.send_as(ACME, Method::POST, "/v1/runs", &goal).await;
    assert_eq!(status, 201, "{created}");
    let acme_run = created["id"].as_str().unwrap().to_owned();
    let mut other = goal.clone();
    other["tenant"] = json!("beta");
    let (status, refused) = server.send_as(ACME, Method::POST, "/v1/runs", &other).await;
    assert_eq!(
        (status, refused["field"].as_str()),
        (422, Some("tenant")),
        "{refused}"
    );

    let (_, shown) = server.get(&format!("/v1/runs/{acme_run}")).await;
    assert_eq!(shown["tenant"], "acme", "the token's tenant was forced");
    let run = format!("/v1/runs/{acme_run}");
    let steer = [
        (Method::GET, run.clone()),
        (Method::GET, format!("{run}/events")),
        (Method::POST, format!("{run}/halt")),
        (Method::POST, format!("{run}/resume")),
        (Method::POST, format!("{run}/approvals/1")),
    ];
    for (method, path) in &steer {
        let body = json!({ "decision": "approve" });
        let body = if path.ends_with("/1") {
            body
        } else {
            json!({})
        };
        let (status, answer) = server.send_as(BETA, method.clone(), path, &body).await;
        assert_eq!(status, 404, "beta {method} {path}: {answer}");
        assert!(!answer.to_string().contains("acme"), "{answer}");
    }
    let (status, _) = server
        .send_as(BETA, Method::POST, "/v1/halt", &json!({ "tenant": "acme" }))
        .await;
    assert_eq!(status, 404, "beta may not halt acme");
    let (status, _) = server
        .send_as(BETA, Method::POST, "/v1/halt", &json!({ "all": true }))
        .await;
    assert_eq!(status, 403, "halting everyone is an admin's");
    let (status, _) = server
        .send_as(BETA, Method::GET, "/v1/tools?tenant=acme", &Value::Null)
        .await;
    assert_eq!(status, 404, "beta does not list acme's tools");
    let listed = everything_readable(&server, BETA, &[]).await;
    assert!(!listed.contains(&acme_run), "{listed}");

    // The run was not disturbed by any of it: acme halts it, as its owner may.
    let (status, answer) = server
        .send_as(ACME, Method::POST, &format!("{run}/halt"), &json!({}))
        .await;
    assert_eq!(status, 202, "{answer}");
    let (_, listed) = server
        .send_as(ACME, Method::GET, "/v1/runs", &Value::Null)
        .await;
    assert_eq!(listed["runs"].as_array().unwrap().len(), 1, "{listed}");
    let (_, listed) = server.get("/v1/runs").await;
    assert_eq!(
        listed["runs"][0]["id"],
        acme_run.as_str(),
        "the admin sees it"
    );
}

/// What tenant `acme` keeps secret.
const SECRET: &str = "SECRET-ACME-7731";

#[tokio::test]
async fn secrets_of_one_tenant_never_reach_another_tenants_routes_or_prompts() {
    let provider = Provider::start(Behaviour::Offline).await;
    let seen = || -> Vec<String> {
        let requests = provider.requests.lock().unwrap();
        requests.iter().map(Value::to_string).collect()
    };
    let server = serve(
        "",
        &[
            ("IMPRESARIO_MODELS__PROVIDER", "auto"),
            ("OPENAI_BASE_URL", &provider.base_url),
        ],
    );
    // acme's goal holds the secret; the model saves it as a note (a tool output says so) and
    // searches it back; the run remembers its goal and outcome.
    let acme = json!({
        "goal": format!("Remember the vault audit code {SECRET} for the vault audit"),
        "tools": ["save_note", "search_notes"],
    });
    let (status, created) = server.send_as(ACME, Method::POST, "/v1/runs", &acme).await;
    assert_eq!(status, 201, "{created}");
    let acme_run = created["id"].as_str().unwrap().to_owned();
    let ended = server.until(&acme_run, |s| s["state"] == "succeeded").await;
    let (_, shown) = server.get(&format!("/v1/runs/{acme_run}")).await;
    assert!(
        shown.to_string().contains(SECRET),
        "acme's run holds the secret: {ended}"
    );
    let before_beta = seen().len();
    assert!(
        seen().iter().any(|body| body.contains(SECRET)),
        "acme's prompts carry the secret, so the check below can fail"
    );

    // beta asks about the same words: its search and its memory must not find acme's.
    let beta = json!({ "goal": "What is the vault audit code?", "tools": ["search_notes"] });
    let (status, created) = server.send_as(BETA, Method::POST, "/v1/runs", &beta).await;
    assert_eq!(status, 201, "{created}");
    let beta_run = created["id"].as_str().unwrap().to_owned();
    server
        .until(&beta_run, |s| {
            s["state"].is_string()
                && s["state"] != "running"
                && s["state"] != "planning"
                && s["state"] != "queued"
        })
        .await;

    let prompts = seen()[before_beta..].to_vec();
    assert!(!prompts.is_empty(), "beta's run called the model");
    for prompt in &prompts {
        assert!(
            !prompt.contains(SECRET),
            "a prompt for beta carried acme's secret: {prompt}"
        );
        assert!(
            !prompt.contains("Remember the vault"),
            "a prompt for beta carried acme's goal: {prompt}"
        );
    }
    let readable = everything_readable(&server, BETA, &[&beta_run, &acme_run]).await;
    assert!(readable.contains(&beta_run), "beta reads its own run");
    assert!(
        !readable.contains(SECRET),
        "beta read acme's secret: {readable}"
    );
    assert!(
        !readable.contains("Remember the vault"),
        "beta read acme's goal: {readable}"
    );
}

/// Runs `goal` as `token`'s tenant and waits for its success.
async fn run_to_the_end(server: &Server, token: &str, goal: &str) -> Value {
    let body = json!({ "goal": goal });
    let (status, created) = server.send_as(token, Method::POST, "/v1/runs", &body).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    server.until(&id, |s| s["state"] == "succeeded").await
}

/// What acme's first run is about: words no built-in note holds.
const ROTA: &str = "lighthouse keeper rota LHK-5521";

#[tokio::test]
async fn long_term_memory_is_kept_per_tenant_in_a_file_beside_the_journal_across_a_restart() {
    let provider = Provider::start(Behaviour::Offline).await;
    let env = [
        ("IMPRESARIO_MODELS__PROVIDER", "auto"),
        ("OPENAI_BASE_URL", provider.base_url.as_str()),
    ];
    let prompts_since = |from: usize| -> Vec<String> {
        let requests = provider.requests.lock().unwrap();
        requests[from..].iter().map(Value::to_string).collect()
    };
    let mut server = serve("", &env);
    run_to_the_end(
        &server,
        ACME,
        &format!("Draw up the {ROTA} for the harbour"),
    )
    .await;
    assert!(server.terminate().success());
    assert!(
        server.dir.0.join("impresario.db.memory").is_file(),
        "the memory file is beside the journal"
    );

    let server = serve_in(server.dir.clone(), "", &env);
    let from = provider.requests.lock().unwrap().len();
    run_to_the_end(&server, BETA, "Who is on the lighthouse keeper rota?").await;
    let beta = prompts_since(from);
    assert!(!beta.is_empty(), "beta's run called the model");
    for prompt in &beta {
        assert!(
            !prompt.contains("LHK-5521"),
            "beta recalled acme's run: {prompt}"
        );
    }
    let from = provider.requests.lock().unwrap().len();
    run_to_the_end(&server, ACME, "Who is on the lighthouse keeper rota?").await;
    assert!(
        prompts_since(from)
            .iter()
            .any(|prompt| prompt.contains("LHK-5521")),
        "acme's run recalls acme's run of before the restart: {:?}",
        prompts_since(from)
    );
}

/// With `[budget] period = "month"` the tenants API shows the period, its start (the first of
/// this month at 00:00 UTC) and what was spent in it; without a period, `"none"` and no start.
#[tokio::test]
async fn the_tenants_api_shows_the_budget_period_and_the_spend_in_it() {
    let monthly =
        "[budget]\nperiod = \"month\"\n[journal]\nretain_finished_runs = 0\nretain_days = 0";
    let server = serve(monthly, &[]);
    run_to_the_end(&server, ACME, "What is the default restart intensity?").await;
    let (status, acme) = server
        .send_as(ACME, Method::GET, "/v1/tenants/acme", &Value::Null)
        .await;
    assert_eq!(status, 200, "{acme}");
    let start = BudgetPeriod::Month.start(SystemTime::now()).map(utc_text);
    assert_eq!(acme["period"], "month", "{acme}");
    assert_eq!(acme["period_start"].as_str(), start.as_deref(), "{acme}");
    assert!(
        acme["spent_micro_usd"].as_u64().unwrap() > 0,
        "this month's run: {acme}"
    );
    drop(server);

    let server = serve("", &[]);
    let (_, acme) = server
        .send_as(ACME, Method::GET, "/v1/tenants/acme", &Value::Null)
        .await;
    assert_eq!(
        (&acme["period"], &acme["period_start"]),
        (&json!("none"), &Value::Null),
        "{acme}"
    );
}
