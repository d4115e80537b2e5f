"""Agents with JWTs from an identity provider: the test is the provider (its own keys, its own JWKS on
loopback), the gateway is served over HTTP, and agents are real MCP clients."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from mcp.client.auth.utils import (
    build_protected_resource_metadata_discovery_urls,
    extract_resource_metadata_from_www_auth,
)
from mcp.shared.auth import ProtectedResourceMetadata
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.app import Gateway
from gateway.config import ConfigError, parse_settings
from gateway.demo import DEMO_POLICY
from tests.harness import AGENT_TOKEN, agent_client, bound_socket, serve_asgi, write_policy

ISSUER = "https://idp.example/realms/agents"


@dataclass
class Provider:
    """An identity provider: signing keys, the JWKS it publishes, and how often that was fetched."""

    published: list[dict[str, Any]] = field(default_factory=list)
    fetches: int = 0

    def publish(self, kid: str, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> None:
        if isinstance(key, rsa.RSAPrivateKey):
            jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
        else:
            jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
        self.published.append({**jwk, "kid": kid, "use": "sig"})

    def app(self) -> Starlette:
        async def jwks(request: Request) -> JSONResponse:
            self.fetches += 1
            return JSONResponse({"keys": self.published})

        return Starlette(routes=[Route("/jwks", jwks)])


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def token(key: Any, kid: str, *, alg: str = "RS256", **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "robot", "iat": now, "exp": now + 300, **claims}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


def unsigned(**claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "robot", "exp": now + 300, **claims}

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT', 'kid': 'k1'})}.{part(body)}."


AUDIENCE = "https://countersign.test/mcp"


@dataclass
class Served:
    url: str
    gateway: Gateway
    provider: Provider


@asynccontextmanager
async def gateway_with_idp(tmp_path: Path, **jwt_settings: Any) -> AsyncIterator[Served]:
    provider = Provider()
    sock = bound_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with serve_asgi(provider.app()) as idp_url:
        settings = parse_settings(
            {
                "server": {"database_url": f"sqlite:///{tmp_path / 'cs.db'}", "public_url": url},
                "policy": {"file": str(write_policy(tmp_path / "policy.json", DEMO_POLICY)), "watch": False},
                "agents": [{"name": "alpha", "token": AGENT_TOKEN}],
                "agent_jwt": {
                    "issuer": ISSUER,
                    "jwks_url": f"{idp_url}/jwks",
                    "audience": AUDIENCE,
                    "agent_prefix": "idp:",
                    **jwt_settings,
                },
            },
            source="<test>",
            base_dir=str(tmp_path),
            environ={},
        )
        gateway = Gateway(settings)
        async with serve_asgi(gateway.asgi(), sock):
            yield Served(url, gateway, provider)


async def tools_as(url: str, bearer: str) -> list[str]:
    async with agent_client(url, bearer) as client:
        return [tool.name for tool in (await client.list_tools()).tools]


async def refused(url: str, bearer: str | None) -> httpx2.Response:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    async with httpx2.AsyncClient() as http:
        answer = await http.post(f"{url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=headers)
    assert answer.status_code == 401
    return answer


async def test_a_valid_token_makes_its_subject_an_agent_and_bad_ones_say_why(tmp_path: Path) -> None:
    signing, stranger = rsa_key(), rsa_key()
    async with gateway_with_idp(tmp_path) as s:
        s.provider.publish("k1", signing)
        assert "countersign_approval_wait" in await tools_as(s.url, token(signing, "k1"))
        async with agent_client(s.url, token(signing, "k1")) as agent:
            await agent.call_tool("not_a_tool", {})
        metrics = (await httpx2.AsyncClient().get(f"{s.url}/metrics")).text
        agents = {
            sample.labels["agent"]
            for family in text_string_to_metric_families(metrics)
            for sample in family.samples
            if sample.name == "countersign_tool_calls_total"
        }
        assert agents == {"idp:robot"}
        assert "countersign_approval_wait" in await tools_as(s.url, AGENT_TOKEN)  # static tokens still work

        cases = {
            "has expired": token(signing, "k1", exp=int(time.time()) - 120),
            "not for this gateway": token(signing, "k1", aud="https://someone-else.example/mcp"),
            "not among the issuer's keys": token(stranger, "k9"),
            "'none' are not accepted": unsigned(),
            "Invalid issuer": token(signing, "k1", iss="https://evil.example"),
            "not yet valid": token(signing, "k1", nbf=int(time.time()) + 600),
            "'sub' claim": token(signing, "k1", sub=""),
        }
        for why, bad in cases.items():
            answer = await refused(s.url, bad)
            assert why in answer.json()["detail"], (why, answer.json())
            assert 'error="invalid_token"' in answer.headers["www-authenticate"]
            with pytest.raises(Exception):  # noqa: B017 - the client surfaces a 401 as its own error type
                await tools_as(s.url, bad)


async def test_a_signed_token_whose_name_is_a_configured_agent_is_refused_without_a_prefix(tmp_path: Path) -> None:
    signing = rsa_key()
    async with gateway_with_idp(tmp_path, agent_prefix="") as s:
        s.provider.publish("k1", signing)
        answer = await refused(s.url, token(signing, "k1", sub="alpha"))
    assert "belongs to a configured agent" in answer.json()["detail"]


async def test_rotated_keys_are_fetched_again_but_not_for_every_unknown_kid(tmp_path: Path) -> None:
    old, new = rsa_key(), ec.generate_private_key(ec.SECP256R1())
    async with gateway_with_idp(tmp_path, jwks_refetch_interval="1h", algorithms=["RS256", "ES256"]) as s:
        s.provider.publish("old", old)
        assert await tools_as(s.url, token(old, "old"))
        assert s.provider.fetches == 1
        # The issuer rotates: the old key is withdrawn, a new (EC) one published.
        s.provider.published.clear()
        s.provider.publish("new", new)
        # The keys were fetched moments ago: an unknown kid does not fetch again within the interval.
        await refused(s.url, token(new, "new", alg="ES256"))
        await refused(s.url, token(new, "made-up", alg="ES256"))
        assert s.provider.fetches == 1

    async with gateway_with_idp(tmp_path, jwks_refetch_interval=0, algorithms=["RS256", "ES256"]) as s:
        s.provider.publish("old", old)
        assert await tools_as(s.url, token(old, "old"))
        s.provider.published.clear()
        s.provider.publish("new", new)
        assert await tools_as(s.url, token(new, "new", alg="ES256"))
        # The withdrawn key is gone from the cache with the refetch.
        assert "not among the issuer's keys" in (await refused(s.url, token(old, "old"))).json()["detail"]


async def test_a_client_that_follows_the_challenge_finds_the_metadata_document(tmp_path: Path) -> None:
    async with gateway_with_idp(tmp_path) as s:
        answer = await refused(s.url, None)
        assert "error=" not in answer.headers["www-authenticate"]  # no token sent: no error (RFC 6750)
        pointed = extract_resource_metadata_from_www_auth(answer)
        assert pointed == f"{s.url}/.well-known/oauth-protected-resource/mcp"
        async with httpx2.AsyncClient() as http:
            for url in build_protected_resource_metadata_discovery_urls(pointed, f"{s.url}/mcp"):
                found = await http.get(url)
                assert found.status_code == 200, url
                document = ProtectedResourceMetadata.model_validate_json(found.content)
                assert str(document.resource) == f"{s.url}/mcp"
                assert [str(a) for a in document.authorization_servers] == [ISSUER]


@pytest.mark.parametrize(
    ("algorithms", "named"), [(["none"], "none"), (["HS256"], "HS256"), (["RS256", "HS512"], "HS512")]
)
def test_symmetric_and_unsigned_algorithms_cannot_be_configured(algorithms: list[str], named: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_settings(
            {"agent_jwt": {"issuer": ISSUER, "jwks_url": "https://idp.example/jwks", "algorithms": algorithms}},
            source="countersign.toml",
            environ={},
        )
    assert "agent_jwt.algorithms" in str(error.value) and named in str(error.value)
