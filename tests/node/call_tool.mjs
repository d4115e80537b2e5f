// Calls one tool through the official TypeScript MCP SDK client and prints what it got as JSON.
// Usage: node call_tool.mjs '{"url": ..., "token": ..., "tool": ..., "arguments": {...},
//                            "timeoutMs": 60000, "resetTimeoutOnProgress": true, "listFirst": true}'
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const spec = JSON.parse(process.argv[2]);
const transport = new StreamableHTTPClientTransport(new URL(spec.url), {
  requestInit: { headers: { Authorization: `Bearer ${spec.token}` } },
});
const client = new Client({ name: "countersign-ts-test", version: "1.0.0" });
const out = { progress: [] };
await client.connect(transport);
out.protocolVersion = transport.protocolVersion ?? null;
if (spec.listFirst) {
  out.tools = (await client.listTools()).tools.map((t) => t.name);
}
const started = Date.now();
try {
  out.result = await client.callTool({ name: spec.tool, arguments: spec.arguments ?? {} }, undefined, {
    timeout: spec.timeoutMs,
    resetTimeoutOnProgress: Boolean(spec.resetTimeoutOnProgress),
    onprogress: (p) => out.progress.push(p.message ?? String(p.progress)),
  });
} catch (error) {
  out.error = { code: error.code ?? null, message: String(error.message ?? error) };
}
out.elapsedMs = Date.now() - started;
console.log(JSON.stringify(out));
await client.close();
