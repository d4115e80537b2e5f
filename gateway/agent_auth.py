"""ASGI wrapper for /mcp: authenticate the agent by bearer token; a 2025-era POST's response goes
through `gateway.post_stream` (the client leaving, keep-alives, plain JSON for a lone result).

A 2025-era client whose TCP connection drops without a cancel does not cancel the handler, so
for those POSTs `http.disconnect` is flagged in the scope (`DISCONNECTED_KEY`); the held call
reads the flag and withdraws the request rather than forward it for nobody.

Keep-alive: a client's read timeout (httpx's default is 5 s) fires when no byte arrives for that
long, and a held call without a progress token sends nothing while it waits. The 2026-era
transport sends no headers until its handler emits something or its own ping interval passes,
then pings at that interval; the SDK's only knob for that is the module-level
`_SSE_PING_INTERVAL`, which `use_modern_ping_interval` sets.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Mapping

from mcp.server import _streamable_http_modern, streamable_http
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from sse_starlette import EventSourceResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from approvals.approvers import token_digest
from gateway.bearer import BearerProblem, bearer_token
from gateway.caller import Gone
from gateway.config import DEV_AGENT_NAME
from gateway.event_store import BoundedEventStore
from gateway.identity import AgentDirectory
from gateway.jwt_auth import JwtAgents, JwtRejected, looks_like_jwt
from gateway.mcp_server import AGENT_GROUPS_KEY, AGENT_KEY, DISCONNECTED_KEY, STREAM_KEY
from gateway.post_stream import PostStream

log = logging.getLogger(__name__)

DEV_AGENT = DEV_AGENT_NAME


class _PostResponse(EventSourceResponse):
    """The SDK's SSE response, without its own ping task on a POST whose keep-alives `PostStream` sends.

    A held call's response is open for as long as it waits; sse_starlette's ping would be one more
    task (and timer) per held call, saying what the stream's keep-alive comment already says.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = scope.get(STREAM_KEY)
        if isinstance(stream, PostStream) and stream.keeps_alive:
            self.ping_interval = 0
        await super().__call__(scope, receive, send)


def quiet_post_pings() -> None:
    """Have the 2025-era transport build `_PostResponse`s (it names sse_starlette's class at module level)."""
    built = getattr(streamable_http, "EventSourceResponse", None)
    if built is _PostResponse:
        return
    if built is not EventSourceResponse:
        raise RuntimeError("this mcp SDK does not build sse_starlette responses: the POST keep-alive needs a new hook")
    setattr(streamable_http, "EventSourceResponse", _PostResponse)  # noqa: B010 (the SDK's name, not ours)


def use_modern_ping_interval(seconds: float) -> None:
    """How long a 2026-era response may stay silent: before its SSE headers, and between pings after them.

    The 2.3 SDK reads this module global on every request and offers no other setting; it is
    process-wide. The SDK's default is 15 s, over httpx's default 5 s read timeout.
    """
    if not hasattr(_streamable_http_modern, "_SSE_PING_INTERVAL"):
        raise RuntimeError("this mcp SDK has no _SSE_PING_INTERVAL: 2026-era keep-alive needs a new hook")
    _streamable_http_modern._SSE_PING_INTERVAL = seconds


class AgentAuth:
    def __init__(
        self,
        app: ASGIApp,
        agents: Mapping[str, str],
        *,
        dev_mode: bool = False,
        keepalive_interval: float | None = None,
        jwt_agents: JwtAgents | None = None,
        resource_metadata: str | None = None,
        directory: AgentDirectory | None = None,
        event_store: BoundedEventStore | None = None,
    ) -> None:
        """`agents` maps token SHA-256 digests to agent names; `keepalive_interval` None sends no keep-alives.

        `jwt_agents` also accepts JWTs from an identity provider; `resource_metadata` is the URL of the
        protected-resource metadata document a 401 points clients to. `directory` gives configured agents
        their groups, and learns each JWT agent's from its token.
        """
        self.app = app
        self.directory = directory or AgentDirectory()
        self.jwt_agents = jwt_agents
        self.resource_metadata = resource_metadata
        self.agents = dict(agents)
        self.dev_mode = dev_mode
        self.keepalive_interval = keepalive_interval
        self.event_store = event_store
        if keepalive_interval is not None:
            use_modern_ping_interval(keepalive_interval)
            quiet_post_pings()

    def identify(self, token: str | None) -> str | None:
        if self.dev_mode and not self.agents:
            return DEV_AGENT
        if token is None:
            return DEV_AGENT if self.dev_mode else None
        digest = token_digest(token)
        found = None
        for known, name in self.agents.items():
            if hmac.compare_digest(known, digest):
                found = name
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            token = bearer_token(scope["headers"])
        except BearerProblem as problem:
            await _unauthorized(send, f"{problem} (an agent's token)", self.resource_metadata, presented=True)
            return
        agent = self.identify(token)
        identity = None if agent is None else self.directory.identity(agent)
        if agent is None and token is not None and self.jwt_agents is not None and looks_like_jwt(token):
            try:
                identity = await self.jwt_agents.identify(token)
            except JwtRejected as rejected:
                await _unauthorized(send, str(rejected), self.resource_metadata, presented=True)
                return
            self.directory.note(identity)
            agent = identity.name
        if agent is None or identity is None:
            await _unauthorized(
                send,
                "missing or unknown bearer token"
                if token is None
                else "the bearer token is not valid for any configured agent",
                self.resource_metadata,
                presented=token is not None,
            )
            return
        scope[AGENT_KEY] = agent
        scope[AGENT_GROUPS_KEY] = identity.groups
        # Sessions are bound to the credential that opened them, so one agent cannot use another's session.
        scope["user"] = AuthenticatedUser(AccessToken(token="", client_id=agent, scopes=[]))
        modern = _header(scope, b"mcp-protocol-version") in MODERN_PROTOCOL_VERSIONS
        if scope.get("method") != "POST" or modern:
            # The modern transport watches for disconnects itself and cancels the handler.
            await self.app(scope, receive, send)
            return
        gone = Gone()
        scope[DISCONNECTED_KEY] = gone
        # (Two headers read, not all of them decoded: this frame stays as long as a held call waits.)
        await self._serve_watching(scope, receive, send, gone, _header(scope, b"mcp-session-id"))

    async def _serve_watching(
        self, scope: Scope, receive: Receive, send: Send, gone: Gone, session: str | None = None
    ) -> None:
        # A session's resumable events, which notices written straight onto its response join.
        events = None if self.event_store is None or not session else self.event_store.for_session(session)
        stream = PostStream(receive, send, gone, self.keepalive_interval, events)
        scope[STREAM_KEY] = stream
        try:
            await self.app(scope, stream.receive, stream.send)
        finally:
            stream.close()


def _header(scope: Scope, name: bytes) -> str | None:
    """One request header's value (the last, if repeated; the server gives names in lower case), decoded."""
    found = None
    for key, value in scope["headers"]:
        if key == name:
            found = value
    return None if found is None else str(found.decode("latin-1"))


async def _unauthorized(send: Send, why: str, metadata: str | None = None, *, presented: bool = True) -> None:
    body = json.dumps({"error": "unauthorized", "detail": why}).encode()
    if metadata is None:
        challenge = 'Bearer realm="countersign", error="invalid_token"'
    else:
        # Where clients discover the authorization server (RFC 9728); an error only when a token was sent (RFC 6750).
        challenge = f'Bearer realm="countersign", resource_metadata="{metadata}"'
        if presented:
            challenge += ', error="invalid_token"'

    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"www-authenticate", challenge.encode("latin-1")),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
