//! An OpenAI-compatible provider on loopback (real HTTP/1.1 over TCP) whose answers, reported
//! usage and delays a test scripts, and the `local` model's prices.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use impresario_runtime::llm::{Client, ModelPrice, OpenAi, OpenAiConfig, PriceTable, Rates};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One scripted answer: the assistant's text, the usage reported with it, and how long the
/// server waits before sending it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub content: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub delay: Duration,
}

impl Answer {
    /// `content` reporting 100 prompt and 20 completion tokens, at once.
    pub fn new(content: impl Into<String>) -> Self {
        Answer {
            content: content.into(),
            prompt_tokens: 100,
            completion_tokens: 20,
            delay: Duration::ZERO,
        }
    }

    /// Reports this usage instead.
    pub fn usage(mut self, prompt_tokens: u64, completion_tokens: u64) -> Self {
        (self.prompt_tokens, self.completion_tokens) = (prompt_tokens, completion_tokens);
        self
    }

    /// Waits this long before answering.
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// A server answering the n-th request with `answers[n]` (100 prompt and 20 completion
/// tokens), the last one after that; its base URL and a count of the requests it saw.
pub async fn fake_openai(answers: Vec<String>) -> (String, Arc<AtomicUsize>) {
    fake_openai_with(answers.into_iter().map(Answer::new).collect()).await
}

/// Like [`fake_openai`], with scripted usage and delays.
pub async fn fake_openai_with(answers: Vec<Answer>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let answers = Arc::new(answers);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, answers.clone(), counter.clone()));
        }
    });
    (url, seen)
}

/// Answers the requests of one connection until it closes.
async fn serve(
    stream: tokio::net::TcpStream,
    answers: Arc<Vec<Answer>>,
    counter: Arc<AtomicUsize>,
) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let answer = &answers[n.min(answers.len() - 1)];
        tokio::time::sleep(answer.delay).await;
        let (prompt, completion) = (answer.prompt_tokens, answer.completion_tokens);
        let reply = json!({
            "id": format!("chatcmpl-{n}"), "object": "chat.completion", "model": "local",
            "choices": [{ "index": 0, "message": { "role": "assistant", "content": answer.content }, "finish_reason": "stop" }],
            "usage": { "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion }
        })
        .to_string();
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            reply.len()
        );
        if write.write_all(head.as_bytes()).await.is_err()
            || write.write_all(reply.as_bytes()).await.is_err()
        {
            return;
        }
    }
}

/// `local` costs 1 USD per million input tokens and 2 per million output tokens.
pub fn prices(provider: &str) -> PriceTable {
    let mut prices = PriceTable::default();
    let rates = Rates {
        input: 1_000_000,
        output: 2_000_000,
        cache_read: 0,
        cache_creation: 0,
        reasoning: 0,
    };
    prices.insert("local", ModelPrice::new(provider, rates));
    prices
}

/// A client calling `local` on the server at `url`.
pub fn http_client(url: &str) -> Client {
    Client::builder()
        .provider("http", OpenAi::new(OpenAiConfig::compatible(url)).unwrap())
        .prices(prices("http"))
        .build()
        .unwrap()
}
