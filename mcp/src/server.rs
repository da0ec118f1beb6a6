//! One MCP server as a [`ToolProvider`]: connected at start, supervised afterwards (a stdio
//! child that dies is spawned again, an HTTP server that drops the connection is reached again,
//! both with the supervisor's [`Backoff`]), its tool list refreshed on `tools/list_changed`, and
//! its tools' calls sent to whichever connection is live.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use impresario_agents::{ErasedCall, RegisteredTool, ToolContext, ToolProvider};
use impresario_runtime::backoff::unit_random;
use impresario_supervisor::Backoff;
use rmcp::model::{CallToolRequestParams, CallToolResult, ClientRequest, JsonObject, PingRequest};
use rmcp::service::{Peer, ServiceError};
use rmcp::RoleClient;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::catalog;
use crate::config::{ConfigError, Endpoint, ServerConfig};
use crate::connect::{connect, ConnectError, Connection};
use crate::output::output;

/// How a server that died is brought back: from 100 ms, doubling to 5 s, 20 % jitter; a
/// connection that lived 30 s starts again from 100 ms.
pub const RESTART_BACKOFF: Backoff = Backoff {
    min_backoff: Duration::from_millis(100),
    max_backoff: Duration::from_secs(5),
    random_factor: 0.2,
    reset_after: Duration::from_secs(30),
};

/// How often a Streamable HTTP connection is probed with a `ping`: a server that restarted
/// forgets its sessions, and the transport does not end by itself.
pub const PING_EVERY: Duration = Duration::from_secs(10);

/// How long a `ping` may take before the connection is dropped and opened again.
pub const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Its configuration is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// It could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// It did not answer in time.
    #[error("MCP server {server:?} did not connect and list its tools within {after:?}; check that it starts, or raise timeout_secs")]
    Timeout {
        /// The server.
        server: String,
        /// The timeout.
        after: Duration,
    },
    /// It did not list its tools.
    #[error("MCP server {server:?} did not list its tools: {message}")]
    List {
        /// The server.
        server: String,
        /// Why.
        message: String,
    },
}

/// The live connection, if any, and how many connections there were.
#[derive(Clone, Default)]
struct Link {
    generation: u64,
    peer: Option<Peer<RoleClient>>,
}

type Tools = HashMap<String, Arc<RegisteredTool>>;

struct Shared {
    /// Itself, for its tools' calls (the tools live in it: a strong handle would be a cycle).
    me: Weak<Shared>,
    config: ServerConfig,
    source: String,
    tools: ArcSwap<Tools>,
    link: watch::Sender<Link>,
    stop: CancellationToken,
    restarts: AtomicU64,
}

/// An MCP server whose tools a [`ToolRegistry`](impresario_agents::ToolRegistry) offers:
/// `registry.provide(McpServer::start(config).await?)`. Dropping the last handle stops it.
pub struct McpServer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for McpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServer")
            .field("name", &self.shared.config.name)
            .finish()
    }
}

impl McpServer {
    /// Connects, lists the tools, and supervises the server from then on. Must be called
    /// inside a tokio runtime, which then runs the supervision. Fails if the first connection
    /// or listing fails (within the server's timeout): the error names the server.
    pub async fn start(config: ServerConfig) -> Result<Arc<McpServer>, StartError> {
        config.validate()?;
        let (changed, changes) = mpsc::unbounded_channel();
        let after = config.timeout;
        let server = config.name.clone();
        let shared = Arc::new_cyclic(|me| Shared {
            me: me.clone(),
            source: config.source(),
            config,
            tools: ArcSwap::from_pointee(Tools::new()),
            link: watch::Sender::new(Link::default()),
            stop: CancellationToken::new(),
            restarts: AtomicU64::new(0),
        });
        let first = async {
            let connection = connect(&shared.config, changed.clone()).await?;
            let tools = shared.list(connection.peer()).await;
            let tools = tools.map_err(|message| StartError::List {
                server: server.clone(),
                message,
            })?;
            shared.tools.store(Arc::new(tools));
            Ok::<_, StartError>(connection)
        };
        let connection = tokio::time::timeout(after, first)
            .await
            .map_err(|_| StartError::Timeout { server, after })??;
        tokio::spawn(supervise(shared.clone(), connection, changes, changed));
        Ok(Arc::new(McpServer { shared }))
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.shared.config.name
    }

