"""What a policy says approvers are shown: context lookups, a summary sentence, and the agent's reason.

A tool's `approval` may name read tools of the same upstream to call when a request is made
(`context`), a sentence to title the request with (`summary`), and whether the agent gives its
reason (`agent_reason`). This module holds their parsed form and the pure parts of using them:
references to the held call's arguments, JMESPath selections and the sandboxed summary template.

A reference is `{{ EXPR }}`, where EXPR is a JMESPath expression over `{"args": <the held call's
arguments>}` (so `{{ args.orderId }}`). In a lookup's `arguments` a string that is exactly one
reference becomes the value it selects, with its JSON type; in `select` each reference becomes a
JMESPath literal of its value, so an agent's argument is always data there, never expression.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import jmespath
from jinja2 import Template, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from gateway import selection

# The argument the agent gives its reason in, when the tool's policy asks for one. Stripped before anything else.
REASON_ARGUMENT: Final = "countersign_reason"
REASON_LIMIT: Final = 1000
SUMMARY_LIMIT: Final = 300
DEFAULT_LOOKUP_TIMEOUT: Final = 3.0
MAX_LOOKUP_TIMEOUT: Final = 30.0
AgentReason = Literal["optional", "required"]

_REFERENCE: Final = re.compile(r"\{\{\s*(.+?)\s*\}\}")
# Plain text out: each channel escapes the sentence for its own medium (HTML on the web, mrkdwn in Slack).
_TEMPLATES: Final = SandboxedEnvironment(autoescape=False)


@dataclass(frozen=True)
class ContextSpec:
    """One lookup: call `tool` (on the held call's upstream) with `arguments`, keep what `select` picks."""

    name: str
    tool: str
    arguments: Mapping[str, Any]
    select: str | None
    timeout: float = DEFAULT_LOOKUP_TIMEOUT


Fail = Callable[[str, str], Exception]
_LOOKUP_KEYS: Final = ("name", "tool", "arguments", "select", "timeout")


def parse_lookups(
    value: object, where: str, fail: Fail, duration: Callable[[object], float]
) -> tuple[ContextSpec, ...]:
    """`approval.context`: a list of lookups, each named once."""
    if not isinstance(value, list):
        raise fail(where, f"expected a list of lookups, not {value!r}")
    specs: list[ContextSpec] = []
    for index, item in enumerate(value):
        at = f"{where}[{index}]"
        if not isinstance(item, Mapping):
            raise fail(at, f"expected an object with {', '.join(_LOOKUP_KEYS)}, not {item!r}")
        unknown = sorted(set(item) - set(_LOOKUP_KEYS))
        if unknown:
            raise fail(f"{at}.{unknown[0]}", f"unknown key; expected one of {', '.join(_LOOKUP_KEYS)}")
        for key in ("name", "tool"):
            if not isinstance(item.get(key), str) or not item[key]:
                raise fail(f"{at}.{key}", f"expected a non-empty string, not {item.get(key)!r}")
        if item["name"] in {spec.name for spec in specs}:
            raise fail(f"{at}.name", f"{item['name']!r} is used by another lookup")
        arguments = item.get("arguments", {})
        if not isinstance(arguments, Mapping):
            raise fail(f"{at}.arguments", f"expected an object, not {arguments!r}")
        check_arguments(arguments, f"{at}.arguments", fail)
        chosen = item.get("select")
        if chosen is not None:
            if not isinstance(chosen, str) or not chosen.strip():
                raise fail(f"{at}.select", f"expected a JMESPath expression, not {chosen!r}")
            try:
                check_select(chosen)
            except ValueError as exc:
                raise fail(f"{at}.select", str(exc)) from None
        timeout = DEFAULT_LOOKUP_TIMEOUT
        if "timeout" in item:
            try:
                timeout = duration(item["timeout"])
            except ValueError as exc:
                raise fail(f"{at}.timeout", str(exc)) from None
            if not 0 < timeout <= MAX_LOOKUP_TIMEOUT:
                raise fail(f"{at}.timeout", f"expected more than 0s and at most {MAX_LOOKUP_TIMEOUT:g}s")
        specs.append(ContextSpec(item["name"], item["tool"], dict(arguments), chosen, timeout))
    return tuple(specs)


def parse_summary(value: object, where: str, fail: Fail) -> str:
    if not isinstance(value, str) or not value.strip():
        raise fail(where, f"expected a template string, not {value!r}")
    try:
        check_summary(value)
    except ValueError as exc:
        raise fail(where, str(exc)) from None
    return value


def parse_agent_reason(value: object, where: str, fail: Fail) -> AgentReason:
    if value == "optional":
        return "optional"
    if value == "required":
        return "required"
    raise fail(where, f'expected "optional" or "required", not {value!r}')


def check_reference(text: str) -> None:
    """Raises ValueError when `text` holds a reference that is not a valid JMESPath expression."""
    for match in _REFERENCE.finditer(text):
        try:
            jmespath.compile(match.group(1))
        except jmespath.exceptions.JMESPathError as exc:
            raise ValueError(f"{match.group(0)!r} is not a JMESPath expression over args: {exc}") from None


def check_arguments(value: Any, where: str, fail: Fail) -> None:
    """Every string in a lookup's arguments is either plain text or exactly one reference."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            check_arguments(item, f"{where}.{key}", fail)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_arguments(item, f"{where}[{index}]", fail)
    elif isinstance(value, str) and "{{" in value:
        if _REFERENCE.fullmatch(value) is None:
            raise fail(where, f'a reference must be the whole string, such as "{{{{ args.orderId }}}}", not {value!r}')
        try:
            check_reference(value)
        except ValueError as exc:
            raise fail(where, str(exc)) from None


def check_select(select: str) -> None:
    """Raises ValueError when `select` is not JMESPath (references stand for literals)."""
    check_reference(select)
    try:
        jmespath.compile(_REFERENCE.sub("`null`", select))
    except jmespath.exceptions.JMESPathError as exc:
        raise ValueError(f"not a JMESPath expression: {exc}") from None


def check_summary(template: str) -> None:
    """Raises ValueError when the summary is not a Jinja template."""
    try:
        _TEMPLATES.parse(template)
    except TemplateError as exc:
        raise ValueError(f"not a template: {exc}") from None


def resolve_arguments(value: Any, held: Mapping[str, Any]) -> Any:
    """A lookup's arguments with each reference replaced by what it selects from the held call's arguments."""
    if isinstance(value, Mapping):
        return {key: resolve_arguments(item, held) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve_arguments(item, held) for item in value]
    if isinstance(value, str):
        match = _REFERENCE.fullmatch(value)
        if match is not None:
            return jmespath.search(match.group(1), {"args": dict(held)})
    return value


def select(spec: ContextSpec, found: Any, held: Mapping[str, Any]) -> Any:
    """What `spec.select` picks from a lookup's result (the whole result without one)."""
    if spec.select is None:
        return found

    arguments = {"args": dict(held)}

    def literal(reference: str) -> str:
        value = jmespath.search(reference, arguments)
        return "`" + json.dumps(value, ensure_ascii=False).replace("`", "\\`") + "`"

    literals = [literal(match.group(1)) for match in _REFERENCE.finditer(spec.select)]
    return selection.search_template(spec.select, _REFERENCE, literals, found)


@functools.lru_cache(maxsize=256)
def _compiled(template: str) -> Template:
    # Compiling is most of a render's cost, and a policy has a handful of summaries for every held call.
    return _TEMPLATES.from_string(template)


def render_summary(template: str, arguments: Mapping[str, Any], context: Mapping[str, Any]) -> str | None:
    """The policy's sentence for a request; None (the plain sentence is used) when it cannot be rendered."""
    try:
        text = _compiled(template).render(args=dict(arguments), context=dict(context))
    except Exception:  # a template error, or a sandbox refusal: the request is still made, titled plainly
        return None
    text = " ".join(text.split())
    if not text:
        return None
    return text if len(text) <= SUMMARY_LIMIT else text[: SUMMARY_LIMIT - 1] + "…"


def with_reason(schema: Mapping[str, Any], asks: AgentReason) -> dict[str, Any]:
    """A held tool's input schema as listed to agents when its policy asks for their reason."""
    widened = dict(schema)
    widened["properties"] = {
        **(schema.get("properties") or {}),
        REASON_ARGUMENT: {
            "type": "string",
            "maxLength": REASON_LIMIT,
            "description": (
                "Why you are making this call, in a sentence for the human who approves it. Countersign shows "
                "it to approvers and removes it before the call reaches the tool."
            ),
        },
    }
    if asks == "required":
        widened["required"] = [*(schema.get("required") or []), REASON_ARGUMENT]
    return widened
