"""Resumable SSE streams: event ids, a priming event with `retry`, and what a client missed replayed on reconnect."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
import pytest

from gateway.event_store import RETRY_MS, BoundedEventStore
from tests.gateway.relay_harness import relay_gateway
from tests.harness import AGENT_TOKEN, ALICE_TOKEN

VERSION = "2025-11-25"
HELD = {
    "version": "1",
    "default": "allow",
    "tools": {
        "echo": {
            "require_approval": [{"conditions": [], "reason": "a human first"}],
            "approval": {"max_hold": "none"},
        }
    },
}


async def events(response: httpx2.Response) -> AsyncIterator[dict[str, Any]]:
    """The SSE events of a response, as dicts of their fields (`data` parsed when it is JSON)."""
    event: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if not line:
            if event:
                yield event
            event = {}
            continue
        name, _, value = line.partition(":")
        event[name] = value.removeprefix(" ")
        if name == "data" and event[name]:
            event[name] = json.loads(event[name])


async def open_session(http: httpx2.AsyncClient, base: str) -> dict[str, str]:
    initialize = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
    }
    response = await http.post(f"{base}/mcp", json=initialize)
    assert response.status_code == 200, response.text
    headers = {"mcp-session-id": response.headers["mcp-session-id"], "mcp-protocol-version": VERSION}
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert (await http.post(f"{base}/mcp", json=initialized, headers=headers)).status_code == 202
    return headers


async def test_a_client_that_reconnects_with_last_event_id_gets_what_it_missed_on_a_held_calls_stream(
    tmp_path: Path,
) -> None:
    headers = {"Authorization": f"Bearer {AGENT_TOKEN}", "Accept": "application/json, text/event-stream"}
    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "hi"}, "_meta": {"progressToken": "p1"}},
    }
    async with (
        relay_gateway(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", HELD) as (base, gateway),
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0)) as http,
        httpx2.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {ALICE_TOKEN}"}) as api,
    ):
        session = await open_session(http, base)
        async with http.stream("POST", f"{base}/mcp", json=call, headers=session) as response:
            stream = events(response)
            priming = await anext(stream)
            # The stream opens with an id to resume from, no data, and how soon to come back.
            assert priming["id"] and priming["data"] == "" and priming["retry"] == str(RETRY_MS)
            seen = [await anext(stream) for _ in range(2)]
            assert [e["data"]["method"] for e in seen] == ["notifications/progress"] * 2
            assert all(e["id"] for e in seen) and len({priming["id"], *(e["id"] for e in seen)}) == 3

            # A reconnect that last saw the priming event is sent everything after it, with the same ids.
            replay_headers = {**session, "Last-Event-ID": priming["id"]}
            async with http.stream("GET", f"{base}/mcp", headers=replay_headers) as replayed:
                assert replayed.status_code == 200
                again = [e async for e in events(replayed) if e.get("data")]
            assert [(e["id"], e["data"]) for e in again[:2]] == [(e["id"], e["data"]) for e in seen]

            # An id another session was given replays nothing here: a fresh session cannot read this stream.
            other = await open_session(http, base)
            async with http.stream("GET", f"{base}/mcp", headers={**other, "Last-Event-ID": seen[0]["id"]}) as foreign:
                assert [e async for e in events(foreign) if e.get("data")] == []

            [pending] = (await api.get("/api/approvals", params={"status": "pending"})).json()["approvals"]
            assert (await api.post(f"/api/approvals/{pending['id']}/approve", json={})).status_code == 200
            async for event in stream:
                if "result" in event.get("data", {}):
                    result = types.CallToolResult.model_validate(event["data"]["result"])
                    break
            assert [b.text for b in result.content if isinstance(b, types.TextContent)] == ["echo: hi"]
        assert gateway.session_manager.event_store is not None


async def test_the_event_store_keeps_within_its_bounds_and_forgets_the_oldest_first() -> None:
    store = BoundedEventStore(max_events=3)
    note = types.JSONRPCNotification(jsonrpc="2.0", method="notifications/message", params={"n": 1})
    ids = [await store.store_event("s/_GET_stream", note) for _ in range(5)]
    assert store.size[0] == 3
    replayed: list[str] = []

    async def send(event: Any) -> None:
        replayed.append(event.event_id)

    # The oldest two are gone: a client that last saw the first has lost its place on its session's stream
    # of notifications, each of which may matter, and gets nothing.
    assert await store.replay_events_after(ids[0], send) is None and replayed == []
    # One that last saw the newest one dropped has missed nothing kept after it.
    assert await store.replay_events_after(ids[1], send) == "s/_GET_stream" and replayed == ids[2:]
    replayed.clear()
    assert await store.replay_events_after(ids[2], send) == "s/_GET_stream" and replayed == ids[3:]
    # A request's stream (a held call's notices, then its result) replays what it keeps instead.
    replayed.clear()
    calls = [await store.store_event("s/7", note) for _ in range(3)]
    assert await store.replay_events_after(ids[4], send) is None  # that stream is gone altogether now
    assert await store.replay_events_after(calls[0], send) == "s/7" and replayed == calls[1:]
    calls.append(await store.store_event("s/7", note))  # the store's three are now this stream's newest
    replayed.clear()
    assert await store.replay_events_after(calls[0], send) == "s/7" and replayed == calls[1:]

    by_bytes = BoundedEventStore(max_bytes=1_200)
    big = types.JSONRPCNotification(jsonrpc="2.0", method="notifications/message", params={"x": "y" * 400})
    for _ in range(10):
        await by_bytes.store_event("s", big)
    count, size = by_bytes.size
    assert count == 2 and size <= 1_200

    with pytest.raises(ValueError, match="at least one event"):
        BoundedEventStore(max_events=0)
    with pytest.raises(ValueError, match="at least one event"):
        BoundedEventStore(per_stream=0)


async def test_a_long_stream_keeps_only_its_latest_events_and_replays_them_as_they_were_sent() -> None:
    # A held call's stream gets a notice every few seconds for as long as it waits: it keeps its latest few.
    store = BoundedEventStore(per_stream=3)
    other = await store.store_event("other", None)
    notices = [
        types.JSONRPCNotification(
            jsonrpc="2.0",
            method="notifications/progress",
            params={"progressToken": 7, "progress": n, "message": f"still waiting ({n})"},
        )
        for n in range(1, 7)
    ]
    ids = [await store.store_event("held", None)] + [await store.store_event("held", note) for note in notices]
    assert store.size[0] == 1 + 3  # the other stream's event, and the held stream's latest three

    replayed: list[Any] = []

    async def send(event: Any) -> None:
        replayed.append(event)

    # Its place among the latest: the rest is replayed, each message as it was first sent, with its id.
    assert await store.replay_events_after(ids[-3], send) == "held"
    assert [event.event_id for event in replayed] == ids[-2:]
    assert [event.message for event in replayed] == notices[-2:]
    assert [event.message.model_dump_json(by_alias=True, exclude_unset=True) for event in replayed] == [
        note.model_dump_json(by_alias=True, exclude_unset=True) for note in notices[-2:]
    ]
    # The priming event and the older notices are gone; a client that last saw one of them still finds its
    # stream and gets what is kept (the latest, which is where a result would be).
    replayed.clear()
    assert await store.replay_events_after(ids[0], send) == "held"
    assert [event.event_id for event in replayed] == ids[-3:]
    assert [event.message for event in replayed] == notices[-3:]
    replayed.clear()
    assert await store.replay_events_after(other, send) == "other" and replayed == []
    # An id the store never gave, or one of a stream it has forgotten altogether, replays nothing.
    assert await store.replay_events_after("no-such-event", send) is None
    assert await store.replay_events_after(ids[0].rpartition(".")[0] + ".x", send) is None
    small = BoundedEventStore(max_events=1)
    gone = await small.store_event("a", None)
    await small.store_event("b", None)
    assert await small.replay_events_after(gone, send) is None and replayed == []

    # A session's standalone GET stream carries notifications that each may matter: only the totals bound it.
    first = await store.store_event("s1/_GET_stream", None)
    for note in notices:
        await store.store_event("s1/_GET_stream", note)
    assert await store.replay_events_after(first, send) == "s1/_GET_stream"
    assert [event.message for event in replayed] == notices
