"""A 2025-era held call's own progress notices, written as the SDK would write them, straight onto its stream.

`StreamProgress` builds a notice's JSON-RPC notification (the same keys, order and escaping as the SDK's
model dump) and hands it to the call's `gateway.post_stream.PostStream`, which frames it as an event of
the request's stream and keeps it for replay.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring
from typing import Any

from gateway.caller import Progress
from gateway.post_stream import PostStream


class StreamProgress:
    """A 2025-era call's progress: the gateway's own notices written straight onto its live stream.

    The SDK's way (`sdk`) takes a notice through the session, the transport's message router, the
    event store and the request's SSE writer: several tasks and two serialisations per notice, which
    is most of what ten thousand waiting calls cost. Written here, a notice is the same JSON in the
    same frame with the same kind of event id, kept in the same store, on the same stream. Anything
    else (relayed upstream progress, and every notice once a line has gone the SDK's way) takes the
    SDK's way, so the order clients see stays the order things were sent (`gateway.caller.ProgressLine`).
    """

    def __init__(self, stream: PostStream, request_id: str, token: str | int, sdk: Progress) -> None:
        self._stream = stream
        self._request_id = request_id
        self._sdk = sdk
        # The JSON the SDK's model dump writes for this notification (same keys, order and escaping), whose
        # start is the same for every notice of the call.
        self._head = f'{{"jsonrpc":"2.0","method":"notifications/progress","params":{{"progressToken":{_json(token)}'

    async def __call__(self, value: float, total: float | None, message: str | None) -> None:
        await self._sdk(value, total, message)

    async def notice_direct(self, value: float, message: str) -> bool:
        """Send a notice on the stream itself; False if it cannot go that way (nothing was sent)."""
        return await self._stream.write_message(self._data(value, message), self._request_id)

    def notice_now(self, value: float, message: str) -> bool:
        """`notice_direct` without waiting (see `PostStream.write_now`); False if it cannot go that way now."""
        return self._stream.write_now(self._data(value, message), self._request_id)

    def _data(self, value: float, message: str) -> str:
        return f'{self._head},"progress":{_number(value)},"message":{_string(message)}}}}}'


def progress_token(meta: Any) -> str | int | None:
    """A request's progress token from its parsed `_meta`, as the SDK reads it (a bool is no token)."""
    match meta:
        case {"progress_token": str() | int() as token} if not isinstance(token, bool):
            return token
        case _:
            return None


_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
# What `_json` does for a string, without its way through the encoder object (a notice's text, thousands a second).
_string = encode_basestring


def _number(value: float) -> str:
    """`_json(value)` for a progress value; a finite float is its `repr`, as the encoder writes it."""
    if type(value) is float and value - value == 0.0:
        return float.__repr__(value)
    return _json(value)
