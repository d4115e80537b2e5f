"""Who may decide: configured approvers, and matching them against a request's approver list."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field


def token_digest(token: str) -> str:
    """Tokens are kept only as SHA-256 digests; they are long random strings, so no salt or KDF is needed."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Approver:
    name: str
    email: str | None = None
    groups: tuple[str, ...] = ()
    slack_user: str | None = None
    api_token_sha256: str | None = field(default=None, repr=False)
    password_hash: str | None = field(default=None, repr=False)


def may_decide(approver: Approver, allowed: Sequence[str]) -> bool:
    """`allowed` holds approver names and `group:NAME` entries; an empty list admits every approver."""
    if not allowed:
        return True
    for entry in allowed:
        if entry.startswith("group:"):
            if entry[len("group:") :] in approver.groups:
                return True
        elif entry == approver.name:
            return True
    return False


class ApproverDirectory:
    def __init__(self, approvers: Iterable[Approver]) -> None:
        self._by_name: dict[str, Approver] = {}
        for approver in approvers:
            if approver.name in self._by_name:
                raise ValueError(f"approver {approver.name!r} is configured twice")
            self._by_name[approver.name] = approver

    def __iter__(self) -> Iterator[Approver]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def get(self, name: str) -> Approver | None:
        return self._by_name.get(name)

    def by_api_token(self, token: str) -> Approver | None:
        digest = token_digest(token)
        found = None
        # Compare against every approver so the time taken does not reveal which one matched.
        for approver in self._by_name.values():
            if approver.api_token_sha256 and hmac.compare_digest(approver.api_token_sha256, digest):
                found = approver
        return found

    def by_slack_user(self, user_id: str) -> Approver | None:
        return next((a for a in self._by_name.values() if a.slack_user == user_id), None)

    def by_email(self, email: str) -> Approver | None:
        wanted = email.strip().lower()
        return next((a for a in self._by_name.values() if a.email and a.email.lower() == wanted), None)

    def allowed_for(self, allowed: Sequence[str]) -> list[Approver]:
        return [a for a in self._by_name.values() if may_decide(a, allowed)]
