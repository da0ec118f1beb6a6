//! Streamed calls against a real loopback server that streams SSE the way each provider does:
//! deltas in order, usage however the provider reports it, and the cost of every way a stream
//! ends (completed, stalled, dropped, malformed, halted), retried only before its first delta.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use impresario_runtime::ledger::{Account, Charge};
use impresario_runtime::llm::estimate::{count_output, estimate_input};
use impresario_runtime::llm::{
    CallOptions, ChatRequest, Client, DeltaSink, FinishReason, Interruption, LlmError, OpenAi,
    OpenAiConfig, PriceTable, RetryPolicy, Usage,
};
use serde_json::json;

use crate::llm_support::*;

/// A sink that keeps every delta, in order.
fn collect() -> (DeltaSink, Arc<Mutex<Vec<String>>>) {
    let deltas = Arc::new(Mutex::new(Vec::new()));
    let keep = deltas.clone();
    let sink = DeltaSink::new(move |d: &str| keep.lock().unwrap().push(d.to_owned()));
    (sink, deltas)
}

fn streaming(options: CallOptions) -> (CallOptions, Arc<Mutex<Vec<String>>>) {
    let (sink, deltas) = collect();
    (options.stream_to(sink), deltas)
}

fn cost(model: &str, usage: &Usage) -> u64 {
    PriceTable::bundled().get(model).unwrap().cost(usage)
}

/// What the account was charged, with nothing left reserved.
fn charged(account: &Account) -> u64 {
    let snapshot = account.snapshot();
    assert_eq!(snapshot.reserved, Charge::ZERO, "nothing stays reserved");
    snapshot.spent.micro_usd
}

fn openai_client(server: &Server, retry: RetryPolicy) -> Client {
    Client::builder()
        .provider("openai", openai(server))
        .retry(retry)
        .build()
        .unwrap()
}

/// A client whose streams stall after 300 ms without a chunk, retrying `retries` times.
fn stalling_client(server: &Server, retries: u32) -> Client {
    let mut config = OpenAiConfig::openai("sk-test");
    config.base_url = format!("{}/v1", server.url);
    config.http = http();
    config.http.stream_idle_timeout = Duration::from_millis(300);
    Client::builder()
        .provider("openai", OpenAi::new(config).unwrap())
        .retry(fast_retry(retries))
        .build()
        .unwrap()
}

fn mini() -> ChatRequest {
    ChatRequest::new("gpt-4o-mini")
        .user("Say hello")
        .max_tokens(50)
}

/// Input estimate plus `output` counted tokens: what a cut stream without usage is charged.
fn partial(req: &ChatRequest, text: &str) -> Usage {
    Usage {
        input_tokens: estimate_input(req).tokens,
        output_tokens: count_output(&req.model, text),
        estimated: true,
        ..Usage::default()
    }
}

#[tokio::test]
async fn openai_stream_delivers_deltas_in_order_and_charges_the_usage_chunk() {
    let server = Server::start([Reply::Stream(vec![
        openai_delta("Hel"),
        openai_delta("lo"),
        openai_finish("stop"),
        openai_usage(12, 2),
        done(),
    ])])
    .await;
    let client = openai_client(&server, RetryPolicy::none());
    let (account, options) = budget(Some(1_000_000));
    let (options, deltas) = streaming(options);

    let resp = client.chat(mini(), &options).await.unwrap();

    let body = server.seen()[0].json();
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(*deltas.lock().unwrap(), ["Hel", "lo"]);
    assert_eq!(resp.content, "Hello");
    assert_eq!(resp.finish_reason, FinishReason::Stop);
    let usage = Usage {
        input_tokens: 12,
        output_tokens: 2,
        ..Usage::default()
    };
    assert_eq!(resp.usage, usage);
    assert_eq!(resp.cost_micro_usd, Some(cost("gpt-4o-mini", &usage)));
    assert_eq!(charged(&account), cost("gpt-4o-mini", &usage));
}

#[tokio::test]
async fn usage_on_every_chunk_takes_the_last_report_not_the_sum() {
    // vLLM with `continuous_usage_stats`: every chunk carries the usage so far.
    let chunk = |text: &str, completion: u64| {
        data(&json!({
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}],
            "usage": {"prompt_tokens": 40, "completion_tokens": completion, "total_tokens": 40 + completion}
        }))
    };
    let server = Server::start([Reply::Stream(vec![
        chunk("a", 1),
        chunk("b", 2),
        chunk("c", 3),
        openai_finish("stop"),
        done(),
    ])])
    .await;
    let client = openai_client(&server, RetryPolicy::none());
    let (account, options) = budget(None);
    let (options, _) = streaming(options);

    let resp = client.chat(mini(), &options).await.unwrap();

    assert_eq!((resp.usage.input_tokens, resp.usage.output_tokens), (40, 3));
    assert!(!resp.usage.estimated);
    assert_eq!(charged(&account), cost("gpt-4o-mini", &resp.usage));
}

