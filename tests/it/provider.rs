//! A loopback HTTP server that speaks the OpenAI chat completions API the way a compatible
//! provider (LiteLLM's proxy, vLLM, Ollama) does: it records each request body and answers
//! every call with the same content, or like a model (the offline stand-in model's answer to
//! the request), or accepts the request and never answers (a hung provider). It runs until
//! dropped.

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the provider behaves.
#[derive(Clone)]
pub enum Behaviour {
    /// Answers every call with this assistant content.
    Answer(String),
    /// Answers each call as `impresario::offline::OfflineModel` answers it: plans calls of the
    /// allowed tools with the goal's words, then repeats what they returned.
    Offline,
    /// Reads the request, then never answers.
    Hang,
}

/// A running provider.
pub struct Provider {
    /// Its base URL (`http://127.0.0.1:PORT/v1`), for `OPENAI_BASE_URL`.
    pub base_url: String,
    /// Every request body received, in order.
    pub requests: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Provider {
    /// Listens on a free loopback port.
    pub async fn start(behaviour: Behaviour) -> Provider {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, behaviour.clone(), seen.clone()));
            }
        });
        Provider {
            base_url,
            requests,
            task,
        }
    }

    /// The `model` of every request so far.
    pub fn models(&self) -> Vec<String> {
        let requests = self.requests.lock().unwrap();
        requests
            .iter()
            .map(|r| r["model"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

/// One connection: requests one after another (keep-alive), each read whole.
async fn serve(mut socket: TcpStream, behaviour: Behaviour, seen: Arc<Mutex<Vec<Value>>>) {
    let mut buffer = Vec::new();
    loop {
        let Some(body) = read_request(&mut socket, &mut buffer).await else {
            return;
        };
        let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        seen.lock().unwrap().push(request.clone());
        let content = match &behaviour {
            Behaviour::Answer(content) => content.clone(),
            Behaviour::Offline => offline_answer(&request).await,
            Behaviour::Hang => {
                // Holds the connection open, unanswered, until the client gives up.
                let _ = socket.read(&mut [0u8; 1]).await;
                return;
            }
        };
        let answer = json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": request["model"],
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": content },
                "finish_reason": "stop"
            }],
            "usage": { "prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25 }
        })
        .to_string();
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if socket.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The offline stand-in model's answer to an OpenAI-format request: its messages (role and
/// text) and its `response_format` schema name (`plan` makes it plan).
async fn offline_answer(wire: &Value) -> String {
    use impresario::runtime::llm::{ChatModel, ChatRequest, Message, OutputSchema};
    let mut request = ChatRequest::new(wire["model"].as_str().unwrap_or_default());
    for message in wire["messages"].as_array().into_iter().flatten() {
        let content = message["content"].as_str().unwrap_or_default().to_owned();
        request = request.message(match message["role"].as_str() {
            Some("system") => Message::system(content),
            Some("user") => Message::User { content },
            _ => Message::Assistant {
                content,
                tool_calls: Vec::new(),
            },
        });
    }
    let schema = &wire["response_format"]["json_schema"];
    if let Some(name) = schema["name"].as_str() {
        request.output_schema = Some(OutputSchema {
            name: name.to_owned(),
            schema: schema["schema"].clone().into(),
            strict: false,
        });
    }
    let model = impresario::offline::OfflineModel::new();
    model.chat(&request).await.unwrap().content
}

/// Reads one HTTP request's head and `content-length` body; `None` when the client closed.
pub async fn read_request(socket: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut chunk = [0u8; 8192];
    // Bounded: a request of the client under test is a few kilobytes.
    for _ in 0..10_000 {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buffer.len() >= end + 4 + length {
                let body = buffer[end + 4..end + 4 + length].to_vec();
                buffer.drain(..end + 4 + length);
                return Some(body);
            }
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
    None
}

/// Reads one HTTP request from `conn` (a blocking loopback server's connection): its body.
pub fn read_body_blocking(conn: &std::net::TcpStream) -> Vec<u8> {
    use std::io::{BufRead, Read};
    let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
    let (mut line, mut length) = (String::new(), 0usize);
    while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        line.clear();
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    body
}

/// Answers on `out` as a streaming OpenAI-compatible provider: one chunk per piece of
/// `pieces`, then the finish reason, the usage (100 in, 20 out) and `[DONE]`.
pub fn stream_blocking<'a>(
    mut out: std::net::TcpStream,
    pieces: impl IntoIterator<Item = &'a str>,
) {
    use std::io::Write;
    let usage = json!({"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120});
    let mut frames: Vec<String> = pieces
        .into_iter()
        .map(|p| json!({"choices": [{"index": 0, "delta": {"content": p}, "finish_reason": null}]}))
        .chain([
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
            json!({"choices": [], "usage": usage}),
        ])
        .map(|event| format!("data: {event}\n\n"))
        .collect();
    frames.push("data: [DONE]\n\n".into());
    let _ = out.write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n");
    for frame in frames {
        let _ = out.write_all(format!("{:x}\r\n{frame}\r\n", frame.len()).as_bytes());
        let _ = out.flush();
    }
    let _ = out.write_all(b"0\r\n\r\n");
}
