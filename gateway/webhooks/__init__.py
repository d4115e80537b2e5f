"""Webhooks: every transition of every request, POSTed signed to each configured URL, once.

One channel per `[[webhooks]]` block. Every replica hears every transition on the change feed and
says, in the shared outbox (`approvals.outbox`), that the webhook owes the request up to it (one
item per webhook and request: `wanted_seq` the newest transition asked for, `done_seq` the newest
delivered). One replica at a time claims the item, reads the transitions in between from the
audit log (`approvals.transition_log`) and sends them in order, moving `done_seq` past each one
as it goes, so a replica that takes over from a dead one starts where it stopped. A replica that
starts asks for what no replica asked for while none was running (`catch_up`).

Delivery is at least once: a replica that stalls longer than its lease, mid-send, may see its event
sent again by the next holder. Each event carries its number (`id`, `Countersign-Delivery`) so
receivers can drop a repeat. See docs/webhooks.md.
"""

from __future__ import annotations

import logging

import anyio
import httpx2
from starlette.middleware import Middleware
from starlette.routing import BaseRoute

from approvals import transition_log
from approvals.errors import ApprovalError
from approvals.feed import Change, ChangeListener
from approvals.outbox import ChannelOutbox, Claim
from approvals.service import ApprovalService
from gateway.channels import ChannelContext
from gateway.config_channels import WebhookSettings
from gateway.outbox_work import DueWork
from gateway.webhooks.payload import encode, event_body
from gateway.webhooks.sender import Delivery, WebhookSender

log = logging.getLogger(__name__)

EVENTS = "events"
# Due work nobody nudged (a dead replica's lapsed lease, a store that was down) is looked for this often.
_POLL_SECONDS = 5.0


class WebhookChannel:
    def __init__(self, settings: WebhookSettings, service: ApprovalService, base_url: str) -> None:
        self.settings = settings
        self.name = f"webhook:{settings.name}"
        self.service = service
        self.base_url = base_url
        self.items = ChannelOutbox(service.db, clock=service.clock, lease=settings.lease)
        self.work: DueWork[str] = DueWork(_POLL_SECONDS)
        self._sender: WebhookSender | None = None

    def routes(self) -> list[BaseRoute]:
        return []

    def middleware(self) -> list[Middleware]:
        return []

    def listeners(self) -> list[ChangeListener]:
        return [self]

    async def request_changed(self, change: Change) -> None:
        """Every replica hears every transition and says the webhook owes it; one replica sends it."""
        if not self.settings.wants(change.kind):
            return
        try:
            await self.items.want(self.name, change.request_id, EVENTS, change.seq)
        except ApprovalError as exc:
            # Another replica records it, or the next start's catch-up does.
            log.warning(
                "webhook %s: could not note change %d of %s: %s", self.settings.name, change.seq, change.request_id, exc
            )
            return
        self.work.nudge(change.request_id)

    async def run(self) -> None:
        async with httpx2.AsyncClient(follow_redirects=False) as client, anyio.create_task_group() as tasks:
            self._sender = WebhookSender(self.settings, client, self.service.record)
            try:
                await self.catch_up()
            except ApprovalError as exc:
                log.warning(
                    "webhook %s: could not look for transitions missed while stopped: %s", self.settings.name, exc
                )

            async def due() -> list[str]:
                return [request_id for request_id, _ in await self.items.due(self.name)]

            async for request_ids in self.work.batches(due, f"the outbox of webhook {self.settings.name}"):
                for request_id in request_ids:
                    tasks.start_soon(self._work, request_id)

    async def catch_up(self) -> None:
        """Ask for the transitions made while no replica was running (none, on the webhook's first start)."""
        since = await self.items.high_water(self.name)
        if since == 0:
            return
        changed = await transition_log.changed_since(self.service.db, since)
        for request_id, seq in changed.items():
            await self.items.want(self.name, request_id, EVENTS, seq)
        self.work.nudge(*changed)

    async def _work(self, request_id: str) -> None:
        try:
            while (claim := await self.items.claim(self.name, request_id, EVENTS)) is not None:
                async with anyio.create_task_group() as keep:
                    keep.start_soon(self._keep_lease, claim)
                    held = await self._deliver(claim)
                    keep.cancel_scope.cancel()
                if not held:
                    return
                await self.items.complete(claim, shown=None)
        except ApprovalError as exc:
            log.warning(
                "webhook %s: events of %s wait, the store is unreachable (%s)", self.settings.name, request_id, exc
            )
        except Exception:
            # A bug in one request's delivery must not take the channel down; its lease runs out and it is tried again.
            log.exception("webhook %s: delivering the events of %s crashed", self.settings.name, request_id)
        finally:
            self.work.done(request_id)

    async def _deliver(self, claim: Claim) -> bool:
        """Send the claimed transitions in order; False when the claim was lost meanwhile."""
        assert self._sender is not None
        view = await self.service.get(claim.request_id)
        events = await transition_log.transitions(
            self.service.db, claim.request_id, after=claim.done_seq, upto=claim.wanted_seq
        )
        for event in events:
            if self.settings.wants(event.kind):
                body = encode(event_body(event, view, self.base_url))
                await self._sender.send(Delivery(event.seq, event.kind, claim.request_id, body))
            if not await self.items.progress(claim, event.seq):
                log.warning("webhook %s: lost the lease on %s", self.settings.name, claim.request_id)
                return False
        return True

    async def _keep_lease(self, claim: Claim) -> None:
        while True:
            await anyio.sleep(self.items.lease.total_seconds() / 3)
            try:
                if not await self.items.renew(claim):
                    return
            except ApprovalError as exc:
                log.warning(
                    "webhook %s: could not renew the lease on %s: %s", self.settings.name, claim.request_id, exc
                )


def build(context: ChannelContext) -> list[WebhookChannel]:
    base_url = context.settings.server.base_url
    return [WebhookChannel(hook, context.service, base_url) for hook in context.settings.webhooks]
