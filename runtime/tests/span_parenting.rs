//! A handler's span is a child of the sender's span across actors and threads, and the run id
//! travels with the message. (Its own test binary: it installs a global subscriber, because the
//! handlers run on the runtime's threads.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use impresario_runtime::{agent, AgentId, AgentRef, Envelope, RunId, Runtime};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// Records every new span as `label -> parent label`, where a label is the span name plus its
/// `agent.key` field when it has one.
/// A span's label and its parent's label.
type Edge = (String, Option<String>);

#[derive(Clone, Default)]
struct ParentRecorder {
    edges: Arc<Mutex<Vec<Edge>>>,
}

#[derive(Default)]
struct KeyVisitor(Option<String>);
impl Visit for KeyVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "agent.key" {
            self.0 = Some(value.to_owned());
        }
    }
    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

#[derive(Clone)]
struct Label(String);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for ParentRecorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
        let mut key = KeyVisitor::default();
        attrs.record(&mut key);
        let span = ctx.span(id).expect("span exists");
        let label = match key.0 {
            Some(key) => format!("{}:{key}", span.name()),
            None => span.name().to_owned(),
        };
        span.extensions_mut().insert(Label(label.clone()));
        let parent = span
            .parent()
            .and_then(|p| p.extensions().get::<Label>().map(|l| l.0.clone()));
        self.edges.lock().unwrap().push((label, parent));
    }
}

#[derive(Message)]
#[rtype(result = "Option<RunId>")]
struct Inner;

#[derive(Message)]
#[rtype(result = "Option<RunId>")]
struct Outer;

struct Back;
impl Actor for Back {
    type Context = Context<Self>;
}
agent!(Back);
impl Handler<Inner> for Back {
    type Result = Option<RunId>;
    fn handle(&mut self, _: Inner, _: &mut Context<Self>) -> Option<RunId> {
        let _work = tracing::info_span!("back_work").entered();
        Envelope::current().run
    }
}

struct Front {
    back: AgentRef<Back>,
}
impl Actor for Front {
    type Context = Context<Self>;
}
agent!(Front);
impl Handler<Outer> for Front {
    type Result = ResponseFuture<Option<RunId>>;
    fn handle(&mut self, _: Outer, _: &mut Context<Self>) -> Self::Result {
        // Captured in the handler: the async block runs later, outside it.
        let envelope = Envelope::current();
        let back = self.back.clone();
        Box::pin(async move { back.ask(Inner).envelope(envelope).await.unwrap() })
    }
}

#[test]
fn handler_spans_chain_to_the_caller_across_two_actors_and_the_run_travels() {
    let recorder = ParentRecorder::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(recorder.clone()))
        .unwrap();

    let rt = Runtime::builder().arbiters(2).start().unwrap();
    let back = rt.spawn(AgentId::new("back", "b"), || Back).unwrap();
    // On different arbiters, so the chain crosses threads.
    let options = impresario_runtime::SpawnOptions {
        placement: impresario_runtime::Placement::Arbiter((back.arbiter_index() + 1) % 2),
        ..Default::default()
    };
    let front = rt
        .spawn_with(AgentId::new("front", "f"), options, move || Front { back })
        .unwrap();

    let run = RunId::new("run-42");
    let seen_run = {
        let _caller = tracing::info_span!("caller").entered();
        front
            .ask(Outer)
            .envelope(Envelope::current().with_run(run.clone()))
            .timeout(Duration::from_secs(5))
            .wait()
            .unwrap()
    };
    assert_eq!(seen_run, Some(run), "the run id reached the second agent");
    rt.shutdown_blocking(Duration::from_secs(5));

    let edges = recorder.edges.lock().unwrap().clone();
    let parent_of = |label: &str| {
        edges
            .iter()
            .find(|(l, _)| l == label)
            .unwrap_or_else(|| panic!("no span {label} in {edges:?}"))
            .1
            .clone()
    };
    assert_eq!(parent_of("back_work").as_deref(), Some("handle:b"));
    assert_eq!(parent_of("handle:b").as_deref(), Some("handle:f"));
    assert_eq!(parent_of("handle:f").as_deref(), Some("caller"));
    assert_eq!(parent_of("caller"), None);
}
