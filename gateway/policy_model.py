"""The policy model: the rules a validated document holds, and how a tool call is evaluated against them.

`gateway.policy_document` builds a `Policy` from JSON; `gateway.policy` is the import most code uses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from types import MappingProxyType
from typing import Any, Final, Literal, get_args

from approvals.grant_terms import GrantOffer
from approvals.views import EscalationStep
from gateway.arguments import with_defaults
from gateway.identity import AgentIdentity
from gateway.policy_context import AgentReason, ContextSpec
from gateway.policy_reads import ReadPolicy
from gateway.policy_values import ORDERING as ORDERING
from gateway.policy_values import comparable, compare
from gateway.policy_values import is_number as is_number
from gateway.policy_values import json_type as json_type

Op = Literal["eq", "neq", "in", "not_in", "lt", "lte", "gt", "gte", "regex", "contains", "exists"]
Window = Literal["second", "minute", "hour", "day"]
Scope = Literal["grant", "session", "global"]
Channel = Literal["web", "slack", "api", "client"]
Action = Literal["allow", "deny", "hidden", "hold"]
Default = Literal["allow", "deny"]

OPS: Final[tuple[str, ...]] = get_args(Op)
# The ops that hold when the field is absent (besides ``exists: false``): an absent field equals nothing.
HOLD_WHEN_ABSENT: Final = frozenset({"neq", "not_in"})
WINDOW_SECONDS: Final[Mapping[str, float]] = MappingProxyType(
    {"second": 1.0, "minute": 60.0, "hour": 3_600.0, "day": 86_400.0}
)
SCOPES: Final[tuple[str, ...]] = get_args(Scope)
CHANNELS: Final[tuple[str, ...]] = get_args(Channel)
_SCOPE_PHRASE: Final[Mapping[str, str]] = {
    "grant": "per agent",
    "session": "per session",
    "global": "across all agents",
}

_MISSING: Final = object()
# The paths a condition may test besides the arguments: who is calling.
AGENT_PATHS: Final = ("agent.name", "agent.groups")


@dataclass(frozen=True)
class Condition:
    """``{path, op, value}``; ``path`` is ``args.<dotted.path>`` (numeric segments index lists), or who
    calls: ``agent.name`` or ``agent.groups``."""

    path: str
    op: str
    value: Any
    _pattern: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.op == "regex":
            object.__setattr__(self, "_pattern", re.compile(self.value))

    def holds(self, args: Mapping[str, Any], *, mismatch: bool = False, agent: AgentIdentity | None = None) -> bool:
        """Whether the condition holds for ``args``.

        ``mismatch`` is the answer when the argument's type cannot be compared with ``value`` (a string
        against a number, ``"false"`` against ``false``). The rule's kind decides it, so that every rule
        fails closed: an upstream that coerces ``"5000"`` to 5000 must not slip past ``gt 1000``.
        ``agent`` is who calls, for ``agent.name`` and ``agent.groups`` (absent when not known).
        """
        actual = _resolve(args, self.path, agent)
        if self.op == "exists":
            # JSON null counts as absent: a required field sent as null was not really supplied.
            return (actual is not _MISSING and actual is not None) == bool(self.value)
        if actual is _MISSING:
            # Nothing is equal to an absent field or in a list with it; everything else needs a value.
            return self.op in HOLD_WHEN_ABSENT
        if not comparable(self.op, actual, self.value):
            return mismatch
        return compare(self.op, actual, self.value, self._pattern)

    @property
    def on_agent(self) -> bool:
        return self.path in AGENT_PATHS

    def mismatch(self, args: Mapping[str, Any]) -> str | None:
        """What makes the argument incomparable with ``value`` (for the message), or None."""
        if self.on_agent:
            return None  # who calls is known to the gateway, never sent by the agent
        actual = _resolve(args, self.path)
        if self.op == "exists" or actual is _MISSING or comparable(self.op, actual, self.value):
            return None
        expected = json.dumps(list(self.value) if self.op in ("in", "not_in") else self.value, ensure_ascii=False)
        return f"{self.path} is {json_type(actual)}, which '{self.op}' cannot compare with {expected}"


@dataclass(frozen=True)
class Rule:
    conditions: tuple[Condition, ...]
    message: str
    where: str
    # A require_approval rule's own `approval` fields, laid over the tool's approval block when it matches.
    approval: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def matches(self, args: Mapping[str, Any], *, mismatch: bool = False, agent: AgentIdentity | None = None) -> bool:
        """All conditions hold; ``mismatch`` is what a type mismatch counts as (see Condition.holds)."""
        return all(condition.holds(args, mismatch=mismatch, agent=agent) for condition in self.conditions)

    @property
    def on_arguments(self) -> bool:
        """Whether what the call sends can change the rule's outcome (it tests an argument)."""
        return any(not condition.on_agent for condition in self.conditions)

    def explained(self, args: Mapping[str, Any]) -> str:
        """The rule's message, saying so when a value of the wrong type decided it (the agent can fix that)."""
        notes = [note for condition in self.conditions if (note := condition.mismatch(args))]
        if not notes:
            return self.message
        return f"{self.message} ({'; '.join(notes)}: a value of the wrong type counts against the call)"


