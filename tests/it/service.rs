//! `impresario serve` end to end: the real binary on a loopback port, spoken to over HTTP.

use crate::binary::{cli, label, Server, TOKEN};
use reqwest::Method;
use serde_json::{json, Value};

const GOAL: &str = "What is the default restart intensity of a supervisor?";

#[tokio::test]
async fn every_v1_route_needs_the_right_bearer_token() {
    let server = Server::start("");
    let http = reqwest::Client::new();
    let routes = [
        (Method::POST, "/v1/runs"),
        (Method::GET, "/v1/runs"),
        (Method::GET, "/v1/runs/run-1"),
        (Method::GET, "/v1/runs/run-1/events"),
        (Method::POST, "/v1/runs/run-1/halt"),
        (Method::POST, "/v1/runs/run-1/resume"),
        (Method::POST, "/v1/runs/run-1/approvals/1"),
        (Method::POST, "/v1/halt"),
    ];
    let same_length_wrong = TOKEN.replace('0', "1");
    for (method, path) in routes {
        let url = format!("{}{path}", server.url);
        for token in [None, Some(same_length_wrong.as_str()), Some("short")] {
            let mut request = http
                .request(method.clone(), &url)
                .json(&json!({ "goal": GOAL }));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{method} {path} with {token:?}");
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            let body: Value = response.json().await.unwrap();
            assert!(body["error"].as_str().unwrap().contains("token"), "{body}");
        }
    }
    // With the token: the list answers, and nothing was submitted by the refused requests.
    let (status, listed) = server.get("/v1/runs").await;
    assert_eq!(status, 200);
    assert_eq!(listed, json!({ "runs": [], "next": null }));
}

#[tokio::test]
async fn bad_requests_get_json_errors_naming_the_field() {
    let server = Server::start("body_limit_bytes = 1024");
    let server = &server;
    let raw = |body: &'static str| async move {
        let response = server
            .request(Method::POST, "/v1/runs")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap())
    };
    let (status, body) = raw("{\"goal\": ").await;
    assert_eq!((status, &body["field"]), (400, &Value::Null), "{body}");
    assert!(body["error"].as_str().unwrap().contains("not valid JSON"));
    let (status, body) = raw("[\"goal\"]").await;
    assert_eq!(status, 400, "{body}");

    let invalid = [
        (json!({}), "goal"),
        (json!({ "goal": 3 }), "goal"),
        (json!({ "goal": GOAL, "max_steps": "ten" }), "max_steps"),
        (json!({ "goal": GOAL, "max_steps": 0 }), "max_steps"),
        (json!({ "goal": GOAL, "autonomy": "yolo" }), "autonomy"),
        (json!({ "goal": GOAL, "budget_usd": -1 }), "budget_usd"),
        (json!({ "goal": GOAL, "tools": ["shell"] }), "tools"),
        (json!({ "goal": GOAL, "colour": "red" }), "colour"),
        (json!({ "goal": " " }), "goal"),
    ];
    for (body, field) in invalid {
        let (status, answer) = server.post("/v1/runs", body.clone()).await;
        assert_eq!(status, 422, "{body} -> {answer}");
        assert_eq!(answer["field"], field, "{body} -> {answer}");
        assert!(
            answer["error"].as_str().unwrap().starts_with(field),
            "{answer}"
        );
    }

    let big = json!({ "goal": "x".repeat(2000) });
    let (status, answer) = server.post("/v1/runs", big).await;
    assert_eq!(status, 413, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("1024 bytes"));

    for (method, path) in [
        (Method::GET, "/v1/runs/run-nope"),
        (Method::GET, "/v1/runs/run-nope/events"),
        (Method::POST, "/v1/runs/run-nope/halt"),
        (Method::POST, "/v1/runs/run-nope/approvals/1"),
    ] {
        let response = server.request(method, path).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
        let answer: Value = response.json().await.unwrap();
        assert!(
            answer["error"].as_str().unwrap().contains("run-nope"),
            "{answer}"
        );
    }
    let (status, _) = server.get("/v2/anything").await;
    assert_eq!(status, 404);
    // None of the refused requests started a run.
    assert_eq!(
        server.get("/v1/runs").await.1,
        json!({ "runs": [], "next": null })
    );
}

