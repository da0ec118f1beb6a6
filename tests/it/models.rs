//! Models, prices and timeouts from configuration, against a loopback server that speaks the
//! OpenAI API like a LiteLLM proxy: a custom model priced in `[prices]` serves runs and the
//! semantic health check, an unpriced model stops the start naming it, and a hung provider is
//! given up after the configured timeout instead of minutes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::binary::{Server, TempDir};
use crate::provider::{Behaviour, Provider};

/// A plan that answers at once: what a planning model returns for an easy goal.
const FINAL_ANSWER: &str = r#"{"steps": [{"type": "final_answer", "answer": "4"}]}"#;

/// `house-model` (a name no bundled table knows) with a cheaper fallback, priced inline.
const HOUSE_MODELS: &str = r#"
[models]
standard = ["house-model", "house-fallback"]
request_timeout_secs = 1
max_retries = 1
[prices."house-model"]
litellm_provider = "local"
input_cost_per_token = 0.000001
output_cost_per_token = 0.000002
[prices."house-fallback"]
litellm_provider = "local"
input_cost_per_token = 0
output_cost_per_token = 0
"#;

fn serve(provider: &Provider, extra: &str) -> Result<Server, String> {
    let env = [("OPENAI_BASE_URL", provider.base_url.as_str())];
    Server::try_start(Arc::new(TempDir::new()), extra, &env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_model_priced_in_the_config_serves_runs_and_the_semantic_check() {
    let provider = Provider::start(Behaviour::Answer(FINAL_ANSWER.into())).await;
    let extra = format!("{HOUSE_MODELS}[health]\nsemantic_every_secs = 1\n");
    let server = serve(&provider, &extra).unwrap();
    let id = server.submit(json!({ "goal": "What is 2 + 2?" })).await;
    let state = server.until(&id, |s| s["state"] == "succeeded").await;
    assert_eq!(state["answer"], "4");
    let (_, run) = server.get(&format!("/v1/runs/{id}")).await;
    assert!(run["usage"]["micro_usd"].as_u64().unwrap() > 0, "{run}");

    // The check asks the standard tier's model, and its answer contains the expected "4".
    let up = "impresario_health_semantic_up";
    let labels = [("model", "house-model")];
    let start = Instant::now();
    while server.scrape().await.value(up, &labels) != Some(1.0) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no semantic check"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(provider.models().iter().all(|m| m == "house-model"));
    let question = provider
        .requests
        .lock()
        .unwrap()
        .iter()
        .any(|r| r["messages"][0]["content"] == "What is 2 + 2? Answer with the number only.");
    assert!(question, "the configured question was asked");
}

#[tokio::test]
async fn a_model_without_a_price_or_a_provider_stops_the_start_naming_it() {
    let provider = Provider::start(Behaviour::Answer(FINAL_ANSWER.into())).await;
    // gpt-4o is priced (bundled), but by OpenAI, whose key is not set.
    let extra = HOUSE_MODELS.replacen(
        "max_retries = 1\n",
        "max_retries = 1\nheavy = [\"gpt-4o\"]\n",
        1,
    );
    let error = serve(&provider, &extra)
        .err()
        .expect("the start is refused");
    assert!(
        error.contains("model `gpt-4o` (heavy.model of [models])"),
        "{error}"
    );
    assert!(
        error.contains("provider `openai`, which is not configured"),
        "{error}"
    );

    let unpriced = HOUSE_MODELS.replacen("\"house-fallback\"]", "\"mystery-model\"]", 1);
    let error = serve(&provider, &unpriced)
        .err()
        .expect("the start is refused");
    assert!(
        error.contains("model `mystery-model` (standard.fallbacks[0] of [models]) has no price"),
        "{error}"
    );
    assert!(provider.models().is_empty(), "nothing was called");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_provider_is_given_up_after_the_configured_timeout_and_retries() {
    let provider = Provider::start(Behaviour::Hang).await;
    let extra = format!("{HOUSE_MODELS}[health]\nsemantic_every_secs = 0\n");
    let server = serve(&provider, &extra).unwrap();
    let id = server.submit(json!({ "goal": "What is 2 + 2?" })).await;
    // With the old 300 s per attempt this would wait for minutes; `until` gives up after 10 s.
    let state = server.until(&id, |s| s["state"] == "failed").await;
    let detail = state["detail"].as_str().unwrap();
    assert!(detail.contains("no complete response within 1s"), "{state}");
    // Each model of the chain: the first attempt and one retry, all timed out.
    let models = provider.models();
    let chain = [
        "house-model",
        "house-model",
        "house-fallback",
        "house-fallback",
    ];
    assert_eq!(models, chain);
    let retries = "impresario_llm_retries_total";
    for model in ["house-model", "house-fallback"] {
        let labels = [
            ("provider", "local"),
            ("model", model),
            ("status_class", "timeout"),
        ];
        let counted = server.scrape().await.value(retries, &labels);
        assert_eq!(counted, Some(1.0), "{model}");
    }
}
