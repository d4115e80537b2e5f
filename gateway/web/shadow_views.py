"""The shadow page: the calls a candidate policy would have decided differently, filtered and paged."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from gateway.shadow import DECISIONS
from gateway.shadow_log import ShadowQuery, ShadowQueryError, difference_json, differences, standing, trouble
from gateway.web.auth import Viewer
from gateway.web.pages import WebContext

PAGE_SIZE = 50


class ShadowViews:
    def __init__(self, web: WebContext) -> None:
        self.web = web

    async def page(self, request: Request, viewer: Viewer) -> Response:
        params = {key: value for key, value in request.query_params.items() if key != "limit"}
        error = None
        try:
            query = ShadowQuery.parse({**params, "limit": str(PAGE_SIZE)})
        except ShadowQueryError as exc:
            query, error = ShadowQuery(limit=PAGE_SIZE), str(exc)
        history = self.web.service.history
        said = await standing(history)
        found = [] if error else await differences(history, query)
        older = None
        if len(found) == PAGE_SIZE:
            older = f"/shadow?{urlencode({**query.params(), 'before': found[-1].seq})}"
        return await self.web.page(
            "shadow.html",
            viewer,
            {
                "active": "shadow",
                "form": params,
                "decisions": DECISIONS,
                "error": error,
                "standing": said,
                "standing_at": datetime.fromisoformat(said["at"]) if said else None,
                "trouble": await trouble(history, 5),
                "differences": [(event, difference_json(event)) for event in found],
                "older_link": older,
                "filtered": bool(query.params() or query.before),
            },
        )
