//! The LLM layer against a real HTTP server on loopback: both providers' wire formats, usage
//! and cost, every failure class the reliability layer handles, the breaker, the fallback
//! chain, cancellation, and the ledger contract (reserve before sending, nothing left reserved).

use std::time::Duration;

use crate::llm_support::*;
use impresario_runtime::ledger::{Charge, Dimension};
use impresario_runtime::llm::estimate::estimate_input;
use impresario_runtime::llm::{
    BreakerConfig, BreakerState, ChatRequest, Client, FinishReason, LlmError, Message, OpenAi,
    OpenAiConfig, PriceTable, RateLimitInfo, RetryPolicy, ToolCall, ToolDef, Usage,
};
use serde_json::json;

fn price(model: &str) -> impresario_runtime::llm::ModelPrice {
    PriceTable::bundled().get(model).unwrap().clone()
}

/// What a call that was abandoned in flight is charged: its input estimate.
fn input_charge(req: &ChatRequest) -> Charge {
    let tokens = estimate_input(req).tokens;
    Charge {
        micro_usd: price(&req.model).input_cost(tokens),
        tokens,
        model_calls: 1,
    }
}

fn usage_charge(model: &str, usage: &Usage) -> Charge {
    Charge {
        micro_usd: price(model).cost(usage),
        tokens: usage.total_tokens(),
        model_calls: 1,
    }
}

fn mini(prompt: &str) -> ChatRequest {
    ChatRequest::new("gpt-4o-mini").user(prompt).max_tokens(100)
}

fn openai_client(server: &Server, retry: RetryPolicy) -> Client {
    Client::builder()
        .provider("openai", openai(server))
        .retry(retry)
        .build()
        .unwrap()
}

#[tokio::test]
async fn openai_success_reports_exact_usage_and_cost() {
    let body = json!({
        "id": "chatcmpl-9",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris"}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500,
            "prompt_tokens_details": {"cached_tokens": 200},
            "completion_tokens_details": {"reasoning_tokens": 100}
        }
    });
    let server = Server::start([Reply::json(200, body)
        .header("x-request-id", "req_abc")
        .header("x-ratelimit-remaining-requests", "499")
        .header("x-ratelimit-remaining-tokens", "149000")])
    .await;
    let client = openai_client(&server, RetryPolicy::none());
    let (account, options) = budget(Some(1_000_000));
    // Long enough for the 1,000 prompt tokens the server reports (more would be an overshoot).
    let system = format!("Be brief.{}", " France".repeat(1000));
    let req = ChatRequest::new("gpt-4o-mini")
        .system(system.clone())
        .user("Capital of France?")
        .max_tokens(600)
        .temperature(0.0)
        .stop("\n\n");

    let resp = client.chat(req, &options).await.unwrap();

    assert_eq!(resp.content, "Paris");
    assert_eq!(resp.finish_reason, FinishReason::Stop);
    assert_eq!(resp.request_id.as_deref(), Some("req_abc"));
    assert_eq!(
        resp.rate_limit,
        Some(RateLimitInfo {
            remaining_requests: Some(499),
            remaining_tokens: Some(149_000)
        })
    );
    let usage = Usage {
        input_tokens: 1000,
        output_tokens: 500,
        cache_read_tokens: 200,
        cache_creation_tokens: 0,
        reasoning_tokens: 100,
        estimated: false,
    };
    assert_eq!(resp.usage, usage);
    // 800 uncached x $0.15/M + 200 cached x $0.075/M + 500 output x $0.60/M = $0.000435
    assert_eq!(resp.cost_micro_usd, Some(435));
    assert!(!resp.cache_hit);
    let snap = account.snapshot();
    assert_eq!(
        snap.spent,
        Charge {
            micro_usd: 435,
            tokens: 1500,
            model_calls: 1,
        }
    );
    assert_eq!(snap.reserved, Charge::ZERO);

    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(seen[0].header("authorization"), Some("Bearer sk-test"));
    let sent = seen[0].json();
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert_eq!(
        sent["messages"],
        json!([{"role": "system", "content": system}, {"role": "user", "content": "Capital of France?"}])
    );
    assert_eq!(sent["max_completion_tokens"], 600);
    assert!(sent.get("max_tokens").is_none());
    assert_eq!(sent["temperature"], 0.0);
    assert_eq!(sent["stop"], json!(["\n\n"]));
}

