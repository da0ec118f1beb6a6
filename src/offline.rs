//! [`OfflineModel`]: a deterministic stand-in for an LLM, so the `impresario` binary and the
//! service answer any goal without a network or a script per request. It is not a language
//! model and does not reason; it exists so runs can be tried, demonstrated and tested offline.
//!
//! What it does, by request:
//! - **Planning** (a request for the `plan` schema): if nothing has run yet, it plans one call
//!   of each allowed tool it can fill in from the goal, in the order the planner's instructions
//!   list them: of [`crate::tools`], `search_notes` with the goal as query, `save_note` with the
//!   goal as text, `calculator` when the goal holds two numbers and an operation such as `plus`
//!   or `*`; any other tool (an MCP server's) whose arguments schema has exactly one required
//!   parameter, a string, with the goal as that parameter. With none, it answers at once. Once
//!   steps have run, it answers with what the tools returned (or why they failed).
//! - **Anything else** (a `model_call` step, a summary): it echoes the start of the question.
//!
//! Token usage is estimated from the text, so costs show as with a real model; `latency` makes
//! every call take that long (for demonstrations, and for tests that need a run to be slow).

use std::time::Duration;

use futures_util::future::BoxFuture;
use impresario_runtime::llm::{
    estimate, ChatModel, ChatRequest, ChatResponse, FinishReason, LlmError, Message,
};
use serde_json::{json, Value};

/// The offline stand-in model. See the [module documentation](self).
#[derive(Debug, Clone, Default)]
pub struct OfflineModel {
    latency: Duration,
}

impl OfflineModel {
    /// A model that answers at once.
    pub fn new() -> Self {
        OfflineModel::default()
    }

    /// Every call takes `latency` (a halt still cuts it short).
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }
}

impl ChatModel for OfflineModel {
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move {
            if !self.latency.is_zero() {
                tokio::time::sleep(self.latency).await;
            }
            let content = answer(request);
            Ok(ChatResponse {
                model: request.model.clone(),
                usage: estimate::estimate_usage(request, &content, &[]),
                content,
                tool_calls: Vec::new(),
                finish_reason: FinishReason::Stop,
                request_id: None,
                rate_limit: None,
                cost_micro_usd: None,
                cache_hit: false,
            })
        })
    }
}

const NOTE: &str = "(offline stand-in model: it calls the allowed tools with the goal's words and repeats what they return)";

fn answer(request: &ChatRequest) -> String {
    let system = text_of(request, |m| match m {
        Message::System { content } => Some(&**content),
        _ => None,
    });
    let user = text_of(request, |m| match m {
        Message::User { content } => Some(content),
        _ => None,
    });
    let planning = request
        .output_schema
        .as_ref()
        .is_some_and(|s| s.name == "plan");
    if !planning {
        let start: String = user.chars().take(200).collect();
        return format!("{NOTE} You asked: {start}");
    }
    let goal = goal(user);
    let step = |value: Value| json!({ "steps": [value] }).to_string();
    let results = results(user);
    if !results.is_empty() {
        return step(json!({
            "type": "final_answer",
            "answer": format!("{} {NOTE}", results.join("; "))
        }));
    }
    let steps: Vec<Value> = listed_tools(system)
        .into_iter()
        .filter_map(|(tool, schema)| {
            let arguments = match tool {
                "search_notes" => json!({ "query": goal }),
                "save_note" => json!({ "text": goal }),
                "calculator" => {
                    let (op, a, b) = arithmetic(goal)?;
                    json!({ "op": op, "a": a, "b": b })
                }
                _ => json!({ one_string_parameter(&schema?)?: goal }),
            };
            Some(json!({
                "type": "tool_call", "tool": tool, "arguments": arguments,
                "why": "the offline model calls each allowed tool it can fill in from the goal"
            }))
        })
        .collect();
    if steps.is_empty() {
        return step(json!({
            "type": "final_answer",
            "answer": format!("No tool this run may use applies to {goal:?}, so there is nothing to look up. {NOTE}")
        }));
    }
    json!({ "steps": steps }).to_string()
}

