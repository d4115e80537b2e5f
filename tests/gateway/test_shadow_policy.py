"""A policy in shadow: it judges every call beside the live one, enforces nothing, and each difference is listed."""

from __future__ import annotations

import copy
import json
import os
import signal
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types

from approvals.audit import Event
from gateway.demo import DEMO_POLICY
from gateway.policy import Policy, parse_policy
from gateway.policy_shadow import ShadowStore
from gateway.policy_store import PolicyStore
from gateway.shadow import ShadowCall, ShadowRun
from tests.gateway.test_cli import run_beside_server
from tests.gateway.test_policy_reload import rewrite
from tests.harness import ALICE_TOKEN, Harness, held_call, running_gateway, wait_for, write_policy
from tests.web.support import browser_client, sign_in, web_config

DENY_OPEN_ORDERS: dict[str, Any] = {"deny_if": [{"conditions": [], "on_deny": "Open orders are off limits."}]}


def shadow_of(**tools: Any) -> dict[str, Any]:
    """The demo policy with some tool entries replaced: the candidate tried in shadow."""
    candidate = copy.deepcopy(DEMO_POLICY)
    candidate["tools"].update(tools)
    return candidate


def in_shadow(tmp_path: Path, document: Any, **more: Any) -> dict[str, Any]:
    """`config=` for running_gateway: the demo policy live and `document` in shadow."""
    path = tmp_path / "shadow.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return {"policy": {"file": str(tmp_path / "policy.json"), "watch": True, "shadow": "shadow.json"}, **more}


async def listed(h: Harness, count: int, **query: str) -> dict[str, Any]:
    """The API's listing once it holds `count` differences (they are written off the call path)."""
    found: dict[str, Any] = {}

    async def enough() -> bool:
        found.update((await h.api().get("/api/shadow", params=query)).json())
        return len(found["differences"]) >= count

    await wait_for(enough, within=10)
    return found


def text(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))


async def test_calls_a_shadow_policy_would_deny_pass_and_each_is_listed_as_a_difference(
    tmp_path: Path, database_url: str
) -> None:
    config = in_shadow(tmp_path, shadow_of(ibkr_get_open_orders=DENY_OPEN_ORDERS))
    async with running_gateway(tmp_path, database_url, config=config) as h, h.agent() as agent:
        for _ in range(3):
            result = await agent.call_tool("ibkr_get_open_orders", {})
            assert not result.is_error, text(result)
        assert not (await agent.call_tool("ibkr_get_portfolio", {})).is_error

        body = await listed(h, 3)
        assert body["shadow"]["state"] == "loaded"
        assert len(body["differences"]) == 3
        for difference in body["differences"]:
            assert difference["tool"] == "ibkr_get_open_orders"
            assert difference["agent"] == "alpha"
            assert difference["differs_in"] == ["decision"]
            assert difference["live"]["decision"] == "allow"
            assert difference["shadow"]["decision"] == "deny"
            assert difference["shadow"]["rule"] == 'tools["ibkr_get_open_orders"].deny_if[0]'
            assert difference["shadow"]["message"] == "Open orders are off limits."
            assert difference["live"]["policy_version"] == h.gateway.policies.version
            assert difference["shadow"]["policy_version"] == h.gateway.shadow.store.version

        api = h.api()
        assert len((await api.get("/api/shadow", params={"decision": "deny"})).json()["differences"]) == 3
        for query in ({"decision": "hold"}, {"tool": "ibkr_get_portfolio"}, {"agent": "bravo"}):
            assert (await api.get("/api/shadow", params=query)).json()["differences"] == [], query
        page = (await api.get("/api/shadow", params={"limit": "2"})).json()
        assert len(page["differences"]) == 2 and page["next_before"] == page["differences"][-1]["seq"]
        rest = (await api.get("/api/shadow", params={"before": str(page["next_before"])})).json()
        assert len(rest["differences"]) == 1

        events = (await api.get("/api/audit")).json()["events"]
        assert sum(e["kind"] == "shadow.differs" for e in events) == 3
        assert sum(e["kind"] == "call.allowed" and e["tool"] == "ibkr_get_open_orders" for e in events) == 3

        bad = await api.get("/api/shadow", params={"decision": "maybe"})
        assert bad.status_code == 400 and "decision" in bad.json()["detail"]
        assert (await h.api("not-a-token").get("/api/shadow")).status_code == 401


