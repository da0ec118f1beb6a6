//! `GET /v1/tools` and runs asking for tools, with an MCP server configured as `[[tools.mcp]]`:
//! the reference server-everything (npm, installed by `.ci/run`) spawned by the service.

use serde_json::{json, Value};

use crate::binary::Server;

fn everything_server(allow_tenants: &str) -> Server {
    let js = impresario::mcp::reference_server().unwrap_or_else(|e| panic!("{e}"));
    Server::start(&format!(
        "[[tools.mcp]]\nname = \"everything\"\ncommand = \"node\"\nargs = [{:?}, \"stdio\"]\n\
         allow = [\"echo\", \"get-sum\"]\nallow_tenants = {allow_tenants}\n",
        js.to_string_lossy()
    ))
}

fn names(tools: &Value) -> Vec<&str> {
    tools["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn tools_lists_builtin_and_mcp_tools_with_source_schema_impact_and_idempotency() {
    let server = everything_server("[\"acme\"]");
    let (status, tools) = server.get("/v1/tools").await;
    assert_eq!(status, 200, "{tools}");
    assert_eq!(
        names(&tools),
        [
            "calculator",
            "everything.echo",
            "everything.get-sum",
            "save_note",
            "search_notes"
        ]
    );
    let echo = &tools["tools"][1];
    assert_eq!(echo["source"], "mcp:everything");
    assert_eq!(echo["impact"], "read_only");
    assert_eq!(echo["idempotent"], true);
    assert_eq!(echo["schema"]["properties"]["message"]["type"], "string");
    let save = &tools["tools"][3];
    assert_eq!(
        (&save["source"], &save["impact"], &save["idempotent"]),
        (&json!("builtin"), &json!("side_effect"), &json!(false))
    );
    // Another tenant sees only the built-in tools.
    let (_, theirs) = server.get("/v1/tools?tenant=other").await;
    assert_eq!(names(&theirs), ["calculator", "save_note", "search_notes"]);
}

#[tokio::test]
async fn runs_asking_for_unknown_disallowed_or_other_tenants_tools_get_422_naming_them() {
    let server = everything_server("[\"acme\"]");
    let goal = "Say hello";
    for (body, named) in [
        // Listed by the server but not in `allow`.
        (
            json!({"goal": goal, "tools": ["everything.get-env"]}),
            "everything.get-env",
        ),
        (
            json!({"goal": goal, "tools": ["nowhere.echo"]}),
            "nowhere.echo",
        ),
        (
            json!({"goal": goal, "tenant": "other", "tools": ["everything.echo"]}),
            "tenant \"other\" may not use tool \"everything.echo\"",
        ),
    ] {
        let (status, answer) = server.post("/v1/runs", body.clone()).await;
        assert_eq!(status, 422, "{body} -> {answer}");
        assert_eq!(answer["field"], "tools", "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(named),
            "{answer}"
        );
    }
    let id = server
        .submit(json!({"goal": goal, "tenant": "acme", "tools": ["everything.echo"]}))
        .await;
    assert!(id.starts_with("run-"), "{id}");
}

#[test]
fn a_server_that_does_not_start_stops_the_service_naming_it() {
    let dir = std::sync::Arc::new(crate::binary::TempDir::new());
    let config = dir.write(
        "impresario.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\ntoken = \"0123456789abcdef0123\"\n\
         [[tools.mcp]]\nname = \"ghost\"\ncommand = \"/nonexistent/mcp-server\"\n",
    );
    let out = crate::binary::impresario(&dir)
        .env("IMPRESARIO_MODELS__PROVIDER", "offline")
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("MCP server \"ghost\""), "{stderr}");
    assert!(stderr.contains("/nonexistent/mcp-server"), "{stderr}");
}
