"""The configuration file (TOML), with secrets from environment variables.

Any string value may be written as `${NAME}` (or contain it) to read environment variable NAME;
a missing variable is an error that names the key. Relative paths are relative to the file.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails, PydanticCustomError

from approvals.approvers import Approver, token_digest
from approvals.database_url import parse_database_url
from gateway.audit_settings import KEY_ENV as AUDIT_KEY_ENV
from gateway.audit_settings import AuditSettings
from gateway.config_base import Section as _Section
from gateway.config_base import hold_bound as _hold_bound
from gateway.config_base import seconds as _seconds
from gateway.config_channels import SlackSettings, WebhookSettings, WebSettings
from gateway.config_limits import AgentLimitSettings
from gateway.jwt_settings import JwtSettings

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

_NAME = r"^[A-Za-z0-9_.-]+$"
_APPROVER_NAME = r"^[^\s,]+$"
_SHA256 = r"^[0-9a-f]{64}$"
# What each pattern means, for people editing TOML rather than reading regular expressions.
_PATTERN_HELP = {
    _NAME: "use only letters, digits, '_', '.' and '-'",
    _APPROVER_NAME: "a name without spaces or commas (policies list approvers separated by commas)",
    _SHA256: "expected a SHA-256 digest: 64 lowercase hexadecimal digits",
}


# The agent name token-less callers get in dev mode (gateway.agent_auth uses the same).
DEV_AGENT_NAME = "dev"


class ConfigError(Exception):
    def __init__(self, source: str, path: str, message: str) -> None:
        super().__init__(f"{source}: {path}: {message}" if path else f"{source}: {message}")
        self.source = source
        self.path = path
        self.message = message


# A held call returns [APPROVAL PENDING] after this long unless the agent or the tool says otherwise:
# under the 60 s at which the TypeScript SDK, the MCP Inspector and many desktop clients give up.
DEFAULT_MAX_HOLD = 50.0
# Bytes on a held call's open response at least this often, under httpx's default 5 s read timeout.
DEFAULT_KEEPALIVE_INTERVAL = 2.0
# A process renews its execution leases three times per lease; a lapsed one means that process stopped.
DEFAULT_EXECUTION_LEASE = 15.0
DEFAULT_REPEAT_WINDOW = 600.0


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    database_url: str = "sqlite:///countersign.db"
    public_url: str = ""
    progress_interval: float = 5.0
    poll_interval: float = 1.0
    # How long a starting gateway keeps /mcp waiting for its upstreams' first connection attempts.
    startup_timeout: float = 30.0
    # The hold bound of agents and tools that set no `max_hold` (math.inf, written "none": no bound).
    default_max_hold: float = DEFAULT_MAX_HOLD
    # How often an SSE comment goes out on an open HTTP response that has sent nothing else.
    keepalive_interval: float = Field(default=DEFAULT_KEEPALIVE_INTERVAL, gt=0)
    allowed_hosts: tuple[str, ...] = ()
    # When set, /metrics answers only `Authorization: Bearer <metrics_token>`.
    metrics_token: str | None = Field(default=None, repr=False)
    # No agent tokens: every caller is the agent "dev". For local experiments only; logged loudly.
    dev_mode: bool = False
    # When the audit log cannot be written: refuse every call, or let tools whose upstream marks them
    # read-only (annotation readOnlyHint) through unrecorded.
    audit_unavailable: Literal["refuse", "allow_read_only"] = "refuse"
    # How long an execution holds without its process renewing it; a lapsed one ends as outcome unknown.
    execution_lease: float = Field(default=DEFAULT_EXECUTION_LEASE, gt=0)
    # How long after a request ends an identical call gets its outcome again instead of a new request.
    repeat_window: float = Field(default=DEFAULT_REPEAT_WINDOW, ge=0)
    # One log line per HTTP request (uvicorn's access log). Off: every tool call is an HTTP request, and the
    # audit log already records each call; turn it on to see the HTTP side (status codes, clients).
    access_log: bool = False
    # Connections the kernel queues for the gateway to accept (uvicorn's `backlog`); the kernel caps it at
    # net.core.somaxconn. Thousands of agents connecting at once overflow a short queue.
    backlog: int = Field(default=4096, ge=1)
    # Give freed memory back to the system after a burst of calls (glibc's malloc_trim; nothing elsewhere).
    trim_memory: bool = True

    _durations = field_validator(
        "progress_interval",
        "poll_interval",
        "startup_timeout",
        "keepalive_interval",
        "execution_lease",
        "repeat_window",
        mode="before",
    )(_seconds)
    _bounds = field_validator("default_max_hold", mode="before")(_hold_bound)

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, url: str) -> str:
        parse_database_url(url)  # raises ValueError saying what is accepted
        return url

    @model_validator(mode="after")
    def _dev_mode_stays_local(self) -> ServerSettings:
        problem = self.dev_mode_problem()
        if problem:
            raise ValueError(problem)
        return self

    def dev_mode_problem(self) -> str | None:
        """Why these settings may not run in dev mode; None when they may (or dev mode is off).

        Checked at load and again before serving, since `serve --host` changes the host after loading.
        """
        if self.dev_mode and not is_loopback(self.host):
            # Without tokens anyone who reaches the port is an agent; only this machine may reach it.
            return (
                f"`dev_mode` lets callers in without a token, so it needs a loopback `host` such as 127.0.0.1, "
                f"not {self.host!r}; configure agent tokens to listen on other addresses"
            )
        return None

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


def is_loopback(host: str) -> bool:
    """Whether `host` is an address (or the name) only this machine can reach."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class PolicySettings(_Section):
    file: str = "policy.json"
    watch: bool = True
    # A candidate policy evaluated beside the live one, enforcing nothing (gateway.shadow).
    shadow: str | None = None


