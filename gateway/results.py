"""Results the gateway writes for the model: pending, stored, status; the gateway's own tools; result summaries."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import mcp_types as types

from approvals.durations import format_duration
from approvals.edits import describe_edits
from approvals.states import EndReason, Status
from approvals.story import describe, ending
from approvals.views import RequestView
from gateway.errors import CallRefused, Tag

STATUS_TOOL = "countersign_approval_status"
WAIT_TOOL = "countersign_approval_wait"

# What a held call returns when the agent cannot wait any longer; advertised in the output schema of
# every tool that can be held, so clients that validate structured content accept it.
PENDING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "status": {"enum": ["pending", "approved", "executing"]},
        "approval_id": {"type": "string"},
        "expires_at": {"type": "string", "format": "date-time"},
    },
    "required": ["status", "approval_id", "expires_at"],
}


def text_of(result: types.CallToolResult, limit: int = 300) -> str:
    """A short summary of a result, for audit lines."""
    return _shorten(" ".join(block.text for block in result.content if isinstance(block, types.TextContent)), limit)


def summarize(result: Mapping[str, Any] | None, limit: int = 300) -> str:
    """The one summary of a stored result (as the wire has it): its text, or else its structured content."""
    if not result:
        return ""
    texts = [c.get("text", "") for c in result.get("content", []) if isinstance(c, Mapping) and c.get("type") == "text"]
    text = " ".join(str(t) for t in texts if t)
    if not text.strip() and result.get("structuredContent") is not None:
        text = json.dumps(result["structuredContent"], sort_keys=True)
    return _shorten(text, limit)


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def pending_result(view: RequestView, *, wait_seconds: float | None = None) -> types.CallToolResult:
    """Not an error: the call has not finished, and the agent is told how to find out what became of it."""
    wait = f"up to {format_duration(wait_seconds)} at a time" if wait_seconds else "until a decision"
    if view.status == Status.PENDING:
        where = f"This call needs human approval and is still waiting (request {view.id}); it has not been executed."
    else:
        where = f"{describe(view)} Request {view.id} has not finished yet."
    text = (
        f"{where} It expires at {view.expires_at:%Y-%m-%d %H:%M:%S} UTC. "
        f'To get the outcome, call {WAIT_TOOL} with {{"approval_id": "{view.id}"}} — it waits {wait} and '
        f"returns the tool's result once approved — or {STATUS_TOOL} to check without waiting. "
        "Repeating this exact call joins this same request while it is open and, for a while after it ends, "
        "gets its outcome again instead of asking anew."
    )
    structured = {"status": view.status.value, "approval_id": view.id, "expires_at": view.expires_at.isoformat()}
    return Tag.APPROVAL_PENDING.result(text, structured)


# The `_meta` key of a result returned again for a repeated call (`[server] repeat_window`): nothing ran again.
REPEAT_META = "io.countersign/repeat"

# The tag an agent reads for a request that ended without a result of the upstream's.
_ENDED: dict[Status, Tag] = {
    Status.REJECTED: Tag.APPROVAL_REJECTED,
    Status.EXPIRED: Tag.APPROVAL_EXPIRED,
    Status.CANCELLED: Tag.APPROVAL_CANCELLED,
    Status.OUTCOME_UNKNOWN: Tag.OUTCOME_UNKNOWN,
}


def answer(view: RequestView, note: str = "") -> types.CallToolResult:
    """What the agent gets for a request that has ended: the stored result, or its ending under its tag."""
    if view.damage:  # its record cannot be read: say so rather than guess what became of the call
        raise CallRefused(Tag.APPROVAL_UNAVAILABLE, describe(view), {"approval_id": view.id})
    if view.status in (Status.EXECUTED, Status.FAILED):
        result = with_changes(view, stored_result(view))
        if note:
            # The upstream's result is returned exactly as it was; `_meta` says it is that request's, again.
            repeat = {REPEAT_META: {"approval_id": view.id, "note": note.strip()}}
            result = result.model_copy(update={"meta": {**(result.meta or {}), **repeat}})
        return result
    structured: dict[str, Any] = {"status": view.status.value, "approval_id": view.id}
    if view.status == Status.REJECTED:
        structured.update(decided_by=view.decided_by, reason=view.decision_reason)
    tag = _ENDED[view.status]
    if view.ended_because == EndReason.POLICY_WITHDRAWN:
        tag = Tag.POLICY_DENIED
    raise CallRefused(tag, ending(view) + note, structured)


# The `_meta` key of the result of a call an approver changed before approving it (approval.editable).
EDITED_META = "io.countersign/edited"


def with_changes(view: RequestView, result: types.CallToolResult) -> types.CallToolResult:
    """The upstream's result, saying first what the approver changed: the agent must not think its own call ran."""
    if not view.edits or view.ended_because == EndReason.NOT_AS_APPROVED:
        return result
    changes = describe_edits(view.edits)
    note = (
        f"An approver ({view.decided_by}) changed this call before approving it: {changes}. "
        "What ran, and the result below, is the changed call."
    )
    edited = {
        "approval_id": view.id,
        "approved_by": view.decided_by,
        "changes": [edit.as_json() for edit in view.edits],
        "original_arguments_sha256": view.original_sha256,
        "arguments_sha256": view.arguments_sha256,
    }
    return result.model_copy(
        update={
            "content": [types.TextContent(type="text", text=note), *result.content],
            "meta": {**(result.meta or {}), EDITED_META: edited},
        }
    )


