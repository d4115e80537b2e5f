// Calls one tool through the tasks extension of protocol 2026-07-28 with @modelcontextprotocol/ext-tasks
// (on @modelcontextprotocol/client 2.x) and prints how the execution ended as JSON.
// Usage: node call_tool_ext_tasks.mjs '{"url": ..., "token": ..., "tool": ..., "arguments": {...},
//                                      "timeoutMs": 2000, "cancelAfterMs": null}'
// ext-tasks needs a raw request path for the 2026 era (the SDK client does not expose the exact
// request framing): `rawDispatch` below posts each JSON-RPC request itself, each bounded by timeoutMs.
import { Client, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";
import { createTaskSessionFromClient, resultFromTaskOutcome } from "@modelcontextprotocol/ext-tasks/client";

const VERSION = "2026-07-28";
const spec = JSON.parse(process.argv[2]);
const url = new URL(spec.url);
const auth = { Authorization: `Bearer ${spec.token}` };
const clientInfo = { name: "countersign-ext-tasks-test", version: "1.0.0" };
const client = new Client(clientInfo, { versionNegotiation: { mode: { pin: VERSION } } });
await client.connect(new StreamableHTTPClientTransport(url, { requestInit: { headers: auth } }));

const out = { methods: [], era: client.getProtocolEra(), serverCapabilities: client.getServerCapabilities() ?? null };
let lastId = 0;
async function rawDispatch(request) {
  out.methods.push(request.method);
  const headers = {
    ...auth,
    "Content-Type": "application/json",
    Accept: "application/json, text/event-stream",
    "MCP-Protocol-Version": VERSION,
    "Mcp-Method": request.method,
  };
  const name = request.params?.taskId ?? request.params?.name;
  if (name) headers["Mcp-Name"] = name;
  const response = await fetch(url, {
    method: "POST",
    headers,
    body: JSON.stringify({ jsonrpc: "2.0", id: ++lastId, ...request }),
    signal: AbortSignal.timeout(spec.timeoutMs),
  });
  const body = await response.text();
  if (!(response.headers.get("content-type") ?? "").startsWith("text/event-stream")) return JSON.parse(body);
  const messages = body.split("\n").filter((l) => l.startsWith("data:")).map((l) => JSON.parse(l.slice(5)));
  return messages.find((m) => "id" in m && ("result" in m || "error" in m));
}

const session = createTaskSessionFromClient(client, {
  endpointId: "countersign",
  rawDispatch,
  v2RequestFraming: {
    protocolVersion: VERSION,
    clientInfo,
    clientCapabilities: { extensions: { "io.modelcontextprotocol/tasks": {} } },
  },
});
const started = Date.now();
try {
  const execution = await session.callTool(spec.tool, spec.arguments ?? {});
  out.kind = execution.kind;
  out.taskId = execution.handle?.taskId ?? null;
  if (spec.cancelAfterMs != null) {
    await new Promise((resolve) => setTimeout(resolve, spec.cancelAfterMs));
    await execution.cancel();
  }
  const { outcome } = await execution.settle();
  out.status = outcome.status;
  if (outcome.status === "completed") out.result = resultFromTaskOutcome(outcome);
} catch (error) {
  out.error = String(error?.message ?? error);
  if (error?.cause?.issues) out.issues = error.cause.issues;
} finally {
  await session.close();
}
out.elapsedMs = Date.now() - started;
console.log(JSON.stringify(out));
await client.close();
