//! Tools: what an executor does besides calling a model. A tool declares its argument type (its
//! JSON schema is derived from it), its impact, timeout and whether a retry is safe; arguments
//! are validated against the schema before the tool runs, and a bad argument is an error that
//! names what was wrong and where, never a panic.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use impresario_runtime::halt::HaltToken;
use impresario_runtime::llm::ToolDef;
use impresario_runtime::RunId;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How much harm a tool call can do; progressive autonomy decides which calls wait for approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Impact {
    /// Reads only (search, lookup): safe to repeat.
    ReadOnly,
    /// Changes something (writes a file, sends a message).
    SideEffect,
    /// Changes something that is costly or irreversible (pays, deletes, deploys).
    HighImpact,
}

/// What a tool call knows about where it runs.
#[derive(Clone, Debug)]
pub struct ToolContext {
    /// The run.
    pub run: RunId,
    /// The step of the run.
    pub step: u32,
    /// Same for every attempt of this step's call, so a retried or resumed call can be
    /// recognised (and deduplicated) by the tool or the system it calls.
    pub idempotency_key: String,
    /// The run's halt token: long work should select on it (`halt.run(fut)`).
    pub halt: HaltToken,
}

/// A tool an executor can call.
pub trait Tool: Send + Sync + 'static {
    /// The arguments; the JSON schema the model sees and the validator checks is derived from it.
    type Args: DeserializeOwned + JsonSchema + Send + 'static;

    /// The name the model calls it by (unique in a registry).
    fn name(&self) -> &str;
    /// What it does, for the model.
    fn description(&self) -> &str;
    /// How much harm a call can do. Default: read-only.
    fn impact(&self) -> Impact {
        Impact::ReadOnly
    }
    /// How long one call may take. Default: 30 s.
    fn timeout(&self) -> Duration {
        Duration::from_secs(30)
    }
    /// Whether calling it twice with the same arguments is harmless, so it may be retried
    /// automatically. Default: only read-only tools.
    fn idempotent(&self) -> bool {
        self.impact() == Impact::ReadOnly
    }
    /// Runs the tool. An `Err` is a message for the planner (what went wrong, what to try).
    fn call(
        &self,
        args: Self::Args,
        ctx: ToolContext,
    ) -> impl Future<Output = Result<Value, String>> + Send;
}

/// Why a tool call did not produce output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ToolError {
    /// No tool has this name.
    #[error("there is no tool named {tool:?}; use one of the tools listed")]
    Unknown {
        /// The name asked for.
        tool: String,
    },
    /// The tool exists but this agent may not use it (least privilege).
    #[error("tool {tool:?} is not allowed in this run; use one of the tools listed")]
    NotAllowed {
        /// The tool.
        tool: String,
    },
    /// The arguments do not match the tool's schema; nothing ran.
    #[error("invalid arguments for tool {tool:?}: {}; fix them to match the tool's schema", problems.join("; "))]
    InvalidArguments {
        /// The tool.
        tool: String,
        /// Each problem, as `at <JSON pointer>: <what is wrong>`.
        problems: Vec<String>,
    },
    /// The tool ran past its timeout and was abandoned.
    #[error("tool {tool:?} did not finish within {after_ms} ms")]
    Timeout {
        /// The tool.
        tool: String,
        /// Its timeout.
        after_ms: u64,
    },
    /// The tool reported a failure.
    #[error("tool {tool:?} failed: {message}")]
    Failed {
        /// The tool.
        tool: String,
        /// Its message.
        message: String,
    },
    /// The run was halted while the tool ran; its call was aborted.
    #[error("tool {tool:?} was aborted by a halt")]
    Halted {
        /// The tool.
        tool: String,
    },
    /// The step needed an approval and the operator rejected it.
    #[error("an operator rejected calling {tool:?}: {reason}")]
    Rejected {
        /// The tool.
        tool: String,
        /// Why.
        reason: String,
    },
}

type ErasedCall =
    dyn Fn(Value, ToolContext) -> BoxFuture<'static, Result<Value, String>> + Send + Sync;

