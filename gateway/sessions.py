"""2025-era MCP sessions per agent, so that one agent cannot fill the session table every agent shares.

The SDK's session manager keeps a stateful session for every `initialize` (until the client
deletes it or it has been idle for 30 minutes) and, once `max_sessions` are open, answers every
new `initialize` with a 503, whoever sends it. Here each agent may hold at most
`agent_limits.max_sessions_per_agent`: its next `initialize` is refused with a 429 that names the
limit, and the manager's global bound is what all agents may hold together, so an agent within
its share is never refused because of another.

`SessionCap` refuses in front of the manager, with the clear message. The count it reads can be
passed by several `initialize`s in flight at once, so `AgentSessions._admit_session`, which the
SDK runs under its session-creation lock, enforces the same bound exactly (those few get the
SDK's 503). The SDK records each session's credential (the agent's name, as `client_id`) in
`_session_owners`; both it and `_admit_session` are private, so they are checked at construction.
2026-era requests open no session and are not counted.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from mcp.server.auth.middleware.bearer_auth import AuthorizationContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.event_store import BoundedEventStore
from gateway.mcp_server import AGENT_KEY

log = logging.getLogger(__name__)


class AgentSessions(StreamableHTTPSessionManager):
    def __init__(self, app: Any, *, per_agent: int, agents: int, **options: Any) -> None:
        # One more share than there are configured agents: dev mode's token-less agent has one too.
        super().__init__(app, max_sessions=per_agent * (max(agents, 0) + 1), **options)
        if not isinstance(getattr(self, "_session_owners", None), dict) or not callable(
            getattr(StreamableHTTPSessionManager, "_admit_session", None)
        ):
            raise RuntimeError("this mcp SDK tracks sessions differently: the per-agent session cap needs a new hook")
        self.per_agent = per_agent

    def open_sessions(self, agent: str) -> int:
        owners: dict[str, AuthorizationContext] = self._session_owners
        return sum(1 for owner in owners.values() if owner.get("client_id") == agent)

    def _admit_session(self, requestor: AuthorizationContext | None) -> Any:
        if requestor is not None and self.open_sessions(requestor["client_id"]) >= self.per_agent:
            return None
        transport = super()._admit_session(requestor)
        if transport is not None and isinstance(self.event_store, BoundedEventStore):
            # Each session replays only its own streams (gateway.event_store); the SDK shares one store.
            if not hasattr(transport, "_event_store"):
                raise RuntimeError("this mcp SDK keeps a transport's event store elsewhere: sessions need a new hook")
            transport._event_store = self.event_store.for_session(str(transport.mcp_session_id))
        return transport


class SessionCap:
    """ASGI: refuse an agent's request that would open one session more than its share."""

    def __init__(self, app: ASGIApp, sessions: AgentSessions) -> None:
        self.app = app
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        agent = scope.get(AGENT_KEY)
        if scope["type"] == "http" and isinstance(agent, str) and _opens_session(scope):
            held = self.sessions.open_sessions(agent)
            if held >= self.sessions.per_agent:
                log.warning("agent %s: new MCP session refused, %d already open", agent, held)
                await _too_many(send, agent, self.sessions.per_agent)
                return
        await self.app(scope, receive, send)


def _opens_session(scope: Scope) -> bool:
    if scope.get("method") != "POST":
        return False
    headers = dict(scope["headers"])
    if b"mcp-session-id" in headers:
        return False
    version = headers.get(b"mcp-protocol-version")
    return version is None or version.decode("latin-1") in HANDSHAKE_PROTOCOL_VERSIONS


async def _too_many(send: Send, agent: str, limit: int) -> None:
    message = (
        f"agent {agent!r} already has {limit} open MCP sessions, the most one agent may have "
        "(agent_limits.max_sessions_per_agent): reuse an open session, or end unused ones (HTTP DELETE "
        "with their Mcp-Session-Id); idle sessions close after 30 minutes"
    )
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32000, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"retry-after", b"60"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
