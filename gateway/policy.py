"""The policy document: parse and validate it, and evaluate a tool call against it.

Lint warnings and `explain` live in `gateway.policy_report`.

The format is PolicyLayer's (``version``, ``default``, ``hide``, ``all_tools``, ``tools`` with ``deny_if``,
``require`` and ``limits``), so its published documents load unchanged. Countersign adds
``require_approval`` rules and an ``approval`` block per tool (and on ``all_tools``), which park a call
for a human instead of refusing it.
"""

from __future__ import annotations

import json
import operator
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, cast, get_args

from approvals.durations import parse_duration, parse_hold_bound
from gateway.arguments import with_defaults

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

_TOP_LEVEL_KEYS: Final = ("version", "default", "hide", "all_tools", "tools")
_TOOL_KEYS: Final = ("deny_if", "require", "limits", "require_approval", "approval")
_LIMIT_KEYS: Final = ("counter", "window", "max", "scope")
_CONDITION_KEYS: Final = ("path", "op", "value")
_APPROVAL_KEYS: Final = (
    "timeout",
    "approvers",
    "quorum",
    "channels",
    "slack_channel",
    "reject_reason",
    "max_hold",
    "pickup_window",
    "run_unattended",
    "on_cancel",
)
_ORDERING: Final[Mapping[str, Callable[[Any, Any], Any]]] = {
    "lt": operator.lt,
    "lte": operator.le,
    "gt": operator.gt,
    "gte": operator.ge,
}
_MISSING: Final = object()


class PolicyError(Exception):
    """A document that does not validate; ``path`` points at the bad field."""

    def __init__(self, source: str, path: str, message: str) -> None:
        super().__init__(f"{source}: {path}: {message}")
        self.source = source
        self.path = path
        self.message = message


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
        return f"{self.path} is {_json_type(actual)}, which '{self.op}' cannot compare with {expected}"


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

    def __init__(
        self,
        *,
        source: str,
        default: Default,
        hide: Sequence[str] = (),
        tools: Mapping[str, ToolPolicy] | None = None,
        all_tools: ToolPolicy | None = None,
    ) -> None:
        self.source = source
        self.default = default
        self.hide = tuple(hide)
        self.tools = MappingProxyType(dict(tools or {}))
        self.all_tools = all_tools or ToolPolicy(key="all_tools")
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

    def _approval_for(self, listed: ToolPolicy | None) -> ApprovalSettings:
        if listed is not None and listed.approval is not None:
            return listed.approval
        return self.all_tools.approval or ApprovalSettings()


def parse_policy(document: object, source: str = "<policy>") -> Policy:
    """Validate a decoded document; raise PolicyError naming the first bad field."""
    return _Parser(source).document(document)


