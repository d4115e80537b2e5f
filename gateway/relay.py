"""Assembling the relay of everything beside tools: the catalog over the upstreams, subscriptions, traffic, handlers."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from mcp.server.subscriptions import SubscriptionBus

from approvals.service import ApprovalService
from gateway.policy_store import PolicyStore
from gateway.relay_catalog import Catalog, Source, UpstreamHooks
from gateway.relay_server import Relay
from gateway.relay_subscriptions import Subscriptions
from gateway.relay_traffic import Traffic
from gateway.upstreams import Upstream, Upstreams, UpstreamSet


class RelayHooks(UpstreamHooks):
    """One upstream's side of the relay: its client's callbacks, its resource updates, the calls it serves."""

    def __init__(self, upstream: Upstream, subscriptions: Subscriptions, traffic: Traffic) -> None:
        self.upstream = upstream
        self.subscriptions = subscriptions
        self.traffic = traffic

    def client_options(self) -> dict[str, Any]:
        return self.traffic.client_options(self.upstream.name)

    async def resource_updated(self, uri: str) -> None:
        await self.subscriptions.updated(self.upstream.prefix + uri)

    def serving(self) -> AbstractAsyncContextManager[None]:
        return self.traffic.serving(self.upstream.name)


def build_relay(upstreams: Upstreams, policies: PolicyStore, service: ApprovalService, bus: SubscriptionBus) -> Relay:
    """The relay over the configured upstreams; an upstream set of another kind (tests' fakes) offers tools only."""
    members: Sequence[Source] = list(upstreams.upstreams) if isinstance(upstreams, UpstreamSet) else []
    catalog = Catalog(lambda: members)
    subscriptions = Subscriptions(catalog, policies, bus)
    traffic = Traffic(service)
    if isinstance(upstreams, UpstreamSet):
        for upstream in upstreams.upstreams:
            upstream.hooks = RelayHooks(upstream, subscriptions, traffic)
    return Relay(catalog, policies, service, subscriptions, traffic)
