//! Streaming: what the LLM layer adds to the time to first token, and how fast a halt closes a
//! stream's connection, each against raw reqwest streaming the same loopback server in the same
//! run.
//!
//! A loopback HTTP/1.1 server on its own thread (its own current-thread tokio runtime) streams
//! OpenAI chat-completion chunks, chunked transfer encoding, `TCP_NODELAY`:
//!
//! - `/ttft/v1/chat/completions`: the response head and the first delta at once, then the
//!   finish chunk, a usage chunk and `[DONE]`. **Time to first token**, per call, from just
//!   before the request is sent to the first delta in the caller's hands. Raw: reqwest posts a
//!   prebuilt body and reads chunks until the first `data:` line parses as JSON with a
//!   `delta.content` (then reads the rest, so the connection is reused). Ours: `Client::chat`
//!   with a `DeltaSink` noting when it first fires (validation, tiktoken estimate, breaker,
//!   reservation on a 3-account path, typed encoding, SSE parsing, typed chunk decoding).
//! - `/halt/v1/chat/completions`: the head and one delta, then nothing until the client
//!   closes; the server notes when its read returns. **Halt to connection closed**: from the
//!   instant the first delta is seen and the stop is given to the server seeing the close.
//!   Raw: drop the response. Ours: cancel the call's halt token (`Client::chat` drops the
//!   request and closes the reservation with the partial cost).
//!
//! Calls alternate raw / ours; per-call latencies are pooled; p50 and p99 of each side.
//!
//! Run: `cargo bench --bench stream`

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{fmt, quantile};
use impresario_runtime::ledger::{AccountId, Ledger, Limits};
use impresario_runtime::llm::{CallOptions, ChatRequest, Client, DeltaSink, OpenAi, OpenAiConfig};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio_util::sync::CancellationToken;

/// Calls of each side for time to first token (after 200 warm-up calls).
const TTFT_CALLS: usize = 2_000;
/// Calls of each side for halt to close (each opens a connection).
const HALT_CALLS: usize = 500;

fn chunk(event: &Value) -> String {
    let frame = format!("data: {event}\n\n");
    format!("{:x}\r\n{frame}\r\n", frame.len())
}

const HEAD: &str =
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";

