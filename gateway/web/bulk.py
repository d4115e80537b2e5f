"""Rejecting every pending request of one agent from the web: a confirmation page, then the rejections.

Reached from the inbox filtered by agent. The GET shows what would be rejected and asks for a
reason; only the POST (with the session's CSRF token, checked by the guard) rejects, each request
through the approval service as on its own card (`approvals.bulk`), so approver rights and the
request's channels apply to each one.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from approvals.bulk import reject_pending_of
from approvals.states import Status
from gateway.web.auth import Viewer
from gateway.web.pages import WebContext


class BulkViews:
    def __init__(self, web: WebContext) -> None:
        self.web = web
        self.service = web.service

    async def confirm(self, request: Request, viewer: Viewer) -> Response:
        agent = request.query_params.get("agent", "").strip()
        if not agent:
            return await self.web.error(
                request, 400, "No agent named", "Open this page from the inbox filtered by agent."
            )
        requests = await self.service.list_requests(statuses={Status.PENDING}, agent=agent, limit=10_000)
        return await self.web.page("reject_agent.html", viewer, {"agent": agent, "requests": requests, "outcome": None})

    async def reject(self, request: Request, viewer: Viewer) -> Response:
        form = await request.form()
        agent = str(form.get("agent") or "").strip()
        if not agent:
            return await self.web.error(request, 400, "No agent named", "Nothing was rejected.", viewer)
        reason = str(form.get("reason") or "").strip()[:1000] or None
        outcome = await reject_pending_of(self.service, agent, viewer.approver, "web", reason)
        return await self.web.page("reject_agent.html", viewer, {"agent": agent, "requests": [], "outcome": outcome})
