"""The policy model: the rules a validated document holds, and how a tool call is evaluated against them.

`gateway.policy_document` builds a `Policy` from JSON; `gateway.policy` is the import most code uses.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from types import MappingProxyType
from typing import Any, Final, Literal, get_args

from approvals.views import EscalationStep
from gateway.arguments import with_defaults
from gateway.policy_context import AgentReason, ContextSpec
from gateway.policy_reads import ReadPolicy

Op = Literal["eq", "neq", "in", "not_in", "lt", "lte", "gt", "gte", "regex", "contains", "exists"]
Window = Literal["second", "minute", "hour", "day"]
Scope = Literal["grant", "session", "global"]
Channel = Literal["web", "slack", "api"]
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

ORDERING: Final[Mapping[str, Callable[[Any, Any], Any]]] = {
    "lt": operator.lt,
    "lte": operator.le,
    "gt": operator.gt,
    "gte": operator.ge,
}
_MISSING: Final = object()


@dataclass(frozen=True)
class Condition:
    """``{path, op, value}``; ``path`` is ``args.<dotted.path>`` with numeric segments indexing lists."""

    path: str
    op: str
    value: Any
    _pattern: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.op == "regex":
            object.__setattr__(self, "_pattern", re.compile(self.value))

    def holds(self, args: Mapping[str, Any], *, mismatch: bool = False) -> bool:
        """Whether the condition holds for ``args``.

        ``mismatch`` is the answer when the argument's type cannot be compared with ``value`` (a string
        against a number, ``"false"`` against ``false``). The rule's kind decides it, so that every rule
        fails closed: an upstream that coerces ``"5000"`` to 5000 must not slip past ``gt 1000``.
        """
        actual = _resolve(args, self.path)
        if self.op == "exists":
            # JSON null counts as absent: a required field sent as null was not really supplied.
            return (actual is not _MISSING and actual is not None) == bool(self.value)
        if actual is _MISSING:
            # Nothing is equal to an absent field or in a list with it; everything else needs a value.
            return self.op in HOLD_WHEN_ABSENT
        if not _comparable(self.op, actual, self.value):
            return mismatch
        return _compare(self.op, actual, self.value, self._pattern)

    def mismatch(self, args: Mapping[str, Any]) -> str | None:
        """What makes the argument incomparable with ``value`` (for the message), or None."""
        actual = _resolve(args, self.path)
        if self.op == "exists" or actual is _MISSING or _comparable(self.op, actual, self.value):
            return None
        expected = json.dumps(list(self.value) if self.op in ("in", "not_in") else self.value, ensure_ascii=False)
        return f"{self.path} is {json_type(actual)}, which '{self.op}' cannot compare with {expected}"


@dataclass(frozen=True)
class Rule:
    conditions: tuple[Condition, ...]
    message: str
    where: str

    def matches(self, args: Mapping[str, Any], *, mismatch: bool = False) -> bool:
        """All conditions hold; ``mismatch`` is what a type mismatch counts as (see Condition.holds)."""
        return all(condition.holds(args, mismatch=mismatch) for condition in self.conditions)

    def explained(self, args: Mapping[str, Any]) -> str:
        """The rule's message, saying so when a value of the wrong type decided it (the agent can fix that)."""
        notes = [note for condition in self.conditions if (note := condition.mismatch(args))]
        if not notes:
            return self.message
        return f"{self.message} ({'; '.join(notes)}: a value of the wrong type counts against the call)"


