//! Opening one connection to a server: spawn the child (stdio) or reach the URL (Streamable
//! HTTP), run the MCP handshake, forward the child's stderr to `tracing`, and report
//! `tools/list_changed` notifications. (MCP's own logging notifications are deprecated by the
//! protocol and ignored.)

use std::collections::HashMap;
use std::process::Stdio;

use impresario_agents::executor::truncate;
use rmcp::model::{ClientCapabilities, ClientConfig, Implementation};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

use crate::config::{Endpoint, ServerConfig, INHERITED_ENV};

/// A live connection.
pub(crate) type Connection = RunningService<RoleClient, Handler>;

/// The longest line of a server's stderr kept in the logs.
const MAX_STDERR_LINE: usize = 4096;

/// Our side of a connection: answers the server's notifications.
pub(crate) struct Handler {
    server: String,
    changed: mpsc::UnboundedSender<()>,
}

impl ClientHandler for Handler {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("impresario", env!("CARGO_PKG_VERSION")),
        )
    }

    async fn on_tool_list_changed(&self, _: NotificationContext<RoleClient>) {
        tracing::info!(server = %self.server, "MCP server says its tool list changed");
        let _ = self.changed.send(());
    }
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The command could not be spawned.
    #[error("MCP server {server:?}: cannot spawn {command:?}: {source}; check `command` and PATH")]
    Spawn {
        /// The server.
        server: String,
        /// The program.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// A header's environment variable is missing or not a valid header value.
    #[error("MCP server {server:?}: header {header:?} reads environment variable {var:?}, which {problem}")]
    Header {
        /// The server.
        server: String,
        /// The header.
        header: String,
        /// The variable.
        var: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The MCP handshake failed.
    #[error("MCP server {server:?}: the handshake failed: {message}; check that it speaks MCP at this endpoint")]
    Handshake {
        /// The server.
        server: String,
        /// What the SDK said.
        message: String,
    },
}

/// Opens a connection; `changed` receives one `()` per `tools/list_changed`.
pub(crate) async fn connect(
    config: &ServerConfig,
    changed: mpsc::UnboundedSender<()>,
) -> Result<Connection, ConnectError> {
    let handler = Handler {
        server: config.name.clone(),
        changed,
    };
    let handshake = |e: rmcp::service::ClientInitializeError| ConnectError::Handshake {
        server: config.name.clone(),
        message: e.to_string(),
    };
    match &config.endpoint {
        Endpoint::Stdio { command, args } => {
            let transport = spawn(config, command, args)?;
            handler.serve(transport).await.map_err(handshake)
        }
        Endpoint::Http { url } => {
            if rustls::crypto::CryptoProvider::get_default().is_none() {
                // Another thread may install one first: either provider is fine.
                let _ = rustls::crypto::ring::default_provider().install_default();
            }
            let transport = StreamableHttpClientTransport::from_config(
                StreamableHttpClientTransportConfig::with_uri(url.as_str())
                    .custom_headers(headers(config)?),
            );
            handler.serve(transport).await.map_err(handshake)
        }
    }
}

/// Spawns a stdio server with a minimal environment, its stderr forwarded to the logs.
fn spawn(
    config: &ServerConfig,
    command: &str,
    args: &[String],
) -> Result<TokioChildProcess, ConnectError> {
    let mut cmd = tokio::process::Command::new(command);
    cmd.args(args).env_clear();
    for var in INHERITED_ENV {
        if let Some(value) = std::env::var_os(var) {
            cmd.env(var, value);
        }
    }
    cmd.envs(&config.env);
    let (child, stderr) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ConnectError::Spawn {
            server: config.name.clone(),
            command: command.to_owned(),
            source,
        })?;
    if let Some(stderr) = stderr {
        let server = config.name.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let line = truncate(&line, MAX_STDERR_LINE);
                tracing::info!(target: "impresario_mcp::stderr", %server, "{line}");
            }
        });
    }
    Ok(child)
}

/// The configured headers, their values read from the environment and marked sensitive.
fn headers(
    config: &ServerConfig,
) -> Result<HashMap<http::HeaderName, http::HeaderValue>, ConnectError> {
    let mut out = HashMap::new();
    for (header, var) in &config.headers {
        let error = |problem| ConnectError::Header {
            server: config.name.clone(),
            header: header.clone(),
            var: var.clone(),
            problem,
        };
        let name = http::HeaderName::try_from(header.as_str())
            .map_err(|_| error("names an invalid header"))?;
        let value = std::env::var(var).map_err(|_| error("is not set"))?;
        let mut value = http::HeaderValue::try_from(value)
            .map_err(|_| error("holds characters a header cannot carry"))?;
        value.set_sensitive(true);
        out.insert(name, value);
    }
    Ok(out)
}