#[tokio::test]
async fn a_run_streams_every_event_in_order_then_the_stream_ends() {
    let server = Server::start("");
    let id = server
        .submit(json!({ "goal": GOAL, "tools": ["search_notes"] }))
        .await;
    let events = server.events(&id).await.all().await;
    let labels: Vec<String> = events.iter().map(label).collect();
    assert_eq!(
        labels,
        [
            "recalled",
            "state:planning",
            "planned",
            "state:running",
            "step_finished",
            "state:planning",
            "planned",
            "state:succeeded"
        ]
    );
    let ids: Vec<usize> = events.iter().map(|e| e.id).collect();
    assert_eq!(ids, (1..=events.len()).collect::<Vec<_>>());
    let step = &events[4].data;
    assert_eq!(step["step"]["tool"], "search_notes");
    assert!(step["outcome"]["Ok"]
        .as_str()
        .unwrap()
        .contains("3 restarts within 5 seconds"));
    let answer = events[7].data["answer"].as_str().unwrap();
    assert!(answer.contains("3 restarts within 5 seconds"), "{answer}");

    // The run as shown and listed, with what it spent.
    let (status, run) = server.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(run["state"]["state"], "succeeded");
    assert_eq!(run["tenant"], "default");
    assert_eq!(run["goal"], GOAL);
    assert_eq!(run["steps"].as_array().unwrap().len(), 1);
    assert_eq!(run["usage"]["model_calls"], 2);
    assert!(run["usage"]["tokens"].as_u64().unwrap() > 0);
    assert!(run["usage"]["micro_usd"].as_u64().unwrap() > 0);
    let (_, listed) = server.get("/v1/runs?tenant=default").await;
    assert_eq!(listed["runs"][0]["id"], id.as_str());
    let (_, other) = server.get("/v1/runs?tenant=other").await;
    assert_eq!(other["runs"], json!([]));

    // A late subscriber gets the same story; one resuming after event 5 gets the rest.
    let again = server.events(&id).await.all().await;
    assert_eq!(again.iter().map(label).collect::<Vec<_>>(), labels);
    let response = server
        .request(Method::GET, &format!("/v1/runs/{id}/events"))
        .header("last-event-id", "5")
        .send()
        .await
        .unwrap();
    let text = response.text().await.unwrap();
    assert!(text.starts_with("id: 6\nevent: state\n"), "{text}");
    assert_eq!(text.matches("\n\n").count(), 3);
}

