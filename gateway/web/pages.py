"""What every web view shares: rendering pages and fragments, error answers, and the guard.

The guard is where authorization happens: every page but sign-in goes through it, so a view
only runs with a signed-in approver in hand, and a POST only with a valid CSRF token.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from approvals.errors import RequestNotFound, StoreUnavailable
from approvals.service import ApprovalService
from approvals.states import Status
from gateway.config_channels import WebSettings
from gateway.edited import EditedApprovals
from gateway.web.auth import Authenticator, Viewer
from gateway.web.templating import Templates

log = logging.getLogger(__name__)

Handler = Callable[[Request, Viewer], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]

_STORE_DOWN = "The database cannot be reached right now. Nothing was decided; try again in a moment."


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def local_path(target: str | None, default: str = "/inbox") -> str:
    """Only same-site paths are followed after sign-in, so a crafted link cannot bounce someone elsewhere."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


@dataclass
class WebContext:
    service: ApprovalService
    settings: WebSettings
    templates: Templates
    auth: Authenticator
    # Approving with changes (gateway.edited); None: approvals are recorded only as asked.
    edited: EditedApprovals | None = None

    # ---- rendering

    async def page(
        self,
        name: str,
        viewer: Viewer | None,
        context: Mapping[str, Any] | None = None,
        *,
        status_code: int = 200,
        pending_count: int | None = None,
    ) -> HTMLResponse:
        if viewer is not None and pending_count is None:
            try:
                pending = await self.service.list_requests(statuses={Status.PENDING}, limit=1000)
                pending_count = sum(1 for r in pending if "web" in r.channels)
            except StoreUnavailable:
                pending_count = None
        return self.templates.response(
            name,
            {**self.common(viewer), "pending_count": pending_count, **(context or {})},
            status_code=status_code,
        )

    def render(
        self,
        name: str,
        viewer: Viewer | None,
        context: Mapping[str, Any] | None = None,
        *,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> HTMLResponse:
        return self.templates.response(
            name, {**self.common(viewer), **(context or {})}, status_code=status_code, headers=headers
        )

    def common(self, viewer: Viewer | None) -> dict[str, Any]:
        return {
            "viewer": viewer,
            "active": None,
            "pending_count": None,
            "csrf": viewer.csrf if viewer else None,
            "refresh": self.settings.refresh_interval,
            "clock": self.service.clock(),
        }

    async def error(
        self, request: Request, status_code: int, title: str, message: str, viewer: Viewer | None = None
    ) -> Response:
        """A full error page, or for htmx a message in the page's flash area (the target stays as it was)."""
        if is_htmx(request):
            return self.render(
                "partials/flash.html",
                viewer,
                {"level": "error", "title": title, "message": message},
                status_code=status_code,
                headers={"HX-Retarget": "#flash", "HX-Reswap": "innerHTML"},
            )
        return await self.page(
            "error.html", viewer, {"title": title, "message": message}, status_code=status_code, pending_count=0
        )

    # ---- the guard

    def signed_in(self, handler: Handler) -> Endpoint:
        """Wrap a view: a signed-in approver is required, and a POST must carry the session's CSRF token."""

        async def endpoint(request: Request) -> Response:
            try:
                session = await self.auth.read_session(request)
            except StoreUnavailable as exc:
                # Whether the session still stands cannot be checked: fail closed, sign nobody in.
                log.warning("web: cannot check the session: %s", exc)
                return await self.error(request, 503, "The approval store is unavailable", _STORE_DOWN)
            fresh = session is None
            if session is None:
                session = self.auth.anonymous()
            approver, problem = self.auth.from_proxy(request)
            via = "proxy"
            if approver is None and problem is None:
                approver, via = self.auth.from_session(session), "password"
            if problem is not None:
                return await self.error(request, 403, "Not an approver", problem)
            if approver is None:
                response = self._to_signin(request)
                if fresh:
                    self.auth.set_cookie(response, session, request)
                return response
            if request.method == "POST" and not await self.auth.csrf_ok(request, session):
                return self.csrf_refused(request)
            viewer = Viewer(approver, session, "proxy" if via == "proxy" else "password")
            try:
                response = await handler(request, viewer)
            except RequestNotFound as exc:
                return await self.error(request, 404, "No such request", str(exc), viewer)
            except StoreUnavailable as exc:
                log.warning("web: %s", exc)
                return await self.error(request, 503, "The approval store is unavailable", _STORE_DOWN, viewer)
            if fresh:
                # Proxy-authenticated viewers still need a cookie: it carries their CSRF token.
                self.auth.set_cookie(response, session, request)
            return response

        return endpoint

    def _to_signin(self, request: Request) -> Response:
        if is_htmx(request):
            # A fragment or an action from a page whose session ended: send that whole page through sign-in.
            back = local_path(_path_of(request.headers.get("hx-current-url", "")))
            return Response(status_code=401, headers={"HX-Redirect": "/signin?next=" + quote(back, safe="/")})
        if request.method != "GET":
            return Response("Sign in first; nothing was changed.", status_code=401, media_type="text/plain")
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/signin?next=" + quote(local_path(target), safe="/"), status_code=303)

    def csrf_refused(self, request: Request) -> Response:
        message = (
            "Refused: this form did not carry a valid security (CSRF) token. "
            "Reload the page and try again; nothing was changed."
        )
        # An htmx page with a stale token (signed out and in elsewhere) reloads itself to pick up the new one.
        headers = {"HX-Refresh": "true"} if is_htmx(request) else None
        return Response(message, status_code=403, media_type="text/plain", headers=headers)


def _path_of(url: str) -> str:
    """The path and query of an absolute URL from HX-Current-URL; empty when it has none."""
    if "://" not in url:
        return ""
    rest = url.split("://", 1)[1]
    slash = rest.find("/")
    return rest[slash:] if slash >= 0 else "/"
