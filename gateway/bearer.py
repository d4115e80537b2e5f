"""Reading a bearer token from a request's headers, one way for agents (/mcp) and approvers (the API)."""

from __future__ import annotations

from collections.abc import Iterable


class BearerProblem(Exception):
    """The request's credentials cannot be read; the message says what to send instead."""


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The token of the one `Authorization: Bearer …` header; None when there is none at all.

    Raises BearerProblem for two or more Authorization headers — proxies and frameworks disagree on
    which copy counts (the first, the last, both joined), so such a request is refused rather than
    read one way here and another there — and for a header that is not a bearer token.
    """
    values = [value.decode("latin-1") for name, value in headers if name.lower() == b"authorization"]
    if not values:
        return None
    if len(values) > 1:
        raise BearerProblem("send exactly one Authorization header")
    scheme, _, token = values[0].partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise BearerProblem("send the token as 'Authorization: Bearer <token>'")
    return token.strip()
