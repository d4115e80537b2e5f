"""Which configured approver a Slack user is: `slack_user` in the config, else the profile email via users.info."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from approvals.approvers import Approver, ApproverDirectory
from gateway.slack.client import SlackApi

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

    async def approver_for(self, user_id: str) -> Approver | None:
        """The approver this Slack user is, or None. Raises SlackCallFailed when Slack cannot say."""
        configured = self.directory.by_slack_user(user_id)
        if configured is not None:
            return configured
        cached = self._cache.get(user_id)
        if cached is not None and cached.until > self._now():
            return cached.approver
        info = await self.api.user_info(user_id)
        approver = self._match(info.get("user") or {}, user_id)
        self._cache[user_id] = _Cached(approver, self._now() + self.ttl)
        return approver

    def _match(self, user: dict[str, object], user_id: str) -> Approver | None:
        if user.get("deleted") or user.get("is_bot"):
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