#[tokio::test]
async fn no_usage_chunk_is_counted_with_the_tokenizer_and_marked_estimated() {
    let server = Server::start([Reply::Stream(vec![
        openai_delta("Hello"),
        openai_delta(" world"),
        openai_finish("stop"),
        done(),
    ])])
    .await;
    let client = openai_client(&server, RetryPolicy::none());
    let (account, options) = budget(None);
    let (options, _) = streaming(options);
    let req = mini();

    let resp = client.chat(req.clone(), &options).await.unwrap();

    assert!(resp.usage.estimated);
    assert_eq!(resp.usage.output_tokens, 2, "Hello + ' world' in o200k");
    assert_eq!(resp.usage.input_tokens, estimate_input(&req).tokens);
    assert_eq!(charged(&account), cost("gpt-4o-mini", &resp.usage));
}

#[tokio::test]
async fn openai_streamed_tool_call_arguments_are_assembled() {
    let call = |id: Option<&str>, name: Option<&str>, args: &str| {
        data(&json!({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": id, "type": "function", "function": {"name": name, "arguments": args}}
        ]}, "finish_reason": null}]}))
    };
    let server = Server::start([Reply::Stream(vec![
        call(Some("call_1"), Some("search"), ""),
        call(None, None, "{\"q\": "),
        call(None, None, "\"rust\"}"),
        openai_finish("tool_calls"),
        openai_usage(30, 9),
        done(),
    ])])
    .await;
    let client = openai_client(&server, RetryPolicy::none());
    let (_, options) = budget(None);
    let (options, deltas) = streaming(options);

    let resp = client.chat(mini(), &options).await.unwrap();

    assert_eq!(resp.finish_reason, FinishReason::ToolCalls);
    assert_eq!(resp.tool_calls.len(), 1);
    assert_eq!(resp.tool_calls[0].id, "call_1");
    assert_eq!(resp.tool_calls[0].name, "search");
    assert_eq!(resp.tool_calls[0].arguments, json!({"q": "rust"}));
    assert!(deltas.lock().unwrap().is_empty(), "tool calls are not text");
}

#[tokio::test]
async fn anthropic_stream_takes_input_from_message_start_and_output_from_message_delta() {
    let mut pieces = vec![
        named(
            "message_start",
            &json!({"type": "message_start", "message": {"id": "msg_7", "usage": {
                "input_tokens": 100, "output_tokens": 1,
                "cache_read_input_tokens": 400, "cache_creation_input_tokens": 0}}}),
        ),
        anthropic_text_start(0),
        named("ping", &json!({"type": "ping"})),
        anthropic_text(0, "Bon"),
        anthropic_text(0, "jour"),
        named(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ),
    ];
    pieces.extend(anthropic_end("end_turn", 6));
    let server = Server::start([Reply::Stream(pieces)]).await;
    let client = Client::builder()
        .provider("anthropic", anthropic(&server))
        .build()
        .unwrap();
    let (account, options) = budget(None);
    let (options, deltas) = streaming(options);
    // Long enough (one token per byte) for the 500 input tokens reported: more would overshoot.
    let req = ChatRequest::new("claude-haiku-4-5")
        .user(format!("Say hello in French.{}", " Please.".repeat(60)))
        .max_tokens(50);

    let resp = client.chat(req, &options).await.unwrap();

    assert_eq!(server.seen()[0].json()["stream"], true);
    assert_eq!(*deltas.lock().unwrap(), ["Bon", "jour"]);
    assert_eq!(resp.content, "Bonjour");
    assert_eq!(resp.request_id.as_deref(), Some("msg_7"));
    let usage = Usage {
        input_tokens: 500,
        output_tokens: 6,
        cache_read_tokens: 400,
        ..Usage::default()
    };
    assert_eq!(
        resp.usage, usage,
        "input 100 + 400 cached, output 6 (not 1 + 6)"
    );
    assert_eq!(charged(&account), cost("claude-haiku-4-5", &usage));
}

