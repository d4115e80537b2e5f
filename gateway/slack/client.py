"""The Slack Web API calls Countersign makes, with every failure sorted into "retry later" or "give up"."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from gateway.config_channels import SlackSettings

DEFAULT_API_URL = "https://slack.com/api/"
MARKER_EVENT = "countersign_request"
# How many pages of history a look for a lost post reads (200 messages each) before giving up.
_HISTORY_PAGES = 5

log = logging.getLogger(__name__)

# Slack's own "try again" answers; every other `ok: false` error (bad channel, bad token, ...) is permanent.
_TRANSIENT_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout", "team_added_to_org"}
)


@dataclass(frozen=True)
class Marker:
    """Message metadata naming the request and the kind of message, so a lost post can be found again."""

    request_id: str
    kind: str

    def metadata(self) -> dict[str, Any]:
        return {"event_type": MARKER_EVENT, "event_payload": {"request_id": self.request_id, "kind": self.kind}}

    def matches(self, metadata: Any) -> bool:
        if not isinstance(metadata, dict) or metadata.get("event_type") != MARKER_EVENT:
            return False
        payload = metadata.get("event_payload")
        return isinstance(payload, dict) and payload == {"request_id": self.request_id, "kind": self.kind}


class SlackCallFailed(Exception):
    """A Web API call did not succeed. `retryable` says whether the same call may work later."""

    def __init__(self, method: str, error: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(f"{method}: {error}")
        self.method = method
        self.error = error
        self.retryable = retryable
        self.retry_after = retry_after


class SlackApi:
    """A thin typed face on slack-sdk's AsyncWebClient; retries are the caller's business (see worker.Outbox)."""

    def __init__(self, settings: SlackSettings) -> None:
        self.timeout = settings.request_timeout
        # Also the key material for what the gateway signs for itself in Slack (the reject modal's metadata):
        # a secret every replica holds, and nobody who can only click in Slack does.
        self.bot_token = settings.bot_token or ""
        # No client-side retry handlers: the outbox retries, audits and honours Retry-After itself.
        self.client = AsyncWebClient(
            token=settings.bot_token,
            base_url=settings.api_url or DEFAULT_API_URL,
            timeout=max(1, math.ceil(settings.request_timeout)),
            retry_handlers=[],
        )

    async def call(
        self,
        method: str,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        get: bool = False,
        token: str | None = None,
    ) -> dict[str, Any]:
        """POST (JSON body or query arguments) or GET one Web API method; return its JSON on `ok: true`."""
        data, _ = await self.call_with_headers(method, json=json, params=params, get=get, token=token)
        return data

    async def call_with_headers(
        self,
        method: str,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        get: bool = False,
        token: str | None = None,
    ) -> tuple[dict[str, Any], Mapping[str, Any]]:
        arguments = {k: v for k, v in (params or {}).items() if v is not None}
        if token is not None:
            arguments["token"] = token
        try:
            with anyio.fail_after(self.timeout):
                response = await self.client.api_call(
                    method,
                    http_verb="GET" if get else "POST",
                    json=dict(json) if json is not None else None,
                    params=arguments or None,
                )
        except SlackApiError as exc:
            raise _classify(method, exc) from None
        except TimeoutError:
            raise SlackCallFailed(method, f"no answer within {self.timeout:g}s", retryable=True) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise SlackCallFailed(method, f"{type(exc).__name__}: {exc}", retryable=True) from None
        except Exception as exc:
            # slack-sdk trips over some bodies (a text/plain 500 raises AttributeError); still just a failed call.
            raise SlackCallFailed(method, f"unexpected answer ({type(exc).__name__}: {exc})", retryable=True) from None
        data = response.data
        if not isinstance(data, dict):
            raise SlackCallFailed(method, "the answer was not JSON", retryable=True)
        return data, response.headers or {}

    async def post_message(
        self,
        channel: str,
        text: str,
        blocks: Sequence[Mapping[str, Any]] | None = None,
        thread_ts: str | None = None,
        *,
        marker: Marker | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "channel": channel,
            "text": text,
            # Links in agent-supplied arguments must not unfold into previews, and names must not ping anyone.
            "unfurl_links": False,
            "unfurl_media": False,
            "link_names": False,
        }
        if blocks is not None:
            body["blocks"] = list(blocks)
        if thread_ts is not None:
            body["thread_ts"] = thread_ts
        if marker is not None:
            body["metadata"] = marker.metadata()
        return await self.call("chat.postMessage", json=body)

    async def delete_message(self, channel: str, ts: str) -> dict[str, Any]:
        return await self.call("chat.delete", json={"channel": channel, "ts": ts})

    async def find_posted(
        self, channel: str, marker: Marker, *, since: float, thread_ts: str | None = None
    ) -> str | None:
        """The ts of a message posted with `marker` in `channel` (or in the thread) since `since`; None if none.

        Needs the history scopes (`channels:history`, `groups:history`). Without them, or when the
        channel cannot be read, it says it cannot tell (None, logged): the caller posts again.
        """
        method = "conversations.history" if thread_ts is None else "conversations.replies"
        params: dict[str, Any] = {
            "channel": channel,
            "oldest": f"{max(since, 0.0):.6f}",
            "include_all_metadata": "true",
            "limit": 200,
            "ts": thread_ts,
        }
        for _ in range(_HISTORY_PAGES):
            try:
                page = await self.call(method, params=params, get=True)
            except SlackCallFailed as exc:
                if exc.retryable:
                    raise
                log.warning("cannot look in %s for a message already posted (%s); posting again", channel, exc)
                return None
            for message in page.get("messages") or []:
                if isinstance(message, dict) and marker.matches(message.get("metadata")):
                    return str(message["ts"])
            cursor = (page.get("response_metadata") or {}).get("next_cursor")
            if not cursor:
                return None
            params["cursor"] = cursor
        return None

    async def update_message(
        self, channel: str, ts: str, text: str, blocks: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]:
        body = {"channel": channel, "ts": ts, "text": text, "blocks": list(blocks), "link_names": False}
        return await self.call("chat.update", json=body)

    async def post_ephemeral(self, channel: str, user: str, text: str) -> dict[str, Any]:
        return await self.call("chat.postEphemeral", json={"channel": channel, "user": user, "text": text})

    async def open_view(self, trigger_id: str, view: Mapping[str, Any]) -> dict[str, Any]:
        return await self.call("views.open", json={"trigger_id": trigger_id, "view": dict(view)})

    async def user_info(self, user: str) -> dict[str, Any]:
        return await self.call("users.info", params={"user": user}, get=True)

    async def auth_test(self) -> dict[str, Any]:
        return await self.call("auth.test")


def _classify(method: str, exc: SlackApiError) -> SlackCallFailed:
    response = exc.response
    status = int(getattr(response, "status_code", 0) or 0)
    data = response.data if isinstance(response.data, dict) else {}
    error = str(data.get("error") or f"HTTP {status}")
    if status == 429 or error == "ratelimited":
        return SlackCallFailed(method, "rate limited (429)", retryable=True, retry_after=_retry_after(response.headers))
    if status >= 500 or error in _TRANSIENT_ERRORS:
        return SlackCallFailed(method, error if data.get("error") else f"HTTP {status}", retryable=True)
    return SlackCallFailed(method, error, retryable=False)


def _retry_after(headers: Mapping[str, Any] | None) -> float:
    for key, value in (headers or {}).items():
        if key.lower() == "retry-after":
            try:
                return max(0.0, float(value))
            except (TypeError, ValueError):
                break
    return 1.0
