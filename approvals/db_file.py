"""The SQLite database file, watched for being deleted, replaced or made read-only while it is in use.

An open SQLite connection keeps using the file it opened. Delete that file (or its directory),
or put another file in its place, and every write still succeeds, into an inode that nothing
will read again: the next start opens an empty or different database, and the audit events
written in between are gone. A file made read-only (mode bits, `chattr +i`, a read-only
remount) still takes writes through connections opened before, and refuses every connection
opened after. So the path is compared with the file that was opened before each write and on
every health check; a mismatch is an outage (`StoreUnavailable`), and the gateway refuses what
it cannot record rather than record it where it will be lost.

A `stat` and an `access` call per write: microseconds, against the milliseconds of the write.
"""

from __future__ import annotations

import os
from pathlib import Path


class SqliteFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._identity: tuple[int, int] | None = None

    def pin(self) -> None:
        """Remember the file now at the path as the one in use (once it exists)."""
        if self._identity is not None:
            return
        try:
            found = os.stat(self.path)
        except OSError:
            return
        self._identity = (found.st_dev, found.st_ino)

    def problem(self) -> str | None:
        """Why writing to this database now would lose the write, or None when it would not."""
        if self._identity is None:
            self.pin()
            return None
        try:
            found = os.stat(self.path)
        except FileNotFoundError:
            return (
                f"the database file {self.path} was deleted while the gateway was running: anything written now "
                "would be lost at the next start. Restore the file (or its directory) from a backup, then restart"
            )
        except OSError as exc:
            return f"the database file {self.path} cannot be checked: {exc.strerror}"
        if (found.st_dev, found.st_ino) != self._identity:
            return (
                f"the database file {self.path} was replaced by another file while the gateway was running: writes "
                "would go to the old file, which is no longer there. Check which file is the right one, then restart"
            )
        if found.st_mode & 0o222 == 0 or not os.access(self.path, os.W_OK):
            return (
                f"the database file {self.path} is read-only: the gateway cannot record anything. Make it writable "
                "for the gateway's user (mode, immutable flag or mount), then restart"
            )
        return None
