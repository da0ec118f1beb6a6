//! OTLP trace export: `serve` with `[telemetry] otlp_endpoint` sends its spans to a loopback
//! receiver that decodes each OTLP/HTTP request with the official protobuf definitions
//! (`opentelemetry-proto`), and the span tree of one run is checked: one trace, the workflow at
//! its root, agents under it, the model call under the planner, the tool call under the
//! executor, with their GenAI names and attributes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::binary::Server;
use crate::provider::read_request;

/// Collects every export request it receives until dropped.
struct Receiver {
    url: String,
    requests: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    while let Some(body) = read_request(&mut socket, &mut buffer).await {
                        let request = ExportTraceServiceRequest::decode(body.as_slice())
                            .expect("an OTLP/HTTP protobuf trace export");
                        seen.lock().unwrap().push(request);
                        let ok = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                        if socket.write_all(ok.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Receiver {
            url,
            requests,
            task,
        }
    }

    /// Every span received, with the `service.name` of its resource.
    fn spans(&self) -> Vec<(String, Span)> {
        let requests = self.requests.lock().unwrap();
        let mut spans = Vec::new();
        for resource_spans in requests.iter().flat_map(|r| &r.resource_spans) {
            let attributes = resource_spans.resource.as_ref().map(|r| &r.attributes[..]);
            let service = text(attributes.unwrap_or_default(), "service.name").unwrap_or_default();
            for scope in &resource_spans.scope_spans {
                spans.extend(scope.spans.iter().map(|s| (service.clone(), s.clone())));
            }
        }
        spans
    }
}

/// The string value of attribute `key`.
fn text(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.clone())
        .and_then(|value| match value {
            any_value::Value::StringValue(s) => Some(s),
            _ => None,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_exports_its_genai_span_tree_over_otlp() {
    let receiver = Receiver::start().await;
    let extra = format!(
        "[telemetry]\notlp_endpoint = \"{}\"\nservice_name = \"impresario-test\"",
        receiver.url
    );
    let mut server = Server::start(&extra);
    let goal = json!({ "goal": "What is 7 plus 5?", "tools": ["calculator"] });
    let id = server.submit(goal).await;
    server.until(&id, |s| s["state"] == "succeeded").await;
    // Exit flushes the batch of spans not exported yet.
    assert!(server.terminate().success());

    let spans = receiver.spans();
    assert!(spans
        .iter()
        .all(|(service, _)| service == "impresario-test"));
    let by_id: HashMap<&[u8], &Span> = spans.iter().map(|(_, s)| (&s.span_id[..], s)).collect();
    let find = |name: &str| {
        spans
            .iter()
            .map(|(_, s)| s)
            .find(|s| s.name == name)
            .unwrap_or_else(|| {
                panic!(
                    "no span {name}: {:?}",
                    spans.iter().map(|s| &s.1.name).collect::<Vec<_>>()
                )
            })
    };
    let parent = |span: &Span| by_id.get(&span.parent_span_id[..]).map(|p| p.name.clone());
    let workflow = find("invoke_workflow run");
    assert!(
        workflow.parent_span_id.is_empty(),
        "the run's span is a root"
    );
    assert_eq!(
        text(&workflow.attributes, "impresario.run.id").as_deref(),
        Some(id.as_str())
    );
    let chat = find("chat scripted");
    assert_eq!(parent(chat).as_deref(), Some("invoke_agent planner"));
    let attribute = |span: &Span, key: &str| text(&span.attributes, key);
    assert_eq!(
        attribute(chat, "gen_ai.operation.name").as_deref(),
        Some("chat")
    );
    assert_eq!(
        attribute(chat, "gen_ai.request.model").as_deref(),
        Some("scripted")
    );
    let tool = find("execute_tool calculator");
    assert_eq!(
        attribute(tool, "gen_ai.tool.name").as_deref(),
        Some("calculator")
    );
    // Every span of the run hangs under the workflow, in the workflow's trace.
    for span in [chat, tool, find("invoke_agent planner")] {
        assert_eq!(span.trace_id, workflow.trace_id, "{}", span.name);
        let mut ancestor = span;
        for _ in 0..10 {
            match by_id.get(&ancestor.parent_span_id[..]) {
                Some(up) => ancestor = up,
                None => break,
            }
        }
        assert_eq!(
            ancestor.span_id, workflow.span_id,
            "{} is under the run",
            span.name
        );
    }
}
