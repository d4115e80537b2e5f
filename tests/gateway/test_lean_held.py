"""A 2025-era call that may be held is served on the gateway's own stream (`gateway.lean_held`), beside the
SDK's transport: every story here runs twice, once with that path on and once with it off (the SDK's
transport serves it), and what the client sees and what the approval queue records must be the same:
results, notices, rejections, timeouts, a cancel, a dropped connection, a resumed stream."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest

from tests.harness import AGENT_TOKEN, BOB_TOKEN, Harness, running_gateway, wait_for

LEGACY = "2025-11-25"
HEADERS = {"Authorization": f"Bearer {AGENT_TOKEN}", "Accept": "application/json, text/event-stream"}
ORDER = 1001
_ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(\+00:00|Z)?")


def dumped(result: types.CallToolResult, request_id: str) -> dict[str, Any]:
    """A result as the client parsed it, made alike (see `alike`), without the server's own description."""
    data = result.model_dump(by_alias=True, exclude_none=True)
    (data.get("_meta") or {}).pop("io.modelcontextprotocol/serverInfo", None)
    return json.loads(_ISO_TIME.sub("<time>", json.dumps(data).replace(request_id, "<request>")))


def alike(text: str, request_id: str) -> str:
    """A notice's or message's text without what differs between two runs (request id, clock times)."""
    text = _ISO_TIME.sub("<time>", text.replace(request_id, "<request>"))
    text = re.sub(r"\bin \d+[hms]( \d+[ms])*", "in <left>", text)
    return re.sub(r"\d\d:\d\d(:\d\d)?( UTC)?", "<time>", text)


async def each_way(
    tmp_path: Path, story: Callable[[Harness], Awaitable[Any]], policy: dict[str, Any] | None = None
) -> tuple[Any, Any]:
    """(what the story saw with the lean path on, with it off), each on a gateway and broker of its own."""
    seen = []
    for enabled in (True, False):
        where = tmp_path / ("lean" if enabled else "sdk")
        where.mkdir()
        async with running_gateway(where, f"sqlite:///{where / 'gw.db'}", policy=policy) as h:
            lean = h.gateway.lean_held
            lean.enabled = enabled
            seen.append(await story(h))
            assert lean.served == (1 if enabled else 0), "the held call did not take the path it should"
    return seen[0], seen[1]


async def decided(h: Harness, request_id: str) -> tuple[str, list[tuple[str, str]]]:
    """A request's status and its events (kind, message), for comparing how two runs ended."""
    body = (await h.api().get(f"/api/approvals/{request_id}")).json()
    return body["status"], [(e["kind"], alike(e.get("message") or "", request_id)) for e in body["events"]]


@pytest.mark.parametrize("decision", ["approve", "reject"])
async def test_a_real_client_sees_the_same_held_call_either_way(tmp_path: Path, decision: str) -> None:
    async def story(h: Harness) -> tuple[Any, ...]:
        notices: list[str] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            notices.append(message or "")

        box: dict[str, types.CallToolResult] = {}
        async with h.agent() as agent, anyio.create_task_group() as tg:

            async def call() -> None:
                arguments = {"orderId": ORDER, "confirm": True}
                box["result"] = await agent.call_tool("ibkr_cancel_order", arguments, progress_callback=on_progress)

            tg.start_soon(call)
            [request] = await h.pending()
            await wait_for(lambda: len(notices) >= 2)
            if decision == "approve":
                answer = await h.api().post(f"/api/approvals/{request['id']}/approve", json={})
            else:
                answer = await h.api(BOB_TOKEN).post(
                    f"/api/approvals/{request['id']}/reject", json={"reason": "not this one"}
                )
            assert answer.status_code == 200, answer.text
        seen = [alike(n, request["id"]) for n in notices]
        return dumped(box["result"], request["id"]), seen[:2], seen[-1], await decided(h, request["id"])

    fast, sdk = await each_way(tmp_path, story)
    assert fast == sdk
    result, first_notices, _, (status, _) = fast
    assert all("Waiting for approval" in n for n in first_notices)
    assert status == ("executed" if decision == "approve" else "rejected")
    assert result["isError"] is (decision == "reject")


async def test_a_timed_out_held_call_is_answered_alike(tmp_path: Path) -> None:
    policy = {
        "version": "1",
        "default": "allow",
        "tools": {
            "ibkr_cancel_order": {
                "require_approval": [{"conditions": [], "reason": "a human first"}],
                "approval": {"timeout": "1s"},
            }
        },
    }

    async def story(h: Harness) -> tuple[Any, ...]:
        async with h.agent() as agent:
            result = await agent.call_tool("ibkr_cancel_order", {"orderId": ORDER, "confirm": True})
        [request] = await h.pending_or_all()
        text = " ".join(b.text for b in result.content if isinstance(b, types.TextContent))
        return alike(text, request["id"]), result.is_error, await decided(h, request["id"])

    fast, sdk = await each_way(tmp_path, story, policy)
    assert fast == sdk
    assert fast[1] is True


