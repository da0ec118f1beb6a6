//! The run journal: the same suite against the in-memory and the SQLite journal (a real file in
//! a temporary directory), then what only a file can show: reopening, a SIGKILLed writer, a newer
//! schema, corrupt rows, compaction.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use impresario_runtime::halt::{Halt, HaltMode, HaltReason, HaltScope};
use impresario_runtime::journal::{
    Journal, JournalError, MemoryJournal, RetentionPolicy, RunEvent, RunFilter, RunOutcome,
    RunStatus, SqliteJournal, ToolOutcome, EVENT_VERSION, SCHEMA_VERSION,
};
use impresario_runtime::llm::{
    ChatRequest, ChatResponse, FinishReason, Message, RateLimitInfo, ToolCall, ToolDef, Usage,
};
use impresario_runtime::RunId;
use serde_json::json;

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "impresario-journal-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn submitted(tenant: &str) -> RunEvent {
    RunEvent::RunSubmitted {
        tenant: tenant.into(),
        goal: "find the answer".into(),
        request: json!({"budget_micro_usd": 50_000, "autonomy": "supervised"}),
    }
}

fn step(step: u32) -> RunEvent {
    RunEvent::StepStarted {
        step,
        kind: "llm".into(),
        detail: json!({"n": step}),
    }
}

fn intent(key: &str) -> RunEvent {
    RunEvent::ToolCallIntent {
        step: 1,
        tool: "search".into(),
        idempotency_key: key.into(),
        arguments: json!({"q": "rust"}),
    }
}

fn result(key: &str, outcome: ToolOutcome) -> RunEvent {
    RunEvent::ToolResult {
        step: 1,
        idempotency_key: key.into(),
        outcome,
    }
}

fn halted() -> RunEvent {
    RunEvent::Halted {
        halt: Halt::new(
            HaltScope::Run("r".into()),
            HaltMode::Graceful {
                deadline: Duration::from_millis(1_500),
            },
            HaltReason::CostCeiling,
        )
        .with_detail("run budget reached"),
    }
}

fn finished() -> RunEvent {
    RunEvent::RunFinished {
        outcome: RunOutcome::Succeeded,
        result: json!("42"),
        reason: Some("confident answer".into()),
    }
}

/// One run using every variant (and every shape of the nested LLM types), in a valid order.
fn every_variant() -> Vec<RunEvent> {
    let request = ChatRequest::new("gpt-4o-mini")
        .system("be brief")
        .user("what is 6 x 7?")
        .message(Message::Assistant {
            content: String::new(),
            tool_calls: vec![ToolCall {
                id: "c0".into(),
                name: "calc".into(),
                arguments: json!({"expr": "6*7"}),
            }],
        })
        .message(Message::tool_result("c0", "42"))
        .tool(ToolDef {
            name: "calc".into(),
            description: "arithmetic".into(),
            parameters: json!({"type": "object"}),
        })
        .output_schema("answer", json!({"type": "object"}), true)
        .max_tokens(64)
        .temperature(0.7)
        .stop("END");
    let response = ChatResponse {
        model: "gpt-4o-mini".into(),
        content: "{\"answer\": 42}".into(),
        tool_calls: vec![ToolCall {
            id: "c1".into(),
            name: "calc".into(),
            arguments: json!({"expr": "1+1"}),
        }],
        finish_reason: FinishReason::Other("content_filter".into()),
        usage: Usage {
            input_tokens: 120,
            output_tokens: 30,
            cache_read_tokens: 64,
            cache_creation_tokens: 8,
            reasoning_tokens: 10,
            estimated: true,
        },
        request_id: Some("req-1".into()),
        rate_limit: Some(RateLimitInfo {
            remaining_requests: Some(99),
            remaining_tokens: None,
        }),
        cost_micro_usd: Some(1_234),
        cache_hit: false,
    };
    vec![
        submitted("acme"),
        RunEvent::PlanMade {
            revision: 0,
            plan: json!({"steps": [{"tool": "search"}, {"llm": "summarize"}]}),
        },
        step(1),
        RunEvent::LlmRequest {
            step: 1,
            call: 0,
            request,
        },
        RunEvent::LlmResponse {
            step: 1,
            call: 0,
            response,
            cost_micro_usd: 1_234,
        },
        intent("k1"),
        result("k1", ToolOutcome::Ok(json!({"hits": [1, 2, 3]}))),
        intent("k2"),
        result("k2", ToolOutcome::Error("timeout after 30 s".into())),
        RunEvent::ApprovalRequested {
            step: 2,
            tool: "send_email".into(),
            reason: "high-impact tool".into(),
        },
        RunEvent::ApprovalDecided {
            step: 2,
            approved: false,
            by: "ops@acme".into(),
            reason: None,
        },
        halted(),
        RunEvent::StepFinished {
            step: 1,
            outcome: json!({"error": {"kind": "tool", "retryable": true}}),
        },
        finished(),
    ]
}

