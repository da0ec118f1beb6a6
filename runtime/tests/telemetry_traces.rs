//! Spans and logs of a run. Its own test binary: it installs a global subscriber (handlers run on
//! the runtime's threads) that records every span with its fields and parent, and formats every
//! event and span, at every level, `log` records included, into a buffer to grep.

#[path = "it/llm_support.rs"]
mod llm_support;

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::thread::ThreadId;
use std::time::Duration;

use actix::prelude::*;
use impresario_runtime::ledger::{AccountId, Ledger};
use impresario_runtime::llm::{
    CallOptions, ChatRequest, ChatResponse, Client, LlmError, ModelPrice, OpenAi, OpenAiConfig,
    PriceTable, Rates, Scripted, ScriptedReply, Usage,
};
use impresario_runtime::telemetry::{execute_tool, invoke_agent, invoke_workflow};
use impresario_runtime::{agent, AgentId, AgentRef, Runtime};
use llm_support::{openai_ok, Reply, Server};
use tokio_util::sync::CancellationToken;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Instrument, Subscriber};
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// A span as recorded: name, fields (with values recorded later), parent, creating thread.
#[derive(Debug, Clone)]
struct SpanRecord {
    name: String,
    fields: HashMap<String, String>,
    parent: Option<u64>,
    thread: ThreadId,
}

#[derive(Default)]
struct Captured {
    spans: Mutex<HashMap<u64, SpanRecord>>,
    log: Mutex<Vec<u8>>,
}

struct Fields<'a>(&'a mut HashMap<String, String>);
impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

struct SpanLayer(&'static Captured);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for SpanLayer {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        let parent = ctx
            .span(id)
            .and_then(|s| s.parent())
            .map(|p| p.id().into_u64());
        let record = SpanRecord {
            name: attrs.metadata().name().to_owned(),
            fields,
            parent,
            thread: std::thread::current().id(),
        };
        self.0.spans.lock().unwrap().insert(id.into_u64(), record);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: LayerContext<'_, S>) {
        if let Some(span) = self.0.spans.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut Fields(&mut span.fields));
        }
    }
}

struct LogWriter(&'static Captured);
impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.log.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the subscriber once for the whole binary.
fn captured() -> &'static Captured {
    static CAPTURED: OnceLock<&'static Captured> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured: &'static Captured = Box::leak(Box::default());
        tracing_subscriber::registry()
            .with(SpanLayer(captured))
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(move || LogWriter(captured))
                    .with_span_events(FmtSpan::CLOSE)
                    .with_ansi(false),
            )
            .init(); // also routes `log` records (reqwest's) into tracing
        captured
    })
}

impl Captured {
    /// The spans with field `key` equal to `value`.
    fn find(&self, key: &str, value: &str) -> Vec<(u64, SpanRecord)> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| s.fields.get(key).map(String::as_str) == Some(value))
            .map(|(id, s)| (*id, s.clone()))
            .collect()
    }

    /// The `otel.name`s of a span's ancestors that have one, nearest first.
    fn named_ancestors(&self, id: u64) -> Vec<String> {
        let spans = self.spans.lock().unwrap();
        let mut names = Vec::new();
        let mut next = spans[&id].parent;
        while let Some(parent) = next {
            let span = &spans[&parent];
            names.extend(span.fields.get("otel.name").cloned());
            next = span.parent;
        }
        names
    }
}

fn offline_client(model: &str, record_content: bool, reply: &str) -> Client {
    let mut prices = PriceTable::default();
    let rates = Rates {
        input: 1_000_000,
        output: 4_000_000,
        ..Rates::default()
    };
    prices.insert(model, ModelPrice::new("scripted", rates));
    let usage = Usage {
        input_tokens: 21,
        output_tokens: 9,
        ..Usage::default()
    };
    Client::builder()
        .prices(prices)
        .provider(
            "scripted",
            Scripted::new([ScriptedReply::text(reply).usage(usage)]),
        )
        .record_content(record_content)
        .build()
        .unwrap()
}

fn options() -> CallOptions {
    let ledger = Ledger::new();
    CallOptions::new(
        ledger.path(&AccountId::Global).unwrap(),
        CancellationToken::new(),
    )
}

