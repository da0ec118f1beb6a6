// A small MCP server (stdio) whose one tool has an effect outside the process that calls it:
// `record` appends one line to a file, so a test can count every call that happened,
// independently of Impresario's journal (tests/it/cluster.rs, the chaos test).
//
//   node server.js <node_modules> <log file> <delay ms>
//
// <node_modules>: where the MCP TypeScript SDK is installed (.ci/run installs it with the
// reference server-everything, in ~/.cache/impresario-mcp/node_modules). A call appends
// {"what", "pid"} as one JSON line, then waits <delay ms> before it answers, so a replica killed
// meanwhile leaves a call whose effect happened but whose outcome it never learned.
// The tool is declared not idempotent: a run resumed after such a call must not call it again.
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const [modules, log, delay] = process.argv.slice(2);
if (!modules || !log || !(Number(delay) >= 0)) {
    console.error('usage: node server.js <node_modules> <log file> <delay ms>');
    process.exit(2);
}
const sdk = (p) => require(path.join(modules, '@modelcontextprotocol/sdk/dist/cjs', p));
const { Server } = sdk('server/index.js');
const { StdioServerTransport } = sdk('server/stdio.js');
const { ListToolsRequestSchema, CallToolRequestSchema } = sdk('types.js');

const server = new Server({ name: 'effects', version: '1.0.0' }, { capabilities: { tools: {} } });
server.setRequestHandler(ListToolsRequestSchema, async () => ({
    tools: [{
        name: 'record',
        description: 'Records that something happened (appends one line to a file).',
        inputSchema: {
            type: 'object',
            properties: { what: { type: 'string', description: 'What happened.' } },
            required: ['what'],
        },
        annotations: { readOnlyHint: false, destructiveHint: false, idempotentHint: false },
    }],
}));
server.setRequestHandler(CallToolRequestSchema, async (request) => {
    const { name, arguments: args } = request.params;
    if (name !== 'record' || typeof args?.what !== 'string') {
        return { isError: true, content: [{ type: 'text', text: `no tool ${name} taking {what: string}` }] };
    }
    fs.appendFileSync(log, JSON.stringify({ what: args.what, pid: process.pid }) + '\n');
    await new Promise((done) => setTimeout(done, Number(delay)));
    return { content: [{ type: 'text', text: `recorded: ${args.what}` }] };
});
// The client gone (its replica killed), nothing is left to answer: exit.
process.stdin.on('end', () => process.exit(0));
server.connect(new StdioServerTransport()).catch((e) => {
    console.error(e);
    process.exit(1);
});
