"""The web channel: sign-in, the approval inbox, the request page and the audit history (Jinja + htmx).

It acts on requests only through the approval service, like every other channel. Pages live under
`templates/`, assets under `static/`; both ship inside the wheel (see pyproject's force-include).
"""

from __future__ import annotations

import logging

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from approvals.errors import ApprovalError
from approvals.feed import ChangeListener
from gateway.channels import ChannelContext
from gateway.web.audit_activity import ActivityViews
from gateway.web.audit_views import AuditViews
from gateway.web.auth import Authenticator
from gateway.web.bulk import BulkViews
from gateway.web.grants import GrantViews
from gateway.web.inbox import InboxViews
from gateway.web.pages import WebContext
from gateway.web.security import SecurityHeaders
from gateway.web.sessions import SessionStore
from gateway.web.shadow_views import ShadowViews
from gateway.web.signin import SignInViews
from gateway.web.templating import Templates, asset_dir

__all__ = ["WebChannel"]

log = logging.getLogger(__name__)

# Path prefixes the web channel owns; its security headers apply to these (and to "/").
PREFIXES = ("/signin", "/signout", "/inbox", "/approvals", "/grants", "/audit", "/shadow", "/static")


class WebChannel:
    name = "web"

    def __init__(self, context: ChannelContext) -> None:
        settings = context.settings
        self.static_dir = asset_dir("static")
        templates = Templates(asset_dir("templates"), self.static_dir)
        auth = Authenticator(
            settings.web,
            context.approvers,
            SessionStore(context.service.db, context.service.clock),
            secure_cookies=settings.server.base_url.startswith("https://"),
        )
        self.context = WebContext(
            service=context.service, settings=settings.web, templates=templates, auth=auth, edited=context.edited
        )
        self.signin = SignInViews(self.context)
        self.inbox = InboxViews(self.context)
        self.audit = AuditViews(self.context)
        self.activity = ActivityViews(self.context)
        self.bulk = BulkViews(self.context)
        self.grants = GrantViews(self.context)
        self.shadow = ShadowViews(self.context)

    def routes(self) -> list[BaseRoute]:
        guard = self.context.signed_in
        inbox, audit = self.inbox, self.audit
        return [
            Route("/", _home, methods=["GET"]),
            Route("/signin", self.signin.form, methods=["GET"]),
            Route("/signin", self.signin.submit, methods=["POST"]),
            Route("/signout", guard(self.signin.signout), methods=["POST"]),
            Route("/inbox", guard(inbox.inbox), methods=["GET"]),
            Route("/inbox/cards", guard(inbox.cards), methods=["GET"]),
            Route("/inbox/cards/{request_id}", guard(inbox.one_card), methods=["GET"]),
            Route("/inbox/reject-agent", guard(self.bulk.confirm), methods=["GET"]),
            Route("/inbox/reject-agent", guard(self.bulk.reject), methods=["POST"]),
            Route("/approvals/{request_id}", guard(inbox.request_page), methods=["GET"]),
            Route("/approvals/{request_id}/detail", guard(inbox.detail), methods=["GET"]),
            Route("/approvals/{request_id}/approve", guard(inbox.approve), methods=["POST"]),
            Route("/approvals/{request_id}/reject", guard(inbox.reject), methods=["POST"]),
            Route("/grants", guard(self.grants.page), methods=["GET"]),
            Route("/grants/{grant_id}/revoke", guard(self.grants.revoke), methods=["POST"]),
            Route("/audit", guard(audit.page), methods=["GET"]),
            Route("/audit/chain", guard(audit.chain_status), methods=["GET"]),
            Route("/audit/count", guard(audit.count), methods=["GET"]),
            Route("/audit/activity", guard(self.activity.fragment), methods=["GET"]),
            Route("/audit/export.csv", guard(audit.export_csv), methods=["GET"]),
            Route("/audit/export.json", guard(audit.export_json), methods=["GET"]),
            Route("/shadow", guard(self.shadow.page), methods=["GET"]),
            Mount("/static", StaticFiles(directory=self.static_dir), name="static"),
        ]

    def middleware(self) -> list[Middleware]:
        return [Middleware(SecurityHeaders, prefixes=PREFIXES)]

    def listeners(self) -> list[ChangeListener]:
        return []

    async def start(self) -> None:
        """End the sessions this configuration no longer admits, on every replica: awaited before this one serves.

        Once a replica with a changed password or without an approver answers anything, no replica
        admits the old session any more (not only once a background task has got round to it).
        """
        try:
            await self.context.auth.sessions.end_stale(self.context.auth.approvers)
        except ApprovalError as exc:  # each request still checks the approver against this configuration
            log.warning("web: could not end the sessions of removed approvers or changed passwords: %s", exc)

    async def run(self) -> None:
        """Nothing in the background: pages poll the service."""


async def _home(request: Request) -> Response:
    return RedirectResponse("/inbox", status_code=303)