    /// How many times its connection was lost and opened again.
    pub fn restarts(&self) -> u64 {
        self.shared.restarts.load(Ordering::Relaxed)
    }

    /// Whether a connection is live now.
    pub fn is_connected(&self) -> bool {
        self.shared.link.borrow().peer.is_some()
    }

    /// Closes the connection (a stdio child is killed) and stops supervising it; calls fail.
    pub fn stop(&self) {
        self.shared.stop.cancel();
    }
}

impl Drop for McpServer {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

impl ToolProvider for McpServer {
    fn source(&self) -> &str {
        &self.shared.source
    }
    fn tools(&self) -> Arc<Tools> {
        self.shared.tools.load_full()
    }
}

/// Keeps a connection live: serves it until it ends, then opens another after a backoff.
async fn supervise(
    shared: Arc<Shared>,
    first: Connection,
    mut changes: mpsc::UnboundedReceiver<()>,
    changed: mpsc::UnboundedSender<()>,
) {
    let server = shared.config.name.clone();
    let mut connection = Some(first);
    let mut attempt = 0u32;
    loop {
        if let Some(live) = connection.take() {
            let since = Instant::now();
            let Some(reason) = shared.serve(live, &mut changes).await else {
                return;
            };
            shared.restarts.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%server, %reason, "MCP server connection ended; restarting it");
            if since.elapsed() >= RESTART_BACKOFF.reset_after {
                attempt = 0;
            }
        }
        let delay = RESTART_BACKOFF.delay(attempt, unit_random());
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shared.stop.cancelled() => return,
        }
        match connect(&shared.config, changed.clone()).await {
            Ok(live) => {
                shared.refresh(live.peer()).await;
                connection = Some(live);
            }
            Err(error) => tracing::warn!(%server, %error, ?delay, "MCP server restart failed"),
        }
    }
}

impl Shared {
    /// Publishes the connection and serves it until it ends (`Some(why)`) or the server is
    /// stopped (`None`); refreshes the tools on every `tools/list_changed`.
    async fn serve(
        &self,
        live: Connection,
        changes: &mut mpsc::UnboundedReceiver<()>,
    ) -> Option<String> {
        let peer = live.peer().clone();
        self.link.send_modify(|link| {
            link.generation += 1;
            link.peer = Some(peer.clone());
        });
        let token = live.cancellation_token();
        let waiting = live.waiting();
        tokio::pin!(waiting);
        let mut probe =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        let http = matches!(self.config.endpoint, Endpoint::Http { .. });
        let outcome = loop {
            tokio::select! {
                quit = &mut waiting => break Some(format!("{quit:?}")),
                Some(()) = changes.recv() => self.refresh(&peer).await,
                _ = probe.tick(), if http => {
                    if let Err(why) = ping(&peer).await {
                        token.cancel();
                        let _ = waiting.await;
                        break Some(why);
                    }
                }
                _ = self.stop.cancelled() => {
                    token.cancel();
                    let _ = waiting.await;
                    break None;
                }
            }
        };
        self.link.send_modify(|link| link.peer = None);
        outcome
    }

    /// Lists the tools again; on failure the old list stays and the failure is logged.
    async fn refresh(&self, peer: &Peer<RoleClient>) {
        match tokio::time::timeout(self.config.timeout, self.list(peer)).await {
            Ok(Ok(tools)) => {
                tracing::info!(server = %self.config.name, tools = tools.len(), "MCP tools listed");
                self.tools.store(Arc::new(tools));
            }
            Ok(Err(error)) => {
                tracing::warn!(server = %self.config.name, %error, "MCP tools/list failed; keeping the old list")
            }
            Err(_) => {
                tracing::warn!(server = %self.config.name, "MCP tools/list timed out; keeping the old list")
            }
        }
    }

    /// The server's allowed tools, as the registry keeps them.
    async fn list(&self, peer: &Peer<RoleClient>) -> Result<Tools, String> {
        let listed = peer.list_all_tools().await.map_err(|e| e.to_string())?;
        let me = self.me.clone();
        let mut tools = Tools::new();
        for tool in listed
            .into_iter()
            .filter(|t| catalog::allowed(&self.config, &t.name))
        {
            let spec = catalog::spec(&self.config, &tool);
            let output_schema = tool.output_schema.as_ref().and_then(|schema| {
                jsonschema::validator_for(&Value::Object((**schema).clone())).ok()
            });
            let call = tool_call(
                me.clone(),
                tool.name.to_string(),
                spec.idempotent,
                output_schema,
            );
            match RegisteredTool::new(spec, call) {
                Ok(registered) => {
                    tools.insert(registered.name().to_owned(), Arc::new(registered));
                }
                Err(error) => {
                    tracing::warn!(server = %self.config.name, %error, "MCP tool skipped")
                }
            }
        }
        Ok(tools)
    }
}

