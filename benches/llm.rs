//! The LLM layer's cost per call, against a baseline measured in the same run.
//!
//! A loopback HTTP/1.1 server on its own thread answers every request at once with a fixed,
//! realistic body (OpenAI chat completion or Anthropic message, with usage). The same request is
//! sent (a) with raw reqwest: post a prebuilt `serde_json::Value`, read the body, parse it into a
//! `Value`; and (b) with `Client::chat`: validation, tiktoken input estimate, breaker, ledger
//! reservation on a run -> tenant -> global path, typed encoding, the call raced against a halt
//! token, typed decoding, cost, settlement. Samples of the two alternate, so drift hits both.
//! The difference of the medians is what the layer adds per call.
//!
//! The same with a 1.8k-token prompt sent repeatedly (as an agent resends its conversation),
//! and a cache hit. Then the bookkeeping alone, without HTTP: cost of a usage, worst case,
//! reserve + settle, input estimates (first sight of a text, and again), cache key.
//!
//! Run: `cargo bench --bench llm`

// A benchmark's setup and measurement loop is a script, longer than the 60 lines product code
// may have (clippy::too_many_lines, workspace lint).
#![allow(clippy::too_many_lines)]

mod common;

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{median, per_iter, quantile, row, sample};
use impresario_runtime::ledger::{AccountId, Charge, Ledger, Limits};
use impresario_runtime::llm::estimate::estimate_input;
use impresario_runtime::llm::{
    Anthropic, AnthropicConfig, CacheKey, CallOptions, ChatRequest, Client, OpenAi, OpenAiConfig,
    PriceTable, Usage,
};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

const CALLS_PER_SAMPLE: u32 = 1_000;
const SAMPLES: usize = 21;

fn openai_body() -> String {
    json!({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_700_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "The capital of France is Paris.", "refusal": null}, "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 24, "completion_tokens": 8, "total_tokens": 32,
                  "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}},
        "system_fingerprint": "fp_bench"
    })
    .to_string()
}

fn anthropic_body() -> String {
    json!({
        "id": "msg_bench", "type": "message", "role": "assistant", "model": "claude-haiku-4-5-20251001",
        "content": [{"type": "text", "text": "The capital of France is Paris."}],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 24, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 8}
    })
    .to_string()
}

/// A keep-alive HTTP/1.1 server on its own thread, answering by path at once.
fn start_server() -> SocketAddr {
    let (openai, anthropic) = (openai_body(), anthropic_body());
    common::loopback_server(move |conn| serve(conn, openai.clone(), anthropic.clone()))
}

