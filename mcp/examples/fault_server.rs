//! A misbehaving MCP server for impresario-mcp's tests, written with rmcp's server side; it
//! speaks MCP over stdio. Not an example to copy: each tool fails in its own way.
//!
//! Every call is appended to `$FAULT_DIR/calls.log` (one tool name a line), so tests count
//! calls on the server side. Tools:
//!
//! - `count` (no annotations: a side effect, not idempotent): `{"label": string}`, answers
//!   `counted <label>`.
//! - `lookup` (read-only): answers `found`.
//! - `destroy` (destructive): answers `destroyed`.
//! - `flaky_read` (read-only) and `flaky_write` (not idempotent): the first call of each (per
//!   `$FAULT_DIR`) kills the process mid-call; later calls answer `<tool> ok`.
//! - `hang` (read-only): never answers.
//! - `malformed`: answers with a `result` that is not a tool result.
//! - `huge`: answers 2 MB of text.
//! - `mismatch`: declares an output schema `{sum: number}` and answers `{sum: "three"}`.
//! - `reveal`: adds the tool `late` and sends `tools/list_changed`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// The marker the `malformed` tool answers; the output relay rewrites its response.
const MALFORM: &str = "__MALFORMED__";

#[derive(Clone)]
struct Fault {
    dir: PathBuf,
    revealed: Arc<AtomicBool>,
}

fn tool(name: &str, annotations: Value, input: Value) -> Tool {
    serde_json::from_value(json!({
        "name": name,
        "description": format!("fault server tool {name}"),
        "inputSchema": input,
        "annotations": annotations,
    }))
    .expect("a valid tool")
}

fn no_args() -> Value {
    json!({"type": "object", "properties": {}})
}

impl Fault {
    fn tools(&self) -> Vec<Tool> {
        let read = json!({"readOnlyHint": true});
        let mut tools = vec![
            tool(
                "count",
                json!({}),
                json!({"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}),
            ),
            tool("lookup", read.clone(), no_args()),
            tool("destroy", json!({"destructiveHint": true}), no_args()),
            tool("flaky_read", read.clone(), no_args()),
            tool("flaky_write", json!({}), no_args()),
            tool("hang", read.clone(), no_args()),
            tool("malformed", read.clone(), no_args()),
            tool("huge", read.clone(), no_args()),
            tool("reveal", json!({}), no_args()),
        ];
        let mut mismatch = tool("mismatch", read.clone(), no_args());
        mismatch.output_schema = Some(Arc::new(
            serde_json::from_value(json!({
                "type": "object", "properties": {"sum": {"type": "number"}}, "required": ["sum"]
            }))
            .expect("an object"),
        ));
        tools.push(mismatch);
        if self.revealed.load(Ordering::SeqCst) {
            tools.push(tool("late", read, no_args()));
        }
        tools
    }

    fn log(&self, tool: &str) {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("calls.log"))
            .expect("the calls log opens");
        writeln!(file, "{tool}").expect("the calls log is writable");
        file.sync_all().expect("the calls log syncs");
    }

    /// The first call per `$FAULT_DIR` kills the process; later ones answer.
    fn crash_once(&self, tool: &str) -> CallToolResult {
        let marker = self.dir.join(format!("{tool}.crashed"));
        if !marker.exists() {
            std::fs::write(&marker, b"").expect("the marker is writable");
            std::process::exit(3);
        }
        text(format!("{tool} ok"))
    }
}

fn text(text: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(text)])
}

impl ServerHandler for Fault {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
    }

    async fn list_tools(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.to_string();
        self.log(&name);
        let args = Value::Object(request.arguments.unwrap_or_default());
        let result = match name.as_str() {
            "count" => text(format!("counted {}", args["label"].as_str().unwrap_or("?"))),
            "lookup" => text("found"),
            "destroy" => text("destroyed"),
            "late" => text("late tool"),
            "flaky_read" | "flaky_write" => self.crash_once(&name),
            "hang" => {
                tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                text("woke up")
            }
            "malformed" => text(MALFORM),
            "huge" => text("x".repeat(2_000_000)),
            "mismatch" => CallToolResult::structured(json!({"sum": "three"})),
            "reveal" => {
                self.revealed.store(true, Ordering::SeqCst);
                let _ = context.peer.notify_tool_list_changed().await;
                text("revealed")
            }
            other => return Err(ErrorData::invalid_params(format!("no tool {other}"), None)),
        };
        Ok(result.into())
    }
}

/// Copies the server's output to stdout, replacing the `result` of a response that carries
/// [`MALFORM`] with something that is not a tool result.
async fn relay(from: tokio::io::DuplexStream) -> std::io::Result<()> {
    let mut lines = tokio::io::BufReader::new(from).lines();
    let mut stdout = tokio::io::stdout();
    while let Some(line) = lines.next_line().await? {
        let line = if line.contains(MALFORM) {
            let mut message: Value = serde_json::from_str(&line)?;
            message["result"] = json!({"content": "not a list", "isError": "perhaps"});
            message.to_string()
        } else {
            line
        };
        stdout.write_all(line.as_bytes()).await?;
        stdout.write_all(b"\n").await?;
        stdout.flush().await?;
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::var_os("FAULT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let fault = Fault {
        dir,
        revealed: Arc::new(AtomicBool::new(false)),
    };
    eprintln!("fault server: ready on stdio");
    let (server_out, relay_in) = tokio::io::duplex(1 << 16);
    let relaying = tokio::spawn(relay(relay_in));
    let service = fault.serve((tokio::io::stdin(), server_out)).await?;
    service.waiting().await?;
    relaying.abort();
    Ok(())
}
