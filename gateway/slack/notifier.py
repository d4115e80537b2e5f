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
from functools import partial

from approvals.feed import Change
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
        # Per request: the newest change heard, and the newest this process won the right to show.
        self._heard: dict[str, int] = {}
        self._won: dict[str, int] = {}

    def changed(self, change: Change) -> None:
        """Every process hears every change; the one that claims it in the database shows it on Slack."""
        view = change.request
        if not wants_slack(view):
            return
        self._heard[view.id] = max(self._heard.get(view.id, 0), change.seq)
        self.outbox.keyed(f"message:{view.id}", "message", view.id, lambda: self._show_latest(view.id))

    async def _show_latest(self, request_id: str) -> None:
        seq = self._heard.get(request_id, 0)
        # Claimed once per change, outside the retries: a retry of our own claim must not lose to itself.
        if self._won.get(request_id) != seq:
            if not await self.service.claim_slack_sync(request_id, seq):
                return
            self._won[request_id] = seq
        await self.sync(request_id)

    async def resume(self, *, settle: float = 10.0) -> None:
        """On start: post requests that are pending but never reached Slack (e.g. Slack was down at a restart)."""
        cutoff = self.clock() - timedelta(seconds=settle)
        for view in await self.service.list_requests(statuses={Status.PENDING}, limit=1000):
            if not wants_slack(view):
                continue
            if view.slack_ts is None:
                # Recent ones may still be on their way out of another process; leave those to it. Older
                # ones are a repair: whoever claimed the post did not make it, so sync past the claims.
                if view.created_at < cutoff:
                    self.outbox.keyed(f"message:{view.id}", "message", view.id, partial(self.sync, view.id))
            elif view.reminded_at is None:
                # Every process arms it; the database lets one of them send it.
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
            self._heard.pop(request_id, None)
            self._won.pop(request_id, None)
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
        # Every process that knows the message arms the reminder; the one that wins this compare-and-set
        # sends it, once. The post itself is retried apart from the claim, so a Slack hiccup loses nothing.
        if await self.service.claim_reminder(request_id) is None:
            return
        channel, ts = view.slack_channel, view.slack_ts
        text = reminder_text(view, (view.expires_at - self.clock()).total_seconds(), self.links)

        async def post() -> None:
            await self.api.post_message(channel, text, thread_ts=ts)

        self.outbox.once("reminder", request_id, post)
