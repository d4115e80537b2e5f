"""The running gateway: `Gateway` owns every component; `create_app` wraps it in a Starlette app."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import anyio
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    PromptsListChanged,
    ResourcesListChanged,
    ToolsListChanged,
)
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from approvals.approvers import ApproverDirectory
from approvals.audit import Event
from approvals.audit_index import AuditTextIndexer
from approvals.db import Database
from approvals.errors import ApprovalError
from approvals.feed import ChangeFeed
from approvals.service import ApprovalService, utcnow
from approvals.timeouts import TimeoutScheduler
from approvals.transitions import Clock
from gateway import api, api_grants, api_shadow, slack, webhooks
from gateway.agent_auth import AgentAuth
from gateway.audit_keeper import open_chain, publish_head, publish_heads
from gateway.calls import CallHandler
from gateway.channels import Channel, ChannelContext
from gateway.config import Settings
from gateway.context import ApprovalContext, GatewayReads
from gateway.edited import EditedApprovals
from gateway.event_store import RETRY_MS, BoundedEventStore
from gateway.health import health
from gateway.held import HeldCalls
from gateway.identity import AgentDirectory, AgentIdentity
from gateway.jwt_auth import jwt_options, metadata_routes
from gateway.lean_calls import LeanCalls
from gateway.lean_held import LeanHeld
from gateway.lean_requests import SessionConnections
from gateway.mcp_server import build_server
from gateway.memory_trim import MemoryTrim
from gateway.metrics import GatewayMetrics, metrics_endpoint
from gateway.policy_shadow import ShadowStore
from gateway.policy_store import PolicyStore
from gateway.policy_withdrawal import PolicyWithdrawals
from gateway.policy_world import announce_unknown_approvers
from gateway.ratelimit import RateLimiter
from gateway.readiness import Readiness
from gateway.relay import build_relay
from gateway.sessions import AgentSessions, SessionCap
from gateway.shadow import ShadowRun
from gateway.shared_quotas import SharedQuotas
from gateway.upstreams import Upstreams, UpstreamSet
from gateway.web import WebChannel

log = logging.getLogger(__name__)

# How long a starting process waits for its upstreams' catalogs before judging open requests without them.
_CATALOG_WAIT_SECONDS = 30.0


class Gateway:
    """Every component of a running gateway, assembled and wired in one place.

    Collaborators that tests replace (the clock, the database, the upstreams) can be passed in;
    everything else is built from `settings`. Who hears the change feed is decided here, not in
    the components' constructors.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        stdio_agent: str | None = None,
        clock: Clock | None = None,
        database: Database | None = None,
        upstreams: Upstreams | None = None,
        accept_audit_rollback: bool = False,
    ) -> None:
        self.settings = settings
        self.accept_audit_rollback = accept_audit_rollback
        self.db = database or Database(settings.database_url)
        self.approvers = ApproverDirectory(a.to_approver() for a in settings.approvers)
        self.feed = ChangeFeed(self.db, poll_interval=settings.server.poll_interval)
        self.audit_index = AuditTextIndexer(self.db)
        self.service = ApprovalService(self.db, self.approvers, clock=clock or utcnow, feed=self.feed)
        # Leases are checked twice per lease, so a dead process's execution ends within about 1.5 leases.
        self.timeouts = TimeoutScheduler(self.service, lease_check_seconds=settings.server.execution_lease / 2)
        self.policies = PolicyStore(settings.policy_path)
        self.shadow = ShadowRun(ShadowStore(settings.shadow_path), self.service.record)
        self.upstreams: Upstreams = upstreams or UpstreamSet(settings.upstreams)
        # On PostgreSQL every replica counts the same quota; a single gateway on SQLite counts in memory.
        self.limiter = RateLimiter(store=None if self.db.is_sqlite else SharedQuotas(self.db))
        self.readiness = Readiness(self.db, self.upstreams, settings.server.startup_timeout)
        self.agents = AgentDirectory(AgentIdentity(a.name, a.groups) for a in settings.agents)
        self.withdrawals = PolicyWithdrawals(self.service, self.policies, self.upstreams, self.agents)
        self.held = HeldCalls(
            self.service,
            self.upstreams,
            limiter=self.limiter,
            progress_interval=settings.server.progress_interval,
            inbox_url=f"{settings.server.base_url}/inbox",
            agent_max_hold={a.name: a.max_hold for a in settings.agents if a.max_hold is not None},
            default_max_hold=settings.server.default_max_hold,
            vet=self.withdrawals.withdraw_if_refused,
            refuses=lambda view: self.withdrawals.refusal(view) is not None,
            execution_lease=settings.server.execution_lease,
        )
        self.calls = CallHandler(
            service=self.service,
            policies=self.policies,
            upstreams=self.upstreams,
            limiter=self.limiter,
            held=self.held,
            agent_limits=settings.agent_limits,
            audit_unavailable=settings.server.audit_unavailable,
            withdrawals=self.withdrawals,
            context=ApprovalContext(GatewayReads(self.service, self.policies, self.upstreams)),
            shadow=self.shadow,
            repeat_window=settings.server.repeat_window,
            agents=self.agents,
        )
        self.events = InMemorySubscriptionBus()
        self.relay = build_relay(self.upstreams, self.policies, self.service, self.events)
        self.mcp = build_server(self.calls, self.events, stdio_agent=stdio_agent, relay=self.relay)
        self.connections = SessionConnections()
        self.memory = MemoryTrim(enabled=settings.server.trim_memory)
        self.mcp.middleware.append(self.connections.middleware)
        self.event_store = BoundedEventStore()
        self.session_manager = AgentSessions(
            self.mcp,
            per_agent=settings.agent_limits.max_sessions_per_agent,
            agents=len(settings.agents),
            json_response=False,
            stateless=False,
            security_settings=self._transport_security(),
            event_store=self.event_store,
            retry_interval=RETRY_MS,
        )
        self.edited = EditedApprovals(
            self.service,
            self.policies,
            self.upstreams,
            max_bytes=settings.agent_limits.max_argument_bytes,
            agents=self.agents,
        )
        self.channels = build_channels(ChannelContext(settings, self.service, self.approvers, self.edited))
        self.metrics = GatewayMetrics(
            self.db, tools=self._tool_names, upstreams=self.upstreams.status, batches=self.service.batches.sizes
        )

        # The wiring: who hears what.
        self.feed.subscribe(self.timeouts)
        self.feed.subscribe(self.held)
        for channel in self.channels:
            for listener in channel.listeners():
                self.feed.subscribe(listener)
        self.policies.listeners.append(self._policy_reloaded)
        self.policies.on_sighup.append(self.shadow.store.reload)
        self.shadow.store.listeners.append(self._shadow_changed)
        self.upstreams.listeners.append(self._tools_changed)

    def _transport_security(self) -> TransportSecuritySettings:
        server = self.settings.server
        hosts = {"127.0.0.1:*", "localhost:*", "[::1]:*", f"{server.host}:*", *server.allowed_hosts}
        origins = {"http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"}
        if server.public_url:
            parts = urlsplit(server.public_url)
            if parts.hostname:
                hosts.update({parts.netloc, f"{parts.hostname}:*"})
                origins.add(f"{parts.scheme}://{parts.netloc}")
        return TransportSecuritySettings(
            enable_dns_rebinding_protection=True, allowed_hosts=sorted(hosts), allowed_origins=sorted(origins)
        )

    async def _policy_reloaded(self, outcome: str, message: str) -> None:
        identity = {"policy_version": self.policies.version}
        await self.service.record(Event(kind=outcome, outcome=outcome.split(".")[1], message=message, detail=identity))
        if outcome == "policy.loaded":
            await self._name_unknown_approvers("reloaded")
            await self._tools_changed()
            await self.withdrawals.sweep("policy reloaded")

    async def _shadow_changed(self, kind: str, message: str) -> None:
        identity = {"policy_version": self.policies.version, "shadow_version": self.shadow.store.version or None}
        await self.service.record(Event(kind=kind, outcome=kind.split(".")[1], message=message, detail=identity))

    async def _name_unknown_approvers(self, why: str) -> None:
        try:
            await announce_unknown_approvers(self.policies.current, self.settings, self.service.record, why)
        except ApprovalError as exc:
            log.error("could not audit the policy's unknown approvers: %s", exc)

    async def _withdraw_on_start(self) -> None:
        """Apply the policy this process starts with to the open requests, once the catalog is known.

        Another replica (or this one, before a restart) may have parked them under an older policy.
        """
        await self.upstreams.wait_connected(_CATALOG_WAIT_SECONDS)
        try:
            await self.withdrawals.sweep("started")
        except ApprovalError as exc:
            log.error("could not apply the policy to the open requests at start: %s", exc)

    def _tool_names(self) -> list[str]:
        return [tool.name for tool in self.calls.visible_tools()]

    async def _tools_changed(self) -> None:
        await self.events.publish(ToolsListChanged())
        await self.events.publish(PromptsListChanged())
        await self.events.publish(ResourcesListChanged())

    @asynccontextmanager
    async def running(self, *, serve_http: bool = True) -> AsyncIterator[Gateway]:
        if self.settings.server.dev_mode:
            log.warning("DEV MODE: /mcp accepts calls without an agent token; every caller is the agent 'dev'")
        await self.db.create_schema()
        # Before anything is written: the chain's key, and a database that holds the newest head seen.
        await open_chain(self.settings, self.db, accept_rollback=self.accept_audit_rollback, clock=self.service.clock)
        await self.feed.start()
        await self.metrics.start()
        await self._name_unknown_approvers("at start")
        for channel in self.channels:
            if isinstance(channel, WebChannel):
                await channel.start()
        expired, armed = await self.timeouts.start()
        log.info("approval queue ready: %d pending request(s) re-armed, %d overdue expired", armed, expired)
        if self.shadow.store.configured:
            # Where the shadow stands from the start, in the log and the audit (a file that fails never stops us).
            said = self.shadow.store.status()
            (log.info if said.kind == "shadow.loaded" else log.error)("%s", said.message)
            try:
                await self._shadow_changed(said.kind, f"{said.message} (at start)")
            except ApprovalError as exc:
                log.error("could not audit where the shadow policy stands: %s", exc)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.upstreams.run)
                tg.start_soon(self.readiness.settle)
                if self.settings.policy.watch:
                    tg.start_soon(self.policies.watch)
                    tg.start_soon(self.shadow.store.watch)
                tg.start_soon(self.shadow.run)
                tg.start_soon(self._withdraw_on_start)
                tg.start_soon(self.timeouts.run)
                tg.start_soon(self.held.run)
                tg.start_soon(self.memory.run)
                tg.start_soon(self.relay.subscriptions.run)
                tg.start_soon(self.relay.traffic.rounds.run)
                tg.start_soon(self.feed.run)
                tg.start_soon(self.audit_index.run)
                tg.start_soon(publish_heads, self.settings, self.db)
                for channel in self.channels:
                    tg.start_soon(channel.run)
                if serve_http:
                    async with self.session_manager.run():
                        yield self
                else:
                    yield self
                tg.cancel_scope.cancel()
        finally:
            self.timeouts.shutdown()
            with anyio.CancelScope(shield=True):
                try:
                    await publish_head(self.settings, self.db, "at stop")
                except Exception as exc:
                    log.warning("could not read the audit head to publish it: %s", exc)
                await self.db.dispose()

    def agent_tokens(self) -> dict[str, str]:
        return {agent.digest: agent.name for agent in self.settings.agents}

    def _lean(self, sdk: ASGIApp) -> LeanCalls:
        # The plain allowed call is answered without the SDK's transport (gateway.lean_calls); tests reach it here.
        self.lean = LeanCalls(
            sdk,
            server=self.mcp,
            sessions=self.session_manager,
            handler=self.calls,
            connections=self.connections,
            security=self._transport_security(),
        )
        return self.lean

    def _lean_held(self, sdk: ASGIApp) -> LeanHeld:
        # A 2025-era call that may be held waits on the gateway's own stream (gateway.lean_held); tests reach it here.
        self.lean_held = LeanHeld(
            sdk,
            server=self.mcp,
            sessions=self.session_manager,
            handler=self.calls,
            connections=self.connections,
            security=self._transport_security(),
            memory=self.memory,
        )
        return self.lean_held

    def asgi(self, *, lifespan: bool = True) -> Starlette:
        mcp_endpoint = self.readiness.gate(
            AgentAuth(
                self._lean(
                    self._lean_held(SessionCap(StreamableHTTPASGIApp(self.session_manager), self.session_manager))
                ),
                self.agent_tokens(),
                dev_mode=self.settings.server.dev_mode,
                keepalive_interval=self.settings.server.keepalive_interval,
                directory=self.agents,
                event_store=self.event_store,
                **jwt_options(self.settings),
            )
        )

        @asynccontextmanager
        async def run(app: Starlette) -> AsyncIterator[None]:
            async with self.running():
                yield

        app = Starlette(
            routes=[
                Route("/mcp", mcp_endpoint, methods=["GET", "POST", "DELETE"]),
                Route("/healthz", self._health, methods=["GET"]),
                Route("/readyz", self.readiness.endpoint, methods=["GET"]),
                *metadata_routes(self.settings),
                Route("/metrics", metrics_endpoint(self.metrics, self.settings.server.metrics_token), methods=["GET"]),
                *api.ROUTES,
                *api_grants.ROUTES,
                *api_shadow.ROUTES,
                *(route for channel in self.channels for route in channel.routes()),
            ],
            middleware=[m for channel in self.channels for m in channel.middleware()],
            exception_handlers={**api.EXCEPTION_HANDLERS, **api_grants.EXCEPTION_HANDLERS},
            lifespan=run if lifespan else None,
        )
        app.state.gateway = self
        app.state.service = self.service
        app.state.edited = self.edited
        return app

    async def _health(self, request: Request) -> JSONResponse:
        return await health(request, probe=self.db.probe_write, upstreams=self.upstreams.status())


def build_channels(context: ChannelContext) -> list[Channel]:
    """The channels the settings turn on: the web inbox, Slack and one per webhook."""
    channels: list[Channel] = []
    if context.settings.web.enabled:
        channels.append(WebChannel(context))
    slack_channel = slack.build(context)
    if slack_channel is not None:
        channels.append(slack_channel)
    channels.extend(webhooks.build(context))
    return channels


def create_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    database: Database | None = None,
    upstreams: Upstreams | None = None,
) -> Starlette:
    """The gateway as an ASGI app; pass a clock, database or upstreams to replace the real ones (tests)."""
    return Gateway(settings, clock=clock, database=database, upstreams=upstreams).asgi()
