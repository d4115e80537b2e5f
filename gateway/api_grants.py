"""Standing approvals in the approver API: list, show and revoke grants, and the `grant` of an approval's body.

Any approver may list and revoke grants: revoking only ever takes a permission away.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from approvals.grants import STATES, GrantNotFound, Grants
from gateway.api import approver_from_headers
from gateway.api_client import CHANNEL_HEADER
from gateway.grant_json import grant_json


def _grants(request: Request) -> Grants:
    grants: Grants = request.app.state.service.grants
    return grants


async def list_grants(request: Request) -> JSONResponse:
    approver_from_headers(request)
    raw = request.query_params.get("state", "live")
    states = () if raw == "all" else tuple(s.strip() for s in raw.split(",") if s.strip())
    unknown = [s for s in states if s not in STATES]
    if unknown:
        raise HTTPException(400, f"unknown state {unknown[0]!r}; use {', '.join(STATES)} or all")
    grants = _grants(request)
    found = await grants.list(
        states=states, agent=request.query_params.get("agent"), tool=request.query_params.get("tool")
    )
    now = grants.clock()
    return JSONResponse({"grants": [grant_json(g, now) for g in found]})


async def show_grant(request: Request) -> JSONResponse:
    approver_from_headers(request)
    grants = _grants(request)
    return JSONResponse(grant_json(await grants.get(request.path_params["grant_id"]), grants.clock()))


async def revoke_grant(request: Request) -> JSONResponse:
    approver = approver_from_headers(request)
    grants = _grants(request)
    channel = "cli" if request.headers.get(CHANNEL_HEADER, "").strip().lower() == "cli" else "api"
    grant, revoked = await grants.revoke(request.path_params["grant_id"], approver, channel)
    message = f"revoked {grant.id}" if revoked else f"{grant.id} was already revoked by {grant.revoked_by}"
    return JSONResponse({"grant": grant_json(grant, grants.clock()), "revoked": revoked, "message": message})


async def grant_not_found(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GrantNotFound)
    return JSONResponse({"error": "not_found", "detail": str(exc)}, status_code=404)


ROUTES = [
    Route("/api/grants", list_grants, methods=["GET"]),
    Route("/api/grants/{grant_id}", show_grant, methods=["GET"]),
    Route("/api/grants/{grant_id}", revoke_grant, methods=["DELETE"]),
]
EXCEPTION_HANDLERS = {GrantNotFound: grant_not_found}
