"""Web sessions: a signed cookie holding only the session id, and the database row that says whose it is.

Every replica reads the same row on every request (one primary-key lookup), so signing out on
one replica ends the session on all of them at once; so does a new password or removing the
approver, once any replica has started with the new configuration (`end_stale`). A visitor who
has not signed in has an id but no row: the sign-in form needs a CSRF token before anyone is
known, and writing a row for every anonymous visitor would let anyone fill the table.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import delete, insert, select, update

from approvals.approvers import Approver, ApproverDirectory
from approvals.audit import as_utc
from approvals.db import Database
from approvals.models import WebSession

log = logging.getLogger(__name__)

_sessions = WebSession.__table__  # type: ignore[attr-defined]
_SALT = "countersign.web.session"
# Ended and expired rows are kept this long (a trace of who was signed in when), then removed at start.
_KEEP_ENDED = timedelta(days=30)


def credential_key(approver: Approver) -> str | None:
    """A fingerprint of the approver's password hash: a new password ends the sessions made with the old one."""
    if not approver.password_hash:
        return None
    return hashlib.sha256(approver.password_hash.encode()).hexdigest()[:16]


def _row_id(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


class SessionCodec:
    """The cookie: the session id, signed and dated, so a forged or stale cookie is refused before any lookup."""

    def __init__(self, secret: str, max_age: float) -> None:
        self.max_age = max_age
        self._serializer = URLSafeTimedSerializer(secret, salt=_SALT)

    def dumps(self, sid: str) -> str:
        return self._serializer.dumps({"s": sid})

    def loads(self, raw: str) -> str | None:
        try:
            data: Any = self._serializer.loads(raw, max_age=int(self.max_age))
        except BadSignature:  # also SignatureExpired
            return None
        sid = data.get("s") if isinstance(data, dict) else None
        return sid if isinstance(sid, str) and sid else None


@dataclass(frozen=True)
class StoredSession:
    approver: str
    credential: str | None
    standing: bool


class SessionStore:
    def __init__(self, db: Database, clock: Callable[[], datetime]) -> None:
        self.db = db
        self.clock = clock

    async def open(self, sid: str, approver: Approver, max_age: float) -> None:
        now = self.clock()
        row = {
            "id": _row_id(sid),
            "approver": approver.name,
            "credential": credential_key(approver),
            "created_at": now,
            "expires_at": now + timedelta(seconds=max_age),
        }
        async with self.db.write() as conn:
            await conn.execute(insert(_sessions).values(**row))

    async def find(self, sid: str) -> StoredSession | None:
        """The stored session with this id (None for an anonymous visitor's id); `standing` False once ended."""
        async with self.db.read() as conn:
            row = (await conn.execute(select(_sessions).where(_sessions.c.id == _row_id(sid)))).mappings().first()
        if row is None:
            return None
        standing = row["ended_at"] is None and as_utc(row["expires_at"]) > self.clock()
        return StoredSession(row["approver"], row["credential"], standing)

    async def end(self, sid: str, because: str) -> None:
        async with self.db.write() as conn:
            await conn.execute(
                update(_sessions)
                .where(_sessions.c.id == _row_id(sid), _sessions.c.ended_at.is_(None))
                .values(ended_at=self.clock(), ended_because=because)
            )

    async def end_stale(self, approvers: ApproverDirectory) -> int:
        """End the sessions of approvers no longer configured, or signed in with a password since changed."""
        now = self.clock()
        ended = 0
        async with self.db.write() as conn:
            await conn.execute(delete(_sessions).where(_sessions.c.expires_at < now - _KEEP_ENDED))
            standing = (
                await conn.execute(
                    select(_sessions.c.id, _sessions.c.approver, _sessions.c.credential).where(
                        _sessions.c.ended_at.is_(None), _sessions.c.expires_at > now
                    )
                )
            ).all()
            for row in standing:
                approver = approvers.get(row.approver)
                if approver is not None and credential_key(approver) == row.credential:
                    continue
                because = "approver removed" if approver is None else "password changed"
                await conn.execute(
                    update(_sessions)
                    .where(_sessions.c.id == row.id, _sessions.c.ended_at.is_(None))
                    .values(ended_at=now, ended_because=because)
                )
                ended += 1
        if ended:
            log.info("web: ended %d session(s) of removed approvers or changed passwords", ended)
        return ended
