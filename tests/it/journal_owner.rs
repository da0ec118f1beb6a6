//! One process writes a journal, and runs that ended stay ended: the real binary on loopback
//! over a real SQLite journal. Each test is a defect of issue 11 and failed before the fix: a
//! second `serve` started on a live journal; of ten resumes one got 503 and the usage was
//! zeroed; a `journal_error` run was resumed after a restart and succeeded.

use std::time::{Duration, Instant};

use crate::binary::{impresario, Server};
use serde_json::json;

/// The bytes of every file of the journal (`impresario.db`, its WAL and shared memory).
fn journal_bytes(server: &Server) -> Vec<Vec<u8>> {
    ["impresario.db", "impresario.db-wal", "impresario.db-shm"]
        .iter()
        .map(|name| std::fs::read(server.dir.0.join(name)).unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn a_second_process_on_a_journal_refuses_to_start_naming_the_holder_and_touches_nothing() {
    let server = Server::start("");
    let id = server.submit(json!({ "goal": "What is 2 plus 3?" })).await;
    server.until(&id, |s| s["state"] == "succeeded").await;
    let before = journal_bytes(&server);
    let holder = format!("pid {}", server.pid());
    let config = server.dir.0.join("impresario.toml");
    for args in [
        vec!["serve"],
        vec!["run", "What is 1 plus 1?"],
        vec!["replay", &id],
    ] {
        let mut child = impresario(&server.dir)
            .env("IMPRESARIO_MODELS__PROVIDER", "offline")
            .arg("--config")
            .arg(&config)
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Refusing is immediate; a process that started anyway is stopped after 10 s.
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("in use by another process"),
            "{args:?}: {stderr}"
        );
        assert!(
            stderr.contains(&holder),
            "{args:?} names the holder: {stderr}"
        );
        assert!(
            output.stdout.is_empty(),
            "{args:?} started: {:?}",
            output.stdout
        );
    }
    assert!(
        journal_bytes(&server) == before,
        "the refused processes changed the journal"
    );
    // The holder still serves.
    let (status, _) = server.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn of_ten_concurrent_resumes_one_wins_the_others_get_409_and_usage_stays_right() {
    let mut server = Server::start("");
    let id = server
        .submit(
            json!({ "goal": "Keep the note: 7 plus 5 is 12", "tools": ["save_note"], "autonomy": "manual" }),
        )
        .await;
    // Halted while it waits for approval of its first step, after its first model call: it
    // has spent something.
    server
        .until(&id, |s| s["state"] == "awaiting_approval")
        .await;
    let (status, answer) = server.post(&format!("/v1/runs/{id}/halt"), json!({})).await;
    assert_eq!(status, 202, "{answer}");
    server.until(&id, |s| s["state"] == "halted").await;

    let path = format!("/v1/runs/{id}/resume");
    let resumes = (0..10).map(|_| server.post(&path, json!({})));
    let answers = futures_util::future::join_all(resumes).await;
    let statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 202).count(),
        1,
        "{answers:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        9,
        "{answers:?}"
    );

    // The resumed run asks again for the approval it was halted waiting for (or goes on).
    let now = server
        .until(&id, |s| {
            s["state"] == "awaiting_approval" || s["state"] == "succeeded"
        })
        .await;
    if now["state"] == "awaiting_approval" {
        let approval = format!("/v1/runs/{id}/approvals/{}", now["step"]);
        let (status, answer) = server
            .post(&approval, json!({ "decision": "approve" }))
            .await;
        assert_eq!(status, 202, "{answer}");
    }
    server.until(&id, |s| s["state"] == "succeeded").await;
    let (_, live) = server.get(&format!("/v1/runs/{id}")).await;
    assert!(live["usage"]["model_calls"].as_u64() > Some(0), "{live}");
    // The journal's figures, read by a fresh process, are the same.
    assert!(server.terminate().success());
    let server = Server::start_in(server.dir.clone(), "");
    let (_, journaled) = server.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(
        live["usage"], journaled["usage"],
        "live {live}\njournal {journaled}"
    );
}

#[tokio::test]
async fn a_run_that_failed_on_its_journal_stays_failed_after_a_restart() {
    let mut server = Server::start("[models]\noffline_latency_ms = 300");
    let id = server.submit(json!({ "goal": "What is 4 plus 4?" })).await;
    // Another connection takes the database's write lock for longer than the journal waits
    // (5 s): the run's next write fails, and the run fails with journal_error.
    let db = server.dir.0.join("impresario.db");
    let locker = std::thread::spawn(move || {
        let mut connection = rusqlite::Connection::open(&db).unwrap();
        connection.busy_timeout(Duration::from_secs(5)).unwrap();
        let transaction = connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        std::thread::sleep(Duration::from_secs(7));
        transaction.rollback().unwrap();
    });
    let failed = server
        .until_within(&id, Duration::from_secs(30), |s| s["state"] == "failed")
        .await;
    assert_eq!(failed["reason"], "journal_error", "{failed}");
    locker.join().unwrap();

    assert!(server.terminate().success());
    let server = Server::start_in(server.dir.clone(), "");
    // Not resumed at start: it is still failed, and cannot be resumed by hand.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        let (_, run) = server.get(&format!("/v1/runs/{id}")).await;
        assert_eq!(run["status"], "finished", "{run}");
        assert_eq!(run["state"]["reason"], "journal_error", "{run}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, answer) = server
        .post(&format!("/v1/runs/{id}/resume"), json!({}))
        .await;
    assert_eq!(status, 409, "{answer}");
}
