"""Which configured approver a Slack user is: `slack_user` in the config, else the profile email via users.info.

An email is only as good as the workspace that vouches for it. A shared (Slack Connect) channel
shows the approval message to people of other workspaces, who choose their own profile email;
so an email matches only for a user of the workspace the app is installed in (`auth.test`'s
`team_id`), both as the click says (`user.team_id`) and as users.info says.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from approvals.approvers import Approver, ApproverDirectory
from gateway.slack.client import SlackApi, SlackCallFailed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Cached:
    approver: Approver | None
    until: float


class SlackIdentities:
    def __init__(
        self,
        directory: ApproverDirectory,
        api: SlackApi,
        *,
        ttl: float = 300.0,
        now: Callable[[], float] = anyio.current_time,
    ) -> None:
        self.directory = directory
        self.api = api
        self.ttl = ttl
        self._now = now
        self._cache: dict[str, _Cached] = {}
        self._team: str | None = None

    async def installed_team(self) -> str:
        """The id of the workspace the bot token belongs to; asked once. Raises SlackCallFailed."""
        if self._team is None:
            team = (await self.api.auth_test()).get("team_id")
            if not isinstance(team, str) or not team:
                raise SlackCallFailed("auth.test", "the answer names no team_id", retryable=True)
            self._team = team
        return self._team

    async def approver_for(self, user_id: str, team_id: object = None) -> Approver | None:
        """The approver this Slack user is, or None. Raises SlackCallFailed when Slack cannot say.

        `team_id` is the workspace the interaction says the user belongs to (`user.team_id`).
        """
        configured = self.directory.by_slack_user(user_id)
        if configured is not None:
            return configured
        team = await self.installed_team()
        if team_id is not None and team_id != team:
            log.info("Slack user %s of workspace %r is not of the installed workspace %s", user_id, team_id, team)
            return None
        cached = self._cache.get(user_id)
        if cached is not None and cached.until > self._now():
            return cached.approver
        info = await self.api.user_info(user_id)
        approver = self._match(info.get("user") or {}, user_id, team)
        self._cache[user_id] = _Cached(approver, self._now() + self.ttl)
        return approver

    def _match(self, user: dict[str, object], user_id: str, team: str) -> Approver | None:
        if user.get("deleted") or user.get("is_bot"):
            return None
        if user.get("team_id") != team:
            # Another workspace's user (a shared channel): their email is theirs to set, not ours to trust.
            log.info(
                "Slack user %s belongs to workspace %r, not %s; no email match", user_id, user.get("team_id"), team
            )
            return None
        profile = user.get("profile")
        email = profile.get("email") if isinstance(profile, dict) else None
        if not isinstance(email, str) or not email:
            log.info("Slack user %s has no visible email (needs the users:read.email scope)", user_id)
            return None
        approver = self.directory.by_email(email)
        if approver is not None and approver.slack_user and approver.slack_user != user_id:
            # The approver is pinned to another Slack account; an email match must not override that.
            return None
        return approver
