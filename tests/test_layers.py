"""The shape of the code: layers import one way, nothing imports in a circle, and modules stay small.

Read from the source with `ast` (imports under `if TYPE_CHECKING:` count too: a cycle that only
type checking sees is still a knot for the reader), plus each module imported alone, with none of the
product's other modules loaded before it, which fails on any cycle that bites at run time.

Starting an interpreter and loading the third-party packages costs about a second; paying it for each
of some two hundred modules made this file minutes long. One interpreter loads the third-party
packages the product imports (they cannot take part in the product's cycles) and forks a child per
module (as many at once as there are cores), which imports it and exits.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("approvals", "gateway")
# The paper broker's in-memory book models a whole brokerage account; it is one concept, kept whole.
LONG_ALLOWED = {"gateway.paper_book"}
MAX_LINES = 440


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.parent.name == "versions" or path.name == "env.py":
                continue  # Alembic's scripts: run by Alembic inside a migration, not imported as modules
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            # The module itself, or the longest known prefix of it (`from gateway.web import x`).
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


GRAPH = {name: imports_of(path, set(modules())) - {name} for name, path in modules().items()}


def test_the_approval_core_never_imports_the_gateway() -> None:
    offenders = {m: sorted(i for i in deps if i.startswith("gateway")) for m, deps in GRAPH.items()}
    assert {m: d for m, d in offenders.items() if m.startswith("approvals") and d} == {}


def test_only_the_cli_and_its_runners_import_the_assembled_gateway() -> None:
    importers = sorted(m for m, deps in GRAPH.items() if "gateway.app" in deps)
    assert importers == ["gateway.serving"], importers
    assert "gateway.serving" in GRAPH["gateway.cli"] or any(
        "gateway.serving" in GRAPH[m] for m in GRAPH if m.startswith("gateway.cli")
    )


def test_no_module_imports_in_a_circle() -> None:
    # Package __init__ modules import their own submodules by design; a cycle through one still counts
    # unless it is only parent -> child.
    def edges(module: str) -> set[str]:
        return {d for d in GRAPH[module] if not d.startswith(module + ".")}

    cycles = []
    for start in GRAPH:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for dep in edges(node):
                if dep == start:
                    cycles.append(" -> ".join([*path, dep]))
                elif dep not in seen:
                    seen.add(dep)
                    stack.append((dep, [*path, dep]))
    assert cycles == []


def test_modules_stay_small() -> None:
    long = {m: len(p.read_text().splitlines()) for m, p in modules().items() if m not in LONG_ALLOWED}
    assert {m: n for m, n in long.items() if n > MAX_LINES} == {}


def third_party() -> list[str]:
    """The top-level names the product's modules import that are not the product's own."""
    names: set[str] = set()
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.partition(".")[0])
    return sorted(names - set(PACKAGES) - {"__future__"})


# Runs in the fresh interpreter: argv[1] is the JSON list of third-party names to load first; then
# one module name per line on stdin, one JSON line per module on stdout.
_IMPORTER = """
import importlib, json, os, sys, traceback
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except Exception:
        pass  # optional at run time (a test or platform extra); the product's own import says if it matters
assert not any(m == p or m.startswith(p + ".") for m in sys.modules for p in ("approvals", "gateway"))
running = {}  # pid -> (module, the read end of its pipe); a traceback fits in the pipe, so no child blocks


def reap():
    pid, status = os.wait()
    module, read = running.pop(pid)
    with os.fdopen(read, "rb") as pipe:
        error = pipe.read().decode()
    print(json.dumps({"module": module, "status": status, "error": error}), flush=True)


for line in sys.stdin:
    module = line.strip()
    if len(running) >= max(2, os.cpu_count() or 1):
        reap()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(module)
            os._exit(0)
        except BaseException:
            os.write(write, traceback.format_exc()[-2000:].encode())
            os._exit(1)
    os.close(write)
    running[pid] = (module, read)
while running:
    reap()
"""


@pytest.fixture(scope="module")
def imported_alone() -> Iterator[dict[str, tuple[int, str]]]:
    names = sorted(modules())
    done = subprocess.run(
        [sys.executable, "-c", _IMPORTER, json.dumps(third_party())],
        cwd=ROOT,
        input="\n".join(names) + "\n",
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = {}
    for line in done.stdout.splitlines():
        entry = json.loads(line)
        found[entry["module"]] = (entry["status"], entry["error"])
    yield found


@pytest.mark.parametrize("module", sorted(modules()))
def test_each_module_imports_on_its_own(module: str, imported_alone: dict[str, tuple[int, str]]) -> None:
    status, error = imported_alone[module]
    assert status == 0, error


def test_the_approval_channels_know_no_upstreams_tools() -> None:
    # What a request is about reaches the web and Slack through the context lookups, never by tool name.
    places = [ROOT / "gateway" / "web", ROOT / "gateway" / "slack", ROOT / "templates"]
    named = [
        f"{path.relative_to(ROOT)}:{number}"
        for place in places
        for path in sorted(place.rglob("*"))
        if path.suffix in (".py", ".html")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "ibkr_" in line
    ]
    assert named == []
