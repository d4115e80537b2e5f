"""Who is looking at the page: sessions, CSRF tokens, password checks with throttling, and the
trusted header of an SSO proxy.

The cookie holds only a signed session id; whose session it is, and whether it still stands, is
in the database (`gateway.web.sessions`), read on every request by whichever replica serves it.
Signing out ends it there, for every replica at once. The CSRF token is derived from the session
id with the secret, so it needs no storage and changes whenever the id does (at every sign-in).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import anyio.to_thread
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from starlette.requests import Request
from starlette.responses import Response

from approvals.approvers import Approver, ApproverDirectory
from gateway.config_channels import WebSettings
from gateway.web.sessions import SessionCodec, SessionStore, credential_key

__all__ = ["Authenticator", "Session", "SessionCodec", "SignInGuard", "SignInThrottle", "Viewer", "credential_key"]

log = logging.getLogger(__name__)

SESSION_COOKIE = "countersign_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
_THROTTLE_WINDOW = 15 * 60.0
# An address may fail this many times the per-account limit, across all names, before it is locked out.
SPRAY_FACTOR = 3
# The longest a failed sign-in is held before it is answered, however many came before it.
MAX_FAILURE_DELAY = 30.0


def _token() -> str:
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class Session:
    """A visitor's session: its id and CSRF token, and whose it is (None before signing in)."""

    sid: str
    csrf: str
    approver: str | None = None
    key: str | None = None


@dataclass(frozen=True)
class Viewer:
    """The signed-in approver and the session their page carries."""

    approver: Approver
    session: Session
    via: Literal["password", "proxy"]

    @property
    def name(self) -> str:
        return self.approver.name

    @property
    def csrf(self) -> str:
        return self.session.csrf


class SignInThrottle:
    """Counts failed sign-ins per key (a name, an address) in a sliding window; too many and that key waits."""

    def __init__(
        self, max_failures: int, *, window: float = _THROTTLE_WINDOW, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        failures = self._failures.get(key)
        if failures is None:
            return deque()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[key]
        return failures

    def retry_after(self, keys: Iterable[str]) -> float:
        """Seconds until every key may try again; 0 when none is blocked."""
        now = self.clock()
        wait = 0.0
        for key in keys:
            failures = self._recent(key, now)
            if len(failures) >= self.max_failures:
                wait = max(wait, failures[-self.max_failures] + self.window - now)
        return wait

    def failed(self, keys: Iterable[str]) -> None:
        now = self.clock()
        if len(self._failures) > 10_000:
            # Bound memory under a spray of names: forget keys whose failures have all aged out.
            for key in list(self._failures):
                self._recent(key, now)
        for key in keys:
            self._failures.setdefault(key, deque()).append(now)

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)

    def count(self, key: str) -> int:
        """Failures of `key` within the window."""
        return len(self._recent(key, self.clock()))


