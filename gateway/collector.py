"""Python's cycle collector, set for a process that holds thousands of calls.

A held call keeps a few hundred objects alive while it waits (its task, coroutine frames, stream
and request state), so a burst of held calls grows the heap quickly. With the interpreter's
defaults (a young collection every 700 new container objects, a full one when the old generation
has grown by a quarter) a full collection ran several times during a burst of 1,000 parks, and each
walked every object in the process: the modules, schemas, templates and SQL statements loaded at
start-up as well as the held calls. Those full collections were a quarter of the CPU a park cost.

Two settings, once start-up has settled:

- `gc.freeze()` moves everything alive then (what start-up loaded, which lives as long as the
  process) out of the collector's sight, so no collection walks it again. Frozen objects are
  still freed by their reference counts; only a cycle among them would stay, and start-up's
  objects are not garbage.
- The young generation is collected every `YOUNG` new container objects rather than 700: the
  same work in fewer, larger collections, and fewer of them promoted to the older generations,
  so a full collection comes far less often during a burst. Cyclic garbage waits a little longer
  to be freed (a few thousand objects at most).
"""

from __future__ import annotations

import gc

# New container objects (allocations less deallocations) between young collections; the interpreter's default is 700.
YOUNG = 7000


def settle() -> None:
    """Freeze what is alive now and collect the young generation less often; call once start-up is done."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG, middle, old)
