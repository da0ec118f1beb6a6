//! Plans: the typed steps a planner proposes, the JSON schema derived from them that model
//! output is validated against, and the loop detector that watches what a run executes.

use std::sync::OnceLock;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use impresario_runtime::llm::SharedJson;

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Call one of the listed tools with arguments matching its schema.
    ToolCall {
        /// The tool's name.
        tool: String,
        /// The arguments, a JSON object.
        arguments: serde_json::Map<String, Value>,
        /// Why this step helps reach the goal.
        #[serde(default)]
        why: String,
    },
    /// Ask the model to work something out from what is known so far (no tool).
    ModelCall {
        /// The question.
        prompt: String,
    },
    /// The answer to the goal. It ends the run.
    FinalAnswer {
        /// The answer.
        answer: String,
    },
}

impl Step {
    /// A short label for traces: `tool:search`, `model_call`, `final_answer`.
    pub fn label(&self) -> String {
        match self {
            Step::ToolCall { tool, .. } => format!("tool:{tool}"),
            Step::ModelCall { .. } => "model_call".to_owned(),
            Step::FinalAnswer { .. } => "final_answer".to_owned(),
        }
    }

    /// What makes two steps the same step, for loop detection (tool and canonical arguments).
    pub fn signature(&self) -> String {
        match self {
            // serde_json's Map is ordered by key, so equal arguments serialize equally.
            Step::ToolCall {
                tool, arguments, ..
            } => format!(
                "tool:{tool}:{}",
                serde_json::to_string(arguments).unwrap_or_default()
            ),
            Step::ModelCall { prompt } => format!("model:{prompt}"),
            Step::FinalAnswer { answer } => format!("final:{answer}"),
        }
    }
}

/// A plan: the next steps toward the goal, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// At least one step.
    #[schemars(length(min = 1))]
    pub steps: Vec<Step>,
}

/// Why a model's output is not a valid plan. Its text is what the model is told when asked to
/// repair its output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Not JSON at all.
    #[error("the output is not JSON ({0}); answer with only a JSON object")]
    NotJson(String),
    /// JSON that does not match the plan schema.
    #[error("the JSON does not match the plan schema: {}", .0.join("; "))]
    Schema(Vec<String>),
}

/// The JSON schema of [`Plan`], derived from the Rust types.
/// Shared by every planner request, which serialize it once between them.
pub fn plan_schema() -> &'static SharedJson {
    static SCHEMA: OnceLock<SharedJson> = OnceLock::new();
    SCHEMA.get_or_init(|| SharedJson::new(schemars::schema_for!(Plan).to_value()))
}

fn plan_validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        jsonschema::validator_for(plan_schema()).expect("the derived plan schema compiles")
    })
}

/// Parses and validates a model's output as a plan. Tolerates a Markdown code fence around the
/// JSON (models add them); everything else must match the schema.
pub fn parse_plan(output: &str) -> Result<Plan, PlanError> {
    let text = strip_fence(output.trim());
    // Most output is a plan as the types read it: then the schema, derived from them, accepts
    // it too (`typed_plan`). Anything else is looked at as JSON against the schema.
    if let Some(plan) = typed_plan(text) {
        return Ok(plan);
    }
    let value: Value = serde_json::from_str(text).map_err(|e| PlanError::NotJson(e.to_string()))?;
    // Checked without collecting errors first: most output that gets here is valid (a field
    // given twice, which the typed reading refuses and JSON keeps the last of).
    if !plan_validator().is_valid(&value) {
        return Err(PlanError::Schema(schema_problems(&value)));
    }
    // The schema and the types are derived from one another: if they disagree, serde says how.
    serde_json::from_value(value).map_err(|e| PlanError::Schema(vec![e.to_string()]))
}

/// The plan in `text` read straight into its types, if it is one the plan schema accepts
/// (`None` for anything else, which the schema then judges): every step of a known type with
/// the fields of that type and no other, each of its JSON type (a `null` is not a string), at
/// least one step, no field twice. Nothing is built that the plan does not keep.
fn typed_plan(text: &str) -> Option<Plan> {
    let plan: TypedPlan = serde_json::from_str(text).ok()?;
    if plan.steps.is_empty() {
        return None;
    }
    let steps = plan.steps.into_iter().map(TypedStep::into_step);
    Some(Plan {
        steps: steps.collect::<Option<_>>()?,
    })
}

/// [`Plan`] as [`typed_plan`] reads it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TypedPlan {
    steps: Vec<TypedStep>,
}

/// Every field a step may have, each absent or of its type.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TypedStep {
    #[serde(rename = "type")]
    kind: StepKind,
    #[serde(default, deserialize_with = "present")]
    tool: Option<String>,
    #[serde(default, deserialize_with = "present")]
    arguments: Option<serde_json::Map<String, Value>>,
    #[serde(default, deserialize_with = "present")]
    why: Option<String>,
    #[serde(default, deserialize_with = "present")]
    prompt: Option<String>,
    #[serde(default, deserialize_with = "present")]
    answer: Option<String>,
}

/// The `type` of a [`Step`].
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum StepKind {
    ToolCall,
    ModelCall,
    FinalAnswer,
}

