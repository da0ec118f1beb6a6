//! Memory through its public API: recall by BM25 and by an embedder, the context budget with a
//! scripted summarizer on a real ledger (including halts and ceilings), and the memory agent on
//! a real runtime.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use impresario_agents::memory::{
    compact, cosine, estimate_tokens, ContextBudget, ContextEntry, Embedder, EntryKind, Get,
    HashingEmbedder, LongTermMemory, MemoryAgent, MemoryError, MemoryRecord, Outcome, Put, Recall,
    RecordId, Remember, Remove, Snapshot,
};
use impresario_runtime::ledger::{Account, AccountId, Charge, Ledger, Limits};
use impresario_runtime::llm::estimate::estimate_input;
use impresario_runtime::llm::{
    CallOptions, ChatModel, ChatRequest, ChatResponse, Client, LlmError, Message, ModelPrice,
    PriceTable, Rates, Scripted, ScriptedReply, Usage,
};
use impresario_runtime::{AgentId, RunId, Runtime};
use serde_json::json;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------- long-term memory

fn record(
    run: &str,
    goal: &str,
    text: &str,
    outcome: Outcome,
    why: &str,
    secs: u64,
) -> MemoryRecord {
    MemoryRecord {
        run: RunId::new(run),
        goal: goal.into(),
        text: text.into(),
        outcome,
        why: why.into(),
        tags: Vec::new(),
        at: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
    }
}

fn corpus() -> Vec<MemoryRecord> {
    vec![
        record("r1", "Summarize the quarterly sales report", "Read the PDF with the pdf tool and wrote a summary.", Outcome::Succeeded, "the pdf tool extracted all tables", 1),
        record("r2", "Migrate the orders table to Postgres 16", "pg_dump then restore; the restore hit a lock timeout on the orders index.", Outcome::Failed, "lock timeout: another job held the orders table; run migrations in the maintenance window", 2),
        record("r3", "Book a flight to Lisbon", "Searched flights, asked for approval, booked TAP 123.", Outcome::Succeeded, "approval was granted", 3),
        record("r4", "Deploy the web service", "Deployed version 2.1 to production with the deploy tool.", Outcome::Halted, "operator halted the run during the deploy", 4),
        record("r5", "Translate the README to French", "Translated section by section.", Outcome::Succeeded, "done", 5),
    ]
}

async fn filled(memory: LongTermMemory) -> LongTermMemory {
    for (i, r) in corpus().into_iter().enumerate() {
        assert_eq!(memory.remember(r).await.unwrap(), RecordId(i as u64));
    }
    memory
}

#[tokio::test]
async fn bm25_recalls_the_relevant_record_first_with_the_outcome_and_why() {
    let memory = filled(LongTermMemory::new()).await;
    assert_eq!(memory.len().await.unwrap(), 5);

    let found = memory
        .recall("postgres migration lock timeout", 3)
        .await
        .unwrap();
    assert_eq!(found[0].id, RecordId(1), "{found:#?}");
    assert_eq!(found[0].record.outcome, Outcome::Failed);
    assert!(found[0].record.why.contains("maintenance window"));
    assert!(
        found.windows(2).all(|w| w[0].score >= w[1].score),
        "best first"
    );
    assert!(found.iter().all(|r| r.score > 0.0));

    // The outcome is searchable too: only the halted run says "halted".
    let halted = memory.recall("which run was HALTED?", 5).await.unwrap();
    assert_eq!(halted[0].record.run, RunId::new("r4"));

    assert!(
        memory.recall("kubernetes", 5).await.unwrap().is_empty(),
        "no shared word"
    );
    assert!(memory.recall("postgres", 0).await.unwrap().is_empty());
}

#[tokio::test]
async fn equal_scores_rank_the_newer_record_first() {
    let memory = LongTermMemory::new();
    let old = record("a", "check the disk", "ok", Outcome::Succeeded, "ok", 10);
    let new = MemoryRecord {
        run: RunId::new("b"),
        at: old.at + Duration::from_secs(1),
        ..old.clone()
    };
    memory.remember(old).await.unwrap();
    memory.remember(new).await.unwrap();
    let found = memory.recall("disk", 2).await.unwrap();
    assert_eq!(found[0].score, found[1].score);
    assert_eq!(found[0].record.run, RunId::new("b"));
}

