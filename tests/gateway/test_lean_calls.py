"""The plain allowed call is served by `gateway.lean_calls`, beside the SDK's transport: every request here
is sent twice, once with the lean path on and once with it off (the SDK's transport answers), and both
answers and their audit must be the same. Raw HTTP for the edge cases, real MCP clients in both eras."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest

from tests.harness import AGENT_TOKEN, OTHER_AGENT_TOKEN, Harness, agent_client, running_gateway, seeing_bodies

LEGACY = "2025-11-25"
MODERN = "2026-07-28"
POLICY = {
    "version": "1",
    "default": "allow",
    "hide": ["ibkr_global_cancel"],
    "tools": {
        "ibkr_get_contract_details": {"deny_if": [{"conditions": [], "on_deny": "Not today."}]},
        "ibkr_get_portfolio": {"limits": [{"counter": "portfolio", "window": "minute", "max": 1, "scope": "grant"}]},
        "ibkr_place_order": {"require_approval": [{"conditions": [], "reason": "A human places orders."}]},
    },
}

Reply = tuple[int, str, Any]


async def reply_of(response: httpx2.Response) -> Reply:
    kind = response.headers.get("content-type", "")
    body: Any = response.json() if kind.startswith("application/json") and response.content else response.text
    if isinstance(body, dict) and "result" in body:
        body["result"].get("_meta", {}).pop("io.modelcontextprotocol/serverInfo", None)
    return response.status_code, kind, body


async def both_ways(h: Harness, send: Callable[[], Awaitable[httpx2.Response]]) -> tuple[Reply, Reply, int]:
    """(the lean path's answer, the SDK transport's, how many the lean path served), with the audit of each."""
    lean = h.gateway.lean
    before = lean.served
    lean.enabled = True
    fast = await reply_of(await send())
    served = lean.served - before
    fast_audit = await last_audit(h)
    lean.enabled = False
    try:
        sdk = await reply_of(await send())
    finally:
        lean.enabled = True
    assert lean.served - before == served
    assert await last_audit(h) == fast_audit or fast_audit == [] or served == 0
    return fast, sdk, served


async def last_audit(h: Harness) -> list[tuple[Any, ...]]:
    events = await h.gateway.service.history.events(limit=1)
    return [(e.kind, e.outcome, e.message, e.agent, e.tool, e.arguments) for e in events]


class Legacy:
    """A 2025-era session spoken by hand (no progress token on its calls)."""

    def __init__(self, h: Harness, http: httpx2.AsyncClient, token: str = AGENT_TOKEN) -> None:
        self.url = f"{h.base_url}/mcp"
        self.http = http
        self.headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
        }

    async def open(self, capabilities: dict[str, Any] | None = None) -> Legacy:
        hello = {
            "protocolVersion": LEGACY,
            "capabilities": capabilities or {},
            "clientInfo": {"name": "t", "version": "0"},
        }
        opened = await self.post({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello})
        self.headers["Mcp-Session-Id"] = opened.headers["mcp-session-id"]
        self.headers["Mcp-Protocol-Version"] = LEGACY
        assert (await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})).status_code == 202
        return self

    async def post(self, body: Any, **headers: str) -> httpx2.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await self.http.post(self.url, headers={**self.headers, **headers}, content=content)

    async def call(self, tool: str, arguments: Any, **headers: str) -> httpx2.Response:
        params = {"name": tool, "arguments": arguments}
        return await self.post({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": params}, **headers)


class Modern:
    """2026-era requests spoken by hand: the envelope in `_meta`, the routing headers beside it."""

    def __init__(self, h: Harness, http: httpx2.AsyncClient) -> None:
        self.url = f"{h.base_url}/mcp"
        self.http = http

    async def call(
        self,
        tool: str,
        arguments: Any,
        *,
        meta: dict[str, Any] | None = None,
        body: bytes | None = None,
        **headers: str,
    ) -> httpx2.Response:
        envelope = {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "0"},
            **(meta or {}),
        }
        params = {"name": tool, "arguments": arguments, "_meta": envelope}
        sent = {
            "Authorization": f"Bearer {AGENT_TOKEN}",
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
            "Mcp-Protocol-Version": MODERN,
            "Mcp-Method": "tools/call",
            "Mcp-Name": tool,
            **headers,
        }
        content = body or json.dumps({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": params}).encode()
        return await self.http.post(self.url, headers=sent, content=content)


CALLS: dict[str, tuple[str, Any, bool]] = {
    # name: (tool, arguments, whether the answer is an error result)
    "allowed-with-structured-content": ("ibkr_get_open_orders", {}, False),
    "hidden": ("ibkr_global_cancel", {}, True),
    "denied": ("ibkr_get_contract_details", {"contract": {"symbol": "AAPL"}}, True),
    "unknown-tool": ("no_such_tool", {}, True),
    "invalid-arguments": ("ibkr_search_symbols", {"query": 5}, True),
    "upstream-is-error": ("ibkr_cancel_order", {"orderId": 424242}, True),
}


@pytest.mark.parametrize("era", ["legacy", "modern"])
@pytest.mark.parametrize("case", CALLS.keys())
async def test_a_plain_call_is_answered_and_audited_as_the_sdk_transport_answers_it(
    tmp_path: Path, sqlite_url: str, era: str, case: str
) -> None:
    tool, arguments, is_error = CALLS[case]
    async with running_gateway(tmp_path, sqlite_url, policy=POLICY) as h, httpx2.AsyncClient(timeout=10) as http:
        if era == "legacy":
            session = await Legacy(h, http).open()
            fast, sdk, served = await both_ways(h, lambda: session.call(tool, arguments))
        else:
            modern = Modern(h, http)
            fast, sdk, served = await both_ways(h, lambda: modern.call(tool, arguments))
        assert served == 1
        assert fast == sdk
        status, kind, body = fast
        assert (status, kind) == (200, "application/json")
        assert body["result"]["isError"] is is_error
        if case == "allowed-with-structured-content":
            assert "orders" in body["result"]["structuredContent"]


@pytest.mark.parametrize("case", ["allowed-with-structured-content", "denied", "upstream-is-error", "non-ascii"])
async def test_a_2026_era_answer_is_written_byte_for_byte_as_the_sdk_writes_it(
    tmp_path: Path, sqlite_url: str, case: str
) -> None:
    """The lean path writes the SDK's shaped result out itself: same bytes, same headers, string ids too."""
    tool, arguments, _ = CALLS.get(case, ("ibkr_search_symbols", {"query": "Société Générale ☃"}, False))
    async with running_gateway(tmp_path, sqlite_url, policy=POLICY) as h, httpx2.AsyncClient(timeout=10) as http:
        modern = Modern(h, http)
        for request_id in (9, "call-é"):
            params = {"name": tool, "arguments": arguments}
            sent = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
            envelope = {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "0"},
            }
            body = json.dumps({**sent, "params": {**params, "_meta": envelope}}).encode()
            answers: list[httpx2.Response] = []

            async def send(body: bytes = body, answers: list[httpx2.Response] = answers) -> httpx2.Response:
                response = await modern.call(tool, arguments, body=body)
                answers.append(response)
                return response

            _, _, served = await both_ways(h, send)
            assert served == 1
            fast, sdk = answers
            assert fast.content == sdk.content
            assert json.loads(fast.content)["id"] == request_id
            for header in ("content-type", "content-length"):
                assert fast.headers[header] == sdk.headers[header]
            assert fast.status_code == sdk.status_code == 200


