"""One Slack message per held request, kept showing the request's state whoever changed it.

Every change only schedules a sync of that request (through the outbox, off the decision path).
A sync reads the request as it is now, posts the message if there is none yet, and otherwise
updates it when what it would show differs from what it shows.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from approvals.service import ApprovalService
from approvals.states import Status
from approvals.views import RequestView
from gateway.slack.client import SlackApi
from gateway.slack.messages import Links, reminder_text, request_message
from gateway.slack.worker import Outbox

log = logging.getLogger(__name__)


def wants_slack(view: RequestView) -> bool:
    return "slack" in view.channels


class MessageKeeper:
    def __init__(
        self,
        service: ApprovalService,
        api: SlackApi,
        outbox: Outbox,
        links: Links,
        *,
        default_channel: str,
        reminder_before: float | None,
        clock: Callable[[], datetime],
    ) -> None:
        self.service = service
        self.api = api
        self.outbox = outbox
        self.links = links
        self.default_channel = default_channel
        self.reminder_before = reminder_before
        self.clock = clock
        # What each live message shows, so a change that alters nothing visible costs no API call.
        self._shown: dict[str, str] = {}

    def changed(self, view: RequestView) -> None:
        if wants_slack(view):
            self.outbox.keyed(f"message:{view.id}", "message", view.id, lambda: self.sync(view.id))

    async def resume(self, *, settle: float = 10.0) -> None:
        """On start: post requests that are pending but never reached Slack (e.g. Slack was down at a restart)."""
        cutoff = self.clock() - timedelta(seconds=settle)
        for view in await self.service.list_requests(statuses={Status.PENDING}, limit=1000):
            # Recent ones may still be on their way out of another process; leave those to it.
            if wants_slack(view) and view.created_at < cutoff:
                if view.slack_ts is None:
                    self.changed(view)
                else:
                    self._schedule_reminder(view)

    async def sync(self, request_id: str) -> None:
        view = await self.service.get(request_id)
        message = request_message(view, await self.service.decisions(request_id), self.links)
        fingerprint = json.dumps(message.blocks, sort_keys=True)
        if view.slack_ts is None or view.slack_channel is None:
            if view.status != Status.PENDING:
                # Decided before Slack ever showed it: nothing left to decide there, so no message.
                return
            channel = view.slack_channel or self.default_channel
            posted = await self.api.post_message(channel, message.text, message.blocks)
            await self.service.set_slack_ts(request_id, str(posted["channel"]), str(posted["ts"]))
            self._shown[request_id] = fingerprint
            self._schedule_reminder(view)
            return
        if self._shown.get(request_id) == fingerprint:
            return
        await self.api.update_message(view.slack_channel, view.slack_ts, message.text, message.blocks)
        if view.is_terminal:
            self._shown.pop(request_id, None)
        else:
            self._shown[request_id] = fingerprint

    def _schedule_reminder(self, view: RequestView) -> None:
        if self.reminder_before is None:
            return
        when = view.expires_at - timedelta(seconds=self.reminder_before)
        now = self.clock()
        if when <= now:
            return
        self.outbox.at(when, "reminder", view.id, lambda: self.remind(view.id), now)

    async def remind(self, request_id: str) -> None:
        view = await self.service.get(request_id)
        if view.status != Status.PENDING or view.slack_ts is None or view.slack_channel is None:
            return
        remaining = (view.expires_at - self.clock()).total_seconds()
        await self.api.post_message(
            view.slack_channel, reminder_text(view, remaining, self.links), thread_ts=view.slack_ts
        )
