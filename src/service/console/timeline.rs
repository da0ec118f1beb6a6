//! A run's timeline, read from its journal: the submission, each plan revision, each step,
//! each model call (model, tokens, cost, latency), each tool call (arguments, then output),
//! approvals, halts, and the end. The journal is the run's whole story (it is written before
//! the run goes on), so the page shows the same whether the run is live, ended, or from an
//! earlier process.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use impresario::runtime::halt::HaltMode;
use impresario::runtime::journal::{JournalEntry, RunEvent, ToolOutcome};
use serde_json::Value;

/// What kind of entry (its CSS class is [`Kind::class`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Submitted, plan made, step started or finished, run finished.
    Run,
    /// A plan revision.
    Plan,
    /// A model call.
    Model,
    /// A tool call or its result.
    Tool,
    /// An approval asked for or decided.
    Approval,
    /// A halt.
    Halt,
}

impl Kind {
    /// The CSS class.
    pub fn class(self) -> &'static str {
        match self {
            Kind::Run => "k-run",
            Kind::Plan => "k-plan",
            Kind::Model => "k-model",
            Kind::Tool => "k-tool",
            Kind::Approval => "k-approval",
            Kind::Halt => "k-halt",
        }
    }
}

/// One line of the timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Milliseconds since the run was submitted.
    pub offset_ms: u64,
    /// What kind of entry.
    pub kind: Kind,
    /// A short title (`model call`, `tool search_notes`, ...).
    pub title: String,
    /// Named figures (`tokens`, `cost`, `latency`, ...).
    pub facts: Vec<(&'static str, String)>,
    /// Longer text: arguments, outputs, answers (shown as text, never as markup).
    pub text: Option<String>,
}

/// Dollars with six decimals, from micro-USD.
pub fn usd(micro_usd: u64) -> String {
    format!("${}.{:06}", micro_usd / 1_000_000, micro_usd % 1_000_000)
}

