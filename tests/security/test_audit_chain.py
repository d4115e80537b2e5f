"""The audit chain proves what ran: a forger with write access to the database but not the audit key.

Each test is one finding of the adversarial review. The gateway runs for real (HTTP, a real MCP
client, the paper broker that records every call it receives in `book.calls`); the forger
changes rows with plain SQL and rehashes with the published scheme, which without the key can
only be plain SHA-256; `countersign audit verify` and `countersign serve` are run as the CLI.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import sys
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from sqlalchemy import delete, insert, select, text

from approvals import audit
from approvals.audit import GENESIS
from approvals.db import Database
from approvals.models import AuditEvent
from gateway import cli
from gateway.audit_keeper import audit_files
from tests.harness import ALICE_TOKEN, Harness, bound_socket, held_call, running_gateway, wait_for

EVENTS = AuditEvent.__table__  # type: ignore[attr-defined]
CANCEL_1001 = {"orderId": 1001, "confirm": True}
# The head goes to the log and the state file every 15 minutes by default; here, at once.
PUBLISH_OFTEN = {"audit": {"key_file": "countersign.audit-key", "head_interval": "0.1s"}}
Rows = list[dict[str, Any]]


async def countersign(*args: str) -> tuple[int, str]:
    """`countersign ARGS…` in a thread (it runs its own event loop): its exit status and all its output."""
    out = io.StringIO()

    def call() -> int:
        with redirect_stdout(out), redirect_stderr(out):
            return cli.main(list(args))

    code = await anyio.to_thread.run_sync(call)
    return code, out.getvalue()


async def verify(h: Harness, *extra: str) -> tuple[int, str]:
    key_file = audit_files(h.settings).key_file
    return await countersign(
        "audit", "verify", "--database-url", h.settings.database_url, "--key-file", str(key_file), *extra
    )


async def sql(url: str, statement: str, **params: Any) -> None:
    db = Database(url)
    try:
        async with db.write() as conn:
            await conn.execute(text(statement), params)
    finally:
        await db.dispose()


async def rewrite_chain(url: str, change: Callable[[Rows], Rows], *, from_seq: int = 1) -> None:
    """What a forger without the key does: change rows, renumber them, and rehash every event from
    `from_seq` on with the published scheme (plain SHA-256, as the HMAC needs the key)."""
    db = Database(url)
    try:
        async with db.write() as conn:
            rows = [dict(r) for r in (await conn.execute(select(EVENTS).order_by(EVENTS.c.seq))).mappings()]
            rows = change(rows)
            previous = GENESIS
            for seq, row in enumerate(rows, 1):
                if seq >= from_seq:
                    row.update(seq=seq, prev_hash=previous, keyed=False)
                    row["hash"] = audit.row_digest(row, None)
                previous = row["hash"]
            await conn.execute(delete(EVENTS))
            await conn.execute(insert(EVENTS), rows)
    finally:
        await db.dispose()


async def traffic(h: Harness, reads: int, *, after: int = 2) -> None:
    """Allowed reads, a denied call, and more reads: one audit event each."""
    async with h.agent() as agent:
        for _ in range(reads):
            assert not (await agent.call_tool("ibkr_get_open_orders", {})).is_error
        assert (await agent.call_tool("ibkr_global_cancel", {"confirm": True})).is_error
        for _ in range(after):
            assert not (await agent.call_tool("ibkr_get_open_orders", {})).is_error


def cancels(h: Harness) -> list[dict[str, Any]]:
    return [arguments for name, arguments in h.book.calls if name == "ibkr_cancel_order"]


def text_of(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))


async def test_an_edited_event_is_found_even_when_every_event_after_it_is_rehashed(
    tmp_path: Path, database_url: str
) -> None:
    async with running_gateway(tmp_path, database_url) as h:
        await traffic(h, 5)
        assert (await verify(h))[0] == 0

        def hide_the_denial(rows: Rows) -> Rows:
            [denied] = [r for r in rows if r["kind"] == "call.hidden"]
            denied.update(kind="call.allowed", outcome="allowed", message="forwarded")
            return rows

        edited = 6  # the denied call, after five reads
        await rewrite_chain(database_url, hide_the_denial, from_seq=edited)
        code, output = await verify(h)

    assert code == 1, output
    assert f"BROKEN at event #{edited}: it is not keyed, but the chain is keyed from event #1" in output


async def test_a_deleted_event_is_found_even_when_the_rest_is_renumbered_and_rehashed(
    tmp_path: Path, database_url: str
) -> None:
    async with running_gateway(tmp_path, database_url) as h:
        await traffic(h, 5)

        def drop_the_denial(rows: Rows) -> Rows:
            return [r for r in rows if r["kind"] != "call.hidden"]

        await rewrite_chain(database_url, drop_the_denial, from_seq=6)
        code, output = await verify(h)
        async with h.service.db.read() as conn:
            assert await audit.count(conn) == 7

    assert code == 1, output
    assert "BROKEN at event #6" in output


async def test_the_whole_chain_rehashed_without_the_key_does_not_verify(tmp_path: Path, database_url: str) -> None:
    async with running_gateway(tmp_path, database_url) as h:
        await traffic(h, 3)

        def relabel(rows: Rows) -> Rows:
            for row in rows:
                row["agent"] = "bravo" if row["agent"] == "alpha" else row["agent"]
            return rows

        await rewrite_chain(database_url, relabel)
        code, output = await verify(h)

    assert code == 1, output
    assert "no event is keyed with the audit key: the log was rewritten without the key" in output


async def test_removing_the_last_50_events_is_caught_by_the_head_the_gateway_published(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.audit_keeper")
    async with running_gateway(tmp_path, database_url, config=PUBLISH_OFTEN) as h:
        await traffic(h, 57)
        # The gateway writes its head to its log every head_interval: what an operator keeps elsewhere.
        await wait_for(lambda: "audit head now: #60 " in caplog.text)
        settings = h.settings
    [published] = set(re.findall(r"audit head now: #60 ([0-9a-f]{64})", caplog.text))
    head = f"60:{published}"
    key_file = str(audit_files(settings).key_file)
    base = ("audit", "verify", "--database-url", database_url, "--key-file", key_file)

    code, output = await countersign(*base, "--expect-head", head)
    assert code == 0, output
    assert f"audit chain intact: 60 events verified, head #60 {published}" in output

    await sql(database_url, "DELETE FROM audit_event WHERE seq > 10")
    code, output = await countersign(*base)
    assert code == 0 and "head #10 " in output, output  # a shorter chain is still a chain

    code, output = await countersign(*base, "--expect-head", head)
    assert code == 1, output
    assert f"the expected head #60 {published} is not in the chain, which ends at #10" in output


async def test_an_edited_decision_does_not_verify(tmp_path: Path, database_url: str) -> None:
    async with running_gateway(tmp_path, database_url) as h:
        async with held_call(h, "ibkr_cancel_order", CANCEL_1001) as (request, box):
            response = await h.api(ALICE_TOKEN).post(f"/api/approvals/{request['id']}/approve")
            assert response.status_code == 200, response.text
        assert not box["result"].is_error
        assert (await verify(h))[0] == 0

        # Someone else takes the credit (or the blame): the decision row now names bob.
        await sql(database_url, "UPDATE approval_decision SET approver = 'bob'")
        code, output = await verify(h)
        # The approver API's check says the same.
        checked = await h.api().get("/api/audit/verify")
        assert checked.status_code == 409 and checked.json()["tables"] is True, checked.text

    assert code == 1, output
    assert f"decision #1 (bob approve on {request['id']} via api) matches no decision event in the chain" in output


async def test_arguments_changed_in_the_database_after_approval_are_never_forwarded(
    tmp_path: Path, database_url: str
) -> None:
    async with running_gateway(tmp_path, database_url, server={"default_max_hold": "1s"}) as h:
        async with h.agent() as agent:
            # Held for at most a second: the agent is told to come back, the approval waits for it.
            pending = await agent.call_tool("ibkr_cancel_order", CANCEL_1001)
            approval_id = pending.structured_content["approval_id"]  # type: ignore[index]
            shown = (await h.api().get(f"/api/approvals/{approval_id}")).json()
            # The policy that held it, by its content hash (as `sha256sum policy.json` prints it).
            assert shown["policy_version"] == hashlib.sha256(h.policy_file.read_bytes()).hexdigest()
            response = await h.api(ALICE_TOKEN).post(f"/api/approvals/{approval_id}/approve")
            assert response.status_code == 200, response.text

            # Approved for order 1001; someone with the database rewrites it to 1004, digest and all.
            forged = json.dumps({"confirm": True, "orderId": 1004}, sort_keys=True, separators=(",", ":"))
            await sql(
                database_url,
                "UPDATE approval_request SET arguments = :a, arguments_sha256 = :d WHERE id = :id",
                a=forged,
                d=hashlib.sha256(forged.encode()).hexdigest(),
                id=approval_id,
            )
            code, output = await verify(h)
            assert code == 1, output
            assert f"request {approval_id}: its arguments are not those recorded when it was created" in output

            result = await agent.call_tool("countersign_approval_wait", {"approval_id": approval_id})

        assert result.is_error
        assert text_of(result).startswith("[GATEWAY ERROR] Approved by alice, but the request stored in the database")
        assert "the call was not executed" in text_of(result)
        assert cancels(h) == []  # the broker never received either order id
        ended = (await h.api().get(f"/api/approvals/{approval_id}")).json()
        assert (ended["status"], ended["ended_because"]) == ("failed", "not_as_approved")
        events = (await h.api().get("/api/audit", params={"request_id": approval_id})).json()["events"]
        kinds = [e["kind"] for e in events if e["kind"].startswith("request.")]
        assert kinds[-1] == "request.failed" and "request.executing" not in kinds
        approved = next(e for e in events if e["kind"] == "request.approved")
        original = json.dumps(CANCEL_1001, sort_keys=True, separators=(",", ":"))
        assert approved["detail"]["arguments_sha256"] == hashlib.sha256(original.encode()).hexdigest()
        assert approved["detail"]["policy_version"] == shown["policy_version"]


def _config(tmp_path: Path, database_url: str, port: int) -> Path:
    """The same database, state and key files, and policy file (the harness's) as the gateway that ran."""
    config = tmp_path / "countersign.toml"
    config.write_text(
        f'[server]\ndatabase_url = "{database_url}"\nport = {port}\n\n[policy]\nfile = "policy.json"\nwatch = false\n'
        '\n[audit]\nkey_file = "countersign.audit-key"\n'
    )
    return config


async def _serve_once(config: Path, port: int, *flags: str) -> None:
    """`countersign serve` as its own process until it answers /healthz, then stopped as an operator would."""
    command = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), *flags]
    async with await anyio.open_process(command) as process, httpx2.AsyncClient() as http:
        try:
            with anyio.fail_after(30):
                while True:
                    try:
                        if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                            break
                    except httpx2.TransportError:
                        pass
                    assert process.returncode is None, "countersign serve exited"
                    await anyio.sleep(0.1)
        finally:
            process.terminate()
            await process.wait()


