"""One Slack message per held request, kept showing the request's state whoever changed it, posted once.

The work lives in the database (`approvals.outbox`), not in the process that made a change: every
replica hears every change and marks the request's message as owing it; one replica claims the
item, reads the request as it is now, posts the message if there is none yet (and records it in
the same transaction that completes the claim) or updates it when what it would show differs
from what it shows. A replica that dies mid-way leaves a lease that runs out; another replica
claims the item and carries on. Reminders are items of their own, due before the request expires.

A post that Slack accepted but whose answer was lost with its replica is found again before
posting anew: posts carry metadata naming the request (`Marker`), and the replica that takes over
a post already attempted looks for it in the channel's history. See docs/slack.md, "Replicas".
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import anyio
from anyio.abc import TaskGroup

from approvals.errors import ApprovalError
from approvals.feed import Change
from approvals.outbox import MESSAGE, REMINDER, ChannelOutbox, Claim, Followup
from approvals.service import ApprovalService
from approvals.states import Status
from approvals.views import RequestView
from gateway.outbox_work import DueWork
from gateway.slack.client import Marker, SlackApi, SlackCallFailed
from gateway.slack.messages import Links, reminder_text, request_message
from gateway.slack.terms import ESCALATION_KIND, escalation_kind, escalation_text
from gateway.slack.worker import Outbox

log = logging.getLogger(__name__)

CHANNEL = "slack"
# How far before a lost post's recorded attempt its look-up starts: the replicas' and Slack's clocks differ a little.
_CLOCK_MARGIN = 60.0


def wants_slack(view: RequestView) -> bool:
    return "slack" in view.channels


class MessageKeeper:
    def __init__(
        self,
        service: ApprovalService,
        api: SlackApi,
        outbox: Outbox,
        items: ChannelOutbox,
        links: Links,
        *,
        default_channel: str,
        reminder_before: float | None,
        clock: Callable[[], datetime],
        poll_interval: float,
    ) -> None:
        self.service = service
        self.api = api
        self.outbox = outbox
        self.items = items
        self.links = links
        self.default_channel = default_channel
        self.reminder_before = reminder_before
        self.clock = clock
        self.work: DueWork[tuple[str, str]] = DueWork(poll_interval)
        self._tasks: TaskGroup | None = None

    async def changed(self, change: Change) -> None:
        """Every replica hears every change; each says the message owes it, and one replica shows it."""
        view = change.request
        if not wants_slack(view):
            return
        try:
            await self.items.want(CHANNEL, view.id, MESSAGE, change.seq)
        except ApprovalError as exc:
            # Another replica records it, or this one at its next start (`resume`).
            log.warning("could not note change %d of %s for Slack: %s", change.seq, view.id, exc)
            return
        self._nudge(view.id, MESSAGE)
        if change.kind == "request.escalated" and view.escalated > 0:
            # One item per step, so each step's notice is posted once by whichever replica claims it.
            kind = escalation_kind(view.escalated)
            try:
                await self.items.schedule(CHANNEL, view.id, kind, self.clock())
            except ApprovalError as exc:
                log.warning("could not schedule the Slack escalation notice of %s: %s", view.id, exc)
                return
            self._nudge(view.id, kind)

    def _nudge(self, request_id: str, kind: str) -> None:
        self.work.nudge((request_id, kind))

    async def run(self) -> None:
        """Claim and do due work for the life of the process: nudged by changes, and a poll for the rest."""
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            try:
                await self.resume()
            except ApprovalError as exc:
                log.warning("could not look for requests that Slack has not shown yet: %s", exc)
            # Reminders come due, and leases of replicas that died run out, without anyone saying so: the scan.
            async for keys in self.work.batches(lambda: self.items.due(CHANNEL), "the Slack outbox"):
                for key in keys:
                    tasks.start_soon(self._work, *key)

    async def resume(self) -> None:
        """On start: owe a showing to every open request (it may have changed while no replica ran)."""
        open_requests = {Status.PENDING, Status.APPROVED, Status.EXECUTING}
        for view in await self.service.list_requests(statuses=open_requests, limit=1000):
            if not wants_slack(view):
                continue
            # Nothing is posted or updated unless it differs from what Slack shows (recorded with the item).
            await self.items.want(CHANNEL, view.id, MESSAGE)
            if view.status == Status.PENDING and view.slack_ts is not None and view.reminded_at is None:
                await self._schedule_reminder(view)
            self._nudge(view.id, MESSAGE)

    async def _work(self, request_id: str, kind: str) -> None:
        try:
            while (claim := await self.items.claim(CHANNEL, request_id, kind)) is not None:
                job = _Job(self, claim)
                async with anyio.create_task_group() as keep:
                    keep.start_soon(self._keep_lease, claim)
                    done = await self.outbox.attempt(kind, request_id, job.run)
                    keep.cancel_scope.cancel()
                if job.store_error is not None:
                    # The lease runs out and this replica, or another, claims the item again.
                    raise job.store_error
                if not done:
                    await self.items.give_up(claim)
        except ApprovalError as exc:
            log.warning("Slack %s of %s: the outbox is unreachable (%s); another try follows", kind, request_id, exc)
        finally:
            self.work.done((request_id, kind))

    async def _keep_lease(self, claim: Claim) -> None:
        while True:
            await anyio.sleep(self.items.lease.total_seconds() / 3)
            try:
                if not await self.items.renew(claim):
                    log.warning("lost the lease on the Slack %s of %s", claim.kind, claim.request_id)
                    return
            except ApprovalError as exc:
                log.warning("could not renew the lease on the Slack %s of %s: %s", claim.kind, claim.request_id, exc)

    async def _schedule_reminder(self, view: RequestView) -> None:
        when = self.reminder_time(view)
        if when is not None:
            await self.items.schedule(CHANNEL, view.id, REMINDER, when)

    def reminder_time(self, view: RequestView) -> datetime | None:
        # The tool's own lead time (approval.remind_before), else the channel's.
        before = view.remind_before_seconds if view.remind_before_seconds is not None else self.reminder_before
        if before is None:
            return None
        when = view.expires_at - timedelta(seconds=before)
        now = self.clock()
        if when > now:
            return when
        # Its moment passed before the message was up (a slow post, a restart): late is better than never while
        # there is still time to decide; a lead time longer than the whole wait never asked for one.
        return now if view.created_at <= when and view.expires_at > now else None


class _Job:
    """One claimed item, tried (and retried) by the outbox until it succeeds or fails for good."""

    def __init__(self, keeper: MessageKeeper, claim: Claim) -> None:
        self.keeper = keeper
        self.claim = claim
        # When a post of ours may have reached Slack without its answer reaching us (a replica's, or this retry's).
        self.attempted = claim.attempted_at
        self.store_error: ApprovalError | None = None

    async def run(self) -> None:
        try:
            if self.claim.kind == REMINDER:
                await self._remind()
            elif self.claim.kind.startswith(ESCALATION_KIND):
                await self._escalated(int(self.claim.kind[len(ESCALATION_KIND) :]))
            else:
                await self._show()
        except ApprovalError as exc:
            # Not Slack's failure: not worth the Slack retries, and never a reason to give the change up.
            self.store_error = exc

    async def _show(self) -> None:
        k, claim = self.keeper, self.claim
        view = await k.service.get(claim.request_id)
        message = request_message(view, await k.service.decisions(claim.request_id), k.links)
        shown = hashlib.sha256(json.dumps(message.blocks, sort_keys=True).encode()).hexdigest()
        if view.slack_ts is not None and view.slack_channel is not None:
            if claim.shown != shown:
                await k.api.update_message(view.slack_channel, view.slack_ts, message.text, message.blocks)
            await k.items.complete(claim, shown=shown)
            return
        channel = view.slack_channel or k.default_channel
        marker = Marker(view.id, MESSAGE)
        # A post already attempted may be there (its poster died before recording it): it is then shown anew.
        ts = await self._already_posted(channel, marker)
        posted: str | None = None
        if ts is None:
            if view.status != Status.PENDING:
                # Decided before Slack ever showed it: nothing left to decide there, so no message.
                await k.items.complete(claim, shown=None)
                return
            self.attempted = await k.items.attempting(claim)
            answer = await k.api.post_message(channel, message.text, message.blocks, marker=marker)
            channel, ts, posted = str(answer["channel"]), str(answer["ts"]), shown
        when = k.reminder_time(view) if view.status == Status.PENDING else None
        followup = None if when is None else Followup(REMINDER, when)
        if not await k.items.record_post(claim, channel, ts, shown=posted, followup=followup):
            # Another replica's message was recorded first (it lost its lease to us mid-post): ours goes.
            log.warning("request %s was posted to Slack twice; deleting the second message", view.id)
            await _quietly(k.api.delete_message(channel, ts))
            await k.items.release(claim)

    async def _remind(self) -> None:
        k, claim = self.keeper, self.claim
        view = await k.service.get(claim.request_id)
        if view.status != Status.PENDING or view.slack_ts is None or view.slack_channel is None:
            await k.items.complete(claim, shown=None)
            return
        channel, ts = view.slack_channel, view.slack_ts
        marker = Marker(view.id, REMINDER)
        if await self._already_posted(channel, marker, thread_ts=ts) is None:
            text = reminder_text(view, (view.expires_at - k.clock()).total_seconds(), k.links)
            self.attempted = await k.items.attempting(claim)
            await k.api.post_message(channel, text, thread_ts=ts, marker=marker)
        # Records `reminded_at` and the audit event; None when the request left `pending` meanwhile.
        await k.service.claim_reminder(view.id)
        await k.items.complete(claim, shown=None)

    async def _escalated(self, step: int) -> None:
        """Tell the thread who may decide now; a request not shown yet gets the approvers in its first message."""
        k, claim = self.keeper, self.claim
        view = await k.service.get(claim.request_id)
        if view.status != Status.PENDING or view.slack_ts is None or view.slack_channel is None:
            await k.items.complete(claim, shown=None)
            return
        marker = Marker(view.id, claim.kind)
        if await self._already_posted(view.slack_channel, marker, thread_ts=view.slack_ts) is None:
            text = escalation_text(view, view.escalation[step - 1], k.service.approvers, k.links)
            self.attempted = await k.items.attempting(claim)
            await k.api.post_message(view.slack_channel, text, thread_ts=view.slack_ts, marker=marker)
        await k.items.complete(claim, shown=None)

    async def _already_posted(self, channel: str, marker: Marker, *, thread_ts: str | None = None) -> str | None:
        if self.attempted is None:
            return None
        since = self.attempted.timestamp() - _CLOCK_MARGIN
        found = await self.keeper.api.find_posted(channel, marker, since=since, thread_ts=thread_ts)
        if found is not None:
            log.info("found the Slack %s of %s that a previous attempt posted", marker.kind, marker.request_id)
        return found


async def _quietly(call: Awaitable[object]) -> None:
    try:
        await call
    except SlackCallFailed as exc:
        log.warning("Slack clean-up failed: %s", exc)
