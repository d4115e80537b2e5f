"""A 2025-11-25 client that takes tasks, spoken as JSON-RPC over streamable HTTP.

The Python SDK client reads a `tools/call` answer as a `CallToolResult` and has no `tasks/*`
methods, so the tests speak the protocol themselves: the handshake declares the tasks
capability, and each request's SSE (or JSON) response is read to its JSON-RPC answer.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import httpx2

VERSION = "2025-11-25"


class TaskError(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("message"))
        self.code = error.get("code")
        self.message = str(error.get("message"))


class TaskClient:
    def __init__(self, http: httpx2.AsyncClient, base_url: str, token: str) -> None:
        self.http = http
        self.url = f"{base_url}/mcp"
        self.headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
        }
        self._ids = itertools.count(1)

    async def open(self) -> dict[str, Any]:
        capabilities = {"tasks": {"list": {}, "cancel": {}}}
        body = {
            "jsonrpc": "2.0",
            "id": next(self._ids),
            "method": "initialize",
            "params": {
                "protocolVersion": VERSION,
                "capabilities": capabilities,
                "clientInfo": {"name": "task-test-client", "version": "0"},
            },
        }
        response = await self.http.post(self.url, headers=self.headers, json=body)
        assert response.status_code == 200, response.text
        self.headers["Mcp-Session-Id"] = response.headers["mcp-session-id"]
        self.headers["Mcp-Protocol-Version"] = VERSION
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert (await self.http.post(self.url, headers=self.headers, json=initialized)).status_code == 202
        return _answer(response)

    async def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": next(self._ids), "method": method}
        if params is not None:
            body["params"] = params
        response = await self.http.post(self.url, headers=self.headers, json=body)
        assert response.status_code == 200, response.text
        return _answer(response)

    async def call(self, tool: str, arguments: dict[str, Any], *, task: bool = True) -> dict[str, Any]:
        params: dict[str, Any] = {"name": tool, "arguments": arguments}
        if task:
            params["task"] = {"ttl": 60_000}
        return await self.request("tools/call", params)

    async def get(self, task_id: str) -> dict[str, Any]:
        return await self.request("tasks/get", {"taskId": task_id})

    async def result(self, task_id: str) -> dict[str, Any]:
        return await self.request("tasks/result", {"taskId": task_id})

    async def cancel(self, task_id: str) -> dict[str, Any]:
        return await self.request("tasks/cancel", {"taskId": task_id})

    async def list(self) -> list[dict[str, Any]]:
        return list((await self.request("tasks/list", {}))["tasks"])


def _answer(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC answer in a JSON or SSE response: its result, or TaskError for its error."""
    if response.headers["content-type"].startswith("text/event-stream"):
        # An empty `data:` is a stream's priming event (resumable streams), not a message.
        lines = [line[5:] for line in response.text.splitlines() if line.startswith("data:")]
        messages = [json.loads(data) for data in lines if data.strip()]
        message = next(m for m in messages if "id" in m and ("result" in m or "error" in m))
    else:
        message = response.json()
    if "error" in message:
        raise TaskError(message["error"])
    result: dict[str, Any] = message["result"]
    return result


MODERN = "2026-07-28"
EXTENSION = "io.modelcontextprotocol/tasks"


class ModernTaskClient:
    """A sessionless 2026-07-28 client, spoken by hand, that declares the tasks extension (SEP-2663) when told to."""

    def __init__(self, http: httpx2.AsyncClient, base_url: str, token: str, *, declare: bool = True) -> None:
        self.http = http
        self.url = f"{base_url}/mcp"
        self.token = token
        self.declare = declare
        self._ids = itertools.count(1)

    async def request(self, method: str, params: dict[str, Any], name: str | None = None) -> dict[str, Any]:
        capabilities: dict[str, Any] = {"extensions": {EXTENSION: {}}} if self.declare else {}
        meta = {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientInfo": {"name": "task-test-client", "version": "0"},
            "io.modelcontextprotocol/clientCapabilities": capabilities,
        }
        body = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": {**params, "_meta": meta}}
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
            "MCP-Protocol-Version": MODERN,
            "Mcp-Method": method,
        }
        if name is not None:
            headers["Mcp-Name"] = name
        response = await self.http.post(self.url, headers=headers, json=body)
        return _answer(response)

    async def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        return await self.request("tools/call", {"name": tool, "arguments": arguments}, tool)

    async def get(self, task_id: str) -> dict[str, Any]:
        return await self.request("tasks/get", {"taskId": task_id}, task_id)

    async def cancel(self, task_id: str) -> dict[str, Any]:
        return await self.request("tasks/cancel", {"taskId": task_id}, task_id)

    async def update(self, task_id: str) -> dict[str, Any]:
        return await self.request("tasks/update", {"taskId": task_id, "inputResponses": {}}, task_id)