#[tokio::test]
async fn blank_queries_and_records_are_rejected_by_name() {
    let memory = filled(LongTermMemory::new()).await;
    for query in ["", "   ", "?!"] {
        let err = memory.recall(query, 3).await.unwrap_err();
        assert!(
            matches!(err, MemoryError::BadInput { what: "query", .. }),
            "{query:?}: {err}"
        );
    }
    let err = memory
        .remember(record("r", " ", "", Outcome::Failed, "\n", 9))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("bad record"), "{err}");
    assert_eq!(memory.len().await.unwrap(), 5, "nothing stored");
}

/// Embeds by counting words of three topics: databases, travel, deploys. Records with no
/// word in common with a query can still be near it.
struct TopicEmbedder;

impl TopicEmbedder {
    fn vector(text: &str) -> Vec<f32> {
        let topics: [&[&str]; 3] = [
            &[
                "postgres", "database", "table", "migrate", "orders", "index",
            ],
            &["flight", "lisbon", "travel", "booked"],
            &["deploy", "deployed", "production", "release"],
        ];
        let words: Vec<String> = text
            .split(|c: char| !c.is_alphanumeric())
            .map(str::to_lowercase)
            .collect();
        topics
            .iter()
            .map(|topic| words.iter().filter(|w| topic.contains(&w.as_str())).count() as f32)
            .collect()
    }
}

impl Embedder for TopicEmbedder {
    fn embed<'a>(
        &'a self,
        texts: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, MemoryError>> {
        Box::pin(async move { Ok(texts.iter().map(|t| Self::vector(t)).collect()) })
    }
    fn dimensions(&self) -> usize {
        3
    }
}

#[tokio::test]
async fn an_embedder_ranks_by_cosine_similarity() {
    let memory = filled(LongTermMemory::with_embedder(Arc::new(TopicEmbedder))).await;
    // "database" shares no word with any record, but is nearest the postgres migration.
    let found = memory.recall("database", 5).await.unwrap();
    let ids: Vec<u64> = found.iter().map(|r| r.id.0).collect();
    let query = TopicEmbedder::vector("database");
    let mut expected: Vec<(u64, f64)> = corpus()
        .iter()
        .enumerate()
        .map(|(i, r)| {
            (
                i as u64,
                cosine(&query, &TopicEmbedder::vector(&r.search_text())),
            )
        })
        .collect();
    // cosine desc, then newer first (records are newer as ids grow)
    expected.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.0.cmp(&a.0)));
    assert_eq!(ids, expected.iter().map(|e| e.0).collect::<Vec<_>>());
    assert_eq!(ids[0], 1);
    assert!(
        (found[0].score - 1.0).abs() < 1e-9,
        "only database words: {found:#?}"
    );
    for (r, (_, score)) in found.iter().zip(&expected) {
        assert!((r.score - score).abs() < 1e-12);
    }
    // Under an embedder every record is a candidate: k bounds the answer.
    assert_eq!(memory.recall("database", 2).await.unwrap().len(), 2);
}

#[tokio::test]
async fn the_hashing_embedder_recalls_shared_words_first() {
    let memory = filled(LongTermMemory::with_embedder(Arc::new(
        HashingEmbedder::new(256),
    )))
    .await;
    let found = memory.recall("book a flight to Lisbon", 5).await.unwrap();
    assert_eq!(found[0].record.run, RunId::new("r3"), "{found:#?}");
    assert!(found.windows(2).all(|w| w[0].score >= w[1].score));
}

/// Declares `declared` dimensions, returns vectors of `actual`, or fails.
struct BrokenEmbedder {
    declared: usize,
    actual: usize,
    fail: bool,
}

