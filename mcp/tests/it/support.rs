//! Finding the test servers, and calling a registry's tool the way the executor does.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use impresario_agents::{RegisteredTool, ToolContext, ToolError, ToolRegistry};
use impresario_mcp::{McpServer, ServerConfig};
use impresario_runtime::halt::HaltToken;
use impresario_runtime::RunId;
use serde_json::Value;

/// `server-everything`'s entry point, or a panic saying how to install it.
pub fn everything_js() -> PathBuf {
    impresario_mcp::reference_server().unwrap_or_else(|e| panic!("{e}"))
}

/// The fault server's binary (an example of this crate, built by `cargo test`).
pub fn fault_server() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let path = profile.join("examples").join("fault_server");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p impresario-mcp --example fault_server` (cargo test builds it)",
        path.display()
    );
    path
}

/// A fresh directory for one test's server-side files.
pub fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("impresario-mcp-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

/// The fault server over stdio, its files in `dir`.
pub fn fault_config(dir: &Path) -> ServerConfig {
    ServerConfig::stdio(
        "fault",
        fault_server().to_string_lossy(),
        Vec::<String>::new(),
    )
    .env("FAULT_DIR", dir.to_string_lossy())
    .timeout(Duration::from_secs(10))
}

/// The tools the fault server was called with, in order (its calls log).
pub fn calls(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("calls.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A registry holding one started server.
pub async fn registry(config: ServerConfig) -> (ToolRegistry, Arc<McpServer>) {
    let server = McpServer::start(config).await.expect("the server starts");
    let mut tools = ToolRegistry::new();
    tools.provide(server.clone()).expect("one provider");
    (tools, server)
}

/// Calls `name` as the executor does: validated, under its timeout.
pub async fn call(tools: &ToolRegistry, name: &str, args: Value) -> Result<Value, ToolError> {
    let tool: Arc<RegisteredTool> = tools
        .get(name)
        .unwrap_or_else(|| panic!("no tool {name}; have {:?}", tools.names()));
    let ctx = ToolContext {
        run: RunId::new("test-run"),
        tenant: "default".into(),
        step: 1,
        idempotency_key: "test-run/step-1".into(),
        halt: HaltToken::new(),
    };
    tool.run(args, ctx)?.await
}

/// Waits (at most 20 s) until `ready` holds.
pub async fn eventually(what: &str, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
