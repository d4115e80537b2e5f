"""Who an agent is for the policy: its name and its groups, however it authenticated.

A static-token agent's groups are in the configuration (`[[agents]] groups`); a JWT agent's come
from its token's groups claim. Policies test both the same way (`agent.name`, `agent.groups`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

# The identity the gateway's own reads (context lookups) run and are audited under.
GATEWAY_IDENTITY: Final = "countersign"


@dataclass(frozen=True)
class AgentIdentity:
    name: str
    groups: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "groups": list(self.groups)}


class AgentDirectory:
    """The groups of every agent the gateway knows: configured agents, and JWT agents as last seen.

    Judging an open request again (a policy reload) needs its agent's groups without the agent's
    token at hand: a configured agent's are in the file; a JWT agent's are those of the latest
    token this process accepted from it (none before its first call since the process started).
    """

    def __init__(self, configured: Iterable[AgentIdentity] = ()) -> None:
        self._configured = {agent.name: agent for agent in configured}
        self._seen: dict[str, AgentIdentity] = {}

    def note(self, identity: AgentIdentity) -> None:
        if identity.name not in self._configured:
            self._seen[identity.name] = identity

    def identity(self, name: str) -> AgentIdentity:
        return self._configured.get(name) or self._seen.get(name) or AgentIdentity(name)
