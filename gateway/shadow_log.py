"""Reading the shadow policy's record back: the differences, filtered, and where the shadow stands.

Everything is read from the audit log (`shadow.*` events), so every replica, the API, the web page and
the CLI show the same list, and a difference is as tamper-evident as the call it describes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from approvals.history import AuditHistory
from approvals.views import AuditEventView
from gateway.shadow import DECISIONS, DIFFERS, outcome_for

STANDING: Final = ("shadow.loaded", "shadow.rejected")
TROUBLE: Final = ("shadow.error", "shadow.dropped")
MAX_LIMIT: Final = 1_000


class ShadowQueryError(ValueError):
    """A filter that cannot be read; the message names the parameter and what it takes."""


@dataclass(frozen=True)
class ShadowQuery:
    agent: str | None = None
    tool: str | None = None
    decision: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before: int | None = None
    limit: int = 100

    @classmethod
    def parse(cls, params: dict[str, str]) -> ShadowQuery:
        """From query parameters (HTTP, the web form); raises ShadowQueryError naming the bad one."""

        def given(name: str) -> str | None:
            value = (params.get(name) or "").strip()
            return value or None

        decision = given("decision")
        if decision is not None and decision not in DECISIONS:
            raise ShadowQueryError(f"decision: {decision!r} is not one of {', '.join(DECISIONS)}")
        return cls(
            agent=given("agent"),
            tool=given("tool"),
            decision=decision,
            since=_moment("since", given("since")),
            until=_moment("until", given("until")),
            before=_whole("before", given("before"), 1, None),
            limit=_whole("limit", given("limit"), 1, MAX_LIMIT) or 100,
        )

    def params(self) -> dict[str, str]:
        """The filters as query parameters (for links to the next page)."""
        pairs = {
            "agent": self.agent,
            "tool": self.tool,
            "decision": self.decision,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
        }
        return {key: value for key, value in pairs.items() if value}


def _moment(name: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ShadowQueryError(f"{name}: {text!r} is not a date or time (ISO 8601, e.g. 2026-11-30T14:00)") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _whole(name: str, text: str | None, low: int, high: int | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or int(text) < low or (high is not None and int(text) > high):
        bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise ShadowQueryError(f"{name}: {text!r} is not a whole number {bound}")
    return int(text)


async def differences(history: AuditHistory, query: ShadowQuery) -> list[AuditEventView]:
    """One page of differences, newest first."""
    return await history.search_events(
        kinds=(DIFFERS,),
        agent=query.agent,
        tool=query.tool,
        outcome=outcome_for(query.decision) if query.decision else None,
        since=query.since,
        until=query.until,
        before_seq=query.before,
        limit=query.limit,
    )


async def standing(history: AuditHistory) -> dict[str, Any] | None:
    """The newest word on the shadow policy (loaded, refused, off), or None if none was ever configured."""
    found = await history.search_events(kinds=STANDING, limit=1)
    if not found:
        return None
    event = found[0]
    return {
        "state": event.kind.partition(".")[2],
        "message": event.message,
        "at": event.at.isoformat(),
        "shadow_version": event.detail.get("shadow_version"),
        "policy_version": event.detail.get("policy_version"),
    }


async def trouble(history: AuditHistory, limit: int = 10) -> list[dict[str, Any]]:
    """The newest failures of the shadow itself (it could not judge a call; differences were dropped)."""
    return [
        {"seq": e.seq, "at": e.at.isoformat(), "kind": e.kind, "tool": e.tool, "message": e.message}
        for e in await history.search_events(kinds=TROUBLE, limit=limit)
    ]


def difference_json(event: AuditEventView) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "at": event.at.isoformat(),
        "agent": event.agent,
        "tool": event.tool,
        "upstream": event.upstream,
        "arguments": _arguments(event.arguments),
        "differs_in": event.detail.get("differs_in", []),
        "live": event.detail.get("live", {}),
        "shadow": event.detail.get("shadow", {}),
        "message": event.message,
    }


def _arguments(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


async def listing(history: AuditHistory, query: ShadowQuery) -> dict[str, Any]:
    """The API's answer (and the CLI's --json): where the shadow stands, its failures, one page of differences."""
    found = await differences(history, query)
    more = len(found) == query.limit
    return {
        "shadow": await standing(history),
        "trouble": await trouble(history),
        "differences": [difference_json(event) for event in found],
        "next_before": found[-1].seq if found and more else None,
    }
