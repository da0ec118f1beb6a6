//! The `impresario` binary's commands, and `serve`'s start, shutdown and restart, as an
//! operator meets them: exit codes, what is printed, signals, the journal file.

use std::process::Output;
use std::sync::{Arc, Mutex};

use crate::binary::{cli, impresario, label, Server, TempDir, TOKEN};
use serde_json::json;

const GOAL: &str = "What is the default restart intensity of a supervisor?";

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn sigterm_halts_runs_gracefully_closes_the_journal_and_a_restart_resumes_them() {
    // Each model call takes 300 ms: the run is mid-call when the signal comes, and the
    // graceful halt lets that call finish before the run stops.
    let mut server = Server::start("drain_timeout_secs = 20\n[models]\noffline_latency_ms = 300");
    let id = server.submit(json!({ "goal": GOAL })).await;
    let stream = server.events(&id).await;
    server.until(&id, |s| s["state"] == "planning").await;
    let status = server.terminate();
    let events = stream.all().await;
    let labels: Vec<String> = events.iter().map(label).collect();
    assert_eq!(labels.last().unwrap(), "state:halted", "{labels:?}");
    let last = &events.last().unwrap().data;
    assert_eq!(last["reason"], "shutdown", "{last}");
    assert_eq!(last["detail"], "the service is shutting down");
    // Graceful: the plan in flight was made before the run stopped.
    assert!(labels.contains(&"planned".to_owned()), "{labels:?}");
    assert_eq!(status.code(), Some(0), "stderr: {}", server.stderr());
    let log = server.stderr();
    assert!(
        log.contains("stopped on SIGTERM; runs at shutdown ended: {\"halted\": 1}; journal closed"),
        "{log}"
    );

    // The journal was closed cleanly (no write-ahead log left) and holds the halt.
    let dir = server.dir.clone();
    assert!(dir.0.join("impresario.db").exists());
    assert!(!dir.0.join("impresario.db-wal").exists());
    let shown = cli(&dir, &["runs", "show", &id, "--json"]);
    let run: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(run["status"], "halted", "{run}");
    assert_eq!(run["state"]["reason"], "shutdown", "{run}");

    // A new service on the same journal lists the run, and resumes it to its end.
    drop(server);
    let server = Server::start_in(dir, "");
    let (_, listed) = server.get("/v1/runs").await;
    assert_eq!(listed["runs"][0]["id"], id.as_str());
    assert_eq!(listed["runs"][0]["status"], "halted");
    // Not running here: shown from the journal, but not watched or halted until resumed.
    let (status, answer) = server.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(
        (status, &answer["status"]),
        (200, &json!("halted")),
        "{answer}"
    );
    let (status, answer) = server.post(&format!("/v1/runs/{id}/halt"), json!({})).await;
    assert_eq!(status, 409, "{answer}");
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .contains("not running in this process"));
    let (status, answer) = server
        .post(&format!("/v1/runs/{id}/resume"), json!({}))
        .await;
    assert_eq!(status, 202, "{answer}");
    let state = server.until(&id, |s| s["state"] == "succeeded").await;
    assert!(
        state["answer"].as_str().unwrap().contains("3 restarts"),
        "{state}"
    );
}

#[tokio::test]
async fn a_run_cut_off_by_a_crash_goes_on_when_the_service_starts_again() {
    let mut server = Server::start("[models]\noffline_latency_ms = 300");
    let id = server.submit(json!({ "goal": GOAL })).await;
    server.until(&id, |s| s["state"] == "planning").await;
    server.crash();
    let dir = server.dir.clone();
    drop(server);
    let server = Server::start_in(dir, "");
    let state = server.until(&id, |s| s["state"] == "succeeded").await;
    assert!(
        state["answer"].as_str().unwrap().contains("3 restarts"),
        "{state}"
    );
    assert!(
        server.stderr().contains("resumed a run cut off by a crash"),
        "{}",
        server.stderr()
    );
}

