"""Agents with JWTs from an identity provider, and the OAuth protected-resource metadata that names it.

The gateway is an OAuth resource server for /mcp: a JWT is accepted when its signature checks
against a key the issuer publishes (its JWKS), and its `iss`, `aud`, `exp` and `nbf` say it was
issued by the configured issuer, for this gateway, and is current. The agent's name and groups
come from configured claims. Keys are fetched once and cached; a token signed with a key the
cache does not know (the issuer rotated its keys) fetches them again, at most once per
`jwks_refetch_interval`, so a stream of made-up `kid`s cannot turn into a stream of fetches.

Clients discover the issuer through the metadata document (RFC 9728) the 401's
`WWW-Authenticate: Bearer resource_metadata="…"` points to.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

import anyio
import httpx2
import jwt
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.config import Settings
from gateway.identity import AgentIdentity
from gateway.jwt_settings import JwtSettings

log = logging.getLogger(__name__)

METADATA_PATH = "/.well-known/oauth-protected-resource"
_FETCH_TIMEOUT = 10.0
_MAX_NAME = 200


class JwtRejected(Exception):
    """The token is not accepted; the message says why, for the 401 the agent's operator reads."""


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2


class Jwks:
    """The issuer's signing keys, fetched from `url` and cached."""

    def __init__(self, url: str, *, max_age: float, refetch_interval: float) -> None:
        self.url = url
        self.max_age = max_age
        self.refetch_interval = refetch_interval
        self.fetches = 0
        # By `kid`: the key, and the algorithm the issuer pinned it to (None when it did not).
        self._keys: dict[str | None, tuple[jwt.PyJWK, str | None]] = {}
        self._fetched_at: float | None = None
        self._lock = anyio.Lock()

    async def key(self, kid: str | None) -> tuple[jwt.PyJWK, str | None]:
        async with self._lock:
            now = anyio.current_time()
            stale = self._fetched_at is None or now - self._fetched_at > self.max_age
            unknown = kid not in self._keys and not (kid is None and len(self._keys) == 1)
            may_refetch = self._fetched_at is None or now - self._fetched_at >= self.refetch_interval
            if stale or (unknown and may_refetch):
                await self._fetch()
            found = self._keys.get(kid)
            if found is None and kid is None and len(self._keys) == 1:
                found = next(iter(self._keys.values()))
            if found is None:
                raise JwtRejected(f"the token's signing key (kid {kid!r}) is not among the issuer's keys")
            return found

    async def _fetch(self) -> None:
        self.fetches += 1
        self._fetched_at = anyio.current_time()
        try:
            async with httpx2.AsyncClient(timeout=_FETCH_TIMEOUT) as http:
                response = await http.get(self.url)
                response.raise_for_status()
                listed = response.json()["keys"]
                if not isinstance(listed, list):
                    raise ValueError("'keys' is not a list")
        except Exception as exc:
            # Keep the keys we had: an issuer's brief outage must not lock out every agent. Unknown keys stay unknown.
            log.warning("could not fetch the issuer's keys from %s: %s", self.url, exc)
            if not self._keys:
                raise JwtRejected("the issuer's signing keys cannot be fetched; try again later") from exc
            return
        keys: dict[str | None, tuple[jwt.PyJWK, str | None]] = {}
        for entry in listed:
            try:
                keys[entry.get("kid")] = (jwt.PyJWK(entry), entry.get("alg"))
            except (jwt.PyJWTError, AttributeError, TypeError, ValueError) as exc:
                log.info("skipping a key the issuer lists that cannot verify tokens here: %s", exc)
        self._keys = keys


class JwtAgents:
    """Turns a bearer JWT into the agent it names, or says why not."""

    def __init__(self, settings: JwtSettings, *, audience: str, reserved_names: Collection[str] = ()) -> None:
        self.settings = settings
        self.audience = settings.audience or audience
        self.reserved = frozenset(reserved_names)
        self.jwks = Jwks(
            settings.jwks_url, max_age=settings.jwks_cache, refetch_interval=settings.jwks_refetch_interval
        )

    async def identify(self, token: str) -> AgentIdentity:
        s = self.settings
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise JwtRejected(f"the token is not a readable JWT: {exc}") from exc
        alg = header.get("alg")
        if alg not in s.algorithms:
            raise JwtRejected(f"tokens signed with {alg!r} are not accepted (accepted: {', '.join(s.algorithms)})")
        key, pinned = await self.jwks.key(header.get("kid"))
        if pinned is not None and pinned != alg:
            raise JwtRejected(f"the key {key.key_id!r} is for {pinned}, not {alg}")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=self.audience,
                issuer=s.issuer,
                leeway=s.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise JwtRejected("the token has expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise JwtRejected(f"the token is not for this gateway (its aud must include {self.audience!r})") from exc
        except jwt.PyJWTError as exc:
            raise JwtRejected(f"the token is not accepted: {exc}") from exc
        return self._agent(claims)

    def _agent(self, claims: dict[str, Any]) -> AgentIdentity:
        s = self.settings
        raw = claims.get(s.agent_claim)
        if not isinstance(raw, str) or not raw.strip() or len(raw) > _MAX_NAME or not raw.isprintable():
            raise JwtRejected(f"the token's {s.agent_claim!r} claim must be a short printable string naming the agent")
        name = s.agent_prefix + raw.strip()
        if name in self.reserved:
            raise JwtRejected(f"the agent name {name!r} belongs to a configured agent; set [agent_jwt] agent_prefix")
        groups = _groups(claims.get(s.groups_claim))
        if s.require_groups and not set(groups) & set(s.require_groups):
            raise JwtRejected(f"the token carries none of the groups {', '.join(s.require_groups)}")
        return AgentIdentity(name, groups)


def _groups(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list):
        return tuple(g for g in value if isinstance(g, str))
    return ()


def resource_metadata(settings: JwtSettings, resource: str) -> dict[str, Any]:
    """The protected-resource metadata document (RFC 9728) for /mcp."""
    return {
        "resource": resource,
        "authorization_servers": [settings.issuer],
        "bearer_methods_supported": ["header"],
        "resource_name": "Countersign",
    }


def jwt_options(settings: Settings) -> dict[str, Any]:
    """AgentAuth's JWT arguments: none unless [agent_jwt] is configured."""
    if settings.agent_jwt is None:
        return {}
    reserved = {a.name for a in settings.agents}
    audience = f"{settings.server.base_url}/mcp"
    return {
        "jwt_agents": JwtAgents(settings.agent_jwt, audience=audience, reserved_names=reserved),
        "resource_metadata": f"{settings.server.base_url}{METADATA_PATH}/mcp",
    }


def metadata_routes(settings: Settings) -> list[Route]:
    """The document at the path-suffixed form for /mcp, and at the bare form clients fall back to."""
    jwt_settings = settings.agent_jwt
    if jwt_settings is None:
        return []
    document_body = resource_metadata(jwt_settings, f"{settings.server.base_url}/mcp")

    async def document(request: Request) -> JSONResponse:
        return JSONResponse(document_body, headers={"Cache-Control": "max-age=300"})

    return [Route(f"{METADATA_PATH}/mcp", document, methods=["GET"]), Route(METADATA_PATH, document, methods=["GET"])]
