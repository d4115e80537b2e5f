"""Calls that run under a standing approval instead of being held (approvals.grants).

Only a call the policy would hold gets here, after its deny rules, its checks and its rate limits have
passed: a grant stands in for the human's click, nothing else. The use is counted and audited in one
transaction before the call is forwarded, so a call the gateway cannot count is held as usual.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import mcp_types as types

from approvals.audit import Event
from approvals.errors import ApprovalError
from approvals.grant_terms import GrantOffer, GrantView, key_digest
from approvals.grants import Grants
from gateway import tracing
from gateway.caller import Caller, ProgressLine
from gateway.ratelimit import Reservation
from gateway.results import text_of
from gateway.upstreams import Route

log = logging.getLogger(__name__)


class GrantedCalls:
    def __init__(self, grants: Grants, record: Callable[[Event], Awaitable[None]]) -> None:
        self.grants = grants
        # Audits what follows a granted call (its failure); never raises.
        self.record = record

    async def has_live(self, agent: str, tool: str, arguments: Mapping[str, Any], offer: GrantOffer | None) -> bool:
        """Whether a live grant matches (a repeat of an ended call then runs under it rather than being answered)."""
        if offer is None:
            return False
        digest = key_digest(agent, tool, arguments, offer.key)
        try:
            live = await self.grants.list(states=("live",), agent=agent, tool=tool)
        except ApprovalError:
            return False
        return any(grant.key_sha256 == digest for grant in live)

    async def run(
        self,
        caller: Caller,
        route: Route,
        tool: str,
        arguments: dict[str, Any],
        offer: GrantOffer,
        allowed: Event,
        reservation: Reservation,
        line: ProgressLine,
    ) -> types.CallToolResult | None:
        """The upstream's result when a live grant took the call; None when none did (the call is held)."""

        def granted(grant: GrantView) -> Event:
            message = (
                f"forwarded under standing approval {grant.id} by {grant.approver} "
                f"(call {grant.uses} of {grant.max_uses})"
            )
            detail = {
                **allowed.detail,
                "grant_id": grant.id,
                "granted_by": grant.approver,
                "uses": grant.uses,
                "max_uses": grant.max_uses,
            }
            return dataclasses.replace(
                allowed, message=message, actor=grant.approver, request_id=grant.request_id, detail=detail
            )

        digest = key_digest(caller.agent, tool, arguments, offer.key)
        try:
            grant = await self.grants.use(
                caller.agent,
                tool,
                digest,
                max_seconds=offer.max_seconds,
                max_uses=offer.max_uses,
                event_for=granted,
            )
        except Exception as exc:
            # Not counted, so not run under the grant: the call is held for a person like any other.
            log.error("cannot use standing approvals for %s, holding the call: %s", tool, exc)
            return None
        if grant is None:
            return None
        tracing.annotate(grant_id=grant.id)
        call = route.upstream.call(route.upstream_tool, arguments, line.relay)
        result = await tracing.traced("upstream", call, upstream=route.upstream.name, tool=route.upstream_tool)
        if result.is_error:
            await reservation.release()
            failed = dataclasses.replace(
                granted(grant), kind="call.failed", outcome="failed", message=text_of(result, 200)
            )
            await self.record(failed)
        return result