/// Asks the server for a `ping`, within [`PING_TIMEOUT`].
async fn ping(peer: &Peer<RoleClient>) -> Result<(), String> {
    let request = ClientRequest::PingRequest(PingRequest {
        method: Default::default(),
        extensions: Default::default(),
    });
    match tokio::time::timeout(PING_TIMEOUT, peer.send_request(request)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(format!("it failed a ping: {error}")),
        Err(_) => Err(format!("it did not answer a ping within {PING_TIMEOUT:?}")),
    }
}

fn tool_call(
    shared: Weak<Shared>,
    tool: String,
    idempotent: bool,
    output_schema: Option<jsonschema::Validator>,
) -> Arc<ErasedCall> {
    let output_schema = output_schema.map(Arc::new);
    Arc::new(move |args: Value, _: ToolContext| {
        let (shared, tool, schema) = (shared.clone(), tool.clone(), output_schema.clone());
        Box::pin(async move {
            let shared = shared
                .upgrade()
                .ok_or_else(|| "the MCP server was stopped".to_owned())?;
            let result = shared.call(&tool, args, idempotent).await?;
            output(result, schema.as_deref(), shared.config.max_output_bytes)
        })
    })
}

/// Why a call did not return a result.
enum Failure {
    /// The connection ended before the answer: the call may or may not have run.
    Disconnected(String),
    /// The server answered with an error, or with something that is not a result.
    Answer(String),
    /// The server was stopped.
    Stopped,
}

impl Shared {
    /// Calls `tool`; if the connection dies mid-call, an idempotent tool is called once more
    /// on the next connection, any other gets an error saying its outcome is unknown.
    async fn call(
        &self,
        tool: &str,
        args: Value,
        idempotent: bool,
    ) -> Result<CallToolResult, String> {
        let arguments = match args {
            Value::Object(map) => map,
            _ => JsonObject::new(),
        };
        let (generation, first) = self.call_once(tool, arguments.clone(), 0).await;
        let outcome = match first {
            Err(Failure::Disconnected(why)) if idempotent => {
                tracing::warn!(server = %self.config.name, %tool, %why, "MCP server lost mid-call; retrying once (the tool is idempotent)");
                self.call_once(tool, arguments, generation + 1).await.1
            }
            other => other,
        };
        outcome.map_err(|failure| self.describe(tool, failure, idempotent))
    }

    /// One call on a live connection at least `generation` (waits for one).
    async fn call_once(
        &self,
        tool: &str,
        arguments: JsonObject,
        generation: u64,
    ) -> (u64, Result<CallToolResult, Failure>) {
        let mut link = self.link.subscribe();
        let live = tokio::select! {
            live = link.wait_for(|l| l.peer.is_some() && l.generation >= generation) => live.map(|l| l.clone()),
            _ = self.stop.cancelled() => return (generation, Err(Failure::Stopped)),
        };
        let Ok(Link {
            generation,
            peer: Some(peer),
        }) = live
        else {
            return (generation, Err(Failure::Stopped));
        };
        let params = CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments);
        let result = peer.call_tool(params).await.map_err(|error| match error {
            ServiceError::TransportClosed | ServiceError::TransportSend(_) => {
                Failure::Disconnected(error.to_string())
            }
            other => Failure::Answer(other.to_string()),
        });
        (generation, result)
    }

    fn describe(&self, tool: &str, failure: Failure, idempotent: bool) -> String {
        let server = &self.config.name;
        match failure {
            Failure::Disconnected(why) if idempotent => format!(
                "MCP server {server:?} was lost during the call of {tool:?} twice ({why}); it was retried once"
            ),
            Failure::Disconnected(why) => format!(
                "MCP server {server:?} was lost during the call of {tool:?} ({why}); whether it ran is unknown, \
                 and it was not retried because the tool is not idempotent"
            ),
            Failure::Answer(why) => format!("MCP server {server:?} answered {tool:?} with an error: {why}"),
            Failure::Stopped => format!("MCP server {server:?} was stopped"),
        }
    }
}