/// The timeline of a run's journal entries, oldest first.
pub fn items(entries: &[JournalEntry]) -> Vec<Item> {
    let Some(start) = entries.first().map(|e| e.at) else {
        return Vec::new();
    };
    // A model call's latency is from its request to its response, both journaled.
    let mut requested: HashMap<(u32, u32), SystemTime> = HashMap::new();
    let mut items = Vec::with_capacity(entries.len());
    for entry in entries {
        if let RunEvent::LlmRequest { step, call, .. } = &entry.event {
            requested.insert((*step, *call), entry.at);
            continue;
        }
        let latency = match &entry.event {
            RunEvent::LlmResponse { step, call, .. } => requested
                .get(&(*step, *call))
                .and_then(|sent| entry.at.duration_since(*sent).ok()),
            _ => None,
        };
        let mut item = describe(&entry.event, latency);
        item.offset_ms = millis(entry.at.duration_since(start).unwrap_or_default());
        items.push(item);
    }
    items
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn item(kind: Kind, title: impl Into<String>) -> Item {
    Item {
        offset_ms: 0,
        kind,
        title: title.into(),
        facts: Vec::new(),
        text: None,
    }
}

impl Item {
    fn fact(mut self, name: &'static str, value: impl ToString) -> Self {
        self.facts.push((name, value.to_string()));
        self
    }

    fn text(mut self, text: impl Into<String>) -> Self {
        self.text = Some(text.into());
        self
    }
}

/// Compact JSON, or the string itself when `value` is a string.
fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn describe(event: &RunEvent, latency: Option<Duration>) -> Item {
    match event {
        RunEvent::RunSubmitted { tenant, goal, .. } => item(Kind::Run, "submitted")
            .fact("tenant", tenant)
            .text(goal.clone()),
        RunEvent::PlanMade { revision, plan } => plan_made(*revision, plan),
        RunEvent::StepStarted { step, kind, detail } => {
            item(Kind::Run, format!("step {step} started"))
                .fact("kind", kind)
                .text(plain(detail))
        }
        RunEvent::LlmResponse {
            step,
            call,
            response,
            cost_micro_usd,
            ..
        } => {
            let mut model = item(Kind::Model, format!("model call {step}.{call}"))
                .fact("model", &response.model)
                .fact("tokens in", response.usage.input_tokens)
                .fact("tokens out", response.usage.output_tokens)
                .fact("cost", usd(*cost_micro_usd));
            if let Some(latency) = latency {
                model = model.fact("latency", format!("{} ms", millis(latency)));
            }
            if response.cache_hit {
                model = model.fact("cache", "hit");
            }
            model.text(response.content.clone())
        }
        RunEvent::ToolCallIntent {
            step,
            tool,
            arguments,
            ..
        } => item(Kind::Tool, format!("tool {tool} called (step {step})")).text(plain(arguments)),
        RunEvent::ToolResult { step, outcome, .. } => match outcome {
            ToolOutcome::Ok(value) => item(Kind::Tool, format!("tool output (step {step})"))
                .fact("result", "ok")
                .text(plain(value)),
            ToolOutcome::Error(error) => item(Kind::Tool, format!("tool error (step {step})"))
                .fact("result", "error")
                .text(error.clone()),
        },
        other => describe_control(other),
    }
}

fn plan_made(revision: u32, plan: &Value) -> Item {
    let steps = plan["steps"].as_array().map_or(0, Vec::len);
    let text = plan["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .enumerate()
                .map(|(i, s)| format!("{}. {}", i + 1, plain(s)))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_else(|| plain(plan));
    item(Kind::Plan, format!("plan revision {revision}"))
        .fact("steps", steps)
        .text(text)
}

fn describe_control(event: &RunEvent) -> Item {
    match event {
        RunEvent::ApprovalRequested { step, tool, reason } => {
            item(Kind::Approval, format!("approval requested (step {step})"))
                .fact("tool", tool)
                .text(reason.clone())
        }
        RunEvent::ApprovalDecided {
            step,
            approved,
            by,
            reason,
        } => {
            let decided = if *approved { "approved" } else { "rejected" };
            let decision = item(Kind::Approval, format!("step {step} {decided}")).fact("by", by);
            match reason {
                Some(reason) => decision.text(reason.clone()),
                None => decision,
            }
        }
        RunEvent::Halted { halt } => {
            let mode = match halt.mode {
                HaltMode::Immediate => "immediate".to_owned(),
                HaltMode::Graceful { deadline } => format!("graceful ({} s)", deadline.as_secs()),
            };
            let halted = item(Kind::Halt, "halted")
                .fact("reason", halt.reason)
                .fact("mode", mode);
            match &halt.detail {
                Some(detail) => halted.text(detail.clone()),
                None => halted,
            }
        }
        RunEvent::StepFinished { step, outcome } => {
            item(Kind::Run, format!("step {step} finished")).text(plain(outcome))
        }
        RunEvent::RunFinished {
            outcome,
            result,
            reason,
        } => {
            let finished = item(Kind::Run, "run finished").fact("outcome", format!("{outcome:?}"));
            let text = match (&result["answer"], reason) {
                (Value::String(answer), _) => answer.clone(),
                (_, Some(reason)) => reason.clone(),
                _ => plain(result),
            };
            finished.text(text)
        }
        other => item(Kind::Run, other.kind()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use impresario::runtime::journal::RunOutcome;
    use impresario::runtime::RunId;
    use serde_json::json;

    fn entry(seq: u64, at_ms: u64, event: RunEvent) -> JournalEntry {
        JournalEntry {
            run: RunId::new("run-1"),
            seq,
            at: SystemTime::UNIX_EPOCH + Duration::from_millis(at_ms),
            version: 1,
            event,
        }
    }

    #[test]
    fn tool_calls_show_arguments_and_outputs_with_offsets_from_submission() {
        let entries = [
            entry(
                1,
                1_000,
                RunEvent::RunSubmitted {
                    tenant: "acme".into(),
                    goal: "<b>goal</b>".into(),
                    request: json!({}),
                },
            ),
            entry(
                2,
                1_250,
                RunEvent::ToolCallIntent {
                    step: 1,
                    tool: "search_notes".into(),
                    idempotency_key: "k".into(),
                    arguments: json!({ "query": "trams" }),
                },
            ),
            entry(
                3,
                1_300,
                RunEvent::ToolResult {
                    step: 1,
                    idempotency_key: "k".into(),
                    outcome: ToolOutcome::Ok(json!("Lisbon has trams.")),
                },
            ),
            entry(
                4,
                1_400,
                RunEvent::RunFinished {
                    outcome: RunOutcome::Succeeded,
                    result: json!({ "answer": "yes" }),
                    reason: None,
                },
            ),
        ];
        let items = items(&entries);
        let shown: Vec<_> = items
            .iter()
            .map(|i| (i.offset_ms, i.title.as_str(), i.text.as_deref()))
            .collect();
        assert_eq!(
            shown,
            [
                (0, "submitted", Some("<b>goal</b>")),
                (
                    250,
                    "tool search_notes called (step 1)",
                    Some("{\"query\":\"trams\"}")
                ),
                (300, "tool output (step 1)", Some("Lisbon has trams.")),
                (400, "run finished", Some("yes")),
            ]
        );
        assert_eq!(items[0].facts, [("tenant", "acme".to_owned())]);
    }

    #[test]
    fn dollars_keep_every_micro_usd() {
        assert_eq!(usd(0), "$0.000000");
        assert_eq!(usd(1_234_567), "$1.234567");
    }
}
