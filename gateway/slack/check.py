"""`countersign slack check`: is the Slack set-up complete, and if not, what exactly is wrong."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from gateway.config import Settings
from gateway.policy import PolicyError, load_policy
from gateway.slack import config_problems
from gateway.slack.client import SlackApi, SlackCallFailed
from gateway.slack.interactions import PATH

Level = Literal["ok", "warn", "fail"]

# The bot token's scopes for posting and updating messages, and for matching approvers by email.
NEEDED_SCOPES = ("chat:write",)
EMAIL_SCOPES = ("users:read", "users:read.email")
# With several replicas, to find a message posted by a replica that died before recording it.
HISTORY_SCOPES = ("channels:history", "groups:history")

_HINTS = {
    "invalid_auth": "the token is not valid: copy the Bot User OAuth Token (xoxb-…) again from OAuth & Permissions",
    "not_authed": "no token was sent: set [slack] bot_token or SLACK_BOT_TOKEN",
    "token_revoked": "the token was revoked: reinstall the app to the workspace and copy the new token",
    "account_inactive": "the app's bot user is deactivated: reinstall the app",
    "channel_not_found": "no such channel, or it is private and the bot is not in it: invite the bot with /invite",
    "missing_scope": "the token lacks a scope this needs: add it under OAuth & Permissions and reinstall",
    "user_not_found": "no such Slack user id in this workspace (find it under Profile → ⋯ → Copy member ID)",
}


@dataclass(frozen=True)
class Finding:
    level: Level
    subject: str
    message: str

    def line(self) -> str:
        return f"{self.level.upper():4}  {self.subject}: {self.message}"


def _hint(exc: SlackCallFailed) -> str:
    hint = _HINTS.get(exc.error)
    return f"{exc.error} — {hint}" if hint else exc.error


def configuration(settings: Settings) -> Iterator[Finding]:
    slack = settings.slack
    for key, message in config_problems(settings):
        yield Finding("fail", key, message)
    if slack.bot_token and not slack.bot_token.startswith("xoxb-"):
        yield Finding("warn", "slack.bot_token", "expected a bot token starting with xoxb-")
    if slack.mode == "http":
        url = f"{settings.server.base_url}{PATH}"
        if not settings.server.public_url:
            yield Finding(
                "warn",
                "server.public_url",
                f"not set, so Slack would be pointed at {url}; set it to the public HTTPS address of this gateway "
                '(or use mode = "socket")',
            )
        elif not settings.server.public_url.startswith("https://"):
            yield Finding("warn", "server.public_url", "Slack only sends interactions to an https:// Request URL")
        else:
            yield Finding("ok", "interactivity", f"set the app's Interactivity Request URL to {url}")
    for approver in settings.approvers:
        if not approver.slack_user and not approver.email:
            yield Finding(
                "warn", f"approver {approver.name}", "has neither slack_user nor email, so cannot decide from Slack"
            )


async def check(settings: Settings) -> list[Finding]:
    findings = list(configuration(settings))
    slack = settings.slack
    if not slack.bot_token:
        return findings
    api = SlackApi(slack)
    try:
        identity, headers = await api.call_with_headers("auth.test")
    except SlackCallFailed as exc:
        findings.append(Finding("fail", "bot token", f"auth.test failed: {_hint(exc)}"))
        return findings
    findings.append(
        Finding(
            "ok",
            "bot token",
            f"authenticated as @{identity.get('user')} in {identity.get('team')} ({identity.get('team_id')})",
        )
    )
    findings.extend(_scopes(headers, settings))
    channels = [slack.channel] if slack.channel else []
    channels += [c for c in _policy_channels(settings, findings) if c not in channels]
    for channel in channels:
        findings.append(await _channel(api, channel))
    if slack.mode == "socket" and slack.app_token:
        try:
            await api.call("apps.connections.open", token=slack.app_token)
            findings.append(Finding("ok", "app token", "Socket Mode connections can be opened"))
        except SlackCallFailed as exc:
            message = _hint(exc)
            if exc.error in ("invalid_auth", "not_allowed_token_type"):
                message += " (use an app-level token with the connections:write scope, and enable Socket Mode)"
            findings.append(Finding("fail", "app token", f"apps.connections.open failed: {message}"))
    for approver in settings.approvers:
        if approver.slack_user:
            findings.append(await _slack_user(api, approver.name, approver.slack_user))
    return findings


def _scopes(headers: Mapping[str, Any], settings: Settings) -> list[Finding]:
    # Slack lists a token's scopes in a header of every answer; auth.test's is read here.
    header = next((v for k, v in headers.items() if k.lower() == "x-oauth-scopes"), None)
    if header is None:
        return []
    granted = {s.strip() for s in str(header).split(",") if s.strip()}
    needed = list(NEEDED_SCOPES)
    if any(a.email and not a.slack_user for a in settings.approvers):
        needed += EMAIL_SCOPES
    missing = [s for s in needed if s not in granted]
    if missing:
        return [
            Finding(
                "fail",
                "scopes",
                f"the bot token lacks {', '.join(missing)}: add under OAuth & Permissions, then reinstall the app",
            )
        ]
    findings = [Finding("ok", "scopes", ", ".join(sorted(granted)))]
    lacking = [s for s in HISTORY_SCOPES if s not in granted]
    if lacking:
        findings.append(
            Finding(
                "warn",
                "scopes",
                f"the bot token lacks {', '.join(lacking)}: with several replicas, a message posted by a replica "
                "that died before recording it cannot be found again and is posted twice",
            )
        )
    return findings


async def _channel(api: SlackApi, channel: str) -> Finding:
    subject = f"channel {channel}"
    try:
        if channel.startswith("#") or not channel[:1].isupper():
            info = await _find_by_name(api, channel.lstrip("#"))
            if info is None:
                return Finding("fail", subject, "no channel of that name is visible to the bot; use the channel id")
        else:
            info = (await api.call("conversations.info", params={"channel": channel}, get=True)).get("channel") or {}
    except SlackCallFailed as exc:
        if exc.error == "missing_scope":
            return Finding(
                "warn",
                subject,
                "cannot verify without channels:read (and groups:read for private channels); posting still "
                "works once the bot is in the channel",
            )
        return Finding("fail", subject, _hint(exc))
    if info.get("is_archived"):
        return Finding("fail", subject, "the channel is archived")
    if not info.get("is_member"):
        return Finding("fail", subject, f"the bot is not a member: in Slack, run /invite @<bot> in #{info.get('name')}")
    return Finding("ok", subject, f"#{info.get('name')} ({info.get('id')}); the bot can post there")


async def _find_by_name(api: SlackApi, name: str) -> dict[str, Any] | None:
    cursor: str | None = None
    for _ in range(50):
        page = await api.call(
            "conversations.list",
            params={"types": "public_channel,private_channel", "limit": 1000, "cursor": cursor},
            get=True,
        )
        for info in page.get("channels") or []:
            if info.get("name") == name:
                return dict(info)
        cursor = (page.get("response_metadata") or {}).get("next_cursor") or None
        if not cursor:
            return None
    return None


async def _slack_user(api: SlackApi, name: str, user_id: str) -> Finding:
    subject = f"approver {name}"
    try:
        user = (await api.user_info(user_id)).get("user") or {}
    except SlackCallFailed as exc:
        return Finding("fail", subject, f"slack_user {user_id}: {_hint(exc)}")
    if user.get("deleted"):
        return Finding("fail", subject, f"slack_user {user_id} is a deactivated Slack account")
    return Finding("ok", subject, f"slack_user {user_id} is @{user.get('name')}")


def _policy_channels(settings: Settings, findings: list[Finding]) -> list[str]:
    """Channels the policy names per tool (`approval.slack_channel`)."""
    try:
        policy = load_policy(settings.policy_path)
    except PolicyError as exc:
        findings.append(Finding("warn", "policy", f"not read, so its per-tool Slack channels are not checked: {exc}"))
        return []
    found: list[str] = []
    for tool in (policy.all_tools, *policy.tools.values()):
        if tool.approval is not None and tool.approval.slack_channel and tool.approval.slack_channel not in found:
            found.append(tool.approval.slack_channel)
    return found


def report(findings: list[Finding]) -> tuple[str, int]:
    """The printed report and the exit status (1 when anything failed)."""
    failed = sum(f.level == "fail" for f in findings)
    warned = sum(f.level == "warn" for f in findings)
    lines = [f.line() for f in findings]
    if failed:
        lines.append(f"Slack is not ready: {failed} problem(s), {warned} warning(s). See docs/slack.md.")
    else:
        lines.append(f"Slack is ready ({warned} warning(s)).")
    return "\n".join(lines), 1 if failed else 0