#[tokio::test]
async fn anthropic_overloaded_event_before_the_first_delta_is_retried() {
    let overloaded = named(
        "error",
        &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    );
    let mut ok = vec![
        anthropic_start(20),
        anthropic_text_start(0),
        anthropic_text(0, "ok"),
    ];
    ok.extend(anthropic_end("end_turn", 2));
    let server = Server::start([
        Reply::Stream(vec![anthropic_start(20), overloaded]),
        Reply::Stream(ok),
    ])
    .await;
    let client = Client::builder()
        .provider("anthropic", anthropic(&server))
        .retry(fast_retry(2))
        .build()
        .unwrap();
    let (_, options) = budget(None);
    let (options, deltas) = streaming(options);
    let req = ChatRequest::new("claude-haiku-4-5")
        .user("hi")
        .max_tokens(20);

    let resp = client.chat(req, &options).await.unwrap();

    assert_eq!(server.count(), 2);
    assert_eq!(resp.content, "ok");
    assert_eq!(*deltas.lock().unwrap(), ["ok"]);
}

#[tokio::test]
async fn stall_before_the_first_delta_times_out_and_is_retried() {
    let server = Server::start([
        Reply::Stream(vec![Piece::Pause(Duration::from_secs(5))]),
        Reply::Stream(vec![
            openai_delta("late"),
            openai_finish("stop"),
            openai_usage(10, 1),
            done(),
        ]),
    ])
    .await;
    let client = stalling_client(&server, 1);
    let (account, options) = budget(None);
    let (options, deltas) = streaming(options);
    let req = mini();

    let resp = client.chat(req.clone(), &options).await.unwrap();

    assert_eq!(server.count(), 2);
    assert_eq!(*deltas.lock().unwrap(), ["late"]);
    let input = PriceTable::bundled()
        .get("gpt-4o-mini")
        .unwrap()
        .input_cost(estimate_input(&req).tokens);
    assert_eq!(
        charged(&account),
        input + cost("gpt-4o-mini", &resp.usage),
        "the stalled attempt pays its input estimate, the second its usage"
    );
}

/// Asserts a streamed call ended interrupted by its provider after delivering `text`, was not
/// retried, and was charged the input estimate plus the tokens of `text`.
fn assert_broken(
    result: Result<impl std::fmt::Debug, LlmError>,
    req: &ChatRequest,
    text: &str,
    account: &Account,
) -> String {
    let err = result.unwrap_err();
    let LlmError::StreamInterrupted(cut) = &err else {
        panic!("expected an interrupted stream, got {err:?}");
    };
    let Interruption::Broken(why) = &cut.cause else {
        panic!("expected a broken stream, got {:?}", cut.cause);
    };
    assert_eq!(cut.content, text);
    assert_eq!(cut.usage, partial(req, text));
    assert_eq!(cut.cost_micro_usd, cost(&req.model, &cut.usage));
    assert_eq!(charged(account), cut.cost_micro_usd);
    why.clone()
}

#[tokio::test]
async fn stall_mid_stream_is_interrupted_charged_what_arrived_and_not_retried() {
    let server = Server::start([
        Reply::Stream(vec![
            openai_delta("Hello"),
            openai_delta(" world"),
            Piece::Pause(Duration::from_secs(5)),
        ]),
        Reply::Stream(vec![openai_delta("again"), openai_finish("stop"), done()]),
    ])
    .await;
    let client = stalling_client(&server, 3);
    let (account, options) = budget(None);
    let (options, deltas) = streaming(options);
    let req = mini();

    let result = client.chat(req.clone(), &options).await;

    let why = assert_broken(result, &req, "Hello world", &account);
    assert!(why.contains("nothing arrived"), "{why}");
    assert_eq!(server.count(), 1, "never retried after a delta");
    assert_eq!(*deltas.lock().unwrap(), ["Hello", " world"]);
}

#[tokio::test]
async fn connection_dropped_mid_stream_is_interrupted_with_its_partial_cost() {
    let server = Server::start([Reply::Stream(vec![
        openai_delta("Hello"),
        openai_delta(" world"),
        Piece::Drop,
    ])])
    .await;
    let client = openai_client(&server, fast_retry(3));
    let (account, options) = budget(None);
    let (options, _) = streaming(options);
    let req = mini();

    let result = client.chat(req.clone(), &options).await;

    assert_broken(result, &req, "Hello world", &account);
    assert_eq!(server.count(), 1, "never retried after a delta");
}