/// A field that is there: of its type (`null` is refused, where `Option` would take it).
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

impl TypedStep {
    /// The step, if it has the fields of its type and no other.
    fn into_step(self) -> Option<Step> {
        let TypedStep {
            kind,
            tool,
            arguments,
            why,
            prompt,
            answer,
        } = self;
        match (kind, tool, arguments, prompt, answer) {
            (StepKind::ToolCall, Some(tool), Some(arguments), None, None) => Some(Step::ToolCall {
                tool,
                arguments,
                why: why.unwrap_or_default(),
            }),
            (StepKind::ModelCall, None, None, Some(prompt), None) if why.is_none() => {
                Some(Step::ModelCall { prompt })
            }
            (StepKind::FinalAnswer, None, None, None, Some(answer)) if why.is_none() => {
                Some(Step::FinalAnswer { answer })
            }
            _ => None,
        }
    }
}

/// Where `value` does not match the plan schema, and why (what the model is told).
fn schema_problems(value: &Value) -> Vec<String> {
    plan_validator()
        .iter_errors(value)
        .map(|e| {
            let at = e.instance_path().to_string();
            // A step matching none of the step schemas gets only "not valid under oneOf" from
            // the validator; serde names the missing field or unknown type instead.
            let step_problem = value
                .pointer(&at)
                .filter(|_| at.starts_with("/steps/") && at.matches('/').count() == 2)
                .and_then(|step| serde_json::from_value::<Step>(step.clone()).err());
            match step_problem {
                Some(problem) => format!("at {at}: {problem}"),
                None => format!("at {}: {e}", if at.is_empty() { "/" } else { &at }),
            }
        })
        .collect()
}

fn strip_fence(text: &str) -> &str {
    let Some(rest) = text.strip_prefix("```") else {
        return text;
    };
    let rest = rest.strip_prefix("json").unwrap_or(rest);
    rest.strip_suffix("```").unwrap_or(rest).trim()
}

/// A repetition that means the run is not making progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopKind {
    /// The same step several times in a row.
    Repeat,
    /// Two steps alternating: A, B, A, B.
    Oscillation,
}

/// Watches the executed steps of a run for loops.
#[derive(Debug)]
pub struct LoopDetector {
    recent: Vec<String>,
    repeat_limit: usize,
}

impl LoopDetector {
    /// A detector that calls `repeat_limit` identical steps in a row a loop (at least 2).
    pub fn new(repeat_limit: usize) -> Self {
        LoopDetector {
            recent: Vec::new(),
            repeat_limit: repeat_limit.max(2),
        }
    }