@dataclass(frozen=True)
class Limit:
    counter: str
    # A named window (`limits`), or None with `seconds` (PolicyLayer's `rate_limit`, whose window is in seconds).
    window: Window | None
    max: int
    scope: Scope
    where: str
    seconds: float | None = None

    @property
    def window_seconds(self) -> float:
        return WINDOW_SECONDS[self.window] if self.window is not None else float(self.seconds or 0.0)

    def describe(self) -> str:
        """``"at most 10 calls per minute per agent"`` — the wording agents and approvers read."""
        calls = "call" if self.max == 1 else "calls"
        period: str = self.window or ("second" if self.window_seconds == 1 else f"{self.window_seconds:g} seconds")
        return f"at most {self.max} {calls} per {period} {_SCOPE_PHRASE[self.scope]}"


@dataclass(frozen=True)
class ApprovalSettings:
    timeout_seconds: float = 900.0
    approvers: tuple[str, ...] = ()
    quorum: int = 1
    channels: tuple[str, ...] = ("web", "slack")
    slack_channel: str | None = None
    reject_reason_required: bool = False
    # How long the agent's call is held open before it returns a "still pending" result. None: not set here
    # (the agent's `max_hold`, else [server] default_max_hold, applies); math.inf ("none"): no bound.
    max_hold_seconds: float | None = None
    # After approval, how long an agent that stopped waiting has to come back for the result.
    pickup_seconds: float = 600.0
    # Run an approved call at once even when its agent is not waiting; the result is kept for it.
    run_unattended: bool = False
    # What an explicit cancel from the agent does: withdraw the request, or keep it pending.
    keep_on_cancel: bool = False
    # What approvers are shown (gateway.policy_context): lookups run when the request is made, the sentence
    # that titles it, and whether the agent states its reason ("optional" / "required"; None: not asked).
    context: tuple[ContextSpec, ...] = ()
    summary: str | None = None
    agent_reason: AgentReason | None = None
    # Whether an approver may also allow the same call for a while, and within what (gateway.policy_grants).
    grants: GrantOffer | None = None
    # What approvers may do besides yes or no (gateway.policy_decisions): change these argument paths, who
    # else is asked after how long, and how long before expiry they are reminded (None: the channel's own).
    editable: tuple[str, ...] = ()
    escalate: tuple[EscalationStep, ...] = ()
    remind_before_seconds: float | None = None


@dataclass(frozen=True)
class ToolPolicy:
    key: str
    deny_if: tuple[Rule, ...] = ()
    require: tuple[Rule, ...] = ()
    limits: tuple[Limit, ...] = ()
    require_approval: tuple[Rule, ...] = ()
    approval: ApprovalSettings | None = None

    @property
    def is_empty(self) -> bool:
        return not (self.deny_if or self.require or self.limits or self.require_approval)


@dataclass(frozen=True)
class Evaluation:
    action: Action
    message: str
    rule: str
    tool_key: str | None
    limits: tuple[Limit, ...]
    approval: ApprovalSettings | None