#[tokio::test]
async fn connection_dropped_before_the_first_delta_is_retried() {
    let server = Server::start([
        Reply::Stream(vec![Piece::Drop]),
        Reply::Stream(vec![openai_delta("ok"), openai_finish("stop"), done()]),
    ])
    .await;
    let client = openai_client(&server, fast_retry(2));
    let (_, options) = budget(None);
    let (options, deltas) = streaming(options);

    let resp = client.chat(mini(), &options).await.unwrap();

    assert_eq!(server.count(), 2);
    assert_eq!(resp.content, "ok");
    assert_eq!(
        *deltas.lock().unwrap(),
        ["ok"],
        "the failed attempt delivered nothing"
    );
}

#[tokio::test]
async fn malformed_chunk_mid_stream_names_the_chunk_and_charges_what_arrived() {
    let server = Server::start([Reply::Stream(vec![
        openai_delta("Hello"),
        Piece::Event("data: {\"choices\": [oops\n\n".into()),
        openai_finish("stop"),
        done(),
    ])])
    .await;
    let client = openai_client(&server, fast_retry(3));
    let (account, options) = budget(None);
    let (options, _) = streaming(options);
    let req = mini();

    let result = client.chat(req.clone(), &options).await;

    let why = assert_broken(result, &req, "Hello", &account);
    assert!(why.contains("not the expected JSON"), "{why}");
    assert!(why.contains("oops"), "the chunk is quoted: {why}");
    assert_eq!(server.count(), 1);
}

#[tokio::test]
async fn malformed_first_chunk_is_a_malformed_response_not_retried() {
    let server = Server::start([Reply::Stream(vec![Piece::Event(
        "data: not json\n\n".into(),
    )])])
    .await;
    let client = openai_client(&server, fast_retry(3));
    let (_, options) = budget(None);
    let (options, _) = streaming(options);

    let err = client.chat(mini(), &options).await.unwrap_err();

    assert!(matches!(err, LlmError::MalformedResponse { .. }), "{err:?}");
    assert_eq!(server.count(), 1);
}

