"""Approval channels (web inbox, Slack): how they plug into the running gateway.

A channel contributes HTTP routes and middleware, may run a background task for the
gateway's lifetime, and hears every request change through `ApprovalService.add_listener`.
It acts on requests only through the approval service.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from starlette.middleware import Middleware
from starlette.routing import BaseRoute

if TYPE_CHECKING:
    from gateway.app import Gateway


class Channel(Protocol):
    name: str

    def routes(self) -> list[BaseRoute]: ...

    def middleware(self) -> list[Middleware]: ...

    async def run(self) -> None:
        """Background work for the gateway's lifetime; may return at once when there is none."""
        ...


def build_channels(gateway: Gateway) -> list[Channel]:
    channels: list[Channel] = []
    if gateway.settings.web.enabled:
        from gateway.web import WebChannel

        channels.append(WebChannel(gateway))

    from gateway import slack

    slack_channel = slack.build(gateway)
    if slack_channel is not None:
        channels.append(slack_channel)
    return channels