impl Embedder for BrokenEmbedder {
    fn embed<'a>(
        &'a self,
        texts: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, MemoryError>> {
        Box::pin(async move {
            if self.fail {
                return Err(MemoryError::Embedder(
                    "HTTP 503 from the embedding service".into(),
                ));
            }
            Ok(texts.iter().map(|_| vec![0.5; self.actual]).collect())
        })
    }
    fn dimensions(&self) -> usize {
        self.declared
    }
}

#[tokio::test]
async fn a_wrong_dimension_embedding_is_a_clear_error_and_stores_nothing() {
    let memory = LongTermMemory::with_embedder(Arc::new(BrokenEmbedder {
        declared: 4,
        actual: 3,
        fail: false,
    }));
    let err = memory.remember(corpus().remove(0)).await.unwrap_err();
    assert!(
        matches!(
            err,
            MemoryError::Dimension {
                expected: 4,
                got: 3
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("3 dimensions") && text.contains("declares 4"),
        "{text}"
    );
    assert_eq!(memory.len().await.unwrap(), 0);
    let err = memory.recall("anything", 1).await.unwrap_err();
    assert!(matches!(err, MemoryError::Dimension { .. }), "{err:?}");

    let failing = LongTermMemory::with_embedder(Arc::new(BrokenEmbedder {
        declared: 4,
        actual: 4,
        fail: true,
    }));
    let err = failing.remember(corpus().remove(0)).await.unwrap_err();
    assert!(err.to_string().contains("HTTP 503"), "{err}");
    assert!(failing.is_empty().await.unwrap());
}

// ---------------------------------------------------------------- context budget

/// 1 USD per million input tokens, 2 per million output: 1 and 2 micro-USD per token.
fn client(model: impl ChatModel + 'static) -> Client {
    let rates = Rates {
        input: 1_000_000,
        output: 2_000_000,
        cache_read: 1_000_000,
        cache_creation: 1_000_000,
        reasoning: 2_000_000,
    };
    let mut prices = PriceTable::default();
    prices.insert("summarizer", ModelPrice::new("test", rates));
    Client::builder()
        .provider("test", model)
        .prices(prices)
        .build()
        .unwrap()
}

fn ledger(micro_usd: Option<u64>) -> (Account, CallOptions) {
    let ledger = Ledger::new();
    let run = AccountId::Run("run-1".into());
    let account = ledger
        .open(
            run.clone(),
            None,
            Limits {
                micro_usd,
                ..Limits::default()
            },
        )
        .unwrap();
    (
        account,
        CallOptions::new(ledger.path(&run).unwrap(), CancellationToken::new()),
    )
}

/// Passes requests to `inner` and keeps a copy of each.
struct Capture<M> {
    inner: M,
    seen: Arc<Mutex<Vec<ChatRequest>>>,
}

impl<M: ChatModel> ChatModel for Capture<M> {
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        self.seen.lock().unwrap().push(request.clone());
        self.inner.chat(request)
    }
}

/// A provider that never answers.
struct Hang;

impl ChatModel for Hang {
    fn chat<'a>(&'a self, _: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(futures_util::future::pending())
    }
}

fn scripted(reply: ScriptedReply) -> (Client, Arc<Mutex<Vec<ChatRequest>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let model = Capture {
        inner: Scripted::new([reply]),
        seen: seen.clone(),
    };
    (client(model), seen)
}

fn context() -> Vec<ContextEntry> {
    let long = |s: &str| format!("{s} {}", "details of what happened. ".repeat(20));
    vec![
        ContextEntry::new(EntryKind::Goal, None, "Find why the nightly export fails"),
        ContextEntry::new(
            EntryKind::Plan,
            None,
            "1. read logs 2. check disk 3. check credentials",
        ),
        ContextEntry::new(EntryKind::Step, Some(1), "call read_logs(export)"),
        ContextEntry::new(
            EntryKind::Observation,
            Some(1),
            long("OBS-ONE: permission denied on /data"),
        ),
        ContextEntry::new(EntryKind::Step, Some(2), "call df(/data)"),
        ContextEntry::new(
            EntryKind::Observation,
            Some(2),
            long("OBS-TWO: disk 40% full"),
        ),
        ContextEntry::new(EntryKind::Step, Some(3), "call check_credentials(export)"),
        ContextEntry::new(
            EntryKind::Observation,
            Some(3),
            long("OBS-THREE: token expired yesterday"),
        ),
    ]
}

