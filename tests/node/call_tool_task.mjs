// Calls one tool as a task through the TypeScript SDK's tasks API (client.experimental.tasks.callToolStream)
// and prints every message of the stream as JSON.
// Usage: node call_tool_task.mjs '{"url": ..., "token": ..., "tool": ..., "arguments": {...},
//                                 "timeoutMs": 2000, "cancelAfterMs": null}'
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const spec = JSON.parse(process.argv[2]);
const transport = new StreamableHTTPClientTransport(new URL(spec.url), {
  requestInit: { headers: { Authorization: `Bearer ${spec.token}` } },
});
const client = new Client({ name: "countersign-ts-task-test", version: "1.0.0" });
const out = { messages: [] };
await client.connect(transport);
out.protocolVersion = transport.protocolVersion ?? null;
out.serverTasks = client.getServerCapabilities()?.tasks ?? null;
// The tools list tells the client which tools take tasks (execution.taskSupport).
out.taskTools = (await client.listTools()).tools.filter((t) => t.execution?.taskSupport).map((t) => t.name);
const started = Date.now();
const stream = client.experimental.tasks.callToolStream(
  { name: spec.tool, arguments: spec.arguments ?? {} },
  undefined,
  { timeout: spec.timeoutMs },
);
for await (const message of stream) {
  if (message.type === "taskCreated" || message.type === "taskStatus") {
    out.messages.push({ type: message.type, status: message.task.status, statusMessage: message.task.statusMessage ?? null });
    if (message.type === "taskCreated") {
      out.taskId = message.task.taskId;
      if (spec.cancelAfterMs != null) {
        await new Promise((resolve) => setTimeout(resolve, spec.cancelAfterMs));
        const cancelled = await client.experimental.tasks.cancelTask(out.taskId, { timeout: spec.timeoutMs });
        out.cancelled = { status: cancelled.status, statusMessage: cancelled.statusMessage ?? null };
      }
    }
  } else if (message.type === "result") {
    out.result = message.result;
  } else {
    out.error = { code: message.error.code ?? null, message: String(message.error.message ?? message.error) };
  }
}
out.elapsedMs = Date.now() - started;
console.log(JSON.stringify(out));
await client.close();
