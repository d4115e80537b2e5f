"""What a standing approval may be: the terms a tool's policy offers, and the key a call is matched by.

A request carries the offer of the policy that held it (`approval_request.grant_offer`), so the
approver is offered exactly what the policy allowed when the call was made; the grant made from it
is clamped to that offer, never beyond.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from approvals import stored
from approvals.audit import as_utc, canonical_json
from approvals.durations import format_duration


@dataclass(frozen=True)
class GrantOffer:
    """At most how long and how many calls a grant may last, and which arguments are its key (None: all)."""

    max_seconds: float
    max_uses: int
    key: tuple[str, ...] | None = None

    def to_json(self) -> str:
        return canonical_json({"max_seconds": self.max_seconds, "max_uses": self.max_uses, "key": self.key})

    @classmethod
    def from_json(cls, text: str | None) -> GrantOffer | None:
        """The stored offer, or None when there is none or it cannot be read (then no grant is offered)."""
        if not text:
            return None
        try:
            data = json.loads(text)
            key = data.get("key")
            seconds, uses = float(data["max_seconds"]), int(data["max_uses"])
            names = None if key is None else tuple(str(name) for name in key)
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        return cls(seconds, uses, names) if seconds > 0 and uses > 0 else None

    @property
    def max_minutes(self) -> int:
        """The longest grant in whole minutes (at least one), as channels offer it."""
        return max(1, int(self.max_seconds // 60))

    def describe(self) -> str:
        """``"up to 15m and 20 calls, for the same symbol, side"`` — what the approver is offered."""
        calls = "call" if self.max_uses == 1 else "calls"
        same = "the same arguments" if self.key is None else f"the same {', '.join(self.key)}"
        return f"up to {format_duration(self.max_seconds)} and {self.max_uses} {calls}, for {same}"


@dataclass(frozen=True)
class GrantAsk:
    """What an approver asks for when approving with a grant; None takes the offer's maximum."""

    seconds: float | None = None
    uses: int | None = None


@dataclass(frozen=True)
class GrantTerms:
    """The grant that will be made: the ask clamped to the offer, and whether it had to be."""

    seconds: float
    uses: int
    clamped: bool

    def note(self, offer: GrantOffer) -> str:
        """What the approver is told when the ask was cut to the policy's maximum."""
        if not self.clamped:
            return ""
        return f"the policy allows {offer.describe()}; the grant was shortened to that"


def clamp(offer: GrantOffer, ask: GrantAsk) -> GrantTerms:
    """The ask within the offer: never longer, never more calls (the policy's maximum is the ceiling)."""
    if ask.seconds is not None and ask.seconds <= 0:
        raise ValueError("a grant must last longer than zero")
    if ask.uses is not None and ask.uses < 1:
        raise ValueError("a grant must allow at least one call")
    seconds = offer.max_seconds if ask.seconds is None else min(ask.seconds, offer.max_seconds)
    uses = offer.max_uses if ask.uses is None else min(ask.uses, offer.max_uses)
    clamped = (ask.seconds is not None and ask.seconds > offer.max_seconds) or (
        ask.uses is not None and ask.uses > offer.max_uses
    )
    return GrantTerms(seconds, uses, clamped)


def key_digest(agent: str, tool: str, arguments: Mapping[str, Any], key: Sequence[str] | None) -> str:
    """What identifies "the same call" for a grant: agent, tool and the key arguments (all of them when None).

    The key's names are part of the digest, so grants made under different keys never match each other's
    calls; an argument the key names but the call leaves out is absent in both, never a wildcard.
    """
    chosen = dict(arguments) if key is None else {name: arguments[name] for name in key if name in arguments}
    names = None if key is None else sorted(key)
    material = canonical_json([agent, tool, names, chosen])
    return hashlib.sha256(material.encode()).hexdigest()


@dataclass(frozen=True)
class GrantView:
    """One standing approval as stored."""

    id: str
    request_id: str
    agent: str
    tool: str
    key: tuple[str, ...] | None
    key_sha256: str
    arguments_json: str
    approver: str
    channel: str
    created_at: datetime
    expires_at: datetime
    max_uses: int
    uses: int
    revoked_at: datetime | None
    revoked_by: str | None
    policy_version: str | None

    def state(self, now: datetime) -> str:
        """``live``, ``revoked``, ``used up`` or ``expired``: whether calls may run under it now."""
        if self.revoked_at is not None:
            return "revoked"
        if self.uses >= self.max_uses:
            return "used up"
        if self.expires_at <= now:
            return "expired"
        return "live"

    @property
    def arguments_shown(self) -> Any:
        return stored.shown(self.arguments_json)

    def describe(self) -> str:
        """``"ibkr_quote by ops-agent, same symbol, granted by alice: 3 of 20 calls used, until 14:05 UTC"``."""
        same = "same arguments" if self.key is None else f"same {', '.join(self.key)}"
        return (
            f"{self.tool} by {self.agent}, {same}, granted by {self.approver}: {self.uses} of {self.max_uses} "
            f"calls used, until {self.expires_at:%H:%M} UTC"
        )

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> GrantView:
        names = stored.shown(row["key_names"]) if row["key_names"] else None
        return cls(
            id=row["id"],
            request_id=row["request_id"],
            agent=row["agent"],
            tool=row["tool"],
            key=tuple(str(n) for n in names) if isinstance(names, list) else None,
            key_sha256=row["key_sha256"],
            arguments_json=row["arguments"],
            approver=row["approver"],
            channel=row["channel"],
            created_at=as_utc(row["created_at"]),
            expires_at=as_utc(row["expires_at"]),
            max_uses=row["max_uses"],
            uses=row["uses"],
            revoked_at=None if row["revoked_at"] is None else as_utc(row["revoked_at"]),
            revoked_by=row["revoked_by"],
            policy_version=row["policy_version"],
        )