#[tokio::test]
async fn anthropic_success_normalizes_cached_input_and_costs_it() {
    let body = json!({
        "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "text", "text": "Sunny, 21C."}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 100, "output_tokens": 50, "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 200}
    });
    let server = Server::start([Reply::json(200, body).header("request-id", "req_ant")]).await;
    let client = Client::builder()
        .provider("anthropic", anthropic(&server))
        .retry(RetryPolicy::none())
        .build()
        .unwrap();
    let (account, options) = budget(None);
    let weather = ToolDef {
        name: "get_weather".into(),
        description: "Weather for a city".into(),
        parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
    };
    // Long enough for the 1,300 input tokens the server reports (more would be an overshoot).
    let system = format!("You are terse.{}", " x".repeat(500));
    let req = ChatRequest::new("claude-sonnet-4-5")
        .system(system.clone())
        .user("Weather in Paris?")
        .message(Message::Assistant {
            content: String::new(),
            tool_calls: vec![ToolCall {
                id: "toolu_1".into(),
                name: "get_weather".into(),
                arguments: json!({"city": "Paris"}),
            }],
        })
        .message(Message::tool_result("toolu_1", "sunny, 21C"))
        .tool(weather)
        .max_tokens(200);

    let resp = client.chat(req, &options).await.unwrap();

    assert_eq!(resp.content, "Sunny, 21C.");
    assert_eq!(resp.request_id.as_deref(), Some("req_ant"));
    assert_eq!(
        resp.usage.input_tokens, 1300,
        "input + cache read + cache creation"
    );
    assert_eq!(resp.usage.cache_read_tokens, 1000);
    assert_eq!(resp.usage.cache_creation_tokens, 200);
    // 100 x $3/M + 1000 x $0.30/M + 200 x $3.75/M + 50 x $15/M = $0.0021
    assert_eq!(resp.cost_micro_usd, Some(2100));
    assert_eq!(account.snapshot().spent.micro_usd, 2100);
    assert_eq!(account.snapshot().reserved, Charge::ZERO);

    let seen = &server.seen()[0];
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.header("x-api-key"), Some("sk-ant-test"));
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    let sent = seen.json();
    assert_eq!(sent["system"], system);
    assert_eq!(sent["max_tokens"], 200);
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny, 21C"}]}
        ])
    );
    assert_eq!(sent["tools"][0]["name"], "get_weather");
    assert_eq!(sent["tools"][0]["input_schema"]["type"], "object");
}

#[tokio::test]
async fn structured_output_uses_each_providers_mechanism() {
    let schema = json!({"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"], "additionalProperties": false});
    let oa = Server::start([Reply::json(200, openai_ok(r#"{"answer":42}"#, 30, 5))]).await;
    let an = Server::start([Reply::json(
        200,
        json!({
            "id": "msg_2", "type": "message", "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_9", "name": "answer", "input": {"answer": 42}}],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 400, "output_tokens": 20}
        }),
    )])
    .await;
    let client = Client::builder()
        .provider("openai", openai(&oa))
        .provider("anthropic", anthropic(&an))
        .build()
        .unwrap();
    let (_, options) = budget(None);
    for model in ["gpt-4o-mini", "claude-haiku-4-5"] {
        let req =
            ChatRequest::new(model)
                .user("6 x 7?")
                .output_schema("answer", schema.clone(), true);
        let resp = client.chat(req, &options).await.unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&resp.content).unwrap();
        assert_eq!(parsed, json!({"answer": 42}), "{model}");
        assert!(resp.tool_calls.is_empty(), "{model}");
        assert_eq!(resp.finish_reason, FinishReason::Stop, "{model}");
    }
    let sent = oa.seen()[0].json();
    assert_eq!(sent["response_format"]["type"], "json_schema");
    assert_eq!(sent["response_format"]["json_schema"]["name"], "answer");
    assert_eq!(sent["response_format"]["json_schema"]["strict"], true);
    let sent = an.seen()[0].json();
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "tool", "name": "answer"})
    );
    assert_eq!(sent["tools"][0]["input_schema"], schema);
}

