"""The database deleted, replaced, made read-only or unreachable under a running gateway: /healthz says
so, and no call runs that the audit log cannot record."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
import pytest

from tests.gateway.test_lifecycle import database_unreachable
from tests.harness import ALICE_TOKEN, Harness, running_gateway


def text(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))


def forwarded(h: Harness, tool: str) -> list[dict[str, Any]]:
    return [arguments for name, arguments in h.book.calls if name == tool]


def delete_directory(db: Path) -> None:
    shutil.rmtree(db.parent)


def replace_file(db: Path) -> None:
    # Same bytes, another file: what a restore from backup (or a careless copy) under the running gateway does.
    copy = db.with_name("copy.db")
    shutil.copyfile(db, copy)
    db.unlink()
    copy.rename(db)


def make_read_only(db: Path) -> None:
    db.chmod(0o444)


def make_immutable(db: Path) -> None:
    if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not permitted here")


def undo(db: Path) -> None:
    if db.exists():
        subprocess.run(["chattr", "-i", str(db)], capture_output=True)
        db.chmod(0o644)


@pytest.mark.parametrize(
    ("breakage", "said"),
    [
        (delete_directory, "was deleted"),
        (replace_file, "was replaced"),
        (make_read_only, "is read-only"),
        (make_immutable, "is read-only"),
    ],
    ids=["deleted", "replaced", "read-only", "immutable"],
)
async def test_a_database_file_deleted_replaced_or_read_only_is_unhealthy_and_allowed_calls_are_refused(
    tmp_path: Path, breakage: Callable[[Path], None], said: str
) -> None:
    db = tmp_path / "data" / "countersign.db"
    async with (
        running_gateway(tmp_path, f"sqlite:///{db}") as h,
        httpx2.AsyncClient(base_url=h.base_url) as http,
        h.agent() as agent,
    ):
        assert (await http.get("/healthz")).status_code == 200
        assert not (await agent.call_tool("ibkr_get_open_orders", {})).is_error
        try:
            breakage(db)

            anonymous = await http.get("/healthz")
            assert (anonymous.status_code, anonymous.json()) == (503, {"status": "degraded"})
            details = await http.get("/healthz", headers={"Authorization": f"Bearer {ALICE_TOKEN}"})
            assert details.status_code == 503
            assert said in details.json()["database"], details.json()

            before = len(forwarded(h, "ibkr_get_open_orders"))
            result = await agent.call_tool("ibkr_get_open_orders", {})
            assert result.is_error
            assert text(result).startswith("[AUDIT UNAVAILABLE] "), text(result)
            assert str(db) not in text(result), "the agent is not told where the database lives"
            assert len(forwarded(h, "ibkr_get_open_orders")) == before, "the upstream never received it"
        finally:
            undo(db)


DRY_RUN_ORDER = {
    "contract": {"symbol": "AAPL", "secType": "STK", "exchange": "SMART", "currency": "USD"},
    "order": {"action": "BUY", "totalQuantity": 10, "orderType": "MKT"},
    "dry_run": True,
}


async def test_with_the_database_down_an_allowed_call_is_refused_and_never_reaches_the_upstream(
    tmp_path: Path, postgres_url: str
) -> None:
    async with running_gateway(tmp_path, postgres_url) as h, h.agent() as agent:
        assert not (await agent.call_tool("ibkr_place_order", DRY_RUN_ORDER)).is_error
        async with database_unreachable(postgres_url):
            for tool, arguments in (("ibkr_place_order", DRY_RUN_ORDER), ("ibkr_get_open_orders", {})):
                before = len(forwarded(h, tool))
                result = await agent.call_tool(tool, arguments)
                assert text(result).startswith("[AUDIT UNAVAILABLE] "), text(result)
                assert len(forwarded(h, tool)) == before, f"{tool} reached the upstream unaudited"
            health = await h.api().get("/healthz")
            assert health.status_code == 503 and health.json()["database"] != "ok"


async def test_allow_read_only_lets_only_tools_annotated_read_only_through_while_the_audit_log_is_down(
    tmp_path: Path, postgres_url: str
) -> None:
    async with (
        running_gateway(tmp_path, postgres_url, server={"audit_unavailable": "allow_read_only"}) as h,
        h.agent() as agent,
    ):
        async with database_unreachable(postgres_url):
            # The paper broker annotates its get_* tools readOnlyHint: true, and ibkr_place_order false.
            before = len(forwarded(h, "ibkr_get_open_orders"))
            assert not (await agent.call_tool("ibkr_get_open_orders", {})).is_error
            assert len(forwarded(h, "ibkr_get_open_orders")) == before + 1
            refused = await agent.call_tool("ibkr_place_order", DRY_RUN_ORDER)
            assert text(refused).startswith("[AUDIT UNAVAILABLE] "), text(refused)
        assert forwarded(h, "ibkr_place_order") == []
