//! `journal.url`: the binary journals in PostgreSQL (a real, throwaway server) and keeps
//! long-term memory there, and a URL that cannot connect stops the start naming the host and
//! the database, never the password.

use std::sync::Arc;

use impresario::agents::memory::{LongTermMemory, LongTermStore, Retention};
use impresario::runtime::journal::{Journal, RunEvent, RunFilter, RunStatus};
use impresario::runtime::RunId;
use impresario_pg::memory::PgMemory;
use impresario_pg::test_cluster::shared;
use impresario_pg::PgJournal;
use serde_json::json;

use crate::binary::{impresario, Server, TempDir};

const GOAL: &str = "How does a supervisor restart agents?";

#[tokio::test]
async fn serve_journals_runs_in_the_database_of_journal_url() {
    let url = shared().create_database(&format!("serve_{}", std::process::id()));
    let dir = Arc::new(TempDir::new());
    let server = Server::start_with(
        dir.clone(),
        "",
        &[("IMPRESARIO_JOURNAL__URL", url.as_str())],
    );
    let id = server.submit(json!({ "goal": GOAL })).await;
    server.until(&id, |s| s["state"] == "succeeded").await;
    assert!(
        !dir.0.join("impresario.db").exists(),
        "the SQLite journal was created although journal.url is set"
    );
    drop(server);

    // The run is in PostgreSQL, whole: submitted first, finished last.
    let journal = tokio::task::spawn_blocking(move || PgJournal::connect(&url))
        .await
        .unwrap()
        .unwrap();
    let runs = journal.runs(&RunFilter::all()).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(
        (runs[0].run.as_str(), runs[0].status),
        (id.as_str(), RunStatus::Finished)
    );
    let events = journal.read(&RunId::new(id)).unwrap();
    assert!(matches!(events[0].event, RunEvent::RunSubmitted { ref goal, .. } if goal == GOAL));
    assert!(matches!(
        events.last().unwrap().event,
        RunEvent::RunFinished { .. }
    ));
}

#[test]
fn a_journal_url_that_cannot_connect_stops_the_start_without_the_password() {
    let pg = shared();
    let wrong = format!(
        "postgres://postgres:{}-not@127.0.0.1:{}/nowhere",
        pg.password(),
        pg.port()
    );
    let dir = Arc::new(TempDir::new());
    let err = Server::try_start(
        dir.clone(),
        "",
        &[
            ("IMPRESARIO_MODELS__PROVIDER", "offline"),
            ("IMPRESARIO_JOURNAL__URL", wrong.as_str()),
        ],
    )
    .err()
    .expect("the service started with a wrong password");
    assert!(err.contains(&format!("127.0.0.1:{}", pg.port())), "{err}");
    assert!(err.contains("database \"nowhere\""), "{err}");
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(!err.contains(pg.password()), "the password leaked: {err}");

    // The CLI reading runs says the same, and a URL of another scheme is refused by name.
    let out = impresario(&dir)
        .env("IMPRESARIO_JOURNAL__URL", &wrong)
        .args(["runs", "list"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("database \"nowhere\"") && !stderr.contains(pg.password()),
        "{stderr}"
    );
    let out = impresario(&dir)
        .env(
            "IMPRESARIO_JOURNAL__URL",
            "mysql://app:hunter2secret@db/runs",
        )
        .args(["runs", "list"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("journal.url") && stderr.contains("app:***@db"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2secret"), "{stderr}");
    // Nothing was journaled anywhere by the failed starts.
    assert!(!dir.0.join("impresario.db").exists());
}

#[tokio::test]
async fn serve_keeps_long_term_memory_in_the_database_of_journal_url() {
    let url = shared().create_database(&format!("serve_memory_{}", std::process::id()));
    let dir = Arc::new(TempDir::new());
    let ignored = dir.0.join("memory.db");
    let server = Server::start_with(
        dir.clone(),
        "",
        &[
            ("IMPRESARIO_JOURNAL__URL", url.as_str()),
            ("IMPRESARIO_MEMORY__PATH", ignored.to_str().unwrap()),
        ],
    );
    let goal = "Rotate the flamingo signing keys";
    let id = server
        .submit(json!({ "goal": goal, "tenant": "acme" }))
        .await;
    server.until(&id, |s| s["state"] == "succeeded").await;
    drop(server);
    assert!(
        !ignored.exists(),
        "memory.path was used although journal.url is set"
    );

    // The run's memory is in PostgreSQL, under its tenant only.
    let store = tokio::task::spawn_blocking(move || PgMemory::connect(&url, Retention::default()))
        .await
        .unwrap()
        .unwrap();
    let store: Arc<dyn LongTermStore> = Arc::new(store);
    let acme = LongTermMemory::stored(store.clone(), "acme");
    let found = acme.recall("flamingo signing keys", 5).await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        (found[0].record.run.as_str(), found[0].record.goal.as_str()),
        (id.as_str(), goal)
    );
    let beta = LongTermMemory::stored(store, "beta");
    assert!(beta
        .recall("flamingo signing keys", 5)
        .await
        .unwrap()
        .is_empty());
}