async def test_a_hold_for_other_approvers_and_a_quota_only_the_shadow_has_are_differences(
    tmp_path: Path, sqlite_url: str
) -> None:
    cancel = copy.deepcopy(DEMO_POLICY["tools"]["ibkr_cancel_order"])
    cancel["approval"] = {**cancel["approval"], "approvers": ["carol"]}
    portfolio = {"limits": [{"counter": "portfolio", "window": "minute", "max": 1, "scope": "grant"}]}
    config = in_shadow(tmp_path, shadow_of(ibkr_cancel_order=cancel, ibkr_get_portfolio=portfolio))
    async with running_gateway(tmp_path, sqlite_url, config=config) as h:
        async with h.agent() as agent:
            for _ in range(2):
                assert not (await agent.call_tool("ibkr_get_portfolio", {})).is_error
        async with held_call(h, "ibkr_cancel_order", {"orderId": 1001, "confirm": True}) as (request, outcome):
            await h.api().post(f"/api/approvals/{request['id']}/reject", json={"reason": "not now"})
        assert outcome["result"].is_error

        body = await listed(h, 2)
        by_tool = {d["tool"]: d for d in body["differences"]}
        limited = by_tool["ibkr_get_portfolio"]
        assert (limited["live"]["decision"], limited["shadow"]["decision"]) == ("allow", "limited")
        assert "at most 1 call per minute" in limited["shadow"]["message"]
        held = by_tool["ibkr_cancel_order"]
        assert held["differs_in"] == ["approvers"]
        assert held["live"]["approvers"] == ["group:traders"] and held["shadow"]["approvers"] == ["carol"]
        assert len((await h.api().get("/api/shadow", params={"decision": "hold"})).json()["differences"]) == 1


async def test_a_shadow_file_that_does_not_load_leaves_calls_alone_and_loads_once_fixed(
    tmp_path: Path, sqlite_url: str
) -> None:
    config = in_shadow(tmp_path, '{"version": "1", "default": "maybe"}')
    async with running_gateway(tmp_path, sqlite_url, config=config) as h, h.agent() as agent:
        assert not (await agent.call_tool("ibkr_get_open_orders", {})).is_error
        body = (await h.api().get("/api/shadow")).json()
        assert body["shadow"]["state"] == "rejected"
        assert "default" in body["shadow"]["message"] and body["differences"] == []

        rewrite(tmp_path / "shadow.json", shadow_of(ibkr_get_open_orders=DENY_OPEN_ORDERS))
        await wait_for(lambda: h.gateway.shadow.active, within=10)
        assert not (await agent.call_tool("ibkr_get_open_orders", {})).is_error
        body = await listed(h, 1)
        assert body["shadow"]["state"] == "loaded"

        # A broken edit is refused; the shadow that was loaded goes on judging.
        rewrite(tmp_path / "shadow.json", "{not json")
        state = {}

        async def refused() -> bool:
            state.update((await h.api().get("/api/shadow")).json()["shadow"])
            return state["state"] == "rejected"

        await wait_for(refused, within=10)
        assert "stays in force" in state["message"]
        assert not (await agent.call_tool("ibkr_get_open_orders", {})).is_error
        await listed(h, 2)
        kinds = [e["kind"] for e in (await h.api().get("/api/audit")).json()["events"]]
        assert kinds.count("shadow.rejected") == 2 and kinds.count("shadow.loaded") == 1


