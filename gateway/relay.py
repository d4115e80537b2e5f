"""Assembling the relay of everything beside tools: the catalog over the upstreams, subscriptions, handlers."""

from __future__ import annotations

from collections.abc import Sequence

from mcp.server.subscriptions import SubscriptionBus

from approvals.service import ApprovalService
from gateway.policy_store import PolicyStore
from gateway.relay_catalog import Catalog, Source
from gateway.relay_server import Relay
from gateway.relay_subscriptions import Subscriptions
from gateway.upstreams import Upstreams, UpstreamSet


def build_relay(upstreams: Upstreams, policies: PolicyStore, service: ApprovalService, bus: SubscriptionBus) -> Relay:
    """The relay over the configured upstreams; an upstream set of another kind (tests' fakes) offers tools only."""
    members: Sequence[Source] = list(upstreams.upstreams) if isinstance(upstreams, UpstreamSet) else []
    catalog = Catalog(lambda: members)
    subscriptions = Subscriptions(catalog, policies, bus)
    if isinstance(upstreams, UpstreamSet):
        for upstream in upstreams.upstreams:
            upstream.hooks = subscriptions.hooks(upstream)
    return Relay(catalog, policies, service, subscriptions)