class UpstreamSettings(_Section):
    name: str = Field(pattern=_NAME)
    command: tuple[str, ...] | None = None
    url: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    prefix: str = ""
    call_timeout: float = 120.0
    connect_timeout: float = 30.0

    _durations = field_validator("call_timeout", "connect_timeout", mode="before")(_seconds)

    @model_validator(mode="after")
    def _one_transport(self) -> UpstreamSettings:
        if (self.command is None) == (self.url is None):
            raise ValueError("give exactly one of `command` (a list: program and arguments) or `url`")
        if self.command is not None and not self.command:
            raise ValueError("`command` must name a program")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError("`url` must be an http:// or https:// URL of a streamable HTTP MCP endpoint")
        return self


class AgentSettings(_Section):
    name: str = Field(min_length=1)
    token: str | None = Field(default=None, repr=False)
    token_sha256: str | None = Field(default=None, pattern=_SHA256)
    # The longest this agent's client waits on one call; held calls return a pending result before it.
    # None: [server] default_max_hold applies; math.inf (written "none"): this agent's client waits.
    max_hold: float | None = None
    # What policy conditions on `agent.groups` see for this agent.
    groups: tuple[str, ...] = ()

    _bounds = field_validator("max_hold", mode="before")(_hold_bound)

    @model_validator(mode="after")
    def _one_token(self) -> AgentSettings:
        if (self.token is None) == (self.token_sha256 is None):
            raise ValueError("give exactly one of `token` or `token_sha256`")
        if self.token is not None and len(self.token) < 8:
            raise ValueError("`token` is too short to be a secret (8 characters at least)")
        return self

    @property
    def digest(self) -> str:
        return self.token_sha256 or token_digest(self.token or "")


class ApproverSettings(_Section):
    name: str = Field(min_length=1, pattern=_APPROVER_NAME)
    email: str | None = None
    groups: tuple[str, ...] = ()
    api_token: str | None = Field(default=None, repr=False)
    api_token_sha256: str | None = Field(default=None, pattern=_SHA256)
    password_hash: str | None = Field(default=None, repr=False)
    slack_user: str | None = None

    def to_approver(self) -> Approver:
        digest = self.api_token_sha256 or (token_digest(self.api_token) if self.api_token else None)
        return Approver(
            name=self.name,
            email=self.email,
            groups=self.groups,
            slack_user=self.slack_user,
            api_token_sha256=digest,
            password_hash=self.password_hash,
        )


