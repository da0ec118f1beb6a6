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
    /// The run's tenant: a tool that keeps data (notes, files, records) keeps each tenant's
    /// apart, since tenants are a security boundary.
    pub tenant: String,
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

/// A type-erased tool call: validated JSON arguments in, JSON output or a message out.
pub type ErasedCall =
    dyn Fn(Value, ToolContext) -> BoxFuture<'static, Result<Value, String>> + Send + Sync;

/// [`RegisteredTool::builtin`]'s source: a tool registered in Rust.
pub const BUILTIN: &str = "builtin";

/// A tool whose schema is known only at run time (an MCP server lists it, say): everything
/// [`RegisteredTool::new`] needs besides the call.
#[derive(Debug, Clone)]
pub struct ToolSpec {
    /// The name the model calls it by.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// Where it comes from, as `GET /v1/tools` shows it: [`BUILTIN`] or `mcp:<server>`.
    pub source: String,
    /// How much harm a call can do.
    pub impact: Impact,
    /// How long one call may take.
    pub timeout: Duration,
    /// Whether a retry or a resume may call it again.
    pub idempotent: bool,
    /// The JSON schema of its arguments.
    pub schema: Value,
    /// The tenants whose runs may use it; `None`: every tenant.
    pub tenants: Option<Vec<String>>,
}

/// A tool as the registry keeps it: its description, compiled schema and type-erased call.
pub struct RegisteredTool {
    name: String,
    description: String,
    source: String,
    impact: Impact,
    timeout: Duration,
    idempotent: bool,
    schema: Value,
    tenants: Option<Vec<String>>,
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
    /// A tool from a spec and a call; the schema is compiled here.
    pub fn new(spec: ToolSpec, call: Arc<ErasedCall>) -> Result<Self, RegistryError> {
        let validator =
            jsonschema::validator_for(&spec.schema).map_err(|e| RegistryError::BadSchema {
                tool: spec.name.clone(),
                reason: e.to_string(),
            })?;
        Ok(RegisteredTool {
            name: spec.name,
            description: spec.description,
            source: spec.source,
            impact: spec.impact,
            timeout: spec.timeout,
            idempotent: spec.idempotent,
            schema: spec.schema,
            tenants: spec.tenants,
            validator,
            call,
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// What it does.
    pub fn description(&self) -> &str {
        &self.description
    }
    /// Where it comes from: [`BUILTIN`] or `mcp:<server>`.
    pub fn source(&self) -> &str {
        &self.source
    }
    /// Whether runs of `tenant` may use it.
    pub fn allows(&self, tenant: &str) -> bool {
        self.tenants
            .as_ref()
            .is_none_or(|tenants| tenants.iter().any(|t| t == tenant))
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

    /// Validates `args` (nothing runs if they are wrong), then starts the call under the tool's
    /// timeout and the run's halt (`ctx.halt`): the future ends with the output or a
    /// [`ToolError`] (`Failed`, `Timeout`, `Halted`).
    pub fn run(
        &self,
        args: Value,
        ctx: ToolContext,
    ) -> Result<impl Future<Output = Result<Value, ToolError>> + Send + 'static, ToolError> {
        self.validate(&args)?;
        let (halt, timeout, tool) = (ctx.halt.clone(), self.timeout, self.name.clone());
        let call = (self.call)(args, ctx);
        Ok(async move {
            match tokio::time::timeout(timeout, halt.run(call)).await {
                Ok(Ok(Ok(value))) => Ok(value),
                Ok(Ok(Err(message))) => Err(ToolError::Failed { tool, message }),
                Ok(Err(_halted)) => Err(ToolError::Halted { tool }),
                Err(_elapsed) => Err(ToolError::Timeout {
                    tool,
                    after_ms: timeout.as_millis() as u64,
                }),
            }
        })
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

/// Tools that come and go while the service runs (an MCP server's, refreshed when it says
/// its list changed). A [`ToolRegistry`] asks it on every lookup, so a change is seen by the
/// next run and the next call.
pub trait ToolProvider: Send + Sync + std::fmt::Debug + 'static {
    /// Its source, as its tools report it (`mcp:<server>`): unique in a registry.
    fn source(&self) -> &str;
    /// Its tools now, by name.
    fn tools(&self) -> Arc<HashMap<String, Arc<RegisteredTool>>>;
}

/// The tools a runtime knows, by name: tools registered in Rust and those of
/// [`ToolProvider`]s. Cheap to clone; clones share the providers.
#[derive(Clone, Default, Debug)]
pub struct ToolRegistry {
    tools: HashMap<String, Arc<RegisteredTool>>,
    providers: Vec<Arc<dyn ToolProvider>>,
}

/// Why a tool could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Two tools with one name.
    #[error("a tool named {0:?} is already registered; tool names must be unique")]
    Duplicate(String),
    /// Two providers with one source.
    #[error("tools from {0:?} are already registered; give each source its own name")]
    DuplicateSource(String),
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
        let spec = ToolSpec {
            name: name.clone(),
            description: tool.description().to_owned(),
            source: BUILTIN.to_owned(),
            impact: tool.impact(),
            timeout: tool.timeout(),
            idempotent: tool.idempotent(),
            schema: schemars::schema_for!(T::Args).to_value(),
            tenants: None,
        };
        let tool = Arc::new(tool);
        let call: Arc<ErasedCall> = Arc::new(move |args: Value, ctx: ToolContext| {
            let tool = tool.clone();
            Box::pin(async move {
                let args: T::Args = serde_json::from_value(args)
                    .map_err(|e| format!("arguments passed the schema but not the type: {e}"))?;
                tool.call(args, ctx).await
            })
        });
        self.tools
            .insert(name, Arc::new(RegisteredTool::new(spec, call)?));
        Ok(self)
    }

    /// Adds a provider's tools. A tool registered in Rust wins over a provider's tool of the
    /// same name.
    pub fn provide(&mut self, provider: Arc<dyn ToolProvider>) -> Result<&mut Self, RegistryError> {
        if self
            .providers
            .iter()
            .any(|p| p.source() == provider.source())
        {
            return Err(RegistryError::DuplicateSource(provider.source().to_owned()));
        }
        self.providers.push(provider);
        Ok(self)
    }

    /// The definitions of the `allowed` tools (those registered), as a model is shown them.
    pub fn definitions(&self, allowed: &[String]) -> Vec<impresario_runtime::llm::ToolDef> {
        allowed
            .iter()
            .filter_map(|name| self.get(name).map(|t| t.definition()))
            .collect()
    }

    /// The tool named `name`, now.
    pub fn get(&self, name: &str) -> Option<Arc<RegisteredTool>> {
        if let Some(tool) = self.tools.get(name) {
            return Some(tool.clone());
        }
        self.providers
            .iter()
            .find_map(|p| p.tools().get(name).cloned())
    }

    /// Every tool now, sorted by name.
    pub fn list(&self) -> Vec<Arc<RegisteredTool>> {
        let mut all: HashMap<String, Arc<RegisteredTool>> = HashMap::new();
        for provider in &self.providers {
            for (name, tool) in provider.tools().iter() {
                all.entry(name.clone()).or_insert_with(|| tool.clone());
            }
        }
        for (name, tool) in &self.tools {
            all.insert(name.clone(), tool.clone());
        }
        let mut list: Vec<Arc<RegisteredTool>> = all.into_values().collect();
        list.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// The names of every tool now, sorted.
    pub fn names(&self) -> Vec<String> {
        self.list().iter().map(|t| t.name.clone()).collect()
    }
}
