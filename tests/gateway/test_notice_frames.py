"""A held 2025-era call's "still waiting" notices, as the wire carries them: frames, JSON, ids, order, replay."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import mcp_types as types
import pytest

from tests.gateway.relay_harness import relay_gateway
from tests.gateway.test_resumable_streams import HELD, open_session
from tests.harness import AGENT_TOKEN, ALICE_TOKEN

HEADERS = {"Authorization": f"Bearer {AGENT_TOKEN}", "Accept": "application/json, text/event-stream"}


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
        assert name not in frame, f"a field twice in one frame: {line!r}"
        frame[name] = value.removeprefix(" ")


def as_the_sdk_writes(data: str) -> str:
    """The JSON the SDK's own transport writes for the message in `data`."""
    message = types.jsonrpc_message_adapter.validate_json(data, by_name=False)
    return message.model_dump_json(by_alias=True, exclude_unset=True)


@pytest.mark.parametrize("token", ["p-1", 7])
async def test_held_call_notices_are_framed_numbered_kept_and_replayed_as_the_sdk_does(
    tmp_path: Path, token: str | int
) -> None:
    call = {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "hé"}, "_meta": {"progressToken": token}},
    }
    async with (
        relay_gateway(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", HELD) as (base, _gateway),
        httpx2.AsyncClient(headers=HEADERS, timeout=httpx2.Timeout(30.0)) as http,
        httpx2.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {ALICE_TOKEN}"}) as api,
    ):
        session = await open_session(http, base)
        async with http.stream("POST", f"{base}/mcp", json=call, headers=session) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            stream = frames(response)
            priming = await anext(stream)
            assert set(priming) == {"id", "data", "retry"} and priming["data"] == ""
            seen = [await anext(stream) for _ in range(3)]
            for frame in seen:
                assert set(frame) == {"id", "event", "data"} and frame["event"] == "message"
                assert frame["data"] == as_the_sdk_writes(frame["data"])
            notices = [json.loads(frame["data"]) for frame in seen]
            assert [n["method"] for n in notices] == ["notifications/progress"] * 3
            assert [n["params"]["progressToken"] for n in notices] == [token] * 3
            assert [n["params"]["progress"] for n in notices] == [1.0, 2.0, 3.0]
            assert all("Waiting for approval" in n["params"]["message"] for n in notices)
            assert all("total" not in n["params"] for n in notices)
            # Every id names this stream and a later place on it than the one before.
            places = [int(f["id"].rpartition(".")[2]) for f in (priming, *seen)]
            assert places == sorted(places) and len(set(places)) == 4
            assert len({f["id"].rpartition(".")[0] for f in (priming, *seen)}) == 1

            # A client that last saw the first notice is sent the later ones again, byte for byte.
            async with http.stream("GET", f"{base}/mcp", headers={**session, "Last-Event-ID": seen[0]["id"]}) as again:
                replayed = [f async for f in frames(again) if f.get("data")]
            assert [(f["id"], f["data"]) for f in replayed[:2]] == [(f["id"], f["data"]) for f in seen[1:]]

            [pending] = (await api.get("/api/approvals", params={"status": "pending"})).json()["approvals"]
            assert (await api.post(f"/api/approvals/{pending['id']}/approve", json={})).status_code == 200
            later: list[dict[str, object]] = []
            async for frame in stream:
                message = json.loads(frame["data"])
                assert frame["data"] == as_the_sdk_writes(frame["data"])
                later.append(message)
                if "result" in message:
                    break
        *more, last = later
        assert more and all(m["method"] == "notifications/progress" for m in more)
        progress = [n["params"]["progress"] for n in notices] + [m["params"]["progress"] for m in more]  # type: ignore[index]
        assert progress == sorted(progress) and len(set(progress)) == len(progress), "progress only increases"
        assert any("Approved by" in m["params"]["message"] for m in more)  # type: ignore[index]
        result = types.CallToolResult.model_validate(last["result"])
        assert [b.text for b in result.content if isinstance(b, types.TextContent)] == ["echo: hé"]