class Policy:
    """A validated document. Build it with parse_policy or load_policy."""

    source: str
    default: Default
    hide: tuple[str, ...]
    tools: Mapping[str, ToolPolicy]
    all_tools: ToolPolicy
    prompts: ReadPolicy
    resources: ReadPolicy
    version: str
    list_only_callable: bool

    def __init__(
        self,
        *,
        source: str,
        default: Default,
        hide: Sequence[str] = (),
        tools: Mapping[str, ToolPolicy] | None = None,
        all_tools: ToolPolicy | None = None,
        prompts: ReadPolicy | None = None,
        resources: ReadPolicy | None = None,
        version: str = "",
        list_only_callable: bool = False,
    ) -> None:
        self.source = source
        # Leave out of an agent's tools/list every tool this policy refuses that agent whatever it sends.
        self.list_only_callable = list_only_callable
        # The content hash of the document: every request and policy decision records it.
        self.version = version
        self.default = default
        self.hide = tuple(hide)
        self.tools = MappingProxyType(dict(tools or {}))
        self.all_tools = all_tools or ToolPolicy(key="all_tools")
        # Without their own block, prompts and resources follow the document's default.
        self.prompts = prompts or ReadPolicy("prompts", default)
        self.resources = resources or ReadPolicy("resources", default)
        # Longest pattern first is "most specific wins"; sorted() is stable, so ties keep document order.
        self._globs = sorted((key for key in self.tools if is_glob(key)), key=len, reverse=True)

    def __repr__(self) -> str:
        return f"Policy(source={self.source!r}, default={self.default!r}, tools={list(self.tools)!r})"

    def is_hidden(self, tool: str) -> bool:
        return any(entry == tool or (is_glob(entry) and fnmatchcase(tool, entry)) for entry in self.hide)

    def tool_policy(self, tool: str) -> ToolPolicy | None:
        exact = self.tools.get(tool)
        if exact is not None:
            return exact
        for pattern in self._globs:
            if fnmatchcase(tool, pattern):
                return self.tools[pattern]
        return None

    def evaluate(
        self,
        tool: str,
        arguments: Mapping[str, Any],
        input_schema: Mapping[str, Any] | None = None,
        *,
        agent: AgentIdentity | None = None,
    ) -> Evaluation:
        """Decide a call. Counters are not checked here: the caller reserves ``limits`` with a RateLimiter.

        With the tool's ``input_schema``, fields left out are evaluated with the schema's declared
        defaults, the values the upstream will act on. A type mismatch makes ``deny_if`` and
        ``require_approval`` match and ``require`` fail: every rule fails closed. ``agent`` is who
        calls, for conditions on ``agent.name`` and ``agent.groups``; without it they see no agent.
        """
        arguments = with_defaults(arguments, input_schema)
        listed = self.tool_policy(tool)
        key = listed.key if listed else None
        if self.is_hidden(tool):
            return Evaluation("hidden", f"tool '{tool}' is not available", "hide", key, (), None)
        if listed is None and self.default == "deny":
            message = f"tool '{tool}' is not allowed by the policy (default deny)"
            return Evaluation("deny", message, "default", None, (), None)

        layers = (self.all_tools, listed) if listed else (self.all_tools,)
        for layer in layers:
            for rule in layer.deny_if:
                if rule.matches(arguments, mismatch=True, agent=agent):
                    return Evaluation("deny", rule.explained(arguments), rule.where, key, (), None)
        for layer in layers:
            for rule in layer.require:
                if not rule.matches(arguments, mismatch=False, agent=agent):
                    return Evaluation("deny", rule.explained(arguments), rule.where, key, (), None)
        limits = tuple(limit for layer in layers for limit in layer.limits)
        for layer in layers:
            for rule in layer.require_approval:
                if rule.matches(arguments, mismatch=True, agent=agent):
                    approval = self._approval_for(listed)
                    if rule.approval:
                        approval = replace(approval, **rule.approval)
                    return Evaluation("hold", rule.explained(arguments), rule.where, key, limits, approval)
        return Evaluation("allow", "", tool_where(key) if key else "default", key, limits, None)

    def refuses_outright(self, tool: str, agent: AgentIdentity | None) -> bool:
        """Whether every call of `tool` by `agent` is refused, whatever its arguments.

        A deny that tests an argument may let some call through, so it does not count; one that
        tests only who calls (or nothing) does, and so does a `require` rule that this agent fails.
        """
        listed = self.tool_policy(tool)
        if self.is_hidden(tool) or (listed is None and self.default == "deny"):
            return True
        layers = (self.all_tools, listed) if listed else (self.all_tools,)
        for layer in layers:
            if any(not rule.on_arguments and rule.matches({}, agent=agent) for rule in layer.deny_if):
                return True
            if any(not rule.on_arguments and not rule.matches({}, agent=agent) for rule in layer.require):
                return True
        return False

    def agent_reason(self, tool: str) -> AgentReason | None:
        """Whether a call of `tool` that may be held carries the agent's reason (gateway.policy_context)."""
        if self.is_hidden(tool):
            return None
        listed = self.tool_policy(tool)
        if not (self.all_tools.require_approval or (listed and listed.require_approval)):
            return None
        return self._approval_for(listed).agent_reason

    def _approval_for(self, listed: ToolPolicy | None) -> ApprovalSettings:
        if listed is not None and listed.approval is not None:
            return listed.approval
        return self.all_tools.approval or ApprovalSettings()


def _resolve(args: Mapping[str, Any], path: str, agent: AgentIdentity | None = None) -> Any:
    if path in AGENT_PATHS:
        if agent is None:
            return _MISSING
        return agent.name if path == "agent.name" else list(agent.groups)
    current: Any = args
    for segment in path.split(".")[1:]:
        if isinstance(current, Mapping):
            if segment not in current:
                return _MISSING
            current = current[segment]
        elif isinstance(current, list | tuple) and segment.isascii() and segment.isdigit():
            index = int(segment)
            if index >= len(current):
                return _MISSING
            current = current[index]
        else:
            return _MISSING
    return current


def is_glob(key: str) -> bool:
    return any(char in key for char in "*?[")


def tool_where(key: str) -> str:
    return f"tools[{json.dumps(key, ensure_ascii=False)}]"
