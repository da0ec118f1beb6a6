//! Support for the LLM layer's integration tests: a real HTTP/1.1 server on loopback that
//! plays a script of replies (including broken ones: delays, truncated bodies, requests left
//! hanging, event streams that pause, drop or hang mid-way) and records what it received,
//! plus budget helpers.
#![allow(dead_code)] // the `it` binary and telemetry_traces each use a subset
#![allow(clippy::too_many_lines)] // the loopback server is one long script of replies

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use impresario_runtime::ledger::{Account, AccountId, Ledger, Limits};
use impresario_runtime::llm::{
    Anthropic, AnthropicConfig, CallOptions, HttpConfig, OpenAi, OpenAiConfig, RetryPolicy,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What the server answers to one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A complete answer.
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// The inner reply, after a pause.
    Delayed(Duration, Box<Reply>),
    /// 200 declaring `declared` body bytes, sending only `body`, then closing.
    Truncated { body: String, declared: usize },
    /// Never answers; notes when the client closes the connection.
    Hang,
    /// 200 `text/event-stream`, chunked, one piece at a time, flushed as it goes.
    Stream(Vec<Piece>),
}

/// One step of a streamed reply.
#[derive(Debug, Clone)]
pub enum Piece {
    /// Raw SSE text (one or more whole events), sent as one chunk.
    Event(String),
    /// Wait before the next piece.
    Pause(Duration),
    /// Close the connection without ending the body.
    Drop,
    /// Send nothing more; note when the client closes the connection.
    Hang,
}

/// An SSE event with only data: `data: {json}`.
pub fn data(json: &Value) -> Piece {
    Piece::Event(format!("data: {json}\n\n"))
}

/// A named SSE event (Anthropic names each one by its type).
pub fn named(event: &str, json: &Value) -> Piece {
    Piece::Event(format!("event: {event}\ndata: {json}\n\n"))
}

/// An OpenAI chunk carrying one piece of text.
pub fn openai_delta(text: &str) -> Piece {
    data(&serde_json::json!({
        "id": "chatcmpl-s", "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]
    }))
}

/// OpenAI's last chunk with a choice (its finish reason).
pub fn openai_finish(reason: &str) -> Piece {
    data(&serde_json::json!({
        "id": "chatcmpl-s", "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]
    }))
}

/// OpenAI's usage chunk (`stream_options.include_usage`): no choices.
pub fn openai_usage(prompt: u64, completion: u64) -> Piece {
    data(&serde_json::json!({
        "id": "chatcmpl-s", "object": "chat.completion.chunk", "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    }))
}

/// `data: [DONE]`.
pub fn done() -> Piece {
    Piece::Event("data: [DONE]\n\n".into())
}

/// Anthropic's `message_start` with its input usage.
pub fn anthropic_start(input: u64) -> Piece {
    named(
        "message_start",
        &serde_json::json!({"type": "message_start", "message": {
            "id": "msg_s", "type": "message", "role": "assistant", "content": [],
            "model": "claude-haiku-4-5", "stop_reason": null,
            "usage": {"input_tokens": input, "output_tokens": 1}
        }}),
    )
}

/// Anthropic's `content_block_start` of a text block.
pub fn anthropic_text_start(index: usize) -> Piece {
    named(
        "content_block_start",
        &serde_json::json!({"type": "content_block_start", "index": index,
            "content_block": {"type": "text", "text": ""}}),
    )
}

/// Anthropic's `content_block_delta` with text.
pub fn anthropic_text(index: usize, text: &str) -> Piece {
    named(
        "content_block_delta",
        &serde_json::json!({"type": "content_block_delta", "index": index,
            "delta": {"type": "text_delta", "text": text}}),
    )
}

/// Anthropic's end of a message: `message_delta` (stop reason, cumulative output usage),
/// `message_stop`.
pub fn anthropic_end(stop_reason: &str, output: u64) -> Vec<Piece> {
    vec![
        named(
            "message_delta",
            &serde_json::json!({"type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": null},
                "usage": {"output_tokens": output}}),
        ),
        named("message_stop", &serde_json::json!({"type": "message_stop"})),
    ]
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Reply {
        Reply::raw(status, &body.to_string())
    }

    pub fn raw(status: u16, body: &str) -> Reply {
        Reply::Full {
            status,
            headers: Vec::new(),
            body: body.to_string(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        if let Reply::Full { headers, .. } = &mut self {
            headers.push((name.to_string(), value.to_string()));
        }
        self
    }

    pub fn after(self, delay: Duration) -> Reply {
        Reply::Delayed(delay, Box::new(self))
    }
}

/// One request as the server received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Seen {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    replies: Mutex<VecDeque<Reply>>,
    seen: Mutex<Vec<Seen>>,
    closed_by_client: AtomicUsize,
    events_sent: AtomicUsize,
}

/// A loopback HTTP/1.1 server answering requests with a script of replies, in order.
/// Requests beyond the script get a 500 that names the problem.
pub struct Server {
    pub url: String,
    state: Arc<State>,
}

impl Server {
    pub async fn start(replies: impl IntoIterator<Item = Reply>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(State::default());
        state.replies.lock().unwrap().extend(replies);
        let serving = state.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, serving.clone()));
            }
        });
        Server { url, state }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.state.seen.lock().unwrap().len()
    }

    /// Waits (up to 10 s) until `n` requests have arrived.
    pub async fn wait_for_requests(&self, n: usize) {
        wait_until(|| self.count() >= n).await;
        assert!(
            self.count() >= n,
            "the server got {} of {n} requests",
            self.count()
        );
    }

    /// How many stream pieces of kind [`Piece::Event`] were written to clients.
    pub fn events_sent(&self) -> usize {
        self.state.events_sent.load(Ordering::SeqCst)
    }

    /// Waits (up to 10 s) until a client closed a connection left hanging; `true` if it did.
    pub async fn client_closed(&self) -> bool {
        wait_until(|| self.state.closed_by_client.load(Ordering::SeqCst) > 0).await;
        self.state.closed_by_client.load(Ordering::SeqCst) > 0
    }
}