#[tokio::test]
async fn openai_429_retry_after_ms_is_honoured() {
    let limited = json!({"error": {"message": "Rate limit reached for requests", "type": "requests", "code": "rate_limit_exceeded"}});
    let server = Server::start([
        Reply::json(429, limited).header("retry-after-ms", "300"),
        Reply::json(200, openai_ok("ok", 10, 2)),
    ])
    .await;
    let client = openai_client(&server, fast_retry(2));
    let (account, options) = budget(None);

    let resp = client.chat(mini("hi"), &options).await.unwrap();

    assert_eq!(resp.content, "ok");
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    // backoff alone would wait 10 ms at most
    let waited = seen[1].at - seen[0].at;
    assert!(
        waited >= Duration::from_millis(300),
        "waited only {waited:?}"
    );
    assert_eq!(
        account.snapshot().spent.model_calls,
        1,
        "the 429 was not billed"
    );
}

#[tokio::test]
async fn anthropic_429_retry_after_seconds_is_honoured() {
    let limited = json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Number of requests has exceeded your per-minute rate limit"}});
    let server = Server::start([
        Reply::json(429, limited).header("retry-after", "1"),
        Reply::json(200, anthropic_ok("ok", 10, 2)),
    ])
    .await;
    let client = Client::builder()
        .provider("anthropic", anthropic(&server))
        .retry(fast_retry(2))
        .build()
        .unwrap();
    let (_, options) = budget(None);

    let req = ChatRequest::new("claude-haiku-4-5").user("hi");
    client.chat(req, &options).await.unwrap();

    let seen = server.seen();
    let waited = seen[1].at - seen[0].at;
    assert!(waited >= Duration::from_secs(1), "waited only {waited:?}");
}

#[tokio::test]
async fn retry_after_beyond_the_limit_is_not_retried() {
    let limited = json!({"error": {"message": "Rate limit reached", "type": "tokens", "code": "rate_limit_exceeded"}});
    let server = Server::start([
        Reply::json(429, limited).header("retry-after", "121"),
        Reply::json(200, openai_ok("too late", 10, 2)),
    ])
    .await;
    let client = openai_client(&server, fast_retry(2));
    let (_, options) = budget(None);

    let err = client.chat(mini("hi"), &options).await.unwrap_err();

    assert!(
        matches!(err, LlmError::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(121)),
        "{err:?}"
    );
    assert_eq!(server.count(), 1);
}

