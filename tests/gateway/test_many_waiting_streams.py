"""Many held 2025-era calls at once: every stream gets its keep-alives and notices from the shared timers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types

from tests.gateway.relay_harness import relay_gateway
from tests.gateway.test_notice_frames import HEADERS, as_the_sdk_writes
from tests.gateway.test_resumable_streams import HELD, open_session
from tests.harness import ALICE_TOKEN

CALLS = 6


def held_call(call_id: int, token: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {"name": "echo", "arguments": {"text": f"call {call_id}"}}
    if token is not None:
        params["_meta"] = {"progressToken": token}
    return {"jsonrpc": "2.0", "id": call_id, "method": "tools/call", "params": params}


async def test_every_waiting_stream_gets_keep_alives_and_its_own_notices_and_then_its_result(tmp_path: Path) -> None:
    # Half the calls ask for progress (notices and keep-alives), half do not (keep-alives only); one client
    # leaves early, and the streams around it go on.
    seen: dict[int, dict[str, Any]] = {
        i: {"comments": 0, "notices": [], "result": None, "ended": False} for i in range(1, CALLS + 1)
    }
    enough = anyio.Event()

    def all_waiting_long_enough() -> bool:
        return all(s["comments"] >= 2 and (i % 2 == 0 or len(s["notices"]) >= 3) for i, s in seen.items() if i != 1)

    async with (
        relay_gateway(
            tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", HELD, keepalive_interval="0.3s", progress_interval=0.5
        ) as (base, _gateway),
        httpx2.AsyncClient(headers=HEADERS, timeout=httpx2.Timeout(30.0)) as http,
        httpx2.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {ALICE_TOKEN}"}) as api,
    ):
        session = await open_session(http, base)

        async def call(call_id: int) -> None:
            token = f"t-{call_id}" if call_id % 2 else None
            mine = seen[call_id]
            async with http.stream("POST", f"{base}/mcp", json=held_call(call_id, token), headers=session) as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                data: list[str] = []
                async for line in response.aiter_lines():
                    if line == ": keep-alive":
                        mine["comments"] += 1
                    elif line.startswith("data: ") and line != "data: ":
                        data.append(line.removeprefix("data: "))
                    elif not line and data:
                        text = data.pop()
                        assert text == as_the_sdk_writes(text)
                        message = json.loads(text)
                        if "result" in message:
                            mine["result"] = message
                            break
                        assert message["params"]["progressToken"] == token
                        mine["notices"].append(message["params"])
                    if call_id == 1 and mine["comments"] >= 1:
                        break  # this client leaves while held
                    if all_waiting_long_enough():
                        enough.set()
            mine["ended"] = True

        async with anyio.create_task_group() as tg:
            for call_id in seen:
                tg.start_soon(call, call_id)
            with anyio.fail_after(30):
                await enough.wait()
                pending: list[dict[str, Any]] = []
                while len(pending) < CALLS - 1:  # the one that left is withdrawn or detached, no longer waiting
                    listed = (await api.get("/api/approvals", params={"status": "pending"})).json()["approvals"]
                    pending = [p for p in listed if p["arguments"]["text"] != "call 1"]
                    await anyio.sleep(0.1)
                for request in pending:
                    assert (await api.post(f"/api/approvals/{request['id']}/approve", json={})).status_code == 200

    for call_id, mine in seen.items():
        if call_id == 1:
            assert mine["result"] is None
            continue
        assert mine["comments"] >= 2, f"call {call_id} got keep-alives while it waited"
        progress = [n["progress"] for n in mine["notices"]]
        if call_id % 2:
            assert len(progress) >= 3 and progress == sorted(set(progress)), f"call {call_id}: {progress}"
            assert any("Waiting for approval" in n["message"] for n in mine["notices"])
        else:
            assert progress == [], "no progress token, no notices"
        result = types.CallToolResult.model_validate(mine["result"]["result"])
        assert [b.text for b in result.content if isinstance(b, types.TextContent)] == [f"echo: call {call_id}"]