def load_policy(path: str | os.PathLike[str]) -> Policy:
    source = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(source, "$", f"cannot read the file: {exc}") from exc
    try:
        document = json.loads(text, object_pairs_hook=_refuse_duplicate_keys, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise PolicyError(source, "$", f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    except ValueError as exc:
        raise PolicyError(source, "$", f"invalid JSON: {exc}") from exc
    return parse_policy(document, source)


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, message: str) -> PolicyError:
        return PolicyError(self.source, path, message)

    def document(self, document: object) -> Policy:
        top = self.mapping(document, "$", _TOP_LEVEL_KEYS, root=True)
        if "version" not in top:
            raise self.fail("version", 'missing; a policy starts with "version": "1"')
        if top["version"] != "1" or not isinstance(top["version"], str):
            raise self.fail("version", f'unsupported version {top["version"]!r}; only "1" is recognised')
        if "default" not in top:
            raise self.fail("default", 'missing; expected "allow" or "deny"')
        default = top["default"]
        if default not in ("allow", "deny") or not isinstance(default, str):
            raise self.fail("default", f'expected "allow" or "deny", not {default!r}')

        hide = self.strings(top.get("hide", []), "hide")
        all_tools = self.tool_policy(top.get("all_tools", {}), "all_tools", "all_tools")
        tools_doc = self.mapping(top.get("tools", {}), "tools", None)
        tools = {key: self.tool_policy(body, key, tool_where(key)) for key, body in tools_doc.items()}
        return Policy(source=self.source, default=cast(Default, default), hide=hide, tools=tools, all_tools=all_tools)

    def mapping(
        self, value: object, path: str, allowed: Sequence[str] | None, *, root: bool = False
    ) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(path, f"expected an object, not {_json_type(value)}")
        for key in value:
            if not isinstance(key, str) or not key:
                raise self.fail(path, f"keys must be non-empty strings, not {key!r}")
            if allowed is not None and key not in allowed:
                where = key if root else f"{path}.{key}"
                raise self.fail(where, f"unknown key '{key}'; expected one of {', '.join(allowed)}")
        return value

    def sequence(self, value: object, path: str) -> Sequence[Any]:
        if not isinstance(value, list | tuple):
            raise self.fail(path, f"expected a list, not {_json_type(value)}")
        return value

    def strings(self, value: object, path: str, *, unique: bool = False) -> tuple[str, ...]:
        items = self.sequence(value, path)
        for index, item in enumerate(items):
            if not isinstance(item, str) or not item:
                raise self.fail(f"{path}[{index}]", f"expected a non-empty string, not {item!r}")
            # A repeated approver would let one person count twice towards a quorum.
            if unique and item in items[:index]:
                raise self.fail(f"{path}[{index}]", f"{item!r} is listed more than once")
        return tuple(items)

    def tool_policy(self, value: object, key: str, where: str) -> ToolPolicy:
        body = self.mapping(value, where, _TOOL_KEYS)
        approval = body.get("approval")
        return ToolPolicy(
            key=key,
            deny_if=self.rules(body.get("deny_if", []), f"{where}.deny_if", "on_deny"),
            require=self.rules(body.get("require", []), f"{where}.require", "on_deny"),
            limits=tuple(
                self.limit(item, f"{where}.limits[{index}]")
                for index, item in enumerate(self.sequence(body.get("limits", []), f"{where}.limits"))
            ),
            require_approval=self.rules(body.get("require_approval", []), f"{where}.require_approval", "reason"),
            approval=None if approval is None else self.approval(approval, f"{where}.approval"),
        )

    def rules(self, value: object, path: str, message_key: str) -> tuple[Rule, ...]:
        rules: list[Rule] = []
        for index, item in enumerate(self.sequence(value, path)):
            where = f"{path}[{index}]"
            body = self.mapping(item, where, ("conditions", message_key))
            conditions = tuple(
                self.condition(raw, f"{where}.conditions[{n}]")
                for n, raw in enumerate(self.sequence(body.get("conditions", []), f"{where}.conditions"))
            )
            message = body.get(message_key, _default_message(path.rsplit(".", 1)[-1], where))
            if not isinstance(message, str) or not message.strip():
                raise self.fail(f"{where}.{message_key}", f"expected a non-empty string, not {message!r}")
            rules.append(Rule(conditions, message, where))
        return tuple(rules)

    def condition(self, value: object, where: str) -> Condition:
        body = self.mapping(value, where, _CONDITION_KEYS)
        path = body.get("path")
        if not isinstance(path, str) or not re.fullmatch(r"args(\.[^.]+)+", path):
            raise self.fail(f"{where}.path", f"expected 'args.<field>' such as 'args.order.quantity', not {path!r}")
        op = body.get("op")
        if op not in OPS:
            raise self.fail(f"{where}.op", f"unknown op {op!r}; expected one of {', '.join(OPS)}")
        if "value" not in body:
            if op != "exists":
                raise self.fail(f"{where}.value", f"missing; op '{op}' compares against a value")
            return Condition(path, op, True)
        expected = body["value"]
        bad = _check_value(op, expected)
        if bad:
            raise self.fail(f"{where}.value", bad)
        return Condition(path, op, tuple(expected) if op in ("in", "not_in") else expected)

    def limit(self, value: object, where: str) -> Limit:
        body = self.mapping(value, where, _LIMIT_KEYS)
        for required in ("counter", "window", "max"):
            if required not in body:
                raise self.fail(f"{where}.{required}", "missing")
        counter, window, maximum = body["counter"], body["window"], body["max"]
        scope = body.get("scope", "grant")
        if not isinstance(counter, str) or not counter:
            raise self.fail(f"{where}.counter", f"expected a non-empty string, not {counter!r}")
        if not isinstance(window, str) or window not in WINDOW_SECONDS:
            raise self.fail(f"{where}.window", f"expected one of {', '.join(WINDOW_SECONDS)}, not {window!r}")
        if isinstance(maximum, bool) or not isinstance(maximum, int) or maximum < 1:
            raise self.fail(f"{where}.max", f"expected a whole number >= 1, not {maximum!r}")
        if scope not in SCOPES:
            raise self.fail(f"{where}.scope", f"expected one of {', '.join(SCOPES)}, not {scope!r}")
        return Limit(counter, cast(Window, window), maximum, cast(Scope, scope), where)

    def approval(self, value: object, where: str) -> ApprovalSettings:
        body = self.mapping(value, where, _APPROVAL_KEYS)
        settings = ApprovalSettings()
        timeout = self.duration(body, "timeout", where)
        approvers = self.strings(body.get("approvers", []), f"{where}.approvers", unique=True)
        for index, name in enumerate(approvers):
            if name.startswith("group:") and not name[len("group:") :]:
                raise self.fail(f"{where}.approvers[{index}]", "'group:' needs a group name after the colon")
        quorum = body.get("quorum", settings.quorum)
        if isinstance(quorum, bool) or not isinstance(quorum, int) or quorum < 1:
            raise self.fail(f"{where}.quorum", f"expected a whole number >= 1, not {quorum!r}")
        channels = self.strings(body.get("channels", list(settings.channels)), f"{where}.channels", unique=True)
        if not channels:
            raise self.fail(f"{where}.channels", f"needs at least one of {', '.join(CHANNELS)}")
        for index, channel in enumerate(channels):
            if channel not in CHANNELS:
                raise self.fail(
                    f"{where}.channels[{index}]",
                    f"unknown channel {channel!r}; expected {', '.join(CHANNELS)}",
                )
        slack_channel = body.get("slack_channel")
        if slack_channel is not None and (not isinstance(slack_channel, str) or not slack_channel):
            raise self.fail(f"{where}.slack_channel", f"expected a non-empty string, not {slack_channel!r}")
        reject_reason = body.get("reject_reason", "optional")
        if reject_reason not in ("required", "optional") or not isinstance(reject_reason, str):
            raise self.fail(f"{where}.reject_reason", f'expected "required" or "optional", not {reject_reason!r}')
        run_unattended = body.get("run_unattended", False)
        if not isinstance(run_unattended, bool):
            raise self.fail(f"{where}.run_unattended", f"expected true or false, not {run_unattended!r}")
        on_cancel = body.get("on_cancel", "withdraw")
        if on_cancel not in ("withdraw", "keep") or not isinstance(on_cancel, str):
            raise self.fail(f"{where}.on_cancel", f'expected "withdraw" or "keep", not {on_cancel!r}')
        pickup = self.duration(body, "pickup_window", where)
        return ApprovalSettings(
            timeout_seconds=settings.timeout_seconds if timeout is None else timeout,
            approvers=approvers,
            quorum=quorum,
            channels=channels,
            slack_channel=slack_channel,
            reject_reason_required=reject_reason == "required",
            max_hold_seconds=self.hold_bound(body, where),
            pickup_seconds=settings.pickup_seconds if pickup is None else pickup,
            run_unattended=run_unattended,
            keep_on_cancel=on_cancel == "keep",
        )

    def hold_bound(self, body: Mapping[str, Any], where: str) -> float | None:
        if "max_hold" not in body:
            return None
        value = body["max_hold"]
        try:
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise ValueError(f'expected a duration such as "50s", or "none" for no bound, not {value!r}')
            return parse_hold_bound(value)
        except ValueError as exc:
            raise self.fail(f"{where}.max_hold", str(exc)) from None

    def duration(self, body: Mapping[str, Any], key: str, where: str) -> float | None:
        if key not in body:
            return None
        try:
            seconds = parse_duration(body[key])
        except ValueError as exc:
            raise self.fail(f"{where}.{key}", str(exc)) from None
        if seconds <= 0:
            raise self.fail(f"{where}.{key}", "must be longer than zero")
        return seconds


def _check_value(op: str, value: Any) -> str | None:
    """Why ``value`` cannot work with ``op``, or None. Checked at load so a typo never reaches a live call."""
    if op in ("in", "not_in") and not isinstance(value, list | tuple):
        return f"op '{op}' needs a list of values, not {_json_type(value)}"
    if op in _ORDERING and not (_is_number(value) or isinstance(value, str)):
        return f"op '{op}' needs a number or a string, not {_json_type(value)}"
    if op == "exists" and not isinstance(value, bool):
        return f"op 'exists' needs true or false, not {value!r}"
    if op == "regex":
        if not isinstance(value, str):
            return f"op 'regex' needs a pattern string, not {_json_type(value)}"
        try:
            re.compile(value)
        except re.error as exc:
            return f"invalid regular expression {value!r}: {exc}"
    return None


def _default_message(kind: str, where: str) -> str:
    if kind == "require_approval":
        return f"approval required by policy rule {where}"
    if kind == "require":
        return f"the call does not meet policy rule {where}"
    return f"denied by policy rule {where}"


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
    if op in _ORDERING:
        return (_is_number(actual) and _is_number(expected)) or (isinstance(actual, str) and isinstance(expected, str))
    if op == "regex":
        return isinstance(actual, str)
    if op == "contains":
        return isinstance(actual, list | tuple) or (isinstance(actual, str) and isinstance(expected, str))
    return True


def _kind(value: Any) -> str:
    # 1 and 1.0 are one kind (both JSON numbers); true is not a number.
    return "number" if _is_number(value) else _json_type(value)


def _compare(op: str, actual: Any, expected: Any, pattern: re.Pattern[str] | None) -> bool:
    if op == "eq":
        return _json_equal(actual, expected)
    if op == "neq":
        return not _json_equal(actual, expected)
    if op == "in":
        return any(_json_equal(actual, candidate) for candidate in expected)
    if op == "not_in":
        return not any(_json_equal(actual, candidate) for candidate in expected)
    if op in _ORDERING:
        # Callers check _comparable first; a number is never "greater" than a string, so never raise.
        return _comparable(op, actual, expected) and bool(_ORDERING[op](actual, expected))
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


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_glob(key: str) -> bool:
    return any(char in key for char in "*?[")


def tool_where(key: str) -> str:
    return f"tools[{json.dumps(key, ensure_ascii=False)}]"


def _json_type(value: object) -> str:
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


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads would silently keep the last duplicate; in a policy that can hide a rule from review.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"key {key!r} appears twice in one object")
        result[key] = value
    return result


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