#[tokio::test]
async fn insufficient_quota_is_not_retried() {
    let quota = json!({"error": {"message": "You exceeded your current quota, please check your plan and billing details.", "type": "insufficient_quota", "code": "insufficient_quota"}});
    let server = Server::start([
        Reply::json(429, quota),
        Reply::json(200, openai_ok("unreachable", 10, 2)),
    ])
    .await;
    let client = openai_client(&server, fast_retry(3));
    let (account, options) = budget(None);

    let err = client.chat(mini("hi"), &options).await.unwrap_err();

    assert!(matches!(err, LlmError::QuotaExhausted { .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("retrying will not help"), "{err}");
    assert_eq!(server.count(), 1);
    let snap = account.snapshot();
    assert_eq!(snap.spent, Charge::ZERO, "a refused request is not billed");
    assert_eq!(snap.reserved, Charge::ZERO);
}

#[tokio::test]
async fn anthropic_529_overloaded_is_retried() {
    let overloaded =
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
    let server = Server::start([
        Reply::json(529, overloaded),
        Reply::json(200, anthropic_ok("fine now", 12, 3)),
    ])
    .await;
    let client = Client::builder()
        .provider("anthropic", anthropic(&server))
        .retry(fast_retry(2))
        .build()
        .unwrap();
    let (account, options) = budget(None);

    let resp = client
        .chat(ChatRequest::new("claude-haiku-4-5").user("hi"), &options)
        .await
        .unwrap();

    assert_eq!(resp.content, "fine now");
    assert_eq!(server.count(), 2);
    assert_eq!(account.snapshot().spent.model_calls, 1);
}

#[tokio::test]
async fn server_error_then_success_charges_only_the_success() {
    let server = Server::start([
        Reply::json(
            500,
            json!({"error": {"message": "The server had an error", "type": "server_error"}}),
        ),
        Reply::json(200, openai_ok("ok", 40, 10)),
    ])
    .await;
    let client = openai_client(&server, fast_retry(2));
    let (account, options) = budget(None);

    let resp = client.chat(mini("hi"), &options).await.unwrap();

    assert_eq!(server.count(), 2);
    assert_eq!(
        account.snapshot().spent,
        usage_charge("gpt-4o-mini", &resp.usage)
    );
    assert_eq!(account.snapshot().reserved, Charge::ZERO);
}

fn openai_with_timeout(server: &Server, timeout: Duration) -> OpenAi {
    let mut config = OpenAiConfig::openai("sk-test");
    config.base_url = format!("{}/v1", server.url);
    config.http = http();
    config.http.request_timeout = timeout;
    OpenAi::new(config).unwrap()
}

#[tokio::test]
async fn timeout_is_an_error_charged_its_input_estimate() {
    let server =
        Server::start([Reply::json(200, openai_ok("late", 10, 2)).after(Duration::from_secs(3))])
            .await;
    let client = Client::builder()
        .provider(
            "openai",
            openai_with_timeout(&server, Duration::from_millis(200)),
        )
        .retry(RetryPolicy::none())
        .build()
        .unwrap();
    let (account, options) = budget(None);
    let req = mini("a question that takes too long");

    let err = client.chat(req.clone(), &options).await.unwrap_err();

    assert!(
        matches!(err, LlmError::Timeout { after } if after == Duration::from_millis(200)),
        "{err:?}"
    );
    assert!(err.is_retryable());
    let snap = account.snapshot();
    assert_eq!(snap.spent, input_charge(&req));
    assert!(snap.spent.micro_usd > 0);
    assert_eq!(snap.reserved, Charge::ZERO);
}

#[tokio::test]
async fn timeout_is_retried_and_both_attempts_are_charged_honestly() {
    let server = Server::start([
        Reply::json(200, openai_ok("late", 10, 2)).after(Duration::from_secs(3)),
        Reply::json(200, openai_ok("quick", 10, 2)),
    ])
    .await;
    let client = Client::builder()
        .provider(
            "openai",
            openai_with_timeout(&server, Duration::from_secs(1)),
        )
        .retry(fast_retry(1))
        .build()
        .unwrap();
    let (account, options) = budget(None);
    let req = mini("hi");

    let resp = client.chat(req.clone(), &options).await.unwrap();

    assert_eq!(resp.content, "quick");
    assert_eq!(server.count(), 2);
    let first = input_charge(&req);
    let second = usage_charge("gpt-4o-mini", &resp.usage);
    assert_eq!(account.snapshot().spent, first + second);
}

#[tokio::test]
async fn malformed_json_is_not_retried_and_is_charged_its_reservation() {
    let server = Server::start([
        Reply::raw(200, r#"{"id": "chatcmpl-1", "choices": [{"message": "#),
        Reply::json(200, openai_ok("unreachable", 10, 2)),
    ])
    .await;
    let client = openai_client(&server, fast_retry(2));
    let (account, options) = budget(None);
    let req = mini("hi");

    let err = client.chat(req.clone(), &options).await.unwrap_err();

    assert!(
        matches!(err, LlmError::MalformedResponse { usage: None, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("not the expected JSON"), "{err}");
    assert_eq!(server.count(), 1);
    // 2xx: billed an unknown amount, so the whole worst case is charged
    let tokens = estimate_input(&req).tokens;
    let worst = price("gpt-4o-mini").worst_case(tokens, 100);
    assert_eq!(account.snapshot().spent.micro_usd, worst);
    assert_eq!(account.snapshot().reserved, Charge::ZERO);
}

#[tokio::test]
async fn truncated_body_is_malformed_and_not_retried() {
    let full = openai_ok("a complete answer", 10, 3).to_string();
    let server = Server::start([
        Reply::Truncated {
            body: full[..40].to_string(),
            declared: full.len(),
        },
        Reply::json(200, openai_ok("unreachable", 10, 2)),
    ])
    .await;
    let client = openai_client(&server, fast_retry(2));
    let (account, options) = budget(None);

    let err = client.chat(mini("hi"), &options).await.unwrap_err();

    assert!(matches!(err, LlmError::MalformedResponse { .. }), "{err:?}");
    assert!(err.to_string().contains("truncated"), "{err}");
    assert_eq!(server.count(), 1);
    assert_eq!(account.snapshot().reserved, Charge::ZERO);
}

#[tokio::test]
async fn tool_call_with_invalid_json_arguments_is_a_clear_billed_error() {
    let body = json!({
        "id": "chatcmpl-3",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": null, "tool_calls": [{
                "id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": "}
            }]},
            "finish_reason": "tool_calls"
        }],
        "usage": {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60}
    });
    let server = Server::start([Reply::json(200, body)]).await;
    let client = openai_client(&server, fast_retry(2));
    let (account, options) = budget(None);
    let req = mini("Weather in Paris?").tool(ToolDef {
        name: "get_weather".into(),
        description: "Weather for a city".into(),
        parameters: json!({"type": "object"}),
    });

    let err = client.chat(req, &options).await.unwrap_err();

    let LlmError::InvalidToolArguments(call) = &err else {
        panic!("expected InvalidToolArguments, got {err:?}");
    };
    assert_eq!(call.tool, "get_weather");
    assert_eq!(call.call_id, "call_1");
    assert_eq!(call.raw, "{\"city\": ");
    let text = err.to_string();
    assert!(
        text.contains("`get_weather`") && text.contains("not valid JSON"),
        "{text}"
    );
    assert_eq!(server.count(), 1, "not retried");
    // the answer was billed: 50 x $0.15/M + 10 x $0.60/M = 13.5 -> 14 micro-USD (rounded up)
    assert_eq!(account.snapshot().spent.micro_usd, 14);
}

