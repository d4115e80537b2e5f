"""Giving memory back to the system once a burst of calls is over.

Parking thousands of calls at once allocates far more than the held calls then keep: request
bodies, parsed upstream answers, SQL rows. Python returns what it frees to the C allocator, and
glibc's `malloc` keeps those pages in its heap, so the process's RSS stays at the burst's peak
long after. `malloc_trim(0)` hands the free pages back. It is called once the requests that come
through `/mcp` have been quiet for a tick after some arrived, in a worker thread (it walks the
heap), and never on allocators without it (musl, macOS), where this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

import anyio

log = logging.getLogger(__name__)


def malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class MemoryTrim:
    """Counts requests (`note`); `run` trims the heap after each burst, once a tick has passed without one."""

    def __init__(self, *, tick: float = 2.0, enabled: bool = True) -> None:
        self.tick = tick
        self._trim = malloc_trim() if enabled else None
        self.requests = 0
        self.trims = 0
        self._seen = 0
        self._trimmed_at = 0

    @property
    def available(self) -> bool:
        return self._trim is not None

    def note(self) -> None:
        self.requests += 1

    async def run(self) -> None:
        trim = self._trim
        if trim is None:
            return
        while True:
            await anyio.sleep(self.tick)
            now = self.requests
            if now != self._trimmed_at and now == self._seen:
                self._trimmed_at = now
                await anyio.to_thread.run_sync(trim, 0)
                self.trims += 1
            self._seen = now
