"""The Slack channel: an approval message per held request, decided with buttons, kept true on every change.

Wiring only; each concern has its module: `messages` (Block Kit), `notifier` (post and update),
`worker` (retries off the decision path), `decisions` (clicks and the reject modal), `identity`
(Slack user to approver), `interactions` (HTTP, signed) and `socket_mode` (no public URL).
"""

from __future__ import annotations

import logging

import anyio
from starlette.middleware import Middleware
from starlette.routing import BaseRoute

from approvals.approvers import ApproverDirectory
from approvals.feed import Change, ChangeListener
from approvals.outbox import ChannelOutbox
from approvals.service import ApprovalService
from gateway.channels import ChannelContext
from gateway.config import ConfigError, Settings
from gateway.slack.client import SlackApi
from gateway.slack.decisions import SlackDecisions
from gateway.slack.identity import SlackIdentities
from gateway.slack.interactions import InteractionEndpoint
from gateway.slack.messages import Links
from gateway.slack.notifier import MessageKeeper
from gateway.slack.socket_mode import SocketModeRunner
from gateway.slack.worker import Outbox, RetryPolicy

log = logging.getLogger(__name__)

__all__ = ["SlackChannel", "config_problems"]


def config_problems(settings: Settings) -> list[tuple[str, str]]:
    """What keeps the [slack] section from working, as (key, message); empty when it is complete."""
    slack = settings.slack
    problems: list[tuple[str, str]] = []
    if not slack.bot_token:
        problems.append(("slack.bot_token", "set the bot token (xoxb-…), or the SLACK_BOT_TOKEN variable"))
    if not slack.channel:
        problems.append(("slack.channel", "name the channel to post approvals to, e.g. a channel id C0123ABCD"))
    if slack.mode == "http" and not slack.signing_secret:
        problems.append(("slack.signing_secret", "HTTP mode verifies every click: set it, or SLACK_SIGNING_SECRET"))
    if slack.mode == "socket" and not (slack.app_token or "").startswith("xapp-"):
        problems.append(("slack.app_token", "Socket Mode needs an app-level token (xapp-…), or SLACK_APP_TOKEN"))
    return problems


class SlackChannel:
    name = "slack"

    def __init__(self, settings: Settings, service: ApprovalService, approvers: ApproverDirectory) -> None:
        problems = config_problems(settings)
        if problems:
            key, message = problems[0]
            raise ConfigError(settings.source, key, message)
        slack = settings.slack
        self.settings = slack
        self.service = service
        self.api = SlackApi(slack)
        self.outbox = Outbox(service, RetryPolicy.from_settings(slack))
        links = Links(settings.server.base_url)
        self.messages = MessageKeeper(
            service,
            self.api,
            self.outbox,
            ChannelOutbox(service.db, clock=service.clock, lease=slack.lease),
            links,
            default_channel=slack.channel or "",
            reminder_before=slack.reminder_before,
            clock=service.clock,
            poll_interval=settings.server.poll_interval,
        )
        self.decisions = SlackDecisions(service, SlackIdentities(approvers, self.api), self.api, self.outbox, links)
        self.socket: SocketModeRunner | None = None
        if slack.mode == "socket":
            self.socket = SocketModeRunner(slack.app_token or "", self.api, self.decisions.acknowledge)

    def routes(self) -> list[BaseRoute]:
        if self.settings.mode != "http":
            return []
        return [InteractionEndpoint(self.settings.signing_secret or "", self.decisions.acknowledge).route()]

    def middleware(self) -> list[Middleware]:
        return []

    def listeners(self) -> list[ChangeListener]:
        return [self]

    async def run(self) -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(self.outbox.run)
            if self.socket is not None:
                group.start_soon(self.socket.run)
            group.start_soon(self.messages.run)

    async def request_changed(self, change: Change) -> None:
        # Notes the work in the database and nudges this replica's worker: a listener must never hold up
        # the feed. Every replica hears every change; the one that claims the work shows it.
        await self.messages.changed(change)


def build(context: ChannelContext) -> SlackChannel | None:
    """The Slack channel when [slack] is configured (a bot token and a channel), else None."""
    slack = context.settings.slack
    if not slack.enabled:
        if slack.bot_token or slack.channel:
            log.warning("Slack is off: [slack] needs both bot_token and channel (run `countersign slack check`)")
        return None
    return SlackChannel(context.settings, context.service, context.approvers)