/// The text of the first message `pick` accepts ("" if none).
fn text_of<'a>(
    request: &'a ChatRequest,
    pick: impl Fn(&'a Message) -> Option<&'a String>,
) -> &'a str {
    request
        .messages
        .iter()
        .find_map(pick)
        .map_or("", String::as_str)
}

/// The goal in the planner's prompt (`Goal: ...`, up to the next section).
fn goal(prompt: &str) -> &str {
    let rest = prompt.strip_prefix("Goal: ").unwrap_or(prompt);
    let end = [
        "\n\nWhat happened so far:",
        "\n\nThe last plan",
        "\n\nWhat is the plan now?",
    ]
    .iter()
    .filter_map(|marker| rest.find(marker))
    .min()
    .unwrap_or(rest.len());
    rest[..end].trim()
}

/// The tools the planner's instructions list (`- <name>: <description> Arguments schema:
/// <JSON>`), in their order, each with its arguments schema if it parses.
fn listed_tools(system: &str) -> Vec<(&str, Option<Value>)> {
    const SCHEMA: &str = " Arguments schema: ";
    let mut tools = Vec::new();
    let mut before = system;
    while let Some(at) = before.find(SCHEMA) {
        let rest = &before[at + SCHEMA.len()..];
        // The tool's line is the last `- <name>:` before its schema (a description may hold
        // line breaks).
        let name = before[..at]
            .rmatch_indices("\n- ")
            .filter_map(|(i, _)| before[i + 3..at].split_once(": ").map(|(n, _)| n))
            .find(|n| !n.is_empty() && !n.contains(char::is_whitespace));
        let schema = serde_json::Deserializer::from_str(rest)
            .into_iter::<Value>()
            .next()
            .and_then(Result::ok);
        if let Some(name) = name {
            tools.push((name, schema));
        }
        before = rest;
    }
    tools
}

/// The name of the only required parameter of `schema`, if it is a string.
fn one_string_parameter(schema: &Value) -> Option<String> {
    let [name] = schema["required"].as_array()?.as_slice() else {
        return None;
    };
    let name = name.as_str()?;
    (schema["properties"][name]["type"] == "string").then(|| name.to_owned())
}

/// What the steps so far returned (`tool: output`) or why they failed, from the history.
fn results(prompt: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = prompt;
    while let Some(start) = rest.find("<tool_output tool=\"") {
        let block = &rest[start + "<tool_output tool=\"".len()..];
        let (Some(name_end), Some(body_start), Some(end)) = (
            block.find('"'),
            block.find(">\n"),
            block.find("\n</tool_output>"),
        ) else {
            break;
        };
        out.push(format!(
            "{}: {}",
            &block[..name_end],
            &block[body_start + 2..end]
        ));
        rest = &block[end..];
    }
    for line in prompt.lines() {
        if let Some((step, failure)) = line.split_once(" result: failed: ") {
            out.push(format!("{step} failed: {failure}"));
        }
    }
    out
}