async def test_the_gateway_refuses_to_start_on_a_rolled_back_audit_log_unless_told(
    tmp_path: Path, database_url: str
) -> None:
    async with running_gateway(tmp_path, database_url, config=PUBLISH_OFTEN) as h:
        await traffic(h, 5)
        files = audit_files(h.settings)
        # The newest head it has seen, kept beside the database.
        await wait_for(lambda: files.state_file.exists() and json.loads(files.state_file.read_text())["seq"] == 8)
    seen = json.loads(files.state_file.read_text())
    with bound_socket() as sock:
        port = sock.getsockname()[1]
    config = _config(tmp_path, database_url, port)
    # Restored from an older backup: the last six events are gone.
    await sql(database_url, "DELETE FROM audit_event WHERE seq > 2")

    code, output = await countersign("serve", "--config", str(config))
    assert code == 2, output
    assert "refusing to start: the database's audit log ends at #2" in output
    assert f"this gateway has seen the audit log reach #8 {seen['hash']} (recorded in {files.state_file})" in output
    assert "start once with `countersign serve --accept-audit-rollback`" in output

    # Told explicitly, it starts on the log as it is, and the log itself says so.
    await _serve_once(config, port, "--accept-audit-rollback")
    db = Database(database_url)
    try:
        async with db.read() as conn:
            accepted = await audit.event_at(conn, 3)
            last = await audit.head(conn)
    finally:
        await db.dispose()
    assert accepted is not None and accepted["kind"] == "audit.rollback_accepted"
    assert json.loads(accepted["detail"]) == {"expected_seq": 8, "expected_hash": seen["hash"]}
    # What that start wrote after it (this config names no approvers, so the policy's are unknown) counts too.
    assert last is not None and json.loads(files.state_file.read_text())["seq"] == last.seq >= 3
    code, output = await countersign(
        "audit", "verify", "--database-url", database_url, "--key-file", str(files.key_file)
    )
    assert code == 0 and f"{last.seq} events verified" in output, output
    # And from now on it starts as usual.
    await _serve_once(config, port)


