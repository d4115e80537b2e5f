"""ASGI wrapper for /mcp: authenticate the agent by bearer token, and notice when its POST goes away.

A 2025-era client whose TCP connection drops without a cancel does not cancel the handler, so
for those POSTs we keep listening for `http.disconnect` after the body and flag it in the scope;
the held call reads the flag and withdraws the request rather than forward it for nobody.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Mapping

import anyio
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from approvals.approvers import token_digest
from gateway.bearer import BearerProblem, bearer_token
from gateway.config import DEV_AGENT_NAME
from gateway.mcp_server import AGENT_KEY, DISCONNECTED_KEY

log = logging.getLogger(__name__)

DEV_AGENT = DEV_AGENT_NAME


class AgentAuth:
    def __init__(self, app: ASGIApp, agents: Mapping[str, str], *, dev_mode: bool = False) -> None:
        """`agents` maps token SHA-256 digests to agent names."""
        self.app = app
        self.agents = dict(agents)
        self.dev_mode = dev_mode

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
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            token = bearer_token(scope["headers"])
        except BearerProblem as problem:
            await _unauthorized(send, f"{problem} (an agent's token)")
            return
        agent = self.identify(token)
        if agent is None:
            await _unauthorized(
                send,
                "missing or unknown bearer token"
                if token is None
                else "the bearer token is not valid for any configured agent",
            )
            return
        scope[AGENT_KEY] = agent
        # Sessions are bound to the credential that opened them, so one agent cannot use another's session.
        scope["user"] = AuthenticatedUser(AccessToken(token="", client_id=agent, scopes=[]))
        modern = headers.get("mcp-protocol-version") in MODERN_PROTOCOL_VERSIONS
        if scope.get("method") != "POST" or modern:
            # The modern transport watches for disconnects itself and cancels the handler.
            await self.app(scope, receive, send)
            return
        gone = anyio.Event()
        scope[DISCONNECTED_KEY] = gone
        await self._serve_watching(scope, receive, send, gone)

    async def _serve_watching(self, scope: Scope, receive: Receive, send: Send, gone: anyio.Event) -> None:
        body_done = anyio.Event()

        async def app_receive() -> Message:
            if body_done.is_set():
                await gone.wait()
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
                body_done.set()
            elif message["type"] == "http.request" and not message.get("more_body", False):
                body_done.set()
            return message

        async def watch() -> None:
            await body_done.wait()
            while not gone.is_set():
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            try:
                await self.app(scope, app_receive, send)
            finally:
                tg.cancel_scope.cancel()


async def _unauthorized(send: Send, why: str) -> None:
    body = json.dumps({"error": "unauthorized", "detail": why}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"www-authenticate", b'Bearer realm="countersign", error="invalid_token"'),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
