"""Held calls as MCP tasks (protocol 2025-11-25): the approval request is the task.

A client that can take a task asks for one per call (`task` in `tools/call` params, on tools
listed with `execution.taskSupport: "optional"` — the tools the policy may hold). A call the
policy holds is then not held: it is answered at once with a task whose id is the approval
request's id, and the client polls. Everything a task is lives on the request row, so a task is
visible on every replica and survives restarts:

- `tasks/get` reads the request and says what it waits for. An approved request is started
  when its status is asked for (the agent is there: the pick-up rule), in the background, once.
- `tasks/result` follows the request through `HeldCalls` like the wait tool: it blocks until
  the request has ended and returns the stored result or the tagged ending, never running the
  call a second time.
- `tasks/cancel` withdraws a pending or approved request; `tasks/list` lists the agent's own.

An agent sees only its own tasks; another agent's task id is "not found", like one that never
existed. Every task method is audited as `call.gateway`, like the gateway's own tools. A task
lives until its request's approval timeout, pick-up window and `repeat_window` have passed.

A call the policy answers at once (allowed, denied) is answered with a task that is already
finished; such a task has no request row, so it is kept in this process for `repeat_window`.

Protocol 2026-07-28 has tasks as an extension (`io.modelcontextprotocol/tasks`, SEP-2663): the
client declares it per request and the server decides. A call the policy holds is answered with
`resultType: "task"` (the same request as the task); one answered at once gets its plain result.
`tasks/get` carries the final result once the task has completed (a tool result, `isError` or
not: nothing here is a JSON-RPC failure), `tasks/cancel` and `tasks/update` are acknowledged,
and `tasks/result` and `tasks/list` do not exist.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import mcp_types as types
from mcp import MCPError
from mcp.server import Server
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp_types import CLIENT_CAPABILITIES_META_KEY
from mcp_types.jsonrpc import INVALID_PARAMS, METHOD_NOT_FOUND
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from approvals.audit import Event
from approvals.errors import RequestNotFound
from approvals.states import EndReason, Status
from approvals.story import clock_time, describe, who_decides
from approvals.views import RequestView
from gateway.caller import Caller, ProgressLine, TaskSlot
from gateway.calls import CallHandler
from gateway.errors import CallRefused
from gateway.results import answer

Ctx = ServerRequestContext[Any, Any]
CallerOf = Callable[[Ctx], Caller]
Guard = Callable[[Caller, str, Callable[[], Awaitable[types.CallToolResult]]], Awaitable[types.CallToolResult]]

RELATED_TASK = "io.modelcontextprotocol/related-task"
EXTENSION = "io.modelcontextprotocol/tasks"
MISSING_CAPABILITY = -32021
POLL_INTERVAL_MS = 1000
# Finished tasks of calls answered at once, kept in memory: at most this many per process.
_ANSWERED_MAX = 1000


def lifetime(view: RequestView, retention: float) -> float:
    """How long a request's task lives, from its creation: the decision, the pick-up, then its result's keeping."""
    return view.timeout_seconds + view.pickup_seconds + retention


def outcome(view: RequestView) -> types.CallToolResult:
    """What the agent gets for an ended request: the stored result, or the tagged ending it gets without tasks."""
    try:
        return answer(view)
    except CallRefused as refusal:
        return refusal.result()


def _text(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))


def task_of(view: RequestView, retention: float) -> types.Task:
    """The request as a task: status, what it waits for, and its lifetime."""
    status: types.TaskStatus
    if view.status == Status.PENDING:
        status = "working"
        message = (
            f"waiting for approval by {who_decides(view)}, expires {view.expires_at:%H:%M} UTC (request {view.id})"
        )
    elif view.status == Status.APPROVED:
        status = "working"
        message = f"approved by {view.decided_by}; it runs once its status or result is asked for, until "
        message += f"{clock_time(view, 'pickup')} UTC"
    elif view.status == Status.EXECUTING:
        status = "working"
        message = f"approved by {view.decided_by}; executing {view.tool}"
    else:
        result = outcome(view)
        message = _text(result)
        if view.status == Status.EXECUTED and not result.is_error:
            status = "completed"
            message = describe(view)  # the result itself is what tasks/result (or a 2026 tasks/get) returns
        elif view.status == Status.CANCELLED and view.ended_because == EndReason.WITHDRAWN:
            status = "cancelled"
        else:
            status = "failed"
    return types.Task(
        task_id=view.id,
        status=status,
        status_message=message,
        created_at=view.created_at.isoformat(),
        last_updated_at=view.status_changed_at.isoformat(),
        ttl=int(lifetime(view, retention) * 1000),
        poll_interval=POLL_INTERVAL_MS,
    )


@dataclass(frozen=True)
class _Answered:
    agent: str
    task: types.Task
    result: types.CallToolResult
    until: float


def _wire(result: types.Result) -> dict[str, Any]:
    return result.model_dump(by_alias=True, mode="json", exclude_none=True)


class HeldTasks:
    """The task methods of both eras, over the approval requests."""

    def __init__(self, handler: CallHandler, guard: Guard) -> None:
        self.handler = handler
        self.service = handler.service
        self.held = handler.held
        self.retention = handler.repeat_window
        # The one error boundary of tool calls (gateway.mcp_server): task results read like call results.
        self.guard = guard
        self._answered: dict[str, _Answered] = {}

    def install(self, server: Server[Any], caller_of: CallerOf) -> None:
        async def create(ctx: Ctx, call_next: CallNext) -> HandlerResult:
            if ctx.method != "tools/call" or not ctx.params or ctx.params.get("task") is None or _modern(ctx):
                return await call_next(ctx)
            params = types.CallToolRequestParams.model_validate(ctx.params)
            if not self.handler.may_hold(params.name):
                return await call_next(ctx)  # not a task tool: answered as a plain call
            return await self.create(caller_of(ctx), params)

        def era(
            handler: Callable[[Ctx, Any], Awaitable[Any]], modern: Callable[[Ctx, Any], Awaitable[Any]] | None
        ) -> Any:
            async def served(ctx: Ctx, params: Any) -> Any:
                if not _modern(ctx):
                    return await handler(ctx, params)
                if modern is None:  # tasks/result and tasks/list do not exist in the 2026 extension
                    raise MCPError(code=METHOD_NOT_FOUND, message="Method not found", data=ctx.method)
                if not declared(ctx):
                    data: dict[str, Any] = {"requiredCapabilities": {"extensions": {EXTENSION: {}}}}
                    raise MCPError(code=MISSING_CAPABILITY, message="Missing required client capability", data=data)
                return await modern(ctx, params)

            return served

        async def get(ctx: Ctx, params: types.GetTaskRequestParams) -> types.GetTaskResult:
            task = await self.get(caller_of(ctx), params.task_id)
            return types.GetTaskResult(**task.model_dump())

        async def get_2026(ctx: Ctx, params: types.GetTaskRequestParams) -> dict[str, Any]:
            return detailed(await self._current(caller_of(ctx), params.task_id, "tasks/get"), self.retention)

        async def cancel_2026(ctx: Ctx, params: types.CancelTaskRequestParams) -> dict[str, Any]:
            view = await self._own(caller_of(ctx), params.task_id, "tasks/cancel")
            if view.status in (Status.PENDING, Status.APPROVED):
                await self.service.withdraw(view.id, "the agent cancelled the task")
            return {}  # an acknowledgement: a task that already ran or ended stays as it is

        async def update_2026(ctx: Ctx, params: _UpdateParams) -> dict[str, Any]:
            await self._own(caller_of(ctx), params.task_id, "tasks/update")
            return {}  # a held call never asks the agent for input: there is nothing to answer

        async def result(ctx: Ctx, params: types.GetTaskPayloadRequestParams) -> types.CallToolResult:
            return await self.result(caller_of(ctx), params.task_id)

        async def cancel(ctx: Ctx, params: types.CancelTaskRequestParams) -> types.CancelTaskResult:
            task = await self.cancel(caller_of(ctx), params.task_id)
            return types.CancelTaskResult(**task.model_dump())

        async def listed(ctx: Ctx, params: types.PaginatedRequestParams) -> types.ListTasksResult:
            return types.ListTasksResult(tasks=await self.list(caller_of(ctx)))

        server.middleware.append(create)
        server.add_request_handler("tasks/get", types.GetTaskRequestParams, era(get, get_2026))
        server.add_request_handler("tasks/result", types.GetTaskPayloadRequestParams, era(result, None))
        server.add_request_handler("tasks/cancel", types.CancelTaskRequestParams, era(cancel, cancel_2026))
        server.add_request_handler("tasks/list", types.PaginatedRequestParams, era(listed, None))
        server.add_request_handler("tasks/update", _UpdateParams, era(_no_method, update_2026))

    def wanted(self, ctx: Ctx, params: types.CallToolRequestParams) -> bool:
        """A 2026-era call the gateway answers with a task if it is held (the client declared the extension)."""
        return _modern(ctx) and declared(ctx) and self.handler.may_hold(params.name)

    async def create_2026(self, caller: Caller, params: types.CallToolRequestParams) -> types.CallToolResult | Any:
        """A held call as `resultType: "task"`; a call answered at once as its plain result."""
        slot = TaskSlot()
        tasked = replace(caller, task=slot)
        arguments = dict(params.arguments or {})
        result = await self.guard(tasked, params.name, lambda: self.handler.call(tasked, params.name, arguments, None))
        if slot.request_id is None:
            return result
        return {"resultType": "task", **detailed(await self.service.get(slot.request_id), self.retention)}

    # ---- the methods

    async def create(self, caller: Caller, params: types.CallToolRequestParams) -> dict[str, Any]:
        """A task-augmented call: parked calls answer with their request as a task, others with a finished task."""
        slot = TaskSlot()
        tasked = replace(caller, task=slot)
        arguments = dict(params.arguments or {})
        result = await self.guard(tasked, params.name, lambda: self.handler.call(tasked, params.name, arguments, None))
        if slot.request_id is not None:
            view = await self.service.get(slot.request_id)
            return _wire(types.CreateTaskResult(task=task_of(view, self.retention)))
        return _wire(types.CreateTaskResult(task=self._remember(caller.agent, result)))

    async def get(self, caller: Caller, task_id: str) -> types.Task:
        answered = self._answered_task(caller, task_id)
        if answered is not None:
            await self._audit(caller, "tasks/get", task_id, None)
            return answered.task
        return task_of(await self._current(caller, task_id, "tasks/get"), self.retention)

    async def _current(self, caller: Caller, task_id: str, method: str) -> RequestView:
        """The caller's task as it is now; an approved one is started, since its agent is asking after it."""
        view = await self._own(caller, task_id, method)
        if view.status == Status.APPROVED and self.held.run_approved(view, asked=True):
            view = await self.service.get(view.id)
        return view

    async def result(self, caller: Caller, task_id: str) -> types.CallToolResult:
        answered = self._answered_task(caller, task_id)
        if answered is not None:
            await self._audit(caller, "tasks/result", task_id, None)
            return _related(answered.result, task_id)
        view = await self._own(caller, task_id, "tasks/result")
        # Leaving tasks/result is never a withdrawal (tasks/cancel is): the waiter carries no cancel reason.
        waiter = Caller(caller.agent, caller.session, caller.disconnected, groups=caller.groups)

        async def follow() -> types.CallToolResult:
            current = view
            if not current.is_terminal:
                current = await self.service.attach(view.id, caller.agent, "asked for the task's result")
            return await self.held.follow(current, waiter, ProgressLine(None), hold_limit=None)

        return _related(await self.guard(waiter, view.tool, follow), task_id)

    async def cancel(self, caller: Caller, task_id: str) -> types.Task:
        if self._answered_task(caller, task_id) is not None:
            raise MCPError(code=INVALID_PARAMS, message=f"task {task_id!r} has already finished")
        view = await self._own(caller, task_id, "tasks/cancel")
        if view.status in (Status.PENDING, Status.APPROVED):
            withdrawn = await self.service.withdraw(view.id, "the agent cancelled the task")
            view = await self.service.get(view.id)
            if withdrawn:
                return task_of(view, self.retention)
        # Decided, started or ended before the cancel arrived: a task in a terminal state cannot be cancelled.
        state = "has already ended" if view.is_terminal else "is executing"
        raise MCPError(code=INVALID_PARAMS, message=f"task {task_id!r} {state} ({view.status.value})")

    async def list(self, caller: Caller) -> list[types.Task]:
        await self._audit(caller, "tasks/list", None, None)
        now = self.service.clock()
        views = await self.service.list_requests(agent=caller.agent, limit=100)
        tasks = [task_of(v, self.retention) for v in views if now < _ends(v, self.retention)]
        mine = [a.task for a in self._answered.values() if a.agent == caller.agent and a.until > time.monotonic()]
        return [*mine, *tasks]

    # ---- identity, lifetime, audit

    async def _own(self, caller: Caller, task_id: str, method: str) -> RequestView:
        """The caller's own live task; anything else is as absent as a task that never existed."""
        try:
            view: RequestView | None = await self.service.get(task_id)
        except RequestNotFound:
            view = None
        if view is None or view.agent != caller.agent or self.service.clock() >= _ends(view, self.retention):
            await self._audit(caller, method, None, task_id)
            raise MCPError(code=INVALID_PARAMS, message=f"you have no task {task_id!r}")
        await self._audit(caller, method, task_id, None)
        return view

    async def _audit(self, caller: Caller, method: str, request_id: str | None, unknown: str | None) -> None:
        detail = {} if unknown is None else {"task_id": unknown[:100]}
        await self.service.record(
            Event(
                kind="call.gateway",
                outcome="allowed" if unknown is None else "denied",
                message=f"{method} for {request_id or unknown or 'the agent'}"
                + (": no such task of this agent" if unknown else ""),
                agent=caller.agent,
                tool=method,
                request_id=request_id,
                detail=detail,
            )
        )

    def _remember(self, agent: str, result: types.CallToolResult) -> types.Task:
        now = time.monotonic()
        for key in [k for k, a in self._answered.items() if a.until <= now][:_ANSWERED_MAX]:
            del self._answered[key]
        while len(self._answered) >= _ANSWERED_MAX:
            del self._answered[next(iter(self._answered))]
        task_id = f"tsk_{secrets.token_hex(12)}"
        stamp = datetime.now(UTC).isoformat()
        task = types.Task(
            task_id=task_id,
            status="failed" if result.is_error else "completed",
            status_message=_text(result),
            created_at=stamp,
            last_updated_at=stamp,
            ttl=int(self.retention * 1000),
            poll_interval=POLL_INTERVAL_MS,
        )
        self._answered[task_id] = _Answered(agent, task, result, now + self.retention)
        return task

    def _answered_task(self, caller: Caller, task_id: str) -> _Answered | None:
        answered = self._answered.get(task_id)
        if answered is None or answered.agent != caller.agent or answered.until <= time.monotonic():
            return None
        return answered