#[tokio::test]
async fn breaker_opens_after_n_failures_and_half_opens_after_the_cool_down() {
    let failure = || {
        Reply::json(
            500,
            json!({"error": {"message": "boom", "type": "server_error"}}),
        )
    };
    let server = Server::start([
        failure(),
        failure(),
        failure(),
        Reply::json(200, openai_ok("recovered", 10, 2)),
    ])
    .await;
    let client = Client::builder()
        .provider("openai", openai(&server))
        .retry(RetryPolicy::none())
        .breaker(BreakerConfig {
            failure_threshold: 3,
            cool_down: Duration::from_millis(300),
        })
        .build()
        .unwrap();
    let (account, options) = budget(None);

    for _ in 0..3 {
        let err = client.chat(mini("hi"), &options).await.unwrap_err();
        assert!(
            matches!(err, LlmError::Transient { status: 500, .. }),
            "{err:?}"
        );
    }
    assert_eq!(client.breaker_state("gpt-4o-mini"), BreakerState::Open);
    let err = client.chat(mini("hi"), &options).await.unwrap_err();
    assert!(matches!(err, LlmError::CircuitOpen { .. }), "{err:?}");
    assert_eq!(server.count(), 3, "nothing sent while open");
    assert_eq!(account.snapshot().spent, Charge::ZERO);

    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(client.breaker_state("gpt-4o-mini"), BreakerState::HalfOpen);
    let resp = client.chat(mini("hi"), &options).await.unwrap();
    assert_eq!(resp.content, "recovered");
    assert_eq!(client.breaker_state("gpt-4o-mini"), BreakerState::Closed);
    assert_eq!(server.count(), 4);
}

