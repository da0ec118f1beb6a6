//! One MCP server's configuration: how to reach it (a command to spawn, or a URL), what of it
//! runs may use, and how its tools' annotations become impact and idempotency. The service reads
//! it from `[[tools.mcp]]`; a library user builds it with [`ServerConfig::stdio`] or
//! [`ServerConfig::http`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// Whether a server's tool calls wait for an operator's approval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Approval {
    /// From the tool's annotations: `destructiveHint` is high impact (waits unless the run's
    /// autonomy allows it), `readOnlyHint` is read-only, anything else is a side effect.
    #[default]
    ByAnnotation,
    /// Every tool is high impact: its calls wait for approval unless the run has full autonomy.
    Always,
    /// No tool waits for approval, whatever its annotations say (the operator trusts the server).
    Never,
}

/// Where a server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A child process speaking MCP on its stdin and stdout.
    Stdio {
        /// The program.
        command: String,
        /// Its arguments.
        args: Vec<String>,
    },
    /// A Streamable HTTP endpoint.
    Http {
        /// Its URL (`http://host:port/mcp`).
        url: String,
    },
}

/// The environment variables a stdio server inherits from the service; every other variable
/// (provider keys, the service token) is withheld: least privilege.
pub const INHERITED_ENV: [&str; 4] = ["PATH", "HOME", "LANG", "TMPDIR"];

/// The default timeout of one call, in seconds.
pub const DEFAULT_TIMEOUT_SECS: u64 = 30;

/// The default cap on one call's output, before the run's own limit.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// One MCP server, as `[[tools.mcp]]` in the service's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Its name: its tools are `<name>.<tool>`. Letters, digits, `_` and `-`.
    pub name: String,
    /// How to reach it.
    pub endpoint: Endpoint,
    /// Environment variables set for a stdio server (name -> value), on top of
    /// [`INHERITED_ENV`].
    pub env: BTreeMap<String, String>,
    /// HTTP headers sent to an HTTP server: header name -> the name of the environment variable
    /// holding its value (read at each connection; values are never logged).
    pub headers: BTreeMap<String, String>,
    /// The tools runs may use (names as the server lists them); `None`: all of them.
    pub allow: Option<Vec<String>>,
    /// How long one call may take, waiting for a restarting server included.
    pub timeout: Duration,
    /// How annotations map onto approval.
    pub approval: Approval,
    /// The most bytes of one call's output kept (the run's output limit then applies).
    pub max_output_bytes: usize,
    /// The tenants whose runs may use its tools; `None`: every tenant. A run of another
    /// tenant asking for one is refused when submitted.
    pub allow_tenants: Option<Vec<String>>,
}

impl ServerConfig {
    /// A server spawned as `command args...`, talking over stdio.
    pub fn stdio<S: Into<String>>(
        name: impl Into<String>,
        command: impl Into<String>,
        args: impl IntoIterator<Item = S>,
    ) -> Self {
        Self::with_endpoint(
            name,
            Endpoint::Stdio {
                command: command.into(),
                args: args.into_iter().map(Into::into).collect(),
            },
        )
    }

    /// A server at a Streamable HTTP URL.
    pub fn http(name: impl Into<String>, url: impl Into<String>) -> Self {
        Self::with_endpoint(name, Endpoint::Http { url: url.into() })
    }

    fn with_endpoint(name: impl Into<String>, endpoint: Endpoint) -> Self {
        ServerConfig {
            name: name.into(),
            endpoint,
            env: BTreeMap::new(),
            headers: BTreeMap::new(),
            allow: None,
            timeout: Duration::from_secs(DEFAULT_TIMEOUT_SECS),
            approval: Approval::ByAnnotation,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            allow_tenants: None,
        }
    }

    /// Only these tools (names as the server lists them).
    pub fn allow<S: Into<String>>(mut self, tools: impl IntoIterator<Item = S>) -> Self {
        self.allow = Some(tools.into_iter().map(Into::into).collect());
        self
    }

    /// The timeout of one call.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How annotations map onto approval.
    pub fn approval(mut self, approval: Approval) -> Self {
        self.approval = approval;
        self
    }

    /// Sets an environment variable for a stdio server.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(name.into(), value.into());
        self
    }

    /// Sends header `name` to an HTTP server, its value read from environment variable `var`.
    pub fn header(mut self, name: impl Into<String>, var: impl Into<String>) -> Self {
        self.headers.insert(name.into(), var.into());
        self
    }

    /// Only runs of these tenants may use its tools.
    pub fn allow_tenants<S: Into<String>>(mut self, tenants: impl IntoIterator<Item = S>) -> Self {
        self.allow_tenants = Some(tenants.into_iter().map(Into::into).collect());
        self
    }

    /// The cap on one call's output.
    pub fn max_output_bytes(mut self, bytes: usize) -> Self {
        self.max_output_bytes = bytes;
        self
    }

    /// The source its tools report: `mcp:<name>`.
    pub fn source(&self) -> String {
        format!("mcp:{}", self.name)
    }

    /// Checks what can be checked before connecting; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &str, problem: String| ConfigError {
            server: self.name.clone(),
            field: field.to_owned(),
            problem,
        };
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !name_ok(&self.name) {
            return Err(bad(
                "name",
                "must be letters, digits, '_' or '-' (tools are named <name>.<tool>)".into(),
            ));
        }
        match &self.endpoint {
            Endpoint::Stdio { command, .. } if command.trim().is_empty() => {
                return Err(bad("command", "is empty; name the program to spawn".into()))
            }
            Endpoint::Http { url }
                if !(url.starts_with("http://") || url.starts_with("https://")) =>
            {
                return Err(bad(
                    "url",
                    format!("{url:?} is not an http:// or https:// URL"),
                ))
            }
            Endpoint::Stdio { .. } if !self.headers.is_empty() => {
                return Err(bad("headers", "only apply to a server with a url".into()))
            }
            Endpoint::Http { .. } if !self.env.is_empty() => {
                return Err(bad("env", "only applies to a server with a command".into()))
            }
            _ => {}
        }
        if self.timeout.is_zero() {
            return Err(bad(
                "timeout_secs",
                "is 0; give calls at least a second".into(),
            ));
        }
        if self.max_output_bytes == 0 {
            return Err(bad(
                "max_output_bytes",
                "is 0; a call needs some output".into(),
            ));
        }
        Ok(())
    }
}