async fn wait_until(mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn serve(mut conn: TcpStream, state: Arc<State>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let path = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or("")
            .to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[head_end..head_end + length].to_vec();
        buf.drain(..head_end + length);
        state.seen.lock().unwrap().push(Seen {
            path,
            headers,
            body,
            at: Instant::now(),
        });
        let next = state.replies.lock().unwrap().pop_front();
        let mut reply = next
            .unwrap_or_else(|| Reply::raw(500, "test server: no reply scripted for this request"));
        while let Reply::Delayed(delay, inner) = reply {
            tokio::time::sleep(delay).await;
            reply = *inner;
        }
        match reply {
            Reply::Full {
                status,
                headers,
                body,
            } => {
                let mut out = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
                    body.len()
                );
                for (n, v) in headers {
                    out.push_str(&format!("{n}: {v}\r\n"));
                }
                out.push_str("\r\n");
                out.push_str(&body);
                if conn.write_all(out.as_bytes()).await.is_err() {
                    return;
                }
            }
            Reply::Truncated { body, declared } => {
                let out = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {declared}\r\n\r\n{body}"
                );
                let _ = conn.write_all(out.as_bytes()).await;
                let _ = conn.shutdown().await;
                return;
            }
            Reply::Hang => return hang(conn, &state).await,
            Reply::Stream(pieces) => {
                if !stream(&mut conn, pieces, &state).await {
                    return;
                }
            }
            Reply::Delayed(..) => unreachable!("delays were unwrapped above"),
        }
    }
}

/// Waits for the client to close the connection (the request was read in full: any read
/// result now is the client leaving) and notes it.
async fn hang(mut conn: TcpStream, state: &State) {
    let _ = conn.read(&mut [0u8; 64]).await;
    state.closed_by_client.fetch_add(1, Ordering::SeqCst);
}

/// Plays a streamed reply; `false` when the connection is over (dropped, hung, broken).
async fn stream(conn: &mut TcpStream, pieces: Vec<Piece>, state: &State) -> bool {
    let head =
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
    if conn.write_all(head.as_bytes()).await.is_err() {
        return false;
    }
    for piece in pieces {
        match piece {
            Piece::Event(text) => {
                let chunk = format!("{:x}\r\n{text}\r\n", text.len());
                if conn.write_all(chunk.as_bytes()).await.is_err() || conn.flush().await.is_err() {
                    return false;
                }
                state.events_sent.fetch_add(1, Ordering::SeqCst);
            }
            Piece::Pause(d) => tokio::time::sleep(d).await,
            Piece::Drop => {
                let _ = conn.shutdown().await;
                return false;
            }
            Piece::Hang => {
                let _ = conn.read(&mut [0u8; 64]).await;
                state.closed_by_client.fetch_add(1, Ordering::SeqCst);
                return false;
            }
        }
    }
    conn.write_all(b"0\r\n\r\n").await.is_ok()
}

/// Timeouts for tests: short enough to fail fast, long enough for a loaded 2-core machine.
pub fn http() -> HttpConfig {
    HttpConfig {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        ..HttpConfig::default()
    }
}

pub fn openai(server: &Server) -> OpenAi {
    let mut config = OpenAiConfig::openai("sk-test");
    config.base_url = format!("{}/v1", server.url);
    config.http = http();
    OpenAi::new(config).unwrap()
}

pub fn anthropic(server: &Server) -> Anthropic {
    let mut config = AnthropicConfig::new("sk-ant-test");
    config.base_url = server.url.clone();
    config.http = http();
    Anthropic::new(config).unwrap()
}

/// Retries with 10 ms base backoff, so tests run fast.
pub fn fast_retry(max_retries: u32) -> RetryPolicy {
    RetryPolicy {
        max_retries,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(40),
        ..RetryPolicy::default()
    }
}

/// A run account (optionally capped in micro-USD) under a tenant under the global account,
/// and call options on its path with a fresh halt token.
pub fn budget(micro_usd: Option<u64>) -> (Account, CallOptions) {
    let ledger = Ledger::new();
    let tenant = AccountId::Tenant("acme".into());
    ledger
        .open(tenant.clone(), None, Limits::default())
        .unwrap();
    let run = AccountId::Run("run-1".into());
    let limits = Limits {
        micro_usd,
        ..Limits::default()
    };
    let account = ledger.open(run.clone(), Some(&tenant), limits).unwrap();
    let options = CallOptions::new(ledger.path(&run).unwrap(), CancellationToken::new());
    (account, options)
}

/// An OpenAI chat completion body.
pub fn openai_ok(content: &str, prompt: u64, completion: u64) -> Value {
    serde_json::json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "stop"
        }],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    })
}

/// An Anthropic message body.
pub fn anthropic_ok(text: &str, input: u64, output: u64) -> Value {
    serde_json::json!({
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5-20251001",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": input, "output_tokens": output}
    })
}