#[tokio::test]
async fn falls_back_to_the_second_model() {
    let unavailable = || {
        Reply::json(
            503,
            json!({"error": {"message": "unavailable", "type": "server_error"}}),
        )
    };
    let primary = Server::start([unavailable(), unavailable()]).await;
    let secondary = Server::start([Reply::json(200, anthropic_ok("from claude", 20, 5))]).await;
    let client = Client::builder()
        .provider("openai", openai(&primary))
        .provider("anthropic", anthropic(&secondary))
        .retry(fast_retry(1))
        .fallback("gpt-4o-mini", ["claude-haiku-4-5"])
        .build()
        .unwrap();
    let (account, options) = budget(None);

    let resp = client.chat(mini("hi"), &options).await.unwrap();

    assert_eq!(resp.model, "claude-haiku-4-5");
    assert_eq!(resp.content, "from claude");
    assert_eq!(primary.count(), 2, "primary tried with its retry");
    assert_eq!(secondary.seen()[0].json()["model"], "claude-haiku-4-5");
    // 20 x $1/M + 5 x $5/M = 45 micro-USD; the 503s cost nothing
    assert_eq!(resp.cost_micro_usd, Some(45));
    assert_eq!(
        account.snapshot().spent,
        Charge {
            micro_usd: 45,
            tokens: 25,
            model_calls: 1,
        }
    );
}

#[tokio::test]
async fn halt_cancels_mid_request_and_the_server_sees_the_connection_close() {
    let server = Server::start([Reply::Hang]).await;
    let client = openai_client(&server, fast_retry(2));
    let (account, options) = budget(None);
    let halt = options.halt.clone();
    let req = mini("a long task");

    let call = tokio::spawn({
        let (client, req) = (client.clone(), req.clone());
        async move { client.chat(req, &options).await }
    });
    server.wait_for_requests(1).await;
    assert_ne!(
        account.snapshot().reserved,
        Charge::ZERO,
        "in flight: reserved"
    );
    halt.cancel();
    let result = call.await.unwrap();

    assert!(matches!(result, Err(LlmError::Cancelled)), "{result:?}");
    assert!(server.client_closed().await, "the HTTP request was aborted");
    let snap = account.snapshot();
    assert_eq!(snap.spent, input_charge(&req));
    assert_eq!(snap.reserved, Charge::ZERO);
    assert_eq!(server.count(), 1, "a cancelled call is not retried");
}

#[tokio::test]
async fn dropping_the_call_future_aborts_and_charges_the_input_estimate() {
    let server = Server::start([Reply::Hang]).await;
    let client = openai_client(&server, RetryPolicy::none());
    let (account, options) = budget(None);
    let req = mini("abandoned");

    tokio::select! {
        result = client.chat(req.clone(), &options) => panic!("finished: {result:?}"),
        () = server.wait_for_requests(1) => {} // drops the call future
    }

    assert!(server.client_closed().await);
    let snap = account.snapshot();
    assert_eq!(snap.spent, input_charge(&req));
    assert_eq!(snap.reserved, Charge::ZERO);
}

#[tokio::test]
async fn ceiling_too_low_is_refused_with_no_request_sent() {
    let server = Server::start([Reply::json(200, openai_ok("unreachable", 10, 2))]).await;
    let client = openai_client(&server, fast_retry(2));
    let (account, options) = budget(Some(1));

    let err = client.chat(mini("hi"), &options).await.unwrap_err();

    let LlmError::CeilingReached(refusal) = &err else {
        panic!("expected CeilingReached, got {err:?}");
    };
    assert_eq!(refusal.dimension, Dimension::MicroUsd);
    assert_eq!(refusal.limit, 1);
    assert_eq!(server.count(), 0);
    assert_eq!(account.snapshot().spent, Charge::ZERO);
    assert_eq!(account.snapshot().reserved, Charge::ZERO);
}

