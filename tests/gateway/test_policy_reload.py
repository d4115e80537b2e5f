"""A running gateway reloads its policy when the file changes; an invalid new file is refused."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import anyio
import mcp_types as types

from gateway.demo import DEMO_POLICY
from gateway.policy_store import PolicyStore
from tests.harness import running_gateway, wait_for


def text(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))


def rewrite(path: Path, document: object) -> None:
    path.write_text(json.dumps(document) if not isinstance(document, str) else document)
    # Make the change visible even on file systems with coarse mtimes.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))


async def test_a_changed_policy_file_takes_effect_without_a_restart(tmp_path: Path, sqlite_url: str) -> None:
    async with running_gateway(tmp_path, sqlite_url) as h, h.agent() as agent:
        assert "ibkr_global_cancel" not in {t.name for t in (await agent.list_tools()).tools}
        stricter = json.loads(json.dumps(DEMO_POLICY))
        stricter["hide"] = ["ibkr_global_cancel", "ibkr_get_portfolio"]
        rewrite(h.policy_file, stricter)
        await wait_for(lambda: h.gateway.policies.current.is_hidden("ibkr_get_portfolio"), within=10)
        assert "ibkr_get_portfolio" not in {t.name for t in (await agent.list_tools()).tools}
        refused = await agent.call_tool("ibkr_get_portfolio", {})
        assert refused.is_error and text(refused).startswith("[POLICY DENIED]")
        events = (await h.api().get("/api/audit")).json()["events"]
        assert any(e["kind"] == "policy.loaded" for e in events)


async def test_an_invalid_policy_file_is_refused_and_the_old_policy_stays_in_force(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with running_gateway(tmp_path, sqlite_url) as h, h.agent() as agent:
        before = h.gateway.policies.current
        rewrite(h.policy_file, {"version": "1", "default": "maybe", "tools": {}})

        async def refused() -> bool:
            events = (await h.api().get("/api/audit")).json()["events"]
            return any(e["kind"] == "policy.rejected" for e in events)

        await wait_for(refused, within=10)
        assert h.gateway.policies.current is before
        event = next(e for e in (await h.api().get("/api/audit")).json()["events"] if e["kind"] == "policy.rejected")
        assert "default" in event["message"]
        orders = await agent.call_tool("ibkr_get_open_orders", {})
        assert not orders.is_error
        hidden = await agent.call_tool("ibkr_global_cancel", {"confirm": True})
        assert text(hidden).startswith("[POLICY DENIED]")


async def test_sighup_reloads_the_policy(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"version": "1", "default": "deny"}))
    store = PolicyStore(path, watch_seconds=3600)
    async with anyio.create_task_group() as tg:
        await tg.start(store.watch)
        path.write_text(json.dumps({"version": "1", "default": "allow"}))
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for(lambda: store.current.default == "allow", within=5)
        tg.cancel_scope.cancel()
