"""The `[agent_jwt]` section: agents that authenticate with JWTs from an identity provider."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from approvals.durations import parse_duration

# Asymmetric signatures only: an HMAC secret would have to be shared with the gateway, and accepting
# HS256 alongside public keys is the classic key-confusion hole. "none" is never accepted.
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("expected a duration such as 30, '30s', '5m' or '1h'")
    return parse_duration(value)


class JwtSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # The `iss` every token must carry, and the authorization server the metadata document names.
    issuer: str = Field(min_length=1)
    # Where the issuer publishes its signing keys (its JWKS).
    jwks_url: str
    # The `aud` every token must carry; empty: the gateway's own /mcp URL (from [server] public_url).
    audience: str = ""
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    # The claim holding the agent's name, and the one holding its groups (a list, or space-separated).
    agent_claim: str = "sub"
    groups_claim: str = "groups"
    # When set, a token must carry at least one of these groups.
    require_groups: tuple[str, ...] = ()
    # Put in front of every JWT agent's name, so they never collide with [[agents]] names.
    agent_prefix: str = ""
    # Clock skew tolerated on `exp` and `nbf`.
    leeway: float = 30.0
    # How long fetched keys are trusted before they are fetched again.
    jwks_cache: float = 3600.0
    # An unknown `kid` fetches the keys again, but at most this often.
    jwks_refetch_interval: float = 30.0

    _durations = field_validator("leeway", "jwks_cache", "jwks_refetch_interval", mode="before")(_seconds)

    @field_validator("jwks_url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("https://", "http://")):
            raise ValueError("`jwks_url` must be an https:// (or, on a trusted network, http://) URL")
        return url

    @field_validator("algorithms")
    @classmethod
    def _asymmetric(cls, algorithms: tuple[str, ...]) -> tuple[str, ...]:
        if not algorithms:
            raise ValueError('name at least one signing algorithm, e.g. ["RS256"]')
        refused = [a for a in algorithms if a not in ASYMMETRIC_ALGORITHMS]
        if refused:
            raise ValueError(
                f"{', '.join(refused)} cannot be accepted: use public-key algorithms only "
                f"({', '.join(sorted(ASYMMETRIC_ALGORITHMS))}); 'none' and HMAC (HS*) are refused"
            )
        return algorithms
