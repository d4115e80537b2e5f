"""Readiness: whether this replica should get traffic yet, for load balancers (`GET /readyz`) and for `/mcp`.

`/healthz` says the process is alive. `/readyz` says it can serve: the database answers with
this version's schema, and every upstream's first connection attempt has ended. An upstream that
failed its first attempt does not keep the replica out of service (its tools answer `[UPSTREAM
UNAVAILABLE]` while it is retried, the other upstreams' tools work); `/readyz` counts it, and
names it to a caller with an approver's API token (as `/healthz` does, upstream names and errors
are for approvers: they map the deployment).

Until the first attempts have ended (at most `[server] startup_timeout`), `/mcp` requests wait
at the door instead of reaching a catalog that is still empty, where every tool would be unknown.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from approvals.db import Database
from approvals.errors import ApprovalError
from gateway.health import is_approver
from gateway.upstreams import Upstreams

log = logging.getLogger(__name__)


class Readiness:
    def __init__(self, db: Database, upstreams: Upstreams, startup_timeout: float) -> None:
        self.db = db
        self.upstreams = upstreams
        self.startup_timeout = startup_timeout
        self.started = anyio.Event()

    async def settle(self) -> None:
        """At start: wait for every upstream's first connection attempt, at most `startup_timeout`."""
        if not await self.upstreams.wait_attempted(self.startup_timeout):
            slow = [u["name"] for u in self.upstreams.status() if u.get("first_attempt") == "in progress"]
            log.warning(
                "start-up: upstream(s) %s still connecting after %gs; serving without them meanwhile",
                ", ".join(slow),
                self.startup_timeout,
            )
        self.started.set()

    async def wait(self) -> None:
        """Until start-up has settled; bounded, so a gateway whose settling never ran still serves."""
        with anyio.move_on_after(self.startup_timeout):
            await self.started.wait()

    def gate(self, app: ASGIApp) -> ASGIApp:
        """`app`, with requests that arrive during start-up held until it has settled."""
        return _Gate(self, app)

    async def endpoint(self, request: Request) -> JSONResponse:
        report = await self.report()
        code = 200 if report["status"] == "ready" else 503
        if not is_approver(request):
            states = list(report["upstreams"].values())
            report = {
                "status": report["status"],
                "database": report["database"],
                "upstreams": {state: states.count(state) for state in sorted(set(states))},
            }
        return JSONResponse(report, status_code=code)

    async def report(self) -> dict[str, Any]:
        """Everything, for an approver: each upstream by name, and the database's and upstreams' errors."""
        report: dict[str, Any] = {"status": "ready", "database": "ok"}
        try:
            schema = await self.db.schema_state()
            if not schema.at_head:
                report.update(database="schema not current", database_detail=schema.describe())
        except ApprovalError as exc:  # unreachable, or a schema from another version
            report.update(database="unavailable", database_detail=str(exc))
        if report["database"] != "ok":
            report["status"] = "unavailable"
        elif not self.started.is_set():
            report["status"] = "starting"
        status = self.upstreams.status()
        report["upstreams"] = {u["name"]: _upstream_state(u) for u in status}
        report["upstream_errors"] = {u["name"]: u["last_error"] for u in status if u["last_error"]}
        return report


class _Gate:
    # A class rather than a closure: Starlette routes hand a plain function a Request, an instance the ASGI triple.
    def __init__(self, readiness: Readiness, app: ASGIApp) -> None:
        self.readiness = readiness
        self.app = app

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Once started, the app's own awaitable is handed on: no frame of this gate stays for a held call.
        if self.readiness.started.is_set():
            return self.app(scope, receive, send)
        return self._after_start(scope, receive, send)

    async def _after_start(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.readiness.wait()
        await self.app(scope, receive, send)


def _upstream_state(status: dict[str, Any]) -> str:
    first = status.get("first_attempt", "connected")
    if first == "in progress":
        return "connecting"
    if status["state"] == "ready":
        return "ready"
    return "failed at start" if first == "failed" else "reconnecting"