@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_a_rate_limited_call_is_refused_alike(tmp_path: Path, sqlite_url: str, era: str) -> None:
    async with running_gateway(tmp_path, sqlite_url, policy=POLICY) as h, httpx2.AsyncClient(timeout=10) as http:
        if era == "legacy":
            session = await Legacy(h, http).open()
            send = lambda: session.call("ibkr_get_portfolio", {})  # noqa: E731
        else:
            modern = Modern(h, http)
            send = lambda: modern.call("ibkr_get_portfolio", {})  # noqa: E731
        first = (await send()).json()["result"]
        assert first["isError"] is False
        fast, sdk, served = await both_ways(h, send)
        assert served == 1
        assert fast == sdk
        assert fast[2]["result"]["content"][0]["text"].startswith("[RATE LIMITED]")
        limited = [e for e in await h.gateway.service.history.events(limit=10) if e.kind == "call.limited"]
        assert len(limited) == 2


async def test_bad_2025_requests_are_left_to_the_sdk(tmp_path: Path, sqlite_url: str) -> None:
    async with running_gateway(tmp_path, sqlite_url, policy=POLICY) as h, httpx2.AsyncClient(timeout=10) as http:
        session = await Legacy(h, http).open()
        other = await Legacy(h, http, OTHER_AGENT_TOKEN).open()
        cases: dict[str, Callable[[], Awaitable[httpx2.Response]]] = {
            "unknown session": lambda: session.call("ibkr_get_open_orders", {}, **{"Mcp-Session-Id": "f" * 32}),
            "another agent's session": lambda: session.call(
                "ibkr_get_open_orders", {}, **{"Mcp-Session-Id": other.headers["Mcp-Session-Id"]}
            ),
            "unknown protocol version": lambda: session.call(
                "ibkr_get_open_orders", {}, **{"Mcp-Protocol-Version": "1999-01-01"}
            ),
            "malformed JSON": lambda: session.post(b'{"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {'),
            "a batch": lambda: session.post([{"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {}}]),
            "no Accept for SSE": lambda: session.call("ibkr_get_open_orders", {}, Accept="application/json"),
            "params that are not a call": lambda: session.post(
                {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": 5}}
            ),
            "a 2026 envelope on a session": lambda: session.post(
                {
                    "jsonrpc": "2.0",
                    "id": 5,
                    "method": "tools/call",
                    "params": {
                        "name": "ibkr_get_open_orders",
                        "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN},
                    },
                }
            ),
        }
        for name, send in cases.items():
            fast, sdk, served = await both_ways(h, send)
            assert served == 0, name
            assert fast == sdk, name
            # The SDK serves a session's call carrying a 2026 envelope; everything else here is refused.
            assert fast[0] >= 400 or "error" in fast[2] or name.startswith("a 2026"), name


async def test_bad_2026_requests_are_left_to_the_sdk(tmp_path: Path, sqlite_url: str) -> None:
    async with running_gateway(tmp_path, sqlite_url, policy=POLICY) as h, httpx2.AsyncClient(timeout=10) as http:
        modern = Modern(h, http)
        tool = "ibkr_get_open_orders"
        cases: dict[str, Callable[[], Awaitable[httpx2.Response]]] = {
            "envelope version unlike the header": lambda: modern.call(
                tool, {}, meta={"io.modelcontextprotocol/protocolVersion": "2026-01-01"}
            ),
            "Mcp-Name unlike the body": lambda: modern.call(tool, {}, **{"Mcp-Name": "ibkr_search_symbols"}),
            "no Mcp-Method": lambda: modern.call(tool, {}, **{"Mcp-Method": "tools/list"}),
            "malformed JSON": lambda: modern.call(tool, {}, body=b'{"jsonrpc": "2.0", "id": 9, "method": "tools/ca'),
            "no Accept for SSE": lambda: modern.call(tool, {}, Accept="application/json"),
            "a body over the SDK's limit": lambda: modern.call(tool, {"pad": "x" * (5 << 20)}),
            "no client capabilities": lambda: modern.call(
                tool,
                {},
                body=json.dumps({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": tool}}).encode(),
            ),
        }
        for name, send in cases.items():
            fast, sdk, served = await both_ways(h, send)
            assert served == 0, name
            assert fast == sdk, name
            assert fast[0] >= 400 or "error" in fast[2], name


async def test_calls_that_may_stream_or_wait_go_through_the_sdk(tmp_path: Path, sqlite_url: str) -> None:
    async with running_gateway(tmp_path, sqlite_url, policy=POLICY) as h, httpx2.AsyncClient(timeout=10) as http:
        lean = h.gateway.lean
        session = await Legacy(h, http).open()
        progress = {"name": "ibkr_get_open_orders", "arguments": {}, "_meta": {"progressToken": "p"}}
        await session.post({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": progress})
        asks = await Legacy(h, http).open({"elicitation": {}})
        await asks.call("ibkr_get_open_orders", {})
        modern = Modern(h, http)
        await modern.call("ibkr_get_open_orders", {}, meta={"io.modelcontextprotocol/logLevel": "debug"})
        await modern.call(
            "ibkr_get_open_orders", {}, meta={"io.modelcontextprotocol/clientCapabilities": {"sampling": {}}}
        )
        await modern.call("countersign_approval_status", {})
        assert lean.served == 0
        # A tool the policy may hold never comes here: its stream must open at once.
        async with http.stream(
            "POST",
            session.url,
            headers=session.headers,
            content=json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 6,
                    "method": "tools/call",
                    "params": {"name": "ibkr_place_order", "arguments": {"contract": {}, "order": {}}},
                }
            ).encode(),
        ) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
        assert lean.served == 0


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_real_clients_get_the_same_results_either_way(tmp_path: Path, sqlite_url: str, mode: str) -> None:
    async with running_gateway(tmp_path, sqlite_url, policy=POLICY) as h:
        lean = h.gateway.lean
        results: dict[bool, list[dict[str, Any]]] = {}
        for enabled in (True, False):
            lean.enabled = enabled
            async with agent_client(h.base_url, mode=mode) as client:
                got = []
                for tool, arguments, _ in CALLS.values():
                    result: types.CallToolResult = await client.call_tool(tool, arguments)
                    dumped = result.model_dump(by_alias=True, exclude_none=True)
                    (dumped.get("_meta") or {}).pop("io.modelcontextprotocol/serverInfo", None)
                    got.append(dumped)
                results[enabled] = got
            if enabled:
                assert lean.served == len(CALLS)
        assert lean.served == len(CALLS)
        assert results[True] == results[False]
        assert results[True][0]["isError"] is False and "orders" in results[True][0]["structuredContent"]
        allowed = [e for e in await h.gateway.service.history.events(limit=100) if e.kind == "call.allowed"]
        assert len(allowed) == 2 * 2  # the open orders and the failing cancel, each way


@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_a_call_the_policy_may_hold_by_the_time_it_runs_is_handed_back_to_the_sdk(
    tmp_path: Path, sqlite_url: str, era: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The policy can change between the lean path's look and the handler's: the call then waits as any held call."""
    async with running_gateway(tmp_path, sqlite_url, policy=POLICY) as h, httpx2.AsyncClient(timeout=10) as http:
        calls = h.gateway.calls
        real = calls.may_hold
        looks: list[str] = []

        def may_hold(name: str) -> bool:
            looks.append(name)
            return False if len(looks) == 1 else real(name)  # the lean path's look sees the old policy

        monkeypatch.setattr(calls, "may_hold", may_hold)
        order = {"contract": {"symbol": "AAPL", "secType": "STK"}, "order": {"action": "BUY", "totalQuantity": 1}}
        if era == "legacy":
            session = await Legacy(h, http).open()
            body = {
                "jsonrpc": "2.0",
                "id": 5,
                "method": "tools/call",
                "params": {"name": "ibkr_place_order", "arguments": order},
            }
            request = http.stream("POST", session.url, headers=session.headers, content=json.dumps(body).encode())
        else:
            modern = Modern(h, http)
            request = None
        if request is not None:
            async with request as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                [pending] = await h.pending()
                assert pending["tool"] == "ibkr_place_order"
        else:
            async with anyio.create_task_group() as tg:
                tg.start_soon(modern.call, "ibkr_place_order", order)
                [pending] = await h.pending()
                assert pending["tool"] == "ibkr_place_order"
                tg.cancel_scope.cancel()
        assert h.gateway.lean.served == 0
        assert looks[0] == "ibkr_place_order" and len(looks) >= 2
        assert not [e for e in await h.gateway.service.history.events(limit=20) if e.kind == "call.allowed"]


AGENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{AGENT_TRACE}-00f067aa0ba902b7-01"


@pytest.mark.parametrize("era", ["legacy", "modern"])
@pytest.mark.parametrize("carried", ["none", "meta", "header"])
async def test_the_agents_trace_reaches_the_upstream_as_through_the_sdk(
    tmp_path: Path, sqlite_url: str, era: str, carried: str
) -> None:
    """Whether spans are recorded or not (a tracer provider set or not), the upstream sees the same trace either way:
    the agent's, when its request carries a `traceparent` in `_meta` or in the HTTP headers."""
    seen: list[str | None] = []

    async def hook(body: bytes) -> None:
        message = json.loads(body) if body else {}
        if isinstance(message, dict) and message.get("method") == "tools/call":
            seen.append((message["params"].get("_meta") or {}).get("traceparent"))

    meta = {"traceparent": TRACEPARENT} if carried == "meta" else {}
    headers = {"traceparent": TRACEPARENT} if carried == "header" else {}
    async with (
        running_gateway(tmp_path, sqlite_url, policy=POLICY, broker_in_front=lambda app: seeing_bodies(app, hook)) as h,
        httpx2.AsyncClient(timeout=10) as http,
    ):
        if era == "legacy":
            session = await Legacy(h, http).open()
            params = {"name": "ibkr_get_open_orders", "arguments": {}, "_meta": meta}
            body = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": params}
            fast, sdk, served = await both_ways(h, lambda: session.post(body, **headers))
        else:
            modern = Modern(h, http)
            fast, sdk, served = await both_ways(
                h, lambda: modern.call("ibkr_get_open_orders", {}, meta=meta, **headers)
            )
        assert served == 1
        assert fast == sdk
        assert len(seen) == 2
        traces = [None if value is None else value.split("-")[1] for value in seen]
        assert traces[0] == traces[1] if carried != "none" else (traces[0] is None) == (traces[1] is None)
        if carried != "none":
            assert traces[0] == AGENT_TRACE