/// Asks the model, then calls a tool, each in its span.
struct Worker {
    id: AgentId,
    client: Client,
    model: String,
}
impl Actor for Worker {
    type Context = Context<Self>;
}
agent!(Worker);

#[derive(Message)]
#[rtype(result = "Result<ChatResponse, LlmError>")]
struct Step(String);

impl Handler<Step> for Worker {
    type Result = ResponseFuture<Result<ChatResponse, LlmError>>;
    fn handle(&mut self, Step(question): Step, _: &mut Context<Self>) -> Self::Result {
        let client = self.client.clone();
        let request = ChatRequest::new(self.model.clone()).user(question);
        let call_id = format!("call-{}", self.model);
        Box::pin(
            async move {
                let answer = client.chat(request, &options()).await?;
                async { tokio::task::yield_now().await }
                    .instrument(execute_tool("search", &call_id))
                    .await;
                Ok(answer)
            }
            .instrument(invoke_agent(&self.id.kind, &self.id)),
        )
    }
}

/// Hands the goal to the worker, on another arbiter.
struct Orchestrator {
    id: AgentId,
    worker: AgentRef<Worker>,
}
impl Actor for Orchestrator {
    type Context = Context<Self>;
}
agent!(Orchestrator);

#[derive(Message)]
#[rtype(result = "Result<ChatResponse, LlmError>")]
struct Goal(String);

impl Handler<Goal> for Orchestrator {
    type Result = ResponseFuture<Result<ChatResponse, LlmError>>;
    fn handle(&mut self, Goal(goal): Goal, _: &mut Context<Self>) -> Self::Result {
        let worker = self.worker.clone();
        Box::pin(
            async move { worker.ask(Step(goal)).await.expect("the worker answers") }
                .instrument(invoke_agent(&self.id.kind, &self.id)),
        )
    }
}

