//! The budget contract against a real provider on loopback that breaks it: a reservation is
//! an upper bound (input estimate + `max_tokens`, which is always sent); usage reported beyond
//! it is charged (that money is spent), counted, and stops the caller with
//! `LlmError::Overshoot`; usage the request makes impossible is a malformed response, and
//! still charged.

use crate::llm_support::*;
use impresario_runtime::ledger::{Account, Charge};
use impresario_runtime::llm::estimate::estimate_input;
use impresario_runtime::llm::{
    ChatRequest, Client, LlmError, PriceTable, RetryPolicy, Usage, DEFAULT_MAX_TOKENS,
};
use impresario_runtime::telemetry::{MetricsHandle, Prometheus};

/// A client of the loopback server whose metrics are rendered by the returned handle.
fn client(server: &Server) -> (Client, MetricsHandle) {
    let (metrics, handle) = Prometheus::new().build();
    let client = Client::builder()
        .provider("openai", openai(server))
        .retry(RetryPolicy::none())
        .metrics(metrics)
        .build()
        .unwrap();
    (client, handle)
}

fn overshoots(handle: &MetricsHandle) -> Option<String> {
    handle
        .render()
        .lines()
        .find(|l| l.starts_with("impresario_llm_overshoots_total{"))
        .map(str::to_owned)
}

fn cost(input: u64, output: u64) -> u64 {
    let usage = Usage {
        input_tokens: input,
        output_tokens: output,
        ..Usage::default()
    };
    PriceTable::bundled()
        .get("gpt-4o-mini")
        .unwrap()
        .cost(&usage)
}

fn spent(account: &Account) -> Charge {
    let snapshot = account.snapshot();
    assert_eq!(snapshot.reserved, Charge::ZERO, "nothing stays reserved");
    snapshot.spent
}

#[tokio::test]
async fn input_reported_above_the_estimate_is_charged_and_stops_the_caller() {
    let server = Server::start([Reply::json(200, openai_ok("ok", 10_000, 5))]).await;
    let (client, metrics) = client(&server);
    let (account, options) = budget(Some(1_000_000));
    // No max_tokens given: the default is sent, and reserved.
    let request = ChatRequest::new("gpt-4o-mini").user("What is 2 + 2?");
    assert!(estimate_input(&request).tokens < 100);

    let err = client.chat(request, &options).await.unwrap_err();

    let LlmError::Overshoot {
        charged_micro_usd,
        reserved_micro_usd,
        impossible,
        ..
    } = &err
    else {
        panic!("expected an overshoot, got {err:?}");
    };
    assert_eq!(
        *charged_micro_usd,
        cost(10_000, 5),
        "charged what was reported"
    );
    assert!(reserved_micro_usd < charged_micro_usd);
    assert_eq!(*impossible, None, "10,000 tokens fit the context window");
    assert_eq!(spent(&account).micro_usd, cost(10_000, 5));
    assert_eq!(
        server.seen()[0].json()["max_completion_tokens"],
        DEFAULT_MAX_TOKENS
    );
    let line = overshoots(&metrics).expect("the overshoot counter is exported");
    assert!(
        line.contains("model=\"gpt-4o-mini\"") && line.ends_with(" 1"),
        "{line}"
    );
}

#[tokio::test]
async fn two_million_prompt_tokens_against_a_cent_are_charged_once_then_nothing_is_sent() {
    let server = Server::start([
        Reply::json(200, openai_ok("ok", 2_000_000, 5)),
        Reply::json(200, openai_ok("ok", 10, 5)),
    ])
    .await;
    let (client, metrics) = client(&server);
    let (account, options) = budget(Some(10_000)); // $0.01
    let request = ChatRequest::new("gpt-4o-mini").user("Hello");

    let err = client.chat(request.clone(), &options).await.unwrap_err();

    match &err {
        LlmError::Overshoot {
            impossible: Some(why),
            ..
        } => assert!(
            why.contains("2000000 input tokens") && why.contains("128000"),
            "{why}"
        ),
        other => panic!("expected an impossible overshoot, got {other:?}"),
    }
    assert!(err.to_string().contains("malformed"), "{err}");
    assert_eq!(
        spent(&account).micro_usd,
        cost(2_000_000, 5),
        "the provider's bill"
    );
    // The account is past its ceiling: the next call is refused before anything is sent.
    let again = client.chat(request, &options).await.unwrap_err();
    assert!(matches!(again, LlmError::CeilingReached(_)), "{again:?}");
    assert_eq!(server.count(), 1);
    assert!(overshoots(&metrics).is_some_and(|l| l.ends_with(" 1")));
}

#[tokio::test]
async fn output_past_max_tokens_is_an_overshoot_when_it_passes_the_reservation() {
    let request = ChatRequest::new("gpt-4o-mini")
        .user("Tell me")
        .max_tokens(100);
    let input = estimate_input(&request).tokens;
    // 21 % past max_tokens, with exactly the estimated input.
    let server = Server::start([Reply::json(200, openai_ok("long", input, 121))]).await;
    let (client, _metrics) = client(&server);
    let (account, options) = budget(None);

    let err = client.chat(request, &options).await.unwrap_err();

    match &err {
        LlmError::Overshoot {
            impossible: Some(why),
            ..
        } => assert!(
            why.contains("121 output tokens") && why.contains("max_tokens of 100"),
            "{why}"
        ),
        other => panic!("expected an overshoot, got {other:?}"),
    }
    assert_eq!(spent(&account).micro_usd, cost(input, 121));
}

#[tokio::test]
async fn impossible_usage_within_the_reservation_is_malformed_and_still_charged() {
    let request = ChatRequest::new("gpt-4o-mini")
        .user("Tell me")
        .max_tokens(100);
    // Less input than estimated leaves room: 101 output tokens still cost less than reserved.
    let server = Server::start([Reply::json(200, openai_ok("long", 1, 101))]).await;
    let (client, metrics) = client(&server);
    let (account, options) = budget(None);

    let err = client.chat(request, &options).await.unwrap_err();

    match &err {
        LlmError::MalformedResponse { message, usage } => {
            assert!(message.contains("101 output tokens"), "{message}");
            assert_eq!(usage.map(|u| u.output_tokens), Some(101));
        }
        other => panic!("expected a malformed response, got {other:?}"),
    }
    assert_eq!(spent(&account).micro_usd, cost(1, 101));
    let line = overshoots(&metrics);
    assert!(
        line.as_ref().is_none_or(|l| l.ends_with(" 0")),
        "not an overshoot: {line:?}"
    );
}
