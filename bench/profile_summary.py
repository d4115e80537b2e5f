"""Summarise a py-spy profile in its raw (collapsed) format: where the gateway's samples go.

    .venv/bin/python bench/profile_summary.py PROFILE.raw [--top 20]

A sample's stack is `frame;frame;... count`. Samples of threads that only wait (the event loop in
its selector, aiosqlite's worker waiting for work, asyncio's child watcher) are counted apart as
idle; the rest, the busy samples, are shared out: inclusive under a few markers that matter on the
passthrough path, and by the package of the innermost frame outside the standard library.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

# (label, pattern matched against any frame of a sample): inclusive shares, so they overlap.
MARKERS: tuple[tuple[str, str], ...] = (
    ("database worker thread (aiosqlite: SQLite's own work)", r"aiosqlite/core\.py"),
    ("uvicorn's HTTP protocol (parse, send)", r"uvicorn/protocols/http"),
    ("access log / logging", r"logging/__init__\.py"),
    ("MCP server: streamable HTTP transport", r"mcp/server/streamable_http"),
    ("MCP server: session and dispatch", r"mcp/server/(lowlevel|session|server|context|runner)|mcp/shared/"),
    ("MCP client (to the upstream)", r"mcp/client/"),
    ("the forward to the upstream (gateway/upstream_*.py: request, answer, result checks)", r"gateway/upstream_"),
    ("HTTP client (httpx, httpcore, h11)", r"httpx2/|httpcore2/|h11/"),
    ("pydantic validate / dump", r"pydantic/main\.py|pydantic_core|TypeAdapter"),
    ("SQLAlchemy (event loop side)", r"sqlalchemy/"),
    ("the gateway's call path (gateway/calls.py)", r"gateway/calls\.py"),
    ("audit: record an allowed call", r"approvals/audit_batch\.py|approvals/audit\.py"),
    ("JSON encode / decode", r"json/(encoder|decoder|__init__)\.py"),
)

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^:()]+)(?::\d+)?\)$")
_PACKAGE = re.compile(r"\((?:.*site-packages/)?(?P<package>[A-Za-z_0-9]+)/(?P<module>[A-Za-z_0-9]+)")
_STDLIB = {"asyncio", "anyio", "json", "logging", "contextlib", "threading", "concurrent", "selectors", "socket"}


def _waiting_line() -> str:
    """aiosqlite's worker frame while it waits for work (the line of its `tx.get()`), or "" if unknown."""
    try:
        import inspect

        from aiosqlite import core
    except ImportError:
        return ""
    lines, first = inspect.getsourcelines(core._connection_worker_thread)
    for offset, line in enumerate(lines):
        if "tx.get()" in line:
            return f"_connection_worker_thread (aiosqlite/core.py:{first + offset})"
    return ""


def idle(leaf: str, waiting: str) -> bool:
    in_selector = leaf.split(" (")[0].endswith("select") and "(selectors.py" in leaf
    return in_selector or "_do_waitpid" in leaf or (bool(waiting) and leaf == waiting)


def owner(stack: list[str]) -> str:
    """The innermost package outside the standard library and anyio (the SDK by its subpackage)."""
    for frame in reversed(stack):
        match = _PACKAGE.search(frame)
        if match and match.group("package") not in _STDLIB:
            package, module = match.group("package"), match.group("module")
            if package == "gateway" and module in ("cli", "serving"):
                return "(event loop: asyncio and anyio between tasks)"  # under nothing but the process's root
            return f"mcp/{module}" if package == "mcp" else package
    return "(standard library)"


def read(path: Path) -> list[tuple[list[str], int]]:
    samples = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            samples.append((stack.split(";"), int(count)))
    return samples


def summary(samples: list[tuple[list[str], int]], top: int) -> list[str]:
    waiting = _waiting_line()
    total = sum(count for _, count in samples)
    busy = [(stack, count) for stack, count in samples if not idle(stack[-1], waiting)]
    working = sum(count for _, count in busy) or 1
    lines = [f"{total} samples, {working} busy (the shares below are of the busy ones)"]
    for label, pattern in MARKERS:
        regex = re.compile(pattern)
        hits = sum(count for stack, count in busy if any(regex.search(frame) for frame in stack))
        lines.append(f"  {hits / working * 100:5.1f} %  {label}")
    owners: Counter[str] = Counter()
    for stack, count in busy:
        owners[owner(stack)] += count
    lines.append(f"by the innermost package (exclusive), top {top}:")
    lines.extend(f"  {count / working * 100:5.1f} %  {name}" for name, count in owners.most_common(top))
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args(argv)
    print("\n".join(summary(read(args.profile), args.top)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
