"""Channels (web inbox, Slack, webhooks): how they plug into the running gateway.

A channel contributes HTTP routes and middleware, may run a background task for the gateway's
lifetime, and may hear every request change through the change feed (`listeners`). It is given
only what it uses — settings, the approval service and the approver directory — and acts on
requests only through the approval service.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from starlette.middleware import Middleware
from starlette.routing import BaseRoute

from approvals.approvers import ApproverDirectory
from approvals.feed import ChangeListener
from approvals.service import ApprovalService
from gateway.config import Settings
from gateway.edited import EditedApprovals


@dataclass(frozen=True)
class ChannelContext:
    settings: Settings
    service: ApprovalService
    approvers: ApproverDirectory
    # Approving with changes checks the changed call against the tool's schema and the policy (gateway.edited).
    edited: EditedApprovals | None = None


class Channel(Protocol):
    name: str

    def routes(self) -> list[BaseRoute]: ...

    def middleware(self) -> list[Middleware]: ...

    def listeners(self) -> list[ChangeListener]:
        """What of this channel hears the change feed; wired where the gateway is assembled."""
        ...

    async def run(self) -> None:
        """Background work for the gateway's lifetime; may return at once when there is none."""
        ...
