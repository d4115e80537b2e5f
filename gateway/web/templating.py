"""Finding the templates and static files, and the Jinja environment every web page renders with.

Autoescaping is on for everything and undefined names are errors, so a template can neither
print an agent's `<script>` as markup nor silently render a blank where a value was meant to be.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup
from starlette.background import BackgroundTask
from starlette.responses import HTMLResponse

import gateway
from approvals import stored
from approvals.durations import format_duration
from gateway.text import mark_hidden
from gateway.web import present


def asset_dir(name: str) -> Path:
    """`templates` or `static`: inside the installed package (wheel), else at the top of the repository."""
    package = Path(gateway.__file__).resolve().parent
    candidates = (package / name, package.parent / name)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise RuntimeError(f"cannot find the {name}/ directory; looked in {', '.join(str(c) for c in candidates)}")


def when(moment: datetime | None) -> str:
    """A UTC timestamp people read: 2025-06-01 14:03:12 UTC."""
    if moment is None:
        return "—"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@jinja2.pass_context
def when_element(context: jinja2.runtime.Context, moment: datetime | None) -> str:
    """The `when` filter: a humane time (10:42:07 UTC, or with the day when not today) whose title is exact."""
    if moment is None:
        return "—"
    now = context.get("clock")
    if not isinstance(now, datetime):
        now = datetime.now(UTC)
    return Markup('<time datetime="{}" title="{}">{}</time>').format(
        iso(moment), present.exact(moment), present.humane(moment, now)
    )


def clock(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%H:%M:%S UTC")


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def span(seconds: float) -> str:
    """A duration on a page, written the way the agent and Slack write it (approvals.durations)."""
    if not math.isfinite(seconds):
        return "—"
    return format_duration(max(0.0, round(seconds)))


def pretty_json(value: Any) -> str:
    """Indented JSON for display; stored text is read safely (approvals.stored), and text that is not JSON is
    shown as it is."""
    if isinstance(value, str):
        value = stored.shown(value)
        if isinstance(value, str):
            return value
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


class Templates:
    def __init__(self, directory: Path, static_dir: Path) -> None:
        self.static_dir = static_dir
        self._fingerprints: dict[str, str] = {}
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(directory),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(
            when=when_element,
            clock=clock,
            iso=iso,
            span=span,
            number=number,
            pretty_json=pretty_json,
            ago=present.ago,
            humane=present.humane,
            exact=present.exact,
            compact_json=present.compact_json,
            soft_breaks=present.soft_breaks,
            readable_json=present.readable_json,
            result_parts=present.result_parts,
            describe_event=present.describe_event,
            mark_hidden=mark_hidden,
        )
        self.env.globals["static_url"] = self.static_url

    def static_url(self, name: str) -> str:
        """The file's URL with a content fingerprint, so browsers never run a stale script after an upgrade."""
        fingerprint = self._fingerprints.get(name)
        if fingerprint is None:
            path = (self.static_dir / name).resolve()
            if not path.is_relative_to(self.static_dir.resolve()) or not path.is_file():
                raise jinja2.TemplateError(f"no static file {name!r}")
            fingerprint = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
            self._fingerprints[name] = fingerprint
        return f"/static/{name}?v={fingerprint}"

    def render(self, name: str, context: Mapping[str, Any]) -> str:
        html: str = self.env.get_template(name).render(context)
        return html

    def response(
        self,
        name: str,
        context: Mapping[str, Any],
        *,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        background: BackgroundTask | None = None,
    ) -> HTMLResponse:
        return HTMLResponse(
            self.render(name, context), status_code=status_code, headers=dict(headers or {}), background=background
        )


def number(value: Any) -> str:
    """A quantity or price as people write it: 50, 1,250, 395.5 (never 50.0)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "—" if value is None else str(value)
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.4f}".rstrip("0").rstrip(".")
    return f"{int(value):,}"