/// Streams `pieces` then hangs; halts the call once `deltas` deltas arrived; returns the error,
/// the account and the request.
async fn halt_after(
    server: &Server,
    client: &Client,
    req: ChatRequest,
    deltas: usize,
) -> (LlmError, Account) {
    let (account, options) = budget(None);
    let (options, seen) = streaming(options);
    let halt = options.halt.clone();
    let call = {
        let (client, options) = (client.clone(), options.clone());
        tokio::spawn(async move { client.chat(req, &options).await })
    };
    for _ in 0..1000 {
        if seen.lock().unwrap().len() >= deltas {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(seen.lock().unwrap().len(), deltas, "deltas before the halt");
    halt.cancel();
    let err = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the halted call returns")
        .unwrap()
        .unwrap_err();
    assert!(server.client_closed().await, "the server saw the close");
    (err, account)
}

#[tokio::test]
async fn halt_mid_stream_closes_the_connection_and_charges_the_tokens_sent() {
    let server = Server::start([Reply::Stream(vec![
        openai_delta("Hello"),
        openai_delta(" world"),
        openai_delta("!"),
        Piece::Hang,
    ])])
    .await;
    let client = openai_client(&server, fast_retry(3));
    let req = mini();

    let (err, account) = halt_after(&server, &client, req.clone(), 3).await;

    let LlmError::StreamInterrupted(cut) = &err else {
        panic!("{err:?}");
    };
    assert_eq!(cut.cause, Interruption::Halted);
    assert_eq!(server.events_sent(), 3);
    assert_eq!(
        cut.usage.output_tokens, 3,
        "the three tokens the server sent"
    );
    assert_eq!(cut.usage.input_tokens, estimate_input(&req).tokens);
    assert_eq!(charged(&account), cost("gpt-4o-mini", &cut.usage));
    assert_eq!(server.count(), 1);
}

#[tokio::test]
async fn anthropic_halt_mid_stream_charges_reported_input_and_counted_output() {
    let server = Server::start([Reply::Stream(vec![
        anthropic_start(321),
        anthropic_text_start(0),
        anthropic_text(0, "abcdef"),
        anthropic_text(0, "ghi"),
        Piece::Hang,
    ])])
    .await;
    let client = Client::builder()
        .provider("anthropic", anthropic(&server))
        .build()
        .unwrap();
    // Long enough (one token per byte) for the 321 input tokens reported: more would overshoot.
    let req = ChatRequest::new("claude-haiku-4-5")
        .user(format!("hi{}", " there".repeat(60)))
        .max_tokens(50);

    let (err, account) = halt_after(&server, &client, req, 2).await;

    let LlmError::StreamInterrupted(cut) = &err else {
        panic!("{err:?}");
    };
    assert_eq!(cut.cause, Interruption::Halted);
    assert_eq!(cut.content, "abcdefghi");
    // The provider's input count; 9 ASCII bytes of output by the bound (1 token per byte).
    assert_eq!((cut.usage.input_tokens, cut.usage.output_tokens), (321, 9));
    assert_eq!(charged(&account), cost("claude-haiku-4-5", &cut.usage));
}

#[tokio::test]
async fn ceiling_is_reserved_before_a_streamed_request_is_sent() {
    let server = Server::start([Reply::Stream(vec![openai_delta("x"), done()])]).await;
    let client = openai_client(&server, RetryPolicy::none());
    let (account, options) = budget(Some(1));
    let (options, deltas) = streaming(options);

    let err = client.chat(mini(), &options).await.unwrap_err();

    assert!(matches!(err, LlmError::CeilingReached(_)), "{err:?}");
    assert_eq!(server.count(), 0, "nothing sent");
    assert!(deltas.lock().unwrap().is_empty());
    assert_eq!(charged(&account), 0);
}

#[tokio::test]
async fn anthropic_streamed_tool_input_is_assembled_and_structured_output_is_the_text() {
    let tool_start = |index: usize, name: &str| {
        named(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index,
                "content_block": {"type": "tool_use", "id": format!("toolu_{index}"), "name": name, "input": {}}}),
        )
    };
    let json_delta = |index: usize, part: &str| {
        named(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "input_json_delta", "partial_json": part}}),
        )
    };
    let mut tool = vec![
        anthropic_start(30),
        tool_start(0, "search"),
        json_delta(0, "{\"q\": "),
        json_delta(0, "\"rust\"}"),
    ];
    tool.extend(anthropic_end("tool_use", 12));
    let mut structured = vec![
        anthropic_start(40),
        tool_start(0, "plan"),
        json_delta(0, "{\"steps\": "),
        json_delta(0, "[]}"),
    ];
    structured.extend(anthropic_end("tool_use", 9));
    let server = Server::start([Reply::Stream(tool), Reply::Stream(structured)]).await;
    let client = Client::builder()
        .provider("anthropic", anthropic(&server))
        .build()
        .unwrap();
    let (_, options) = budget(None);
    let (options, deltas) = streaming(options);
    let req = ChatRequest::new("claude-haiku-4-5")
        .user("hi")
        .max_tokens(50);

    let called = client.chat(req.clone(), &options).await.unwrap();
    assert_eq!(called.finish_reason, FinishReason::ToolCalls);
    assert_eq!(called.tool_calls[0].name, "search");
    assert_eq!(called.tool_calls[0].arguments, json!({"q": "rust"}));
    assert!(
        deltas.lock().unwrap().is_empty(),
        "a tool's input is not text"
    );

    let schema = json!({"type": "object", "properties": {"steps": {"type": "array"}}});
    let planned = client
        .chat(req.output_schema("plan", schema, false), &options)
        .await
        .unwrap();
    assert_eq!(planned.content, "{\"steps\":[]}");
    assert_eq!(planned.finish_reason, FinishReason::Stop);
    assert_eq!(
        *deltas.lock().unwrap(),
        ["{\"steps\": ", "[]}"],
        "the answer's JSON as it came"
    );
}

#[tokio::test]
async fn a_cached_answer_reaches_a_streaming_caller_as_one_delta() {
    let server = Server::start([Reply::Stream(vec![
        openai_delta("Hel"),
        openai_delta("lo"),
        openai_finish("stop"),
        openai_usage(12, 2),
        done(),
    ])])
    .await;
    let client = Client::builder()
        .provider("openai", openai(&server))
        .cache(8)
        .build()
        .unwrap();
    let (account, options) = budget(None);
    let (options, deltas) = streaming(options);
    let req = mini().temperature(0.0);

    let first = client.chat(req.clone(), &options).await.unwrap();
    let again = client.chat(req, &options).await.unwrap();

    assert!(!first.cache_hit && again.cache_hit);
    assert_eq!(server.count(), 1, "the second answer came from the cache");
    assert_eq!(*deltas.lock().unwrap(), ["Hel", "lo", "Hello"]);
    assert_eq!(
        charged(&account),
        cost("gpt-4o-mini", &first.usage),
        "a hit costs nothing"
    );
}
