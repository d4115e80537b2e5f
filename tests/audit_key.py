"""The audit key the tests' replicas share: gateways on one PostgreSQL database must use the same one."""

SHARED_AUDIT_KEY = "countersign-tests-shared-audit-key-0123456789"


def audit_section() -> list[str]:
    """The `[audit]` lines of a test configuration."""
    return ["", "[audit]", f'key = "{SHARED_AUDIT_KEY}"', ""]


def verify_env(environ: dict[str, str]) -> dict[str, str]:
    """An environment in which `countersign audit verify` holds the shared key."""
    return {**environ, "COUNTERSIGN_AUDIT_KEY": SHARED_AUDIT_KEY}