/// A server's configuration is wrong: which server, which field, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("MCP server {server:?}: {field} {problem}")]
pub struct ConfigError {
    /// The server's name.
    pub server: String,
    /// The field (`url`, `timeout_secs`, ...).
    pub field: String,
    /// What is wrong and what to do.
    pub problem: String,
}

/// `[[tools.mcp]]` as written in TOML (or JSON): [`ServerConfig`] with `command`/`args` or
/// `url`, and `timeout_secs`. Convert with `ServerConfig::try_from`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServerEntry {
    /// See [`ServerConfig::name`].
    pub name: String,
    /// The program of a stdio server.
    #[serde(default)]
    pub command: Option<String>,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// The URL of a Streamable HTTP server.
    #[serde(default)]
    pub url: Option<String>,
    /// See [`ServerConfig::env`].
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// See [`ServerConfig::headers`].
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// See [`ServerConfig::allow`].
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    /// See [`ServerConfig::timeout`].
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// See [`ServerConfig::approval`].
    #[serde(default)]
    pub approval: Approval,
    /// See [`ServerConfig::max_output_bytes`].
    #[serde(default = "default_max_output_bytes")]
    pub max_output_bytes: usize,
    /// See [`ServerConfig::allow_tenants`].
    #[serde(default)]
    pub allow_tenants: Option<Vec<String>>,
}

fn default_timeout_secs() -> u64 {
    DEFAULT_TIMEOUT_SECS
}

fn default_max_output_bytes() -> usize {
    DEFAULT_MAX_OUTPUT_BYTES
}

impl TryFrom<ServerEntry> for ServerConfig {
    type Error = ConfigError;

    fn try_from(entry: ServerEntry) -> Result<Self, ConfigError> {
        let endpoint = match (entry.command, entry.url) {
            (Some(command), None) => Endpoint::Stdio {
                command,
                args: entry.args,
            },
            (None, Some(url)) if entry.args.is_empty() => Endpoint::Http { url },
            (None, Some(_)) => {
                return Err(ConfigError {
                    server: entry.name,
                    field: "args".into(),
                    problem: "only apply to a server with a command".into(),
                })
            }
            (command, _) => return Err(ConfigError {
                server: entry.name,
                field: if command.is_some() { "url" } else { "command" }.into(),
                problem:
                    "give either `command` (stdio) or `url` (Streamable HTTP), not both or neither"
                        .into(),
            }),
        };
        let config = ServerConfig {
            name: entry.name,
            endpoint,
            env: entry.env,
            headers: entry.headers,
            allow: entry.allow,
            timeout: Duration::from_secs(entry.timeout_secs),
            approval: entry.approval,
            max_output_bytes: entry.max_output_bytes,
            allow_tenants: entry.allow_tenants,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(json: serde_json::Value) -> Result<ServerConfig, String> {
        let entry: ServerEntry = serde_json::from_value(json).map_err(|e| e.to_string())?;
        ServerConfig::try_from(entry).map_err(|e| e.to_string())
    }

    #[test]
    fn entries_become_configs_and_bad_ones_name_server_and_field() {
        let ok = entry(serde_json::json!({
            "name": "files", "command": "node", "args": ["server.js"], "timeout_secs": 5,
            "approval": "always", "allow": ["read"]
        }))
        .unwrap();
        assert_eq!(ok.timeout, Duration::from_secs(5));
        assert_eq!(ok.approval, Approval::Always);
        assert_eq!(ok.source(), "mcp:files");
        let both = entry(serde_json::json!({"name": "x", "command": "a", "url": "http://h"}));
        assert!(both
            .unwrap_err()
            .contains("MCP server \"x\": url give either"));
        let dotted = entry(serde_json::json!({"name": "a.b", "url": "http://h/mcp"}));
        assert!(dotted.unwrap_err().contains("\"a.b\": name must be"));
        let zero = entry(serde_json::json!({"name": "z", "url": "http://h", "timeout_secs": 0}));
        assert!(zero.unwrap_err().contains("timeout_secs is 0"));
        let unknown = entry(serde_json::json!({"name": "u", "url": "http://h", "tiemout": 1}));
        assert!(unknown.unwrap_err().contains("unknown field `tiemout`"));
        let ftp = entry(serde_json::json!({"name": "f", "url": "ftp://h"}));
        assert!(ftp.unwrap_err().contains("not an http:// or https:// URL"));
    }
}