@dataclass(frozen=True)
class Limit:
    counter: str
    window: Window
    max: int
    scope: Scope
    where: str

    @property
    def window_seconds(self) -> float:
        return WINDOW_SECONDS[self.window]

    def describe(self) -> str:
        """``"at most 10 calls per minute per agent"`` — the wording agents and approvers read."""
        calls = "call" if self.max == 1 else "calls"
        return f"at most {self.max} {calls} per {self.window} {_SCOPE_PHRASE[self.scope]}"


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
    ) -> None:
        self.source = source
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
        self, tool: str, arguments: Mapping[str, Any], input_schema: Mapping[str, Any] | None = None
    ) -> Evaluation:
        """Decide a call. Counters are not checked here: the caller reserves ``limits`` with a RateLimiter.

        With the tool's ``input_schema``, fields left out are evaluated with the schema's declared
        defaults, the values the upstream will act on. A type mismatch makes ``deny_if`` and
        ``require_approval`` match and ``require`` fail: every rule fails closed.
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
                if rule.matches(arguments, mismatch=True):
                    return Evaluation("deny", rule.explained(arguments), rule.where, key, (), None)
        for layer in layers:
            for rule in layer.require:
                if not rule.matches(arguments, mismatch=False):
                    return Evaluation("deny", rule.explained(arguments), rule.where, key, (), None)
        limits = tuple(limit for layer in layers for limit in layer.limits)
        for layer in layers:
            for rule in layer.require_approval:
                if rule.matches(arguments, mismatch=True):
                    approval = self._approval_for(listed)
                    return Evaluation("hold", rule.explained(arguments), rule.where, key, limits, approval)
        return Evaluation("allow", "", tool_where(key) if key else "default", key, limits, None)

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


def _resolve(args: Mapping[str, Any], path: str) -> Any:
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


def _comparable(op: str, actual: Any, expected: Any) -> bool:
    """Whether ``actual`` is of a JSON type ``op`` can compare with ``expected``.

    Only the value at the path is looked at, not what is nested inside it. A rule whose value is null
    asks about null, so anything else simply differs; an argument sent as null where the rule expects
    another type is a mismatch (an upstream may read null as its default).
    """
    if op in ("eq", "neq", "in", "not_in"):
        candidates = expected if op in ("in", "not_in") else (expected,)
        kinds = {_kind(candidate) for candidate in candidates}
        return _kind(actual) in kinds or kinds <= {"null"}
    if op in ORDERING:
        return (is_number(actual) and is_number(expected)) or (isinstance(actual, str) and isinstance(expected, str))
    if op == "regex":
        return isinstance(actual, str)
    if op == "contains":
        return isinstance(actual, list | tuple) or (isinstance(actual, str) and isinstance(expected, str))
    return True


def _kind(value: Any) -> str:
    # 1 and 1.0 are one kind (both JSON numbers); true is not a number.
    return "number" if is_number(value) else json_type(value)


def _compare(op: str, actual: Any, expected: Any, pattern: re.Pattern[str] | None) -> bool:
    if op == "eq":
        return _json_equal(actual, expected)
    if op == "neq":
        return not _json_equal(actual, expected)
    if op == "in":
        return any(_json_equal(actual, candidate) for candidate in expected)
    if op == "not_in":
        return not any(_json_equal(actual, candidate) for candidate in expected)
    if op in ORDERING:
        # Callers check _comparable first; a number is never "greater" than a string, so never raise.
        return _comparable(op, actual, expected) and bool(ORDERING[op](actual, expected))
    if op == "regex":
        return isinstance(actual, str) and pattern is not None and pattern.search(actual) is not None
    if op == "contains":
        if isinstance(actual, str):
            return isinstance(expected, str) and expected in actual
        if isinstance(actual, list | tuple):
            return any(_json_equal(item, expected) for item in actual)
    return False


def _json_equal(left: Any, right: Any) -> bool:
    """Equality as JSON sees it: ``true`` is not ``1``, while ``1`` and ``1.0`` are the same number."""
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left is right
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        return left.keys() == right.keys() and all(_json_equal(left[k], right[k]) for k in left)
    if isinstance(left, list | tuple) and isinstance(right, list | tuple):
        return len(left) == len(right) and all(_json_equal(a, b) for a, b in zip(left, right, strict=True))
    if isinstance(left, list | tuple | Mapping) or isinstance(right, list | tuple | Mapping):
        return False
    return bool(left == right)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_glob(key: str) -> bool:
    return any(char in key for char in "*?[")


def tool_where(key: str) -> str:
    return f"tools[{json.dumps(key, ensure_ascii=False)}]"


def json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__
