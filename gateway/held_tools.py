"""The gateway's own tools for a held call (`countersign_approval_status`, `countersign_approval_wait`), and
re-attaching to a request: a repeated call or the wait tool follows it like the original call.
"""

from __future__ import annotations

from typing import Any

import mcp_types as types

from approvals.audit import Event, canonical_json
from approvals.errors import RequestNotFound
from approvals.service import ApprovalService
from approvals.states import Status
from approvals.views import RequestView
from gateway.caller import Caller, ProgressLine
from gateway.errors import CallRefused, Tag
from gateway.ratelimit import Reservation
from gateway.results import STATUS_TOOL, WAIT_TOOL, pending_result, status_result


class GatewayTools:
    """Part of `gateway.held.HeldCalls`."""

    service: ApprovalService

    def hold_limit(self, agent: str, view: RequestView, asked: float | None = None) -> float | None:
        raise NotImplementedError

    async def follow(
        self,
        view: RequestView,
        caller: Caller | None,
        progress: ProgressLine,
        *,
        hold_limit: float | None,
        reservation: Reservation | None = None,
    ) -> types.CallToolResult:
        raise NotImplementedError

    async def reattach(
        self, view: RequestView, caller: Caller, progress: ProgressLine, how: str, asked: float | None = None
    ) -> types.CallToolResult:
        if not view.is_terminal:
            view = await self.service.attach(view.id, caller.agent, how)
        return await self.follow(view, caller, progress, hold_limit=self.hold_limit(caller.agent, view, asked))

    async def gateway_tool(
        self, caller: Caller, tool: str, arguments: dict[str, Any], progress: ProgressLine
    ) -> types.CallToolResult:
        approval_id = arguments.get("approval_id")
        if not isinstance(approval_id, str) or not approval_id:
            raise CallRefused(Tag.INVALID_ARGUMENTS, f"{tool} needs approval_id, the id a held call returned")
        timeout = arguments.get("timeout_seconds")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0):
            raise CallRefused(Tag.INVALID_ARGUMENTS, "timeout_seconds must be a number of seconds, 0 or more")
        try:
            view = await self.service.get(approval_id)
        except RequestNotFound:
            view = None
        if view is None or view.agent != caller.agent:
            # Another agent's request is as invisible as one that does not exist.
            raise CallRefused(Tag.NOT_FOUND, f"you have no approval request {approval_id!r}")
        await self.service.record(
            Event(
                kind="call.gateway",
                outcome="allowed",
                message=f"{tool} for {approval_id}",
                agent=caller.agent,
                tool=tool,
                request_id=approval_id,
                arguments=canonical_json(arguments),
            )
        )
        if tool == STATUS_TOOL:
            return status_result(view)
        assert tool == WAIT_TOOL
        asked = None if timeout is None else float(timeout)
        if view.status == Status.PENDING and self.hold_limit(caller.agent, view, asked) == 0:
            return pending_result(view, wait_seconds=self.hold_limit(caller.agent, view))
        return await self.reattach(view, caller, progress, f"called {WAIT_TOOL}", asked)
