"""Read and validate a policy document into a `Policy`, naming the first bad field by its path.

The keys listed here are the whole format; docs/policy.md documents each one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, cast

from approvals.durations import parse_duration, parse_hold_bound
from approvals.grant_terms import GrantOffer
from gateway.policy_context import ContextSpec, parse_agent_reason, parse_lookups, parse_summary
from gateway.policy_decisions import check_terms, parse_editable, parse_escalate, parse_remind_before
from gateway.policy_forms import (
    APPROVAL_FIELDS,
    SHORT_FORM_KEYS,
    agent_condition_problem,
    client_only_for_the_caller,
    short_forms,
)
from gateway.policy_grants import parse_grants
from gateway.policy_model import (
    AGENT_PATHS,
    CHANNELS,
    OPS,
    ORDERING,
    SCOPES,
    WINDOW_SECONDS,
    ApprovalSettings,
    Condition,
    Default,
    Limit,
    Policy,
    Rule,
    Scope,
    ToolPolicy,
    Window,
    is_number,
    json_type,
    tool_where,
)
from gateway.policy_reads import READ_KEYS, ReadKind, ReadPolicy

_TOP_LEVEL_KEYS: Final = (
    "version",
    "default",
    "hide",
    "all_tools",
    "tools",
    "prompts",
    "resources",
    "list_only_callable",
)
# `action`, `reason` and `rate_limit` are PolicyLayer's short forms (gateway.policy_forms).
_TOOL_KEYS: Final = ("deny_if", "require", "limits", "require_approval", "approval", *SHORT_FORM_KEYS)
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
    "context",
    "summary",
    "agent_reason",
    "grants",
    "editable",
    "escalate",
    "remind_before",
)


class PolicyError(Exception):
    """A document that does not validate; ``path`` points at the bad field."""

    def __init__(self, source: str, path: str, message: str) -> None:
        super().__init__(f"{source}: {path}: {message}")
        self.source = source
        self.path = path
        self.message = message


def parse_policy(document: object, source: str = "<policy>", *, version: str | None = None) -> Policy:
    """Validate a decoded document; raise PolicyError naming the first bad field.

    `version` is the content hash requests record (load_policy gives the file's SHA-256); by
    default, the SHA-256 of the document's canonical JSON.
    """
    if version is None:
        canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
        version = hashlib.sha256(canonical.encode()).hexdigest()
    return _Parser(source, version).document(document)


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read and validate a policy file; its version is the SHA-256 of the file (as `sha256sum` prints it)."""
    source = os.fspath(path)
    try:
        raw = Path(path).read_bytes()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(source, "$", f"cannot read the file: {exc}") from exc
    try:
        document = json.loads(text, object_pairs_hook=_refuse_duplicate_keys, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise PolicyError(source, "$", f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    except ValueError as exc:
        raise PolicyError(source, "$", f"invalid JSON: {exc}") from exc
    return parse_policy(document, source, version=hashlib.sha256(raw).hexdigest())


class _Parser:
    def __init__(self, source: str, version: str) -> None:
        self.source = source
        self.version = version

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

        list_only_callable = top.get("list_only_callable", False)
        if not isinstance(list_only_callable, bool):
            raise self.fail("list_only_callable", f"expected true or false, not {list_only_callable!r}")
        hide = self.strings(top.get("hide", []), "hide")
        all_tools = self.tool_policy(top.get("all_tools", {}), "all_tools", "all_tools")
        tools_doc = self.mapping(top.get("tools", {}), "tools", None)
        tools = {key: self.tool_policy(body, key, tool_where(key)) for key, body in tools_doc.items()}
        return Policy(
            source=self.source,
            default=cast(Default, default),
            hide=hide,
            tools=tools,
            all_tools=all_tools,
            prompts=self.read_policy(top.get("prompts", {}), "prompts", cast(Default, default)),
            resources=self.read_policy(top.get("resources", {}), "resources", cast(Default, default)),
            version=self.version,
            list_only_callable=list_only_callable,
        )

    def read_policy(self, value: object, kind: ReadKind, inherited: Default) -> ReadPolicy:
        body = self.mapping(value, kind, READ_KEYS)
        default = body.get("default", inherited)
        if default not in ("allow", "deny") or not isinstance(default, str):
            raise self.fail(f"{kind}.default", f'expected "allow" or "deny", not {default!r}')
        return ReadPolicy(
            kind,
            cast(Default, default),
            allow=self.strings(body.get("allow", []), f"{kind}.allow"),
            deny=self.strings(body.get("deny", []), f"{kind}.deny"),
            hide=self.strings(body.get("hide", []), f"{kind}.hide"),
        )

    def mapping(
        self, value: object, path: str, allowed: Sequence[str] | None, *, root: bool = False
    ) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(path, f"expected an object, not {json_type(value)}")
        for key in value:
            if not isinstance(key, str) or not key:
                raise self.fail(path, f"keys must be non-empty strings, not {key!r}")
            if allowed is not None and key not in allowed:
                where = key if root else f"{path}.{key}"
                raise self.fail(where, f"unknown key '{key}'; expected one of {', '.join(allowed)}")
        return value

    def sequence(self, value: object, path: str) -> Sequence[Any]:
        if not isinstance(value, list | tuple):
            raise self.fail(path, f"expected a list, not {json_type(value)}")
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
        denied, rate_limit = short_forms(body, key, where, self.fail)
        tool = ToolPolicy(
            key=key,
            deny_if=(*denied, *self.rules(body.get("deny_if", []), f"{where}.deny_if", "on_deny")),
            require=self.rules(body.get("require", []), f"{where}.require", "on_deny"),
            limits=(
                *(
                    self.limit(item, f"{where}.limits[{index}]")
                    for index, item in enumerate(self.sequence(body.get("limits", []), f"{where}.limits"))
                ),
                *rate_limit,
            ),
            require_approval=self.rules(body.get("require_approval", []), f"{where}.require_approval", "reason"),
            approval=None if approval is None else self.approval(approval, f"{where}.approval"),
        )
        client_only_for_the_caller(tool, self.fail)
        return tool

    def rules(self, value: object, path: str, message_key: str) -> tuple[Rule, ...]:
        rules: list[Rule] = []
        holds = message_key == "reason"
        for index, item in enumerate(self.sequence(value, path)):
            where = f"{path}[{index}]"
            body = self.mapping(
                item, where, ("conditions", message_key, "approval") if holds else ("conditions", message_key)
            )
            conditions = tuple(
                self.condition(raw, f"{where}.conditions[{n}]")
                for n, raw in enumerate(self.sequence(body.get("conditions", []), f"{where}.conditions"))
            )
            message = body.get(message_key, _default_message(path.rsplit(".", 1)[-1], where))
            if not isinstance(message, str) or not message.strip():
                raise self.fail(f"{where}.{message_key}", f"expected a non-empty string, not {message!r}")
            overrides = self.rule_approval(body["approval"], f"{where}.approval") if "approval" in body else {}
            rules.append(Rule(conditions, message, where, overrides))
        return tuple(rules)

    def rule_approval(self, value: object, where: str) -> dict[str, Any]:
        """A require_approval rule's own approval fields: only those it names, laid over the tool's block."""
        body = self.mapping(value, where, _APPROVAL_KEYS)
        if "agent_reason" in body:
            raise self.fail(
                f"{where}.agent_reason",
                "belongs to the tool's approval block, not to one rule: it changes the schema the tool is listed with",
            )
        settings = self.approval(body, where)
        return {APPROVAL_FIELDS[key]: getattr(settings, APPROVAL_FIELDS[key]) for key in body}

    def condition(self, value: object, where: str) -> Condition:
        body = self.mapping(value, where, _CONDITION_KEYS)
        path = body.get("path")
        if not isinstance(path, str) or not (re.fullmatch(r"args(\.[^.]+)+", path) or path in AGENT_PATHS):
            raise self.fail(
                f"{where}.path",
                f"expected 'args.<field>' such as 'args.order.quantity', 'agent.name' or 'agent.groups', not {path!r}",
            )
        op = body.get("op")
        if op not in OPS:
            raise self.fail(f"{where}.op", f"unknown op {op!r}; expected one of {', '.join(OPS)}")
        if path in AGENT_PATHS:
            problem = agent_condition_problem(path, op, body.get("value"))
            if problem:
                raise self.fail(f"{where}.op" if problem.startswith("op") else f"{where}.value", problem)
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
        if "client" in channels and approvers:
            # The human at the agent's client is the agent's own user, never a named approver.
            raise self.fail(
                f"{where}.channels",
                "'client' asks the human at the calling agent's own client, so it cannot be combined with "
                f"approvers ({', '.join(approvers)}): remove 'client' or the approvers",
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
        check_terms(body, approvers, quorum, where, self.fail)
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
            context=self.lookups(body, where),
            summary=None if "summary" not in body else parse_summary(body["summary"], f"{where}.summary", self.fail),
            agent_reason=(
                None
                if "agent_reason" not in body
                else parse_agent_reason(body["agent_reason"], f"{where}.agent_reason", self.fail)
            ),
            grants=None if "grants" not in body else self.grants(body["grants"], f"{where}.grants", quorum),
            editable=parse_editable(body["editable"], f"{where}.editable", self.fail) if "editable" in body else (),
            escalate=parse_escalate(body["escalate"], f"{where}.escalate", self.fail) if "escalate" in body else (),
            remind_before_seconds=(
                parse_remind_before(body["remind_before"], f"{where}.remind_before", self.fail)
                if "remind_before" in body
                else None
            ),
        )

    def grants(self, value: object, where: str, quorum: int) -> GrantOffer:
        return parse_grants(value, where, self.fail, quorum=quorum)

    def lookups(self, body: Mapping[str, Any], where: str) -> tuple[ContextSpec, ...]:
        if "context" not in body:
            return ()
        return parse_lookups(body["context"], f"{where}.context", self.fail, _seconds)

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
        return f"op '{op}' needs a list of values, not {json_type(value)}"
    if op in ORDERING and not (is_number(value) or isinstance(value, str)):
        return f"op '{op}' needs a number or a string, not {json_type(value)}"
    if op == "exists" and not isinstance(value, bool):
        return f"op 'exists' needs true or false, not {value!r}"
    if op == "regex":
        if not isinstance(value, str):
            return f"op 'regex' needs a pattern string, not {json_type(value)}"
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


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f'expected a duration such as "2s", not {value!r}')
    return parse_duration(value)