class SignInGuard:
    """Who may try a password now, and what a wrong one costs.

    A lock-out keyed on the account alone lets anyone lock an approver out by failing on purpose. So
    the lock-out is per account *and* source address (a guesser locks only themself out of that
    account), plus per address across accounts at a higher count (spraying many names from one
    place); the account itself is never locked, but every failure on it answers more slowly: the
    delay doubles with each failure from the same source and with each failure beyond the limit
    from anywhere, so guessing from many addresses slows down too while the owner can still sign in.
    """

    def __init__(
        self,
        max_failures: int,
        base_delay: float,
        *,
        window: float = _THROTTLE_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.base_delay = base_delay
        self.per_source = SignInThrottle(max_failures, window=window, clock=clock)
        self.per_address = SignInThrottle(max_failures * SPRAY_FACTOR, window=window, clock=clock)
        self.per_account = SignInThrottle(max_failures, window=window, clock=clock)

    @staticmethod
    def _keys(name: str, address: str) -> tuple[str, str, str]:
        account = name.strip().lower()
        return f"source:{account}|{address}", f"address:{address}", f"account:{account}"

    def retry_after(self, name: str, address: str) -> float:
        """Seconds until this address may try this name again; 0 when it may now."""
        source, spray, _ = self._keys(name, address)
        return max(self.per_source.retry_after([source]), self.per_address.retry_after([spray]))

    def failed(self, name: str, address: str) -> float:
        """Record a failure; return how long to wait before answering it."""
        source, spray, account = self._keys(name, address)
        self.per_source.failed([source])
        self.per_address.failed([spray])
        self.per_account.failed([account])
        steps = max(self.per_source.count(source) - 1, self.per_account.count(account) - self.max_failures, 0)
        return min(self.base_delay * float(2 ** min(steps, 16)), max(MAX_FAILURE_DELAY, self.base_delay))

    def succeeded(self, name: str, address: str) -> None:
        self.per_source.forget(self._keys(name, address)[0])


class Authenticator:
    def __init__(
        self, settings: WebSettings, approvers: ApproverDirectory, sessions: SessionStore, *, secure_cookies: bool
    ) -> None:
        self.settings = settings
        self.approvers = approvers
        self.sessions = sessions
        self.secure_cookies = secure_cookies
        secret = settings.session_secret
        if not secret:
            secret = secrets.token_urlsafe(48)
            log.warning(
                "web: no session secret configured (web.session_secret or COUNTERSIGN_SESSION_SECRET); using a "
                "random one, so web sessions end when this process restarts and are not shared between replicas"
            )
        self.codec = SessionCodec(secret, settings.session_max_age)
        self._csrf_key = hmac.digest(secret.encode(), b"countersign.web.csrf", "sha256")
        self.throttle = SignInGuard(settings.max_failed_signins, settings.failed_signin_delay)
        self.proxies = tuple(ipaddress.ip_network(p, strict=False) for p in settings.trusted_proxies)
        self._hasher = PasswordHasher()
        self._dummy_hash: str | None = None

    # ---- sessions

    def _session(self, sid: str, approver: str | None = None, key: str | None = None) -> Session:
        csrf = hmac.new(self._csrf_key, sid.encode(), "sha256").hexdigest()
        return Session(sid=sid, csrf=csrf, approver=approver, key=key)

    def anonymous(self) -> Session:
        return self._session(_token())

    async def read_session(self, request: Request) -> Session | None:
        """The visitor's session; None without a valid cookie or when the session has ended (on any replica).

        Raises StoreUnavailable when the database cannot say: a page then fails closed.
        """
        raw = request.cookies.get(SESSION_COOKIE)
        sid = self.codec.loads(raw) if raw else None
        if sid is None:
            return None
        stored = await self.sessions.find(sid)
        if stored is None:
            return self._session(sid)
        if not stored.standing:
            return None
        return self._session(sid, stored.approver, stored.credential)

    async def sign_in(self, approver: Approver) -> Session:
        # A new id (so a new CSRF token) on every sign-in: nothing planted before it survives (session fixation).
        session = self._session(_token(), approver.name, credential_key(approver))
        await self.sessions.open(session.sid, approver, self.settings.session_max_age)
        return session

    def set_cookie(self, response: Response, session: Session, request: Request) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            self.codec.dumps(session.sid),
            max_age=int(self.settings.session_max_age),
            path="/",
            httponly=True,
            # Lax, not Strict: a link to a request from Slack or an e-mail should open signed in. Every
            # state change is a POST that also needs the CSRF token, which another site cannot read.
            samesite="lax",
            secure=self.secure_cookies or request.url.scheme == "https",
        )

    def clear_cookie(self, response: Response, request: Request) -> None:
        response.delete_cookie(
            SESSION_COOKIE,
            path="/",
            httponly=True,
            samesite="lax",
            secure=self.secure_cookies or request.url.scheme == "https",
        )

    async def revoke(self, session: Session) -> None:
        await self.sessions.end(session.sid, "signed out")

    # ---- identity

    def from_proxy(self, request: Request) -> tuple[Approver | None, str | None]:
        """(approver, problem) from the trusted header; (None, None) when the header does not apply."""
        header = self.settings.trusted_header
        if not header:
            return None, None
        value = request.headers.get(header, "").strip()
        if not value:
            return None, None
        if not self.is_trusted_proxy(request):
            # Anyone can send the header; only the proxy's copy counts. Fall back to the session cookie.
            return None, None
        approver = self.approvers.get(value) or self.approvers.by_email(value)
        if approver is None:
            return None, f"your sign-in proxy says you are {value!r}, who is not a configured approver"
        return approver, None

    def is_trusted_proxy(self, request: Request) -> bool:
        host = request.client.host if request.client else None
        if not host:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.proxies)

    def from_session(self, session: Session) -> Approver | None:
        if session.approver is None:
            return None
        approver = self.approvers.get(session.approver)
        if approver is None or session.key is None or credential_key(approver) != session.key:
            return None
        return approver

    async def check_password(self, name: str, password: str) -> Approver | None:
        """The approver when the password matches; the time taken does not say whether the name exists."""
        approver = self.approvers.get(name.strip())
        stored = approver.password_hash if approver else None
        if stored is None:
            if self._dummy_hash is None:
                self._dummy_hash = await anyio.to_thread.run_sync(self._hasher.hash, secrets.token_urlsafe(16))
            stored = self._dummy_hash

        def verify() -> bool:
            try:
                return bool(self._hasher.verify(stored, password))
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

        # argon2 is deliberately slow; keep it off the event loop that also serves held calls.
        matched = await anyio.to_thread.run_sync(verify)
        return approver if matched and approver is not None and approver.password_hash else None

    # ---- CSRF

    @staticmethod
    async def submitted_csrf(request: Request) -> str:
        token = request.headers.get(CSRF_HEADER, "")
        if token:
            return token
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            value = (await request.form()).get(CSRF_FIELD)
            return value if isinstance(value, str) else ""
        return ""

    async def csrf_ok(self, request: Request, session: Session) -> bool:
        if request.headers.get("sec-fetch-site") == "cross-site":
            return False
        submitted = await self.submitted_csrf(request)
        return bool(submitted) and hmac.compare_digest(submitted.encode(), session.csrf.encode())