async def frames(response: httpx2.Response) -> AsyncIterator[dict[str, str]]:
    """Each SSE frame's fields, the data left as the text the wire carried."""
    frame: dict[str, str] = {}
    async for line in response.aiter_lines():
        if not line:
            if frame:
                yield frame
            frame = {}
            continue
        name, _, value = line.partition(":")
        frame[name] = value.removeprefix(" ")


async def open_session(http: httpx2.AsyncClient, base: str) -> dict[str, str]:
    hello = {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}
    response = await http.post(f"{base}/mcp", json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": hello})
    assert response.status_code == 200, response.text
    headers = {"mcp-session-id": response.headers["mcp-session-id"], "mcp-protocol-version": LEGACY}
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert (await http.post(f"{base}/mcp", json=initialized, headers=headers)).status_code == 202
    return headers


def held(order: int, request_id: int = 7) -> dict[str, Any]:
    arguments = {"orderId": order, "confirm": True}
    params = {"name": "ibkr_cancel_order", "arguments": arguments, "_meta": {"progressToken": "t"}}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


def shape(frame: dict[str, str], request_id: str) -> dict[str, Any]:
    """A frame's fields, its id reduced to whether it has one and its data parsed and made alike."""
    out: dict[str, Any] = {k: v for k, v in frame.items() if k != "id"}
    out["has_id"] = "id" in frame
    if frame.get("data"):
        out["data"] = json.loads(alike(frame["data"], request_id))
        (out["data"].get("result", {}).get("_meta") or {}).pop("io.modelcontextprotocol/serverInfo", None)
    return out


@pytest.mark.parametrize("ending", ["cancel", "drop"])
async def test_the_wire_a_cancel_and_a_dropped_connection_are_the_same_either_way(tmp_path: Path, ending: str) -> None:
    async with httpx2.AsyncClient(headers=HEADERS, timeout=30) as http:

        async def story(h: Harness) -> tuple[Any, ...]:
            session = await open_session(http, h.base_url)
            seen: list[dict[str, Any]] = []
            async with http.stream("POST", f"{h.base_url}/mcp", json=held(ORDER), headers=session) as response:
                headers = {k: v for k, v in response.headers.items() if k not in ("date", "mcp-session-id")}
                stream = frames(response)
                priming = await anext(stream)
                [request] = await h.pending()
                notice = await anext(stream)
                # A reconnect while the call waits gets what it missed, with the ids first sent, and ends.
                resume = {**session, "Last-Event-ID": priming["id"]}
                async with http.stream("GET", f"{h.base_url}/mcp", headers=resume) as replayed:
                    again = [f async for f in frames(replayed) if f.get("data")]
                assert again[0] == notice
                seen = [shape(priming, request["id"]), shape(notice, request["id"])]
                if ending == "cancel":
                    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7}}
                    sent = await http.post(f"{h.base_url}/mcp", json={**cancel}, headers=session)
                    assert sent.status_code == 202
                    rest = [f async for f in stream if f.get("data")]
                    seen.append(shape(rest[-1], request["id"]))
            if ending == "drop":
                await wait_for(lambda: _detached(h, request["id"]))
            await http.delete(f"{h.base_url}/mcp", headers=session)
            return headers, seen, await decided(h, request["id"])

        fast, sdk = await each_way(tmp_path, story)
        assert fast == sdk
        _, seen, (status, events) = fast
        assert seen[0]["data"] == "" and "retry" in seen[0] and seen[0]["has_id"]
        assert seen[1]["data"]["method"] == "notifications/progress" and seen[1]["has_id"]
        if ending == "cancel":
            assert seen[2]["data"]["error"] == {"code": -32800, "message": "Request cancelled"}
            assert status == "cancelled"
        else:
            assert status == "pending" and events[-1][0] == "request.detached"


async def _detached(h: Harness, request_id: str) -> bool:
    body = (await h.api().get(f"/api/approvals/{request_id}")).json()
    return any(e["kind"] == "request.detached" for e in body["events"])


async def test_clients_that_can_be_asked_and_2026_era_calls_are_left_to_the_sdk(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with running_gateway(tmp_path, sqlite_url) as h:
        lean = h.gateway.lean_held
        async with h.agent(mode="auto") as agent, anyio.create_task_group() as tg:
            box: dict[str, types.CallToolResult] = {}

            async def call() -> None:
                box["result"] = await agent.call_tool("ibkr_cancel_order", {"orderId": 1001, "confirm": True})

            tg.start_soon(call)
            [request] = await h.pending()
            assert (await h.api().post(f"/api/approvals/{request['id']}/approve", json={})).status_code == 200
        assert not box["result"].is_error
        assert lean.served == 0

        async with httpx2.AsyncClient(headers=HEADERS, timeout=30) as http:
            hello = {
                "protocolVersion": LEGACY,
                "capabilities": {"elicitation": {}},
                "clientInfo": {"name": "raw", "version": "1"},
            }
            opened = await http.post(
                f"{h.base_url}/mcp", json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": hello}
            )
            session = {"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": LEGACY}
            initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            await http.post(f"{h.base_url}/mcp", json=initialized, headers=session)
            async with http.stream("POST", f"{h.base_url}/mcp", json=held(1002), headers=session) as response:
                await anext(frames(response))
                await h.pending()
        assert lean.served == 0