/// The head and first delta; the rest of a complete stream.
fn stream_parts() -> (String, String) {
    let first = chunk(
        &json!({"id": "c", "choices": [{"index": 0, "delta": {"content": "Paris"}, "finish_reason": null}]}),
    );
    let rest = [
        chunk(&json!({"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})),
        chunk(
            &json!({"id": "c", "choices": [], "usage": {"prompt_tokens": 24, "completion_tokens": 1, "total_tokens": 25}}),
        ),
        "e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n".to_owned(),
    ]
    .concat();
    (format!("{HEAD}{first}"), rest)
}

/// When the server saw clients close halted streams. Awaited, never blocked on: the
/// connection a caller drops is closed by a task of the caller's own runtime.
type Closes = UnboundedReceiver<Instant>;

/// Starts the server; returns its address and where it reports when a client closed a
/// halted stream.
fn start_server() -> (SocketAddr, Closes) {
    let (closed_tx, closed_rx) = unbounded_channel();
    let addr = common::loopback_server(move |conn| serve(conn, closed_tx.clone()));
    (addr, closed_rx)
}

async fn serve(mut conn: TcpStream, closed: UnboundedSender<Instant>) {
    let (first, rest) = stream_parts();
    let mut buf = Vec::with_capacity(16 << 10);
    while let Some(head) = common::read_request(&mut conn, &mut buf).await {
        if conn.write_all(first.as_bytes()).await.is_err() {
            return;
        }
        if head.starts_with("post /halt/") {
            let _ = conn.read(&mut [0u8; 64]).await;
            let _ = closed.send(Instant::now());
            return;
        }
        if conn.write_all(rest.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn request() -> ChatRequest {
    ChatRequest::new("gpt-4o-mini")
        .system("Be brief.")
        .user("What is the capital of France?")
        .max_tokens(64)
}

/// The raw request body (what `Client` would send), prebuilt once.
fn raw_body() -> Vec<u8> {
    json!({"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"}],
        "max_completion_tokens": 64, "stream": true, "stream_options": {"include_usage": true}})
    .to_string()
    .into_bytes()
}

/// Raw reqwest: posts, then reads until the first delta's text is parsed; returns when it was,
/// and the response (read the rest to reuse the connection, or drop it to close it).
async fn raw_first_token(
    http: &reqwest::Client,
    url: &str,
    body: &[u8],
) -> (Instant, reqwest::Response) {
    let mut response = http
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let mut pending = Vec::new();
    loop {
        let bytes = response.chunk().await.unwrap().expect("a first delta");
        pending.extend_from_slice(&bytes);
        let text = String::from_utf8_lossy(&pending);
        let first = text.lines().find_map(|l| l.strip_prefix("data: "));
        if let Some(value) = first.and_then(|d| serde_json::from_str::<Value>(d).ok()) {
            assert!(value["choices"][0]["delta"]["content"].is_string());
            return (Instant::now(), response);
        }
    }
}

/// A client of the server's `prefix`, and call options on a fresh run account.
fn ours(addr: SocketAddr, prefix: &str) -> (Client, CallOptions) {
    let mut config = OpenAiConfig::openai("sk-bench");
    config.base_url = format!("http://{addr}/{prefix}/v1");
    let client = Client::builder()
        .provider("openai", OpenAi::new(config).unwrap())
        .build()
        .unwrap();
    let ledger = Ledger::new();
    let tenant = AccountId::Tenant("t".into());
    ledger
        .open(tenant.clone(), None, Limits::default())
        .unwrap();
    let run = AccountId::Run("r".into());
    ledger
        .open(run.clone(), Some(&tenant), Limits::default())
        .unwrap();
    let options = CallOptions::new(ledger.path(&run).unwrap(), CancellationToken::new());
    (client, options)
}

/// A sink noting when it first fires.
fn first_delta() -> (DeltaSink, Arc<Mutex<Option<Instant>>>) {
    let at = Arc::new(Mutex::new(None));
    let noted = at.clone();
    let sink = DeltaSink::new(move |_: &str| {
        noted.lock().unwrap().get_or_insert_with(Instant::now);
    });
    (sink, at)
}

/// Time to first token of `calls` alternating calls: (raw, ours), sorted.
fn time_to_first_token(
    rt: &Runtime,
    addr: SocketAddr,
    calls: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/ttft/v1/chat/completions");
    let body = raw_body();
    let (client, options) = ours(addr, "ttft");
    let (mut raw, mut mine) = (Vec::new(), Vec::new());
    rt.block_on(async {
        for _ in 0..calls {
            let start = Instant::now();
            let (first, mut response) = raw_first_token(&http, &url, &body).await;
            raw.push(first - start);
            while response.chunk().await.unwrap().is_some() {}

            let (sink, at) = first_delta();
            let options = options.clone().stream_to(sink);
            let start = Instant::now();
            client.chat(request(), &options).await.unwrap();
            mine.push(at.lock().unwrap().expect("a delta") - start);
        }
    });
    raw.sort();
    mine.sort();
    (raw, mine)
}

/// Halt (or drop) to the server seeing the close, `calls` alternating calls: (raw, ours).
fn halt_to_close(
    rt: &Runtime,
    addr: SocketAddr,
    closed: &mut Closes,
    calls: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/halt/v1/chat/completions");
    let body = raw_body();
    let (client, base) = ours(addr, "halt");
    let (mut raw, mut mine) = (Vec::new(), Vec::new());
    rt.block_on(async {
        for _ in 0..calls {
            let (_, response) = raw_first_token(&http, &url, &body).await;
            let stop = Instant::now();
            drop(response);
            raw.push(closed.recv().await.unwrap() - stop);

            let halt = CancellationToken::new();
            let (sink, at) = first_delta();
            let mut options = base.clone().stream_to(sink);
            options.halt = halt.clone();
            let call = client.chat(request(), &options);
            let stopper = async {
                while at.lock().unwrap().is_none() {
                    tokio::task::yield_now().await;
                }
                let stop = Instant::now();
                halt.cancel();
                stop
            };
            let (result, stop) = tokio::join!(call, stopper);
            assert!(result.is_err(), "the halted call fails");
            mine.push(closed.recv().await.unwrap() - stop);
        }
    });
    raw.sort();
    mine.sort();
    (raw, mine)
}

fn report(name: &str, (raw, ours): &(Vec<Duration>, Vec<Duration>)) {
    let (raw50, ours50) = (quantile(raw, 0.5), quantile(ours, 0.5));
    let (raw99, ours99) = (quantile(raw, 0.99), quantile(ours, 0.99));
    println!("{name:<44} {:>10} {:>10}", "p50", "p99");
    println!(
        "{:<44} {:>10} {:>10}",
        "  raw reqwest",
        fmt(raw50),
        fmt(raw99)
    );
    println!(
        "{:<44} {:>10} {:>10}",
        "  Client::chat",
        fmt(ours50),
        fmt(ours99)
    );
    let added = |a: Duration, b: Duration| {
        if b >= a {
            format!("+{}", fmt(b - a))
        } else {
            format!("-{}", fmt(a - b))
        }
    };
    println!(
        "{:<44} {:>10} {:>10}",
        "  added by the runtime",
        added(raw50, ours50),
        added(raw99, ours99)
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (addr, mut closed) = start_server();
    time_to_first_token(&rt, addr, 200); // warm-up: connections, tokenizer, allocator
    report(
        &format!("time to first token ({TTFT_CALLS} calls each)"),
        &time_to_first_token(&rt, addr, TTFT_CALLS),
    );
    report(
        &format!("halt to connection closed ({HALT_CALLS} calls each)"),
        &halt_to_close(&rt, addr, &mut closed, HALT_CALLS),
    );
}
