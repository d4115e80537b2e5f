"""A fake Slack on loopback for the real slack-sdk clients: the Web API, Socket Mode, and a user who clicks.

It serves `/api/<method>` the way Slack does (HTTP 200 with `ok`, `Authorization: Bearer`), keeps
the messages it was sent, records every call, can be told to fail (HTTP 500, 429 with Retry-After,
`ok: false`), serves `apps.connections.open` and the `/link/` websocket, and delivers clicks and
modal submissions to the gateway: signed over HTTP, or as envelopes over the Socket Mode websocket.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
import anyio
from aiohttp import web

BOT_TOKEN = "xoxb-fake-bot-token"
APP_TOKEN = "xapp-fake-app-token"
SIGNING_SECRET = "fake-signing-secret"
TEAM = "T0COUNTER"
APPROVALS = "C0APPROVALS"
SCOPES = "chat:write,users:read,users:read.email,channels:read,groups:read,channels:history,groups:history"


@dataclass
class Call:
    method: str
    args: dict[str, Any]
    token: str | None


@dataclass
class Failure:
    status: int = 500
    error: str | None = None
    retry_after: int | None = None
    times: int = 1
    delay: float = 0.0  # answer this late (after the client's timeout, to simulate a hang)


@dataclass
class Slow:
    delay: float
    times: int = 1


@dataclass
class Message:
    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]]
    thread_ts: str | None = None
    versions: list[list[dict[str, Any]]] = field(default_factory=list)
    metadata: dict[str, Any] | None = None

    def block_text(self) -> str:
        """All mrkdwn/plain text in the blocks, as Slack would render it before formatting."""
        out: list[str] = []

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                if node.get("type") in ("mrkdwn", "plain_text") and isinstance(node.get("text"), str):
                    out.append(node["text"])
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)

        walk(self.blocks)
        return "\n".join(out)

    def buttons(self) -> dict[str, dict[str, Any]]:
        return {
            element["action_id"]: element
            for block in self.blocks
            if block.get("type") == "actions"
            for element in block.get("elements", [])
            if element.get("type") == "button" and "action_id" in element
        }


@dataclass(frozen=True)
class User:
    id: str
    name: str
    email: str | None = None
    team: str = TEAM  # another value: someone of another workspace, seen through a shared channel


class FakeSlack:
    def __init__(self, users: list[User] | None = None, *, channels: dict[str, str] | None = None) -> None:
        self.users = {u.id: u for u in users or []}
        self.channels = channels or {APPROVALS: "approvals", "C0OVERRIDE": "risk-desk"}
        self.calls: list[Call] = []
        self.messages: dict[tuple[str, str], Message] = {}
        self.views: list[dict[str, Any]] = []
        self.ephemerals: list[dict[str, Any]] = []
        self.failures: dict[str, list[Failure]] = {}
        # Calls that succeed (the message exists at once) but whose answer comes `delay` seconds late.
        self.slowdowns: dict[str, list[Slow]] = {}
        self.deleted: list[Message] = []
        self.connection_opens = 0
        self.links_dialled = 0
        self.sockets: list[web.WebSocketResponse] = []
        self.acks: dict[str, anyio.Event] = {}
        self.ack_payloads: dict[str, Any] = {}
        self.interactions_url: str | None = None
        self.socket_mode = False
        self.signing_secret = SIGNING_SECRET
        self._ts = itertools.count(1)
        self._ids = itertools.count(1)
        self._changed = anyio.Event()
        self.port = 0

    # ---- serving

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[FakeSlack]:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/link/", self._link)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]
        try:
            yield self
        finally:
            for ws in list(self.sockets):
                await ws.close()
            await runner.cleanup()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    def config(self, **extra: Any) -> dict[str, Any]:
        """A [slack] section pointing the gateway here."""
        base: dict[str, Any] = {
            "bot_token": BOT_TOKEN,
            "signing_secret": SIGNING_SECRET,
            "channel": APPROVALS,
            "api_url": self.api_url,
            "retry_initial": 0.05,
            "retry_max": 0.2,
        }
        if extra.get("mode") == "socket":
            base["app_token"] = APP_TOKEN
        return {**base, **extra}

    def fail(
        self,
        method: str,
        *,
        status: int = 500,
        error: str | None = None,
        retry_after: int | None = None,
        times: int = 1,
        delay: float = 0.0,
    ) -> None:
        """The next `times` calls of `method` ("*": any) fail: HTTP `status`, or `ok: false` with `error`."""
        self.failures.setdefault(method, []).append(Failure(status, error, retry_after, times, delay))

    def slow(self, method: str, delay: float, *, times: int = 1) -> None:
        """The next `times` calls of `method` do what they ask at once, and answer `delay` seconds later."""
        self.slowdowns.setdefault(method, []).append(Slow(delay, times))

    def heal(self) -> None:
        self.failures.clear()
        self.slowdowns.clear()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            if request.content_type == "application/json":
                args.update(await request.json())
            else:
                args.update(dict(await request.post()))
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ") if header.startswith("Bearer ") else None
        self.calls.append(Call(method, args, token))
        try:
            queue = self.failures.get(method) or self.failures.get("*")
            if queue:
                failure = queue[0]
                failure.times -= 1
                if failure.times <= 0:
                    queue.pop(0)
                if failure.delay:
                    await anyio.sleep(failure.delay)
                return self._failure(failure)
            answer = self._answer(method, args, token)
            slowdowns = self.slowdowns.get(method)
            if slowdowns:
                slow = slowdowns[0]
                slow.times -= 1
                if slow.times <= 0:
                    slowdowns.pop(0)
                self._notify()
                await anyio.sleep(slow.delay)
            return answer
        finally:
            self._notify()

    @staticmethod
    def _failure(failure: Failure) -> web.Response:
        if failure.error:
            return web.json_response({"ok": False, "error": failure.error})
        headers = {"Retry-After": str(failure.retry_after)} if failure.retry_after is not None else {}
        if failure.status == 429:
            return web.json_response({"ok": False, "error": "ratelimited"}, status=429, headers=headers)
        return web.Response(status=failure.status, text="upstream trouble", headers=headers)

    def _answer(self, method: str, args: dict[str, Any], token: str | None) -> web.Response:
        expected = APP_TOKEN if method == "apps.connections.open" else BOT_TOKEN
        if token != expected:
            return web.json_response({"ok": False, "error": "invalid_auth" if token else "not_authed"})
        handler: Callable[[dict[str, Any]], dict[str, Any]] | None = getattr(self, "_" + method.replace(".", "_"), None)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"})
        body = handler(args)
        headers = {"X-OAuth-Scopes": SCOPES} if method == "auth.test" else {}
        return web.json_response(body, headers=headers)

    # ---- Web API methods

    def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "team": "Countersign Test", "team_id": TEAM, "user": "countersign", "user_id": "UBOT"}

    def _channel_id(self, channel: str) -> str | None:
        if channel in self.channels:
            return channel
        name = channel.lstrip("#")
        return next((cid for cid, cname in self.channels.items() if cname == name), None)

    def _chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel_id(str(args.get("channel")))
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        # Real seconds, so `oldest` in a history read means what it means on Slack.
        ts = f"{int(time.time())}.{next(self._ts):06d}"
        blocks = list(args.get("blocks") or [])
        message = Message(
            channel, ts, str(args.get("text", "")), blocks, args.get("thread_ts"), [blocks], args.get("metadata")
        )
        self.messages[(channel, ts)] = message
        return {"ok": True, "channel": channel, "ts": ts, "message": {"ts": ts, "text": message.text}}

    def _chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self.messages.get((str(args.get("channel")), str(args.get("ts"))))
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        message.blocks = list(args.get("blocks") or [])
        message.text = str(args.get("text", ""))
        message.versions.append(message.blocks)
        return {"ok": True, "channel": message.channel, "ts": message.ts}

    def _chat_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self.messages.pop((str(args.get("channel")), str(args.get("ts"))), None)
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        self.deleted.append(message)
        return {"ok": True, "channel": message.channel, "ts": message.ts}

    def _history(self, args: dict[str, Any], keep: Callable[[Message], bool]) -> dict[str, Any]:
        channel = self._channel_id(str(args.get("channel")))
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        oldest = float(args.get("oldest") or 0)
        found = sorted(
            (m for m in self.messages.values() if m.channel == channel and float(m.ts) > oldest and keep(m)),
            key=lambda m: float(m.ts),
            reverse=True,  # newest first, as Slack answers
        )
        with_metadata = str(args.get("include_all_metadata")).lower() == "true"
        listed = [
            {
                "type": "message",
                "ts": m.ts,
                "text": m.text,
                **({"metadata": m.metadata} if with_metadata and m.metadata else {}),
            }
            for m in found
        ]
        return {"ok": True, "messages": listed, "has_more": False, "response_metadata": {"next_cursor": ""}}

    def _conversations_history(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._history(args, lambda m: m.thread_ts is None)

    def _conversations_replies(self, args: dict[str, Any]) -> dict[str, Any]:
        parent = str(args.get("ts"))
        return self._history(args, lambda m: m.ts == parent or m.thread_ts == parent)

    def top_level_posts(self, request_id: str) -> list[Call]:
        """The chat.postMessage calls that posted request `request_id`'s message (not its reminders)."""
        return [
            c
            for c in self.calls_to("chat.postMessage")
            if "thread_ts" not in c.args
            and (c.args.get("metadata") or {}).get("event_payload", {}).get("request_id") == request_id
        ]

    def _chat_postEphemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        self.ephemerals.append(args)
        return {"ok": True, "message_ts": f"1700000001.{next(self._ts):06d}"}

    def _views_open(self, args: dict[str, Any]) -> dict[str, Any]:
        view = dict(args["view"])
        view["id"] = f"V{next(self._ids):05d}"
        view["hash"] = f"hash-{view['id']}"
        view["trigger_id"] = args.get("trigger_id")
        self.views.append(view)
        return {"ok": True, "view": view}

    def _users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        user = self.users.get(str(args.get("user")))
        if user is None:
            return {"ok": False, "error": "user_not_found"}
        profile = {"email": user.email} if user.email else {}
        return {
            "ok": True,
            "user": {"id": user.id, "team_id": user.team, "name": user.name, "deleted": False, "profile": profile},
        }

    def _conversations_info(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = str(args.get("channel"))
        if channel not in self.channels:
            return {"ok": False, "error": "channel_not_found"}
        return {"ok": True, "channel": {"id": channel, "name": self.channels[channel], "is_member": True}}

    def _conversations_list(self, args: dict[str, Any]) -> dict[str, Any]:
        listed = [{"id": cid, "name": name, "is_member": True} for cid, name in self.channels.items()]
        return {"ok": True, "channels": listed, "response_metadata": {"next_cursor": ""}}

    def _apps_connections_open(self, args: dict[str, Any]) -> dict[str, Any]:
        self.connection_opens += 1
        return {"ok": True, "url": f"ws://127.0.0.1:{self.port}/link/?ticket={self.connection_opens}"}

    # ---- Socket Mode

    async def _link(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self.links_dialled += 1
        self.sockets.append(ws)
        await ws.send_json({"type": "hello", "num_connections": 1, "connection_info": {"app_id": "A0FAKE"}})
        self._notify()
        try:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(message.data)
                envelope = data.get("envelope_id")
                if envelope in self.acks:
                    self.ack_payloads[envelope] = data.get("payload")
                    self.acks[envelope].set()
        finally:
            if ws in self.sockets:
                self.sockets.remove(ws)
            self._notify()
        return ws

    async def push(self, payload: dict[str, Any], *, within: float = 5.0) -> Any:
        """Deliver an interactive payload over the open socket; return the payload of its acknowledgement."""
        await self.wait_until(lambda: bool(self.sockets), within=within)
        envelope = f"env-{next(self._ids)}"
        self.acks[envelope] = anyio.Event()
        await self.sockets[-1].send_json(
            {"envelope_id": envelope, "type": "interactive", "accepts_response_payload": True, "payload": payload}
        )
        with anyio.fail_after(3):  # Slack's own deadline for an acknowledgement
            await self.acks[envelope].wait()
        return self.ack_payloads.get(envelope)

    async def ask_to_reconnect(self) -> None:
        """Slack's `disconnect` message: the client must open a new connection."""
        for ws in list(self.sockets):
            await ws.send_json({"type": "disconnect", "reason": "refresh_requested"})

    async def drop_connections(self) -> None:
        for ws in list(self.sockets):
            await ws.close()

    # ---- waiting

    async def wait_until(self, predicate: Callable[[], Any], *, within: float = 10.0) -> None:
        with anyio.fail_after(within):
            while not predicate():
                changed = self._changed
                with anyio.move_on_after(0.05):
                    await changed.wait()

    async def message(self, *, within: float = 10.0, channel: str | None = None) -> Message:
        """The (first) top-level message, once it is there."""

        def first() -> Message | None:
            return next(
                (m for m in self.messages.values() if m.thread_ts is None and channel in (None, m.channel)), None
            )

        await self.wait_until(lambda: first() is not None, within=within)
        found = first()
        assert found is not None
        return found

    async def message_shows(self, message: Message, text: str, *, within: float = 10.0) -> None:
        await self.wait_until(lambda: text in message.block_text(), within=within)

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    # ---- a user acting in Slack

    def click_payload(self, message: Message, action_id: str, user: User) -> dict[str, Any]:
        button = message.buttons()[action_id]
        stamp = f"{time.time():.6f}{next(self._ids)}"
        return {
            "type": "block_actions",
            "user": {"id": user.id, "username": user.name, "name": user.name, "team_id": user.team},
            "api_app_id": "A0FAKE",
            "team": {"id": user.team, "domain": "countersign-test"},
            "container": {
                "type": "message",
                "message_ts": message.ts,
                "channel_id": message.channel,
                "is_ephemeral": False,
            },
            "trigger_id": f"trigger-{next(self._ids)}",
            "channel": {"id": message.channel, "name": self.channels.get(message.channel, "")},
            "message": {"ts": message.ts, "text": message.text, "blocks": message.blocks},
            "response_url": f"http://127.0.0.1:{self.port}/response/{next(self._ids)}",
            "actions": [
                {
                    "action_id": action_id,
                    "block_id": "countersign.actions",
                    "value": button["value"],
                    "type": "button",
                    "action_ts": stamp,
                }
            ],
        }

    def submission_payload(self, view: dict[str, Any], user: User, reason: str) -> dict[str, Any]:
        values = {
            block["block_id"]: {block["element"]["action_id"]: {"type": "plain_text_input", "value": reason or None}}
            for block in view["blocks"]
            if block.get("type") == "input"
        }
        return {
            "type": "view_submission",
            "team": {"id": user.team, "domain": "countersign-test"},
            "user": {"id": user.id, "username": user.name, "name": user.name, "team_id": user.team},
            "api_app_id": "A0FAKE",
            "trigger_id": f"trigger-{next(self._ids)}",
            "view": {**view, "state": {"values": values}},
        }

    async def deliver(
        self, payload: dict[str, Any], *, timestamp: str | None = None, signature: str | None = None
    ) -> tuple[int, Any]:
        """Send a payload the way Slack would: a signed form POST, or an envelope in Socket Mode."""
        if self.socket_mode:
            return 200, await self.push(payload)
        assert self.interactions_url, "set interactions_url to the gateway's /slack/interactions"
        body = urlencode({"payload": json.dumps(payload)})
        stamp = timestamp or str(int(time.time()))
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": sign(self.signing_secret, stamp, body) if signature is None else signature,
        }
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.interactions_url, data=body.encode(), headers=headers) as response,
        ):
            text = await response.text()
            return response.status, (json.loads(text) if text else None)

    async def click(self, message: Message, action_id: str, user: User) -> tuple[int, Any]:
        return await self.deliver(self.click_payload(message, action_id, user))

    async def submit(self, view: dict[str, Any], user: User, reason: str) -> tuple[int, Any]:
        return await self.deliver(self.submission_payload(view, user, reason))


def sign(secret: str, timestamp: str, body: str) -> str:
    digest = hmac.new(secret.encode(), f"v0:{timestamp}:{body}".encode(), hashlib.sha256).hexdigest()
    return f"v0={digest}"
