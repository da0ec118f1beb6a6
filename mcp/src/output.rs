//! A tool result as a run sees it: the server's content blocks as text (images and audio as a
//! one-line description, never their bytes), or its structured content once checked against the
//! tool's output schema; capped in size. The executor then delimits it as data.

use impresario_agents::executor::truncate;
use rmcp::model::CallToolResult;
use serde_json::Value;

/// Turns a result into the call's output: `Err` for a tool error (`isError`) or structured
/// content that breaks the tool's output schema.
pub(crate) fn output(
    result: CallToolResult,
    output_schema: Option<&jsonschema::Validator>,
    cap: usize,
) -> Result<Value, String> {
    let text = text(&result);
    if result.is_error == Some(true) {
        return Err(truncate(&text, cap));
    }
    if let Some(structured) = result.structured_content {
        if let Some(schema) = output_schema {
            let problems: Vec<String> = schema
                .iter_errors(&structured)
                .take(5)
                .map(|e| {
                    let at = e.instance_path().to_string();
                    format!("at {}: {e}", if at.is_empty() { "/" } else { &at })
                })
                .collect();
            if !problems.is_empty() {
                return Err(format!(
                    "the server's structured result does not match the tool's output schema: {}; \
                     the result was discarded",
                    problems.join("; ")
                ));
            }
        }
        let json = structured.to_string();
        return Ok(if json.len() <= cap {
            structured
        } else {
            Value::String(truncate(&json, cap))
        });
    }
    Ok(Value::String(truncate(&text, cap)))
}

/// The content blocks, one per line: text as is, anything else described.
fn text(result: &CallToolResult) -> String {
    let blocks: Vec<String> = result
        .content
        .iter()
        .map(|block| {
            let value = serde_json::to_value(block).unwrap_or(Value::Null);
            describe(&value)
        })
        .collect();
    blocks.join("\n")
}

fn describe(block: &Value) -> String {
    let field = |name: &str| block.get(name).and_then(Value::as_str).unwrap_or("");
    match field("type") {
        "text" => field("text").to_owned(),
        "resource_link" => format!("[resource link: {}]", field("uri")),
        "resource" => {
            let resource = block.get("resource").cloned().unwrap_or(Value::Null);
            match resource.get("text").and_then(Value::as_str) {
                Some(text) => text.to_owned(),
                None => format!(
                    "[resource: {}]",
                    resource.get("uri").and_then(Value::as_str).unwrap_or("")
                ),
            }
        }
        other => format!("[{other} content: {}]", field("mimeType")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn result(json: Value) -> CallToolResult {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn content_becomes_text_and_binary_is_described_not_copied() {
        let r = result(json!({"content": [
            {"type": "text", "text": "hello"},
            {"type": "image", "data": "aGVsbG8=", "mimeType": "image/png"}
        ]}));
        assert_eq!(
            output(r, None, 1000).unwrap(),
            json!("hello\n[image content: image/png]")
        );
        let err =
            result(json!({"content": [{"type": "text", "text": "no such file"}], "isError": true}));
        assert_eq!(output(err, None, 1000).unwrap_err(), "no such file");
        let big = result(json!({"content": [{"type": "text", "text": "x".repeat(5000)}]}));
        let cut = output(big, None, 100).unwrap();
        assert!(cut
            .as_str()
            .unwrap()
            .ends_with("[... truncated: 4900 more bytes]"));
    }

    #[test]
    fn structured_content_is_checked_against_the_output_schema() {
        let schema = jsonschema::validator_for(&json!({
            "type": "object", "properties": {"sum": {"type": "number"}}, "required": ["sum"]
        }))
        .unwrap();
        let good = result(json!({"content": [], "structuredContent": {"sum": 3}}));
        assert_eq!(
            output(good, Some(&schema), 1000).unwrap(),
            json!({"sum": 3})
        );
        let bad = result(json!({"content": [], "structuredContent": {"sum": "three"}}));
        let err = output(bad, Some(&schema), 1000).unwrap_err();
        assert!(err.contains("at /sum"), "{err}");
        assert!(
            err.contains("does not match the tool's output schema"),
            "{err}"
        );
    }
}
