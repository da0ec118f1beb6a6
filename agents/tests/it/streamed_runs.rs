//! Streaming runs against a real OpenAI-compatible streaming server on loopback: deltas on the
//! run's events with their step, whole answers (never tokens) in the journal, replay with no
//! network, a halt mid-stream journaled and charged what was received, and a subscriber that
//! goes away changing nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use impresario_agents::{
    ModelMap, Orchestrator, OrchestratorConfig, RunRequest, RunState, RunUpdate, ToolRegistry,
};
use impresario_runtime::halt::HaltMode;
use impresario_runtime::journal::{Journal, MemoryJournal, RunEvent as Journaled};
use impresario_runtime::ledger::Ledger;
use impresario_runtime::llm::estimate::{estimate_input, heuristic_tokens};
use impresario_runtime::llm::{Client, OpenAi, OpenAiConfig};
use impresario_runtime::{Runtime, RuntimeHandle};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::broadcast;

use crate::journaled_runs::{search_then_answer, Search};
use crate::loopback::prices;

/// One streamed answer: its text in pieces, then either the end (usage 100 in, 20 out) or a
/// hang that lasts until the client closes the connection.
#[derive(Clone)]
struct Answer {
    pieces: Vec<String>,
    hang: bool,
}

/// The server's counters: requests seen, connections the client closed while it hung.
#[derive(Default)]
struct Seen {
    requests: AtomicUsize,
    closed: AtomicUsize,
}

/// An OpenAI-compatible server on loopback streaming the n-th request's answer as chunks.
async fn streaming_server(answers: Vec<Answer>) -> (String, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let seen = Arc::new(Seen::default());
    let counters = seen.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let (answers, seen) = (answers.clone(), counters.clone());
            tokio::spawn(async move {
                let (read, mut write) = conn.into_split();
                let mut reader = BufReader::new(read);
                while read_request(&mut reader).await {
                    let n = seen.requests.fetch_add(1, Ordering::SeqCst);
                    let answer = &answers[n.min(answers.len() - 1)];
                    if !stream(&mut write, answer).await {
                        return;
                    }
                    if answer.hang {
                        let _ = reader.read(&mut [0u8; 16]).await;
                        seen.closed.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
            });
        }
    });
    (url, seen)
}

/// Reads one request (head and body); false when the connection is over.
async fn read_request<R: tokio::io::AsyncRead + Unpin>(reader: &mut BufReader<R>) -> bool {
    let mut length = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
            return false;
        }
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    reader.read_exact(&mut vec![0; length]).await.is_ok()
}