#[test]
fn a_bad_config_key_or_value_stops_the_start_naming_it() {
    let dir = TempDir::new();
    let typo = dir.write("typo.toml", "[server]\nlisen = \"127.0.0.1:0\"\n");
    let output = impresario(&dir)
        .arg("--config")
        .arg(&typo)
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("unknown config key `server.lisen`"),
        "{}",
        stderr(&output)
    );

    let output = impresario(&dir)
        .env("IMPRESARIO_SERVER__TOKEN", TOKEN)
        .env("IMPRESARIO_SERVER__BODY_LIMIT_BYTES", "lots")
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("config key `server.body_limit_bytes` (environment variable IMPRESARIO_SERVER__BODY_LIMIT_BYTES): \"lots\" is not a non-negative integer"),
        "{}",
        stderr(&output)
    );

    let output = impresario(&dir)
        .env("IMPRESARIO_SERVER__LISTEN", "127.0.0.1:0")
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains("`server.token`") && message.contains("is required"),
        "{message}"
    );
    // Nothing was started, so nothing was journaled.
    assert!(!dir.0.join("impresario.db").exists());
}

#[test]
fn run_works_offline_then_runs_and_replay_read_its_journal() {
    let dir = TempDir::new();
    let output = cli(&dir, &["run", GOAL, "--budget-usd", "0.50"]);
    let out = stdout(&output);
    assert!(output.status.success(), "{out}\n{}", stderr(&output));
    assert!(out.contains("(models: offline)"), "{out}");
    assert!(out.contains("  plan 1: tool:search_notes\n"), "{out}");
    assert!(
        out.contains("  step 1 tool:search_notes: <tool_output"),
        "{out}"
    );
    assert!(
        out.contains("answer: search_notes: Supervisors restart"),
        "{out}"
    );
    assert!(out.contains("usage: 2 model calls, "), "{out}");
    let id = out.split_whitespace().nth(1).unwrap().to_owned();

    let listed = stdout(&cli(&dir, &["runs", "list"]));
    assert!(
        listed.starts_with(&format!("{id}  default  succeeded  $0.0"))
            && listed.ends_with(&format!("{GOAL}\n")),
        "{listed}"
    );
    let shown = stdout(&cli(&dir, &["runs", "show", &id]));
    assert!(shown.contains("status: finished\n"), "{shown}");
    assert!(
        shown.contains("  step 1 tool:search_notes: <tool_output"),
        "{shown}"
    );

    let replayed = cli(&dir, &["replay", &id]);
    let out = stdout(&replayed);
    assert!(replayed.status.success(), "{out}\n{}", stderr(&replayed));
    assert!(
        out.contains("no divergence: the run behaves as recorded"),
        "{out}"
    );
    let unknown = cli(&dir, &["replay", "run-nope"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("run-nope"),
        "{}",
        stderr(&unknown)
    );

    // A budget too small for one call: the run stops at the ceiling and the exit says so.
    let output = cli(&dir, &["run", GOAL, "--budget-usd", "0.000001"]);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    assert!(
        stdout(&output).contains("stopped at a ceiling"),
        "{}",
        stdout(&output)
    );
}

#[tokio::test]
async fn the_cli_runs_lists_shows_and_halts_on_a_service() {
    let server = Server::start("");
    let (url, dir) = (server.url.clone(), TempDir::new());
    let on = move |args: Vec<String>| {
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend(["--server", &url, "--token", TOKEN]);
        let output = cli(&dir, &args);
        (output.status.code(), stdout(&output), stderr(&output))
    };
    let on = std::sync::Arc::new(on);
    let call = |args: &[&str]| {
        let (on, args) = (on.clone(), args.iter().map(|s| (*s).to_owned()).collect());
        async move { tokio::task::spawn_blocking(move || on(args)).await.unwrap() }
    };

    let (code, out, err) = call(&["run", GOAL, "--tenant", "acme"]).await;
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        out.contains("  step 1 tool:search_notes: <tool_output"),
        "{out}"
    );
    assert!(
        out.contains("answer: search_notes: Supervisors restart"),
        "{out}"
    );
    assert!(out.contains("usage: 2 model calls, "), "{out}");
    let id = out.split_whitespace().nth(1).unwrap().to_owned();

    let (code, out, err) = call(&["runs", "list", "--tenant", "acme"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with(&format!("{id}  acme  succeeded  $0.0")),
        "{out}"
    );
    let (_, out, _) = call(&["runs", "list", "--tenant", "nobody"]).await;
    assert_eq!(out, "no runs\n");

    let (code, out, _) = call(&["runs", "show", &id]).await;
    assert_eq!(code, Some(0));
    assert!(out.contains(&format!("run:    {id}\n")), "{out}");
    assert!(
        out.contains("  step 1 tool:search_notes: <tool_output"),
        "{out}"
    );

    // Halting a run that ended: the service's 409, said.
    let (code, _, err) = call(&["halt", &id]).await;
    assert_eq!(code, Some(1));
    assert!(
        err.contains("409 Conflict") && err.contains("already ended"),
        "{err}"
    );
    let (code, out, err) = call(&["halt", "--tenant", "acme"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\"scope\":\"tenant acme\""), "{out}");

    // The wrong token: refused, with a hint.
    let output = cli(
        &TempDir::new(),
        &[
            "runs",
            "list",
            "--server",
            &server.url,
            "--token",
            "wrong-token-0123456789",
        ],
    );
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains("401 Unauthorized") && err.contains("IMPRESARIO_TOKEN"),
        "{err}"
    );
}

