"""The human at the agent's own client as an approval channel (`channels: ["client"]`).

Where a tool's policy names the `client` channel, the gateway asks the person at the calling
agent's client whether the held call may run: an elicitation with the request's title, tool and
arguments and a yes/no form, sent while the agent waits (a server-to-client request to a 2025-era
client, an `input_required` result to a 2026-era one, `gateway.relay_rounds`). The answer is a
decision like any other, through the approval service, by the agent's identity via `client`:

- accept with `approve: true` approves; accept with `approve: false`, or decline, rejects;
- dismissing the question (cancel), or not answering, decides nothing: the request stays for
  its other channels, and with none it is rejected, since nobody else is asked.

A decision made elsewhere first withdraws the question. A client that cannot be asked (no
elicitation capability, or an agent that is not waiting) leaves the request to the other
channels; when `client` is the only one, the call is refused before any request is made.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import anyio
import mcp_types as types

from approvals.approvers import Approver
from approvals.errors import ApprovalError
from approvals.service import ApprovalService
from approvals.states import Status
from approvals.views import RequestView
from gateway.caller import Caller
from gateway.relay_traffic import ask_agent, askable

log = logging.getLogger(__name__)

CLIENT: Final = "client"
SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "approve": {"type": "boolean", "title": "Approve", "description": "Run this call?"},
        "reason": {"type": "string", "title": "Reason", "description": "Why (optional)", "maxLength": 500},
    },
    "required": ["approve"],
}
_ARGUMENTS_SHOWN = 1_500
T = TypeVar("T")


def only_client(channels: tuple[str, ...]) -> bool:
    return tuple(channels) == (CLIENT,)


def can_ask(caller: Caller) -> bool:
    """Whether this caller's own client can be asked now: it waits on the call and takes elicitations."""
    return caller.task is None and askable()


def unreachable_message(tool: str) -> str:
    return (
        f"'{tool}' needs approval by your user at your own client (policy channels: client), but your client "
        "cannot be asked: it did not declare the elicitation capability, or it is not waiting on this call. "
        "The call was not executed"
    )


def asks(view: RequestView, caller: Caller) -> bool:
    """Whether the agent's own user is asked about this request while its call is held (`alongside`)."""
    return CLIENT in view.channels and can_ask(caller)


async def alongside(
    service: ApprovalService, view: RequestView, caller: Caller, follow: Callable[[], Awaitable[T]]
) -> T:
    """Follow the held call while its agent's user is asked; the question goes once the request is decided."""
    if not asks(view, caller):
        return await follow()
    outcome: T | Exception
    async with anyio.create_task_group() as tg:
        tg.start_soon(_ask_until_decided, service, view, caller)
        try:
            outcome = await follow()
        except Exception as exc:  # raised below, not wrapped in the task group's exception group
            outcome = exc
        tg.cancel_scope.cancel()
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


async def _ask_until_decided(service: ApprovalService, view: RequestView, caller: Caller) -> None:
    async with anyio.create_task_group() as tg:

        async def decided_elsewhere() -> None:
            latest = view
            while latest.status == Status.PENDING:
                remaining = (latest.expires_at - service.clock()).total_seconds()
                if remaining <= 0:
                    break
                latest = await service.wait_for_change(view.id, Status.PENDING, within=remaining)
            tg.cancel_scope.cancel()

        tg.start_soon(decided_elsewhere)
        await _ask(service, view, caller)
        tg.cancel_scope.cancel()


async def _ask(service: ApprovalService, view: RequestView, caller: Caller) -> None:
    answer = await ask_agent(types.ElicitRequest(params=question(view)))
    approver = Approver(name=caller.agent)
    others = [c for c in view.channels if c != CLIENT]
    try:
        if isinstance(answer, types.ErrorData) or answer.action == "cancel":
            why = answer.message if isinstance(answer, types.ErrorData) else "dismissed"
            log.info("%s: the agent's client gave no decision (%s)", view.id, why)
            if not others:
                why = "the question at the agent's client was dismissed or not answered"
                await service.reject(view.id, approver, CLIENT, why)
            return
        content = answer.content or {}
        given = content.get("reason")
        reason = given.strip()[:500] or None if isinstance(given, str) else None
        if answer.action == "accept" and content.get("approve") is True:
            await service.approve(view.id, approver, CLIENT, reason)
        else:
            await service.reject(view.id, approver, CLIENT, reason or "rejected at the agent's client")
    except ApprovalError as exc:
        # Decided elsewhere a moment earlier, or the store is down: the request's own state says what happens.
        log.info("%s: the decision from the agent's client was not taken: %s", view.id, exc)


def question(view: RequestView) -> types.ElicitRequestFormParams:
    arguments = view.arguments_json
    if len(arguments) > _ARGUMENTS_SHOWN:
        arguments = arguments[:_ARGUMENTS_SHOWN] + "…"
    message = (
        f"Approval needed: {view.title or 'call ' + view.tool}\n"
        f"Tool: {view.tool}\nArguments: {arguments}\n"
        f"Approve this call (request {view.id})? It runs only if you approve."
    )
    return types.ElicitRequestFormParams(message=message, requested_schema=SCHEMA)