#[tokio::test]
async fn compatible_server_without_usage_gets_a_marked_estimate() {
    let body = json!({
        "id": "cmpl-local",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there, friend."}, "finish_reason": "stop"}]
    });
    let server = Server::start([Reply::json(200, body)]).await;
    let local = OpenAi::new({
        let mut c = OpenAiConfig::compatible(format!("{}/v1", server.url));
        c.http = http();
        c
    })
    .unwrap();
    let mut prices = PriceTable::bundled();
    prices.merge(
        PriceTable::from_json(
            r#"{"llama3.1": {"litellm_provider": "ollama", "input_cost_per_token": 1e-07, "output_cost_per_token": 2e-07}}"#,
        )
        .unwrap(),
    );
    let client = Client::builder()
        .provider("ollama", local)
        .prices(prices.clone())
        .build()
        .unwrap();
    let (account, options) = budget(None);
    let req = ChatRequest::new("llama3.1")
        .user("Say hello")
        .max_tokens(50);

    let resp = client.chat(req.clone(), &options).await.unwrap();

    assert!(resp.usage.estimated);
    assert_eq!(resp.usage.input_tokens, estimate_input(&req).tokens);
    assert!(resp.usage.output_tokens > 0);
    let cost = prices.get("llama3.1").unwrap().cost(&resp.usage);
    assert_eq!(resp.cost_micro_usd, Some(cost));
    assert_eq!(account.snapshot().spent.micro_usd, cost);
    let seen = &server.seen()[0];
    assert_eq!(seen.header("authorization"), None);
    let sent = seen.json();
    assert_eq!(sent["max_tokens"], 50);
    assert!(sent.get("max_completion_tokens").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ceiling_holds_under_concurrent_calls_and_nothing_stays_reserved() {
    let replies =
        (0..6).map(|_| Reply::json(200, openai_ok("ok", 10, 5)).after(Duration::from_millis(200)));
    let server = Server::start(replies).await;
    let client = openai_client(&server, RetryPolicy::none());
    let req = ChatRequest::new("gpt-4o-mini").user("hi").max_tokens(1000);
    let worst = price("gpt-4o-mini").worst_case(estimate_input(&req).tokens, 1000);
    let limit = worst * 3 + worst / 2; // room for three reservations at a time, not four
    let (account, options) = budget(Some(limit));

    let calls: Vec<_> = (0..6)
        .map(|_| {
            let (client, req, options) = (client.clone(), req.clone(), options.clone());
            tokio::spawn(async move { client.chat(req, &options).await })
        })
        .collect();
    let mut ok = 0;
    let mut refused = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(LlmError::CeilingReached(_)) => refused += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }

    assert_eq!(ok + refused, 6);
    assert!(ok >= 1);
    assert_eq!(server.count(), ok, "refused calls sent nothing");
    let snap = account.snapshot();
    assert_eq!(snap.reserved, Charge::ZERO);
    assert!(snap.spent.micro_usd <= limit);
    // 10 x $0.15/M + 5 x $0.60/M = 4.5 -> 5 micro-USD each
    assert_eq!(snap.spent.micro_usd, 5 * ok as u64);
}

#[tokio::test]
async fn mixed_outcomes_leave_nothing_reserved() {
    let server = Server::start([
        Reply::json(200, openai_ok("ok", 10, 2)),
        Reply::json(500, json!({"error": {"message": "boom"}})),
        Reply::json(200, openai_ok("ok", 10, 2)),
        Reply::json(
            429,
            json!({"error": {"message": "quota", "code": "insufficient_quota"}}),
        ),
        Reply::raw(200, "not json"),
        Reply::json(
            400,
            json!({"error": {"message": "bad", "code": "context_length_exceeded"}}),
        ),
        Reply::Hang,
    ])
    .await;
    let client = openai_client(&server, fast_retry(1));
    let (account, options) = budget(Some(100_000));

    let mut outcomes = Vec::new();
    for _ in 0..5 {
        let result = client.chat(mini("hi"), &options).await;
        assert_eq!(
            account.snapshot().reserved,
            Charge::ZERO,
            "after {result:?}"
        );
        outcomes.push(result.map(|r| r.content).map_err(|e| e.to_string()));
    }
    let halt = options.halt.clone();
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.chat(mini("hi"), &options).await }
    });
    server.wait_for_requests(7).await;
    halt.cancel();
    assert!(matches!(call.await.unwrap(), Err(LlmError::Cancelled)));

    assert_eq!(outcomes[0].as_deref(), Ok("ok"));
    assert_eq!(outcomes[1].as_deref(), Ok("ok"), "500 then retried");
    assert!(outcomes[2].as_ref().unwrap_err().contains("quota"));
    assert!(outcomes[3].as_ref().unwrap_err().contains("malformed"));
    assert!(outcomes[4].as_ref().unwrap_err().contains("context window"));
    let snap = account.snapshot();
    assert_eq!(snap.reserved, Charge::ZERO);
    assert!(snap.spent.micro_usd <= 100_000);
    assert_eq!(
        snap.spent.model_calls, 4,
        "2 answers + 1 malformed + 1 cancelled"
    );
}
