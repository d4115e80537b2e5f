"""A 2025-era call whose result is all there is to send is answered as plain JSON; anything streamed
first (progress, keep-alives) keeps the response an event stream. Raw HTTP, real gateway."""

from __future__ import annotations

import json
from pathlib import Path

import httpx2

from tests.gateway.test_lifecycle import RawLegacySession
from tests.harness import running_gateway

CANCEL = {"orderId": 1001, "confirm": True}


async def test_an_allowed_call_is_answered_as_one_json_body_with_its_session(tmp_path: Path, sqlite_url: str) -> None:
    async with running_gateway(tmp_path, sqlite_url) as h, httpx2.AsyncClient(timeout=10) as http:
        session = RawLegacySession(h.base_url)
        await session.open(http)
        response = await http.post(session.url, headers=session.headers, json=session.call("ibkr_get_open_orders", {}))
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.headers["mcp-session-id"] == session.headers["Mcp-Session-Id"]
        assert int(response.headers["content-length"]) == len(response.content)
        body = json.loads(response.content)
        assert body["id"] == 2
        assert body["result"]["isError"] is False
        assert "orders" in body["result"]["structuredContent"]


async def test_a_refused_call_is_plain_json_too(tmp_path: Path, sqlite_url: str) -> None:
    async with running_gateway(tmp_path, sqlite_url) as h, httpx2.AsyncClient(timeout=10) as http:
        session = RawLegacySession(h.base_url)
        await session.open(http)
        response = await http.post(session.url, headers=session.headers, json=session.call("ibkr_global_cancel", {}))
        assert response.headers["content-type"] == "application/json"
        result = response.json()["result"]
        assert result["isError"] is True
        assert result["content"][0]["text"].startswith("[")


async def test_a_held_call_with_a_progress_token_streams_its_progress_then_its_result(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with running_gateway(tmp_path, sqlite_url) as h, httpx2.AsyncClient(timeout=10) as http:
        session = RawLegacySession(h.base_url)
        await session.open(http)
        events: list[dict[str, object]] = []
        async with http.stream(
            "POST", session.url, headers=session.headers, json=session.call("ibkr_cancel_order", CANCEL)
        ) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: ":
                    continue  # a resumable stream opens with an event of empty data
                events.append(json.loads(line.removeprefix("data: ")))
                if events[-1].get("method") == "notifications/progress" and len(events) == 1:
                    [request] = await h.pending()
                    approved = await h.api().post(f"/api/approvals/{request['id']}/approve", json={})
                    assert approved.status_code == 200, approved.text
        assert events[0]["method"] == "notifications/progress"
        assert events[-1]["id"] == 2
        assert h.book.cancel_calls == 1


async def test_requests_other_than_tool_calls_keep_their_event_stream(tmp_path: Path, sqlite_url: str) -> None:
    async with running_gateway(tmp_path, sqlite_url) as h, httpx2.AsyncClient(timeout=10) as http:
        session = RawLegacySession(h.base_url)
        await session.open(http)
        listing = {"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {}}
        response = await http.post(session.url, headers=session.headers, json=listing)
        assert response.headers["content-type"].startswith("text/event-stream")
        [data] = [line for line in response.text.splitlines() if line.startswith("data: ") and line != "data: "]
        assert json.loads(data.removeprefix("data: "))["id"] == 3


async def test_a_call_that_may_be_held_gets_its_stream_headers_at_once_even_without_a_progress_token(
    tmp_path: Path, sqlite_url: str
) -> None:
    # Keep-alives far off, so only the gateway's knowing the call may wait sends the headers early.
    async with (
        running_gateway(tmp_path, sqlite_url, server={"keepalive_interval": "60s"}) as h,
        httpx2.AsyncClient(timeout=10) as http,
    ):
        session = RawLegacySession(h.base_url)
        await session.open(http)
        call = session.call("ibkr_cancel_order", CANCEL)
        del call["params"]["_meta"]  # no progress token: nothing to stream until the decision
        async with http.stream("POST", session.url, headers=session.headers, json=call) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            [request] = await h.pending()
            approved = await h.api().post(f"/api/approvals/{request['id']}/approve", json={})
            assert approved.status_code == 200, approved.text
            data = [line async for line in response.aiter_lines() if line.startswith("data: ") and line != "data: "]
        assert json.loads(data[-1].removeprefix("data: "))["result"]["structuredContent"]["orderId"] == 1001


async def test_a_held_calls_stream_is_resumable_and_opens_with_its_priming_event(
    tmp_path: Path, sqlite_url: str
) -> None:
    # The plain-JSON answer holds back a stream's opening; a stream that does go out still carries it first.
    async with running_gateway(tmp_path, sqlite_url) as h, httpx2.AsyncClient(timeout=10) as http:
        session = RawLegacySession(h.base_url)
        await session.open(http)
        call = session.call("ibkr_cancel_order", CANCEL)
        async with http.stream("POST", session.url, headers=session.headers, json=call) as response:
            lines: list[str] = []
            approved = False
            async for line in response.aiter_lines():
                lines.append(line)
                if not approved and line.startswith("data: {") and "notifications/progress" in line:
                    [request] = await h.pending()
                    await h.api().post(f"/api/approvals/{request['id']}/approve", json={})
                    approved = True
        assert lines[0].startswith("id: ") and lines[1] == "data: " and lines[2].startswith("retry: ")
        assert json.loads(lines[-2].removeprefix("data: "))["id"] == 2


async def test_a_call_that_may_be_held_but_is_refused_before_it_is_parked_is_plain_json_when_it_has_a_token(
    tmp_path: Path, sqlite_url: str
) -> None:
    # With a progress token the stream opens with the first notice, once the call is parked; refused before
    # that, the result is all there is to send.
    async with running_gateway(tmp_path, sqlite_url) as h, httpx2.AsyncClient(timeout=10) as http:
        session = RawLegacySession(h.base_url)
        await session.open(http)
        call = session.call("ibkr_cancel_order", {"orderId": "not a number", "confirm": True})
        assert call["params"]["_meta"]["progressToken"]
        response = await http.post(session.url, headers=session.headers, json=call)
        assert response.headers["content-type"] == "application/json"
        result = response.json()["result"]
        assert result["isError"] is True
        assert result["content"][0]["text"].startswith("[INVALID ARGUMENTS]")
        assert await h.pending_or_all() == []