/// Writes the answer as chunked SSE; false if the client is gone.
async fn stream<W: tokio::io::AsyncWrite + Unpin>(write: &mut W, answer: &Answer) -> bool {
    let head =
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
    let mut events: Vec<Value> = answer
        .pieces
        .iter()
        .map(|p| json!({"choices": [{"index": 0, "delta": {"content": p}, "finish_reason": null}]}))
        .collect();
    if !answer.hang {
        events.push(json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}));
        events.push(json!({"choices": [], "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}}));
    }
    let mut frames: Vec<String> = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    if !answer.hang {
        frames.push("data: [DONE]\n\n".into());
    }
    if write.write_all(head.as_bytes()).await.is_err() {
        return false;
    }
    for frame in frames {
        let chunk = format!("{:x}\r\n{frame}\r\n", frame.len());
        if write.write_all(chunk.as_bytes()).await.is_err() {
            return false;
        }
        let _ = write.flush().await;
    }
    answer.hang || write.write_all(b"0\r\n\r\n").await.is_ok()
}

/// `text` cut into pieces of 7 characters.
fn pieces(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(7).map(|c| c.iter().collect()).collect()
}

fn whole(text: &str) -> Answer {
    Answer {
        pieces: pieces(text),
        hang: false,
    }
}

/// `local` costs 1 micro-USD per input token and 2 per output token.
fn client(url: &str) -> Client {
    Client::builder()
        .provider("http", OpenAi::new(OpenAiConfig::compatible(url)).unwrap())
        .prices(prices("http"))
        .build()
        .unwrap()
}

async fn orchestrator(rt: &RuntimeHandle, url: &str, journal: Arc<dyn Journal>) -> Orchestrator {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let config = OrchestratorConfig {
        journal,
        name: format!("streamed-{}", NEXT.fetch_add(1, Ordering::SeqCst)),
        ..OrchestratorConfig::default()
    };
    let mut tools = ToolRegistry::new();
    tools.register(Search).unwrap();
    Orchestrator::with(rt, client(url), tools, Ledger::new(), config)
        .await
        .unwrap()
}

fn request() -> RunRequest {
    RunRequest::new("When was Rust released?", ModelMap::all("local"))
        .tools(["search"])
        .stream(true)
}

/// Every event until the run's terminal state (bounded: 10 s).
async fn drain(events: &mut broadcast::Receiver<RunUpdate>) -> Vec<RunUpdate> {
    let mut all = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Ok(event)) = tokio::time::timeout_at(deadline, events.recv()).await {
        let last = matches!(&event, RunUpdate::State(s) if s.is_terminal());
        all.push(event);
        if last {
            break;
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_run_emits_deltas_journals_whole_answers_and_replays_offline() {
    let answers = search_then_answer();
    let (url, seen) = streaming_server(answers.iter().map(|a| whole(a)).collect()).await;
    let rt = Runtime::builder().arbiters(2).start().unwrap();
    let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
    let team = orchestrator(&rt, &url, journal.clone()).await;

    let run = team.submit(request()).await.unwrap();
    let events = drain(&mut run.events()).await;
    let result = run.wait().await;

    assert_eq!(
        result.state,
        RunState::Succeeded {
            answer: "2015".into()
        }
    );
    let deltas: Vec<(u32, &str)> = events
        .iter()
        .filter_map(|e| match e {
            RunUpdate::Delta { step, text } => Some((*step, text.as_str())),
            _ => None,
        })
        .collect();
    // Each piece is delivered as it arrives, but for a word it may end inside (held back until
    // the next piece or the answer's end: it could be the start of a credential).
    let sent = pieces(&answers[0]).len() + pieces(&answers[1]).len();
    assert!(
        deltas.len() > 2 && deltas.len() <= sent + 2,
        "{} deltas for {sent} pieces",
        deltas.len()
    );
    let text = |step: u32| -> String {
        deltas
            .iter()
            .filter(|(s, _)| *s == step)
            .map(|(_, t)| *t)
            .collect()
    };
    assert_eq!(
        text(0),
        answers[0],
        "the first plan, as it arrived, before any step"
    );
    assert_eq!(text(1), answers[1], "the second plan, after step 1");
    let journaled = journal.read(run.id()).unwrap();
    let kinds: Vec<&str> = journaled.iter().map(|e| e.event.kind()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "llm_response").count(), 2);
    assert_eq!(
        kinds.len(),
        13,
        "one entry per answer, none per delta: {kinds:?}"
    );
    let contents: Vec<&str> = journaled
        .iter()
        .filter_map(|e| match &e.event {
            Journaled::LlmResponse { response, .. } => Some(response.content.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(contents, answers);
    assert_eq!(
        result.usage.micro_usd,
        2 * (100 + 40),
        "the provider's usage"
    );

    let report = team.replay(&result.run).await.unwrap();
    assert_eq!(
        seen.requests.load(Ordering::SeqCst),
        2,
        "the replay sent nothing"
    );
    assert_eq!(report.divergence, None);
    assert!(report.complete);
    assert_eq!(report.state, result.state);
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_halted_mid_stream_journals_and_charges_the_text_received_then_resumes() {
    let hanging = Answer {
        pieces: vec!["{\"steps\": [".into(), "{\"type\": ".into()],
        hang: true,
    };
    let answers = search_then_answer();
    let (url, seen) = streaming_server(vec![hanging, whole(&answers[0]), whole(&answers[1])]).await;
    let rt = Runtime::builder().arbiters(2).start().unwrap();
    let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
    let team = orchestrator(&rt, &url, journal.clone()).await;

    let run = team.submit(request()).await.unwrap();
    let mut events = run.events();
    let mut received = String::new();
    while received.len() < "{\"steps\": [{\"type\": ".len() {
        match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
            Ok(Ok(RunUpdate::Delta { text, .. })) => received.push_str(&text),
            Ok(Ok(_)) => {}
            other => panic!("no delta before the halt: {other:?}"),
        }
    }
    assert!(run.halt(HaltMode::Immediate));
    let result = tokio::time::timeout(Duration::from_secs(10), run.wait())
        .await
        .expect("the halted run ends");

    assert!(
        matches!(result.state, RunState::Halted { .. }),
        "{:?}",
        result.state
    );
    for _ in 0..200 {
        if seen.closed.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        seen.closed.load(Ordering::SeqCst),
        1,
        "the server saw the connection close"
    );
    let journaled = journal.read(run.id()).unwrap();
    let (request, cut) = match &journaled[..] {
        [.., a, b, _halted] => (&a.event, &b.event),
        other => panic!("{other:?}"),
    };
    let Journaled::LlmRequest { request, .. } = request else {
        panic!("{request:?}");
    };
    let Journaled::LlmInterrupted {
        content,
        usage,
        cost_micro_usd,
        cause,
        ..
    } = cut
    else {
        panic!("{cut:?}");
    };
    assert_eq!(content, &received);
    assert_eq!(cause, "halted");
    let input = estimate_input(request).tokens;
    let output = heuristic_tokens(&received);
    assert_eq!((usage.input_tokens, usage.output_tokens), (input, output));
    assert_eq!(*cost_micro_usd, input + 2 * output);
    assert_eq!(
        result.usage.micro_usd, *cost_micro_usd,
        "journaled = charged"
    );

    // Resumed, the run asks again (the cut answer is not served as an answer) and goes on.
    let resumed = team.resume(run.id()).await.unwrap().wait().await;
    assert_eq!(
        resumed.state,
        RunState::Succeeded {
            answer: "2015".into()
        }
    );
    assert_eq!(seen.requests.load(Ordering::SeqCst), 3);
    assert_eq!(
        resumed.usage.micro_usd,
        cost_micro_usd + 2 * (100 + 40),
        "the cut answer once, then the two whole ones"
    );
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_goes_away_neither_stops_nor_changes_the_run() {
    let answers = search_then_answer();
    let (url, _) = streaming_server(answers.iter().map(|a| whole(a)).collect()).await;
    let rt = Runtime::builder().arbiters(2).start().unwrap();
    let team = orchestrator(&rt, &url, Arc::new(MemoryJournal::new())).await;

    let run = team.submit(request()).await.unwrap();
    let mut events = run.events();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
            Ok(Ok(RunUpdate::Delta { .. })) => break,
            Ok(Ok(_)) => {}
            other => panic!("no delta: {other:?}"),
        }
    }
    drop(events);
    let result = tokio::time::timeout(Duration::from_secs(10), run.wait())
        .await
        .expect("the run ends without its subscriber");

    assert_eq!(
        result.state,
        RunState::Succeeded {
            answer: "2015".into()
        }
    );
    assert_eq!(result.usage.micro_usd, 2 * (100 + 40));
    assert_eq!(result.usage.model_calls, 2);
    rt.shutdown(Duration::from_secs(5)).await;
}
