//! impresario-mcp's integration tests, against real MCP servers: the reference
//! `@modelcontextprotocol/server-everything` from npm (installed by `.ci/run` outside the
//! clone: `impresario_mcp::reference_server`) over stdio and Streamable HTTP, and the
//! fault server written with rmcp (`examples/fault_server.rs`, built by `cargo test`).

mod everything;
mod faults;
mod runs;
mod support;
