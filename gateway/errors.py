"""The gateway's errors, and the tags the model reads at the start of every result the gateway writes.

A tool call the gateway refuses or ends raises `CallRefused`; the MCP server turns it into an
`isError` result in one place (`gateway.mcp_server`). The tags are one enum, which also writes the
part of the server's instructions that tells the model what each tag means.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import mcp_types as types


class Tag(StrEnum):
    POLICY_DENIED = "POLICY DENIED"
    RATE_LIMITED = "RATE LIMITED"
    UNKNOWN_TOOL = "UNKNOWN TOOL"
    INVALID_ARGUMENTS = "INVALID ARGUMENTS"
    NOT_FOUND = "NOT FOUND"
    APPROVAL_PENDING = "APPROVAL PENDING"
    APPROVAL_REJECTED = "APPROVAL REJECTED"
    APPROVAL_EXPIRED = "APPROVAL EXPIRED"
    APPROVAL_CANCELLED = "APPROVAL CANCELLED"
    APPROVAL_DETACHED = "APPROVAL DETACHED"
    APPROVAL_UNAVAILABLE = "APPROVAL UNAVAILABLE"
    AUDIT_UNAVAILABLE = "AUDIT UNAVAILABLE"
    OUTCOME_UNKNOWN = "OUTCOME UNKNOWN"
    UPSTREAM_UNAVAILABLE = "UPSTREAM UNAVAILABLE"
    UPSTREAM_TIMEOUT = "UPSTREAM TIMEOUT"
    UPSTREAM_ERROR = "UPSTREAM ERROR"
    GATEWAY_ERROR = "GATEWAY ERROR"

    def text(self, message: str) -> str:
        return f"[{self.value}] {message}"

    def result(self, message: str, structured: dict[str, Any] | None = None) -> types.CallToolResult:
        """An isError tool result the model can read: the tag, then what happened and what to do."""
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=self.text(message))],
            is_error=self is not Tag.APPROVAL_PENDING,
            structured_content=structured,
        )

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_MEANINGS: dict[Tag, str] = {
    Tag.POLICY_DENIED: "the policy forbids this call; it was not executed. Do not retry it.",
    Tag.RATE_LIMITED: (
        "too many calls of this kind, too many refused calls, or too many requests waiting for approval; it was "
        "not executed. The text names the limit: retry after the time it names, or once your waiting requests "
        "are decided."
    ),
    Tag.UNKNOWN_TOOL: "no such tool is offered through this gateway.",
    Tag.INVALID_ARGUMENTS: "the arguments do not fit the tool; it was not executed. Fix the field it names.",
    Tag.NOT_FOUND: "you have no approval request with that id.",
    Tag.APPROVAL_PENDING: (
        "the call is still waiting for a human and has not been executed: call countersign_approval_wait with "
        "its approval_id to get the outcome (and the tool's result once approved) instead of calling the tool again."
    ),
    Tag.APPROVAL_REJECTED: "a human rejected the call; it was not executed. Do not retry it with the same arguments.",
    Tag.APPROVAL_EXPIRED: "nobody decided in time, or the approved call was not picked up; it was not executed.",
    Tag.APPROVAL_CANCELLED: "the request was withdrawn; the call was not executed.",
    Tag.APPROVAL_DETACHED: "you stopped waiting; the request is still open. Repeat the call or wait on it.",
    Tag.APPROVAL_UNAVAILABLE: "the approval queue could not be reached; the call was not executed. Try again later.",
    Tag.AUDIT_UNAVAILABLE: (
        "the gateway cannot write its audit log, and it runs no call it cannot record; the call was not "
        "executed. Try again later."
    ),
    Tag.OUTCOME_UNKNOWN: (
        "the approved call was being executed when the gateway stopped: it may or may not have run. Check its "
        "effect (e.g. the order's status) before doing it again; repeating the identical call does not run it again."
    ),
    Tag.UPSTREAM_UNAVAILABLE: "the server behind the tool is not reachable now; the call was not executed.",
    Tag.UPSTREAM_TIMEOUT: "the server behind the tool did not answer in time; the outcome is unknown.",
    Tag.UPSTREAM_ERROR: "the server behind the tool failed the call.",
    Tag.GATEWAY_ERROR: "the gateway failed unexpectedly; the call was not executed.",
}


def instructions() -> str:
    """What the model is told about the gateway, tags included."""
    lines = [
        "Tool calls pass through a policy. Some calls are held until a human approves them: such a call stays "
        "open and reports progress while it waits. Results that start with a tag in brackets come from the "
        "gateway, not the tool:"
    ]
    lines += [f"[{tag.value}]: {tag.meaning}" for tag in Tag]
    return "\n".join(lines)


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class CallRefused(GatewayError):
    """A tool call that ends with a tagged error result instead of the tool's own result."""

    def __init__(self, tag: Tag, message: str, structured: dict[str, Any] | None = None) -> None:
        super().__init__(tag.text(message))
        self.tag = tag
        self.message = message
        self.structured = structured

    def result(self) -> types.CallToolResult:
        return self.tag.result(self.message, self.structured)
