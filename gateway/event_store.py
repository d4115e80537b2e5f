"""Resumable SSE streams: the events of recent streams, kept in memory within fixed bounds.

With an event store, the SDK's streamable HTTP transport gives every SSE event an id, opens each
stream with a priming event (an id, empty data and the `retry` hint), and answers a client that
reconnects with `Last-Event-ID` with what it missed on that stream, then carries on with the
stream where it is still running (a held call's stream, say).

Kept per process and bounded by event count and bytes: the oldest events go first, so a client
that comes back after a long absence may find its stream gone, and then gets nothing replayed
(as from a gateway without resumability); on a session's standalone GET stream, losing its place
is enough for that. A held call's stream gets a "still waiting" notice
every few seconds for as long as it waits, so each request's stream also keeps only its latest
`MAX_PER_STREAM` events: a client that reconnects after missing more than that gets the latest
ones replayed (the result among them, once there is one) and misses the older notices, which are
worth nothing to it by then. An event id names its stream and its place on it, so a client whose
last event has been dropped from its stream still finds the stream, with no record kept per
dropped event. A session's standalone GET stream (its notifications, each of which may
matter) is bounded only by the store's totals. An event is kept as the JSON the wire carried,
not as a message object, and is parsed again only when it is replayed.

The transport names a stream by its request's id, which every session numbers from 1, so each
session sees the store through its own view (`for_session`), whose streams and event ids no
other session can reach.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict, deque
from typing import Final

from mcp.server.streamable_http import GET_STREAM_KEY, EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp_types import JSONRPCMessage, jsonrpc_message_adapter

MAX_EVENTS: Final = 50_000
MAX_BYTES: Final = 32 * 1024 * 1024
MAX_PER_STREAM: Final = 4  # a stream's latest events; a held call's stream grows by a notice every few seconds
RETRY_MS: Final = 2_000  # the `retry` hint: how soon a client whose stream ended should reconnect
_OVERHEAD = 64  # bytes counted for an event beside its message


class _Stored:
    """One kept event (a few per held call, by the ten thousand; one more every few seconds each)."""

    __slots__ = ("message", "seq", "size", "stream")

    def __init__(self, stream: StreamId, seq: int, message: str | None, size: int) -> None:
        self.stream = stream
        self.seq = seq
        self.message = message  # the message as the wire carries it (None: a priming event)
        self.size = size


class BoundedEventStore(EventStore):
    def __init__(
        self, *, max_events: int = MAX_EVENTS, max_bytes: int = MAX_BYTES, per_stream: int = MAX_PER_STREAM
    ) -> None:
        if max_events < 1 or max_bytes < 1 or per_stream < 1:
            raise ValueError("an event store needs room for at least one event")
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.per_stream = per_stream
        self._events: OrderedDict[EventId, _Stored] = OrderedDict()
        self._streams: dict[StreamId, deque[EventId]] = {}
        # Each stream's random name in its events' ids (`<name>.<seq>`), and back.
        self._names: dict[StreamId, str] = {}
        self._named: dict[str, StreamId] = {}
        # A standalone GET stream's newest event lost to the totals: a client that last saw one before it has
        # lost its place there (every notification on it may matter), so it gets nothing replayed.
        self._lost: dict[StreamId, int] = {}
        self._bytes = 0
        self._seq = 0

    @property
    def size(self) -> tuple[int, int]:
        """How many events are kept, and their bytes as counted."""
        return len(self._events), self._bytes

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        # Serialised as the transport writes it, so a replayed event reads the same as the original.
        data = None if message is None else message.model_dump_json(by_alias=True, exclude_unset=True)
        return self.store_wire(stream_id, data)

    def store_wire(self, stream_id: StreamId, data: str | None) -> EventId:
        """Keep a message already written as its wire JSON (None: a priming event); its event id."""
        self._seq = seq = self._seq + 1
        name = self._names.get(stream_id)
        if name is None:
            name = self._names[stream_id] = secrets.token_urlsafe(12)
            self._named[name] = stream_id
        event_id = f"{name}.{seq}"
        size = _OVERHEAD + (len(data) if data is not None else 0)
        events = self._events
        events[event_id] = _Stored(stream_id, seq, data, size)
        ids = self._streams.get(stream_id)
        if ids is None:
            ids = self._streams[stream_id] = deque()
        ids.append(event_id)
        self._bytes += size
        if len(ids) > self.per_stream and not stream_id.endswith(GET_STREAM_KEY):
            forgotten = events.pop(ids.popleft(), None)
            if forgotten is not None:
                self._bytes -= forgotten.size
        while len(events) > self.max_events or (self._bytes > self.max_bytes and len(events) > 1):
            self._evict_oldest()
        return event_id

    def for_session(self, session_id: str) -> SessionEvents:
        return SessionEvents(self, session_id)

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        return await self.replay(last_event_id, send_callback, within="")

    async def replay(self, last_event_id: EventId, send_callback: EventCallback, *, within: str) -> StreamId | None:
        """Replay after `last_event_id` if its stream's name starts with `within`."""
        name, _, place = last_event_id.rpartition(".")
        stream = self._named.get(name)
        if stream is None or not place.isdigit() or not stream.startswith(within):
            return None
        after = int(place)
        if after < self._lost.get(stream, 0):
            return None
        # A copy: sending waits on the client, and more events may be stored (or evicted) meanwhile.
        for event_id in list(self._streams.get(stream, ())):
            stored = self._events.get(event_id)
            if stored is None or stored.seq <= after or stored.message is None:
                continue
            message = jsonrpc_message_adapter.validate_json(stored.message, by_name=False)
            await send_callback(EventMessage(message, event_id))
        return stream

    def _evict_oldest(self) -> None:
        event_id, stored = self._events.popitem(last=False)
        self._bytes -= stored.size
        if stored.stream.endswith(GET_STREAM_KEY):
            self._lost[stored.stream] = stored.seq
        ids = self._streams.get(stored.stream)
        if ids is not None:
            if ids and ids[0] == event_id:
                ids.popleft()
            else:
                ids.remove(event_id)
            if not ids:
                del self._streams[stored.stream]
                self._named.pop(self._names.pop(stored.stream, ""), None)
                self._lost.pop(stored.stream, None)


class SessionEvents(EventStore):
    """One session's view of the shared store: its own streams, by the names the transport gives them."""

    def __init__(self, store: BoundedEventStore, session_id: str) -> None:
        self.store = store
        self.prefix = f"{session_id}/"

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        return await self.store.store_event(self.prefix + stream_id, message)

    def store_wire(self, stream_id: StreamId, data: str | None) -> EventId:
        return self.store.store_wire(self.prefix + stream_id, data)

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        stream = await self.store.replay(last_event_id, send_callback, within=self.prefix)
        return None if stream is None else stream[len(self.prefix) :]