def detailed(view: RequestView, retention: float) -> dict[str, Any]:
    """The request as a 2026-era task (SEP-2663): an ended one carries its result, which every ending has."""
    task = task_of(view, retention)
    out: dict[str, Any] = {
        "taskId": task.task_id,
        "status": task.status,
        "statusMessage": task.status_message,
        "createdAt": task.created_at,
        "lastUpdatedAt": task.last_updated_at,
        "ttlMs": task.ttl,
        "pollIntervalMs": task.poll_interval,
    }
    if task.status in ("completed", "failed"):
        # A rejection or an expiry is a tool result the model reads (isError), not a JSON-RPC failure.
        out.update(status="completed", result=_wire(outcome(view)))
    return out


class _UpdateParams(types.RequestParams):
    task_id: str
    input_responses: dict[str, Any] | None = None


async def _no_method(ctx: Ctx, params: Any) -> Any:
    raise MCPError(code=METHOD_NOT_FOUND, message="Method not found", data=ctx.method)


def declared(ctx: Ctx) -> bool:
    """Whether the client declared the 2026 tasks extension on this request."""
    meta = (ctx.params or {}).get("_meta")
    capabilities = meta.get(CLIENT_CAPABILITIES_META_KEY) if isinstance(meta, dict) else None
    extensions = capabilities.get("extensions") if isinstance(capabilities, dict) else None
    return isinstance(extensions, dict) and EXTENSION in extensions


def _ends(view: RequestView, retention: float) -> datetime:
    return view.created_at + timedelta(seconds=lifetime(view, retention))


def _related(result: types.CallToolResult, task_id: str) -> types.CallToolResult:
    meta = dict(result.meta or {})
    meta[RELATED_TASK] = {"taskId": task_id}
    return result.model_copy(update={"meta": meta})


def _modern(ctx: Ctx) -> bool:
    return ctx.protocol_version in MODERN_PROTOCOL_VERSIONS