/// A workflow span around two agents on two arbiters; the last one calls a model and a tool.
async fn run_through_two_agents(model: &str, record_content: bool, goal: &str) -> ChatResponse {
    let rt = Runtime::builder().arbiters(2).start().unwrap();
    let client = offline_client(model, record_content, "Lisbon in spring");
    let worker_id = AgentId::new("worker", model);
    let worker = rt
        .spawn(worker_id.clone(), {
            let model = model.to_owned();
            move || Worker {
                id: worker_id,
                client,
                model,
            }
        })
        .unwrap();
    let orchestrator_id = AgentId::new("orchestrator", model);
    let orchestrator = rt
        .spawn(orchestrator_id.clone(), move || Orchestrator {
            id: orchestrator_id,
            worker,
        })
        .unwrap();
    assert_ne!(
        orchestrator.arbiter_index(),
        rt.directory()
            .lookup::<Worker>(&AgentId::new("worker", model))
            .unwrap()
            .arbiter_index(),
        "the two agents run on different threads"
    );
    let answer = async { orchestrator.ask(Goal(goal.to_owned())).await }
        .instrument(invoke_workflow("trip", &format!("run-{model}")))
        .await
        .unwrap()
        .unwrap();
    rt.shutdown(Duration::from_secs(5)).await;
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_chain_from_the_workflow_through_agents_to_the_model_and_tool() {
    let captured = captured();
    let answer = run_through_two_agents("model-a", false, "Plan a trip").await;

    let chats = captured.find("gen_ai.request.model", "model-a");
    assert_eq!(chats.len(), 1, "one chat span");
    let (chat_id, chat) = &chats[0];
    assert_eq!(chat.name, "chat");
    assert_eq!(
        captured.named_ancestors(*chat_id),
        [
            "invoke_agent worker",
            "invoke_agent orchestrator",
            "invoke_workflow trip"
        ]
    );
    let workflow = &captured.find("impresario.run.id", "run-model-a")[0].1;
    assert_ne!(
        workflow.thread, chat.thread,
        "the parent context crossed threads"
    );

    let f = |k: &str| chat.fields.get(k).map(String::as_str);
    assert_eq!(f("otel.name"), Some("chat model-a"));
    assert_eq!(f("gen_ai.operation.name"), Some("chat"));
    assert_eq!(f("gen_ai.provider.name"), Some("scripted"));
    assert_eq!(f("gen_ai.response.model"), Some("model-a"));
    assert_eq!(f("gen_ai.usage.input_tokens"), Some("21"));
    assert_eq!(f("gen_ai.usage.output_tokens"), Some("9"));
    assert_eq!(f("gen_ai.response.finish_reasons"), Some("stop"));
    let cost = answer.cost_micro_usd.unwrap();
    assert_eq!(cost, 21 + 9 * 4);
    assert_eq!(
        f("impresario.cost_micro_usd"),
        Some(cost.to_string().as_str())
    );
    assert_eq!(f("error.type"), None, "it did not fail");
    assert_eq!(f("gen_ai.input.messages"), None, "content is opt-in");
    assert_eq!(f("gen_ai.output.messages"), None, "content is opt-in");

    let (tool_id, tool) = &captured.find("gen_ai.tool.call.id", "call-model-a")[0];
    assert_eq!(tool.fields["otel.name"], "execute_tool search");
    assert_eq!(tool.fields["gen_ai.operation.name"], "execute_tool");
    assert_eq!(tool.fields["gen_ai.tool.name"], "search");
    assert_eq!(
        captured.named_ancestors(*tool_id),
        [
            "invoke_agent worker",
            "invoke_agent orchestrator",
            "invoke_workflow trip"
        ]
    );
    let agent = &captured.find("otel.name", "invoke_agent worker")[0].1;
    assert_eq!(agent.fields["gen_ai.agent.name"], "worker");
    assert_eq!(agent.fields["gen_ai.operation.name"], "invoke_agent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_and_completions_are_recorded_only_when_opted_in() {
    let captured = captured();
    run_through_two_agents("model-b", true, "Plan a trip to Porto").await;
    let chat = &captured.find("gen_ai.request.model", "model-b")[0].1;
    let input = &chat.fields["gen_ai.input.messages"];
    assert!(input.contains("Plan a trip to Porto"), "{input}");
    let output = &chat.fields["gen_ai.output.messages"];
    assert!(output.contains("Lisbon in spring"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_api_key_appears_in_any_log_or_span() {
    const KEY: &str = "sk-test-4c7d1e0b9a2f4e6b8d3c5a7f9e1b2d4c";
    let captured = captured();
    // The first model's server rejects the key and echoes it back, as some servers do; the
    // fallback model answers.
    let server = Server::start([
        Reply::json(
            401,
            serde_json::json!({"error": {"message": format!("Incorrect API key provided: {KEY}"), "type": "invalid_request_error"}}),
        ),
        Reply::json(200, openai_ok("hello", 12, 3)),
    ])
    .await;
    let mut config = OpenAiConfig::openai(KEY);
    config.base_url = format!("{}/v1", server.url);
    tracing::info!(?config, "provider configured");
    let client = Client::builder()
        .provider("openai", OpenAi::new(config).unwrap())
        .fallback("gpt-4o", ["gpt-4o-mini"])
        .record_content(true)
        .build()
        .unwrap();
    let answer = client
        .chat(ChatRequest::new("gpt-4o").user("Say hello"), &options())
        .instrument(invoke_workflow("greeting", "run-key"))
        .await
        .unwrap();
    assert_eq!(answer.content, "hello");
    let sent = server.seen();
    assert_eq!(
        sent[0].header("authorization"),
        Some(&*format!("Bearer {KEY}"))
    );

    let log = String::from_utf8(captured.log.lock().unwrap().clone()).unwrap();
    assert!(
        log.contains("falling back"),
        "the rejection was logged:\n{log}"
    );
    assert!(
        log.contains("Incorrect API key provided: <redacted>"),
        "with the key redacted:\n{log}"
    );
    assert!(
        log.contains("gen_ai.usage.input_tokens=12"),
        "spans were logged:\n{log}"
    );
    assert!(!log.contains(KEY), "the key leaked into the log:\n{log}");
    for span in captured.spans.lock().unwrap().values() {
        for (field, value) in &span.fields {
            assert!(
                !value.contains(KEY),
                "the key leaked into {}.{field}",
                span.name
            );
        }
    }
}
