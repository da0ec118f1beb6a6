//! The LLM layer without a network: the scripted provider, the response cache, fallback
//! chains and configuration checks, all through `Client` and a real ledger.

use crate::llm_support::budget;
use futures_util::future::BoxFuture;
use impresario_runtime::ledger::Charge;
use impresario_runtime::llm::{
    CallOptions, ChatModel, ChatRequest, ChatResponse, Client, FinishReason, LlmError, ModelPrice,
    PriceTable, Rates, RetryPolicy, Scripted, ScriptedReply, Usage,
};
use serde_json::json;

/// Prices for made-up offline models: 1 USD per million tokens in, 2 out.
fn offline_prices(models: &[(&str, &str)]) -> PriceTable {
    let mut prices = PriceTable::default();
    for (model, provider) in models {
        let rates = Rates {
            input: 1_000_000,
            output: 2_000_000,
            cache_read: 1_000_000,
            cache_creation: 1_000_000,
            reasoning: 2_000_000,
        };
        prices.insert(*model, ModelPrice::new(*provider, rates));
    }
    prices
}

fn usage(input: u64, output: u64) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        ..Usage::default()
    }
}

fn scripted_client(script: Scripted) -> Client {
    Client::builder()
        .provider("script", script)
        .prices(offline_prices(&[("toy", "script")]))
        .build()
        .unwrap()
}

#[tokio::test]
async fn scripted_answers_in_order_and_by_match() {
    let script = Scripted::new([
        ScriptedReply::text("about weather").when("weather"),
        ScriptedReply::tool_call("search", json!({"q": "rust"})).usage(usage(100, 10)),
        ScriptedReply::text("second plain"),
    ]);
    let client = scripted_client(script);
    let (account, options) = budget(None);

    let first = client
        .chat(ChatRequest::new("toy").user("search something"), &options)
        .await
        .unwrap();
    assert_eq!(first.finish_reason, FinishReason::ToolCalls);
    assert_eq!(first.tool_calls[0].name, "search");
    assert_eq!(first.tool_calls[0].id, "call_1");
    // 100 x $1/M + 10 x $2/M = 120 micro-USD
    assert_eq!(first.cost_micro_usd, Some(120));

    let matched = client
        .chat(
            ChatRequest::new("toy").user("what's the weather?"),
            &options,
        )
        .await
        .unwrap();
    assert_eq!(matched.content, "about weather");
    assert!(
        matched.usage.estimated,
        "no usage scripted: estimated and marked"
    );

    let last = client
        .chat(ChatRequest::new("toy").user("anything"), &options)
        .await
        .unwrap();
    assert_eq!(last.content, "second plain");

    let err = client
        .chat(ChatRequest::new("toy").user("one more"), &options)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no unused reply"), "{err}");
    assert_eq!(account.snapshot().spent.model_calls, 3);
    assert_eq!(account.snapshot().reserved, Charge::ZERO);
}

#[tokio::test]
async fn cache_hit_costs_nothing_and_is_marked() {
    // one scripted reply: a second request reaching the provider would fail
    let client = Client::builder()
        .provider(
            "script",
            Scripted::new([ScriptedReply::text("4").usage(usage(10, 1))]),
        )
        .prices(offline_prices(&[("toy", "script")]))
        .cache(16)
        .build()
        .unwrap();
    let (account, options) = budget(None);
    let req = ChatRequest::new("toy").user("2+2?").temperature(0.0);

    let miss = client.chat(req.clone(), &options).await.unwrap();
    let hit = client.chat(req.clone(), &options).await.unwrap();

    assert!(!miss.cache_hit);
    assert_eq!(miss.cost_micro_usd, Some(12));
    assert!(hit.cache_hit);
    assert_eq!(hit.cost_micro_usd, Some(0));
    assert_eq!(hit.content, "4");
    assert_eq!(
        account.snapshot().spent.model_calls,
        1,
        "the hit sent nothing"
    );
    assert_eq!(account.snapshot().spent.micro_usd, 12);

    let warm = req.temperature(0.7);
    let err = client.chat(warm, &options).await.unwrap_err();
    assert!(
        matches!(err, LlmError::Config(_)),
        "not cached, reached the spent script: {err:?}"
    );
}

/// A provider whose every call fails as a provider failure (one another model could avoid).
struct Down;
impl ChatModel for Down {
    fn chat<'a>(&'a self, _: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(std::future::ready(Err(LlmError::Transient {
            status: 503,
            message: "down".into(),
            retry_after: None,
        })))
    }
}

#[tokio::test]
async fn a_call_falls_back_along_the_chain_it_is_given() {
    let client = Client::builder()
        .provider("down", Down)
        .provider("up", Scripted::new([ScriptedReply::text("from up")]))
        .prices(offline_prices(&[("first", "down"), ("second", "up")]))
        .retry(RetryPolicy::none())
        .build()
        .unwrap();
    let (_, options) = budget(None);
    let req = ChatRequest::new("first").user("hi");

    let answer = client
        .chat_with_fallbacks(req.clone(), &["second".to_owned()], &options)
        .await
        .unwrap();
    assert_eq!(
        (answer.model.as_str(), answer.content.as_str()),
        ("second", "from up")
    );
    let alone = client.chat_with_fallbacks(req, &[], &options).await;
    assert!(
        matches!(alone, Err(LlmError::Transient { .. })),
        "without fallbacks the failure is the first model's: {alone:?}"
    );
}

#[test]
fn build_rejects_models_without_price_or_provider() {
    let err = Client::builder()
        .fallback("no-such-model", Vec::<String>::new())
        .build()
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("`no-such-model` has no price"),
        "{err}"
    );
    let err = Client::builder()
        .fallback("gpt-4o-mini", ["claude-haiku-4-5"])
        .build()
        .err()
        .unwrap();
    assert!(err.to_string().contains("provider `openai`"), "{err}");
}

#[tokio::test]
async fn invalid_requests_are_rejected_before_anything_is_reserved() {
    let client = scripted_client(Scripted::new([ScriptedReply::text("unreachable")]));
    let (account, options) = budget(None);

    let err = client
        .chat(ChatRequest::new("toy").max_tokens(0).user("hi"), &options)
        .await
        .unwrap_err();
    assert!(
        matches!(err, LlmError::InvalidRequest { status: None, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("`max_tokens`"), "{err}");

    let too_long = ChatRequest::new("gpt-4o-mini")
        .user("hi")
        .max_tokens(20_000);
    let client = Client::builder()
        .provider("openai", Scripted::new([]))
        .build()
        .unwrap();
    let err = client.chat(too_long, &options).await.unwrap_err();
    assert!(err.to_string().contains("16384"), "{err}");
    assert_eq!(account.snapshot().spent, Charge::ZERO);
    assert_eq!(account.snapshot().reserved, Charge::ZERO);
}

#[tokio::test]
async fn an_already_halted_run_sends_nothing() {
    let client = scripted_client(Scripted::new([ScriptedReply::text("unreachable")]));
    let (account, options) = budget(None);
    let halted = CallOptions::new(options.account.clone(), {
        let t = options.halt.clone();
        t.cancel();
        t
    });

    let err = client
        .chat(ChatRequest::new("toy").user("hi"), &halted)
        .await
        .unwrap_err();

    assert!(matches!(err, LlmError::Cancelled), "{err:?}");
    assert_eq!(account.snapshot().spent, Charge::ZERO);
}
