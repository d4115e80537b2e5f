"""Prompts and resources federated across upstreams: what each offers, the names agents see, and routing.

Names and URIs stay as the upstream gives them unless the upstream has a `prefix`; then a prompt
is `prefix + name` (as tools are) and a resource `prefix + uri`, so `docs.` turns
`file:///a.txt` into `docs.file:///a.txt` — still a URI, with the scheme `docs.file`.
A request is routed to the upstream whose prefix and listing own the name or URI; a URI no
listing names goes to the upstream whose resource template matches it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import mcp_types as types
from mcp import Client
from mcp.shared.uri_template import InvalidUriTemplate, UriTemplate

log = logging.getLogger(__name__)

_PAGES = 100
T = TypeVar("T")


@dataclass(frozen=True)
class Offer:
    """What one upstream offers beside tools, as it lists them (its own names)."""

    prompts: tuple[types.Prompt, ...] = ()
    resources: tuple[types.Resource, ...] = ()
    templates: tuple[types.ResourceTemplate, ...] = ()
    capabilities: types.ServerCapabilities | None = None


async def list_offer(client: Client) -> Offer:
    caps = client.server_capabilities
    prompts: list[types.Prompt] = []
    resources: list[types.Resource] = []
    templates: list[types.ResourceTemplate] = []
    if caps.prompts is not None:
        prompts = await _all_pages(lambda c: client.list_prompts(cursor=c), lambda p: p.prompts)
    if caps.resources is not None:
        resources = await _all_pages(lambda c: client.list_resources(cursor=c), lambda p: p.resources)
        try:
            templates = await _all_pages(
                lambda c: client.list_resource_templates(cursor=c), lambda p: p.resource_templates
            )
        except Exception as exc:  # templates are optional: a server may offer resources without them
            log.debug("no resource templates: %s", exc)
    return Offer(tuple(prompts), tuple(resources), tuple(templates), caps)


class _Page(Protocol):
    @property
    def next_cursor(self) -> str | None: ...


P = TypeVar("P", bound=_Page)


async def _all_pages(fetch: Callable[[str | None], Awaitable[P]], items: Callable[[P], Sequence[T]]) -> list[T]:
    found: list[T] = []
    cursor: str | None = None
    for _ in range(_PAGES):
        page = await fetch(cursor)
        found.extend(items(page))
        cursor = page.next_cursor
        if not cursor:
            break
    return found


class UpstreamHooks:
    """What the relay of prompts, resources and server-to-client traffic plugs into an upstream.

    The default relays nothing: the upstream's client declares no elicitation or sampling, and
    resource updates go nowhere. `gateway.relay_traffic` provides the real ones.
    """

    def client_options(self) -> dict[str, Any]:
        return {}

    async def resource_updated(self, uri: str) -> None:
        return None

    def serving(self) -> AbstractAsyncContextManager[None]:
        """Entered around each tools/call sent to the upstream."""
        return nullcontext()


class RelayUnavailable(Exception):
    """A prompt or resource request could not reach its upstream (not connected, timed out, broken)."""


class Source(Protocol):
    """One upstream as the relay sees it (`gateway.upstreams.Upstream` in production)."""

    name: str
    offer: Offer

    @property
    def ready(self) -> bool: ...

    @property
    def prefix(self) -> str: ...


@dataclass(frozen=True)
class Target:
    """Where a prompt or resource request goes: the upstream and its own name or URI for it."""

    source: Source
    name: str


class Catalog:
    """The merged prompts, resources and templates agents see, and routing back to their upstream."""

    def __init__(self, sources: Callable[[], Sequence[Source]]) -> None:
        self._sources = sources

    def sources(self) -> Sequence[Source]:
        return self._sources()

    def offers(self, capability: str) -> bool:
        """Whether any upstream offers `prompts`, `resources`, `completions` or `logging` (last known)."""
        return any(
            s.offer.capabilities is not None and getattr(s.offer.capabilities, capability) is not None
            for s in self.sources()
        )

    def subscribable(self) -> bool:
        return any(
            s.offer.capabilities is not None
            and s.offer.capabilities.resources is not None
            and bool(s.offer.capabilities.resources.subscribe)
            for s in self.sources()
        )

    def prompts(self) -> list[tuple[Source, types.Prompt]]:
        seen: set[str] = set()
        found = []
        for source in self.sources():
            for prompt in source.offer.prompts:
                name = source.prefix + prompt.name
                if name in seen:
                    log.warning("prompt %s of upstream %s is shadowed; give one of them a prefix", name, source.name)
                    continue
                seen.add(name)
                found.append((source, prompt if name == prompt.name else prompt.model_copy(update={"name": name})))
        return found

    def resources(self) -> list[tuple[Source, types.Resource]]:
        seen: set[str] = set()
        found = []
        for source in self.sources():
            for resource in source.offer.resources:
                uri = source.prefix + resource.uri
                if uri in seen:
                    continue
                seen.add(uri)
                found.append((source, resource if not source.prefix else resource.model_copy(update={"uri": uri})))
        return found

    def templates(self) -> list[tuple[Source, types.ResourceTemplate]]:
        found = []
        for source in self.sources():
            for template in source.offer.templates:
                shown = source.prefix + template.uri_template
                found.append(
                    (source, template if not source.prefix else template.model_copy(update={"uri_template": shown}))
                )
        return found

    def prompt(self, name: str) -> Target | None:
        for source in self.sources():
            own = _strip(name, source.prefix)
            if own is not None and any(p.name == own for p in source.offer.prompts):
                return Target(source, own)
        return None

    def resource(self, uri: str) -> Target | None:
        """The upstream that lists `uri`, else the one whose template matches it, else the only one with resources."""
        candidates = [(s, own) for s in self.sources() if (own := _strip(uri, s.prefix)) is not None]
        for source, own in candidates:
            if any(r.uri == own for r in source.offer.resources):
                return Target(source, own)
        for source, own in candidates:
            if any(_matches(t.uri_template, own) for t in source.offer.templates):
                return Target(source, own)
        with_resources = [(s, own) for s, own in candidates if s.offer.capabilities and s.offer.capabilities.resources]
        if len(with_resources) == 1:
            source, own = with_resources[0]
            return Target(source, own)
        return None

    def template(self, uri_template: str) -> Target | None:
        for source in self.sources():
            own = _strip(uri_template, source.prefix)
            if own is not None and any(t.uri_template == own for t in source.offer.templates):
                return Target(source, own)
        return None

    def shown_uri(self, source: Source, own: str) -> str:
        return source.prefix + own


def _strip(name: str, prefix: str) -> str | None:
    if not prefix:
        return name
    return name[len(prefix) :] if name.startswith(prefix) else None


def _matches(template: str, uri: str) -> bool:
    try:
        return UriTemplate.parse(template).match(uri) is not None
    except (InvalidUriTemplate, ValueError):
        return False


def dump(model: Any) -> dict[str, Any]:
    """A result as the wire has it (camelCase, no nulls), for sizes and audit detail."""
    return dict(model.model_dump(mode="json", by_alias=True, exclude_none=True))
