//! Where the reference MCP server, `@modelcontextprotocol/server-everything` (node), is
//! installed for this repository's tests and `examples/mcp_tools.rs`: outside the clone, so
//! every checkout on a machine shares one install. `.ci/run` installs it with the version
//! pinned by `mcp/tests/server-everything/package-lock.json`.

use std::path::PathBuf;

/// Names the folder the server is installed in (default `$HOME/.cache/impresario-mcp`).
pub const REFERENCE_SERVER_DIR_ENV: &str = "IMPRESARIO_MCP_TEST_SERVERS";

/// server-everything's entry point (`node <it> stdio | streamableHttp`), or an error saying how
/// to install it.
pub fn reference_server() -> Result<PathBuf, String> {
    let dir = std::env::var_os(REFERENCE_SERVER_DIR_ENV)
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/impresario-mcp"))
        })
        .ok_or_else(|| format!("set {REFERENCE_SERVER_DIR_ENV} (no HOME to default to)"))?;
    let entry = dir.join("node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    if entry.exists() {
        Ok(entry)
    } else {
        Err(format!(
            "the reference MCP server is not installed at {}: run `mkdir -p {dir} && cp \
             mcp/tests/server-everything/package*.json {dir}/ && npm ci --prefix {dir}` \
             (as .ci/run does)",
            entry.display(),
            dir = dir.display()
        ))
    }
}
