"""`GET /api/shadow`: the calls the shadow policy would have decided differently, for approvers."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from approvals.service import ApprovalService
from gateway.api import approver_from_headers
from gateway.shadow_log import ShadowQuery, ShadowQueryError, listing


async def shadow_differences(request: Request) -> JSONResponse:
    approver_from_headers(request)
    try:
        query = ShadowQuery.parse(dict(request.query_params))
    except ShadowQueryError as exc:
        return JSONResponse({"error": "bad_request", "detail": str(exc)}, status_code=400)
    service: ApprovalService = request.app.state.service
    return JSONResponse(await listing(service.history, query))


ROUTES = [Route("/api/shadow", shadow_differences, methods=["GET"])]
