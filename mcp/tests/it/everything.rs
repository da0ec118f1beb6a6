//! The reference server from the ecosystem, `@modelcontextprotocol/server-everything`
//! (node), over stdio and over Streamable HTTP.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use impresario_agents::{Impact, ToolError};
use impresario_mcp::{McpServer, ServerConfig};
use serde_json::json;

use crate::support::{call, eventually, everything_js, registry};

fn stdio() -> ServerConfig {
    let js = everything_js();
    ServerConfig::stdio(
        "everything",
        "node",
        [js.to_string_lossy().into_owned(), "stdio".into()],
    )
}

#[tokio::test]
async fn stdio_lists_tools_with_schemas_and_annotations_and_calls_them() {
    let (tools, _server) = registry(stdio()).await;
    let echo = tools.get("everything.echo").expect("echo is listed");
    assert_eq!(echo.source(), "mcp:everything");
    assert_eq!((echo.impact(), echo.idempotent()), (Impact::ReadOnly, true));
    assert_eq!(
        echo.schema()["properties"]["message"]["type"],
        json!("string")
    );

    let out = call(
        &tools,
        "everything.echo",
        json!({"message": "hi from impresario"}),
    )
    .await;
    assert!(out
        .unwrap()
        .as_str()
        .unwrap()
        .contains("hi from impresario"));
    let sum = call(&tools, "everything.get-sum", json!({"a": 2, "b": 40})).await;
    assert!(sum.unwrap().as_str().unwrap().contains("42"));
    let err = call(&tools, "everything.echo", json!({"message": 5}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ToolError::InvalidArguments { problems, .. } if problems[0].starts_with("at /message")),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_stdio_server_sees_its_configured_env_and_none_of_the_services_secrets() {
    std::env::set_var("IMPRESARIO_MCP_TEST_SECRET", "do-not-leak");
    let config = stdio().env("GREETING", "hello-env").allow(["get-env"]);
    let (tools, _server) = registry(config).await;
    assert_eq!(tools.names(), ["everything.get-env"]);
    let env = call(&tools, "everything.get-env", json!({})).await.unwrap();
    let env = env.as_str().unwrap();
    assert!(env.contains("hello-env"), "{env}");
    assert!(
        !env.contains("do-not-leak"),
        "a secret reached the server: {env}"
    );
}

/// server-everything's Streamable HTTP transport on a free loopback port.
struct HttpServer {
    child: Child,
    url: String,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn http_server(port: u16) -> HttpServer {
    let js = everything_js();
    let preload = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/server-everything/loopback.cjs");
    let child = Command::new("node")
        .arg("--require")
        .arg(preload)
        .arg(&js)
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("node runs");
    let server = HttpServer {
        child,
        url: format!("http://127.0.0.1:{port}/mcp"),
    };
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "server-everything did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

#[tokio::test]
async fn streamable_http_lists_and_calls_tools_with_headers_from_the_environment() {
    let server = http_server(free_port());
    std::env::set_var("IMPRESARIO_MCP_TEST_TOKEN", "Bearer test-token");
    let config = ServerConfig::http("remote", &server.url)
        .header("Authorization", "IMPRESARIO_MCP_TEST_TOKEN");
    let (tools, _mcp) = registry(config).await;
    let sum = tools.get("remote.get-sum").expect("get-sum is listed");
    assert_eq!(sum.source(), "mcp:remote");
    let out = call(&tools, "remote.get-sum", json!({"a": 1.5, "b": 2}))
        .await
        .unwrap();
    assert!(out.as_str().unwrap().contains("3.5"), "{out}");

    let missing = ServerConfig::http("remote", &server.url).header("X-Key", "IMPRESARIO_MCP_UNSET");
    let err = McpServer::start(missing).await.unwrap_err().to_string();
    assert!(
        err.contains("\"X-Key\"") && err.contains("IMPRESARIO_MCP_UNSET"),
        "{err}"
    );
    assert!(err.contains("is not set"), "{err}");
}

#[tokio::test]
async fn an_http_server_that_restarts_is_reached_again() {
    let port = free_port();
    let first = http_server(port);
    let (tools, mcp) = registry(ServerConfig::http("remote", &first.url)).await;
    let sum = |a: i64| call(&tools, "remote.get-sum", json!({"a": a, "b": 1}));
    assert!(sum(1).await.unwrap().as_str().unwrap().contains('2'));
    drop(first); // killed: its sessions are gone, and the HTTP transport does not notice
    let _second = http_server(port);
    // The next ping (every PING_EVERY) fails; the connection is opened again.
    let started = Instant::now();
    while mcp.restarts() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no reconnection"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eventually("the new connection", || mcp.is_connected()).await;
    let out = sum(41).await.unwrap();
    assert!(out.as_str().unwrap().contains("42"), "{out}");
}
