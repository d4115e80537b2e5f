"""Running the gateway: HTTP under uvicorn, or one MCP client on stdio (with the HTTP API beside it)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Coroutine
from typing import Any, Literal

import anyio
import uvicorn
from mcp.server.stdio import stdio_server
from uvicorn.config import LOGGING_CONFIG

from gateway import collector, tracing
from gateway.app import Gateway
from gateway.config import ConfigError, Settings
from gateway.http_protocol import GatheringHTTPProtocol

log = logging.getLogger(__name__)


def _uvicorn(
    app: object, settings: Settings, *, lifespan: Literal["on", "off"], own_logging: bool = True
) -> uvicorn.Server:
    problem = settings.server.dev_mode_problem()
    if problem:
        # `serve --host` replaces the host after the file was checked; check the host actually served.
        raise ConfigError(settings.source, "server.dev_mode", problem)
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.server.host,
        port=settings.server.port,
        lifespan=lifespan,
        log_level="info",
        access_log=settings.server.access_log,
        # uvicorn's own logging config sends access lines to stdout; `False` leaves them to the root logger.
        log_config=LOGGING_CONFIG if own_logging else None,
        # Held calls keep their response open for minutes; let a shutdown wait for them briefly.
        timeout_graceful_shutdown=5,
        backlog=settings.server.backlog,
        # In trusted-header mode the web inbox checks that the connection comes from the SSO proxy; uvicorn
        # must not replace that address with the one the proxy forwards.
        proxy_headers=not settings.web.trusted_header,
        # A response's head and body leave in one write (gateway.http_protocol).
        http=GatheringHTTPProtocol,
    )
    return uvicorn.Server(config)


def run(main: Coroutine[Any, Any, int]) -> int:
    """Run a serving coroutine on uvloop's event loop where it is installed (the default install has it:
    its loop, with httptools parsing HTTP under uvicorn, costs the gateway markedly less CPU per relayed
    call than asyncio's with h11); on asyncio's own loop where it is not."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def serve_http(settings: Settings, *, accept_audit_rollback: bool = False) -> int:
    tracing.configure()
    gateway = Gateway(settings, accept_audit_rollback=accept_audit_rollback)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_settle_collector, gateway)
        await _uvicorn(gateway.asgi(), settings, lifespan="on").serve()
        tg.cancel_scope.cancel()
    return 0


async def _settle_collector(gateway: Gateway) -> None:
    # Once start-up has settled, what it loaded is kept out of every later collection (gateway.collector).
    await gateway.readiness.started.wait()
    collector.settle()


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


async def serve_stdio(
    settings: Settings, agent: str, *, with_http: bool = True, accept_audit_rollback: bool = False
) -> int:
    tracing.configure()
    gateway = Gateway(settings, stdio_agent=agent, accept_audit_rollback=accept_audit_rollback)
    # stdout is the MCP channel: claim it first (the SDK diverts stray writes to stderr while it is held),
    # so nothing logged while upstreams connect or the HTTP API answers can corrupt it.
    async with (
        stdio_server() as (read, write),
        gateway.running(serve_http=with_http),
        anyio.create_task_group() as tg,
    ):
        if with_http:
            if _port_free(settings.server.host, settings.server.port):
                server = _uvicorn(gateway.asgi(lifespan=False), settings, lifespan="off", own_logging=False)
                tg.start_soon(server.serve)
            else:
                # Another gateway on this database already serves the API; its decisions reach us through it.
                log.info("port %s is in use; serving stdio only", settings.server.port)
        await gateway.readiness.wait()
        collector.settle()
        await gateway.mcp.run(read, write, gateway.mcp.create_initialization_options())
        tg.cancel_scope.cancel()
    return 0