class Settings(_Section):
    server: ServerSettings = Field(default_factory=ServerSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    upstreams: tuple[UpstreamSettings, ...] = ()
    agents: tuple[AgentSettings, ...] = ()
    agent_jwt: JwtSettings | None = None
    approvers: tuple[ApproverSettings, ...] = ()
    slack: SlackSettings = Field(default_factory=SlackSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    webhooks: tuple[WebhookSettings, ...] = ()
    agent_limits: AgentLimitSettings = Field(default_factory=AgentLimitSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    source: str = Field(default="<settings>", exclude=True)
    base_dir: str = Field(default=".", exclude=True)

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        for kind, names in (
            ("upstreams", [u.name for u in self.upstreams]),
            ("agents", [a.name for a in self.agents]),
            ("approvers", [a.name for a in self.approvers]),
            ("webhooks", [w.name for w in self.webhooks]),
        ):
            seen: set[str] = set()
            for index, name in enumerate(names):
                if name in seen:
                    # A model validator's error has no location of its own; carry the key's path in the context.
                    raise PydanticCustomError(
                        "duplicate_name",
                        "the name {name!r} is used twice",
                        {"name": name, "path": f"{kind}[{index}].name"},
                    )
                seen.add(name)
        return self

    @model_validator(mode="after")
    def _dev_agent_is_nobody(self) -> Settings:
        if self.server.dev_mode:
            for index, agent in enumerate(self.agents):
                if agent.name == DEV_AGENT_NAME:
                    # Token-less callers are named "dev": they would act as this agent, with its limits and rules.
                    raise PydanticCustomError(
                        "dev_agent",
                        "with `server.dev_mode` on, callers without a token are the agent {name!r}, so no configured "
                        "agent may have that name; rename this agent or turn dev_mode off",
                        {"name": DEV_AGENT_NAME, "path": f"agents[{index}].name"},
                    )
        return self

    def resolve(self, path: str) -> Path:
        candidate = Path(path).expanduser()
        return candidate if candidate.is_absolute() else Path(self.base_dir) / candidate

    @property
    def policy_path(self) -> Path:
        return self.resolve(self.policy.file)

    @property
    def shadow_path(self) -> Path | None:
        return None if self.policy.shadow is None else self.resolve(self.policy.shadow)

    @property
    def database_url(self) -> str:
        """The configured database, a relative SQLite path taken relative to the configuration file."""
        return parse_database_url(self.server.database_url).resolved(Path(self.base_dir)).written


def _expand(value: Any, path: str, source: str, environ: Mapping[str, str]) -> Any:
    if isinstance(value, str):

        def lookup(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in environ:
                raise ConfigError(source, path, f"environment variable {name} is not set")
            return environ[name]

        return _ENV_REF.sub(lookup, value)
    if isinstance(value, list):
        return [_expand(v, f"{path}[{i}]", source, environ) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _expand(v, f"{path}.{k}" if path else k, source, environ) for k, v in value.items()}
    return value


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part.startswith(("function-", "model-")):
            out += f".{part}" if out else part
    return out


def parse_settings(
    data: Mapping[str, Any],
    *,
    source: str = "<settings>",
    base_dir: str = ".",
    environ: Mapping[str, str] | None = None,
) -> Settings:
    expanded = _expand(dict(data), "", source, os.environ if environ is None else environ)
    # Well-known variables fill Slack secrets the file leaves out.
    env = os.environ if environ is None else environ
    slack = expanded.setdefault("slack", {})
    if isinstance(slack, dict):
        for key, var in (
            ("bot_token", "SLACK_BOT_TOKEN"),
            ("signing_secret", "SLACK_SIGNING_SECRET"),
            ("app_token", "SLACK_APP_TOKEN"),
        ):
            if key not in slack and env.get(var):
                slack[key] = env[var]
    web = expanded.setdefault("web", {})
    if isinstance(web, dict) and "session_secret" not in web and env.get("COUNTERSIGN_SESSION_SECRET"):
        web["session_secret"] = env["COUNTERSIGN_SESSION_SECRET"]
    audit = expanded.setdefault("audit", {})
    if isinstance(audit, dict) and "key" not in audit and env.get(AUDIT_KEY_ENV):
        audit["key"] = env[AUDIT_KEY_ENV]
    try:
        return Settings.model_validate({**expanded, "source": source, "base_dir": base_dir})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(source, _error_path(first), _error_message(first)) from None


def _error_path(error: ErrorDetails) -> str:
    ctx = error.get("ctx") or {}
    if error["type"] in ("duplicate_name", "dev_agent"):
        return str(ctx["path"])
    return _location(tuple(error["loc"]))


def _error_message(error: ErrorDetails) -> str:
    ctx = error.get("ctx") or {}
    if error["type"] == "extra_forbidden":
        return "unknown key (check the spelling against docs/configuration.md)"
    if error["type"] in ("tuple_type", "list_type"):
        return 'expected a list, such as ["a", "b"] (a repeated section is written [[name]])'
    if error["type"] == "string_pattern_mismatch" and ctx.get("pattern") in _PATTERN_HELP:
        return _PATTERN_HELP[str(ctx["pattern"])]
    return error["msg"].removeprefix("Value error, ")


def load_settings(
    path: str | os.PathLike[str],
    *,
    environ: Mapping[str, str] | None = None,
    only: Collection[str] | None = None,
    ignore: Collection[str] = (),
) -> Settings:
    """Read and validate a configuration file.

    `only` keeps just those top-level sections (the rest take their defaults), and `ignore` drops
    single keys (`"server.database_url"`, `"approvers.api_token"`: in every block of an array of
    tables), for commands such as `countersign approvals` that need the server's address but not
    the secrets of the gateway's other parts: a variable those keys name need not be set.
    """
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError(str(file), "", f"cannot read the configuration file: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(file), "", f"not valid TOML: {exc}") from None
    if only is not None:
        data = {key: value for key, value in data.items() if key in only}
    for dotted in ignore:
        section, _, key = dotted.partition(".")
        tables = data.get(section)
        for table in tables if isinstance(tables, list) else [tables]:
            if isinstance(table, dict):
                table.pop(key, None)
    return parse_settings(data, source=str(file), base_dir=str(file.resolve().parent), environ=environ)
