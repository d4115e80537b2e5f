"""Where a Slack click or modal came from, checked against what the gateway itself recorded.

A signed payload proves only that Slack sent it. A button's `value` names a request, but the
message it sits on may be another request's, or one the app never posted; a reject modal's
`private_metadata` names a request too. So a click counts only from the message recorded for
that request (its channel and ts), and a modal submission only from a view that views.open
returned for that request and that user, with an HMAC of the request in its metadata.

The view ids are recorded as audit events rather than in memory: a submission may reach
another replica, or this one after a restart, and must still be matched.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

import anyio

from approvals.approvers import Approver
from approvals.audit import Event
from approvals.service import ApprovalService
from approvals.states import Status
from approvals.views import RequestView
from gateway.slack.messages import ModalContext

# How long to wait for a message's ts or a view's id to be recorded: both are written just after
# Slack returns them, so a quick click or submission can overtake them by a moment.
RECORDING_GRACE = 3.0

# The audit event that records a reason modal opened for a request (its view id and for whom).
MODAL_OPENED = "decision.reason_asked"


class Provenance:
    def __init__(self, service: ApprovalService, bot_token: str) -> None:
        self.service = service
        # Keyed from the bot token: every replica has it, and nobody who can only click in Slack does.
        self._key = hashlib.sha256(b"countersign.slack.modal\0" + bot_token.encode()).digest()

    # ---- clicks

    async def with_message(self, request_id: str) -> RequestView:
        """The request, once the ts of its message is recorded (or it is clear that it never will be)."""
        request = await self.service.get(request_id)
        with anyio.move_on_after(RECORDING_GRACE):
            while request.slack_ts is None and request.status == Status.PENDING:
                # Polled, not awaited as an event: the replica that posted the message may not be this one.
                await anyio.sleep(0.05)
                request = await self.service.get(request_id)
        return request

    @staticmethod
    def from_its_message(container: Mapping[str, Any], request: RequestView) -> bool:
        """Whether a click's container is the message the gateway posted for `request`."""
        return (
            container.get("type") == "message"
            and request.slack_ts is not None
            and container.get("channel_id") == request.slack_channel
            and container.get("message_ts") == request.slack_ts
        )

    # ---- the reject modal

    def sealed(self, context: ModalContext) -> ModalContext:
        return ModalContext(context.request_id, context.channel, context.ts, self._seal(context))

    def seal_ok(self, context: ModalContext) -> bool:
        return hmac.compare_digest(context.seal.encode(), self._seal(context).encode())

    def _seal(self, context: ModalContext) -> str:
        material = json.dumps([context.request_id, context.channel, context.ts], separators=(",", ":")).encode()
        return hmac.new(self._key, material, hashlib.sha256).hexdigest()

    async def view_opened(self, request_id: str, view_id: object, approver: Approver, user: str) -> None:
        """Record that views.open returned `view_id` for `user` (as `approver`) to reject `request_id`."""
        await self.service.record(
            Event(
                kind=MODAL_OPENED,
                outcome="asked",
                message=f"{approver.name} was asked in Slack for a reason to reject",
                request_id=request_id,
                actor=approver.name,
                channel="slack",
                detail={"view_id": view_id if isinstance(view_id, str) else None, "slack_user": user},
            )
        )

    async def opened_for(self, request_id: str, view_id: object, user: str) -> bool:
        """Whether this gateway (any replica) opened the view `view_id` for `user` to reject `request_id`."""
        if not isinstance(view_id, str) or not view_id:
            return False

        async def recorded() -> bool:
            return any(
                e.kind == MODAL_OPENED and e.detail.get("view_id") == view_id and e.detail.get("slack_user") == user
                for e in await self.service.history.events(request_id=request_id, limit=1000)
            )

        with anyio.move_on_after(RECORDING_GRACE):
            while True:
                if await recorded():
                    return True
                await anyio.sleep(0.05)
        return False
