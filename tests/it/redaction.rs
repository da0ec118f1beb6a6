//! One redaction layer: a provider on loopback echoes every kind of credential the service
//! holds (its API key as `Bearer`, `x-api-key`, Basic auth of the base URL's user and password,
//! the URL with its userinfo) into an error body and into an answer. None of them may appear
//! in the service's logs, its journal file, a run's detail or events, or an error.

use std::io::{BufRead, Read, Write};
use std::sync::Arc;

use base64::Engine;
use serde_json::json;

use crate::binary::{Server, TempDir};

const KEY: &str = "sk-leak-test-0123456789abcdef";
const USER: &str = "leakuser";
const PASSWORD: &str = "leak-pass-98765";

fn basic() -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
}

/// Everything that must never come out of the service.
fn secrets() -> Vec<String> {
    vec![
        KEY.into(),
        PASSWORD.into(),
        format!("{USER}:{PASSWORD}"),
        basic(),
    ]
}

/// An OpenAI-compatible server echoing the request's headers and every credential form: a
/// request mentioning "Fail" gets a 400 whose message echoes them, others an answer that does.
fn echo_provider(base: Arc<std::sync::Mutex<String>>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let base = base.clone();
            std::thread::spawn(move || echo(conn, &base));
        }
    });
    format!("http://{USER}:{PASSWORD}@{addr}/v1")
}

fn echo(conn: std::net::TcpStream, base: &std::sync::Mutex<String>) {
    let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
    let (mut head, mut line, mut length) = (String::new(), String::new(), 0usize);
    while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        head.push_str(&line);
        line.clear();
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let echoed = format!(
        "you sent {head:?}; Authorization: Bearer {KEY}; x-api-key: {KEY}; \
         Authorization: Basic {}; base url {}",
        basic(),
        base.lock().unwrap()
    );
    let (status, reply) = if String::from_utf8_lossy(&body).contains("Fail") {
        (
            "400 Bad Request",
            json!({"error": {"message": echoed, "type": "invalid_request_error"}}),
        )
    } else {
        let plan = json!({"steps": [{"type": "final_answer", "answer": echoed}]}).to_string();
        let usage = json!({"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120});
        let choice = json!({"index": 0, "message": {"role": "assistant", "content": plan}, "finish_reason": "stop"});
        (
            "200 OK",
            json!({"id": "x", "object": "chat.completion", "choices": [choice], "usage": usage}),
        )
    };
    let reply = reply.to_string();
    let mut out = conn;
    let _ = write!(
        out,
        "HTTP/1.1 {status}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
        reply.len()
    );
}

/// Every text of the journal file: every column of every table (the events' rows, the shared
/// values stored once, the runs).
fn journal_text(dir: &TempDir) -> String {
    let db = rusqlite::Connection::open(dir.0.join("impresario.db")).unwrap();
    let tables: Vec<String> = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(tables.iter().any(|t| t == "batches"), "{tables:?}");
    let mut text = String::new();
    for table in tables {
        let mut rows = db.prepare(&format!("SELECT * FROM {table}")).unwrap();
        let columns = rows.column_count();
        let mut found = rows.query([]).unwrap();
        while let Some(row) = found.next().unwrap() {
            for i in 0..columns {
                if let Ok(v) = row.get::<_, String>(i) {
                    text.push_str(&v);
                    text.push('\n');
                }
            }
        }
    }
    text
}

fn assert_clean(place: &str, text: &str) {
    for secret in secrets() {
        assert!(!text.contains(&secret), "{place} holds {secret:?}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_reaches_logs_journal_run_detail_or_errors() {
    let base = Arc::new(std::sync::Mutex::new(String::new()));
    let url = echo_provider(base.clone());
    *base.lock().unwrap() = url.clone();
    let dir = Arc::new(TempDir::new());
    let env = [("OPENAI_API_KEY", KEY), ("OPENAI_BASE_URL", url.as_str())];
    let server = Server::try_start(dir.clone(), "", &env).unwrap_or_else(|e| panic!("{e}"));

    let mut seen = String::new();
    for goal in ["Say what you received", "Fail: say what you received"] {
        let id = server.submit(json!({"goal": goal, "tools": []})).await;
        let state = server
            .until(&id, |s| s["state"] == "failed" || s["state"] == "succeeded")
            .await;
        let (_, detail) = server.get(&format!("/v1/runs/{id}")).await;
        let (_, listed) = server.get("/v1/runs").await;
        assert_clean("a run's detail", &detail.to_string());
        assert_clean("the run list", &listed.to_string());
        seen.push_str(&format!("{state}\n{detail}\n"));
    }
    // The echo reached the places checked: the first run failed on it, the second answered it.
    assert!(
        seen.contains("\"failed\"") && seen.contains("\"succeeded\""),
        "{seen}"
    );
    assert!(seen.matches("<redacted>").count() >= 8, "{seen}");
    // An error that quotes what it was sent: a tool named with the key.
    let (status, error) = server
        .post("/v1/runs", json!({"goal": "hello", "tools": [KEY]}))
        .await;
    assert_eq!(status, 422, "{error}");
    assert!(error.to_string().contains("<redacted>"), "{error}");
    assert_clean("an error response", &error.to_string());
    assert_clean("the journal file", &journal_text(&dir));
    assert_clean("the logs", &server.stderr());
    assert!(journal_text(&dir).contains("<redacted>"));
}

/// An OpenAI-compatible server streaming, to every request, a plan whose answer holds the API
/// key twice (plain and as a bearer token), in pieces of five characters: every credential
/// is cut in two.
fn splitting_provider() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || stream_in_pieces(conn));
        }
    });
    format!("http://{addr}/v1")
}

fn stream_in_pieces(conn: std::net::TcpStream) {
    crate::provider::read_body_blocking(&conn);
    let answer = format!("the key is {KEY} and the header Authorization: Bearer {KEY} ok");
    let plan = json!({"steps": [{"type": "final_answer", "answer": answer}]}).to_string();
    let chars: Vec<char> = plan.chars().collect();
    let pieces: Vec<String> = chars.chunks(5).map(|p| p.iter().collect()).collect();
    crate::provider::stream_blocking(conn, pieces.iter().map(String::as_str));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_split_across_streamed_deltas_is_redacted_whole() {
    let url = splitting_provider();
    let env = [
        ("IMPRESARIO_MODELS__PROVIDER", "auto"),
        ("OPENAI_API_KEY", KEY),
        ("OPENAI_BASE_URL", url.as_str()),
    ];
    let server =
        Server::try_start(Arc::new(TempDir::new()), "", &env).unwrap_or_else(|e| panic!("{e}"));
    let id = server
        .submit(json!({"goal": "Say the key", "tools": [], "stream": true}))
        .await;
    let ended = server.until(&id, |s| s["state"] == "succeeded").await;
    let events = server.events(&id).await.all().await;
    let deltas: Vec<&str> = events
        .iter()
        .filter(|e| e.kind == "delta")
        .map(|e| e.data["text"].as_str().unwrap())
        .collect();
    assert!(
        deltas.len() > 1,
        "the answer streamed in pieces: {deltas:?}"
    );
    let streamed = deltas.concat();
    assert_clean("the streamed text, assembled", &streamed);
    assert_eq!(
        streamed.matches("<redacted>").count(),
        2,
        "both credentials were redacted whole: {streamed}"
    );
    assert!(streamed.contains("the key is <redacted> and"), "{streamed}");
    assert_clean("the run's end", &ended.to_string());
}
