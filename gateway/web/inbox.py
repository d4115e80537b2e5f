"""The inbox, the approval card, deciding, and the request page.

A card is one partial (`partials/card.html`, id `req-<id>`) that every action re-renders. While a
request can still change, its card polls its own URL with the version it shows; the server answers
204 while nothing changed, so polling never disturbs a reason being typed. The list polls with the
ids it shows and is re-rendered only when a new request arrives. Whether the buttons appear is
decided here, and the service enforces the same rule again when a decision arrives.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from markupsafe import escape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from approvals.approvers import may_decide
from approvals.errors import AlreadyDecided, InvalidDecision, NotAllowed
from approvals.states import TERMINAL, Status
from approvals.story import context_lines, describe, headline, title
from approvals.terms import terms_lines
from approvals.views import AuditEventView, DecisionView, RequestView
from gateway.edited import editable_fields
from gateway.results import summarize
from gateway.web.auth import Viewer
from gateway.web.grants import grant_from_form, granted_text
from gateway.web.pages import WebContext, is_htmx
from gateway.web.templating import clock, when

View = Literal["inbox", "detail"]
_INBOX_LIMIT = 500


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Notice:
    level: Literal["info", "error"]
    text: str


@dataclass(frozen=True)
class Card:
    """Everything one approval card shows to one viewer."""

    request: RequestView
    decisions: tuple[DecisionView, ...]
    viewer: str
    may_decide: bool
    view: View
    notice: Notice | None = None

    @property
    def id(self) -> str:
        return self.request.id

    @property
    def approvals(self) -> list[str]:
        return list(dict.fromkeys(d.approver for d in self.decisions if d.verdict == "approve"))

    @property
    def viewer_approved(self) -> bool:
        return self.viewer in self.approvals

    @property
    def asked_here(self) -> bool:
        """The policy's `channels` say where approvers are asked; a request not meant for the web is shown only."""
        return asks_web(self.request)

    @property
    def can_act(self) -> bool:
        return (
            self.request.status == Status.PENDING and self.may_decide and self.asked_here and not self.viewer_approved
        )

    @property
    def live(self) -> bool:
        # Polling stops once the request can no longer change (the htmx book's "only while not final").
        return self.request.status not in TERMINAL

    @property
    def version(self) -> str:
        return card_version(self.request, self.decisions)

    @property
    def approvers_text(self) -> str:
        return ", ".join(self.request.approvers) if self.request.approvers else "any approver"

    @property
    def target(self) -> str:
        return f"#detail-{self.id}" if self.view == "detail" else f"#req-{self.id}"

    @property
    def title(self) -> str:
        """The policy's sentence for the call, or a plain one: the same title every channel shows."""
        return title(self.request)

    @property
    def context_lines(self) -> list[tuple[str, str]]:
        """The facts looked up when the request was made, as every channel shows them."""
        return context_lines(self.request)

    @property
    def story(self) -> str:
        """Where the request stands or how it ended: the same sentence the agent, Slack and the API get."""
        return describe(self.request)

    @property
    def headline(self) -> str:
        return headline(self.request)

    @property
    def decided_at(self) -> datetime:
        """When the deciding vote was cast (the status may have moved on since, e.g. to executed)."""
        verdict = "reject" if self.request.status == Status.REJECTED else "approve"
        times = [d.at for d in self.decisions if d.verdict == verdict]
        return times[-1] if times else self.request.status_changed_at

    @property
    def editable_fields(self) -> list[tuple[str, str]]:
        """(path, value as text) for each argument the approver may change before approving."""
        return editable_fields(self.request)

    @property
    def terms(self) -> list[str]:
        """What an approver changed, and who else is or will be asked: the words every channel shows."""
        return terms_lines(self.request)

    @property
    def result_summary(self) -> str | None:
        return summarize(self.request.result, 200) or None


def agent_filter(request: Request) -> str | None:
    return request.query_params.get("agent", "").strip()[:200] or None


def asks_web(request: RequestView) -> bool:
    return "web" in request.channels


