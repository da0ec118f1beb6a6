//! What operators see of `impresario serve`, end to end over HTTP: counters from zero, honest
//! readiness (a journal on a real full disk), halts lifted over the API, event streams that end
//! on reconnect and keep quiet connections alive, HEAD, paged listing, stalled uploads.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::binary::{Server, TempDir, TOKEN};

const GOAL: &str = "What is 7 plus 5?";

#[tokio::test]
async fn counters_exist_at_zero_before_the_first_event_and_a_budget_stop_is_ceiling_reached() {
    let server = Server::start("");
    let before = server.scrape().await;
    let finished = "impresario_runs_finished_total";
    for outcome in ["succeeded", "failed", "halted", "ceiling_reached"] {
        assert_eq!(
            before.value(finished, &[("outcome", outcome)]),
            Some(0.0),
            "{outcome}: the series exists at 0, so increase() sees the first run"
        );
    }
    let escalations = "impresario_supervisor_escalations_total";
    assert_eq!(before.value(escalations, &[("root", "true")]), Some(0.0));
    let lifted = "impresario_halts_lifted_total";
    assert_eq!(before.value(lifted, &[("scope", "all")]), Some(0.0));
    let semantic = "impresario_health_semantic_up";
    assert!(
        !before.families.contains_key(semantic),
        "no semantic check of the offline model"
    );

    // One micro-dollar cannot pay for the planner's first call: the budget stops the run.
    let id = server
        .submit(json!({ "goal": GOAL, "budget_usd": 0.000001 }))
        .await;
    server.until(&id, |s| s["state"] == "ceiling_reached").await;
    let after = server.scrape().await;
    assert_eq!(
        after.value(finished, &[("outcome", "ceiling_reached")]),
        Some(1.0)
    );
    assert_eq!(after.value(finished, &[("outcome", "failed")]), Some(0.0));
}

#[tokio::test]
async fn probes_answer_head_and_a_halt_shows_in_health_not_in_readiness_until_lifted() {
    let server = Server::start("");
    let http = reqwest::Client::new();
    for path in ["/metrics", "/healthz", "/readyz"] {
        let response = http
            .head(format!("{}{path}", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "HEAD {path}");
        assert_eq!(
            response.text().await.unwrap(),
            "",
            "HEAD {path} has no body"
        );
    }

    let (status, answer) = server.post("/v1/halt", json!({ "all": true })).await;
    assert_eq!(status, 202, "{answer}");
    let halted = server.submit(json!({ "goal": GOAL })).await;
    server.until(&halted, |s| s["state"] == "halted").await;
    let ready = http.get(format!("{}/readyz", server.url)).send().await;
    assert_eq!(ready.unwrap().status(), 200, "a halt is not a fault");
    let (status, detail) = server.get("/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(detail["halts"][0]["scope"], "all", "{detail}");
    let in_force = "impresario_halts_in_force";
    let scraped = server.scrape().await;
    assert_eq!(scraped.value(in_force, &[("scope", "all")]), Some(1.0));

    let (status, answer) = server.post("/v1/halt/lift", json!({ "all": true })).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["scope"], "all");
    assert_eq!(answer["lifted"]["reason"], "operator");
    let id = server.submit(json!({ "goal": GOAL })).await;
    server.until(&id, |s| s["state"] == "succeeded").await;
    let (_, detail) = server.get("/healthz").await;
    assert_eq!(detail["halts"], json!([]), "{detail}");
    let scraped = server.scrape().await;
    assert_eq!(scraped.value(in_force, &[("scope", "all")]), Some(0.0));
    let lifted = "impresario_halts_lifted_total";
    assert_eq!(scraped.value(lifted, &[("scope", "all")]), Some(1.0));

    // Nothing left to lift, and the answer names no code the client cannot call.
    let (status, answer) = server
        .post("/v1/halt/lift", json!({ "tenant": "acme" }))
        .await;
    assert_eq!(status, 409, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains("tenant acme is not halted"), "{error}");
    assert!(!error.contains("::"), "{error}");
}

/// A tmpfs mounted for one test; unmounted on drop (after the server using it is gone).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&at).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .status()
            .expect("this test runs `mount`");
        assert!(
            status.success(),
            "cannot mount a tmpfs at {at:?}: this test needs root (CI and the dev machines run as root)"
        );
        Tmpfs(at)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros to `path` until the disk is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 64 * 1024];
    // Bounded: the disk is a few megabytes.
    for _ in 0..10_000 {
        if file
            .write_all(&block)
            .and_then(|()| file.sync_all())
            .is_err()
        {
            return;
        }
    }
    panic!("the disk never filled up");
}

