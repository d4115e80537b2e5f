"""Approving a held call with changes: the changed call is checked as if the agent had made it.

An approver may change only the argument paths the tool's policy lists (`approval.editable`). Before
the approval is recorded, the changed call must fit the tool's input schema and the policy in force
must still allow it: every deny rule and requirement applies, and a change that would make the call
need a different approval (another `require_approval` rule) is refused too. A refusal is audited
and leaves the request pending, so the approver can approve as asked, reject, or change something else.

The web card, the approver API and the CLI all come through here; the approval service checks the
paths once more and binds both argument digests into the audit chain (approvals.request_events).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from approvals.approvers import Approver
from approvals.edits import apply_edits
from approvals.errors import InvalidDecision
from approvals.grant_terms import GrantAsk
from approvals.request_events import refusal_event
from approvals.service import ApprovalService
from approvals.views import DecisionOutcome, RequestView
from gateway.arguments import check_call
from gateway.identity import AgentDirectory
from gateway.policy_store import PolicyStore
from gateway.upstreams import Upstreams


class EditedApprovals:
    def __init__(
        self,
        service: ApprovalService,
        policies: PolicyStore,
        upstreams: Upstreams,
        *,
        max_bytes: int = 256 * 1024,
        agents: AgentDirectory | None = None,
    ) -> None:
        self.service = service
        # Who called, for the policy's conditions on agent.name and agent.groups when the changed call is judged.
        self.agents = agents or AgentDirectory()
        self.policies = policies
        self.upstreams = upstreams
        self.max_bytes = max_bytes

    async def approve(
        self,
        request_id: str,
        approver: Approver,
        channel: str,
        reason: str | None,
        changes: Mapping[str, Any],
        *,
        grant: GrantAsk | None = None,
    ) -> DecisionOutcome:
        """Approve, with `changes` (argument path -> value; a text value is read as the schema's type), or with a
        standing approval (`grant`); never both (approvals.service refuses the pair)."""
        if not changes:
            return await self.service.approve(request_id, approver, channel, reason, grant=grant)
        current = await self.service.precheck(request_id, approver, channel, "approve")
        schema = self.upstreams.input_schema(current.tool)
        typed = {
            path: typed_value(value, schema_at(schema, path), value_at(current.arguments, path))
            for path, value in changes.items()
        }
        try:
            self._vet(current, typed, schema)
        except InvalidDecision as refused:
            await self.service.record(refusal_event(current, approver, channel, "approve with changes", str(refused)))
            raise
        return await self.service.approve(request_id, approver, channel, reason, grant=grant, edits=typed)

    def _vet(self, current: RequestView, changes: Mapping[str, Any], schema: Mapping[str, Any] | None) -> None:
        arguments, edits = apply_edits(current.arguments, changes, current.editable)
        if not edits:
            return
        if schema is None:
            raise InvalidDecision(
                f"'{current.tool}' is not offered by any connected upstream now, so a changed call cannot be checked "
                "against its schema; approve or reject it as asked"
            )
        invalid = check_call(current.tool, arguments, schema, max_bytes=self.max_bytes)
        if invalid is not None:
            raise InvalidDecision(f"the changed call does not fit the tool's input schema: {invalid.message}")
        policy = self.policies.current
        changed = policy.evaluate(current.tool, arguments, schema, agent=self.agents.identity(current.agent))
        if changed.action in ("deny", "hidden"):
            raise InvalidDecision(f"the policy refuses the changed call: {changed.message}")
        if changed.action == "hold":
            asked = policy.evaluate(current.tool, current.arguments, schema, agent=self.agents.identity(current.agent))
            if changed.rule != asked.rule:
                raise InvalidDecision(
                    f"the changed call would need a different approval ({changed.rule}: {changed.message}); "
                    "approve or reject the call as asked"
                )


def editable_fields(view: RequestView) -> list[tuple[str, str]]:
    """Each editable path with its value as the agent sent it, as text for a form field (strings as they are)."""
    if view.damage:
        return []
    fields = []
    for path in view.editable:
        value = value_at(view.arguments, path)
        fields.append((path, value if isinstance(value, str) else "" if value is None else json.dumps(value)))
    return fields


def schema_at(schema: Mapping[str, Any] | None, path: str) -> Mapping[str, Any] | None:
    """The part of an input schema that describes the argument at `path`, where the schema says plainly."""
    current: Any = schema
    for segment in path.split("."):
        if not isinstance(current, Mapping):
            return None
        properties = current.get("properties")
        if isinstance(properties, Mapping) and segment in properties:
            current = properties[segment]
        elif segment.isdigit() and isinstance(current.get("items"), Mapping):
            current = current["items"]
        else:
            return None
    return current if isinstance(current, Mapping) else None


def value_at(arguments: Mapping[str, Any], path: str) -> Any:
    current: Any = arguments
    for segment in path.split("."):
        if isinstance(current, Mapping):
            current = current.get(segment)
        elif isinstance(current, list) and segment.isdigit() and int(segment) < len(current):
            current = current[int(segment)]
        else:
            return None
    return current


def typed_value(value: Any, schema: Mapping[str, Any] | None, current: Any) -> Any:
    """A value typed into a form or on a command line is text; read it as JSON where the argument is no string.

    The schema says what the argument is; where it does not say, the value the agent sent does.
    """
    if not isinstance(value, str):
        return value
    kinds = None if schema is None else schema.get("type")
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if isinstance(kinds, list):
        if "string" in kinds:
            return value
    elif current is None or isinstance(current, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        # Left as text: the schema check then says what the argument should be.
        return value
