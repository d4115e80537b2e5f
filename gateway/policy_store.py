"""The policy in force, and reloading it on SIGHUP or when its file changes.

A new document that does not validate is refused and the old policy stays in force. Each policy
loaded is known by its version, the SHA-256 of the file's bytes, which the audit log records.
"""

from __future__ import annotations

import hashlib
import logging
import signal
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

from gateway.policy import Policy, PolicyError, load_policy
from gateway.policy_report import lint_policy

log = logging.getLogger(__name__)

ReloadListener = Callable[[str, str], Awaitable[None]]  # (outcome, message)


def policy_version(path: Path) -> str:
    """The SHA-256 of the policy file's bytes ("unreadable" if it went away since it was loaded)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "unreadable"


class PolicyStore:
    def __init__(self, path: Path, *, watch_seconds: float = 1.0) -> None:
        self.path = path
        self.watch_seconds = watch_seconds
        self.current: Policy = load_policy(path)
        self.version = policy_version(path)
        self._mtime = self._stat()
        self.listeners: list[ReloadListener] = []
        # Told of every SIGHUP after this store reloads: a process has one handler per signal (the shadow policy).
        self.on_sighup: list[Callable[[str], Awaitable[object]]] = []
        for warning in lint_policy(self.current):
            log.warning("policy %s: %s: %s", path, warning.path, warning.message)

    def _stat(self) -> tuple[float, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return (stat.st_mtime, stat.st_size)

    async def reload(self, why: str) -> bool:
        """Load the file again; keep the old policy if the new one is invalid. Returns True when replaced."""
        self._mtime = self._stat()
        try:
            policy = load_policy(self.path)
        except PolicyError as exc:
            log.error("policy reload (%s) refused, the previous policy stays in force: %s", why, exc)
            await self._tell("policy.rejected", f"reload ({why}) refused, previous policy kept: {exc}")
            return False
        self.current, self.version = policy, policy_version(self.path)
        log.info("policy reloaded (%s) from %s, version %s", why, self.path, self.version[:12])
        await self._tell("policy.loaded", f"policy reloaded ({why}) from {self.path.name}, version {self.version[:12]}")
        return True

    async def _tell(self, outcome: str, message: str) -> None:
        for listener in self.listeners:
            try:
                await listener(outcome, message)
            except Exception:
                log.exception("policy reload listener failed")

    async def watch(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Reload when the file's mtime or size changes, and on SIGHUP where the process can receive it."""
        with ExitStack() as stack:
            receiver = None
            try:
                if hasattr(signal, "SIGHUP"):
                    receiver = stack.enter_context(anyio.open_signal_receiver(signal.SIGHUP))
            except (NotImplementedError, ValueError, RuntimeError):
                # Signals reach only the main thread; a gateway served from another thread watches the file only.
                log.debug("SIGHUP reload not available in this thread")
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_file)
                task_status.started()
                if receiver is not None:
                    async for _ in receiver:
                        await self.reload("SIGHUP")
                        for follower in self.on_sighup:
                            await follower("SIGHUP")

    async def _watch_file(self) -> None:
        while True:
            await anyio.sleep(self.watch_seconds)
            if self._stat() != self._mtime:
                await self.reload("file changed")