/// A tool as the registry keeps it: its description, compiled schema and type-erased call.
pub struct RegisteredTool {
    name: String,
    description: String,
    impact: Impact,
    timeout: Duration,
    idempotent: bool,
    schema: Value,
    validator: jsonschema::Validator,
    call: Arc<ErasedCall>,
}

impl std::fmt::Debug for RegisteredTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisteredTool")
            .field("name", &self.name)
            .field("impact", &self.impact)
            .finish()
    }
}

impl RegisteredTool {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Its impact.
    pub fn impact(&self) -> Impact {
        self.impact
    }
    /// Its timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
    /// Whether it may be retried automatically.
    pub fn idempotent(&self) -> bool {
        self.idempotent
    }
    /// The JSON schema of its arguments.
    pub fn schema(&self) -> &Value {
        &self.schema
    }

    /// Checks `args` against the schema: every problem, with where it is.
    pub fn validate(&self, args: &Value) -> Result<(), ToolError> {
        let problems: Vec<String> = self
            .validator
            .iter_errors(args)
            .map(|e| {
                let at = e.instance_path().to_string();
                format!("at {}: {e}", if at.is_empty() { "/" } else { &at })
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ToolError::InvalidArguments {
                tool: self.name.clone(),
                problems,
            })
        }
    }

    /// Validates, then runs the call (without its timeout or halt: the executor applies those).
    pub(crate) fn start(
        &self,
        args: Value,
        ctx: ToolContext,
    ) -> Result<BoxFuture<'static, Result<Value, String>>, ToolError> {
        self.validate(&args)?;
        Ok((self.call)(args, ctx))
    }

    /// The definition a model sees.
    pub fn definition(&self) -> ToolDef {
        ToolDef {
            name: self.name.clone(),
            description: self.description.clone(),
            parameters: self.schema.clone(),
        }
    }
}

/// The tools a runtime knows, by name. Cheap to clone.
#[derive(Clone, Default, Debug)]
pub struct ToolRegistry {
    tools: HashMap<String, Arc<RegisteredTool>>,
}

/// Why a tool could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Two tools with one name.
    #[error("a tool named {0:?} is already registered; tool names must be unique")]
    Duplicate(String),
    /// The derived schema did not compile (a bug in the argument type's `JsonSchema`).
    #[error("the argument schema of tool {tool:?} is not a valid JSON schema: {reason}")]
    BadSchema {
        /// The tool.
        tool: String,
        /// Why.
        reason: String,
    },
}

impl ToolRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tool.
    pub fn register<T: Tool>(&mut self, tool: T) -> Result<&mut Self, RegistryError> {
        let name = tool.name().to_owned();
        if self.tools.contains_key(&name) {
            return Err(RegistryError::Duplicate(name));
        }
        let schema = schemars::schema_for!(T::Args).to_value();
        let validator =
            jsonschema::validator_for(&schema).map_err(|e| RegistryError::BadSchema {
                tool: name.clone(),
                reason: e.to_string(),
            })?;
        let (description, impact, timeout, idempotent) = (
            tool.description().to_owned(),
            tool.impact(),
            tool.timeout(),
            tool.idempotent(),
        );
        let tool = Arc::new(tool);
        let call: Arc<ErasedCall> = Arc::new(move |args: Value, ctx: ToolContext| {
            let tool = tool.clone();
            Box::pin(async move {
                let args: T::Args = serde_json::from_value(args)
                    .map_err(|e| format!("arguments passed the schema but not the type: {e}"))?;
                tool.call(args, ctx).await
            })
        });
        self.tools.insert(
            name.clone(),
            Arc::new(RegisteredTool {
                name,
                description,
                impact,
                timeout,
                idempotent,
                schema,
                validator,
                call,
            }),
        );
        Ok(self)
    }

    /// The definitions of the `allowed` tools (those registered), as a model is shown them.
    pub fn definitions(&self, allowed: &[String]) -> Vec<impresario_runtime::llm::ToolDef> {
        allowed
            .iter()
            .filter_map(|name| self.get(name).map(|t| t.definition()))
            .collect()
    }

    /// The tool named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<RegisteredTool>> {
        self.tools.get(name)
    }

    /// The names of every tool, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tools.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}