fn budget(max_tokens: u64, keep_recent: usize) -> ContextBudget {
    ContextBudget {
        max_tokens: max_tokens as usize,
        keep_recent,
        model: "claude-haiku-4-5".into(),
    }
}

const SUMMARY: &str = "Steps 1-2: export lacks permission on /data; disk is fine.";

#[tokio::test]
async fn under_or_at_budget_nothing_happens() {
    let (client, seen) = scripted(ScriptedReply::text(SUMMARY));
    let (account, options) = ledger(None);
    let mut entries = context();
    let tokens = estimate_tokens(&entries, "claude-haiku-4-5");
    let done = compact(
        &mut entries,
        &budget(tokens, 2),
        &client,
        "summarizer",
        &options,
    )
    .await
    .unwrap();
    assert_eq!(done, None, "exactly at the budget is within it");
    assert_eq!(entries, context());
    assert!(seen.lock().unwrap().is_empty(), "no model call");
    assert_eq!(account.snapshot().spent, Charge::ZERO);
}

#[tokio::test]
async fn one_token_over_budget_the_oldest_steps_become_one_summary() {
    let (client, seen) = scripted(ScriptedReply::text(SUMMARY).usage(Usage {
        input_tokens: 400,
        output_tokens: 30,
        ..Usage::default()
    }));
    let (account, options) = ledger(None);
    let mut entries = context();
    let tokens = estimate_tokens(&entries, "claude-haiku-4-5");

    let done = compact(
        &mut entries,
        &budget(tokens - 1, 2),
        &client,
        "summarizer",
        &options,
    )
    .await
    .unwrap()
    .expect("over budget: compacted");

    let mut expected = context();
    expected.splice(
        2..6,
        [ContextEntry::new(EntryKind::Summary, Some(2), SUMMARY)],
    );
    assert_eq!(
        entries, expected,
        "goal, plan, one summary in place, the last 2 kept"
    );
    assert_eq!(done.replaced, 4);
    assert_eq!(done.tokens_before, tokens);
    assert_eq!(
        done.tokens_after,
        estimate_tokens(&entries, "claude-haiku-4-5")
    );
    assert!(!done.over_budget);
    // 400 in x 1 + 30 out x 2 micro-USD
    assert_eq!(done.cost_micro_usd, 460);
    assert_eq!(done.usage.output_tokens, 30);
    let snapshot = account.snapshot();
    assert_eq!(
        snapshot.spent.micro_usd, done.cost_micro_usd,
        "charged on the ledger"
    );
    assert_eq!(snapshot.spent.model_calls, 1);
    assert_eq!(snapshot.reserved, Charge::ZERO, "reservation closed");

    // The summarizer saw the replaced entries as JSON data, and not the kept ones.
    let seen = seen.lock().unwrap();
    let Message::User { content } = &seen[0].messages[1] else {
        panic!("{:?}", seen[0])
    };
    assert!(
        content.contains("OBS-ONE") && content.contains("OBS-TWO"),
        "{content}"
    );
    assert!(
        !content.contains("OBS-THREE") && !content.contains("1. read logs"),
        "{content}"
    );
    assert!(content.contains(r#""kind":"observation""#), "{content}");
    assert!(content.contains("nightly export"), "the goal, for context");
}

#[tokio::test]
async fn a_second_compaction_folds_the_first_summary_in() {
    let (account, options) = ledger(None);
    let mut entries = context();
    let (first, _) = scripted(ScriptedReply::text(SUMMARY));
    let tokens = estimate_tokens(&entries, "claude-haiku-4-5");
    compact(
        &mut entries,
        &budget(tokens - 1, 2),
        &first,
        "summarizer",
        &options,
    )
    .await
    .unwrap()
    .unwrap();
    entries.push(ContextEntry::new(
        EntryKind::Step,
        Some(4),
        "call renew_token(export)",
    ));
    entries.push(ContextEntry::new(
        EntryKind::Observation,
        Some(4),
        "renewed",
    ));

    let (second, seen) = scripted(ScriptedReply::text(
        "Steps 1-3: permission and expired token.",
    ));
    let done = compact(&mut entries, &budget(1, 2), &second, "summarizer", &options)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.replaced, 3, "summary + step 3 + observation 3");
    let kinds: Vec<EntryKind> = entries.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EntryKind::Goal,
            EntryKind::Plan,
            EntryKind::Summary,
            EntryKind::Step,
            EntryKind::Observation
        ]
    );
    assert_eq!(entries[2].step, Some(3));
    assert!(
        done.over_budget,
        "a budget of 1 token cannot be met: said, not looped"
    );
    assert!(seen.lock().unwrap()[0].messages[1]
        .content()
        .contains(SUMMARY));
    assert_eq!(account.snapshot().spent.model_calls, 2);
}

