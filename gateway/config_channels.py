"""The channels' sections of the configuration: `[slack]`, `[web]` and `[[webhooks]]` (see docs/configuration.md)."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from approvals.transition_log import TRANSITION_KINDS
from gateway.config_base import Section as _Section
from gateway.config_base import seconds as _seconds

__all__ = ["SlackSettings", "WebSettings", "WebhookSettings"]

# A webhook's name keys its deliveries in the shared outbox (`webhook:NAME`, at most 32 characters).
_WEBHOOK_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,23}")


class SlackSettings(_Section):
    bot_token: str | None = Field(default=None, repr=False)
    signing_secret: str | None = Field(default=None, repr=False)
    channel: str | None = None
    mode: Literal["http", "socket"] = "http"
    app_token: str | None = Field(default=None, repr=False)
    api_url: str | None = None
    # A reminder in the message's thread this long before a request expires; none when unset.
    reminder_before: float | None = None
    # Outbound calls: the time one call may take, and retries doubling from retry_initial up to retry_max.
    request_timeout: float = 10.0
    retry_initial: float = 1.0
    retry_max: float = 60.0
    max_attempts: int = Field(default=8, ge=1)
    # How long one replica holds a message's work before another may take it over (renewed while it works).
    lease: float = 30.0

    _durations = field_validator(
        "reminder_before", "request_timeout", "retry_initial", "retry_max", "lease", mode="before"
    )(_seconds)

    @model_validator(mode="after")
    def _lease_outlasts_a_call(self) -> SlackSettings:
        if self.lease <= 2 * self.request_timeout:
            raise ValueError(
                f"`lease` ({self.lease:g}s) must be more than twice `request_timeout` ({self.request_timeout:g}s): "
                "a replica renews its lease between Slack calls, and must not lose it during one"
            )
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.bot_token and self.channel)


class WebSettings(_Section):
    """The web inbox and audit history; see docs/inbox.md."""

    enabled: bool = True
    # Signs session cookies; COUNTERSIGN_SESSION_SECRET fills it. Empty: a random secret per process.
    session_secret: str = Field(default="", repr=False)
    session_max_age: float = 12 * 3600.0
    # Behind an SSO proxy: the header that names the signed-in approver (name or email). It is honoured
    # only on connections from `trusted_proxies` (addresses or CIDR networks).
    trusted_header: str = ""
    trusted_proxies: tuple[str, ...] = ()
    refresh_interval: float = 2.0
    failed_signin_delay: float = 1.0
    max_failed_signins: int = Field(default=5, ge=1)

    _durations = field_validator("session_max_age", "refresh_interval", "failed_signin_delay", mode="before")(_seconds)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network such as 10.0.0.0/8") from None
        return value

    @model_validator(mode="after")
    def _coherent(self) -> WebSettings:
        if self.session_secret and len(self.session_secret) < 32:
            raise ValueError("`session_secret` must be at least 32 characters (try: openssl rand -hex 32)")
        if self.trusted_header and not self.trusted_proxies:
            raise ValueError("`trusted_header` needs `trusted_proxies`: the addresses of the proxy that sets it")
        if self.session_max_age <= 0 or self.refresh_interval <= 0:
            raise ValueError("`session_max_age` and `refresh_interval` must be positive")
        return self


class WebhookSettings(_Section):
    """One `[[webhooks]]` block: every transition of every request, POSTed signed to `url` (docs/webhooks.md)."""

    name: str
    url: str
    # The HMAC-SHA256 key receivers verify the `Countersign-Signature` header with.
    secret: str = Field(repr=False)
    # Only these transitions (e.g. "request.approved"); empty: every one.
    events: tuple[str, ...] = ()
    request_timeout: float = 10.0
    retry_initial: float = 1.0
    retry_max: float = 60.0
    max_attempts: int = Field(default=8, ge=1)
    lease: float = 30.0

    _durations = field_validator("request_timeout", "retry_initial", "retry_max", "lease", mode="before")(_seconds)

    @field_validator("name")
    @classmethod
    def _short_name(cls, value: str) -> str:
        if not _WEBHOOK_NAME.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a webhook name: use 1 to 24 lowercase letters, digits, '-' or '_', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value

    @field_validator("secret")
    @classmethod
    def _long_secret(cls, value: str) -> str:
        if len(value) < 16:
            raise ValueError("a webhook secret needs at least 16 characters (`openssl rand -hex 32`)")
        return value

    @field_validator("events")
    @classmethod
    def _known_events(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [kind for kind in value if kind not in TRANSITION_KINDS]
        if unknown:
            raise ValueError(f"unknown event(s) {unknown}; known: {sorted(TRANSITION_KINDS)}")
        return value

    @model_validator(mode="after")
    def _lease_outlasts_a_call(self) -> WebhookSettings:
        if self.lease <= 2 * self.request_timeout:
            raise ValueError(
                f"`lease` ({self.lease:g}s) must be more than twice `request_timeout` ({self.request_timeout:g}s): "
                "a replica renews its lease between deliveries, and must not lose it during one"
            )
        return self

    def wants(self, kind: str) -> bool:
        return kind in TRANSITION_KINDS and (not self.events or kind in self.events)
