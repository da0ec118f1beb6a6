//! # impresario-mcp
//!
//! Tools from MCP (Model Context Protocol) servers in a
//! [`ToolRegistry`](impresario_agents::ToolRegistry), on the official SDK `rmcp`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use impresario_mcp::{McpServer, ServerConfig};
//!
//! let files = McpServer::start(
//!     ServerConfig::stdio("files", "npx", ["-y", "@modelcontextprotocol/server-filesystem", "/srv"])
//!         .allow(["read_text_file", "list_directory"]),
//! )
//! .await?;
//! let mut tools = impresario_agents::ToolRegistry::new();
//! tools.provide(files)?; // runs now ask for "files.read_text_file"
//! # Ok(()) }
//! ```
//!
//! - A server's tools are `<server>.<tool>` with the server's input schema; arguments are
//!   validated against it before the call. Annotations give impact and idempotency
//!   ([`classify`]), and the server's [`Approval`] can override the impact.
//! - A stdio server is a child process with a minimal environment ([`INHERITED_ENV`] plus its
//!   `env`) and its stderr in the logs; an HTTP server gets headers whose values come from the
//!   environment. Either is reconnected with the supervisor's backoff ([`RESTART_BACKOFF`]) when
//!   its connection ends; `tools/list_changed` refreshes the tool list.
//! - A call in flight when the connection dies fails with an error saying its outcome is
//!   unknown; an idempotent tool is retried once on the next connection. Output is capped
//!   (`max_output_bytes`), structured output is checked against the tool's output schema, and
//!   the executor delimits it as data and applies the call's timeout.

mod catalog;
mod config;
mod connect;
mod output;
mod reference;
mod server;

pub use catalog::classify;
pub use config::{
    Approval, ConfigError, Endpoint, ServerConfig, ServerEntry, DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_TIMEOUT_SECS, INHERITED_ENV,
};
pub use connect::ConnectError;
pub use reference::{reference_server, REFERENCE_SERVER_DIR_ENV};
pub use server::{McpServer, StartError, PING_EVERY, PING_TIMEOUT, RESTART_BACKOFF};
