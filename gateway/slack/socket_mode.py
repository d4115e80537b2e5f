"""Socket Mode: Slack delivers interactions over a websocket the gateway dials, so no public URL is needed.

slack-sdk's aiohttp SocketModeClient opens the connection with `apps.connections.open`, answers
pings, and reconnects on a `disconnect` message, a closed socket or a stale ping. Payloads are the
same as over HTTP (without a signature: the connection itself is authenticated by the app token).
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse

from gateway.slack.client import SlackApi
from gateway.slack.interactions import Acknowledge
from gateway.slack.payloads import MalformedPayload

log = logging.getLogger(__name__)


class SocketModeRunner:
    def __init__(self, app_token: str, api: SlackApi, acknowledge: Acknowledge, *, ping_interval: float = 5.0) -> None:
        self.app_token = app_token
        self.api = api
        self.acknowledge = acknowledge
        self.ping_interval = ping_interval
        self.client: SocketModeClient | None = None

    async def run(self) -> None:
        """Stay connected until cancelled."""
        # The client starts asyncio tasks as it is built, so it must be built inside the running loop.
        client = SocketModeClient(
            app_token=self.app_token, web_client=self.api.client, ping_interval=self.ping_interval
        )
        client.socket_mode_request_listeners.append(self._on_request)
        self.client = client
        try:
            await client.connect()  # type: ignore[no-untyped-call]
            log.info("Slack Socket Mode connected")
            await anyio.sleep_forever()
        finally:
            self.client = None
            with anyio.CancelScope(shield=True):
                await client.close()  # type: ignore[no-untyped-call]

    async def _on_request(self, client: Any, request: SocketModeRequest) -> None:
        payload: dict[str, Any] | None = None
        if request.type == "interactive":
            try:
                payload = await self.acknowledge(request.payload)
            except MalformedPayload as exc:
                log.warning("ignored a Socket Mode interaction of the wrong shape: %s", exc)
            except Exception:
                log.exception("handling a Socket Mode interaction failed")
        # Acknowledge every envelope, even ones we do not act on, or Slack delivers them again.
        await client.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id, payload=payload))
