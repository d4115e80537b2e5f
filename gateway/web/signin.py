"""Signing in with a password and signing out. (Behind an SSO proxy the guard signs people in.)"""

from __future__ import annotations

import logging

import anyio
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from approvals.errors import StoreUnavailable
from gateway.web.auth import Session, Viewer
from gateway.web.pages import WebContext, local_path
from gateway.web.templating import span

log = logging.getLogger(__name__)


class SignInViews:
    def __init__(self, web: WebContext) -> None:
        self.web = web
        self.auth = web.auth

    async def form(self, request: Request) -> Response:
        try:
            return await self._form(request)
        except StoreUnavailable as exc:
            return await self._store_down(request, exc)

    async def submit(self, request: Request) -> Response:
        try:
            return await self._submit(request)
        except StoreUnavailable as exc:
            return await self._store_down(request, exc)

    async def _store_down(self, request: Request, exc: StoreUnavailable) -> Response:
        # Nobody can be signed in (or their session checked) without the database: fail closed.
        log.warning("web: sign-in unavailable: %s", exc)
        return await self.web.error(
            request, 503, "The approval store is unavailable", "Signing in needs the database; try again in a moment."
        )

    async def _form(self, request: Request) -> Response:
        target = local_path(request.query_params.get("next"))
        session = await self.auth.read_session(request)
        proxied, problem = self.auth.from_proxy(request)
        if proxied is not None or (session is not None and self.auth.from_session(session) is not None):
            return RedirectResponse(target, status_code=303)
        notice = "You have signed out." if request.query_params.get("signed_out") else None
        return await self._render(request, session, target=target, notice=notice, error=problem)

    async def _submit(self, request: Request) -> Response:
        session = await self.auth.read_session(request)
        form = await request.form()
        name = str(form.get("name") or "").strip()
        password = str(form.get("password") or "")
        target = local_path(str(form.get("next") or ""))
        if session is None or not await self.auth.csrf_ok(request, session):
            return await self._render(
                request,
                None,
                target=target,
                name=name,
                error="The sign-in form expired or cookies are blocked. Please try again.",
                status_code=403,
            )
        address = request.client.host if request.client else "unknown"
        wait = self.auth.throttle.retry_after(name, address)
        if wait > 0:
            response = await self._render(
                request,
                session,
                target=target,
                name=name,
                error=f"Too many failed sign-ins from this address. Try again in {span(wait)}.",
                status_code=429,
            )
            response.headers["Retry-After"] = str(int(wait) + 1)
            return response
        approver = await self.auth.check_password(name, password) if name and password else None
        if approver is None:
            delay = self.auth.throttle.failed(name, address)
            log.warning("web: failed sign-in for %r from %s", name, address)
            # Each failure costs the guesser more time; a lock-out of this address follows after a few.
            await anyio.sleep(delay)
            return await self._render(
                request, session, target=target, name=name, error="Wrong name or password.", status_code=401
            )
        self.auth.throttle.succeeded(name, address)
        log.info("web: %s signed in from %s", approver.name, address)
        response = RedirectResponse(target, status_code=303)
        self.auth.set_cookie(response, await self.auth.sign_in(approver), request)
        return response

    async def signout(self, request: Request, viewer: Viewer) -> Response:
        await self.auth.revoke(viewer.session)
        log.info("web: %s signed out", viewer.name)
        response = RedirectResponse("/signin?signed_out=1", status_code=303)
        self.auth.clear_cookie(response, request)
        return response

    async def _render(
        self,
        request: Request,
        session: Session | None,
        *,
        target: str,
        name: str = "",
        notice: str | None = None,
        error: str | None = None,
        status_code: int = 200,
    ) -> Response:
        fresh = session is None
        session = session or self.auth.anonymous()
        response = self.web.render(
            "signin.html",
            None,
            {
                "signin_csrf": session.csrf,
                "next": target,
                "name": name,
                "notice": notice,
                "error": error,
                "proxy_mode": bool(self.web.settings.trusted_header),
            },
            status_code=status_code,
        )
        if fresh:
            self.auth.set_cookie(response, session, request)
        return response