/// Two numbers and an operation named in `goal` (`3 times 12`, `7 + 5`, ...).
fn arithmetic(goal: &str) -> Option<(&'static str, f64, f64)> {
    let lower = goal.to_lowercase();
    let words: Vec<&str> = lower.split_whitespace().collect();
    let has = |names: &[&str]| {
        words.iter().any(|w| {
            names.contains(
                &w.trim_matches(|c: char| c.is_ascii_punctuation() && !"+-*/×÷".contains(c)),
            )
        })
    };
    let op = if has(&["+", "plus", "add", "sum"]) {
        "add"
    } else if has(&["-", "minus", "subtract"]) {
        "sub"
    } else if has(&["*", "×", "x", "times", "multiplied", "product"]) {
        "mul"
    } else if has(&["/", "÷", "divided"]) {
        "div"
    } else {
        return None;
    };
    let mut numbers = words.iter().filter_map(|w| {
        w.trim_matches(|c: char| !c.is_ascii_digit())
            .parse::<f64>()
            .ok()
    });
    Some((op, numbers.next()?, numbers.next()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use impresario_agents::plan::{parse_plan, plan_schema};
    use impresario_agents::planner::system_prompt;
    use impresario_agents::Step;
    use impresario_runtime::llm::ToolDef;

    /// A planner's request, its instructions listing `tools` (`calculator`'s schema for the
    /// built-in ones) as the planner lists them.
    fn planner_request(tools: &[&str], user: &str) -> ChatRequest {
        planner_request_with(
            &tools
                .iter()
                .map(|t| (*t, json!({"type": "object", "required": ["op", "a", "b"]})))
                .collect::<Vec<_>>(),
            user,
        )
    }

    fn planner_request_with(tools: &[(&str, Value)], user: &str) -> ChatRequest {
        let defs: Vec<ToolDef> = tools
            .iter()
            .map(|(name, parameters)| ToolDef {
                name: (*name).to_owned(),
                description: "Does things.\n- a list: in the description".to_owned(),
                parameters: parameters.clone(),
            })
            .collect();
        ChatRequest::new("offline")
            .system(system_prompt(&defs))
            .user(user.to_owned())
            .output_schema("plan", plan_schema().clone(), false)
    }

    #[test]
    fn fills_in_a_tool_whose_only_required_parameter_is_a_string_with_the_goal() {
        let string = |p: &str| json!({"type": "object", "required": [p], "properties": {p: {"type": "string"}}});
        let request = planner_request_with(
            &[
                ("effects.record", string("what")),
                ("everything.echo", string("message")),
                (
                    "two.required",
                    json!({"type": "object", "required": ["a", "b"],
                    "properties": {"a": {"type": "string"}, "b": {"type": "string"}}}),
                ),
                (
                    "a.number",
                    json!({"type": "object", "required": ["n"],
                    "properties": {"n": {"type": "integer"}}}),
                ),
                ("none.required", json!({"type": "object", "properties": {}})),
            ],
            "Goal: Record run 7\n\nWhat is the plan now?",
        );
        let plan = parse_plan(&answer(&request)).unwrap();
        let called: Vec<(String, Value)> = plan
            .steps
            .iter()
            .map(|s| match s {
                Step::ToolCall {
                    tool, arguments, ..
                } => (tool.clone(), Value::Object(arguments.clone())),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            called,
            [
                ("effects.record".to_owned(), json!({"what": "Record run 7"})),
                (
                    "everything.echo".to_owned(),
                    json!({"message": "Record run 7"})
                ),
            ]
        );
    }

    #[test]
    fn plans_the_allowed_tools_it_can_fill_in_then_answers_with_their_output() {
        let first = planner_request(
            &["calculator", "search_notes"],
            "Goal: What is 3 times 12?\n\nWhat is the plan now?",
        );
        let plan = parse_plan(&answer(&first)).unwrap();
        let tools: Vec<String> = plan.steps.iter().map(Step::label).collect();
        assert_eq!(tools, ["tool:calculator", "tool:search_notes"]);
        assert!(matches!(&plan.steps[0], Step::ToolCall { arguments, .. }
            if arguments["op"] == "mul" && arguments["a"] == 3.0 && arguments["b"] == 12.0));

        let later = planner_request(
            &["calculator"],
            "Goal: What is 3 times 12?\n\nWhat happened so far:\nstep 1: called calculator\n\
             step 1 result: <tool_output tool=\"calculator\" step=\"1\">\n36\n</tool_output>\n\
             step 2 result: failed: tool \"search_notes\" failed: nothing\n\nWhat is the plan now?",
        );
        let plan = parse_plan(&answer(&later)).unwrap();
        let Step::FinalAnswer { answer } = &plan.steps[0] else {
            panic!("{plan:?}")
        };
        assert!(
            answer.starts_with("calculator: 36; step 2 failed: tool"),
            "{answer}"
        );
    }

    #[test]
    fn answers_at_once_when_no_tool_applies() {
        let request = planner_request(
            &["calculator"],
            "Goal: Plan a trip\n\nWhat is the plan now?",
        );
        let plan = parse_plan(&answer(&request)).unwrap();
        assert!(
            matches!(&plan.steps[..], [Step::FinalAnswer { answer }] if answer.contains("\"Plan a trip\""))
        );
    }
}
