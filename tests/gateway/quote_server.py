"""A small upstream of the tests' own, built with the SDK's MCPServer as most Python MCP servers are.

Its tool returns a pydantic model holding another model, so its output schema carries `$defs` with
`$ref`s pointing at the document root: the shape a gateway must keep resolvable when it widens it.
"""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel


class Price(BaseModel):
    amount: float
    currency: str


class Quote(BaseModel):
    symbol: str
    bid: Price
    ask: Price


def build_quote_app() -> Any:
    server = MCPServer("quotes")

    @server.tool()
    def get_quote(symbol: str) -> Quote:
        """The current bid and ask for a symbol."""
        return Quote(symbol=symbol, bid=Price(amount=99.5, currency="USD"), ask=Price(amount=100.5, currency="USD"))

    return server.streamable_http_app(stateless_http=True)
