"""An allowed call on SQLite: its audit event is committed before it is forwarded, flushed to disk while the
upstream works, and the result reaches the agent only once that flush has ended; both protocol eras."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import anyio
import httpx2
import pytest

from tests.gateway.test_lean_calls import POLICY, Legacy, Modern
from tests.harness import Harness, running_gateway, seeing_bodies, wait_for


class HeldFlush:
    """The audit log's flush to disk, held until the test lets it go (it runs in a worker thread)."""

    def __init__(self, h: Harness, *, fails: bool = False) -> None:
        appender = h.gateway.service.db._appender
        assert appender is not None
        self.real = appender.sync
        self.started = threading.Event()
        self.go = threading.Event()
        self.fails = fails
        appender.sync = self  # type: ignore[method-assign]

    def __call__(self) -> None:
        self.started.set()
        assert self.go.wait(10)
        if self.fails:
            raise OSError("the disk went away")
        self.real()


async def calls_seen(body: bytes, forwarded: list[str]) -> None:
    message = json.loads(body) if body else {}
    if isinstance(message, dict) and message.get("method") == "tools/call":
        forwarded.append(message["params"]["name"])


@pytest.mark.parametrize("era", ["legacy", "modern"])
@pytest.mark.parametrize("lean", [True, False])
async def test_the_result_waits_for_the_flush_which_runs_while_the_upstream_works(
    tmp_path: Path, sqlite_url: str, era: str, lean: bool
) -> None:
    forwarded: list[str] = []

    async def hook(body: bytes) -> None:
        await calls_seen(body, forwarded)

    async with (
        running_gateway(tmp_path, sqlite_url, policy=POLICY, broker_in_front=lambda app: seeing_bodies(app, hook)) as h,
        httpx2.AsyncClient(timeout=10) as http,
    ):
        h.gateway.lean.enabled = lean
        session = await Legacy(h, http).open() if era == "legacy" else None
        flush = HeldFlush(h)
        answers: list[httpx2.Response] = []

        async def call() -> None:
            if session is not None:
                answers.append(await session.call("ibkr_get_open_orders", {}))
            else:
                answers.append(await Modern(h, http).call("ibkr_get_open_orders", {}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await wait_for(lambda: flush.started.is_set() and forwarded == ["ibkr_get_open_orders"])
            # The event is committed (readable) and the upstream has the call, but the flush has not ended.
            [allowed] = [e for e in await h.gateway.service.history.events(limit=5) if e.kind == "call.allowed"]
            assert allowed.tool == "ibkr_get_open_orders"
            await anyio.sleep(0.2)
            assert answers == []
            flush.go.set()
        [answer] = answers
        assert answer.status_code == 200
        text = answer.text
        body = json.loads(text[text.index("{") :].splitlines()[0]) if not text.startswith("{") else answer.json()
        assert body["result"]["isError"] is False
        assert h.gateway.service.syncs.flushes >= 1


async def test_a_failed_flush_still_returns_the_result_of_the_call_that_ran(
    tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_gateway(tmp_path, sqlite_url, policy=POLICY) as h, httpx2.AsyncClient(timeout=10) as http:
        flush = HeldFlush(h, fails=True)
        flush.go.set()
        with caplog.at_level(logging.ERROR, logger="gateway.calls"):
            answer = await Modern(h, http).call("ibkr_get_open_orders", {})
        assert answer.json()["result"]["isError"] is False
        assert "not flushed to disk after forwarding ibkr_get_open_orders" in caplog.text