    /// Records an executed step; says whether the run is now looping.
    pub fn observe(&mut self, step: &Step) -> Option<LoopKind> {
        self.recent.push(step.signature());
        let keep = self.repeat_limit.max(4);
        if self.recent.len() > keep {
            self.recent.drain(..self.recent.len() - keep);
        }
        let n = self.recent.len();
        let tail = &self.recent[n.saturating_sub(self.repeat_limit)..];
        if tail.len() == self.repeat_limit && tail.iter().all(|s| *s == tail[0]) {
            return Some(LoopKind::Repeat);
        }
        if n >= 4 {
            let (a, b, c, d) = (
                &self.recent[n - 4],
                &self.recent[n - 3],
                &self.recent[n - 2],
                &self.recent[n - 1],
            );
            if a == c && b == d && a != b {
                return Some(LoopKind::Oscillation);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tool(name: &str, q: &str) -> Step {
        let Value::Object(arguments) = json!({ "q": q }) else {
            unreachable!()
        };
        Step::ToolCall {
            tool: name.into(),
            arguments,
            why: String::new(),
        }
    }

    #[test]
    fn a_valid_plan_parses_even_inside_a_code_fence() {
        let text = "```json\n{\"steps\":[{\"type\":\"tool_call\",\"tool\":\"search\",\"arguments\":{\"q\":\"x\"},\"why\":\"look\"},{\"type\":\"final_answer\",\"answer\":\"42\"}]}\n```";
        let plan = parse_plan(text).unwrap();
        assert_eq!(plan.steps.len(), 2);
        assert_eq!(
            plan.steps[1],
            Step::FinalAnswer {
                answer: "42".into()
            }
        );
    }

    #[test]
    fn a_valid_plan_parses_as_serde_reads_it() {
        let plans = [
            json!({"steps": [
                {"type": "tool_call", "tool": "search", "arguments": {"q": "x", "n": [1, {"a": null}]}, "why": "look"},
                {"type": "tool_call", "tool": "calc", "arguments": {}},
                {"type": "model_call", "prompt": "think"},
                {"type": "final_answer", "answer": "42"}
            ]}),
            json!({"steps": [{"type": "final_answer", "answer": ""}]}),
        ];
        for plan in plans {
            let text = plan.to_string();
            let parsed = parse_plan(&text).unwrap();
            assert_eq!(
                parsed,
                serde_json::from_str::<Plan>(&text).unwrap(),
                "{text}"
            );
        }
        // What is not a plan is not taken for one.
        for not_a_plan in [
            json!({"steps": [{"type": "final_answer", "answer": "a", "extra": 1}]}),
            json!({"steps": [{"type": "tool_call", "tool": "t", "arguments": []}]}),
            json!({"steps": [{"type": "model_call", "prompt": 7}]}),
            json!({"steps": {}}),
        ] {
            let text = not_a_plan.to_string();
            assert!(
                matches!(parse_plan(&text), Err(PlanError::Schema(_))),
                "{text}"
            );
        }
    }

    /// The typed reading takes only what the schema accepts, as the schema's reading gives it.
    #[test]
    fn a_plan_read_by_its_types_is_one_the_schema_accepts() {
        let step = |fields: &str| format!(r#"{{"steps":[{fields}]}}"#);
        let accepted = [
            step(r#"{"type":"tool_call","tool":"t","arguments":{"q":[1,{"a":null}]},"why":"w"}"#),
            step(
                r#"{"type":"tool_call","tool":"t","arguments":{}},{"type":"final_answer","answer":"a"}"#,
            ),
            step(r#"{"type":"model_call","prompt":"p"},{"type":"final_answer","answer":""}"#),
        ];
        for text in &accepted {
            let typed = typed_plan(text).unwrap_or_else(|| panic!("not read: {text}"));
            let value: Value = serde_json::from_str(text).unwrap();
            assert!(plan_validator().is_valid(&value), "{text}");
            assert_eq!(
                serde_json::from_value::<Plan>(value).ok(),
                Some(typed.clone()),
                "{text}"
            );
            assert_eq!(parse_plan(text), Ok(typed), "{text}");
        }
        let refused = [
            r#"{"steps":[]}"#.to_string(),
            r#"{"steps":[],"extra":1}"#.to_string(),
            r#"{"steps":{}}"#.to_string(),
            step(r#"{"type":"tool_call","tool":"t","arguments":{},"why":null}"#),
            step(r#"{"type":"tool_call","tool":"t","arguments":[]}"#),
            step(r#"{"type":"tool_call","tool":"t"}"#),
            step(r#"{"type":"tool_call","tool":"t","arguments":{},"answer":"a"}"#),
            step(r#"{"type":"tool_call","tool":"t","tool":"u","arguments":{}}"#),
            step(r#"{"type":"model_call","prompt":"p","why":"w"}"#),
            step(r#"{"type":"model_call","prompt":7}"#),
            step(r#"{"type":"final_answer","answer":"a","tool":"t"}"#),
            step(r#"{"type":"final_answer"}"#),
            step(r#"{"type":"dance"}"#),
            step(r#"{"answer":"a"}"#),
        ];
        for text in &refused {
            assert_eq!(typed_plan(text), None, "{text}");
        }
        // What the typed reading leaves to the schema reads as it did before it.
        let twice = step(r#"{"type":"tool_call","tool":"t","tool":"u","arguments":{}}"#);
        let Step::ToolCall { tool, .. } = &parse_plan(&twice).unwrap().steps[0] else {
            panic!("not a tool call")
        };
        assert_eq!(tool, "u", "the schema's reading keeps a field's last value");
        assert!(matches!(
            parse_plan(&step(
                r#"{"type":"tool_call","tool":"t","arguments":{},"why":null}"#
            )),
            Err(PlanError::Schema(_))
        ));
    }

    #[test]
    fn invalid_plans_say_what_is_wrong_and_where() {
        assert!(matches!(
            parse_plan("steps: none"),
            Err(PlanError::NotJson(_))
        ));
        let Err(PlanError::Schema(problems)) = parse_plan(r#"{"steps":[]}"#) else {
            panic!("empty plan accepted")
        };
        assert!(problems[0].starts_with("at /steps"), "{problems:?}");
        let Err(PlanError::Schema(problems)) =
            parse_plan(r#"{"steps":[{"type":"tool_call","tool":"search"}]}"#)
        else {
            panic!("missing arguments accepted")
        };
        assert!(
            problems.iter().any(|p| p.contains("arguments")),
            "{problems:?}"
        );
        let Err(PlanError::Schema(problems)) = parse_plan(r#"{"steps":[{"type":"dance"}]}"#) else {
            panic!("unknown step type accepted")
        };
        assert!(problems[0].starts_with("at /steps/0"), "{problems:?}");
    }

    #[test]
    fn loops_are_repeats_or_oscillations_and_progress_is_neither() {
        let mut d = LoopDetector::new(3);
        assert_eq!(d.observe(&tool("search", "a")), None);
        assert_eq!(d.observe(&tool("search", "a")), None);
        assert_eq!(d.observe(&tool("search", "a")), Some(LoopKind::Repeat));

        let mut d = LoopDetector::new(3);
        for (i, q) in ["a", "b", "a"].iter().enumerate() {
            assert_eq!(d.observe(&tool("search", q)), None, "step {i}");
        }
        assert_eq!(d.observe(&tool("search", "b")), Some(LoopKind::Oscillation));

        let mut d = LoopDetector::new(3);
        for q in ["a", "b", "c", "d", "e", "a", "c"] {
            assert_eq!(d.observe(&tool("search", q)), None);
        }
    }
}
