"""The cycle collector once serving has started: start-up's objects frozen, garbage collected first."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Run apart: freezing the heap of the test process itself would keep every later test's objects from the collector.
_PROGRAM = textwrap.dedent(
    """
    import gc, weakref
    from gateway import collector

    class Node:
        pass

    kept = Node()
    garbage = Node()
    garbage.self = garbage  # a cycle only the collector can free
    gone = weakref.ref(garbage)
    del garbage
    gc.disable()  # so nothing but settle() collects it
    collector.settle()
    gc.enable()
    frozen = gc.get_freeze_count()
    print(gone() is None, frozen > 0, kept not in gc.get_objects(), gc.get_threshold()[0])
    """
)


def test_settle_collects_the_garbage_then_keeps_what_lives_out_of_later_collections() -> None:
    done = subprocess.run([sys.executable, "-c", _PROGRAM], capture_output=True, text=True, timeout=60, check=True)
    garbage_freed, some_frozen, kept_frozen, young = done.stdout.split()
    assert garbage_freed == "True"  # collected before freezing, not kept for the process's life
    assert some_frozen == "True"
    assert kept_frozen == "True"  # gc.get_objects() lists only what the collector still walks
    assert int(young) > 700  # young collections less often than the interpreter's default