#[tokio::test]
async fn nothing_summarizable_is_reported_without_a_call() {
    let (client, seen) = scripted(ScriptedReply::text(SUMMARY));
    let (_, options) = ledger(None);
    let mut entries = context();
    let done = compact(
        &mut entries,
        &budget(10, 6),
        &client,
        "summarizer",
        &options,
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        (done.replaced, done.over_budget, done.cost_micro_usd),
        (0, true, 0)
    );
    assert_eq!(entries, context());
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_halt_before_the_call_aborts_compaction_and_loses_nothing() {
    let (client, seen) = scripted(ScriptedReply::text(SUMMARY));
    let (account, options) = ledger(None);
    options.halt.cancel();
    let mut entries = context();
    let err = compact(
        &mut entries,
        &budget(10, 2),
        &client,
        "summarizer",
        &options,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, MemoryError::Llm(LlmError::Cancelled)),
        "{err:?}"
    );
    assert!(err.to_string().contains("context left unchanged"), "{err}");
    assert_eq!(entries, context(), "nothing lost");
    assert!(seen.lock().unwrap().is_empty(), "nothing sent");
    assert_eq!(account.snapshot().spent, Charge::ZERO);
    assert_eq!(account.snapshot().reserved, Charge::ZERO);
}

#[tokio::test]
async fn a_halt_during_the_call_aborts_compaction_and_loses_nothing() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let client = client(Capture {
        inner: Hang,
        seen: seen.clone(),
    });
    let (account, options) = ledger(None);
    let halt = options.halt.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        halt.cancel();
    });
    let mut entries = context();
    let err = tokio::time::timeout(
        Duration::from_secs(5),
        compact(
            &mut entries,
            &budget(10, 2),
            &client,
            "summarizer",
            &options,
        ),
    )
    .await
    .expect("the halt ends the call")
    .unwrap_err();
    assert!(
        matches!(err, MemoryError::Llm(LlmError::Cancelled)),
        "{err:?}"
    );
    assert_eq!(entries, context(), "nothing lost");
    let snapshot = account.snapshot();
    assert_eq!(snapshot.reserved, Charge::ZERO);
    // The request was sent and abandoned: its input estimate is charged (1 micro-USD a token).
    let input = estimate_input(&seen.lock().unwrap()[0]).tokens;
    assert_eq!(snapshot.spent.micro_usd, input);
}

#[tokio::test]
async fn a_ceiling_too_low_for_the_summary_fails_before_sending() {
    let (client, seen) = scripted(ScriptedReply::text(SUMMARY));
    let (account, options) = ledger(Some(5));
    let mut entries = context();
    let err = compact(
        &mut entries,
        &budget(10, 2),
        &client,
        "summarizer",
        &options,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, MemoryError::Llm(LlmError::CeilingReached(_))),
        "{err:?}"
    );
    assert_eq!(entries, context());
    assert!(seen.lock().unwrap().is_empty());
    assert_eq!(account.snapshot().spent, Charge::ZERO);
}

