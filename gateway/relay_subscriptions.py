"""Resource subscriptions: which agents want updates for which URI, and the one upstream subscription behind them.

2025-era agents subscribe with `resources/subscribe` and hear `notifications/resources/updated`
on their session; 2026-era agents name URIs in `subscriptions/listen` and hear the same event on
that stream. Either way the gateway holds one subscription per upstream resource, counted, and
drops it when the last agent lets go. URIs the policy does not allow are never subscribed.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import mcp_types as types
from anyio.abc import TaskGroup
from mcp.server.context import ServerRequestContext
from mcp.server.subscriptions import ResourceUpdated, SubscriptionBus
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from starlette.requests import Request

from gateway.policy_store import PolicyStore
from gateway.relay_catalog import Catalog, RelayUnavailable, Target

log = logging.getLogger(__name__)

Ctx = ServerRequestContext[Any, Any]
Listen = Callable[[Ctx, types.SubscriptionsListenRequestParams], Awaitable[types.SubscriptionsListenResult]]


class Subscriptions:
    def __init__(self, catalog: Catalog, policies: PolicyStore, bus: SubscriptionBus) -> None:
        self.catalog = catalog
        self.policies = policies
        self.bus = bus
        # shown URI -> connection key -> the session to notify (2025-era agents)
        self._sessions: dict[str, dict[str, Any]] = {}
        self._held: Counter[tuple[str, str]] = Counter()
        self._listens: dict[tuple[str, str], anyio.CancelScope] = {}
        self._tasks: TaskGroup | None = None

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            self._tasks = tg
            try:
                await anyio.sleep_forever()
            finally:
                self._tasks = None

    # ---- 2025-era agents

    async def add(self, ctx: Ctx, shown: str, target: Target) -> None:
        sessions = self._sessions.setdefault(shown, {})
        key = _connection_key(ctx)
        if key not in sessions:
            await self._hold(target)
        sessions[key] = ctx.session

    async def remove(self, ctx: Ctx, shown: str) -> None:
        sessions = self._sessions.get(shown, {})
        if sessions.pop(_connection_key(ctx), None) is None:
            return
        if not sessions:
            self._sessions.pop(shown, None)
        target = self.catalog.resource(shown)
        if target is not None:
            await self._release(target)

    # ---- 2026-era agents

    def listen(self, inner: Listen) -> Listen:
        """Wrap `subscriptions/listen`: keep only URIs the policy allows, and hold their upstream subscriptions."""

        async def serve(ctx: Ctx, params: types.SubscriptionsListenRequestParams) -> types.SubscriptionsListenResult:
            asked = params.notifications.resource_subscriptions or []
            rules = self.policies.current.resources
            targets = [
                (uri, t) for uri in asked if (t := self.catalog.resource(uri)) and rules.decide(uri).action == "allow"
            ]
            kept = params.notifications.model_copy(update={"resource_subscriptions": [u for u, _ in targets] or None})
            held: list[Target] = []
            try:
                for _, target in targets:
                    try:
                        await self._hold(target)
                        held.append(target)
                    except RelayUnavailable as exc:
                        log.info("resource subscription not held: %s", exc)
                return await inner(ctx, params.model_copy(update={"notifications": kept}))
            finally:
                with anyio.CancelScope(shield=True):
                    for target in held:
                        await self._release(target)

        return serve

    # ---- updates from upstream

    async def updated(self, shown: str) -> None:
        await self.bus.publish(ResourceUpdated(uri=shown))
        for key, session in list(self._sessions.get(shown, {}).items()):
            try:
                await session.send_resource_updated(shown)
            except Exception as exc:  # the agent went away: forget it
                log.info("resource update for %s not delivered: %s", shown, exc)
                self._sessions.get(shown, {}).pop(key, None)

    # ---- the upstream side, counted

    async def _hold(self, target: Target) -> None:
        key = (target.source.name, target.name)
        if self._held[key] == 0:
            await self._subscribe_upstream(target)
        self._held[key] += 1

    async def _release(self, target: Target) -> None:
        key = (target.source.name, target.name)
        if self._held[key] <= 0:
            return
        self._held[key] -= 1
        if self._held[key] == 0:
            del self._held[key]
            scope = self._listens.pop(key, None)
            if scope is not None:
                scope.cancel()
            elif (relay := getattr(target.source, "relay", None)) is not None:
                request = types.UnsubscribeRequest(params=types.UnsubscribeRequestParams(uri=target.name))
                try:
                    await relay("resources/unsubscribe", lambda c: c.session.send_request(request, types.EmptyResult))
                except Exception as exc:
                    log.info("upstream unsubscribe of %s failed: %s", target.name, exc)

    async def _subscribe_upstream(self, target: Target) -> None:
        source = target.source
        relay = getattr(source, "relay", None)
        if relay is None:
            raise RelayUnavailable(f"upstream '{source.name}' cannot relay subscriptions")
        if getattr(source, "protocol_version", None) in MODERN_PROTOCOL_VERSIONS:
            if self._tasks is None:
                raise RelayUnavailable("the gateway is not running its subscriptions")
            scope = anyio.CancelScope()
            self._listens[(source.name, target.name)] = scope
            self._tasks.start_soon(self._listen_upstream, target, scope)
            return
        request = types.SubscribeRequest(params=types.SubscribeRequestParams(uri=target.name))
        await relay("resources/subscribe", lambda c: c.session.send_request(request, types.EmptyResult))

    async def _listen_upstream(self, target: Target, scope: anyio.CancelScope) -> None:
        with scope:
            try:
                client = target.source.live_client()  # type: ignore[attr-defined]
                async with client.listen(resource_subscriptions=[target.name]) as subscription:
                    async for _event in subscription:
                        await self.updated(target.source.prefix + target.name)
            except Exception as exc:
                log.info("upstream subscription to %s ended: %s", target.name, exc)


def _connection_key(ctx: Ctx) -> str:
    request = ctx.request
    if isinstance(request, Request):
        return request.headers.get("mcp-session-id") or f"request:{id(ctx.session)}"
    return "stdio"