/// Runs a suite function against a fresh in-memory journal and a fresh SQLite file.
macro_rules! both {
    ($suite:ident) => {
        mod $suite {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$suite(Arc::new(MemoryJournal::new())).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let dir = TempDir::new();
                let journal = SqliteJournal::open(dir.file("journal.db")).unwrap();
                super::$suite(Arc::new(journal)).await
            }
        }
    };
}

both!(round_trip_of_every_variant);
async fn round_trip_of_every_variant(journal: Arc<dyn Journal>) {
    let events = every_variant();
    let kinds: BTreeSet<_> = events.iter().map(RunEvent::kind).collect();
    assert_eq!(kinds.len(), 12, "the sample misses a variant: {kinds:?}");
    let run = RunId::new("run-all");
    let before = std::time::SystemTime::now() - Duration::from_millis(1);
    for (i, event) in events.iter().enumerate() {
        let seq = journal.append(&run, event.clone()).await.unwrap();
        assert_eq!(seq, i as u64 + 1);
    }
    let read = journal.read(&run).unwrap();
    assert_eq!(read.len(), events.len());
    for (i, (entry, event)) in read.iter().zip(&events).enumerate() {
        assert_eq!(&entry.event, event, "event {} changed on the way", i + 1);
        assert_eq!(entry.seq, i as u64 + 1);
        assert_eq!(entry.run, run);
        assert_eq!(entry.version, EVENT_VERSION);
        assert!(entry.at >= before && entry.at <= std::time::SystemTime::now());
    }
    assert!(journal.read(&RunId::new("nobody")).unwrap().is_empty());
}

both!(appends_are_checked);
async fn appends_are_checked(journal: Arc<dyn Journal>) {
    let run = RunId::new("checked");
    let refused = |r: Result<u64, JournalError>, needle: &str| match r {
        Err(JournalError::Rejected { run: r, reason }) => {
            assert_eq!(r.as_str(), "checked");
            assert!(
                reason.contains(needle),
                "{reason:?} should mention {needle:?}"
            );
        }
        other => panic!("expected a refusal mentioning {needle:?}, got {other:?}"),
    };
    refused(
        journal.append(&run, step(1)).await,
        "starts with `run_submitted`",
    );
    assert!(journal.runs(&RunFilter::all()).unwrap().is_empty());

    assert_eq!(journal.append(&run, submitted("t")).await.unwrap(), 1);
    refused(
        journal.append(&run, submitted("t")).await,
        "already submitted",
    );
    refused(
        journal
            .append(&run, result("k", ToolOutcome::Ok(json!(1))))
            .await,
        "no `tool_call_intent`",
    );
    refused(
        journal.append(&run, intent("")).await,
        "empty idempotency_key",
    );
    assert_eq!(journal.append(&run, intent("k")).await.unwrap(), 2);
    assert_eq!(
        journal
            .append(&run, result("k", ToolOutcome::Ok(json!(1))))
            .await
            .unwrap(),
        3
    );
    refused(
        journal
            .append(&run, result("k", ToolOutcome::Ok(json!(2))))
            .await,
        "already journaled (event 3)",
    );
    assert_eq!(journal.append(&run, finished()).await.unwrap(), 4);
    refused(journal.append(&run, step(2)).await, "after `run_finished`");
    // Refusals left no trace and no gap.
    let seqs: Vec<u64> = journal.read(&run).unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
}