#[tokio::test]
async fn an_empty_summary_is_rejected_and_loses_nothing() {
    let (client, _) = scripted(ScriptedReply::text("  \n"));
    let (account, options) = ledger(None);
    let mut entries = context();
    let err = compact(
        &mut entries,
        &budget(10, 2),
        &client,
        "summarizer",
        &options,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            MemoryError::BadInput {
                what: "summary",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(entries, context());
    assert_eq!(
        account.snapshot().spent.model_calls,
        1,
        "the call was made and paid"
    );
}

// ---------------------------------------------------------------- the agent

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_agent_round_trips_through_agent_ref() {
    let runtime = Runtime::builder().arbiters(1).start().unwrap();
    let long_term = Arc::new(LongTermMemory::new());
    let run = RunId::new("run-7");
    let agent = {
        let (run, long_term) = (run.clone(), long_term.clone());
        runtime
            .spawn(AgentId::new("memory", "run-7"), move || {
                MemoryAgent::new(run, long_term)
            })
            .unwrap()
    };

    let put = |key: &str, value, ttl| Put {
        key: key.into(),
        value,
        ttl,
    };
    assert_eq!(
        agent.ask(put("b", json!({"rows": 3}), None)).await.unwrap(),
        None
    );
    assert_eq!(
        agent
            .ask(put("a", json!("x"), Some(Duration::from_secs(600))))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        agent.ask(put("b", json!(4), None)).await.unwrap(),
        Some(json!({"rows": 3}))
    );
    assert_eq!(
        agent.ask(Get { key: "b".into() }).await.unwrap(),
        Some(json!(4))
    );
    assert_eq!(agent.ask(Get { key: "zz".into() }).await.unwrap(), None);
    assert_eq!(
        agent.ask(Snapshot).await.unwrap(),
        vec![("a".to_string(), json!("x")), ("b".to_string(), json!(4))]
    );
    assert_eq!(
        agent.ask(Remove { key: "a".into() }).await.unwrap(),
        Some(json!("x"))
    );

    let mine = record(
        "run-7",
        "Migrate orders to Postgres",
        "restore hit a lock timeout",
        Outcome::Failed,
        "another job held the lock",
        1,
    );
    let id = agent
        .ask(Remember {
            record: mine.clone(),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(id, RecordId(0));
    let other = MemoryRecord {
        run: RunId::new("run-8"),
        ..mine.clone()
    };
    let err = agent
        .ask(Remember { record: other })
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        err.to_string().contains("run-8") && err.to_string().contains("run-7"),
        "{err}"
    );
    assert_eq!(
        long_term.len().await.unwrap(),
        1,
        "the other run's record was not stored"
    );

    let found = agent
        .ask(Recall {
            query: "postgres lock".into(),
            k: 3,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].id, &found[0].record), (id, &mine));
    let err = agent
        .ask(Recall {
            query: " ".into(),
            k: 3,
        })
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, MemoryError::BadInput { what: "query", .. }));

    runtime.shutdown(Duration::from_secs(5)).await;
}

#[test]
fn messages_are_plain_json() {
    let put: Put = serde_json::from_value(
        json!({"key": "k", "value": [1, 2], "ttl": {"secs": 5, "nanos": 0}}),
    )
    .unwrap();
    assert_eq!(put.ttl, Some(Duration::from_secs(5)));
    let recall: Recall = serde_json::from_value(json!({"query": "q", "k": 2})).unwrap();
    assert_eq!(recall.k, 2);
    let err =
        serde_json::from_value::<Recall>(json!({"query": "q", "k": 2, "limit": 1})).unwrap_err();
    assert!(err.to_string().contains("limit"), "{err}");
    let record = record("r", "g", "t", Outcome::Halted, "w", 1);
    let text = serde_json::to_string(&Remember {
        record: record.clone(),
    })
    .unwrap();
    assert!(text.contains(r#""outcome":"halted""#), "{text}");
    assert_eq!(
        serde_json::from_str::<Remember>(&text).unwrap().record,
        record
    );
}
