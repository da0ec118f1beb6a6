//! The journal's behaviour, one suite for every backend: each test here takes a fresh journal
//! and checks what the `Journal` trait promises (numbering, checked appends, idempotency keys,
//! listing, concurrency, retention). impresario-runtime's tests run it against the in-memory and
//! the SQLite journal (`it/journal.rs`), impresario-pg's against PostgreSQL (`pg/tests/it/`,
//! which includes this file with `#[path]`): one body per behaviour, no copies.
//!
//! A backend's test module calls [`conformance!`] with an async function that opens a fresh,
//! empty journal and returns it with whatever must live as long as it (a temporary folder, a
//! database).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use impresario_runtime::halt::{Halt, HaltMode, HaltReason, HaltScope};
use impresario_runtime::journal::{
    Journal, JournalError, RetentionPolicy, RunEvent, RunFilter, RunOutcome, RunStatus,
    ToolOutcome, EVENT_VERSION,
};
use impresario_runtime::llm::{
    ChatRequest, ChatResponse, FinishReason, Message, RateLimitInfo, ToolCall, ToolDef, Usage,
};
use impresario_runtime::RunId;
use serde_json::json;

/// One test per behaviour of this suite, each on the journal `$open` (an async fn returning
/// `(Arc<dyn Journal>, keep_alive)`) opens.
macro_rules! conformance {
    ($open:path) => {
        $crate::journal_suite::conformance!(@each $open;
            round_trip_of_every_variant,
            appends_are_checked,
            idempotency_key_lookup,
            runs_are_listed_with_their_status,
            sequence_numbers_are_gap_free_under_8_concurrent_appenders,
            retention_by_count_and_age_keeps_unfinished_runs,
            a_batch_is_one_commit_and_all_or_nothing,
            concurrent_batches_of_many_runs_keep_their_own_fate,
            read_after_returns_exactly_the_events_after_a_sequence_number
        );
    };
    (@each $open:path; $($suite:ident),*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $suite() {
            let (journal, _keep_alive) = $open().await;
            $crate::journal_suite::$suite(journal).await
        }
    )*};
}
pub(crate) use conformance;

pub fn submitted(tenant: &str) -> RunEvent {
    RunEvent::RunSubmitted {
        tenant: tenant.into(),
        goal: "find the answer".into(),
        request: json!({"budget_micro_usd": 50_000, "autonomy": "supervised"}),
    }
}

pub fn step(step: u32) -> RunEvent {
    RunEvent::StepStarted {
        step,
        kind: "llm".into(),
        detail: json!({"n": step}),
    }
}

pub fn intent(key: &str) -> RunEvent {
    RunEvent::ToolCallIntent {
        step: 1,
        tool: "search".into(),
        idempotency_key: key.into(),
        arguments: json!({"q": "rust"}),
    }
}

pub fn result(key: &str, outcome: ToolOutcome) -> RunEvent {
    RunEvent::ToolResult {
        step: 1,
        idempotency_key: key.into(),
        outcome,
    }
}

pub fn halted() -> RunEvent {
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

pub fn finished() -> RunEvent {
    RunEvent::RunFinished {
        outcome: RunOutcome::Succeeded,
        result: json!("42"),
        reason: Some("confident answer".into()),
    }
}

/// One run using every variant (and every shape of the nested LLM types), in a valid order.
pub fn every_variant() -> Vec<RunEvent> {
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
            // Read back as written (a journal that settles holds finds none by this id).
            holds: vec!["hold-1".into()],
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

pub async fn round_trip_of_every_variant(journal: Arc<dyn Journal>) {
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

pub async fn appends_are_checked(journal: Arc<dyn Journal>) {
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

pub async fn idempotency_key_lookup(journal: Arc<dyn Journal>) {
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

pub async fn runs_are_listed_with_their_status(journal: Arc<dyn Journal>) {
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

pub async fn sequence_numbers_are_gap_free_under_8_concurrent_appenders(journal: Arc<dyn Journal>) {
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

pub async fn retention_by_count_and_age_keeps_unfinished_runs(journal: Arc<dyn Journal>) {
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

pub async fn a_batch_is_one_commit_and_all_or_nothing(journal: Arc<dyn Journal>) {
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

pub async fn concurrent_batches_of_many_runs_keep_their_own_fate(journal: Arc<dyn Journal>) {
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

/// `read_after` at 0, inside a batch, at a batch's edge, at the end, past the end (up to
/// `Seq::MAX`) and for an unknown run: exactly the tail of `read`, never an event of another
/// tenant's run written in between, and never the whole run (which `after = 0` alone returns).
pub async fn read_after_returns_exactly_the_events_after_a_sequence_number(
    journal: Arc<dyn Journal>,
) {
    let (mine, theirs) = (RunId::new("followed"), RunId::new("other-tenant"));
    // Batches of 1, 3, 2 and 1 events, another tenant's run appended between each of them.
    let batches = [
        vec![submitted("acme")],
        vec![step(1), step(2), step(3)],
        vec![step(4), step(5)],
        vec![finished()],
    ];
    for (i, batch) in batches.into_iter().enumerate() {
        let other = if i == 0 {
            submitted("globex")
        } else {
            step(100 + i as u32)
        };
        journal.append(&theirs, other).await.unwrap();
        journal.append_batch(&mine, batch).await.unwrap();
    }
    let all = journal.read(&mine).unwrap();
    assert_eq!(all.len(), 7);
    let seqs = |after: u64| -> Vec<u64> {
        let tail = journal.read_after(&mine, after).unwrap();
        assert!(tail.iter().all(|e| e.run == mine), "{tail:?}");
        tail.iter().map(|e| e.seq).collect()
    };
    assert_eq!(seqs(0), [1, 2, 3, 4, 5, 6, 7], "after 0: every event");
    assert_eq!(seqs(2), [3, 4, 5, 6, 7], "inside the batch of 2..=4");
    assert_eq!(seqs(4), [5, 6, 7], "at the end of a batch");
    assert_eq!(seqs(6), [7]);
    assert!(seqs(7).is_empty(), "at the last event");
    assert!(seqs(8).is_empty() && seqs(1_000).is_empty(), "past the end");
    assert!(seqs(u64::MAX).is_empty(), "at the largest sequence number");
    for after in 0..=9 {
        let from = (after as usize).min(all.len());
        let tail = journal.read_after(&mine, after).unwrap();
        assert_eq!(
            tail,
            all[from..],
            "after {after}: the tail of read, as read has it"
        );
    }
    let unknown = RunId::new("never-journaled");
    assert!(journal.read_after(&unknown, 0).unwrap().is_empty());
    assert!(journal.read_after(&unknown, 3).unwrap().is_empty());
    let others: Vec<RunEvent> = journal
        .read_after(&theirs, 2)
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(
        others,
        [step(102), step(103)],
        "the other run's own tail only"
    );
}
