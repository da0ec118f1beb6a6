//! The example service, started as a user starts it (global recorder and all, which is why
//! this binary holds one test): it listens on a free loopback port, runs an offline run, and
//! its `/metrics`, scraped over HTTP and parsed strictly, moved by exactly what the run used.

#[path = "it/support/mod.rs"]
mod support;

#[allow(dead_code)] // its `main` is the example's, not ours
#[path = "../examples/embed_in_service.rs"]
mod example;

use std::time::Duration;

use support::assert_matches_catalog;
use support::exposition::{self, Exposition, Kind};

async fn scrape(http: &reqwest::Client, base: &str) -> Exposition {
    let response = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let text = response.text().await.unwrap();
    let parsed = exposition::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_matches_catalog(&parsed);
    parsed
}

#[actix_web::test]
async fn a_run_moves_the_scraped_metrics_by_exactly_what_it_used() {
    let service = example::start(example::Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        semantic_check_every: Duration::from_secs(3600),
    })
    .await
    .unwrap();
    let base = format!("http://{}", service.addr);
    let http = reqwest::Client::new();

    let live = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["checks"][0]["name"], "journal_writable");

    // The semantic health check asks once at startup; wait for it so it is not counted below.
    let model = [("model", example::HEALTH_MODEL)];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let before = loop {
        let scraped = scrape(&http, &base).await;
        if scraped.value("impresario_health_semantic_up", &model) == Some(1.0) {
            break scraped;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no semantic health check"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let run = http
        .post(format!("{base}/runs"))
        .body("What is the default restart intensity of a supervisor?")
        .send()
        .await
        .unwrap();
    assert_eq!(run.status(), 200);
    let run: serde_json::Value = run.json().await.unwrap();
    let tokens_used = run["tokens"].as_f64().unwrap();
    let model_calls = run["model_calls"].as_f64().unwrap();
    let steps = run["steps"].as_f64().unwrap();
    let cost = run["cost_micro_usd"].as_f64().unwrap();
    assert_eq!(run["state"]["state"], "succeeded", "{run}");
    assert!(
        tokens_used > 0.0 && model_calls > 0.0 && steps > 0.0 && cost > 0.0,
        "{run}"
    );

    let after = scrape(&http, &base).await;
    let counter = |name: &str, labels: &[(&str, &str)]| {
        assert_eq!(after.family(name).kind, Kind::Counter, "{name}");
        after.value_or_zero(name, labels) - before.value_or_zero(name, labels)
    };
    let histogram = |name: &str, labels: &[(&str, &str)]| {
        assert_eq!(after.family(name).kind, Kind::Histogram, "{name}");
        let now = after.histogram(name, labels).unwrap();
        let then = before.histogram(name, labels);
        let (count, sum) = then.map_or((0.0, 0.0), |h| (h.count, h.sum));
        (now.count - count, now.sum - sum)
    };

    // The run.
    assert_eq!(counter("impresario_runs_started_total", &[]), 1.0);
    let succeeded = [("outcome", "succeeded")];
    assert_eq!(counter("impresario_runs_finished_total", &succeeded), 1.0);
    assert_eq!(after.family("impresario_runs_active").kind, Kind::Gauge);
    assert_eq!(after.value("impresario_runs_active", &[]), Some(0.0));
    let (runs, seconds) = histogram("impresario_run_duration_seconds", &succeeded);
    assert!(runs == 1.0 && seconds > 0.0);

    // The agents that did it: the planner made every model call, the executors ran every step.
    let planner = [("agent_kind", "planner")];
    assert_eq!(
        counter("impresario_agent_messages_handled_total", &planner),
        model_calls
    );
    let (handled, _) = histogram("impresario_agent_handler_duration_seconds", &planner);
    assert_eq!(handled, model_calls);
    let executor = [("agent_kind", "executor")];
    assert_eq!(
        counter("impresario_agent_messages_handled_total", &executor),
        steps
    );
    // Sampled every second: absent until the first sample after the agent started, then 0.
    let in_flight = after.value("impresario_agent_in_flight", &planner);
    assert!(matches!(in_flight, None | Some(0.0)), "{in_flight:?}");

    // Its model calls: tokens and cost equal to the run's usage.
    let gen_ai = [
        ("gen_ai_operation_name", "chat"),
        ("gen_ai_provider_name", example::PROVIDER),
        ("gen_ai_request_model", example::MODEL),
    ];
    let tokens = |token_type| {
        let mut labels = gen_ai.to_vec();
        labels.push(("gen_ai_token_type", token_type));
        histogram("gen_ai_client_token_usage", &labels)
    };
    let (input_calls, input) = tokens("input");
    let (output_calls, output) = tokens("output");
    assert_eq!((input_calls, output_calls), (model_calls, model_calls));
    assert_eq!(input + output, tokens_used);
    let (calls, _) = histogram("gen_ai_client_operation_duration_seconds", &gen_ai);
    assert_eq!(calls, model_calls);
    let ours = [("provider", example::PROVIDER), ("model", example::MODEL)];
    assert_eq!(counter("impresario_llm_cost_micro_usd_total", &ours), cost);
    assert_eq!(
        after.value("impresario_llm_breaker_state", &ours),
        Some(0.0)
    );

    service.server.stop(true).await;
    service.stopped.await.unwrap().unwrap();
    service.runtime.shutdown(Duration::from_secs(5)).await;
}