both!(idempotency_key_lookup);
async fn idempotency_key_lookup(journal: Arc<dyn Journal>) {
    let (a, b) = (RunId::new("a"), RunId::new("b"));
    for run in [&a, &b] {
        journal.append(run, submitted("t")).await.unwrap();
        journal.append(run, intent("k1")).await.unwrap();
        journal.append(run, intent("k2")).await.unwrap();
    }
    let ok = ToolOutcome::Ok(json!({"rows": 3}));
    journal.append(&a, result("k1", ok.clone())).await.unwrap();

    // The result follows its intent in its own run only; keys are per run.
    let results = |run: &RunId| -> Vec<(u64, RunEvent)> {
        journal
            .read(run)
            .unwrap()
            .into_iter()
            .filter(|e| matches!(e.event, RunEvent::ToolResult { .. }))
            .map(|e| (e.seq, e.event))
            .collect()
    };
    assert_eq!(results(&a), [(4, result("k1", ok.clone()))]);
    assert_eq!(results(&b), []);
    // The same key is free in another run.
    journal.append(&b, result("k1", ok)).await.unwrap();
}

both!(runs_are_listed_with_their_status);
async fn runs_are_listed_with_their_status(journal: Arc<dyn Journal>) {
    let ids: Vec<RunId> = (0..4).map(|i| RunId::new(format!("r{i}"))).collect();
    for (i, run) in ids.iter().enumerate() {
        let tenant = if i == 3 { "other" } else { "acme" };
        journal.append(run, submitted(tenant)).await.unwrap();
        // Distinct start times, so the order is by start and not only by id.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    journal.append(&ids[1], halted()).await.unwrap();
    journal.append(&ids[2], step(1)).await.unwrap();
    journal.append(&ids[2], finished()).await.unwrap();

    let all = journal.runs(&RunFilter::all()).unwrap();
    let listed: Vec<_> = all
        .iter()
        .map(|s| (s.run.as_str(), s.status, s.last_seq, s.last_event.as_str()))
        .collect();
    assert_eq!(
        listed,
        [
            ("r0", RunStatus::Active, 1, "run_submitted"),
            ("r1", RunStatus::Halted, 2, "halted"),
            ("r2", RunStatus::Finished, 3, "run_finished"),
            ("r3", RunStatus::Active, 1, "run_submitted"),
        ]
    );
    assert_eq!(all[3].tenant, "other");
    assert!(all[2].updated_at >= all[2].started_at);

    let names = |f: RunFilter| -> Vec<String> {
        journal
            .runs(&f)
            .unwrap()
            .into_iter()
            .map(|s| s.run.to_string())
            .collect()
    };
    assert_eq!(names(RunFilter::unfinished()), ["r0", "r1", "r3"]);
    assert_eq!(
        names(RunFilter::all().status(RunStatus::Active)),
        ["r0", "r3"]
    );
    assert_eq!(names(RunFilter::unfinished().tenant("acme")), ["r0", "r1"]);
    assert_eq!(names(RunFilter::all().limit(2)), ["r0", "r1"]);

    // A resumed run is active again.
    journal.append(&ids[1], step(2)).await.unwrap();
    assert_eq!(
        names(RunFilter::all().status(RunStatus::Active)),
        ["r0", "r1", "r3"]
    );
}

both!(sequence_numbers_are_gap_free_under_8_concurrent_appenders);
async fn sequence_numbers_are_gap_free_under_8_concurrent_appenders(journal: Arc<dyn Journal>) {
    const RUNS: usize = 4;
    const TASKS: usize = 8;
    const PER_TASK: u32 = 100;
    let runs: Vec<RunId> = (0..RUNS).map(|i| RunId::new(format!("c{i}"))).collect();
    for run in &runs {
        journal.append(run, submitted("t")).await.unwrap();
    }
    // Two tasks per run, all eight at once: seqs race within a run and across runs.
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (journal, run, barrier) =
                (journal.clone(), runs[t % RUNS].clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let mut got = Vec::new();
                for k in 0..PER_TASK {
                    let tag = t as u32 * 1_000 + k;
                    got.push((journal.append(&run, step(tag)).await.unwrap(), tag));
                }
                got
            })
        })
        .collect();
    let mut acked: Vec<Vec<(u64, u32)>> = vec![Vec::new(); RUNS];
    for (t, task) in tasks.into_iter().enumerate() {
        acked[t % RUNS].extend(task.await.unwrap());
    }
    for (run, mut acks) in runs.iter().zip(acked) {
        acks.sort();
        let seqs: Vec<u64> = acks.iter().map(|(s, _)| *s).collect();
        let expected: Vec<u64> = (2..=2 * PER_TASK as u64 + 1).collect();
        assert_eq!(seqs, expected, "{run}: acknowledged seqs are not 2..=201");
        let stored = journal.read(run).unwrap();
        assert_eq!(stored.len(), 2 * PER_TASK as usize + 1);
        // Each acknowledged seq holds the event that was acknowledged with it.
        for (seq, tag) in acks {
            assert_eq!(stored[seq as usize - 1].event, step(tag), "{run} seq {seq}");
        }
    }
}

