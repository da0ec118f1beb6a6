//! Runs through their journal: what is journaled, replay with no network (a real HTTP provider
//! on loopback sees zero requests), the first divergence when the code changes, and resuming
//! a halted run without repeating or re-paying its journaled model calls.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use impresario_agents::{
    ModelMap, Orchestrator, OrchestratorConfig, RunRequest, RunState, Tool, ToolContext,
    ToolRegistry,
};
use impresario_runtime::halt::HaltMode;
use impresario_runtime::journal::{Journal, MemoryJournal, RunFilter, RunStatus, SqliteJournal};
use impresario_runtime::ledger::Ledger;
use impresario_runtime::llm::{Client, Scripted, ScriptedReply, Usage};
use impresario_runtime::{Runtime, RuntimeHandle};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::loopback::{fake_openai, http_client, prices};

#[derive(Deserialize, JsonSchema)]
pub(crate) struct Query {
    q: String,
}

pub(crate) struct Search;
impl Tool for Search {
    type Args = Query;
    fn name(&self) -> &str {
        "search"
    }
    fn description(&self) -> &str {
        "Searches the notes."
    }
    async fn call(&self, args: Query, _: ToolContext) -> Result<Value, String> {
        Ok(json!(format!("notes about {}: released in 2015", args.q)))
    }
}