#[tokio::test]
async fn halting_a_run_ends_it_halted_by_the_operator() {
    // Every model call takes a minute: the run is planning when it is halted.
    let server = Server::start("[models]\noffline_latency_ms = 60000");
    let id = server.submit(json!({ "goal": GOAL })).await;
    let stream = server.events(&id).await;
    server.until(&id, |s| s["state"] == "planning").await;
    let (status, answer) = server
        .post(
            &format!("/v1/runs/{id}/halt"),
            json!({ "detail": "wrong goal" }),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let events = stream.all().await;
    let last = &events.last().unwrap().data;
    assert_eq!(
        last,
        &json!({ "event": "state", "state": "halted", "reason": "operator", "detail": "wrong goal" })
    );
    let (status, answer) = server.post(&format!("/v1/runs/{id}/halt"), json!({})).await;
    assert_eq!(status, 409, "{answer}");
    let (status, answer) = server
        .post(
            &format!("/v1/runs/{id}/halt"),
            json!({ "mode": "sideways" }),
        )
        .await;
    assert_eq!(
        (status, answer["field"].as_str()),
        (422, Some("mode")),
        "{answer}"
    );
}

#[tokio::test]
async fn a_halted_run_resumes_from_its_journal_and_only_halted_runs_can() {
    let server = Server::start("[models]\noffline_latency_ms = 200");
    let (status, answer) = server.post("/v1/runs/run-nope/resume", json!({})).await;
    assert_eq!(status, 404, "{answer}");

    let id = server.submit(json!({ "goal": GOAL })).await;
    server.until(&id, |s| s["state"] == "planning").await;
    let (status, answer) = server
        .post(&format!("/v1/runs/{id}/resume"), json!({}))
        .await;
    assert_eq!(status, 409, "running: {answer}");
    let (status, _) = server.post(&format!("/v1/runs/{id}/halt"), json!({})).await;
    assert_eq!(status, 202);
    server.until(&id, |s| s["state"] == "halted").await;
    let (_, run) = server.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(run["status"], "halted");

    let (status, answer) = server
        .post(&format!("/v1/runs/{id}/resume"), json!({}))
        .await;
    assert_eq!(status, 202, "{answer}");
    let events = server.events(&id).await.all().await;
    assert_eq!(label(events.last().unwrap()), "state:succeeded");
    let (_, run) = server.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(run["status"], "finished");
    let (status, answer) = server
        .post(&format!("/v1/runs/{id}/resume"), json!({}))
        .await;
    assert_eq!(status, 409, "finished: {answer}");
}

#[tokio::test]
async fn halting_a_tenant_halts_its_runs_and_no_one_elses() {
    let server = Server::start("[models]\noffline_latency_ms = 60000");
    let (status, answer) = server.post("/v1/halt", json!({})).await;
    assert_eq!(
        (status, answer["field"].as_str()),
        (422, Some("tenant")),
        "{answer}"
    );

    let acme = server
        .submit(json!({ "goal": GOAL, "tenant": "acme" }))
        .await;
    let other = server
        .submit(json!({ "goal": GOAL, "tenant": "other" }))
        .await;
    for id in [&acme, &other] {
        server.until(id, |s| s["state"] == "planning").await;
    }
    let (status, answer) = server.post("/v1/halt", json!({ "tenant": "acme" })).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer, json!({ "scope": "tenant acme", "runs": 1 }));
    let state = server.until(&acme, |s| s["state"] == "halted").await;
    assert_eq!(state["reason"], "operator");
    let (_, run) = server.get(&format!("/v1/runs/{other}")).await;
    assert_eq!(run["state"]["state"], "planning");

    let (status, answer) = server
        .post(
            "/v1/halt",
            json!({ "all": true, "mode": "graceful", "deadline_secs": 0 }),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer, json!({ "scope": "all", "runs": 1 }));
    server.until(&other, |s| s["state"] == "halted").await;
}

#[tokio::test]
async fn metrics_liveness_and_readiness_answer_without_the_token() {
    let server = Server::start("");
    let id = server
        .submit(json!({ "goal": "What is 7 plus 5?", "tools": ["calculator"] }))
        .await;
    server.until(&id, |s| s["state"] == "succeeded").await;
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("{}{path}", server.url)).send();

    let response = get("/metrics").await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let exposition = response.text().await.unwrap();
    assert!(
        exposition.contains("\nimpresario_runs_finished_total{outcome=\"succeeded\"} 1\n"),
        "{exposition}"
    );
    assert!(
        exposition.contains("\nimpresario_runs_active 0\n"),
        "{exposition}"
    );

    let response = get("/healthz").await.unwrap();
    assert_eq!(response.status(), 200);
    let detail: Value = response.json().await.unwrap();
    assert_eq!(detail["live"], true, "{detail}");
    assert_eq!(detail["models"][0]["breaker"], "closed", "{detail}");
    assert_eq!(detail["halts"], json!([]), "{detail}");
    let response = get("/readyz").await.unwrap();
    assert_eq!(response.status(), 200);
    let readiness: Value = response.json().await.unwrap();
    assert_eq!(readiness["ready"], true, "{readiness}");
    let checks: Vec<&str> = readiness["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(checks, ["journal_writable", "accepting_runs"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_journal_from_growing_without_bound() {
    let server = Server::start("[journal]\nretain_finished_runs = 1\nretention_interval_secs = 1");
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = server.submit(json!({ "goal": GOAL })).await;
        server.until(&id, |s| s["state"] == "succeeded").await;
        ids.push(id);
    }
    // Retention runs every second: within a few, only the newest ended run is left.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let listed = loop {
        let listed = String::from_utf8(cli(&server.dir, &["runs", "list"]).stdout).unwrap();
        if listed.lines().count() == 1 || std::time::Instant::now() > deadline {
            break listed;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(
        listed.starts_with(&ids[2]),
        "the newest run is kept: {listed}"
    );
}

