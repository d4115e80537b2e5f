"""`GET /healthz`: a status anyone may read, and the details only for an approver.

Load balancers and uptime checks call it without credentials and need only `status` (and the
HTTP code: 503 when the database cannot be written). The database check is a write probe
(`Database.probe_write`): a file deleted, replaced or made read-only under the running gateway,
or a database that answers reads but refuses writes, is unhealthy, because every call would be
refused for want of an audit log. The details (each upstream's name, URL state
and last error, the database's error text) describe the deployment to whoever asks, so they are
shown only to a caller with an approver's API token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from approvals.errors import StoreUnavailable
from gateway.api import approver_from_headers


async def health(
    request: Request, *, probe: Callable[[], Awaitable[None]], upstreams: Sequence[dict[str, Any]]
) -> JSONResponse:
    body: dict[str, Any] = {"status": "ok", "upstreams": list(upstreams)}
    try:
        await probe()
        body["database"] = "ok"
    except StoreUnavailable as exc:
        body.update(status="degraded", database=str(exc))
    if any(u["state"] != "ready" for u in body["upstreams"]):
        body["status"] = "degraded"
    status_code = 200 if body["database"] == "ok" else 503
    if not is_approver(request):
        body = {"status": body["status"]}
    return JSONResponse(body, status_code=status_code)


def is_approver(request: Request) -> bool:
    """Whether the request carries an approver's API token (then it may see a deployment's details)."""
    if "authorization" not in request.headers:
        return False
    try:
        approver_from_headers(request)
    except HTTPException:
        # A wrong token on a health check is not worth a 401 (monitors ignore the body); it just sees less.
        return False
    return True
