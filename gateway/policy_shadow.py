"""The shadow policy's file (`[policy] shadow`): loaded and reloaded like the live policy, never enforced.

Unlike the live policy, a shadow file that does not load never stops the gateway: it is logged and
audited (`shadow.rejected`), the shadow it replaced (if any) stays, and the file is watched until it
loads. Which calls the shadow would decide differently is `gateway.shadow`'s business.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio

from gateway.policy import Policy, PolicyError, load_policy
from gateway.policy_store import policy_version

log = logging.getLogger(__name__)

ShadowListener = Callable[[str, str], Awaitable[None]]  # (kind, message)


@dataclass(frozen=True)
class ShadowStatus:
    kind: str  # shadow.loaded or shadow.rejected, as audited
    message: str


class ShadowStore:
    """The candidate policy in force beside the live one, or None (not configured, or never loaded)."""

    def __init__(self, path: Path | None, *, watch_seconds: float = 1.0) -> None:
        self.path = path
        self.watch_seconds = watch_seconds
        self.current: Policy | None = None
        self.version = ""
        # Why the file's newest contents are not in force (None while they are).
        self.problem: str | None = None
        self.listeners: list[ShadowListener] = []
        self._mtime = self._stat()
        if path is not None:
            self._load()

    @property
    def configured(self) -> bool:
        return self.path is not None

    def _stat(self) -> tuple[float, int] | None:
        if self.path is None:
            return None
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return (stat.st_mtime, stat.st_size)

    def _load(self) -> bool:
        assert self.path is not None
        try:
            policy = load_policy(self.path)
        except PolicyError as exc:
            self.problem = str(exc)
            return False
        self.current, self.version, self.problem = policy, policy_version(self.path), None
        return True

    def status(self) -> ShadowStatus:
        """The audit event kind and message that say where a configured shadow stands now."""
        name = self.path.name if self.path is not None else "(none)"
        if self.problem is None:
            return ShadowStatus(
                kind="shadow.loaded", message=f"shadow policy {name} in force, version {self.version[:12]}"
            )
        kept = f"; version {self.version[:12]} stays in force" if self.current is not None else ""
        return ShadowStatus(kind="shadow.rejected", message=f"shadow policy {name} refused: {self.problem}{kept}")

    async def reload(self, why: str) -> bool:
        """Load the file again; keep the previous shadow if the new one is invalid. True when replaced."""
        if self.path is None:
            return False
        self._mtime = self._stat()
        loaded = self._load()
        said = self.status()
        if loaded:
            log.info("shadow policy reloaded (%s) from %s, version %s", why, self.path, self.version[:12])
        else:
            log.error("shadow policy reload (%s) refused: %s", why, self.problem)
        for listener in self.listeners:
            try:
                await listener(said.kind, f"{said.message} (reload: {why})")
            except Exception:
                log.exception("shadow policy reload listener failed")
        return loaded

    async def watch(self) -> None:
        """Reload when the file's mtime or size changes (SIGHUP reaches it through the live store)."""
        if self.path is None:
            return
        while True:
            await anyio.sleep(self.watch_seconds)
            if self._stat() != self._mtime:
                await self.reload("file changed")