def card_version(request: RequestView, decisions: Sequence[DecisionView]) -> str:
    """Changes whenever anything a card shows changes (the clock aside, which the page ticks itself)."""
    material = "|".join(
        [
            request.status.value,
            str(request.agent_waiting),
            str(len(decisions)),
            request.decided_by or "",
            str(request.result_json is not None),
            str(request.error is not None),
            str(request.escalated),
        ]
    )
    return hashlib.sha256(material.encode()).hexdigest()[:12]


def already_text(exc: AlreadyDecided) -> str:
    by = f" by {exc.by}" if exc.by else ""
    at = f" at {when(exc.at)}" if exc.at else ""
    return f"Already {exc.status}{by}{at}. Your decision was not recorded."


class InboxViews:
    def __init__(self, web: WebContext) -> None:
        self.web = web
        self.service = web.service

    async def card(self, request_view: RequestView, viewer: Viewer, view: View, notice: Notice | None = None) -> Card:
        if request_view.status == Status.PENDING and request_view.quorum <= 1:
            # With a quorum of one the first vote decides, so a pending request has no votes: skip the query.
            decisions: tuple[DecisionView, ...] = ()
        else:
            decisions = tuple(await self.service.decisions(request_view.id))
        return Card(
            request=request_view,
            decisions=decisions,
            viewer=viewer.name,
            may_decide=may_decide(viewer.approver, request_view.approvers),
            view=view,
            notice=notice,
        )

    # ---- the inbox

    async def pending(self, agent: str | None = None) -> list[RequestView]:
        """What the inbox shows: pending requests whose policy asks approvers on the web, soonest expiry first.

        `agent` shows one agent's only: how a request is found when another agent floods the inbox.
        """
        pending = await self.service.list_requests(statuses={Status.PENDING}, agent=agent, limit=_INBOX_LIMIT)
        return [r for r in pending if asks_web(r)]

    async def inbox(self, request: Request, viewer: Viewer) -> Response:
        agent = agent_filter(request)
        pending = await self.pending(agent)
        cards = [await self.card(r, viewer, "inbox") for r in pending]
        context = {
            "cards": cards,
            "pending": len(pending),
            "active": "inbox",
            "truncated": len(pending) >= _INBOX_LIMIT,
            "agent": agent,
            "by_agent": await self.service.pending_by_agent(),
        }
        return await self.web.page("inbox.html", viewer, context, pending_count=None if agent else len(pending))

    async def cards(self, request: Request, viewer: Viewer) -> Response:
        """The list, re-rendered only when a request is waiting that the page does not show yet."""
        shown = {i for i in request.query_params.getlist("shown") if i}
        pending = await self.pending(agent_filter(request))
        if {r.id for r in pending} <= shown:
            return Response(status_code=204)
        # Decided cards stay where they were, showing their outcome, until the page is reloaded.
        decided = await self.service.requests_by_ids(shown - {r.id for r in pending})
        every = sorted([*pending, *decided], key=lambda r: (r.expires_at, r.created_at, r.id))
        cards = [await self.card(r, viewer, "inbox") for r in every]
        context = {"cards": cards, "pending": len(pending), "truncated": len(pending) >= _INBOX_LIMIT}
        return self.web.render("partials/inbox_list.html", viewer, context)

    async def one_card(self, request: Request, viewer: Viewer) -> Response:
        view = await self.service.get(request.path_params["request_id"])
        card = await self.card(view, viewer, "inbox")
        if request.query_params.get("v") == card.version:
            return Response(status_code=204)
        return self.web.render("partials/card.html", viewer, {"card": card})

    # ---- deciding

    async def approve(self, request: Request, viewer: Viewer) -> Response:
        return await self._decide(request, viewer, "approve")

    async def reject(self, request: Request, viewer: Viewer) -> Response:
        return await self._decide(request, viewer, "reject")

    async def _decide(self, request: Request, viewer: Viewer, verdict: Literal["approve", "reject"]) -> Response:
        request_id = request.path_params["request_id"]
        form = await request.form()
        reason = str(form.get("reason") or "").strip()[:1000] or None
        grant = grant_from_form(form.get("grant_minutes")) if verdict == "approve" else None
        view: View = "detail" if form.get("view") == "detail" else "inbox"
        seen_digest = str(form.get("sha") or "")
        current = await self.service.get(request_id)
        status_code = 200
        notice: Notice
        if seen_digest != current.arguments_sha256:
            # The page that was clicked showed other arguments than the request holds: decide nothing.
            notice = Notice("error", "These are not the arguments you were shown; nothing was decided.")
            status_code = 409
        else:
            try:
                if isinstance(grant, str):
                    raise InvalidDecision(grant)
                changes = {str(k)[len("edit:") :]: str(v) for k, v in form.multi_items() if str(k).startswith("edit:")}
                if verdict == "approve" and changes and self.web.edited is not None:
                    outcome = await self.web.edited.approve(
                        request_id, viewer.approver, "web", reason, changes, grant=grant
                    )
                elif verdict == "approve":
                    outcome = await self.service.approve(request_id, viewer.approver, "web", reason, grant=grant)
                else:
                    outcome = await self.service.reject(request_id, viewer.approver, "web", reason)
                notice = Notice("info", _outcome_text(outcome.request, outcome.message, viewer.name))
                if outcome.grant is not None:
                    notice = Notice("info", f"{notice.text} {granted_text(outcome.message)}")
            except AlreadyDecided as exc:
                notice, status_code = Notice("error", already_text(exc)), 409
            except NotAllowed as exc:
                notice, status_code = Notice("error", f"You may not decide this request: {exc.why}."), 403
            except InvalidDecision as exc:
                notice, status_code = Notice("error", f"Not recorded: {exc}."), 422
        try:
            return await self._after_decision(request, viewer, request_id, view, notice, status_code)
        except Exception:
            if status_code != 200:
                raise
            # The decision has committed: say so, even though the page around it could not be drawn.
            log.exception("decision on %s recorded, but the page could not be drawn", request_id)
            text = f"{notice.text} (The page could not be refreshed; reload it to see the request.)"
            return HTMLResponse(f'<p class="notice info" role="status">{escape(text)}</p>')

    async def _after_decision(
        self, request: Request, viewer: Viewer, request_id: str, view: View, notice: Notice, status_code: int
    ) -> Response:
        latest = await self.service.get(request_id)
        if not is_htmx(request) and status_code == 200:
            # Without JavaScript the form posts normally; show the request page with its new state.
            return RedirectResponse(f"/approvals/{request_id}", status_code=303)
        if not is_htmx(request):
            card = await self.card(latest, viewer, "detail", notice)
            context = await self._detail_context(latest, card)
            return await self.web.page("request.html", viewer, context, status_code=status_code)
        card = await self.card(latest, viewer, view, notice)
        if view == "detail":
            context = await self._detail_context(latest, card)
            return self.web.render("partials/request_detail.html", viewer, context, status_code=status_code)
        return self.web.render("partials/card.html", viewer, {"card": card}, status_code=status_code)

    # ---- the request page

    async def request_page(self, request: Request, viewer: Viewer) -> Response:
        view = await self.service.get(request.path_params["request_id"])
        card = await self.card(view, viewer, "detail")
        return await self.web.page("request.html", viewer, await self._detail_context(view, card))

    async def detail(self, request: Request, viewer: Viewer) -> Response:
        view = await self.service.get(request.path_params["request_id"])
        card = await self.card(view, viewer, "detail")
        context = await self._detail_context(view, card)
        if request.query_params.get("v") == context["detail_version"]:
            return Response(status_code=204)
        return self.web.render("partials/request_detail.html", viewer, context)

    async def _detail_context(self, view: RequestView, card: Card) -> dict[str, object]:
        events: list[AuditEventView] = await self.service.history.events(request_id=view.id, limit=1000)
        return {
            "card": card,
            "request": view,
            "events": events,
            "detail_version": f"{card.version}.{len(events)}",
        }


def _outcome_text(view: RequestView, message: str, viewer: str) -> str:
    if view.status == Status.PENDING:
        return f"Your approval is recorded: {message}."
    verb = {"approved": "Approved", "rejected": "Rejected"}.get(view.status.value)
    if verb and view.decided_by and viewer in view.decided_by.split(", "):
        return f"{verb} by you at {clock(view.status_changed_at)}."
    return f"Recorded: {message}."