/// Slow on its first call, fast after: a step a halt interrupts, then a resume completes.
struct FirstSlow(Arc<AtomicBool>, Arc<AtomicUsize>);
impl Tool for FirstSlow {
    type Args = Query;
    fn name(&self) -> &str {
        "fetch"
    }
    fn description(&self) -> &str {
        "Fetches a page."
    }
    async fn call(&self, _: Query, _: ToolContext) -> Result<Value, String> {
        self.1.fetch_add(1, Ordering::SeqCst);
        if !self.0.swap(true, Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        Ok(json!("page text"))
    }
}

pub(crate) fn plan(steps: Value) -> String {
    json!({ "steps": steps }).to_string()
}

/// The events of a run planned by [`search_then_answer`], in order.
const SEARCH_THEN_ANSWER_EVENTS: [&str; 13] = [
    "run_submitted",
    "recalled", // the memories of earlier runs
    "llm_request",
    "llm_response",
    "plan_made",
    "step_started",
    "tool_call_intent",
    "tool_result",
    "step_finished",
    "llm_request",
    "llm_response",
    "plan_made",
    "run_finished",
];

pub(crate) fn search_then_answer() -> [String; 2] {
    [
        plan(json!([{ "type": "tool_call", "tool": "search", "arguments": { "q": "rust" } }])),
        plan(json!([{ "type": "final_answer", "answer": "2015" }])),
    ]
}

async fn orchestrator(
    rt: &RuntimeHandle,
    client: Client,
    tools: ToolRegistry,
    journal: Arc<dyn Journal>,
) -> Orchestrator {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let name = format!("runs-{}", NEXT.fetch_add(1, Ordering::SeqCst));
    let config = OrchestratorConfig {
        journal,
        name,
        ..OrchestratorConfig::default()
    };
    Orchestrator::with(rt, client, tools, Ledger::new(), config)
        .await
        .unwrap()
}

fn search_tools() -> ToolRegistry {
    let mut tools = ToolRegistry::new();
    tools.register(Search).unwrap();
    tools
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_of_a_run_is_journaled_in_order() {
    let rt = Runtime::builder().arbiters(2).start().unwrap();
    let journal = Arc::new(MemoryJournal::new());
    let script = Scripted::new(search_then_answer().map(ScriptedReply::text));
    let client = Client::builder()
        .provider("script", script)
        .prices(prices("script"))
        .build()
        .unwrap();
    let team = orchestrator(&rt, client, search_tools(), journal.clone()).await;
    let run = team
        .submit(
            RunRequest::new("When was Rust released?", ModelMap::all("local")).tools(["search"]),
        )
        .await
        .unwrap();
    // Write-ahead: the submission is in the journal before submit returned.
    let first = journal.read(run.id()).unwrap();
    assert_eq!(first[0].event.kind(), "run_submitted");
    assert_eq!(
        run.wait().await.state,
        RunState::Succeeded {
            answer: "2015".into()
        }
    );

    let kinds: Vec<&str> = journal
        .read(run.id())
        .unwrap()
        .iter()
        .map(|e| e.event.kind())
        .collect::<Vec<_>>()
        .leak()
        .to_vec();
    assert_eq!(kinds, SEARCH_THEN_ANSWER_EVENTS);
    let summary = &journal.runs(&RunFilter::all()).unwrap()[0];
    assert_eq!(summary.status, RunStatus::Finished);
    rt.shutdown(Duration::from_secs(5)).await;
}

/// Searches too, but declares itself not idempotent: a resumed run must know whether it ran.
struct SearchOnce;
impl Tool for SearchOnce {
    type Args = Query;
    fn name(&self) -> &str {
        "search_once"
    }
    fn description(&self) -> &str {
        "Searches the notes (not safe to repeat)."
    }
    fn idempotent(&self) -> bool {
        false
    }
    async fn call(&self, args: Query, _: ToolContext) -> Result<Value, String> {
        Ok(json!(format!("notes about {}: released in 2015", args.q)))
    }
}

/// One run of 2 model calls (over HTTP on loopback) and one call of `tool`: the durable commits
/// the journal made for it, and its events' kinds.
async fn commits_of_one_run(journal: Arc<dyn Journal>, tool: &str) -> (u64, Vec<&'static str>) {
    let answers = vec![
        plan(json!([{ "type": "tool_call", "tool": tool, "arguments": { "q": "rust" } }])),
        plan(json!([{ "type": "final_answer", "answer": "2015" }])),
    ];
    let (url, requests) = fake_openai(answers).await;
    let rt = Runtime::builder().arbiters(2).start().unwrap();
    let mut tools = search_tools();
    tools.register(SearchOnce).unwrap();
    let team = orchestrator(&rt, http_client(&url), tools, journal.clone()).await;
    let before = journal.commits();
    let request = RunRequest::new("When was Rust released?", ModelMap::all("local"));
    let run = team.submit(request.tools([tool])).await.unwrap();
    let ended = run.wait().await.state.clone();
    assert_eq!(
        ended,
        RunState::Succeeded {
            answer: "2015".into()
        }
    );
    assert_eq!(requests.load(Ordering::SeqCst), 2, "two model calls");
    let commits = journal.commits() - before;
    let kinds = journal
        .read(run.id())
        .unwrap()
        .iter()
        .map(|e| e.event.kind())
        .collect();
    rt.shutdown(Duration::from_secs(5)).await;
    (commits, kinds)
}

/// Commit points (issue 18): a run of 2 model calls and 1 idempotent tool call makes 4 durable
/// commits (its submission; before each model request; its end with the events before it),
/// on SQLite as in memory; with a tool that is not idempotent, 6 (its intent is durable before
/// it runs, its result as soon as it is known). Nothing recorded is lost by the batching:
/// every event is there, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_two_model_calls_and_a_tool_call_commits_four_times() {
    let dir = std::env::temp_dir().join(format!("impresario-commits-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sqlite = SqliteJournal::open(dir.join("journal.db")).unwrap();
    let journals: [Arc<dyn Journal>; 2] = [Arc::new(MemoryJournal::new()), Arc::new(sqlite)];
    for journal in journals {
        let (commits, kinds) = commits_of_one_run(journal.clone(), "search").await;
        assert_eq!(commits, 4, "idempotent tool: {kinds:?}");
        assert_eq!(kinds, SEARCH_THEN_ANSWER_EVENTS);
        let (commits, kinds) = commits_of_one_run(journal, "search_once").await;
        assert_eq!(commits, 6, "tool that is not idempotent: {kinds:?}");
        assert_eq!(kinds, SEARCH_THEN_ANSWER_EVENTS);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_run_replays_with_no_network_and_the_same_outcome() {
    let (url, requests) = fake_openai(search_then_answer().to_vec()).await;
    let rt = Runtime::builder().arbiters(2).start().unwrap();
    let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
    let team = orchestrator(&rt, http_client(&url), search_tools(), journal.clone()).await;
    let request =
        RunRequest::new("When was Rust released?", ModelMap::all("local")).tools(["search"]);
    let recorded = team.submit(request).await.unwrap().wait().await;
    assert_eq!(
        recorded.state,
        RunState::Succeeded {
            answer: "2015".into()
        }
    );
    assert_eq!(
        requests.load(Ordering::SeqCst),
        2,
        "the recording made two real calls"
    );
    assert_eq!(recorded.usage.micro_usd, 2 * (100 + 40));

    let report = team.replay(&recorded.run).await.unwrap();
    assert_eq!(
        requests.load(Ordering::SeqCst),
        2,
        "the replay sent nothing"
    );
    assert_eq!(report.divergence, None);
    assert!(report.complete);
    assert_eq!(report.state, recorded.state);
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_names_the_first_divergence_when_the_code_behaves_differently() {
    let rt = Runtime::builder().arbiters(2).start().unwrap();
    let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
    let script = Scripted::new(search_then_answer().map(ScriptedReply::text));
    let client = Client::builder()
        .provider("script", script)
        .prices(prices("script"))
        .build()
        .unwrap();
    let team = orchestrator(&rt, client.clone(), search_tools(), journal.clone()).await;
    let request =
        RunRequest::new("When was Rust released?", ModelMap::all("local")).tools(["search"]);
    let recorded = team.submit(request).await.unwrap().wait().await;
    assert!(matches!(recorded.state, RunState::Succeeded { .. }));

    // The same run, replayed by code whose search tool is described differently: the planner's
    // prompt changes, so its first model request no longer matches the journal.
    struct NewSearch;
    impl Tool for NewSearch {
        type Args = Query;
        fn name(&self) -> &str {
            "search"
        }
        fn description(&self) -> &str {
            "Searches the notes, newest first."
        }
        async fn call(&self, _: Query, _: ToolContext) -> Result<Value, String> {
            Ok(json!("unused"))
        }
    }
    let mut tools = ToolRegistry::new();
    tools.register(NewSearch).unwrap();
    let changed = orchestrator(&rt, client, tools, journal.clone()).await;
    let report = changed.replay(&recorded.run).await.unwrap();
    let divergence = report.divergence.expect("the change is reported");
    assert!(
        divergence
            .expected
            .starts_with("llm_request /messages/0/content (from char"),
        "{divergence:?}"
    );
    assert!(divergence.found.contains("newest first"), "{divergence:?}");
    assert!(
        divergence.expected.contains("Searches the notes."),
        "{divergence:?}"
    );
    // run_submitted (1), the recall (2), then the planner's first request (3).
    assert_eq!(divergence.seq, 3);
    assert!(!report.complete);
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halted_run_resumes_without_repeating_or_repaying_its_model_calls() {
    let rt = Runtime::builder().arbiters(2).start().unwrap();
    let journal: Arc<dyn Journal> = Arc::new(MemoryJournal::new());
    let usage = Usage {
        input_tokens: 100,
        output_tokens: 20,
        ..Usage::default()
    };
    let script = Arc::new(Scripted::new([
        ScriptedReply::text(plan(
            json!([{ "type": "tool_call", "tool": "fetch", "arguments": { "q": "x" } }]),
        ))
        .usage(usage),
        ScriptedReply::text(plan(
            json!([{ "type": "final_answer", "answer": "fetched" }]),
        ))
        .usage(usage),
    ]));
    let client = Client::builder()
        .provider("script", script.clone())
        .prices(prices("script"))
        .build()
        .unwrap();
    let (slow_done, calls) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut tools = ToolRegistry::new();
    tools.register(FirstSlow(slow_done, calls.clone())).unwrap();
    let team = orchestrator(&rt, client, tools, journal.clone()).await;
    let run = team
        .submit(RunRequest::new("Fetch it", ModelMap::all("local")).tools(["fetch"]))
        .await
        .unwrap();
    // Halted while the fetch runs (not merely once step 1 is announced: a halt landing before
    // the tool starts would leave nothing to interrupt).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while calls.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(matches!(run.status(), RunState::Running { step: 1 }));
    run.halt(HaltMode::Immediate);
    let halted = run.wait().await;
    assert!(
        matches!(halted.state, RunState::Halted { .. }),
        "{:?}",
        halted.state
    );
    assert_eq!(
        journal.runs(&RunFilter::all()).unwrap()[0].status,
        RunStatus::Halted
    );
    assert_eq!(script.remaining(), 1, "one plan was made before the halt");

    let resumed = team.resume(run.id()).await.unwrap().wait().await;
    assert_eq!(
        resumed.state,
        RunState::Succeeded {
            answer: "fetched".into()
        }
    );
    assert_eq!(
        script.remaining(),
        0,
        "only the second plan was asked for: the first was served"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the interrupted read-only fetch ran again"
    );
    assert_eq!(
        resumed.usage.model_calls, 2,
        "two model calls in all, the first paid once"
    );
    assert_eq!(resumed.usage.micro_usd, 2 * 140);
    rt.shutdown(Duration::from_secs(5)).await;
}

/// A tool whose description holds a bearer token: the planner's prompt, which lists the tools,
/// holds it too.
struct Vault;
impl Tool for Vault {
    type Args = Query;
    fn name(&self) -> &str {
        "vault"
    }
    fn description(&self) -> &str {
        "Opens the vault with Authorization: Bearer vault-token-5b2f8e1d9c"
    }
    async fn call(&self, _: Query, _: ToolContext) -> Result<Value, String> {
        Ok(json!("opened"))
    }
}

/// The events' rows and the stored values of the SQLite file at `path`, one per line.
fn file_text(path: &std::path::Path) -> String {
    let db = rusqlite::Connection::open(path).unwrap();
    let sql = "SELECT json FROM blobs UNION ALL SELECT bodies FROM batches";
    let texts: Vec<String> = db
        .prepare(sql)
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    texts.join("\n")
}

/// The SQLite journal stores the planner's prompt of a set of tools once per file, however
/// many runs and requests carry it, redacted as the events are; a run reads back from the file
/// (another journal opened on it) as it was journaled: its replay sends nothing and finds no
/// divergence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_planner_prompt_is_stored_once_per_file_redacted_and_runs_replay_from_it() {
    let dir = std::env::temp_dir().join(format!("impresario-blobs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("journal.db");
    let mut answers = search_then_answer().to_vec();
    answers.extend(answers.clone());
    answers.extend(answers[..2].to_vec());
    let (url, requests) = fake_openai(answers).await;
    let rt = Runtime::builder().arbiters(2).start().unwrap();
    let tools = || {
        let mut tools = search_tools();
        tools.register(Vault).unwrap();
        tools
    };
    let journal: Arc<dyn Journal> = Arc::new(SqliteJournal::open(&path).unwrap());
    let team = orchestrator(&rt, http_client(&url), tools(), journal).await;
    let mut runs = Vec::new();
    for allowed in [&["search"][..], &["search"], &["search", "vault"]] {
        let request = RunRequest::new("When was Rust released?", ModelMap::all("local"));
        let run = team
            .submit(request.tools(allowed.iter().copied()))
            .await
            .unwrap();
        let ended = run.wait().await;
        assert!(
            matches!(ended.state, RunState::Succeeded { .. }),
            "{:?}",
            ended.state
        );
        runs.push(ended.run.clone());
    }
    assert_eq!(requests.load(Ordering::SeqCst), 6);
    drop(team);

    // Six requests, two sets of tools: two prompts and the plan's schema, once each.
    let db = rusqlite::Connection::open(&path).unwrap();
    let blobs: i64 = db
        .query_row("SELECT count(*) FROM blobs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(blobs, 3);
    let text = file_text(&path);
    assert!(!text.contains("vault-token-5b2f8e1d9c"), "{text}");
    let vault = text.find("Opens the vault").map(|at| &text[at..at + 60]);
    assert!(vault.is_some_and(|v| v.contains("<redacted>")), "{vault:?}");
    assert_eq!(
        text.matches("Searches the notes.").count(),
        2,
        "once per prompt"
    );

    let reopened: Arc<dyn Journal> = Arc::new(SqliteJournal::open(&path).unwrap());
    let team = orchestrator(&rt, http_client(&url), tools(), reopened).await;
    let report = team.replay(&runs[0]).await.unwrap();
    assert_eq!(report.divergence, None);
    assert!(report.complete);
    assert_eq!(
        requests.load(Ordering::SeqCst),
        6,
        "the replay sent nothing"
    );
    rt.shutdown(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir_all(&dir);
}