async fn serve(mut conn: TcpStream, openai: String, anthropic: String) {
    let answer = |body: &str| {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-request-id: req_bench\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let (openai, anthropic) = (answer(&openai), answer(&anthropic));
    let mut buf = Vec::with_capacity(16 << 10);
    while let Some(head) = common::read_request(&mut conn, &mut buf).await {
        let reply = if head.starts_with("post /v1/messages") {
            &anthropic
        } else {
            &openai
        };
        if conn.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A one-message request of about 1,800 tokens (tiktoken o200k), made unique by `salt`.
fn long_request(model: &str, salt: &str) -> ChatRequest {
    let text = "Rust's ownership model guarantees memory safety without a garbage collector. ";
    ChatRequest::new(model)
        .user(format!("{salt}{}", text.repeat(150)))
        .max_tokens(64)
}

/// Mean time per call over `CALLS_PER_SAMPLE` sequential calls of `call`.
fn batch<F: std::future::Future<Output = ()>>(
    rt: &Runtime,
    mut call: impl FnMut() -> F,
) -> Duration {
    let start = Instant::now();
    rt.block_on(async {
        for _ in 0..CALLS_PER_SAMPLE {
            call().await;
        }
    });
    start.elapsed() / CALLS_PER_SAMPLE
}

struct Pair {
    raw: Vec<Duration>,
    ours: Vec<Duration>,
}

/// Alternating samples of the raw call and ours.
fn compare<R, O>(rt: &Runtime, mut raw: impl FnMut() -> R, mut ours: impl FnMut() -> O) -> Pair
where
    R: std::future::Future<Output = ()>,
    O: std::future::Future<Output = ()>,
{
    // warm up connections, tokenizer tables, allocator
    batch(rt, &mut raw);
    batch(rt, &mut ours);
    let mut pair = Pair {
        raw: Vec::new(),
        ours: Vec::new(),
    };
    for _ in 0..SAMPLES {
        pair.raw.push(batch(rt, &mut raw));
        pair.ours.push(batch(rt, &mut ours));
    }
    pair.raw.sort();
    pair.ours.sort();
    pair
}

/// `b - a`, signed, readable.
fn difference(a: Duration, b: Duration) -> String {
    if b >= a {
        format!("+{}", common::fmt(b - a))
    } else {
        format!("-{}", common::fmt(a - b))
    }
}

fn report(name: &str, pair: &Pair) -> bool {
    let (raw, ours) = (median(&pair.raw), median(&pair.ours));
    row(&format!("raw reqwest, {name}"), raw, None);
    row(&format!("Client::chat, {name}"), ours, Some(raw));
    println!(
        "{:<58} {:>12}   (p90 difference {})",
        format!("  added per call, {name}"),
        difference(raw, ours),
        difference(quantile(&pair.raw, 0.9), quantile(&pair.ours, 0.9))
    );
    ours < raw + Duration::from_micros(20)
}

fn main() {
    let addr = start_server();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();

    let ledger = Ledger::new();
    let tenant = AccountId::Tenant("bench".into());
    ledger
        .open(tenant.clone(), None, Limits::default())
        .unwrap();
    let run = AccountId::Run("bench-run".into());
    let run_account = ledger
        .open(
            run.clone(),
            Some(&tenant),
            Limits {
                micro_usd: Some(u64::MAX / 2),
                ..Limits::default()
            },
        )
        .unwrap();
    let options = CallOptions::new(ledger.path(&run).unwrap(), CancellationToken::new());

    let openai = {
        let mut c = OpenAiConfig::openai("sk-bench");
        c.base_url = format!("http://{addr}/v1");
        OpenAi::new(c).unwrap()
    };
    let anthropic = {
        let mut c = AnthropicConfig::new("sk-ant-bench");
        c.base_url = format!("http://{addr}");
        Anthropic::new(c).unwrap()
    };
    let client = Client::builder()
        .provider("openai", openai)
        .provider("anthropic", anthropic)
        .cache(16)
        .build()
        .unwrap();
    let raw = reqwest::Client::new();

    let system = "You are a concise assistant. Answer in one sentence.";
    let user = "What is the capital of France? Answer with the city and nothing else.";
    let oa_req = ChatRequest::new("gpt-4o-mini")
        .system(system)
        .user(user)
        .max_tokens(64);
    let an_req = ChatRequest::new("claude-haiku-4-5")
        .system(system)
        .user(user)
        .max_tokens(64);
    let oa_raw_body = json!({"model": "gpt-4o-mini", "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}], "max_completion_tokens": 64});
    let an_raw_body = json!({"model": "claude-haiku-4-5", "max_tokens": 64, "system": system, "messages": [{"role": "user", "content": [{"type": "text", "text": user}]}]});
    let oa_url = format!("http://{addr}/v1/chat/completions");
    let an_url = format!("http://{addr}/v1/messages");

    println!("LLM layer, loopback, {CALLS_PER_SAMPLE} sequential calls a sample, median of {SAMPLES} alternating samples");
    let openai_pair = compare(
        &rt,
        || async {
            let r = raw
                .post(&oa_url)
                .header("authorization", "Bearer sk-bench")
                .json(&oa_raw_body)
                .send()
                .await
                .unwrap();
            let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
            black_box(v);
        },
        || async {
            black_box(client.chat(oa_req.clone(), &options).await.unwrap());
        },
    );
    let openai_met = report("OpenAI", &openai_pair);
    let anthropic_pair = compare(
        &rt,
        || async {
            let r = raw
                .post(&an_url)
                .header("x-api-key", "sk-ant-bench")
                .header("anthropic-version", "2023-06-01")
                .json(&an_raw_body)
                .send()
                .await
                .unwrap();
            let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
            black_box(v);
        },
        || async {
            black_box(client.chat(an_req.clone(), &options).await.unwrap());
        },
    );
    let anthropic_met = report("Anthropic", &anthropic_pair);
    let long_req = long_request("gpt-4o-mini", "");
    let long_raw_body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": long_req.messages[0].content()}], "max_completion_tokens": 64});
    let long_pair = compare(
        &rt,
        || async {
            let r = raw
                .post(&oa_url)
                .header("authorization", "Bearer sk-bench")
                .json(&long_raw_body)
                .send()
                .await
                .unwrap();
            let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
            black_box(v);
        },
        || async {
            black_box(client.chat(long_req.clone(), &options).await.unwrap());
        },
    );
    let long_met = report("OpenAI, 1.8k-token prompt resent", &long_pair);
    let cached = oa_req.clone().temperature(0.0);
    let cache_hits = sample(SAMPLES, || {
        batch(&rt, || async {
            black_box(client.chat(cached.clone(), &options).await.unwrap());
        })
    });
    row(
        "Client::chat, cache hit (no HTTP)",
        median(&cache_hits),
        None,
    );
    println!(
        "target < 20 us added per call: {}",
        if openai_met && anthropic_met && long_met {
            "met"
        } else {
            "NOT met"
        }
    );

    println!();
    println!("Bookkeeping per call, no HTTP (1,000,000 iterations or fewer a sample)");
    let prices = PriceTable::bundled();
    let mini = prices.get("gpt-4o-mini").unwrap();
    let usage = Usage {
        input_tokens: 1200,
        output_tokens: 300,
        cache_read_tokens: 200,
        reasoning_tokens: 50,
        ..Usage::default()
    };
    let micro = |name: &str, iters: u32, mut f: Box<dyn FnMut() + '_>| {
        let times = sample(SAMPLES, || per_iter(iters, &mut f));
        row(name, median(&times), None);
    };
    micro(
        "cost of a usage (ModelPrice::cost)",
        1_000_000,
        Box::new(|| {
            black_box(mini.cost(black_box(&usage)));
        }),
    );
    micro(
        "worst case (ModelPrice::worst_case)",
        1_000_000,
        Box::new(|| {
            black_box(mini.worst_case(black_box(1200), black_box(64)));
        }),
    );
    let path = ledger.path(&run).unwrap();
    let worst = Charge {
        micro_usd: 40,
        tokens: 100,
        model_calls: 1,
    };
    let actual = Charge {
        micro_usd: 9,
        tokens: 32,
        model_calls: 1,
    };
    micro(
        "reserve + settle, run -> tenant -> global",
        200_000,
        Box::new(|| {
            let r = path.reserve(black_box(worst)).unwrap();
            black_box(r.settle(actual));
        }),
    );
    micro(
        "estimate_input, 2 messages, tiktoken o200k",
        20_000,
        Box::new(|| {
            black_box(estimate_input(black_box(&oa_req)));
        }),
    );
    let long_oa = long_request("gpt-4o-mini", "");
    let long_an = long_request("claude-haiku-4-5", "");
    let long_tokens = estimate_input(&long_oa).tokens;
    let mut seen = 0u64;
    micro(
        &format!("estimate_input, {long_tokens}-token prompt, first sight"),
        300,
        Box::new(|| {
            seen += 1;
            let fresh = long_request("gpt-4o-mini", &seen.to_string());
            black_box(estimate_input(black_box(&fresh)));
        }),
    );
    micro(
        "estimate_input, same prompt again (memoized count)",
        20_000,
        Box::new(|| {
            black_box(estimate_input(black_box(&long_oa)));
        }),
    );
    micro(
        "estimate_input, same prompt, heuristic (Anthropic)",
        20_000,
        Box::new(|| {
            black_box(estimate_input(black_box(&long_an)));
        }),
    );
    micro(
        "cache key of the 2-message request",
        100_000,
        Box::new(|| {
            black_box(CacheKey::of(Some("tenant"), black_box(&cached)));
        }),
    );
    let spent = run_account.snapshot();
    assert_eq!(
        spent.reserved,
        Charge::ZERO,
        "the benchmark leaked a reservation"
    );
}