async def test_the_cli_lists_the_differences_and_names_a_bad_filter(tmp_path: Path, sqlite_url: str) -> None:
    config = in_shadow(tmp_path, shadow_of(ibkr_get_open_orders=DENY_OPEN_ORDERS))
    async with running_gateway(tmp_path, sqlite_url, config=config) as h, h.agent() as agent:
        await agent.call_tool("ibkr_get_open_orders", {})
        await listed(h, 1)
        connect = ["--url", h.base_url, "--token", ALICE_TOKEN]
        code, out, err = await run_beside_server(["policy", "shadow", *connect])
        assert code == 0, err
        assert "in force" in out
        [row] = [line for line in out.splitlines() if "ibkr_get_open_orders" in line]
        assert "alpha" in row and " allow " in row and " deny " in row
        code, out, _ = await run_beside_server(["policy", "shadow", "--tool", "ibkr_get_portfolio", *connect])
        assert code == 0 and "no differences" in out
        code, out, _ = await run_beside_server(["policy", "shadow", "--decision", "deny", "--json", *connect])
        assert code == 0 and json.loads(out)["differences"][0]["shadow"]["decision"] == "deny"
        code, _, err = await run_beside_server(["policy", "shadow", "--decision", "maybe", *connect])
        assert code == 1 and "decision: 'maybe' is not one of" in err


async def test_the_shadow_page_lists_the_differences_with_filters(tmp_path: Path, sqlite_url: str) -> None:
    config = in_shadow(tmp_path, shadow_of(ibkr_get_open_orders=DENY_OPEN_ORDERS), **web_config())
    async with running_gateway(tmp_path, sqlite_url, config=config) as h, h.agent() as agent:
        await agent.call_tool("ibkr_get_open_orders", {})
        await listed(h, 1)
        async with browser_client(h.base_url) as browser:
            assert (await browser.get("/shadow")).status_code == 303  # to the sign-in form
            await sign_in(browser, "carol")
            page = (await browser.get("/shadow")).text
            assert 'id="differences"' in page and "ibkr_get_open_orders" in page
            assert "Open orders are off limits." in page and "in force" in page
            filtered = (await browser.get("/shadow", params={"decision": "hold"})).text
            assert 'id="differences"' not in filtered and "No differences match these filters" in filtered
            wrong = (await browser.get("/shadow", params={"since": "yesterday"})).text
            assert "since: &#39;yesterday&#39; is not a date or time" in wrong


class _Broken(Policy):
    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the candidate cannot be evaluated")


async def test_a_shadow_that_fails_never_raises_into_the_call_and_is_audited_once(tmp_path: Path) -> None:
    path = write_policy(tmp_path / "shadow.json", DEMO_POLICY)
    store = ShadowStore(path)
    store.current = _Broken(source=str(path), default="allow", version="v-broken")
    store.version = "v-broken"
    recorded: list[Event] = []

    async def record(event: Event) -> None:
        recorded.append(event)

    shadow = ShadowRun(store, record)
    live = parse_policy({"version": "1", "default": "allow"})
    call = ShadowCall("alpha", "s1", "ibkr_get_portfolio", "paper", {})
    for _ in range(3):
        await shadow.observe(call, live, live.evaluate("ibkr_get_portfolio", {}))
    shadow._sender.close()
    await shadow.run()
    assert [e.kind for e in recorded] == ["shadow.error"]
    assert "the candidate cannot be evaluated" in recorded[0].message


async def test_sighup_reloads_the_shadow_policy_after_the_live_one(tmp_path: Path) -> None:
    live_path = write_policy(tmp_path / "policy.json", {"version": "1", "default": "deny"})
    shadow_path = write_policy(tmp_path / "shadow.json", {"version": "1", "default": "deny"})
    live, shadow = PolicyStore(live_path, watch_seconds=3600), ShadowStore(shadow_path, watch_seconds=3600)
    live.on_sighup.append(shadow.reload)
    told: list[str] = []

    async def listener(kind: str, message: str) -> None:
        told.append(kind)

    shadow.listeners.append(listener)
    async with anyio.create_task_group() as tg:
        await tg.start(live.watch)
        write_policy(shadow_path, {"version": "1", "default": "allow"})
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for(lambda: shadow.current is not None and shadow.current.default == "allow", within=5)
        tg.cancel_scope.cancel()
    assert told == ["shadow.loaded"]
