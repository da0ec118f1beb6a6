//! The `impresario` binary's commands, and `serve`'s start and shutdown, as an operator meets
//! them: exit codes, what is printed, signals.

mod binary;

use binary::{cli, impresario, label, Server, TempDir, TOKEN};
use serde_json::json;

const GOAL: &str = "What is the default restart intensity of a supervisor?";

#[tokio::test]
async fn sigterm_halts_running_runs_gracefully_then_exits_zero() {
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
    let stderr = server.stderr();
    assert!(
        stderr.contains("stopped on SIGTERM; runs at shutdown ended: {\"halted\": 1}"),
        "{stderr}"
    );
}

#[test]
fn a_bad_config_key_or_value_stops_the_start_naming_it() {
    let dir = TempDir::new();
    let typo = dir.write("typo.toml", "[server]\nlisen = \"127.0.0.1:0\"\n");
    let output = impresario()
        .arg("--config")
        .arg(&typo)
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unknown config key `server.lisen`"),
        "{stderr}"
    );

    let output = impresario()
        .env("IMPRESARIO_SERVER__TOKEN", TOKEN)
        .env("IMPRESARIO_SERVER__BODY_LIMIT_BYTES", "lots")
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("config key `server.body_limit_bytes` (environment variable IMPRESARIO_SERVER__BODY_LIMIT_BYTES): \"lots\" is not a non-negative integer"),
        "{stderr}"
    );

    let output = impresario()
        .env("IMPRESARIO_SERVER__LISTEN", "127.0.0.1:0")
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("`server.token`") && stderr.contains("is required"),
        "{stderr}"
    );
}

#[test]
fn run_works_offline_and_prints_steps_answer_and_usage() {
    let output = cli(&["run", GOAL, "--budget-usd", "0.50"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("(models: offline)"), "{stdout}");
    assert!(stdout.contains("  plan 1: tool:search_notes\n"), "{stdout}");
    assert!(
        stdout.contains("  step 1 tool:search_notes: <tool_output"),
        "{stdout}"
    );
    assert!(
        stdout.contains("answer: search_notes: Supervisors restart"),
        "{stdout}"
    );
    assert!(stdout.contains("usage: 2 model calls, "), "{stdout}");

    // A budget too small for one call: the run stops at the ceiling and the exit says so.
    let output = cli(&["run", GOAL, "--budget-usd", "0.000001"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("stopped at a ceiling"), "{stdout}");
}

#[tokio::test]
async fn the_cli_runs_lists_shows_and_halts_on_a_service() {
    let server = Server::start("");
    let url = server.url.clone();
    let on = move |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--server", &url, "--token", TOKEN]);
        let output = cli(&all);
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let on = std::sync::Arc::new(on);
    let call = |args: Vec<String>| {
        let on = on.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                on(&args)
            })
            .await
            .unwrap()
        }
    };
    let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();

    let (code, stdout, stderr) = call(args(&["run", GOAL, "--tenant", "acme"])).await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("  step 1 tool:search_notes: <tool_output"),
        "{stdout}"
    );
    assert!(
        stdout.contains("answer: search_notes: Supervisors restart"),
        "{stdout}"
    );
    assert!(stdout.contains("usage: 2 model calls, "), "{stdout}");
    let id = stdout
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("run "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();

    let (code, stdout, stderr) = call(args(&["runs", "list", "--tenant", "acme"])).await;
    assert_eq!(code, Some(0), "{stderr}");
    let line = stdout.lines().next().unwrap();
    assert!(
        line.starts_with(&format!("{id}  acme  succeeded  $0.00")),
        "{stdout}"
    );
    let (_, stdout, _) = call(args(&["runs", "list", "--tenant", "nobody"])).await;
    assert_eq!(stdout, "no runs\n");

    let (code, stdout, _) = call(args(&["runs", "show", &id])).await;
    assert_eq!(code, Some(0));
    assert!(stdout.contains(&format!("run:    {id}\n")), "{stdout}");
    assert!(
        stdout.contains("  step 1 \"tool_call\": <tool_output"),
        "{stdout}"
    );

    // Halting a run that ended: the service's 409, said.
    let (code, _, stderr) = call(args(&["halt", &id])).await;
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("409 Conflict") && stderr.contains("already ended"),
        "{stderr}"
    );
    let (code, stdout, stderr) = call(args(&["halt", "--tenant", "acme"])).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("\"scope\":\"tenant acme\""), "{stdout}");

    // The wrong token: refused, with a hint.
    let output = cli(&[
        "runs",
        "list",
        "--server",
        &server.url,
        "--token",
        "wrong-token-0123456789",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("401 Unauthorized") && stderr.contains("IMPRESARIO_TOKEN"),
        "{stderr}"
    );
}
