"""Standing approvals on the web: asking for one with an approval, and the grants page (list, revoke).

The grants page lists grants newest first with how each stands now; revoking one re-renders its row
(`partials/grant_row.html`, id `grant-<id>`). Any signed-in approver may revoke: it only takes a
permission away. The service counts every use in the database, so a revoke here stops every replica.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from approvals.grant_terms import GrantAsk
from approvals.grants import STATES, GrantNotFound
from gateway.web.auth import Viewer
from gateway.web.pages import WebContext, is_htmx

_PAGE_LIMIT = 200


def grant_from_form(value: object) -> GrantAsk | str | None:
    """The grant asked for with a web approval (minutes), None when none, or what is wrong with the field."""
    if value is None or str(value).strip() == "":
        return None
    try:
        minutes = float(str(value).strip())
    except ValueError:
        return f"the grant's length must be a number of minutes, not {str(value)[:20]!r}"
    if not minutes > 0 or minutes == float("inf"):
        return "the grant's length must be above zero minutes"
    return GrantAsk(seconds=minutes * 60)


def granted_text(message: str) -> str:
    """The part of a decision's message that tells the approver what the grant allows (and whether it was cut)."""
    _, _, rest = message.partition("; ")
    return rest[:1].upper() + rest[1:] + "." if rest else ""


class GrantViews:
    def __init__(self, web: WebContext) -> None:
        self.web = web
        self.grants = web.service.grants

    async def page(self, request: Request, viewer: Viewer) -> Response:
        state = request.query_params.get("state", "live")
        states = () if state == "all" else (state,) if state in STATES else ("live",)
        grants = await self.grants.list(states=states, limit=_PAGE_LIMIT)
        context: dict[str, Any] = {
            "grants": grants,
            "state": state if state == "all" or state in STATES else "live",
            "states": STATES,
            "active": "grants",
        }
        return await self.web.page("grants.html", viewer, context)

    async def revoke(self, request: Request, viewer: Viewer) -> Response:
        grant_id = request.path_params["grant_id"]
        try:
            grant, revoked = await self.grants.revoke(grant_id, viewer.approver, "web")
        except GrantNotFound as exc:
            return await self.web.error(request, 404, "No such standing approval", str(exc), viewer)
        if not is_htmx(request):
            return RedirectResponse("/grants?state=all", status_code=303)
        note = "Revoked: the next matching call is held again."
        if not revoked:
            note = f"Already revoked by {grant.revoked_by}."
        return self.web.render("partials/grant_row.html", viewer, {"grant": grant, "note": note})