both!(retention_by_count_and_age_keeps_unfinished_runs);
async fn retention_by_count_and_age_keeps_unfinished_runs(journal: Arc<dyn Journal>) {
    let run = |name: &str| RunId::new(name);
    let start = |name: &'static str| {
        let journal = journal.clone();
        async move {
            journal.append(&run(name), submitted("t")).await.unwrap();
            journal.append(&run(name), step(1)).await.unwrap();
        }
    };
    start("active").await;
    start("halted").await;
    journal.append(&run("halted"), halted()).await.unwrap();
    for name in ["old-1", "old-2", "old-3"] {
        start(name).await;
        journal.append(&run(name), finished()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let names = || -> Vec<String> {
        journal
            .runs(&RunFilter::all())
            .unwrap()
            .into_iter()
            .map(|s| s.run.to_string())
            .collect()
    };

    // By count: the most recently finished run stays.
    let report = journal
        .apply_retention(&RetentionPolicy {
            max_finished_runs: Some(1),
            ..RetentionPolicy::default()
        })
        .await
        .unwrap();
    assert_eq!((report.runs_deleted, report.events_deleted), (2, 6));
    assert_eq!(names(), ["active", "halted", "old-3"]);

    // By age: only what finished before the cutoff goes; active and halted runs stay.
    // (Wide margins: "new" must still be younger than max_age when the last call runs.)
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    start("new").await;
    journal.append(&run("new"), finished()).await.unwrap();
    let by_age = RetentionPolicy {
        max_age: Some(Duration::from_secs(1)),
        ..RetentionPolicy::default()
    };
    let report = journal.apply_retention(&by_age).await.unwrap();
    assert_eq!(report.runs_deleted, 1);
    assert_eq!(names(), ["active", "halted", "new"]);

    // Halted runs go only when asked for.
    let report = journal
        .apply_retention(&RetentionPolicy {
            include_halted: true,
            ..by_age
        })
        .await
        .unwrap();
    assert_eq!(report.runs_deleted, 1);
    assert_eq!(names(), ["active", "new"]);
    assert_eq!(journal.read(&run("active")).unwrap().len(), 2);
}

both!(a_batch_is_one_commit_and_all_or_nothing);
async fn a_batch_is_one_commit_and_all_or_nothing(journal: Arc<dyn Journal>) {
    let run = RunId::new("batched");
    let before = journal.commits();
    let first = vec![
        submitted("t"),
        step(1),
        intent("k1"),
        result("k1", ToolOutcome::Ok(json!(1))),
    ];
    // A tool result may follow its intent in the same batch.
    assert_eq!(journal.append_batch(&run, first.clone()).await.unwrap(), 4);
    assert_eq!(journal.commits(), before + 1, "one batch, one commit");

    // The second event is refused (a second result for k1): nothing of the batch is written.
    let refused = journal
        .append_batch(&run, vec![step(2), result("k1", ToolOutcome::Ok(json!(2)))])
        .await
        .unwrap_err();
    let JournalError::Rejected { reason, .. } = &refused else {
        panic!("expected a refusal, got {refused:?}");
    };
    assert!(reason.contains("event 2 of a batch of 2"), "{reason}");
    assert!(reason.contains("already journaled"), "{reason}");
    let stored: Vec<RunEvent> = journal
        .read(&run)
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(stored, first, "a refused batch left the run as it was");
    assert_eq!(
        journal.commits(),
        before + 1,
        "a refused batch is not a commit"
    );

    // An empty batch is refused, and a refused first batch leaves no run behind.
    let empty = journal.append_batch(&run, Vec::new()).await.unwrap_err();
    assert!(
        matches!(&empty, JournalError::Rejected { reason, .. } if reason.contains("empty batch"))
    );
    let orphan = RunId::new("orphan");
    let no_start = journal.append_batch(&orphan, vec![step(1), step(2)]).await;
    assert!(no_start.is_err());
    assert!(journal.read(&orphan).unwrap().is_empty());
    assert_eq!(journal.runs(&RunFilter::all()).unwrap().len(), 1);

    // The run's end in the same batch as the events before it.
    let end = vec![step(2), intent("k2"), finished()];
    assert_eq!(journal.append_batch(&run, end).await.unwrap(), 7);
    let summary = &journal.runs(&RunFilter::all()).unwrap()[0];
    assert_eq!((summary.status, summary.last_seq), (RunStatus::Finished, 7));
    assert_eq!(summary.last_event, "run_finished");
    assert_eq!(journal.commits(), before + 2);
}

both!(concurrent_batches_of_many_runs_keep_their_own_fate);
async fn concurrent_batches_of_many_runs_keep_their_own_fate(journal: Arc<dyn Journal>) {
    // Queued together, so the SQLite writer commits them in one group: the refused batches
    // (odd runs: a result without its intent) must not take the others down with them.
    let pending: Vec<_> = (0..16)
        .map(|i| {
            let run = RunId::new(format!("g{i}"));
            let mut events = vec![submitted("t"), step(1)];
            if i % 2 == 1 {
                events.push(result("nokey", ToolOutcome::Ok(json!(0))));
            }
            (run.clone(), journal.append_batch(&run, events))
        })
        .collect();
    for (i, (run, future)) in pending.into_iter().enumerate() {
        let outcome = future.await;
        let stored = journal.read(&run).unwrap().len();
        if i % 2 == 1 {
            assert!(outcome.is_err(), "{run} should have been refused");
            assert_eq!(stored, 0, "{run}: a refused batch wrote events");
        } else {
            assert_eq!(outcome.unwrap(), 2, "{run}");
            assert_eq!(stored, 2, "{run}");
        }
    }
    let commits = journal.commits();
    assert!(
        (1..=8).contains(&commits),
        "8 accepted batches made {commits} commits"
    );
}

// ---- Memory only -------------------------------------------------------------------------------

#[tokio::test]
async fn the_memory_journal_keeps_only_its_cap_of_finished_runs() {
    let journal = MemoryJournal::with_max_finished_runs(3);
    let run = |name: String| RunId::new(name);
    journal
        .append(&run("active".into()), submitted("t"))
        .await
        .unwrap();
    let halted_run = run("halted".into());
    journal
        .append_batch(&halted_run, vec![submitted("t"), halted()])
        .await
        .unwrap();
    for i in 0..6 {
        journal
            .append_batch(&run(format!("done-{i}")), vec![submitted("t"), finished()])
            .await
            .unwrap();
    }
    let names: BTreeSet<String> = journal
        .runs(&RunFilter::all())
        .unwrap()
        .into_iter()
        .map(|s| s.run.to_string())
        .collect();
    // The three that finished last; active and halted runs are never deleted by the cap.
    let kept = ["active", "done-3", "done-4", "done-5", "halted"];
    assert_eq!(names, kept.map(String::from).into());
    assert!(journal.read(&run("done-0".into())).unwrap().is_empty());
}

#[tokio::test]
async fn the_memory_journal_is_bounded_by_default() {
    let journal = MemoryJournal::new();
    let cap = impresario_runtime::journal::DEFAULT_MAX_FINISHED_RUNS;
    for i in 0..cap + 10 {
        let run = RunId::new(format!("r{i:05}"));
        journal
            .append_batch(&run, vec![submitted("t"), finished()])
            .await
            .unwrap();
    }
    let runs = journal.runs(&RunFilter::all()).unwrap();
    assert_eq!(runs.len(), cap);
    assert_eq!(runs[0].run, RunId::new("r00010"), "the oldest ten went");
}

// ---- SQLite only ------------------------------------------------------------------------------

#[tokio::test]
async fn events_survive_close_and_reopen() {
    let dir = TempDir::new();
    let path = dir.file("journal.db");
    let run = RunId::new("durable");
    let journal = SqliteJournal::open(&path).unwrap();
    journal.append(&run, submitted("t")).await.unwrap();
    for i in 1..=50 {
        journal.append(&run, step(i)).await.unwrap();
    }
    // Queued but never awaited: dropping the journal still completes them.
    let pending: Vec<_> = (51..=60).map(|i| journal.append(&run, step(i))).collect();
    drop(pending);
    assert!(journal.read(&run).unwrap().len() >= 51); // leaves a pooled reader open
    drop(journal);
    // A clean close folds the WAL into the file.
    assert!(!dir.file("journal.db-wal").exists());

    let journal = SqliteJournal::open(&path).unwrap();
    let events = journal.read(&run).unwrap();
    assert_eq!(events.len(), 61);
    assert_eq!(events[60].event, step(60));
    assert_eq!(journal.append(&run, step(61)).await.unwrap(), 62);
}

/// Child side of the crash test: appends on 4 runs as fast as it can and prints
/// `ACK <run> <seq>` once each append has resolved, until it is killed.
#[test]
#[ignore = "the child process of appends_acknowledged_before_sigkill_survive"]
fn crash_child() {
    let Ok(path) = std::env::var("IMPRESARIO_JOURNAL_CRASH_CHILD") else {
        return; // only meaningful when started by `appends_acknowledged_before_sigkill_survive`
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let journal = Arc::new(SqliteJournal::open(&path).unwrap());
        let tasks: Vec<_> = (0..4)
            .map(|t| {
                let journal = journal.clone();
                tokio::spawn(async move {
                    let run = RunId::new(format!("crash-{t}"));
                    journal.append(&run, submitted("t")).await.unwrap();
                    for i in 1.. {
                        let seq = journal.append(&run, step(i)).await.unwrap();
                        println!("ACK {t} {seq}");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
}

#[test]
fn appends_acknowledged_before_sigkill_survive() {
    use std::process::{Command, Stdio};
    let dir = TempDir::new();
    let path = dir.file("journal.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "journal::crash_child", // its path in the `it` binary
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("IMPRESARIO_JOURNAL_CRASH_CHILD", &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = [0u64; 4];
    let mut count = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let record = |line: &str, acked: &mut [u64; 4]| {
        let mut parts = line.strip_prefix("ACK ")?.split(' ');
        let t: usize = parts.next()?.parse().ok()?;
        let seq: u64 = parts.next()?.parse().ok()?;
        acked[t] = acked[t].max(seq);
        Some(())
    };
    // Kill it mid-stream, after enough acknowledgements that batches are in flight.
    while count < 2_000 && Instant::now() < deadline {
        let line = lines.next().expect("the child exited early").unwrap();
        if record(&line, &mut acked).is_some() {
            count += 1;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // What it printed before dying.
    for line in lines.map_while(Result::ok) {
        record(&line, &mut acked);
    }
    assert!(
        count >= 2_000,
        "the child acknowledged only {count} appends in 60 s"
    );

    let journal = SqliteJournal::open(&path).unwrap();
    for (t, &last_acked) in acked.iter().enumerate() {
        let run = RunId::new(format!("crash-{t}"));
        // `read` validates: every event decodes and seqs are gap-free from 1.
        let events = journal.read(&run).unwrap();
        assert!(
            events.len() as u64 >= last_acked,
            "{run}: seq {last_acked} was acknowledged but only {} events survived",
            events.len()
        );
    }
}

#[tokio::test]
async fn a_storage_error_fails_only_its_own_append() {
    let dir = TempDir::new();
    let path = dir.file("journal.db");
    drop(SqliteJournal::open(&path).unwrap());
    // Make the database itself refuse some inserts, as a full disk or I/O error would.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER boom BEFORE INSERT ON events WHEN NEW.body LIKE '%boom%'
             BEGIN SELECT RAISE(ABORT, 'boom'); END;",
        )
        .unwrap();
    let journal = SqliteJournal::open(&path).unwrap();
    let run = RunId::new("r");
    journal.append(&run, submitted("t")).await.unwrap();
    // Queued together, so that they share a batch.
    let futures: Vec<_> = (1..=40)
        .map(|i| {
            let kind = if i % 10 == 0 { "boom" } else { "llm" };
            let event = RunEvent::StepStarted {
                step: i,
                kind: kind.into(),
                detail: json!(null),
            };
            journal.append(&run, event)
        })
        .collect();
    let mut stored = Vec::new();
    for (i, future) in (1..=40).zip(futures) {
        match future.await {
            Ok(seq) => stored.push((seq, i)),
            Err(JournalError::Io { cause, .. }) if i % 10 == 0 => {
                assert!(cause.contains("boom"), "{cause}")
            }
            other => panic!("append {i}: {other:?}"),
        }
    }
    assert_eq!(stored.len(), 36);
    let events = journal.read(&run).unwrap();
    assert_eq!(events.len(), 37);
    for (seq, i) in stored {
        assert!(
            matches!(events[seq as usize - 1].event, RunEvent::StepStarted { step, .. } if step == i)
        );
    }
}

fn set_user_version(path: &Path, version: i64) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.pragma_update(None, "user_version", version).unwrap();
}

#[tokio::test]
async fn a_newer_schema_is_refused_and_the_file_left_untouched() {
    let dir = TempDir::new();
    let path = dir.file("journal.db");
    let journal = SqliteJournal::open(&path).unwrap();
    journal
        .append(&RunId::new("r"), submitted("t"))
        .await
        .unwrap();
    drop(journal);
    set_user_version(&path, SCHEMA_VERSION + 1);
    let listing = || -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<_> = std::fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
            .collect();
        files.sort();
        files
    };
    let before = listing();

    let err = SqliteJournal::open(&path)
        .err()
        .expect("a newer schema opened");
    assert_eq!(
        err,
        JournalError::NewerSchema {
            path: path.clone(),
            found: SCHEMA_VERSION + 1,
            supported: SCHEMA_VERSION,
        }
    );
    assert!(
        err.to_string().contains("open it with a newer Impresario"),
        "{err}"
    );
    assert!(before == listing(), "opening changed the directory's files");
}

#[test]
fn a_file_that_is_not_a_journal_is_refused_untouched() {
    let dir = TempDir::new();
    let text = dir.file("notes.txt");
    std::fs::write(&text, "x".repeat(4096)).unwrap();
    let err = SqliteJournal::open(&text).err().unwrap();
    assert!(
        matches!(&err, JournalError::NotAJournal { reason, .. } if reason.contains("not an SQLite database")),
        "{err}"
    );
    assert_eq!(std::fs::read(&text).unwrap(), "x".repeat(4096).as_bytes());

    let other = dir.file("other.db");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE t (x); PRAGMA user_version = 1;")
        .unwrap();
    let bytes = std::fs::read(&other).unwrap();
    let err = SqliteJournal::open(&other).err().unwrap();
    assert!(
        matches!(&err, JournalError::NotAJournal { reason, .. } if reason.contains("application_id")),
        "{err}"
    );
    assert_eq!(std::fs::read(&other).unwrap(), bytes);
}

#[tokio::test]
async fn corrupt_rows_are_errors_naming_run_and_seq() {
    let dir = TempDir::new();
    let path = dir.file("journal.db");
    let journal = SqliteJournal::open(&path).unwrap();
    for name in ["json", "type", "version", "gap"] {
        let run = RunId::new(name);
        journal.append(&run, submitted("t")).await.unwrap();
        journal.append(&run, step(1)).await.unwrap();
        journal.append(&run, step(2)).await.unwrap();
    }
    // Damage the file behind the journal's back, on a connection of our own.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "UPDATE events SET body = '{\"type\": \"step_started\", \"step\": ' WHERE run_id = 'json' AND seq = 2;
         UPDATE events SET body = '{\"type\": \"teleport\"}', kind = 'teleport' WHERE run_id = 'type' AND seq = 3;
         UPDATE events SET version = 99 WHERE run_id = 'version' AND seq = 2;
         DELETE FROM events WHERE run_id = 'gap' AND seq = 2;",
    )
    .unwrap();

    let corrupt = |run: &str| match journal.read(&RunId::new(run)) {
        Err(JournalError::Corrupt {
            run: r,
            seq,
            reason,
        }) => {
            assert_eq!(r.as_str(), run);
            (seq, reason)
        }
        other => panic!("{run}: expected Corrupt, got {other:?}"),
    };
    let (seq, reason) = corrupt("json");
    assert_eq!(seq, 2);
    assert!(reason.contains("does not decode"), "{reason}");
    let (seq, reason) = corrupt("type");
    assert_eq!(seq, 3);
    assert!(reason.contains("unknown variant `teleport`"), "{reason}");
    let (seq, reason) = corrupt("gap");
    assert_eq!(seq, 2);
    assert!(reason.contains("event 2 is missing"), "{reason}");
    let err = journal.read(&RunId::new("version")).unwrap_err();
    assert_eq!(
        err,
        JournalError::NewerEvent {
            run: RunId::new("version"),
            seq: 2,
            found: 99,
            supported: EVENT_VERSION,
        }
    );
    assert!(err.to_string().contains("run version, event 2"), "{err}");
    // The rest of the journal is unaffected.
    assert_eq!(journal.runs(&RunFilter::all()).unwrap().len(), 4);
}

#[tokio::test]
async fn retention_shrinks_the_file() {
    let dir = TempDir::new();
    let path = dir.file("journal.db");
    let journal = SqliteJournal::open(&path).unwrap();
    let payload = "x".repeat(20_000);
    for i in 0..60 {
        let run = RunId::new(format!("r{i:02}"));
        journal.append(&run, submitted("t")).await.unwrap();
        for s in 0..5 {
            let detail = RunEvent::StepFinished {
                step: s,
                outcome: json!({ "text": payload }),
            };
            journal.append(&run, detail).await.unwrap();
        }
        if i >= 2 {
            journal.append(&run, finished()).await.unwrap();
        }
    }
    let disk = || {
        let wal = dir.file("journal.db-wal");
        std::fs::metadata(&path).unwrap().len() + std::fs::metadata(wal).map_or(0, |m| m.len())
    };
    let before = disk();
    assert!(before > 5_000_000, "only {before} bytes written");

    let report = journal
        .apply_retention(&RetentionPolicy {
            max_finished_runs: Some(3),
            ..RetentionPolicy::default()
        })
        .await
        .unwrap();
    let after = disk();
    assert_eq!(report.runs_deleted, 55);
    assert_eq!(report.bytes_after, Some(after));
    assert!(
        after * 5 < before,
        "the file did not shrink enough: {before} -> {after} bytes"
    );
    let left: Vec<String> = journal
        .runs(&RunFilter::all())
        .unwrap()
        .into_iter()
        .map(|s| s.run.to_string())
        .collect();
    assert_eq!(left, ["r00", "r01", "r57", "r58", "r59"]);
    assert_eq!(journal.read(&RunId::new("r01")).unwrap().len(), 6);
}
