"""`POST /slack/interactions`: Slack's signed HTTP interactivity requests (button clicks, modal submissions).

The signature is checked on the raw bytes before anything is parsed; a bad or stale one (outside
Slack's 5-minute window) gets 401 and decides nothing; a signed payload of the wrong shape gets 400
and decides nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from slack_sdk.signature import SignatureVerifier
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway import bounded_json
from gateway.slack.payloads import MalformedPayload

log = logging.getLogger(__name__)

PATH = "/slack/interactions"
MAX_BODY = 1024 * 1024

Acknowledge = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]


class InvalidRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def verify(verifier: SignatureVerifier, body: bytes, timestamp: str | None, signature: str | None) -> bool:
    try:
        return bool(verifier.is_valid(body=body, timestamp=timestamp, signature=signature))
    except ValueError:
        # A timestamp that is not a number (or a body that is not UTF-8) is no valid request either.
        return False


def parse_payload(body: bytes) -> dict[str, Any]:
    try:
        fields = parse_qs(body.decode("utf-8"), strict_parsing=True)
        payload = bounded_json.loads(fields["payload"][0], max_bytes=MAX_BODY)
    except (UnicodeDecodeError, ValueError, KeyError) as exc:
        raise InvalidRequest(400, f"expected a form field `payload` holding JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise InvalidRequest(400, "the payload is not a JSON object")
    return payload


class InteractionEndpoint:
    def __init__(self, signing_secret: str, acknowledge: Acknowledge) -> None:
        self.verifier = SignatureVerifier(signing_secret)
        self.acknowledge = acknowledge

    def route(self) -> Route:
        return Route(PATH, self.handle, methods=["POST"])

    async def handle(self, request: Request) -> Response:
        try:
            body = await _read(request)
            if not verify(
                self.verifier,
                body,
                request.headers.get("x-slack-request-timestamp"),
                request.headers.get("x-slack-signature"),
            ):
                log.warning("refused a Slack interaction with a bad or stale signature from %s", _peer(request))
                raise InvalidRequest(401, "invalid or stale Slack signature")
            payload = parse_payload(body)
            try:
                answer = await self.acknowledge(payload)
            except MalformedPayload as exc:
                # Signed, so Slack (or someone with the secret) sent it; still nothing in it is acted on.
                log.warning("refused a signed Slack interaction of the wrong shape: %s", exc)
                raise InvalidRequest(400, f"malformed interaction payload: {exc}") from None
        except InvalidRequest as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        return JSONResponse(answer) if answer is not None else Response(status_code=200)


async def _read(request: Request) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise InvalidRequest(413, "the request body is too large for a Slack interaction")
        chunks.append(chunk)
    return b"".join(chunks)


def _peer(request: Request) -> str:
    return request.client.host if request.client else "unknown"
