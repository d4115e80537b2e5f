"""`[agent_limits]`: what one agent may hold of what all agents share (docs/configuration.md, docs/security.md)."""

from __future__ import annotations

from pydantic import Field, field_validator

from gateway.config_base import Section, seconds


class AgentLimitSettings(Section):
    """Fair share: what one agent may hold of what all agents share (docs/security.md)."""

    # Requests waiting for a decision; the next held call is refused [RATE LIMITED].
    max_pending_per_agent: int = Field(default=50, ge=1)
    # Open 2025-era MCP sessions (Mcp-Session-Id); the next initialize is refused with 429.
    max_sessions_per_agent: int = Field(default=100, ge=1)
    # Refused calls (denied, hidden, unknown tool, invalid arguments, over a quota) per window; past
    # that, every call of the agent is refused [RATE LIMITED] until the window has room again.
    max_refusals_per_agent: int = Field(default=60, ge=1)
    refusal_window: float = 60.0
    # The JSON of one call's arguments; the MCP transport refuses request bodies over 4 MiB anyway.
    max_argument_bytes: int = Field(default=256 * 1024, ge=1024, le=4 * 1024 * 1024)

    _durations = field_validator("refusal_window", mode="before")(seconds)

    @field_validator("refusal_window")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("`refusal_window` must be a positive duration such as '1m'")
        return value