async def test_a_keyed_log_is_neither_verified_nor_extended_without_its_key(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_gateway(tmp_path, database_url) as h:
        await traffic(h, 2)
        key_file = audit_files(h.settings).key_file
    assert key_file.stat().st_mode & 0o777 == 0o600
    with bound_socket() as sock:
        config = _config(tmp_path, database_url, sock.getsockname()[1])

    # Another key (a replica configured apart, or a forger's own) is refused before anything is written.
    monkeypatch.setenv("COUNTERSIGN_AUDIT_KEY", "a-different-key-of-at-least-32-characters")
    code, output = await countersign("serve", "--config", str(config))
    assert code == 2, output
    assert "the newest audit event (#5) was not written with the audit key from [audit] key or" in output
    code, output = await countersign("audit", "verify", "--config", str(config))
    assert code == 1 and "do not match its MAC" in output, output

    # No key at all: the key file is gone.
    monkeypatch.delenv("COUNTERSIGN_AUDIT_KEY")
    key = key_file.read_bytes()
    key_file.unlink()
    code, output = await countersign("serve", "--config", str(config))
    assert code == 2, output
    assert "the audit log is keyed, but no audit key is configured" in output and str(key_file) in output
    assert not key_file.exists(), "no new key is made up for a log that is keyed already"
    code, output = await countersign("audit", "verify", "--config", str(config))
    assert code == 2, output
    assert "the audit chain is keyed from event #1 on and no audit key was given" in output

    key_file.write_bytes(key)
    code, output = await countersign("audit", "verify", "--config", str(config))
    assert code == 0 and "5 events verified" in output, output


async def test_a_shared_database_does_not_start_without_a_key_its_replicas_share(
    tmp_path: Path, postgres_url: str
) -> None:
    # Each replica making up a key of its own would write one chain under several keys.
    config = tmp_path / "countersign.toml"
    (tmp_path / "policy.json").write_text('{"version": "1", "default": "deny"}')
    config.write_text(f'[server]\ndatabase_url = "{postgres_url}"\n\n[policy]\nfile = "policy.json"\n')

    code, output = await countersign("serve", "--config", str(config))

    assert code == 2, output
    assert "no audit key is configured: with a shared database every replica must use the same key" in output
    assert "[audit] key (or COUNTERSIGN_AUDIT_KEY)" in output
    assert not (tmp_path / "countersign.audit-key").exists()
