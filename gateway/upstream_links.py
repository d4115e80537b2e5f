"""What an upstream's SDK client connects over, and the lean side of the same connection when there is one.

A stdio upstream (POSIX) runs over `StdioLink`, a URL over `HttpLink`: the SDK's client and the
gateway's own tools/call share the one process or session. On Windows a stdio upstream keeps the
SDK's own transport, and its calls go through the SDK's client.
"""

from __future__ import annotations

import os
import sys
from contextlib import AsyncExitStack
from typing import Any

import httpx2
from mcp import StdioServerParameters

from gateway.config import UpstreamSettings
from gateway.upstream_h1 import H1Pool, plain_http
from gateway.upstream_http import send_requests_whole
from gateway.upstream_post import HttpLink
from gateway.upstream_stdio import StdioLink
from gateway.upstream_wire import Link


async def target(settings: UpstreamSettings, stack: AsyncExitStack) -> tuple[Any, Link | None]:
    """The SDK client's transport for `settings`, and the link a forwarded tools/call takes (None: the SDK's)."""
    if settings.command is not None:
        if sys.platform == "win32":
            command, *args = settings.command
            params = StdioServerParameters(command=command, args=args, env=dict(settings.env) or None, cwd=settings.cwd)
            return params, None
        stdio = StdioLink(settings.command, settings.env, settings.cwd)
        return stdio.open(), stdio
    assert settings.url is not None
    http = await stack.enter_async_context(
        httpx2.AsyncClient(
            headers=dict(settings.headers), timeout=httpx2.Timeout(30.0, read=settings.call_timeout + 30)
        )
    )
    send_requests_whole(http)
    h1 = H1Pool(settings.url, settings.headers) if plain_http(settings.url, os.environ) else None
    link = HttpLink(settings.url, http, h1)
    return link.open(), link