#[tokio::test]
async fn a_streaming_run_sends_its_model_text_as_delta_events() {
    let server = Server::start("");
    let (status, body) = server
        .post("/v1/runs", json!({ "goal": GOAL, "stream": "yes" }))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["field"], "stream");

    let id = server
        .submit(json!({ "goal": GOAL, "tools": ["search_notes"], "stream": true }))
        .await;
    let events = server.events(&id).await.all().await;
    let deltas: Vec<&Value> = events
        .iter()
        .filter(|e| e.kind == "delta")
        .map(|e| &e.data)
        .collect();
    // The offline model does not stream: each answer arrives as one piece, which reaches the
    // events as one delta or two (the last word is held back until the call ends, in case it
    // is the start of a credential the next piece completes).
    let text = |step: u64| -> String {
        deltas
            .iter()
            .filter(|d| d["step"] == step)
            .map(|d| d["text"].as_str().unwrap())
            .collect()
    };
    assert!((2..=4).contains(&deltas.len()), "{deltas:?}");
    assert_eq!(deltas[0]["step"], 0, "the first plan, before any step");
    assert_eq!(
        deltas.last().unwrap()["step"],
        1,
        "the second plan, after step 1"
    );
    let plans: Vec<&Value> = events
        .iter()
        .filter(|e| e.kind == "planned")
        .map(|e| &e.data["plan"])
        .collect();
    assert_eq!(plans.len(), 2);
    for (step, plan) in plans.into_iter().enumerate() {
        let text: Value = serde_json::from_str(&text(step as u64)).unwrap();
        assert_eq!(&text, plan, "the deltas are the planner's answer");
    }
    let others: Vec<String> = events
        .iter()
        .filter(|e| e.kind != "delta")
        .map(label)
        .collect();
    assert_eq!(others.last().map(String::as_str), Some("state:succeeded"));

    let plain = server.submit(json!({ "goal": GOAL })).await;
    let events = server.events(&plain).await.all().await;
    assert!(
        events.iter().all(|e| e.kind != "delta"),
        "not asked to stream"
    );
}

#[tokio::test]
async fn finished_runs_past_the_kept_count_leave_memory_and_are_shown_from_the_journal() {
    let server = Server::start("keep_finished_runs = 2");
    let mut ids = Vec::new();
    for _ in 0..4 {
        let id = server.submit(json!({ "goal": GOAL })).await;
        server.until(&id, |s| s["state"] == "succeeded").await;
        ids.push(id);
    }
    // When the fourth was submitted, three had finished: the oldest left memory.
    let events = |id: &str| {
        server
            .request(Method::GET, &format!("/v1/runs/{id}/events"))
            .send()
    };
    let gone = events(&ids[0]).await.unwrap();
    assert_eq!(gone.status(), 409, "its events are no longer kept");
    let (status, shown) = server.get(&format!("/v1/runs/{}", ids[0])).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(
        shown["status"], "finished",
        "shown from the journal: {shown}"
    );
    let kept = server.events(&ids[1]).await.all().await;
    assert_eq!(kept.last().map(label).as_deref(), Some("state:succeeded"));
}
