"""Summarise a py-spy profile in its raw (collapsed) format: where the gateway's samples go.

    .venv/bin/python bench/profile_summary.py PROFILE.raw [--top 20]

A sample's stack is `frame;frame;... count`. The summary counts samples (inclusive) under a few
markers that matter on the passthrough path, and the files the leaf frames are in (exclusive).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

# (label, pattern matched against any frame of a sample): inclusive shares, so they overlap.
MARKERS: tuple[tuple[str, str], ...] = (
    ("idle: waiting in the event loop's selector", r"select \(selectors\.py"),
    ("database worker thread (aiosqlite)", r"aiosqlite/core\.py"),
    ("any other thread", r"Thread\._bootstrap"),
    ("uvicorn's HTTP protocol (parse, send)", r"uvicorn/protocols/http"),
    ("access log / logging", r"logging/__init__\.py"),
    ("MCP server: streamable HTTP transport", r"mcp/server/streamable_http"),
    ("MCP server: session and dispatch", r"mcp/server/(lowlevel|session|server|context|runner)|mcp/shared/"),
    ("MCP client (to the upstream)", r"mcp/client/"),
    ("pydantic validate / dump", r"pydantic/main\.py|pydantic_core|TypeAdapter"),
    ("SQLAlchemy (event loop side)", r"sqlalchemy/"),
    ("the gateway's call path (gateway/calls.py)", r"gateway/calls\.py"),
    ("audit: record an allowed call", r"approvals/audit_batch\.py|approvals/audit\.py"),
    ("JSON encode / decode", r"json/(encoder|decoder|__init__)\.py"),
)

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^:()]+)(?::\d+)?\)$")


def read(path: Path) -> list[tuple[list[str], int]]:
    samples = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            samples.append((stack.split(";"), int(count)))
    return samples


def summary(samples: list[tuple[list[str], int]], top: int) -> list[str]:
    total = sum(count for _, count in samples)
    lines = [f"{total} samples"]
    for label, pattern in MARKERS:
        regex = re.compile(pattern)
        hits = sum(count for stack, count in samples if any(regex.search(frame) for frame in stack))
        lines.append(f"  {hits / total * 100:5.1f} %  {label}")
    leaves: Counter[str] = Counter()
    for stack, count in samples:
        match = _FRAME.match(stack[-1])
        leaves[match.group("file") if match else stack[-1]] += count
    lines.append(f"leaf frames by file (exclusive), top {top}:")
    lines.extend(f"  {count / total * 100:5.1f} %  {name}" for name, count in leaves.most_common(top))
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
