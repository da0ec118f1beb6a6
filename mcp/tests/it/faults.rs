//! The fault server (rmcp's server side, a real child process over stdio): crashes mid-call,
//! hangs, malformed and huge results, results that break their schema, a changing tool list.

use std::time::Duration;

use impresario_agents::{Impact, ToolError};
use impresario_mcp::{Approval, McpServer};
use serde_json::json;

use crate::support::{call, calls, eventually, fault_config, registry, scratch};

#[tokio::test]
async fn annotations_become_impact_and_idempotency_and_allow_limits_the_tools() {
    let dir = scratch("annotations");
    let (tools, _server) = registry(fault_config(&dir)).await;
    let facts = |name: &str| {
        let tool = tools.get(name).unwrap_or_else(|| panic!("no {name}"));
        assert_eq!(tool.source(), "mcp:fault");
        (tool.impact(), tool.idempotent())
    };
    assert_eq!(facts("fault.lookup"), (Impact::ReadOnly, true));
    assert_eq!(facts("fault.destroy"), (Impact::HighImpact, false));
    assert_eq!(facts("fault.count"), (Impact::SideEffect, false));
    assert_eq!(
        tools.get("fault.count").unwrap().schema()["required"],
        json!(["label"])
    );

    let config = fault_config(&dir)
        .approval(Approval::Always)
        .allow(["lookup", "count"]);
    let (tools, _server) = registry(config).await;
    assert_eq!(tools.names(), ["fault.count", "fault.lookup"]);
    assert_eq!(
        tools.get("fault.lookup").unwrap().impact(),
        Impact::HighImpact
    );
}

#[tokio::test]
async fn arguments_are_validated_before_the_server_is_called() {
    let dir = scratch("validate");
    let (tools, _server) = registry(fault_config(&dir)).await;
    let err = call(&tools, "fault.count", json!({"label": 7}))
        .await
        .unwrap_err();
    let ToolError::InvalidArguments { tool, problems } = err else {
        panic!("not an argument error: {err:?}");
    };
    assert_eq!(tool, "fault.count");
    assert!(problems[0].starts_with("at /label:"), "{problems:?}");
    assert!(
        calls(&dir).is_empty(),
        "the server was called: {:?}",
        calls(&dir)
    );
    let ok = call(&tools, "fault.count", json!({"label": "a"}))
        .await
        .unwrap();
    assert_eq!(ok, json!("counted a"));
    assert_eq!(calls(&dir), ["count"]);
}

#[tokio::test]
async fn a_crash_mid_call_retries_an_idempotent_tool_once_on_the_restarted_server() {
    let dir = scratch("crash-read");
    let (tools, server) = registry(fault_config(&dir)).await;
    let out = call(&tools, "fault.flaky_read", json!({})).await.unwrap();
    assert_eq!(out, json!("flaky_read ok"));
    assert_eq!(
        calls(&dir),
        ["flaky_read", "flaky_read"],
        "one call, one retry"
    );
    assert_eq!(server.restarts(), 1);
}

#[tokio::test]
async fn a_crash_mid_call_of_a_non_idempotent_tool_is_an_error_and_not_repeated() {
    let dir = scratch("crash-write");
    let (tools, server) = registry(fault_config(&dir)).await;
    let err = call(&tools, "fault.flaky_write", json!({}))
        .await
        .unwrap_err();
    let ToolError::Failed { tool, message } = &err else {
        panic!("not a failure: {err:?}");
    };
    assert_eq!(tool, "fault.flaky_write");
    assert!(message.contains("whether it ran is unknown"), "{message}");
    assert!(message.contains("not retried"), "{message}");
    assert_eq!(calls(&dir), ["flaky_write"]);
    // The supervisor spawned the server again: the next call is served.
    eventually("the restart", || server.is_connected()).await;
    assert_eq!(
        call(&tools, "fault.lookup", json!({})).await.unwrap(),
        json!("found")
    );
    assert_eq!(server.restarts(), 1);
}

#[tokio::test]
async fn a_hanging_call_times_out_and_the_server_goes_on_serving() {
    let dir = scratch("hang");
    let (tools, _server) = registry(fault_config(&dir).timeout(Duration::from_secs(1))).await;
    let err = call(&tools, "fault.hang", json!({})).await.unwrap_err();
    assert_eq!(
        err,
        ToolError::Timeout {
            tool: "fault.hang".into(),
            after_ms: 1000
        }
    );
    assert_eq!(
        call(&tools, "fault.lookup", json!({})).await.unwrap(),
        json!("found")
    );
}

#[tokio::test]
async fn malformed_and_schema_breaking_results_are_tool_errors() {
    let dir = scratch("malformed");
    let (tools, _server) = registry(fault_config(&dir).timeout(Duration::from_secs(5))).await;
    let err = call(&tools, "fault.malformed", json!({}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ToolError::Failed { tool, .. } if tool == "fault.malformed"),
        "{err:?}"
    );
    let err = call(&tools, "fault.mismatch", json!({})).await.unwrap_err();
    let ToolError::Failed { message, .. } = &err else {
        panic!("not a failure: {err:?}");
    };
    assert!(
        message.contains("does not match the tool's output schema"),
        "{message}"
    );
    assert!(message.contains("at /sum"), "{message}");
    assert_eq!(
        call(&tools, "fault.lookup", json!({})).await.unwrap(),
        json!("found")
    );
}

#[tokio::test]
async fn huge_output_is_capped() {
    let dir = scratch("huge");
    let (tools, _server) = registry(fault_config(&dir).max_output_bytes(10_000)).await;
    let out = call(&tools, "fault.huge", json!({})).await.unwrap();
    let text = out.as_str().unwrap();
    assert!(text.len() < 10_100, "{} bytes", text.len());
    assert!(
        text.ends_with("[... truncated: 1990000 more bytes]"),
        "{}",
        &text[9_990..]
    );
}

#[tokio::test]
async fn tools_list_changed_adds_the_new_tool_to_the_registry() {
    let dir = scratch("list-changed");
    let (tools, _server) = registry(fault_config(&dir)).await;
    assert!(tools.get("fault.late").is_none());
    call(&tools, "fault.reveal", json!({})).await.unwrap();
    eventually("fault.late", || tools.get("fault.late").is_some()).await;
    assert_eq!(
        call(&tools, "fault.late", json!({})).await.unwrap(),
        json!("late tool")
    );
}

#[tokio::test]
async fn a_server_that_does_not_start_is_an_error_naming_it() {
    let config = impresario_mcp::ServerConfig::stdio("ghost", "/nonexistent/mcp-server", ["x"]);
    let err = McpServer::start(config).await.unwrap_err().to_string();
    assert!(err.contains("MCP server \"ghost\""), "{err}");
    assert!(err.contains("/nonexistent/mcp-server"), "{err}");
}