def stored_result(view: RequestView) -> types.CallToolResult:
    """The upstream's result of an executed (or failed) request, exactly as it was recorded."""
    if view.ended_because == EndReason.NOT_AS_APPROVED:
        # Nothing was forwarded: the gateway refused, the upstream never saw it.
        return Tag.GATEWAY_ERROR.result(describe(view), {"status": view.status.value, "approval_id": view.id})
    if view.result_json is None:
        return Tag.UPSTREAM_ERROR.result(
            f"request {view.id}: {view.error or 'no result was recorded'}",
            {"status": view.status.value, "approval_id": view.id},
        )
    return types.CallToolResult.model_validate(json.loads(view.result_json))


def status_result(view: RequestView) -> types.CallToolResult:
    """What the status tool answers: the request's state in words and as structured content."""
    info: dict[str, Any] = {
        "approval_id": view.id,
        "status": view.status.value,
        "tool": view.tool,
        "arguments": view.arguments_shown,
        "created_at": view.created_at.isoformat(),
        "expires_at": view.expires_at.isoformat(),
        "decided_by": view.decided_by,
        "decision_reason": view.decision_reason,
        "ended_because": None if view.ended_because is None else view.ended_because.value,
        "summary": describe(view),
        "agent_waiting": view.agent_waiting,
    }
    if view.edits:
        info["edits"] = [edit.as_json() for edit in view.edits]
        info["original_arguments"] = view.original_arguments_shown
    if view.pickup_deadline is not None:
        info["pickup_deadline"] = view.pickup_deadline.isoformat()
    if view.result_json is not None:
        info["result"] = view.result
    if view.error is not None:
        info["error"] = view.error
    next_step = {
        Status.PENDING: f"Call {WAIT_TOOL} to wait for the decision.",
        Status.APPROVED: f"Call {WAIT_TOOL} (or repeat the call) to run it and get its result.",
        Status.EXECUTING: f"Call {WAIT_TOOL} to get its result.",
        Status.EXECUTED: "Its result is included.",
        Status.FAILED: "The error is included.",
        Status.REJECTED: "Do not retry it.",
        Status.OUTCOME_UNKNOWN: "Check whether it took effect before doing it again; it is not retried.",
    }.get(view.status, "")
    text = f"Request {view.id} ({view.tool}) is {view.status.value}. {describe(view)} {next_step}".rstrip()
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], structured_content=info)


def gateway_tools() -> list[types.Tool]:
    approval_id = {
        "type": "string",
        "description": "The approval request id a held call returned (it starts with 'apr_').",
    }
    return [
        types.Tool(
            name=STATUS_TOOL,
            title="Approval status",
            description=(
                "Read what became of one of your tool calls that was held for human approval: pending, approved, "
                "rejected (with who and why), expired, cancelled, executed (with the tool's result), failed, or "
                "outcome_unknown (the gateway stopped while executing it: it may or may not have run). "
                "Does not wait and does not run anything."
            ),
            input_schema={
                "type": "object",
                "properties": {"approval_id": approval_id},
                "required": ["approval_id"],
                "additionalProperties": False,
            },
            annotations=types.ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False),
        ),
        types.Tool(
            name=WAIT_TOOL,
            title="Wait for approval",
            description=(
                "Wait for a human to decide one of your held tool calls. If it is approved, the call is executed "
                "(once) and the tool's real result is returned; if it was already executed, its stored result is "
                "returned. If it is rejected or expires you are told so. If nothing is settled within the wait (nobody "
                "decided, or it is still executing), a pending result comes back and you may call this tool again."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "approval_id": approval_id,
                    "timeout_seconds": {
                        "type": "number",
                        "minimum": 0,
                        "description": "How long to wait at most (capped by how long this agent may be held).",
                    },
                },
                "required": ["approval_id"],
                "additionalProperties": False,
            },
            annotations=types.ToolAnnotations(read_only_hint=False, idempotent_hint=True, open_world_hint=True),
        ),
    ]
