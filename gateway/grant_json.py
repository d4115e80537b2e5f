"""Standing approvals as the approver API shows them, and the `grant` an approver asks for in a decision's body."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from starlette.exceptions import HTTPException

from approvals.grant_terms import GrantAsk, GrantOffer, GrantView

GRANT_BODY_KEYS = ("minutes", "uses")


def grant_json(grant: GrantView, now: datetime) -> dict[str, Any]:
    return {
        "id": grant.id,
        "state": grant.state(now),
        "request_id": grant.request_id,
        "agent": grant.agent,
        "tool": grant.tool,
        "key": None if grant.key is None else list(grant.key),
        "arguments": grant.arguments_shown,
        "approver": grant.approver,
        "channel": grant.channel,
        "created_at": grant.created_at.isoformat(),
        "expires_at": grant.expires_at.isoformat(),
        "uses": grant.uses,
        "max_uses": grant.max_uses,
        "revoked_at": None if grant.revoked_at is None else grant.revoked_at.isoformat(),
        "revoked_by": grant.revoked_by,
        "summary": grant.describe(),
    }


def offer_json(offer: GrantOffer | None) -> dict[str, Any] | None:
    if offer is None:
        return None
    return {
        "max_minutes": offer.max_minutes,
        "max_uses": offer.max_uses,
        "key": None if offer.key is None else list(offer.key),
        "describe": offer.describe(),
    }


def grant_ask(value: object) -> GrantAsk:
    """The `grant` of an approval's body: ``{"minutes": 15, "uses": 5}``, either optional (the policy's maximum)."""
    if value is True or value == {}:
        return GrantAsk()
    if not isinstance(value, dict):
        raise HTTPException(400, 'grant must be an object such as {"minutes": 15}, or true for the policy\'s maximum')
    unknown = sorted(set(value) - set(GRANT_BODY_KEYS))
    if unknown:
        raise HTTPException(400, f'unknown key {unknown[0]!r} in grant; it takes "minutes" and "uses"')
    minutes, uses = value.get("minutes"), value.get("uses")
    if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, int | float) or minutes <= 0):
        raise HTTPException(400, f"grant.minutes must be a number of minutes above zero, not {minutes!r}")
    if uses is not None and (isinstance(uses, bool) or not isinstance(uses, int) or uses < 1):
        raise HTTPException(400, f"grant.uses must be a whole number of calls, at least 1, not {uses!r}")
    return GrantAsk(None if minutes is None else float(minutes) * 60, uses)
