"""Button clicks and modal submissions from Slack, turned into decisions through the approval service.

Both transports (HTTP interactivity and Socket Mode) hand a verified payload to `acknowledge` and
send back what it returns, within Slack's 3 seconds: slow work (users.info, views.open, the
decision itself for a click) runs afterwards in the outbox's task group. A delivery Slack repeats
is dropped here; a second click decides nothing because the service's compare-and-set says so.
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
from approvals.service import ApprovalService
from approvals.views import DecisionOutcome
from gateway.slack.client import SlackApi, SlackCallFailed
from gateway.slack.identity import SlackIdentities
from gateway.slack.messages import (
    ACTION_APPROVE,
    ACTION_REJECT,
    REASON_ACTION,
    REASON_BLOCK,
    REJECT_CALLBACK,
    Links,
    ModalContext,
    link,
    reject_modal,
)
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

    async def acknowledge(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        """Handle one verified interaction payload; return the body to acknowledge it with (None: empty 200)."""
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
                if action_id in (ACTION_APPROVE, ACTION_REJECT) and isinstance(action.get("value"), str):
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
        verdict = "approve" if action_id == ACTION_APPROVE else "reject"
        approver = await self._approver(where, request_id, verdict)
        if approver is None:
            return
        try:
            if verdict == "approve":
                outcome = await self.service.approve(request_id, approver, "slack")
                self._after_approval(where, outcome)
            else:
                view = await self.service.precheck(request_id, approver, "slack", "reject")
                context = ModalContext(request_id, channel, container.get("message_ts"))
                await self._open_modal(where, str(payload.get("trigger_id") or ""), reject_modal(view, context))
        except ApprovalError as exc:
            self._refused(where, approver, exc)

    def _after_approval(self, where: _Where, outcome: DecisionOutcome) -> None:
        if not outcome.decided:
            self._tell(where, f"Your approval is recorded: {outcome.message}.", outcome.request.id)

    async def _open_modal(self, where: _Where, trigger_id: str, view: dict[str, Any]) -> None:
        # The trigger id lives about 3 seconds: one attempt now, not a retry later.
        try:
            await self.api.open_view(trigger_id, view)
        except SlackCallFailed as exc:
            request_id = ModalContext.load(view["private_metadata"]).request_id
            await self._audit_failure("views.open", request_id, exc)
            self._tell(
                where,
                f"Slack could not open the reason dialog ({exc.error}). Reject it in the "
                f"{link(self.links.request(request_id), 'inbox')} instead.",
                request_id,
            )

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
        self.outbox.spawn(_bind(self._reject, where, context.request_id, reason, submission))
        with anyio.move_on_after(SUBMIT_BUDGET):
            await submission.done.wait()
        if isinstance(submission.error, InvalidDecision):
            return {"response_action": "errors", "errors": {REASON_BLOCK: str(submission.error)}}
        submission.closed = True
        return None

    async def _reject(self, where: _Where, request_id: str, reason: str, submission: _Submission) -> None:
        approver = await self._approver(where, request_id, "reject")
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

    async def _approver(self, where: _Where, request_id: str, verdict: str) -> Approver | None:
        try:
            approver = await self.identities.approver_for(where.user)
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
            await self.service.record(
                Event(
                    kind="decision.refused",
                    outcome="refused",
                    message=f"Slack user {where.user} tried to {verdict} but is not a configured approver",
                    agent=view.agent,
                    tool=view.tool,
                    upstream=view.upstream,
                    request_id=request_id,
                    actor=f"slack:{where.user}",
                    channel="slack",
                )
            )
        except ApprovalError as exc:
            log.error("could not audit a refused Slack click on %s: %s", request_id, exc)
        self._tell(
            where,
            ":no_entry: You are not allowed to decide this request: your Slack account is not linked to a "
            "Countersign approver. Nothing was decided.",
            request_id,
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