/// An OpenAI-compatible server on loopback (a thread per connection) answering every request
/// with `answer`: streamed in three pieces when the request asks to stream, whole otherwise.
/// It notes, per request, whether it asked to stream.
fn compatible_server(answer: &'static str) -> (String, Arc<Mutex<Vec<bool>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let asked = Arc::new(Mutex::new(Vec::new()));
    let noted = asked.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let noted = noted.clone();
            std::thread::spawn(move || answer_one(conn, answer, &noted));
        }
    });
    (url, asked)
}

fn answer_one(conn: std::net::TcpStream, answer: &str, noted: &Mutex<Vec<bool>>) {
    use std::io::Write;
    let body = crate::provider::read_body_blocking(&conn);
    let stream = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["stream"] == true;
    noted.lock().unwrap().push(stream);
    if !stream {
        let usage = json!({"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120});
        let reply = json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}], "usage": usage}).to_string();
        let head = format!("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", reply.len());
        let mut out = conn;
        let _ = out.write_all(format!("{head}{reply}").as_bytes());
        return;
    }
    let third = answer.len() / 3;
    let pieces = [
        &answer[..third],
        &answer[third..2 * third],
        &answer[2 * third..],
    ];
    crate::provider::stream_blocking(conn, pieces);
}

#[test]
fn run_prints_the_model_text_as_it_streams_unless_told_not_to() {
    const PLAN: &str =
        r#"{"steps": [{"type": "final_answer", "answer": "Rust 1.0 shipped in 2015"}]}"#;
    let (url, asked) = compatible_server(PLAN);
    let dir = TempDir::new();
    let run = |extra: &[&str]| {
        let output = impresario(&dir)
            .env("OPENAI_BASE_URL", &url)
            .env("IMPRESARIO_MODEL", "local-model")
            .args(["run", GOAL])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}\n{}",
            stdout(&output),
            stderr(&output)
        );
        stdout(&output)
    };

    let streamed = run(&[]);
    assert!(
        streamed.contains(&format!("  model (step 0): {PLAN}\n")),
        "{streamed}"
    );
    assert!(
        streamed.contains("answer: Rust 1.0 shipped in 2015"),
        "{streamed}"
    );
    assert_eq!(*asked.lock().unwrap(), [true], "the CLI streams by default");

    let whole = run(&["--no-stream"]);
    assert!(!whole.contains("model (step"), "{whole}");
    assert!(
        whole.contains("answer: Rust 1.0 shipped in 2015"),
        "{whole}"
    );
    assert_eq!(*asked.lock().unwrap(), [true, false]);
}
