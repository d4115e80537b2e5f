"""Button clicks and modal submissions from Slack, turned into decisions through the approval service.

Both transports (HTTP interactivity and Socket Mode) hand a verified payload to `acknowledge` and
send back what it returns, within Slack's 3 seconds: slow work (users.info, views.open, the
decision itself for a click) runs afterwards in the outbox's task group. A delivery Slack repeats
is dropped here; a second click decides nothing because the service's compare-and-set says so.

A click or modal that did not come from where the gateway put it (see `provenance`) is refused,
told privately and audited; a payload of the wrong shape (see `payloads`) is refused as a whole.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from approvals.approvers import Approver
from approvals.audit import Event
from approvals.errors import AlreadyDecided, ApprovalError, InvalidDecision, NotAllowed, RequestNotFound
from approvals.grant_terms import GrantAsk
from approvals.service import ApprovalService
from approvals.views import DecisionOutcome, RequestView
from gateway.slack.client import SlackApi, SlackCallFailed
from gateway.slack.identity import SlackIdentities
from gateway.slack.messages import (
    ACTION_APPROVE,
    ACTION_APPROVE_GRANT,
    ACTION_REJECT,
    ACTION_REVIEW,
    REASON_ACTION,
    REASON_BLOCK,
    REJECT_CALLBACK,
    Links,
    ModalContext,
    approvable_in_slack,
    link,
    reject_modal,
)
from gateway.slack.payloads import check_shape
from gateway.slack.provenance import Provenance
from gateway.slack.worker import Job, Outbox

log = logging.getLogger(__name__)

# How long a modal submission waits for its decision, so a fixable error shows in the modal; Slack allows 3 s.
SUBMIT_BUDGET = 2.0


@dataclass
class _Where:
    """Where to answer a Slack user privately: the channel of the message they used."""

    user: str
    channel: str | None


@dataclass
class _Submission:
    done: anyio.Event = field(default_factory=anyio.Event)
    error: ApprovalError | None = None
    # Set once the modal has been answered without this outcome; errors then go by ephemeral message.
    closed: bool = False


class SlackDecisions:
    def __init__(
        self,
        service: ApprovalService,
        identities: SlackIdentities,
        api: SlackApi,
        outbox: Outbox,
        links: Links,
    ) -> None:
        self.service = service
        self.identities = identities
        self.api = api
        self.outbox = outbox
        self.links = links
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.provenance = Provenance(service, api.bot_token)

    async def acknowledge(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        """Handle one verified interaction payload; return the body to acknowledge it with (None: empty 200).

        Raises MalformedPayload, before anything is decided, when the payload's shape is wrong.
        """
        check_shape(payload)
        key = delivery_key(payload)
        if key is not None:
            if key in self._seen:
                log.info("Slack delivered %s again; ignored", key)
                return None
            self._seen[key] = None
            while len(self._seen) > 10_000:
                self._seen.popitem(last=False)
        kind = payload.get("type")
        if kind == "block_actions":
            for action in payload.get("actions") or []:
                action_id = action.get("action_id")
                if action_id == ACTION_REVIEW:
                    continue  # A link button: Slack has opened the inbox; nothing to decide.
                if action_id in (ACTION_APPROVE, ACTION_APPROVE_GRANT, ACTION_REJECT) and isinstance(
                    action.get("value"), str
                ):
                    self.outbox.spawn(_bind(self._clicked, payload, action_id, action["value"]))
            return None
        if kind == "view_submission" and (payload.get("view") or {}).get("callback_id") == REJECT_CALLBACK:
            answer = await self._submitted(payload)
            if answer is not None and key is not None:
                # The modal stays open with a field error; the same submission again is a new attempt.
                self._seen.pop(key, None)
            return answer
        return None

    # ---- clicks

    async def _clicked(self, payload: dict[str, Any], action_id: str, request_id: str) -> None:
        user = _user_id(payload)
        container = payload.get("container") or {}
        channel = container.get("channel_id") or (payload.get("channel") or {}).get("id")
        where = _Where(user, channel)
        verdict = "reject" if action_id == ACTION_REJECT else "approve"
        try:
            request = await self.provenance.with_message(request_id)
        except ApprovalError as exc:
            self._tell(where, f"Nothing was decided: {exc}.", None)
            return
        if not Provenance.from_its_message(container, request):
            # The button's value names a request, but only the message posted for it may decide it.
            await self._refuse_origin(
                where,
                request,
                verdict,
                "the click did not come from the message Countersign posted for this request",
                {"container": {k: container.get(k) for k in ("type", "channel_id", "message_ts", "view_id")}},
            )
            return
        if verdict == "approve" and not approvable_in_slack(request):
            await self._refuse_origin(
                where,
                request,
                verdict,
                "its arguments do not fit in a Slack message, so it is approved only in the inbox",
                {},
            )
            return
        approver = await self._approver(where, request_id, verdict, _team_id(payload))
        if approver is None:
            return
        try:
            if verdict == "approve":
                grant = GrantAsk() if action_id == ACTION_APPROVE_GRANT else None
                outcome = await self.service.approve(request_id, approver, "slack", grant=grant)
                self._after_approval(where, outcome)
            else:
                view = await self.service.precheck(request_id, approver, "slack", "reject")
                context = self.provenance.sealed(ModalContext(request_id, channel, container.get("message_ts")))
                await self._open_modal(
                    where, approver, str(payload.get("trigger_id") or ""), reject_modal(view, context)
                )
        except ApprovalError as exc:
            self._refused(where, approver, exc)

    def _after_approval(self, where: _Where, outcome: DecisionOutcome) -> None:
        if outcome.grant is not None:
            # Only the approver is told what the grant allows, and where to revoke it.
            text = f"{outcome.message}. Grant {outcome.grant.id}: revoke it under Standing approvals in the inbox."
            self._tell(where, text, outcome.request.id)
        elif not outcome.decided:
            self._tell(where, f"Your approval is recorded: {outcome.message}.", outcome.request.id)

    async def _open_modal(self, where: _Where, approver: Approver, trigger_id: str, view: dict[str, Any]) -> None:
        request_id = ModalContext.load(view["private_metadata"]).request_id
        # The trigger id lives about 3 seconds: one attempt now, not a retry later.
        try:
            opened = await self.api.open_view(trigger_id, view)
        except SlackCallFailed as exc:
            await self._audit_failure("views.open", request_id, exc)
            self._tell(
                where,
                f"Slack could not open the reason dialog ({exc.error}). Reject it in the "
                f"{link(self.links.request(request_id), 'inbox')} instead.",
                request_id,
            )
            return
        await self.provenance.view_opened(request_id, (opened.get("view") or {}).get("id"), approver, where.user)

    # ---- the reject modal

    async def _submitted(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        view = payload.get("view") or {}
        try:
            context = ModalContext.load(str(view.get("private_metadata") or ""))
        except ValueError:
            log.warning("a reject modal came back without its request; ignored")
            return None
        values = ((view.get("state") or {}).get("values") or {}).get(REASON_BLOCK) or {}
        reason = str((values.get(REASON_ACTION) or {}).get("value") or "")
        where = _Where(_user_id(payload), context.channel)
        submission = _Submission()
        self.outbox.spawn(
            _bind(self._submitted_reason, where, context, view.get("id"), _team_id(payload), reason, submission)
        )
        with anyio.move_on_after(SUBMIT_BUDGET):
            await submission.done.wait()
        if isinstance(submission.error, InvalidDecision):
            return {"response_action": "errors", "errors": {REASON_BLOCK: str(submission.error)}}
        submission.closed = True
        return None

    async def _submitted_reason(
        self,
        where: _Where,
        context: ModalContext,
        view_id: object,
        team_id: object,
        reason: str,
        submission: _Submission,
    ) -> None:
        try:
            request = await self.service.get(context.request_id)
        except ApprovalError as exc:
            submission.done.set()
            self._tell(where, f"Nothing was decided: {exc}.", None)
            return
        if not self.provenance.seal_ok(context) or not await self.provenance.opened_for(
            request.id, view_id, where.user
        ):
            submission.done.set()
            # The channel in the metadata is not to be trusted here: answer where the request's message is.
            where = _Where(where.user, request.slack_channel)
            await self._refuse_origin(
                where,
                request,
                "reject",
                "the reason dialog was not one Countersign opened for this request",
                {"view_id": view_id if isinstance(view_id, str) else None},
            )
            return
        await self._reject(where, context.request_id, team_id, reason, submission)

    async def _reject(
        self, where: _Where, request_id: str, team_id: object, reason: str, submission: _Submission
    ) -> None:
        approver = await self._approver(where, request_id, "reject", team_id)
        if approver is None:
            submission.done.set()
            return
        try:
            await self.service.reject(request_id, approver, "slack", reason)
        except ApprovalError as exc:
            submission.error = exc
            submission.done.set()
            # A reason the policy requires is asked for in the modal, unless it had to close already.
            if not isinstance(exc, InvalidDecision) or submission.closed:
                self._refused(where, approver, exc)
            return
        submission.done.set()

    # ---- who is clicking

    async def _approver(self, where: _Where, request_id: str, verdict: str, team_id: object) -> Approver | None:
        try:
            approver = await self.identities.approver_for(where.user, team_id)
        except SlackCallFailed as exc:
            await self._audit_failure("users.info", request_id, exc)
            self._tell(
                where,
                f"Countersign could not look up your Slack profile ({exc.error}); nothing was decided. "
                f"Try again, or use the {link(self.links.request(request_id), 'inbox')}.",
                request_id,
            )
            return None
        if approver is None:
            await self._refuse_stranger(where, request_id, verdict)
        return approver

    async def _refuse_stranger(self, where: _Where, request_id: str, verdict: str) -> None:
        try:
            view = await self.service.get(request_id)
            message = f"Slack user {where.user} tried to {verdict} but is not a configured approver"
            await self._audit_refusal(where, view, message, {})
        except ApprovalError as exc:
            log.error("could not audit a refused Slack click on %s: %s", request_id, exc)
        self._tell(
            where,
            ":no_entry: You are not allowed to decide this request: your Slack account is not linked to a "
            "Countersign approver. Nothing was decided.",
            request_id,
        )

    async def _audit_refusal(self, where: _Where, request: RequestView, message: str, detail: dict[str, Any]) -> None:
        """The audit event for a Slack action that decided nothing; the actor is the Slack user."""
        await self.service.record(
            Event(
                kind="decision.refused",
                outcome="refused",
                message=message,
                agent=request.agent,
                tool=request.tool,
                upstream=request.upstream,
                request_id=request.id,
                actor=f"slack:{where.user}",
                channel="slack",
                detail=detail,
            )
        )

    async def _refuse_origin(
        self, where: _Where, request: RequestView, verdict: str, why: str, detail: dict[str, Any]
    ) -> None:
        """Refuse an action that came from somewhere it may not: say so privately, and audit it."""
        try:
            message = f"Slack user {where.user} tried to {verdict}, refused: {why}"
            await self._audit_refusal(where, request, message, {"why": why, **detail})
        except ApprovalError as exc:
            log.error("could not audit a refused Slack action on %s: %s", request.id, exc)
        self._tell(
            where,
            f":no_entry: Nothing was decided: {why}. Decide in the "
            f"{link(self.links.request(request.id), 'inbox')} or with the buttons of the request's own message.",
            request.id,
        )

    def _refused(self, where: _Where, approver: Approver, exc: ApprovalError) -> None:
        request_id = getattr(exc, "request_id", None)
        if isinstance(exc, NotAllowed):
            text = ":no_entry: You are not allowed to decide this request; the attempt was recorded."
        elif isinstance(exc, AlreadyDecided):
            if exc.by and approver.name in exc.by.split(", "):
                return  # A double click: the first one decided; nothing more to say.
            text = f"Nothing was decided: {exc}."
        elif isinstance(exc, InvalidDecision | RequestNotFound):
            text = f"Nothing was decided: {exc}."
        else:
            text = f"Countersign could not record your decision ({exc}). Try again, or use the inbox."
        self._tell(where, text, request_id)

    def _tell(self, where: _Where, text: str, request_id: str | None) -> None:
        channel = where.channel
        if channel is None:
            log.info("cannot tell Slack user %s privately (no channel): %s", where.user, text)
            return
        self.outbox.once("ephemeral reply", request_id, lambda: _ephemeral(self.api, channel, where.user, text))

    async def _audit_failure(self, method: str, request_id: str, exc: SlackCallFailed) -> None:
        try:
            await self.service.record(
                Event(
                    kind="slack.failed",
                    outcome="failed",
                    message=f"Slack {method} failed ({exc.error}) while handling a click; nothing was decided",
                    request_id=request_id,
                    channel="slack",
                    detail={"method": method, "error": exc.error},
                )
            )
        except ApprovalError as error:
            log.error("could not audit a Slack failure: %s", error)


async def _ephemeral(api: SlackApi, channel: str, user: str, text: str) -> None:
    await api.post_ephemeral(channel, user, text)


def _bind(function: Callable[..., Awaitable[None]], *args: Any) -> Job:
    async def call() -> None:
        await function(*args)

    return call


def _user_id(payload: dict[str, Any]) -> str:
    return str((payload.get("user") or {}).get("id") or "")


def _team_id(payload: dict[str, Any]) -> object:
    """The workspace of the user who acted, as the payload says (None when it does not say)."""
    return (payload.get("user") or {}).get("team_id")


def delivery_key(payload: dict[str, Any]) -> str | None:
    """What identifies one user action across Slack's redeliveries (the same click or submission sent twice)."""
    if payload.get("type") == "block_actions":
        actions = payload.get("actions") or []
        stamps = ",".join(f"{a.get('action_id')}@{a.get('action_ts')}" for a in actions)
        return f"click:{_user_id(payload)}:{stamps}" if stamps else None
    if payload.get("type") == "view_submission":
        view = payload.get("view") or {}
        if view.get("id"):
            # A corrected resubmission (after a field error) is the same view with different values.
            state = json.dumps(view.get("state") or {}, sort_keys=True)
            return f"submit:{view.get('id')}:{hashlib.sha256(state.encode()).hexdigest()}"
    return None
