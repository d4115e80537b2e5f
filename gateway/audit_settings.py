"""The `[audit]` section: the key the audit chain is keyed with, and where its head is kept and how often told.

Kept beside gateway/config.py, which includes it as `Settings.audit`. See docs/configuration.md.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from approvals.durations import parse_duration

# What `key` and a key file must hold at least: a secret, not a password.
MIN_KEY_LENGTH = 32
KEY_ENV = "COUNTERSIGN_AUDIT_KEY"


class AuditSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # HMAC key of the audit chain; COUNTERSIGN_AUDIT_KEY fills it. Empty: the key in `key_file`,
    # generated there on first start.
    key: str = Field(default="", repr=False)
    # Where a generated key is kept when `key` is empty. Default: beside the SQLite database
    # (countersign.db.audit-key), or countersign.audit-key beside the configuration file.
    key_file: str = ""
    # The last head this gateway saw, checked at start to refuse a rolled-back database.
    # Default: beside the SQLite database (countersign.db.audit-head), or beside the configuration file.
    state_file: str = ""
    # How often the head is written to the log (and to `state_file`); also at start and stop.
    head_interval: float = 15 * 60.0

    @field_validator("head_interval", mode="before")
    @classmethod
    def _duration(cls, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError("expected a duration such as 30, '30s', '5m' or '1h'")
        seconds = parse_duration(value)
        if seconds <= 0:
            raise ValueError("`head_interval` must be positive")
        return seconds

    @field_validator("key")
    @classmethod
    def _long_enough(cls, value: str) -> str:
        if value and len(value) < MIN_KEY_LENGTH:
            raise ValueError(
                f"`key` must be at least {MIN_KEY_LENGTH} characters (try: openssl rand -hex 32); "
                f"it can also come from {KEY_ENV}"
            )
        return value
