"""The approver HTTP API: list, show, approve and reject requests, authenticated by API token."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any, NamedTuple

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from approvals.approvers import Approver
from approvals.bulk import BulkRejection, reject_pending_of
from approvals.errors import (
    AlreadyDecided,
    InvalidDecision,
    NotAllowed,
    RequestNotFound,
    StoreUnavailable,
    Unreadable,
)
from approvals.grant_terms import GrantAsk
from approvals.service import ApprovalService
from approvals.states import Status
from approvals.story import context_lines, describe, title
from approvals.terms import terms_json
from approvals.views import AuditEventView, DecisionOutcome, RequestView
from gateway import bounded_json
from gateway.api_client import CHANNEL_HEADER
from gateway.bearer import BearerProblem, bearer_token
from gateway.edited import EditedApprovals
from gateway.grant_json import grant_ask, grant_json, offer_json

log = logging.getLogger(__name__)

# A decision's body holds one reason; a reason is a sentence or two, never this much.
MAX_DECISION_BODY = 64 * 1024


def request_json(view: RequestView) -> dict[str, Any]:
    return {
        "id": view.id,
        "status": view.status.value,
        "title": title(view),
        "tool": view.tool,
        "upstream": view.upstream,
        "upstream_tool": view.upstream_tool,
        "agent": view.agent,
        "arguments": view.arguments_shown,
        "arguments_sha256": view.arguments_sha256,
        **terms_json(view),
        "rule": view.rule,
        "reason": view.reason,
        "agent_reason": view.agent_reason,
        "context": [item.as_json() for item in view.context],
        "facts": [{"label": label, "text": text} for label, text in context_lines(view)],
        "policy_version": view.policy_version,
        "approvers": list(view.approvers),
        "quorum": view.quorum,
        "channels": list(view.channels),
        "created_at": view.created_at.isoformat(),
        "expires_at": view.expires_at.isoformat(),
        "status_changed_at": view.status_changed_at.isoformat(),
        "decided_by": view.decided_by,
        "decided_via": view.decided_via,
        "decision_reason": view.decision_reason,
        "ended_because": None if view.ended_because is None else view.ended_because.value,
        "summary": describe(view),
        "agent_waiting": view.agent_waiting,
        "result": view.result,
        "error": view.error,
        "damage": list(view.damage),
        "grant_offer": offer_json(view.grant_offer),
    }


def event_json(event: AuditEventView) -> dict[str, Any]:
    data = asdict(event)
    data["at"] = event.at.isoformat()
    return data


def outcome_json(outcome: DecisionOutcome) -> dict[str, Any]:
    return {
        "approval": request_json(outcome.request),
        "decided": outcome.decided,
        "approvals": outcome.approvals,
        "needed": outcome.needed,
        "message": outcome.message,
        "grant": None if outcome.grant is None else grant_json(outcome.grant, outcome.grant.created_at),
    }


def _error(http_status: int, code: str, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail, **extra}, status_code=http_status)


def _service(request: Request) -> ApprovalService:
    service: ApprovalService = request.app.state.service
    return service


def _approver(request: Request) -> Approver:
    return approver_from_headers(request)


def approver_from_headers(request: Request) -> Approver:
    """The approver whose API token the request carries; HTTPException 401 otherwise."""
    try:
        token = bearer_token(request.scope["headers"])
    except BearerProblem as problem:
        raise HTTPException(401, f"{problem} (an approver's API token)") from None
    if token is None:
        raise HTTPException(401, "send an approver's API token as 'Authorization: Bearer <token>'")
    approver = _service(request).approvers.by_api_token(token)
    if approver is None:
        raise HTTPException(401, "the API token does not belong to any configured approver")
    return approver


async def list_approvals(request: Request) -> JSONResponse:
    _approver(request)
    raw = request.query_params.get("status")
    statuses: set[Status] | None = None
    if raw:
        try:
            statuses = {Status(s.strip()) for s in raw.split(",") if s.strip()}
        except ValueError:
            return _error(400, "bad_request", f"unknown status in {raw!r}; use {', '.join(s.value for s in Status)}")
    try:
        limit = max(1, min(int(request.query_params.get("limit", "100")), 1000))
    except ValueError:
        return _error(400, "bad_request", "limit must be a whole number")
    service = _service(request)
    views = await service.list_requests(statuses=statuses, agent=request.query_params.get("agent"), limit=limit)
    # Every agent's pending count, whatever the filter: a request drowned by another agent's flood is found by agent.
    return JSONResponse(
        {"approvals": [request_json(v) for v in views], "pending_by_agent": await service.pending_by_agent()}
    )


async def show_approval(request: Request) -> JSONResponse:
    _approver(request)
    service = _service(request)
    request_id = request.path_params["request_id"]
    view = await service.get(request_id)
    body = request_json(view)
    body["decisions"] = [
        {"approver": d.approver, "channel": d.channel, "verdict": d.verdict, "reason": d.reason, "at": d.at.isoformat()}
        for d in await service.decisions(request_id)
    ]
    body["events"] = [event_json(e) for e in await service.history.events(request_id=request_id)]
    return JSONResponse(body)


class _Decision(NamedTuple):
    reason: str | None
    grant: GrantAsk | None = None
    edits: dict[str, Any] | None = None


async def _decision_body(request: Request, *, approving: bool = False) -> _Decision:
    """The reason and, approving, a standing approval or changes to the call.

    ``{"reason": "...", "grant": {"minutes": 15}}`` or ``{"reason": "...", "edits": {"quantity": 50}}``.
    """
    raw = await _bounded_body(request)
    if not raw.strip():
        return _Decision(None)
    try:
        data = bounded_json.loads(raw, max_bytes=MAX_DECISION_BODY)
    except ValueError as exc:
        raise HTTPException(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise HTTPException(400, 'the body must be a JSON object such as {"reason": "..."}')
    # A misspelt "reason" must not silently record a decision without one.
    unknown = sorted(set(data) - ({"reason", "grant", "edits"} if approving else {"reason"}))
    if unknown:
        takes = '"reason", "grant" and "edits"' if approving else 'only "reason"'
        raise HTTPException(400, f"unknown key {unknown[0]!r}; the body takes {takes}")
    reason = data.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise HTTPException(400, "reason must be a string")
    changes = data.get("edits") or {}
    if not isinstance(changes, dict):
        raise HTTPException(400, 'edits must be an object of argument paths and values, such as {"quantity": 50}')
    grant = None if data.get("grant") in (None, False) else grant_ask(data["grant"])
    return _Decision(reason, grant, changes)


def _channel(request: Request) -> str:
    """The approver API, or the CLI that talks to it (it says so in a header): both decide the same way."""
    return "cli" if request.headers.get(CHANNEL_HEADER, "").strip().lower() == "cli" else "api"


async def _bounded_body(request: Request) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_DECISION_BODY:
            raise HTTPException(400, f"the body is larger than {MAX_DECISION_BODY} bytes; it takes only a reason")
        chunks.append(chunk)
    return b"".join(chunks)


async def approve(request: Request) -> JSONResponse:
    approver = _approver(request)
    asked = await _decision_body(request, approving=True)
    edited: EditedApprovals = request.app.state.edited
    outcome = await edited.approve(
        request.path_params["request_id"],
        approver,
        _channel(request),
        asked.reason,
        asked.edits or {},
        grant=asked.grant,
    )
    return decided(outcome)


async def reject(request: Request) -> JSONResponse:
    approver = _approver(request)
    asked = await _decision_body(request)
    outcome = await _service(request).reject(
        request.path_params["request_id"], approver, _channel(request), asked.reason
    )
    return decided(outcome)


def decided(outcome: DecisionOutcome) -> JSONResponse:
    """The answer to a decision that has committed: it reports success even if the request cannot be shown."""
    try:
        return JSONResponse(outcome_json(outcome))
    except Exception:
        log.exception("decision on %s recorded, but the request could not be shown", outcome.request.id)
        view = outcome.request
        brief = {"id": view.id, "status": view.status.value, "decided_by": view.decided_by}
        return JSONResponse({"approval": brief, "decided": outcome.decided, "message": outcome.message})


async def reject_agent(request: Request) -> JSONResponse:
    """Reject every pending request of one agent; each one as a single rejection would be (approvals.bulk)."""
    approver = _approver(request)
    raw = await _bounded_body(request)
    try:
        data = bounded_json.loads(raw, max_bytes=MAX_DECISION_BODY) if raw.strip() else None
    except ValueError as exc:
        raise HTTPException(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise HTTPException(400, 'the body must be a JSON object such as {"agent": "NAME", "reason": "..."}')
    unknown = sorted(set(data) - {"agent", "reason"})
    if unknown:
        raise HTTPException(400, f'unknown key {unknown[0]!r}; the body takes "agent" and "reason"')
    agent, reason = data.get("agent"), data.get("reason")
    if not isinstance(agent, str) or not agent.strip():
        raise HTTPException(400, "agent must name the agent whose pending requests to reject")
    if reason is not None and not isinstance(reason, str):
        raise HTTPException(400, "reason must be a string")
    outcome = await reject_pending_of(_service(request), agent.strip(), approver, _channel(request), reason)
    return JSONResponse(bulk_json(outcome))


def bulk_json(outcome: BulkRejection) -> dict[str, Any]:
    return {
        "agent": outcome.agent,
        "rejected": outcome.rejected,
        "refused": [{"id": r.request_id, "detail": r.why} for r in outcome.refused],
        "message": outcome.message,
    }


async def audit_events(request: Request) -> JSONResponse:
    _approver(request)
    try:
        limit = max(1, min(int(request.query_params.get("limit", "200")), 5000))
    except ValueError:
        return _error(400, "bad_request", "limit must be a whole number")
    events = await _service(request).history.events(request_id=request.query_params.get("request_id"), limit=limit)
    return JSONResponse({"events": [event_json(e) for e in events]})


async def audit_verify(request: Request) -> JSONResponse:
    _approver(request)
    report = await _service(request).history.verify()
    return JSONResponse({**asdict(report), "message": report.describe()}, status_code=200 if report.ok else 409)


async def not_found(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestNotFound)
    return _error(404, "not_found", str(exc))


async def not_allowed(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, NotAllowed)
    return _error(403, "forbidden", str(exc))


async def already_decided(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AlreadyDecided)
    return _error(
        409,
        "already_decided",
        str(exc),
        status=exc.status,
        decided_by=exc.by,
        decided_at=exc.at.isoformat() if exc.at else None,
        ended_because=exc.ended_because,
        summary=exc.summary,
    )


async def invalid_decision(request: Request, exc: Exception) -> JSONResponse:
    return _error(400, "bad_request", str(exc))


async def unreadable(request: Request, exc: Exception) -> JSONResponse:
    return _error(422, "unreadable", str(exc))


async def store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    return _error(503, "unavailable", str(exc))


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    codes = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}
    headers = {"WWW-Authenticate": 'Bearer realm="countersign"'} if exc.status_code == 401 else None
    return JSONResponse(
        {"error": codes.get(exc.status_code, "error"), "detail": exc.detail},
        status_code=exc.status_code,
        headers=headers,
    )


EXCEPTION_HANDLERS = {
    RequestNotFound: not_found,
    NotAllowed: not_allowed,
    AlreadyDecided: already_decided,
    InvalidDecision: invalid_decision,
    StoreUnavailable: store_unavailable,
    Unreadable: unreadable,
    HTTPException: http_error,
}

ROUTES = [
    Route("/api/approvals", list_approvals, methods=["GET"]),
    Route("/api/approvals/reject", reject_agent, methods=["POST"]),
    Route("/api/approvals/{request_id}", show_approval, methods=["GET"]),
    Route("/api/approvals/{request_id}/approve", approve, methods=["POST"]),
    Route("/api/approvals/{request_id}/reject", reject, methods=["POST"]),
    Route("/api/audit", audit_events, methods=["GET"]),
    Route("/api/audit/verify", audit_verify, methods=["GET"]),
]
