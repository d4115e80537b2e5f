"""Tool results the model can read: every refusal is an `isError` result whose text starts with a tag."""

from __future__ import annotations

from typing import Any

import mcp_types as types


def error_result(text: str, structured: dict[str, Any] | None = None) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)], is_error=True, structured_content=structured
    )


def text_of(result: types.CallToolResult, limit: int = 300) -> str:
    """A short summary of a result, for audit lines and approver cards."""
    parts = [block.text for block in result.content if isinstance(block, types.TextContent)]
    text = " ".join(" ".join(parts).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