async fn readiness(server: &Server) -> (u16, Value) {
    let response = reqwest::get(format!("{}/readyz", server.url))
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn readiness_fails_while_the_journal_disk_is_full_and_recovers_when_it_has_room() {
    let dir = std::sync::Arc::new(TempDir::new());
    let disk = Tmpfs::mount(dir.0.join("disk"), "2m");
    let journal = disk.0.join("impresario.db");
    // No retention: it would checkpoint the WAL, and a rewound WAL can write without new room.
    let server = Server::start_in(
        dir.clone(),
        &format!("[journal]\npath = {journal:?}\nretain_finished_runs = 0\nretain_days = 0"),
    );
    let id = server.submit(json!({ "goal": GOAL })).await;
    server.until(&id, |s| s["state"] == "succeeded").await;
    assert_eq!(readiness(&server).await.0, 200);

    let filler = disk.0.join("filler");
    fill(&filler);
    let (status, ready) = readiness(&server).await;
    assert_eq!(status, 503, "{ready}");
    let check = &ready["checks"][0];
    assert_eq!(check["name"], "journal_writable", "{ready}");
    assert_eq!(check["ok"], false, "{ready}");
    let detail = check["detail"].as_str().unwrap();
    assert!(detail.contains("full"), "{detail}");

    std::fs::remove_file(&filler).unwrap();
    let (status, ready) = readiness(&server).await;
    assert_eq!(status, 200, "{ready}");
    drop(server);
}

#[tokio::test]
async fn a_reconnect_at_or_past_the_end_of_a_finished_run_ends_at_once() {
    let server = Server::start("");
    let id = server.submit(json!({ "goal": GOAL })).await;
    let events = server.events(&id).await.all().await;
    for last in [events.len(), events.len() + 3] {
        let response = server
            .request(Method::GET, &format!("/v1/runs/{id}/events"))
            .header("last-event-id", last.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        // The safety net only: a stream that does not end fails here.
        let text = tokio::time::timeout(Duration::from_secs(30), response.text())
            .await
            .expect("the stream did not end")
            .unwrap();
        assert_eq!(text, "", "after event {last}");
    }
}

#[tokio::test]
async fn a_quiet_stream_sends_keep_alive_comments_between_events() {
    // Each model call takes 1.5 s; the stream says something every second.
    let server = Server::start("sse_keepalive_secs = 1\n[models]\noffline_latency_ms = 1500");
    let id = server.submit(json!({ "goal": GOAL })).await;
    let response = server
        .request(Method::GET, &format!("/v1/runs/{id}/events"))
        .send()
        .await
        .unwrap();
    let text = tokio::time::timeout(Duration::from_secs(60), response.text())
        .await
        .expect("the stream did not end")
        .unwrap();
    let frames: Vec<&str> = text.split_terminator("\n\n").collect();
    assert!(frames.contains(&": keep-alive"), "{text}");
    let ids: Vec<usize> = frames
        .iter()
        .filter_map(|f| f.lines().find_map(|l| l.strip_prefix("id: ")))
        .map(|id| id.parse().unwrap())
        .collect();
    assert_eq!(ids, (1..=ids.len()).collect::<Vec<_>>(), "{text}");
    assert!(text.ends_with("\"state\":\"succeeded\"}\n\n"), "{text}");
}

#[tokio::test]
async fn runs_are_listed_in_pages_that_a_cursor_continues() {
    let server = Server::start("");
    for _ in 0..5 {
        server.submit(json!({ "goal": GOAL })).await;
    }
    let (status, all) = server.get("/v1/runs").await;
    assert_eq!(status, 200);
    assert_eq!(all["next"], Value::Null);
    let all: Vec<Value> = all["runs"].as_array().unwrap().clone();
    assert_eq!(all.len(), 5);

    let mut paged = Vec::new();
    let mut sizes = Vec::new();
    let mut path = "/v1/runs?limit=2".to_owned();
    for _ in 0..10 {
        let (status, page) = server.get(&path).await;
        assert_eq!(status, 200, "{page}");
        let runs = page["runs"].as_array().unwrap();
        sizes.push(runs.len());
        paged.extend(runs.iter().map(|r| r["id"].clone()));
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/runs?limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(sizes, [2, 2, 1]);
    let ids: Vec<Value> = all.iter().map(|r| r["id"].clone()).collect();
    assert_eq!(paged, ids);

    for (query, field) in [("limit=0", "limit"), ("after=nonsense", "after")] {
        let (status, answer) = server.get(&format!("/v1/runs?{query}")).await;
        assert_eq!(
            (status, answer["field"].as_str()),
            (422, Some(field)),
            "{answer}"
        );
    }
}

#[tokio::test]
async fn a_stalled_upload_is_answered_408_and_its_connection_closed() {
    let server = Server::start("body_timeout_secs = 1");
    let address = server.url.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /v1/runs HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"goal\": "
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    // The rest of the body never comes; the service must not wait for it.
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), socket.read_to_end(&mut answer))
        .await
        .expect("the connection stayed open")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("server.body_timeout_secs"), "{answer}");
    let (_, listed) = server.get("/v1/runs").await;
    assert_eq!(listed["runs"], json!([]), "nothing was submitted");
}

#[tokio::test]
async fn agent_invocations_and_tool_calls_are_timed_by_agent_and_tool() {
    let server = Server::start("");
    let id = server
        .submit(json!({ "goal": GOAL, "tools": ["calculator"] }))
        .await;
    server.until(&id, |s| s["state"] == "succeeded").await;
    let scraped = server.scrape().await;
    let count =
        |family: &str, labels: &[(&str, &str)]| scraped.histogram(family, labels).map(|h| h.count);
    let agents = "gen_ai_invoke_agent_duration_seconds";
    // It plans, runs the calculator, then plans its answer.
    assert_eq!(
        count(agents, &[("gen_ai_agent_name", "planner")]),
        Some(2.0)
    );
    assert_eq!(
        count(agents, &[("gen_ai_agent_name", "executor")]),
        Some(1.0)
    );
    let tools = "gen_ai_execute_tool_duration_seconds";
    assert_eq!(
        count(tools, &[("gen_ai_tool_name", "calculator")]),
        Some(1.0)
    );
}
